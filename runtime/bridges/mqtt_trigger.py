"""The MQTT bridge's trigger command topic: a PLC (or any MQTT client) publishes
`{"part_id": "P-1234", "deadline_ms": 300}` on `<root>/<group>/CMD/<box>/trigger` and gets that part's
verdict back as one JSON message.

Where the answer goes: with MQTT 5, to the command's Response Topic, with its Correlation Data (the
request/response pattern of the MQTT 5 standard); otherwise to `<root>/<group>/TRIGGER/<box>/<camera>`
(`<root>/<group>/TRIGGER/<box>` when the command was refused before a camera was known). QoS 1, not
retained: an old answer must never be taken for the next part's. The answer is the runtime's
(docs/triggers.md) plus `box`; anything that goes wrong (bad JSON, a part id the runtime refuses, a
runtime that does not answer, too many commands at once) is answered with `verdict: "error"` and the
reason, never with silence. Each command is forwarded to `run --control` (runtime/trigger/client.py)
on its own thread, at most MAX_ACTIVE at once, so paho's network thread never waits for a part.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from edge_somad.errors import EdgeSomadError, InputError
from edge_somad.runtime.messaging.messages import check_camera_id

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 4096
MAX_ACTIVE = 32  # commands being answered at once; a PLC triggers a few parts per second
COMMAND_FIELDS = ("part_id", "deadline_ms", "camera")
SLACK_S = 2.0  # wait this much beyond the deadline for the runtime (it answers at the deadline itself)
DEFAULT_WAIT_S = 5.0  # no deadline_ms: the runtime's default applies, unknown here


def parse_command(payload: bytes) -> dict[str, Any]:
    """The command's JSON object; InputError naming what arrived otherwise."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise InputError(f"command of {len(payload)} bytes; expected a JSON object of at most {MAX_COMMAND_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"command {payload[:40]!r} is not UTF-8 JSON ({exc}); expected e.g. "
                         '{"part_id": "P-1234", "deadline_ms": 300}') from None
    if not isinstance(body, dict):
        raise InputError(f"command is a JSON {type(body).__name__}; expected an object with part_id")
    unknown = sorted(k for k in body if k not in COMMAND_FIELDS)
    if unknown:
        raise InputError(f"unknown field(s) {unknown[:5]} in the command; expected only {list(COMMAND_FIELDS)}")
    return body


class TriggerCommands:
    """Subscribed by every MqttLink of the bridge (see MqttLink's `commands`)."""

    def __init__(self, control: str, topic: Callable[..., str], box: str) -> None:
        self.control, self._topic, self.box = control, topic, box
        self.topic = f"{topic('CMD')}/trigger"
        self._slots = threading.BoundedSemaphore(MAX_ACTIVE)
        self.counts = {"commands": 0, "answered": 0, "refused": 0, "lost": 0}

    def on_message(self, link: Any, msg: Any) -> None:
        """paho's thread: start the answer on a worker, or refuse at once."""
        self.counts["commands"] += 1
        props = getattr(msg, "properties", None)
        reply = (getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None))
        if not self._slots.acquire(blocking=False):
            self._send(link, reply, {"verdict": "error", "ok": False,
                                     "error": f"busy: {MAX_ACTIVE} trigger commands are being answered"})
            return
        threading.Thread(target=self._serve, args=(link, bytes(msg.payload), reply), name="mqtt-trigger",
                         daemon=True).start()

    def _serve(self, link: Any, payload: bytes, reply: tuple[str | None, bytes | None]) -> None:
        try:
            self._send(link, reply, self.answer(payload))
        finally:
            self._slots.release()

    def answer(self, payload: bytes) -> dict[str, Any]:
        """The runtime's answer to one command, or an error answer (never an exception)."""
        from edge_somad.runtime.trigger.client import request_trigger

        try:
            body = parse_command(payload)
            part_id, deadline = body.get("part_id"), body.get("deadline_ms")
            wait = deadline / 1000.0 + SLACK_S if isinstance(deadline, int) and deadline > 0 else DEFAULT_WAIT_S
            return request_trigger(self.control, part_id, deadline, wait, camera=body.get("camera"), source="mqtt")
        except EdgeSomadError as exc:  # refused here or by the runtime, or no answer: the PLC rejects
            self.counts["refused"] += 1
            return {"verdict": "error", "ok": False, "error": str(exc)}

    def _send(self, link: Any, reply: tuple[str | None, bytes | None], answer: dict[str, Any]) -> None:
        response_topic, correlation = reply
        if response_topic:
            topic = response_topic
        else:
            try:
                topic = self._topic("TRIGGER", check_camera_id(answer.get("camera")))
            except InputError:
                topic = self._topic("TRIGGER")
        data = json.dumps({**answer, "box": self.box}, separators=(",", ":"), allow_nan=False,
                          default=str).encode()
        if link.publish(topic, data, correlation=correlation) is None:
            self.counts["lost"] += 1
            log.warning("trigger answer for %r not sent (the broker connection is gone); the verdict itself "
                        "still goes out on DDATA with its part_id", answer.get("part_id"))
        else:
            self.counts["answered"] += 1
