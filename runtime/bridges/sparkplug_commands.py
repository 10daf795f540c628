"""What a Sparkplug edge node receives from the network: NCMD, DCMD and the primary host's STATE.

All of it is untrusted: a payload that is not a Tahu Payload, a metric of the wrong type, a STATE
that is not the 3.0 JSON, a device nobody declared. Each such message is refused with a reason the
bridge logs and counts; none raises past here. Triggers (a DCMD `Trigger`) run on worker threads,
so a slow `run` never holds up the bridge's sender.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.bridges import sparkplug_metrics as sm
from edge_somad.runtime.bridges import sparkplug_proto as pb
from edge_somad.runtime.messaging.messages import check_camera_id
from edge_somad.runtime.trigger.request import check_deadline_ms, check_part_id

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 1024  # {"online":true,"timestamp":1700000000000} is 40 bytes
MAX_TRIGGERS_IN_FLIGHT = 16
# (camera, part id, deadline ms or None) -> the verdict dict `run`'s control endpoint answered
TriggerFn = Callable[[str, str, "int | None"], dict]


def check_host_id(host: str) -> str:
    """--primary-host: one MQTT topic level (the host application's id in spBv1.0/STATE/<host_id>)."""
    if not host or len(host.encode()) > 256 or any(c in host for c in "/+#\x00"):
        raise ConfigError(f"--primary-host {host[:80]!r}: expected the primary host application's id, one topic "
                          "level without '/', '+', '#' (as set in the host, e.g. Ignition's MQTT Engine)")
    return host


def parse_state(payload: bytes) -> tuple[bool, int]:
    """A Sparkplug 3.0 STATE payload -> (online, timestamp ms). InputError for anything else."""
    if len(payload) > MAX_STATE_BYTES:
        raise InputError(f"STATE payload of {len(payload)} bytes; expected a small JSON object")
    try:
        doc = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(f"STATE payload {payload[:60]!r} is not JSON; expected "
                         '{"online": true|false, "timestamp": <ms>} (Sparkplug 3.0)') from None
    online, ts = (doc.get("online"), doc.get("timestamp")) if isinstance(doc, dict) else (None, None)
    if not isinstance(online, bool) or not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**63:
        raise InputError(f"STATE payload {payload[:60]!r}; expected {{\"online\": true|false, \"timestamp\": <ms>}}")
    return online, ts


def _find(metrics: list[pb.Received], name: str, alias: int | None) -> pb.Received | None:
    for m in metrics:
        if m.name == name or (m.name is None and alias is not None and m.alias == alias):
            return m
    return None


def wants_rebirth(payload: bytes) -> bool:
    """An NCMD: True when it sets `Node Control/Rebirth` to true. InputError when it is not a command."""
    metrics = pb.decode_command(payload)
    m = _find(metrics, sm.REBIRTH, sm.NODE_ALIAS[sm.REBIRTH])
    if m is None:
        names = [x.name or f"alias {x.alias}" for x in metrics[:5]]
        raise InputError(f"NCMD with metrics {names}; this node answers only {sm.REBIRTH!r} (Boolean true)")
    if m.value is not True or m.datatype not in (None, pb.BOOLEAN):
        raise InputError(f"NCMD {sm.REBIRTH!r} = {m.value!r} (datatype {m.datatype}); expected Boolean true")
    return True


@dataclass(frozen=True)
class TriggerRequest:
    camera: str
    part_id: str
    deadline_ms: int | None


def parse_trigger(device: str, payload: bytes, slot: int | None) -> TriggerRequest:
    """A DCMD for camera `device` (its alias slot, if born): the `Trigger` part id and optional deadline."""
    check_camera_id(device)
    metrics = pb.decode_command(payload)
    alias = None if slot is None else sm.device_alias(slot, sm.TRIGGER)
    m = _find(metrics, sm.TRIGGER, alias)
    if m is None:
        raise InputError(f"DCMD for {device} without a {sm.TRIGGER!r} metric; expected the part id (String)")
    part = check_part_id(m.value)  # the runtime's own rule, checked before the request travels
    d = _find(metrics, sm.TRIGGER_DEADLINE, None if slot is None else sm.device_alias(slot, sm.TRIGGER_DEADLINE))
    deadline = None if d is None or d.value is None else check_deadline_ms(d.value)
    return TriggerRequest(device, part, deadline)


def trigger_status(part_id: str, answer: Any) -> str:
    """The `Trigger Status` text for `run`'s answer: '<verdict> <part id>' or 'error: <why> <part id>'."""
    if not isinstance(answer, dict):
        return f"error: no answer {part_id}"
    error = answer.get("error")
    if error:
        text = str(error)[:200]
        return f"{text if text.startswith('error') else 'error: ' + text} {part_id}"
    return f"{str(answer.get('verdict'))[:20]} {part_id}"


def control_trigger(control: str | None, timeout_s: float) -> TriggerFn | None:
    """DCMD Trigger -> `run --control` (runtime/trigger/client.py), naming the camera the DCMD was for."""
    if control is None:
        return None

    def fn(camera: str, part_id: str, deadline_ms: int | None) -> dict:
        from edge_somad.runtime.trigger.client import request_trigger

        # `run` answers at the deadline itself: wait that long plus a second, never less than timeout_s
        wait_s = max(timeout_s, (deadline_ms or 0) / 1000 + 1.0)
        return request_trigger(control, part_id, deadline_ms, wait_s, camera=camera, source="sparkplug")
    return fn


class Triggers:
    """Runs trigger requests on threads; finished ones wait in `done` as (camera, part id, status text)."""

    def __init__(self, fn: TriggerFn | None) -> None:
        self.fn = fn
        self.done: deque[tuple[str, str, str]] = deque()
        self._lock = threading.Lock()
        self._running = 0

    def start(self, req: TriggerRequest) -> None:
        if self.fn is None:
            self.done.append((req.camera, req.part_id, f"error: no trigger endpoint (bridge --control) {req.part_id}"))
            return
        with self._lock:
            if self._running >= MAX_TRIGGERS_IN_FLIGHT:
                self.done.append((req.camera, req.part_id,
                                  f"error: busy ({MAX_TRIGGERS_IN_FLIGHT} triggers waiting) {req.part_id}"))
                return
            self._running += 1
        threading.Thread(target=self._run, args=(req,), name="spb-trigger", daemon=True).start()

    def _run(self, req: TriggerRequest) -> None:
        try:
            status = trigger_status(req.part_id, self.fn(req.camera, req.part_id, req.deadline_ms))
        except Exception as exc:  # a trigger that failed is reported on the device, never kills the bridge
            log.warning("trigger %s on %s: %s", req.part_id, req.camera, exc)
            status = f"error: {str(exc)[:200]} {req.part_id}"
        self.done.append((req.camera, req.part_id, status))
        with self._lock:
            self._running -= 1
