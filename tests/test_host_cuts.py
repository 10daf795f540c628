"""benchmarks/host_cuts.py: the before/after pieces it times compute the same things."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks import host_cuts
from edge_somad.runtime.health import drift


def test_reduction_keeps_the_decoded_frame_at_least_as_large_as_what_the_resize_keeps() -> None:
    assert host_cuts.reduction(1024, 1024, 224, 224, "letterbox") == 4
    assert host_cuts.reduction(480, 640, 224, 224, "letterbox") == 2  # content scale 0.35: 1/2 still covers it
    assert host_cuts.reduction(480, 640, 224, 224, "crop") == 2  # crop keeps the short side: 480 -> 224
    assert host_cuts.reduction(300, 300, 224, 224, "letterbox") == 1  # not much larger: full decode
    assert host_cuts.reduction(4000, 4000, 224, 224, "stretch") == 8


def test_old_and_new_drift_metrics_and_frozen_check_agree() -> None:
    rng = np.random.default_rng(3)
    a = cv2.GaussianBlur(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), (5, 5), 1.5)
    b = np.clip(a.astype(np.int16) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    old, new = host_cuts.numpy_metrics(a), drift.frame_metrics(a)
    for k in old:
        assert new[k] == pytest.approx(old[k], rel=1e-5)
    assert cv2.norm(a, b, cv2.NORM_L1) / a.size == pytest.approx(host_cuts.numpy_frozen(a, b), rel=1e-12)
