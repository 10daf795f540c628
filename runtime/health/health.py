"""Line health per camera: camera faults, link, drift, fail rate, compression -> ok | warn | alarm.

A model goes wrong quietly: the light ages, the lens defocuses, a camera freezes on one frame, a
new batch shifts every score. None of it raises an error, so this monitor watches these and the
pipeline reports them in every heartbeat and as `_status` events when a camera's state changes or a
new kind of reason appears (docs/health.md):

- camera faults (per frame): black or saturated frames, a frozen stream (identical frames for
  `frozen_s` seconds AND `frozen_frames` frames while frames keep coming), a resolution change.
  A black, saturated or frozen frame is not scored: its verdict is `error` "camera fault: ...".
- the camera's link (runtime/pipeline/camera_watch.py): unavailable, reconnecting or stalled.
- input drift, score drift (all scored frames), fail rate and compression: runtime/health/health_parts.py.
Numpy and OpenCV; thresholds in HealthConfig (runtime/health/health_config.py, CLI options on `run`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import cv2
import numpy as np

from edge_somad.runtime.health import drift, health_parts
from edge_somad.runtime.health.health_config import HealthConfig

__all__ = ["DRIFT_PARTS", "STATES", "CameraHealth", "HealthConfig", "LineHealth", "worst"]

STATES = ("ok", "warn", "alarm")
DRIFT_PARTS = ("input_drift", "score_drift", "fail_rate", "compression")
_RANK = {s: i for i, s in enumerate(STATES)}


def worst(*states: str) -> str:
    return max(states, key=_RANK.__getitem__, default="ok")


class CameraHealth:
    """Health of one camera. Called from the pipeline thread only (no locking needed)."""

    def __init__(self, camera: str, reference: dict[str, Any], config: HealthConfig = HealthConfig(),
                 score_drift: bool = True) -> None:
        self.camera, self.config, self._score_drift = camera, config, score_drift
        self.state = "ok"
        self.reasons: list[str] = []
        self.new_reasons: list[str] = []  # reasons whose kind was not among the previous state's
        self._kinds: set[str] = set()
        self.fault: str | None = None
        # A frame identical to the one before while the stream is not (yet) declared frozen: it says
        # nothing new about the line, so its verdict must not be `pass` (the pipeline makes it an error).
        self.repeated: str | None = None
        self.link: tuple[str, str, float] | None = None  # (status, detail, seconds without a frame)
        self.faults = {"black": 0, "saturated": 0, "frozen": 0, "resolution": 0}
        self.resolution: tuple[int, int] | None = None
        self.resolution_changed: str | None = None
        self._metrics: deque[dict[str, float]] = deque(maxlen=config.input_window)
        self._scores: deque[float] = deque(maxlen=config.score_window)
        self._outcomes: deque[bool] = deque(maxlen=config.fail_window)  # True = fail
        self._blocky: deque[float] = deque(maxlen=config.input_window)
        self._prev: np.ndarray | None = None
        self._same = 0  # consecutive frames identical to the one before
        self._same_since = 0.0
        self._cache: dict[str, Any] | None = None  # input/score drift, recomputed when data changed
        self._calm = 0  # consecutive updates that would lower the state
        self._frames = 0  # frames observed, for drift_every
        self.set_reference(reference)

    def set_reference(self, reference: dict[str, Any]) -> None:
        """The model's references (manifest.reference); again when a new model goes live while running,
        whose scores are on its own scale: the score window starts over."""
        self.input_ref = reference.get("input") or {}
        scores = (reference.get("scores") or {}).get("quantiles")
        # int8 scores are on another scale than the fp32 calibration scores: no comparison then.
        self.score_q = np.asarray(scores, np.float64) if scores and self._score_drift else None
        # How many calibration scores the quantiles summarise: the KS test's reference size. Older
        # manifests did not record it; 20 is a cautious guess (fewer -> fewer false alarms).
        self.score_n = int((reference.get("scores") or {}).get("n") or 20)
        self._scores.clear()
        self._cache = None

    # -- per frame ---------------------------------------------------------------------------------
    def observe_frame(self, shape: tuple[int, int], resized: np.ndarray, at: float,
                      content: drift.Box | None = None, frame: np.ndarray | None = None,
                      scale: float = 0.0) -> str | None:
        """Record one decoded frame: original shape, model-input frame, monotonic time; optionally the
        frame's content box on the canvas (padding left out of the metrics), the original frame and
        its scale onto the model (for compression at model resolution).
        Returns the camera fault that makes this frame unusable, or None."""
        if not self.config.enabled:
            return None
        self.repeated = None
        self._check_resolution(shape)
        sample = self._frames % self.config.drift_every == 0
        self._frames += 1
        metrics = drift.frame_metrics(resized, content, sharpness=sample)
        fault = self._flat_fault(metrics) or self._frozen_fault(resized, at)
        self.fault = fault
        if fault is None:
            if sample:  # faulty frames stay out of the drift windows: a black frame is a fault, not "drift"
                self._metrics.append(metrics)
                if frame is not None and scale >= self.config.blocky_scale:
                    b = drift.blockiness(frame)
                    if b is not None:
                        self._blocky.append(b)
                self._cache = None
        else:
            self.faults[fault.split(" ", 1)[0]] += 1
        return fault

    def observe_verdict(self, verdict: str, score: float | None) -> None:
        if not self.config.enabled or verdict not in ("pass", "fail"):
            return
        self._outcomes.append(verdict == "fail")
        if score is not None and self.score_q is not None:
            self._scores.append(score)
        self._cache = None

    def _check_resolution(self, shape: tuple[int, int]) -> None:
        shape = (int(shape[0]), int(shape[1]))
        if self.resolution is None:
            self.resolution = shape
        elif shape != self.resolution and self.resolution_changed is None:
            # Kept until restart: defect boxes, sharpness and the fit statistics all assumed the first.
            self.resolution_changed = (f"resolution changed from {self.resolution[1]}x{self.resolution[0]} "
                                       f"to {shape[1]}x{shape[0]}")
            self.faults["resolution"] += 1

    def _flat_fault(self, m: dict[str, float]) -> str | None:
        c = self.config
        if m["contrast"] < c.flat_std and m["brightness"] < c.black_level:
            return f"black frame (mean luma {m['brightness']:.1f} < {c.black_level:g}, std {m['contrast']:.1f})"
        if m["contrast"] < c.flat_std and m["brightness"] > c.saturated_level:
            return (f"saturated frame (mean luma {m['brightness']:.1f} > {c.saturated_level:g}, "
                    f"std {m['contrast']:.1f})")
        return None

    def _frozen_fault(self, resized: np.ndarray, at: float) -> str | None:
        prev, self._prev = self._prev, resized
        # cv2.norm L1 / size is the mean |difference| (exact on uint8), without numpy's int16 copies.
        same = (prev is not None and prev.shape == resized.shape
                and cv2.norm(prev, resized, cv2.NORM_L1) / resized.size <= self.config.frozen_tolerance)
        if not same:
            self._same = 0
            return None
        if self._same == 0:
            self._same_since = at
        self._same += 1
        held = at - self._same_since
        if self._same + 1 >= self.config.frozen_frames and held >= self.config.frozen_s:
            return f"frozen stream ({self._same + 1} identical frames over {held:.1f} s)"
        self.repeated = (f"frozen stream suspected ({self._same + 1} identical frames over {held:.1f} s; "
                         f"declared at {self.config.frozen_frames} frames and {self.config.frozen_s:g} s)")
        return None

    # -- state -------------------------------------------------------------------------------------
    def update(self) -> tuple[str, str] | None:
        """Recompute the state; returns (previous, new) when it changed or a new kind of reason
        appeared (then `new_reasons` lists them; previous may equal new), for a `_status` event."""
        if not self.config.enabled:
            return None
        snap = self._drift()
        reasons: list[tuple[str, str]] = []  # (kind, text): a kind is what makes an event "new"
        if self.fault:
            reasons.append((f"fault {self.fault.split(' ', 1)[0]}", f"camera fault: {self.fault}"))
        if self.resolution_changed:
            reasons.append(("resolution", self.resolution_changed))
        state = "alarm" if self.fault or self.resolution_changed else "ok"
        if self.link is not None:
            status, detail, for_s = self.link
            reasons.append((f"camera {status}", f"camera {status}: {detail} (no frame for {for_s:.1f} s)"))
            state = worst(state, "alarm" if for_s >= self.config.unavailable_alarm_s else "warn")
        for part in DRIFT_PARTS:
            if snap[part]["state"] != "ok":
                reasons.append((part, f"{part.replace('_', ' ')} {snap[part]['state']}: {snap[part]['reason']}"))
                state = worst(state, snap[part]["state"])
        if _RANK[state] < _RANK[self.state]:
            self._calm += 1
            if self._calm < self.config.clear_frames:
                return None  # hold the higher state (and its reasons) a little longer
        self._calm = 0
        kinds = {k for k, _ in reasons}
        self.new_reasons = [text for k, text in reasons if k not in self._kinds]
        previous, self.state, self.reasons, self._kinds = self.state, state, [t for _, t in reasons], kinds
        return (previous, state) if previous != state or self.new_reasons else None

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's `cameras.<id>.health` block (documented in docs/messages.md)."""
        if not self.config.enabled:
            return {"state": "ok", "enabled": False}
        link = None if self.link is None else {"status": self.link[0], "detail": self.link[1],
                                               "no_frame_s": round(self.link[2], 3)}
        return {"state": self.state, "reasons": list(self.reasons), "fault": self.fault, "link": link,
                "fault_counts": dict(self.faults),
                "resolution": list(self.resolution) if self.resolution else None, **self._drift()}

    def _drift(self) -> dict[str, Any]:
        if self._cache is None:
            c = self.config
            self._cache = {
                "input_drift": health_parts.input_drift(self._metrics, self.input_ref, c),
                "score_drift": health_parts.score_drift(self._scores, self.score_q, self.score_n, c),
                "fail_rate": health_parts.fail_rate(self._outcomes, c),
                "compression": health_parts.compression(self._blocky, self.input_ref.get("blockiness"), c),
            }
        return self._cache


class LineHealth:
    """CameraHealth for every camera of a pipeline, with state changes sent to `on_change`."""

    def __init__(self, cameras: list[str], reference: dict[str, Any], config: HealthConfig,
                 score_drift: bool, on_change: Any) -> None:
        self.cameras = {cid: CameraHealth(cid, reference, config, score_drift) for cid in cameras}
        self._on_change = on_change

    def frame(self, camera: str, shape: tuple[int, int], resized: np.ndarray, at: float,
              content: drift.Box | None = None, frame: np.ndarray | None = None, scale: float = 0.0) -> str | None:
        return self.cameras[camera].observe_frame(shape, resized, at, content, frame, scale)

    def set_reference(self, reference: dict[str, Any]) -> None:
        for cam in self.cameras.values():
            cam.set_reference(reference)

    def verdict(self, camera: str, verdict: str, score: float | None) -> None:
        cam = self.cameras.get(camera)
        if cam is None:
            return
        cam.observe_verdict(verdict, score)
        self._update(cam)

    def link(self, camera: str, problem: tuple[str, str, float] | None) -> None:
        """The camera's connection: (status, detail, seconds without a frame) or None when delivering."""
        cam = self.cameras[camera]
        cam.link = problem
        self._update(cam)

    def repeated(self, camera: str) -> str | None:
        """Why the camera's last frame must not pass (identical to the one before), or None."""
        return self.cameras[camera].repeated

    def _update(self, cam: CameraHealth) -> None:
        change = cam.update()
        if change is not None:
            self._on_change({"event": "health", "camera": cam.camera, "previous": change[0], "state": change[1],
                             "reasons": list(cam.reasons), "new_reasons": list(cam.new_reasons),
                             "health": cam.snapshot()})

    def snapshot(self, camera: str) -> dict[str, Any]:
        return self.cameras[camera].snapshot()
