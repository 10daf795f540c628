"""Line health on MQTT: a retained state per camera and an event per alarm change.

The MQTT bridge's reader thread hands every heartbeat and `_status` message to `HealthTopics.observe`,
which keeps the cameras' alarms (runtime/health/alarms.AlarmBook) and returns:

- alarm events, `<root>/<group>/DALARM/<box>/<camera>`, one per change (fired, escalated, cleared),
  stored in the disk queue with the verdicts, so they reach the broker in order and survive a broker
  outage like a verdict;
- the retained state, `<root>/<group>/DHEALTH/<box>/<camera>`: the camera's health state, reasons and
  retained alarms, published by the sender whenever it changed and again on every new connection
  (a consumer that subscribes later reads it at once).

Payloads are documented in docs/bridges.md ("Line health on MQTT").
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from edge_somad.runtime.bridges.queue import Item
from edge_somad.runtime.bridges.source import _valid_camera
from edge_somad.runtime.health.alarms import Alarm, AlarmBook
from edge_somad.runtime.messaging import messages

HEALTH_SCHEMA = "edge-somad/mqtt-health/1"
ALARM_SCHEMA = "edge-somad/mqtt-alarm/1"
_STATES = ("ok", "warn", "alarm")


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


class HealthTopics:
    """Reader thread: observe(); sender thread: take_dirty() / everything(). A lock keeps them apart."""

    def __init__(self, box: str, topic: Any) -> None:
        self.box, self._topic = box, topic  # topic(kind, camera) -> str
        self.book = AlarmBook()
        self._lock = threading.Lock()
        self._state: dict[str, tuple[str, tuple[str, ...]]] = {}  # camera -> (state, reasons): what DHEALTH said
        self._retained: dict[str, bytes] = {}  # camera -> its current DHEALTH payload
        self._dirty: set[str] = set()

    def observe(self, msg: messages.Received) -> list[Item]:
        """Alarm events (queue items) for one message; updates the retained state."""
        h = msg.header
        blocks: list[tuple[str, Any]] = []
        if msg.line_snapshot:
            cams = h.get("cameras")
            for camera, info in list(cams.items())[:1000] if isinstance(cams, dict) else ():
                if isinstance(info, dict) and "health" in info and _valid_camera(camera):
                    blocks.append((camera, info["health"]))
        elif msg.kind == "status" and h.get("event") == "health" and _valid_camera(h.get("camera")):
            blocks.append((h["camera"], h.get("health")))
        items = []
        for camera, health in blocks:
            changed = self.book.update(camera, health)
            items += [Item("health", self._topic("DALARM", camera), self._alarm(a)) for a in changed]
            self._retain(camera, health, bool(changed))
        return items

    def _alarm(self, alarm: Alarm) -> bytes:
        return _dumps({"schema": ALARM_SCHEMA, "box": self.box, **alarm.as_json()})

    def _retain(self, camera: str, health: Any, alarms_changed: bool) -> None:
        health = health if isinstance(health, dict) else {}
        state = health.get("state") if health.get("state") in _STATES else "ok"
        reasons = tuple(str(r)[:500] for r in health.get("reasons", [])[:50]) if isinstance(
            health.get("reasons"), list) else ()
        # Reason texts carry numbers that move every heartbeat (z-scores, seconds): only a change of
        # state or of the alarms is a new retained message, not a new decimal.
        if not alarms_changed and self._state.get(camera, (None,))[0] == state and camera in self._retained:
            return
        self._state[camera] = (state, reasons)
        payload = _dumps({"schema": HEALTH_SCHEMA, "box": self.box, "camera": camera, "at": time.time(),
                          "state": state, "reasons": list(reasons),
                          "alarms": [a.as_json() for a in self.book.retained() if a.camera == camera]})
        with self._lock:
            self._retained[camera] = payload
            self._dirty.add(camera)

    def take_dirty(self) -> list[tuple[str, bytes]]:
        """(topic, payload) of the retained states that changed since the last call."""
        with self._lock:
            out = [(self._topic("DHEALTH", c), self._retained[c]) for c in sorted(self._dirty)]
            self._dirty.clear()
        return out

    def everything(self) -> list[tuple[str, bytes]]:
        """Every camera's retained state (a new connection publishes them all again)."""
        with self._lock:
            self._dirty.clear()
            return [(self._topic("DHEALTH", c), p) for c, p in sorted(self._retained.items())]
