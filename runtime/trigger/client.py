"""The control endpoint's client: one request, one answer, a deadline. What the `trigger` command, the
OPC UA `Trigger` method, the MQTT command topic and a Sparkplug DCMD call.

A fresh REQ socket per request (linger 0): a REQ socket that timed out waits for its answer forever
and cannot send again, and a client that gave up must not leave a message queued for later.
"""

from __future__ import annotations

import json
from typing import Any

import zmq

from edge_somad.errors import ControlTimeoutError, InputError
from edge_somad.runtime.trigger.request import check_deadline_ms, check_part_id, shown

MAX_REPLY_BYTES = 1 << 20  # a verdict header is a few kB; more is not our runtime


def request(endpoint: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Send one JSON command to `run --control` and return its JSON answer.

    ControlTimeoutError when no answer came within timeout_s; InputError when the answer is not a
    JSON object."""
    if not timeout_s > 0:
        raise InputError(f"timeout_s {timeout_s!r}; expected seconds > 0")
    try:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # NaN, or a value JSON has no form for
        raise InputError(f"request {shown(body, 120)} cannot be sent as JSON ({exc}); expected plain values") from exc
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
    try:
        sock.connect(endpoint)
        sock.send(data)
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlTimeoutError(
                f"no answer from the control endpoint {endpoint} within {timeout_s:g} s to {shown(body, 120)}; "
                "is `edge-somad run --control` running there (and not stuck)?")
        raw = sock.recv()
    except zmq.ZMQError as exc:
        raise InputError(f"control endpoint {endpoint!r}: {exc}; expected e.g. tcp://127.0.0.1:5560") from exc
    finally:
        sock.close(linger=0)
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"answer {shown(raw[:60])} from {endpoint} is not JSON ({exc}); expected an object") from exc
    if not isinstance(answer, dict):
        raise InputError(f"answer from {endpoint} is a JSON {type(answer).__name__}; expected an object")
    return answer


def request_trigger(endpoint: str, part_id: str, deadline_ms: int | None, timeout_s: float, *,
                    camera: str | None = None, source: str = "zmq") -> dict[str, Any]:
    """Trigger the inspection of part `part_id`; returns the verdict JSON (docs/triggers.md):
    `verdict` pass | fail | error, `error` (e.g. "deadline: ..."), `part_id`, `trigger_ts`, score, ...

    deadline_ms None: the runtime's default (`run --trigger-deadline-ms`). The part id and deadline are
    checked here too, so a bad one fails before it travels."""
    body: dict[str, Any] = {"cmd": "trigger", "part_id": check_part_id(part_id), "source": source}
    if deadline_ms is not None:
        body["deadline_ms"] = check_deadline_ms(deadline_ms)
    if camera is not None:
        body["camera"] = camera
    return request(endpoint, body, timeout_s)
