"""The pipeline's watch over each camera's link: unavailable, reconnecting or stalled, and for how long.

A capture thread reports what it knows (opened, cannot open, no answer, lost). What it cannot
report is the silence of a stream that stays open and sends nothing (a paused RTSP source): the
thread is then blocked in the driver. So the loop asks every camera, a few times a second, how long
it has delivered nothing, and:
- publishes a `stalled` camera event on `_status` when a running live source has sent no frame for
  `stall_frames` frame intervals (at least `stall_min_s`), and `running` again when frames resume;
- hands the camera's link problem to line health (warn at once, alarm after `unavailable_alarm_s`),
  so the heartbeat's `health` block says so;
- tells the loop to end the run when a camera has delivered nothing for `--camera-timeout` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from edge_somad.runtime.health.health import LineHealth
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.pipeline.camera import CameraSource

OUTAGE = ("unavailable", "reconnecting", "stalled")


class CameraWatch:
    def __init__(self, cameras: list[CameraSource], health: LineHealth, lock: threading.Lock,
                 publish_status: Callable[[dict[str, Any]], None], timeout_s: float | None,
                 every_s: float = 0.2) -> None:
        self.cameras, self.health, self._lock = cameras, health, lock
        self._publish, self.timeout_s, self._every = publish_status, timeout_s, every_s
        self._status = {c.id: c.status for c in cameras}
        self._next = 0.0
        self.timed_out: str | None = None  # the camera that ended the run (--camera-timeout)

    def status(self, cam: CameraSource) -> str:
        """The camera's status as published in heartbeats: the capture thread's, or `stalled`."""
        stalled = self._status.get(cam.id) == "stalled" and cam.status == "running"
        return "stalled" if stalled else cam.status

    def check(self, now: float | None = None) -> str | None:
        """Look at every camera (at most every `every_s`); returns why the run must end, or None."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return None
        self._next = now + self._every
        why = None
        for cam in self.cameras:
            stalled = cam.stalled_for(now)
            status = "stalled" if stalled is not None else cam.status
            if status != self._status[cam.id]:
                self._stall_event(cam, status, stalled)
                self._status[cam.id] = status
            problem = None
            if status in OUTAGE:
                detail = (f"no frame within {cam.stall_limit():.1f} s" if status == "stalled"
                          else cam.detail or status)
                problem = (status, detail, cam.no_frame_for(now))
            with self._lock:
                self.health.link(cam.id, problem)
            if why is None and problem and self.timeout_s is not None and problem[2] >= self.timeout_s:
                self.timed_out = cam.id
                why = (f"camera {cam.id} {status} ({problem[1]}): no frame for {problem[2]:.1f} s "
                       f"(--camera-timeout {self.timeout_s:g})")
        return why

    def _stall_event(self, cam: CameraSource, status: str, stalled: float | None) -> None:
        """Stalls are seen here, not in the capture thread: publish their start and end."""
        previous = self._status[cam.id]
        if status == "stalled":
            detail = f"no frame for {stalled:.1f} s (limit {cam.stall_limit():.1f} s)"
        elif previous == "stalled" and status == "running":
            detail = "frames again after a stall"
        else:
            return  # the capture thread published this change itself
        self._publish({"schema": messages.STATUS_SCHEMA, "event": "camera", "camera": cam.id, "status": status,
                       "detail": detail, "at": time.time()})
