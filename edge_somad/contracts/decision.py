"""The pass/fail rule, written once: a score AT the threshold fails.

Used for image scores (the verdict, calibration's false-reject counts, evaluation's confusion) and
for map pixels (defect regions, the pixel threshold). Elementwise on numpy arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    import numpy as np


@overload
def fails(score: float, threshold: float) -> bool: ...
@overload
def fails(score: np.ndarray, threshold: float) -> np.ndarray: ...
def fails(score, threshold):
    """True where `score` is at or above `threshold` (the part or pixel is rejected)."""
    return score >= threshold
