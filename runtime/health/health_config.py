"""Line-health settings (HealthConfig): the levels at which a camera's health warns or alarms.

Defaults and why are in docs/health.md; each has a `run` option where operators need one.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_somad.errors import ConfigError
from edge_somad.runtime.health.drift import BLOCKY_SCALE


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
    # score drift: the scores of every scored frame (pass and fail) against the calibration scores.
    # A two-sample KS test that counts both sizes (the reference may hold 6 or 42 scores, the window
    # counts distinct scores only: a looped replay repeats the same ones). warn: p below
    # score_warn_p AND the KS distance at least ks_warn; alarm: p below score_alarm_p AND ks_alarm.
    score_window: int = 200
    score_min_samples: int = 50
    score_warn_p: float = 1e-3
    score_alarm_p: float = 1e-5
    ks_warn: float = 0.2
    ks_alarm: float = 0.35
    # fail rate over the last fail_window pass/fail verdicts (from fail_min_verdicts on)
    fail_window: int = 50
    fail_min_verdicts: int = 20
    fail_rate_warn: float = 0.2
    fail_rate_alarm: float = 0.5
    # compression at model resolution: mean 8x8 JPEG blockiness (runtime/health/drift.blockiness) of frames
    # that reach the model at >= blocky_scale of their size (their blocks are still 6+ model pixels)
    blockiness_warn: float = 1.12  # or the fit images' mean + blockiness_margin, if higher
    blockiness_margin: float = 0.15
    blocky_scale: float = BLOCKY_SCALE
    # A camera that cannot be opened, is reconnecting or has stalled: warn at once, alarm after this.
    unavailable_alarm_s: float = 5.0
    # A state goes UP at once but comes DOWN only after this many frames in a row would lower it: a
    # value hovering at a threshold must not send a `_status` event per frame.
    clear_frames: int = 10

    def __post_init__(self) -> None:
        pairs = (("input warn/alarm z", self.input_warn_z, self.input_alarm_z),
                 ("KS warn/alarm", self.ks_warn, self.ks_alarm),
                 ("fail rate warn/alarm", self.fail_rate_warn, self.fail_rate_alarm))
        for name, warn, alarm in pairs:
            if not 0 < warn <= alarm:
                raise ConfigError(f"{name} thresholds {warn:g}/{alarm:g}; expected 0 < warn <= alarm")
        if not 0 < self.score_alarm_p <= self.score_warn_p < 1:
            raise ConfigError(f"score drift p-values warn {self.score_warn_p:g} / alarm {self.score_alarm_p:g}; "
                              "expected 0 < alarm <= warn < 1")
        if not 1 <= self.fail_min_verdicts <= self.fail_window:
            raise ConfigError(f"fail_min_verdicts {self.fail_min_verdicts}; expected 1..fail_window "
                              f"({self.fail_window})")
        if self.blockiness_warn <= 1 or self.blocky_scale <= 0:
            raise ConfigError(f"blockiness warn {self.blockiness_warn:g} / scale {self.blocky_scale:g}; expected "
                              "a warn level > 1 (1 = no blocks) and a scale > 0")
        if self.input_window < 1 or self.score_window < 1:
            raise ConfigError(f"windows {self.input_window}/{self.score_window}; expected >= 1 frame")
        if not 1 <= self.input_min_frames <= self.input_window:
            raise ConfigError(f"input_min_frames {self.input_min_frames}; expected 1..input_window "
                              f"({self.input_window})")
        if not 1 <= self.score_min_samples <= self.score_window:
            raise ConfigError(f"score_min_samples {self.score_min_samples}; expected 1..score_window "
                              f"({self.score_window})")
        if self.unavailable_alarm_s < 0:
            raise ConfigError(f"camera unavailable alarm after {self.unavailable_alarm_s:g} s; expected >= 0 s")
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
