"""Line health as alarms a plant acts on: one alarm per camera and health check, with acknowledge.

`run` reports health as a block per camera (heartbeat `cameras.<id>.health`, `_status` event
`health`; docs/messages.md). A PLC, an HMI or an operator does not want to parse reason texts: it
wants "camera c1, black frames: active since 10:02, not acknowledged". `AlarmBook` turns health
blocks into that, following the OPC UA alarm model (Part 9) so the OPC UA bridge maps it one to
one, and the MQTT bridge and the view use the same states:

- an alarm is `active` while its check is not ok; it becomes active `acked: false`;
- `acknowledge` (with the alarm's current event id, so an operator acknowledges what they saw,
  not a later escalation) sets `acked: true`;
- `retain` (the alarm still needs someone's attention) is true while active or not acknowledged:
  an alarm that clears unacknowledged stays listed until acknowledged;
- every change gets a new event id (escalation warn -> alarm, a new message, clear, acknowledge).

The health block arrives over the network: anything malformed is ignored, never raised.
Pure Python (no numpy), so every bridge and the view can use it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Checks as the plant sees them. Camera faults are split by kind: "black" and "frozen" call for
# different people (lighting/lens vs camera/cable).
CHECKS = ("black", "saturated", "frozen", "resolution", "link", "input_drift", "score_drift", "fail_rate",
          "compression")
SEVERITY = {"warn": 500, "alarm": 800}  # OPC UA severity 1..1000: warn medium, alarm high
_FAULT = "camera fault: "
_DRIFT = {part: part.replace("_", " ") + " " for part in ("input_drift", "score_drift", "fail_rate", "compression")}


def active_checks(health: Any) -> dict[str, tuple[str, str]]:
    """check -> (level `warn`|`alarm`, message) for every check a health block reports as not ok.

    Read from `reasons` (the texts runtime/health/health.py writes, held together with the state,
    so an alarm does not flicker while the state is held), with the level the reason names."""
    if not isinstance(health, dict) or not isinstance(health.get("reasons"), list):
        return {}
    state = health.get("state") if health.get("state") in SEVERITY else "warn"
    out: dict[str, tuple[str, str]] = {}
    for reason in health["reasons"][:50]:
        if not isinstance(reason, str):
            continue
        text = reason[:500]
        if text.startswith(_FAULT):
            kind = text[len(_FAULT):].split(" ", 1)[0]
            if kind in CHECKS:
                out[kind] = ("alarm", text)
        elif text.startswith("resolution changed"):
            out["resolution"] = ("alarm", text)
        elif text.startswith("camera "):  # camera unavailable / reconnecting / stalled
            # The link turns alarm after --camera-alarm seconds; the reason does not say which, the state does.
            out["link"] = (state, text)
        else:
            for check, prefix in _DRIFT.items():
                if text.startswith(prefix):
                    level = text[len(prefix):].split(":", 1)[0].strip()
                    out[check] = (level if level in SEVERITY else "warn", text)
    return out


@dataclass
class Alarm:
    camera: str
    check: str
    level: str = "warn"
    message: str = ""
    active: bool = False
    acked: bool = True
    since: float = 0.0  # time.time() the alarm became active
    changed: float = 0.0  # time.time() of the last change (the event time)
    event_id: bytes = b""
    comment: str = ""
    fired: int = 0  # times it became active

    @property
    def key(self) -> str:
        return f"{self.camera}/{self.check}"

    @property
    def retain(self) -> bool:
        return self.active or not self.acked

    @property
    def severity(self) -> int:
        return SEVERITY.get(self.level, 500)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "camera": self.camera, "check": self.check, "level": self.level,
                "severity": self.severity, "message": self.message, "active": self.active, "acked": self.acked,
                "retain": self.retain, "since": self.since, "at": self.changed, "event_id": self.event_id.hex(),
                "comment": self.comment}


class AckError(Exception):
    """An acknowledge that does not apply: unknown alarm, stale event id, already acknowledged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # unknown | event_id | acked


@dataclass
class AlarmBook:
    """All alarms of the cameras seen so far. Not thread-safe: the caller serialises."""

    alarms: dict[str, Alarm] = field(default_factory=dict)

    def _touch(self, alarm: Alarm, now: float) -> Alarm:
        alarm.changed, alarm.event_id = now, uuid.uuid4().bytes
        return alarm

    def update(self, camera: str, health: Any, now: float | None = None) -> list[Alarm]:
        """Apply one camera's health block; returns the alarms that changed (each with a new event id)."""
        now = time.time() if now is None else now
        found = active_checks(health)
        changed = []
        for check, (level, message) in found.items():
            alarm = self.alarms.setdefault(f"{camera}/{check}", Alarm(camera, check))
            if not alarm.active:
                alarm.active, alarm.acked, alarm.since, alarm.comment = True, False, now, ""
                alarm.level, alarm.message, alarm.fired = level, message, alarm.fired + 1
                changed.append(self._touch(alarm, now))
            elif level != alarm.level:  # escalated or eased: the operator must see the new severity
                if SEVERITY[level] > SEVERITY.get(alarm.level, 0):
                    alarm.acked = False  # an acknowledged warning that turns alarm is new to the operator
                alarm.level, alarm.message = level, message
                changed.append(self._touch(alarm, now))
            else:
                alarm.message = message  # numbers in the text move every heartbeat: no event for that
        for alarm in self.alarms.values():
            if alarm.camera == camera and alarm.active and alarm.check not in found:
                alarm.active = False
                changed.append(self._touch(alarm, now))
        return changed

    def acknowledge(self, key: str, event_id: bytes | None, comment: str = "", now: float | None = None) -> Alarm:
        """Acknowledge alarm `key` (`camera/check`). With an event id, only if it is the alarm's
        current one (OPC UA semantics); None acknowledges whatever is current (the view's button)."""
        alarm = self.alarms.get(key)
        if alarm is None:
            raise AckError("unknown", f"no alarm {key!r}; known: {sorted(self.alarms)[:20]}")
        if event_id is not None and event_id != alarm.event_id:
            raise AckError("event_id", f"alarm {key}: event id {event_id.hex()} is not its current one "
                                       f"({alarm.event_id.hex()}); refresh and acknowledge what is shown now")
        if alarm.acked:
            raise AckError("acked", f"alarm {key} is already acknowledged")
        alarm.acked, alarm.comment = True, str(comment)[:500]
        return self._touch(alarm, time.time() if now is None else now)

    def retained(self) -> list[Alarm]:
        """Alarms that need attention (active or unacknowledged), newest first."""
        return sorted((a for a in self.alarms.values() if a.retain), key=lambda a: a.changed, reverse=True)
