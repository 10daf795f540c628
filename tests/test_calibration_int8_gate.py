"""The int8 accuracy gate's measurement: synthetic defects with masks, and the fp32 - int8 drops."""

from __future__ import annotations

import numpy as np
import pytest

from edge_somad.calibration.int8_gate import (
    MAX_BASE_IMAGES,
    MAX_DROP,
    MIN_SYNTHETIC,
    SyntheticSet,
    accuracy,
    int8_drop,
    synthetic_set,
)
from edge_somad.errors import InputError
from tests.test_calibration_quantize import synthetic_frames

H, W, PAD = 48, 64, 8  # letterboxed: PAD black rows above and below the part


def _letterboxed(n: int, seed: int) -> np.ndarray:
    frames = np.zeros((n, H, W, 3), np.uint8)
    frames[:, PAD:H - PAD] = synthetic_frames(n, seed, H - 2 * PAD, W)
    return frames


def _detector(data: SyntheticSet, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps that see the pasted pixels (1) over noise; score = map max, as the graph computes it."""
    rng = np.random.default_rng(seed)
    maps = (data.masks + rng.normal(0, noise, data.masks.shape)).astype(np.float32)
    return maps.max(axis=(1, 2)), maps


def test_synthetic_set_marks_only_pasted_pixels_inside_the_part() -> None:
    good = _letterboxed(5, seed=0)
    data = synthetic_set(good, pad_value=0)
    per_kind = 24  # ceil(MIN_SYNTHETIC 360 / (3 kinds x 5 images))
    assert MIN_SYNTHETIC == 360
    assert data.n_good == 5 and len(data.frames) == 5 + 5 * 3 * per_kind
    assert data.labels.tolist() == [0] * 5 + [1] * (5 * 3 * per_kind)
    np.testing.assert_array_equal(data.frames[:5], good)
    assert not data.masks[:5].any()
    assert data.masks[5:].any(axis=(1, 2)).mean() > 0.9  # (almost) every pasted defect has ground truth
    assert not data.masks[:, :PAD].any() and not data.masks[:, H - PAD:].any()
    assert not data.valid[:, :PAD].any() and data.valid[:, PAD:H - PAD].all()
    # A mask pixel really changed by more than the tolerance in its frame.
    i = 5 + int(np.argmax(data.masks[5:].sum(axis=(1, 2))))
    origin = good[(i - 5) // (3 * per_kind)]
    assert (np.abs(data.frames[i].astype(int) - origin)[data.masks[i]].max(axis=-1) > 8).all()


def test_synthetic_set_caps_the_images_it_pastes_into() -> None:
    good = synthetic_frames(MAX_BASE_IMAGES + 6, seed=1)
    data = synthetic_set(good, pad_value=0)
    assert data.n_good == len(good) and int(data.labels.sum()) == MAX_BASE_IMAGES * 3 * 5  # ceil(360 / 72)


def test_drop_is_zero_for_the_same_scores_and_gates_a_worse_detector() -> None:
    """A worse int8 detector is refused on the AUROC drops; PRO is reported, never the reason."""
    data = synthetic_set(_letterboxed(6, seed=2), pad_value=0)
    fp32 = _detector(data, noise=0.3, seed=0)
    same = int8_drop(data, fp32, fp32)
    assert same["usable"] and same["limit"] == MAX_DROP
    assert same["drop"] == {"image_auroc": 0.0, "pixel_auroc": 0.0, "pro": 0.0}
    assert same["score_shift_max_of_fp32_range"] == 0.0
    worse = int8_drop(data, fp32, _detector(data, noise=0.6, seed=1))
    assert not worse["usable"] and worse["max_drop"] > MAX_DROP
    assert worse["worst_metric"] in ("image_auroc", "pixel_auroc")
    assert worse["max_drop"] == worse["drop"][worse["worst_metric"]] == max(worse["drop"]["image_auroc"],
                                                                           worse["drop"]["pixel_auroc"])
    assert worse["drop"]["pixel_auroc"] == pytest.approx(worse["fp32"]["pixel_auroc"] - worse["int8"]["pixel_auroc"])
    # A limit above the measured drop accepts the same graph.
    assert int8_drop(data, fp32, _detector(data, noise=0.6, seed=1), max_drop=worse["max_drop"])["usable"]


def test_accuracy_of_a_perfect_detector_is_one_and_shapes_are_checked() -> None:
    data = synthetic_set(_letterboxed(4, seed=3), pad_value=0)
    maps = data.masks.astype(np.float32)
    scores = maps.max(axis=(1, 2)) + 0.01 * data.labels  # the few defects without mask still rank
    assert accuracy(data, scores, maps) == {"image_auroc": 1.0, "pixel_auroc": 1.0, "pro": 1.0}
    with pytest.raises(InputError, match="one per frame"):
        accuracy(data, scores[:-1], maps)
    with pytest.raises(InputError, match="expected uint8"):
        synthetic_set(np.zeros((0, H, W, 3), np.uint8), pad_value=0)
