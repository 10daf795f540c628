"""Line health per camera: camera faults, input drift and score drift -> a state ok | warn | alarm.

A model goes wrong quietly: the light ages, the lens defocuses, a camera freezes on one frame, a
new batch shifts every score. None of it raises an error, so this monitor watches three things and
the pipeline reports them in every heartbeat and as `_status` events when a camera's state changes:

- camera faults (per frame): black or saturated frames, a frozen stream (identical frames for
  `frozen_s` seconds AND `frozen_frames` frames while frames keep coming), a resolution change.
  A black, saturated or frozen frame is not scored: its verdict is `error` "camera fault: ...".
- input drift: rolling mean of brightness / contrast / sharpness vs the fit images' statistics,
  as z-scores (std floored: fit images are often more alike than a line ever is).
- score drift: rolling window of `pass` scores vs the calibration scores' distribution (PSI, KS).
Numpy and OpenCV; thresholds in HealthConfig (CLI options on `run`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_somad.errors import ConfigError
from edge_somad.runtime import drift

STATES = ("ok", "warn", "alarm")
_RANK = {s: i for i, s in enumerate(STATES)}


def worst(*states: str) -> str:
    return max(states, key=_RANK.__getitem__, default="ok")


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    # camera faults
    black_level: float = 16.0  # mean luma below this AND flat (std < flat_std): black frame
    saturated_level: float = 240.0  # mean luma above this AND flat: saturated frame
    flat_std: float = 8.0
    frozen_s: float = 3.0  # identical frames for at least this long ...
    frozen_frames: int = 10  # ... and at least this many of them (a 1 fps camera is not frozen in 2 frames)
    frozen_tolerance: float = 0.0  # mean |difference| in grey levels still counted as "identical"
    # input drift (z-scores of the rolling mean against the fit images)
    input_window: int = 30  # samples (every drift_every-th good frame)
    input_min_frames: int = 10
    # Input drift metrics of every n-th frame per camera (1: all). Black/saturated/frozen checks still
    # run on every frame. 1 by default: in OpenCV the metrics are a small share of the host's frame
    # (docs/results.md, "Speed"), and sampling stretches the time the window needs to see a change by n.
    drift_every: int = 1
    input_warn_z: float = 4.0
    input_alarm_z: float = 8.0
    brightness_std_floor: float = 3.0  # grey levels
    contrast_std_floor: float = 2.0  # grey levels
    sharpness_std_floor: float = 0.15  # on log(1 + variance of the Laplacian): about +-15 %
    # score drift (pass scores against the calibration scores)
    score_window: int = 200
    score_min_samples: int = 50
    psi_warn: float = 0.1
    psi_alarm: float = 0.25
    ks_warn: float = 0.2
    ks_alarm: float = 0.35
    # A state goes UP at once but comes DOWN only after this many frames in a row would lower it: a
    # value hovering at a threshold must not send a `_status` event per frame.
    clear_frames: int = 10

    def __post_init__(self) -> None:
        pairs = (("input warn/alarm z", self.input_warn_z, self.input_alarm_z),
                 ("PSI warn/alarm", self.psi_warn, self.psi_alarm), ("KS warn/alarm", self.ks_warn, self.ks_alarm))
        for name, warn, alarm in pairs:
            if not 0 < warn <= alarm:
                raise ConfigError(f"{name} thresholds {warn:g}/{alarm:g}; expected 0 < warn <= alarm")
        if self.input_window < 1 or self.score_window < 1:
            raise ConfigError(f"windows {self.input_window}/{self.score_window}; expected >= 1 frame")
        if not 1 <= self.input_min_frames <= self.input_window:
            raise ConfigError(f"input_min_frames {self.input_min_frames}; expected 1..input_window "
                              f"({self.input_window})")
        if not 1 <= self.score_min_samples <= self.score_window:
            raise ConfigError(f"score_min_samples {self.score_min_samples}; expected 1..score_window "
                              f"({self.score_window})")
        if self.drift_every < 1:
            raise ConfigError(f"--drift-every {self.drift_every}; expected >= 1 (1: every frame)")
        if self.clear_frames < 1:
            raise ConfigError(f"clear_frames {self.clear_frames}; expected >= 1")
        if self.frozen_s < 0 or self.frozen_frames < 2:
            raise ConfigError(f"frozen limit {self.frozen_s:g} s / {self.frozen_frames} frames; expected "
                              ">= 0 s and >= 2 frames")

    def floor(self, metric: str) -> float:
        return {"brightness": self.brightness_std_floor, "contrast": self.contrast_std_floor,
                "sharpness": self.sharpness_std_floor}[metric]


class CameraHealth:
    """Health of one camera. Called from the pipeline thread only (no locking needed)."""

    def __init__(self, camera: str, reference: dict[str, Any], config: HealthConfig = HealthConfig(),
                 score_drift: bool = True) -> None:
        self.camera, self.config = camera, config
        self.input_ref = reference.get("input") or {}
        scores = (reference.get("scores") or {}).get("quantiles")
        # int8 scores are on another scale than the fp32 calibration scores: no comparison then.
        self.score_q = np.asarray(scores, np.float64) if scores and score_drift else None
        self.state = "ok"
        self.reasons: list[str] = []
        self.fault: str | None = None
        self.faults = {"black": 0, "saturated": 0, "frozen": 0, "resolution": 0}
        self.resolution: tuple[int, int] | None = None
        self.resolution_changed: str | None = None
        self._metrics: deque[dict[str, float]] = deque(maxlen=config.input_window)
        self._scores: deque[float] = deque(maxlen=config.score_window)
        self._prev: np.ndarray | None = None
        self._same = 0  # consecutive frames identical to the one before
        self._same_since = 0.0
        self._cache: dict[str, Any] | None = None  # input/score drift, recomputed when data changed
        self._calm = 0  # consecutive updates that would lower the state
        self._frames = 0  # frames observed, for drift_every

    # -- per frame ---------------------------------------------------------------------------------
    def observe_frame(self, shape: tuple[int, int], resized: np.ndarray, at: float) -> str | None:
        """Record one decoded frame (original shape, model-input frame, monotonic time).
        Returns the camera fault that makes this frame unusable, or None."""
        if not self.config.enabled:
            return None
        self._check_resolution(shape)
        sample = self._frames % self.config.drift_every == 0
        self._frames += 1
        metrics = drift.frame_metrics(resized, sharpness=sample)
        fault = self._flat_fault(metrics) or self._frozen_fault(resized, at)
        self.fault = fault
        if fault is None:
            if sample:  # faulty frames stay out of the drift windows: a black frame is a fault, not "drift"
                self._metrics.append(metrics)
                self._cache = None
        else:
            self.faults[fault.split(" ", 1)[0]] += 1
        return fault

    def observe_verdict(self, verdict: str, score: float | None) -> None:
        if self.config.enabled and verdict == "pass" and score is not None and self.score_q is not None:
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
        return None

    # -- state -------------------------------------------------------------------------------------
    def update(self) -> tuple[str, str] | None:
        """Recompute the state; returns (previous, new) when it changed, for a `_status` event."""
        if not self.config.enabled:
            return None
        snap = self._drift()
        reasons = []
        if self.fault:
            reasons.append(f"camera fault: {self.fault}")
        if self.resolution_changed:
            reasons.append(self.resolution_changed)
        for part in ("input_drift", "score_drift"):
            if snap[part]["state"] != "ok":
                reasons.append(f"{part.replace('_', ' ')} {snap[part]['state']}: {snap[part]['reason']}")
        state = "alarm" if self.fault or self.resolution_changed else "ok"
        state = worst(state, snap["input_drift"]["state"], snap["score_drift"]["state"])
        if _RANK[state] < _RANK[self.state]:
            self._calm += 1
            if self._calm < self.config.clear_frames:
                return None  # hold the higher state (and its reasons) a little longer
        self._calm = 0
        previous, self.state, self.reasons = self.state, state, reasons
        return (previous, state) if previous != state else None

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's `cameras.<id>.health` block (documented in docs/messages.md)."""
        if not self.config.enabled:
            return {"state": "ok", "enabled": False}
        return {"state": self.state, "reasons": list(self.reasons), "fault": self.fault,
                "fault_counts": dict(self.faults),
                "resolution": list(self.resolution) if self.resolution else None, **self._drift()}

    def _drift(self) -> dict[str, Any]:
        if self._cache is None:
            self._cache = {"input_drift": self._input_drift(), "score_drift": self._score_drift()}
        return self._cache

    def _input_drift(self) -> dict[str, Any]:
        c = self.config
        n = len(self._metrics)
        out: dict[str, Any] = {"state": "ok", "reason": None, "n": n}
        if not self.input_ref:
            return {**out, "reason": "no input reference in manifest.json (re-export or recalibrate the model)"}
        if n < c.input_min_frames:
            return out
        worst_z, worst_m = 0.0, ""
        for m in drift.INPUT_METRICS:
            ref = self.input_ref.get(m)
            if not ref:
                continue
            value = float(np.mean([r[m] for r in self._metrics]))
            z = (drift.comparable(m, value) - ref["mean"]) / max(ref["std"], c.floor(m))
            out[m] = {"value": round(value, 3), "z": round(z, 2)}
            if abs(z) > abs(worst_z):
                worst_z, worst_m = z, m
        level = abs(worst_z)
        state = "alarm" if level >= c.input_alarm_z else "warn" if level >= c.input_warn_z else "ok"
        if state != "ok":
            direction = "above" if worst_z > 0 else "below"
            out["reason"] = f"{worst_m} {abs(worst_z):.1f} std {direction} the fit images"
        out["state"] = state
        return out

    def _score_drift(self) -> dict[str, Any]:
        c = self.config
        n = len(self._scores)
        out: dict[str, Any] = {"state": "ok", "reason": None, "n": n, "psi": None, "ks": None}
        if self.score_q is None:
            return {**out, "reason": "no calibration scores in manifest.json (or int8 run): not measured"}
        if n < c.score_min_samples:
            return out
        sample = np.fromiter(self._scores, np.float64, n)
        p, k = drift.psi(self.score_q, sample), drift.ks(self.score_q, sample)
        out["psi"], out["ks"] = round(p, 4), round(k, 4)
        state = worst("alarm" if p >= c.psi_alarm else "warn" if p >= c.psi_warn else "ok",
                      "alarm" if k >= c.ks_alarm else "warn" if k >= c.ks_warn else "ok")
        if state != "ok":
            out["reason"] = f"PSI {p:.3f}, KS {k:.3f} of the last {n} pass scores vs calibration"
        out["state"] = state
        return out


class LineHealth:
    """CameraHealth for every camera of a pipeline, with state changes sent to `on_change`."""

    def __init__(self, cameras: list[str], reference: dict[str, Any], config: HealthConfig,
                 score_drift: bool, on_change: Any) -> None:
        self.cameras = {cid: CameraHealth(cid, reference, config, score_drift) for cid in cameras}
        self._on_change = on_change

    def frame(self, camera: str, shape: tuple[int, int], resized: np.ndarray, at: float) -> str | None:
        return self.cameras[camera].observe_frame(shape, resized, at)

    def verdict(self, camera: str, verdict: str, score: float | None) -> None:
        cam = self.cameras.get(camera)
        if cam is None:
            return
        cam.observe_verdict(verdict, score)
        change = cam.update()
        if change is not None:
            self._on_change({"event": "health", "camera": camera, "previous": change[0], "state": change[1],
                             "reasons": list(cam.reasons), "health": cam.snapshot()})

    def snapshot(self, camera: str) -> dict[str, Any]:
        return self.cameras[camera].snapshot()
