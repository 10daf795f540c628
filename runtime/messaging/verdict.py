"""One frame's verdict, decided once: the finiteness check, the decision and the normalised map.

`judge` is the only place the frame path looks at NaN/inf and applies the threshold; defects,
messages and the overlay read the Verdict it returns instead of checking the raw map again. Anything
doubtful is an `error` verdict with its reason, never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edge_somad.contracts.decision import fails
from edge_somad.contracts.geometry import Geometry
from edge_somad.errors import InputError

VERDICTS = ("pass", "fail", "error")
NOT_CALIBRATED = "model not calibrated: run edge-somad calibrate"
NON_FINITE = "non-finite score or anomaly map (NaN/inf) from the scorer"


@dataclass(frozen=True)
class Verdict:
    """pass | fail | error for one frame, with what was measured.

    score and anomaly_map are finite or None (a scorer's NaN/inf output is dropped, not published);
    geometry is the frame -> model canvas mapping the pipeline planned once for this frame.
    """

    verdict: str
    error: str | None = None
    score: float | None = None
    threshold: float | None = None
    anomaly_map: np.ndarray | None = None  # (H, W) model space, raw units
    geometry: Geometry | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise InputError(f"verdict {self.verdict!r}; expected one of {VERDICTS}")

    @property
    def score_normalised(self) -> float | None:
        """score / threshold: 1.0 is the threshold whatever the model's units."""
        return self.score / self.threshold if self.score is not None and self.threshold else None

    @cached_property
    def normalised_map(self) -> np.ndarray | None:
        """anomaly_map / threshold (float32), for the PNG heatmap and the overlay; None without either.
        Computed on first use: a stream without heatmap and overlay never pays for it."""
        if self.anomaly_map is None or not self.threshold or self.threshold <= 0:
            return None
        return (self.anomaly_map / np.float32(self.threshold)).astype(np.float32, copy=False)


def judge(score: float | None, anomaly_map: np.ndarray | None, threshold: float | None,
          geometry: Geometry | None = None) -> Verdict:
    """The decision for a scored frame: error if anything is missing or non-finite, or no threshold."""
    if score is None or anomaly_map is None:
        return Verdict("error", "no score", threshold=threshold, geometry=geometry)
    if not np.isfinite(score) or not np.isfinite(anomaly_map).all():
        return Verdict("error", NON_FINITE, threshold=threshold, geometry=geometry)
    if threshold is None:
        # The map is real (finite): it is still published (f16 heatmap) for whoever calibrates by eye.
        return Verdict("error", NOT_CALIBRATED, float(score), None, anomaly_map, geometry)
    return Verdict("fail" if fails(score, threshold) else "pass", None, float(score), threshold, anomaly_map,
                   geometry)


def unscored(reason: str, threshold: float | None, geometry: Geometry | None = None) -> Verdict:
    """The error verdict of a frame that was never scored (bad frame, camera fault, scorer failure)."""
    return Verdict("error", reason, threshold=threshold, geometry=geometry)
