"""A trigger as the box received it: which part, when, by when, from where. Validated once, here.

Everything in a request came over the network (a PLC, a broker, a script): every field is checked
for its type and range, unknown fields are refused (a typo such as `deadline` for `deadline_ms`
must not silently fall back to the default deadline), and errors name what arrived and what is
expected.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from edge_somad.errors import InputError
from edge_somad.runtime.messaging.messages import check_camera_id

PART_ID_RULE = "1 to 64 printable characters, no control characters, no leading or trailing spaces"
MAX_DEADLINE_MS = 60_000  # a part waits at a station for seconds, not minutes
DEFAULT_DEADLINE_MS = 500
TRIGGER_FIELDS = ("cmd", "part_id", "deadline_ms", "camera", "source")
_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


def shown(value: object, limit: int = 60) -> str:
    """A printable excerpt of a value that arrived from the network, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 10]}... ({len(text)} characters)"


def check_part_id(part_id: object) -> str:
    """The part id if it obeys PART_ID_RULE; InputError naming what arrived otherwise."""
    if (not isinstance(part_id, str) or not 1 <= len(part_id) <= 64 or not part_id.isprintable()
            or part_id != part_id.strip()):
        raise InputError(f"part_id {shown(part_id)} is not allowed; expected {PART_ID_RULE}")
    return part_id


def check_deadline_ms(deadline: object) -> int:
    if isinstance(deadline, bool) or not isinstance(deadline, int) or not 0 < deadline <= MAX_DEADLINE_MS:
        raise InputError(f"deadline_ms {shown(deadline)}; expected an integer number of milliseconds "
                         f"in 1..{MAX_DEADLINE_MS}")
    return deadline


@dataclass(frozen=True)
class TriggerRequest:
    """One part to inspect. trigger_ts is this box's wall clock when the trigger arrived (for the
    answer); trigger_mono the monotonic clock then (frame selection and the deadline use it)."""

    part_id: str
    trigger_ts: float
    trigger_mono: float
    deadline_ms: int = DEFAULT_DEADLINE_MS
    source: str = "zmq"
    camera: str | None = None  # None: the runtime's only camera

    def __post_init__(self) -> None:
        check_part_id(self.part_id)
        check_deadline_ms(self.deadline_ms)
        if not isinstance(self.source, str) or _SOURCE.fullmatch(self.source) is None:
            raise InputError(f"source {shown(self.source)}; expected a name of 1 to 32 letters, digits, '_', "
                             "'.' or '-' (e.g. opcua, mqtt, zmq)")
        if self.camera is not None:
            check_camera_id(self.camera)

    @property
    def deadline_mono(self) -> float:
        return self.trigger_mono + self.deadline_ms / 1000.0

    def fields(self) -> dict[str, Any]:
        """What every answer and published verdict for this trigger carries beside the verdict."""
        return {"part_id": self.part_id, "trigger_ts": self.trigger_ts, "deadline_ms": self.deadline_ms,
                "trigger_source": self.source}


def parse_trigger(body: dict[str, Any], received: tuple[float, float] | None = None,
                  default_deadline_ms: int = DEFAULT_DEADLINE_MS) -> TriggerRequest:
    """A `trigger` command's JSON object -> TriggerRequest. received: (time.time(), time.monotonic())
    when the request arrived (now if None). InputError on anything else."""
    unknown = sorted(k for k in body if k not in TRIGGER_FIELDS)
    if unknown:
        raise InputError(f"unknown field(s) {shown(unknown)} in a trigger; expected only {list(TRIGGER_FIELDS)}")
    if "part_id" not in body:
        raise InputError(f"a trigger needs 'part_id' ({PART_ID_RULE}); got fields {sorted(body)}")
    wall, mono = received if received is not None else (time.time(), time.monotonic())
    camera = body.get("camera")
    return TriggerRequest(part_id=check_part_id(body["part_id"]), trigger_ts=wall, trigger_mono=mono,
                          deadline_ms=check_deadline_ms(body.get("deadline_ms", default_deadline_ms)),
                          source=body.get("source", "zmq"),
                          camera=None if camera is None else check_camera_id(camera))
