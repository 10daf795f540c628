"""Metrics against hand-computed values and a brute-force Mann-Whitney reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_somad import metrics


def mann_whitney_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), by comparing every pair (the definition of AUROC)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        pytest.param([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0, id="perfect"),
        pytest.param([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2], 0.0, id="inverted"),
        pytest.param([0, 1, 0, 1, 1], [3.0] * 5, 0.5, id="all-ties"),
        pytest.param([0, 0, 0, 1, 1, 1], [1, 2, 4, 3, 5, 6], 8 / 9, id="one-swap-3x3"),
        pytest.param([0, 1], [1.0, 1.0], 0.5, id="single-pair-tie"),
        pytest.param([0, 0, 1], [1.0, 2.0, 2.0], 0.75, id="partial-tie"),
        pytest.param([True, False], [-5.0, -7.0], 1.0, id="bool-labels-negative-scores"),
        pytest.param([0, 1, 1, 0], [0, 2, 1, 1], 0.875, id="int-scores-tie"),
    ],
)
def test_auroc_hand_computed(labels: list, scores: list, expected: float) -> None:
    assert metrics.auroc(np.array(labels), np.array(scores)) == pytest.approx(expected, abs=1e-12)
    assert metrics.image_auroc(np.array(labels), np.array(scores)) == pytest.approx(expected, abs=1e-12)
    assert mann_whitney_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_auroc_matches_brute_force_mann_whitney(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    scores = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
    assert metrics.auroc(labels, scores) == pytest.approx(mann_whitney_auc(labels, scores), abs=1e-12)


def test_roc_curve_points_and_ties() -> None:
    fpr, tpr, thr = metrics.roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.8]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.1])  # the tied 0.4s form one point


@pytest.mark.parametrize(
    ("labels", "match"),
    [([0, 0, 0], "only negatives"), ([1, 1], "only positives")],
)
def test_auroc_single_class_says_which(labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.auroc(np.array(labels), np.arange(len(labels), dtype=float))


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 2], [0.1, 0.2], "expected only 0"),
        ([0, 1, 1], [0.1, 0.2], "shape"),
    ],
)
def test_auroc_bad_inputs(labels: list, scores: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.auroc(np.array(labels), np.array(scores))


def test_pixel_auroc_equals_roc_auroc_and_is_fast_enough() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((4, 16, 16)) < 0.2
    maps = rng.integers(0, 7, masks.shape).astype(np.float32)  # ties between good and defect pixels
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(
        metrics.auroc(masks.ravel(), maps.ravel()), abs=1e-12
    )
    assert metrics.pixel_auroc(masks, maps + 10 * masks) == 1.0
    with pytest.raises(ValueError, match="only negatives"):
        metrics.pixel_auroc(np.zeros((2, 4, 4), bool), maps[:2, :4, :4])
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.pixel_auroc(masks, maps[:, :8])


def _two_region_case() -> tuple[np.ndarray, np.ndarray]:
    """10 good pixels scored 0.0..0.9; region A (4 px) and region B (2 px) in one image."""
    mask = np.zeros((4, 8), bool)
    amap = np.full((4, 8), -1.0)
    mask[0, 0:4] = True  # region A
    amap[0, 0:4] = [5.0, 5.0, 0.75, -1.0]
    mask[3, 6:8] = True  # region B, far from A: a separate 8-connected component
    amap[3, 6:8] = [5.0, 0.25]
    good_idx = np.flatnonzero(~mask.ravel())
    # Only 10 good pixels carry distinct scores; the rest sit at the very bottom (-1) so they never
    # count as false positives in [0, 0.3]. With them, FPR = k / n_good for the k top good pixels.
    amap.ravel()[good_idx[:10]] = np.arange(10) / 10
    return mask, amap


def test_pro_two_regions_hand_computed() -> None:
    mask, amap = _two_region_case()
    n_good = int((~mask).sum())  # 26
    fpr, pro = metrics.pro_curve(mask[None], amap[None], fpr_limit=3 / n_good, num_thresholds=50)
    # Allowing k top good pixels (scores 0.9, 0.8, 0.7): threshold 0.9 / 0.8 / 0.7 / 0.6, pixels > thr.
    # A: 2/4 above 0.8, 3/4 above 0.7 (0.75); B: 1/2 throughout. PRO = mean over the 2 regions.
    np.testing.assert_allclose(fpr, np.arange(4) / n_good)
    np.testing.assert_allclose(pro, [0.5, 0.5, 0.625, 0.625])
    area = (0.5 + 0.5) / 2 + (0.5 + 0.625) / 2 + (0.625 + 0.625) / 2  # trapezoids, width 1/n_good each
    assert metrics.pro_score(mask[None], amap[None], fpr_limit=3 / n_good) == pytest.approx(area / 3)


def test_pro_interpolates_at_fpr_limit() -> None:
    mask, amap = _two_region_case()
    n_good = int((~mask).sum())
    # The limit falls between the points k=1 (PRO 0.5) and k=2 (PRO 0.625): the curve must end
    # exactly at the limit, linearly interpolated, and never extend past it.
    fpr, pro = metrics.pro_curve(mask[None], amap[None], fpr_limit=1.5 / n_good)
    np.testing.assert_allclose(fpr, np.array([0, 1, 1.5]) / n_good)
    np.testing.assert_allclose(pro, [0.5, 0.5, 0.5625])


def test_pro_perfect_and_random_maps() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((20, 64, 64), bool)
    for i in range(10):
        y, x = rng.integers(8, 50, 2)
        masks[i, y : y + 6, x : x + 9] = True
        masks[i, 2:4, 2:5] = True  # a second region in the same image
    perfect = masks.astype(np.float32) + rng.random(masks.shape).astype(np.float32) * 0.5
    assert metrics.pro_score(masks, perfect) == pytest.approx(1.0)
    # For a random map every region's overlap equals the FPR on average, PRO(fpr) ~ fpr, so the
    # normalised area up to 0.3 is (0.3^2 / 2) / 0.3 = 0.15.
    # Small regions make the estimate noisy (std ~0.02 over seeds for these masks), so the random
    # case uses 40 larger regions: std ~0.002 over seeds, mean 0.150.
    assert metrics.pro_score(masks, -perfect) == pytest.approx(0.0, abs=1e-9)
    big = np.zeros((20, 64, 64), bool)
    big[:, 4:16, 4:20] = True
    big[:, 30:44, 30:60] = True
    random_map = rng.random(big.shape).astype(np.float32)
    assert metrics.pro_score(big, random_map) == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize(
    ("masks", "kwargs", "match"),
    [
        (np.zeros((1, 4, 4), bool), {}, "no defect pixels"),
        (np.ones((1, 4, 4), bool), {}, "no good pixels"),
        (np.eye(4, dtype=bool)[None], {"fpr_limit": 0.0}, "fpr_limit"),
        (np.eye(4, dtype=bool)[None], {"num_thresholds": 1}, "num_thresholds"),
    ],
)
def test_pro_bad_inputs(masks: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.pro_curve(masks, np.zeros(masks.shape, np.float32), **kwargs)


def brute_force_pro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Independent reference: per-threshold loops over labelled regions, 1000 thresholds."""
    import cv2

    regions = []
    for m, a in zip(masks, maps, strict=True):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        regions += [a[lab == k] for k in range(1, n)]
    good = maps[~masks]
    fprs, pros = [], []
    qs = np.linspace(1, max(0.0, 1 - fpr_limit - 0.01), 1000)
    for t in np.r_[np.quantile(good, qs), -np.inf]:
        fprs.append(np.mean(good > t))
        pros.append(np.mean([np.mean(r > t) for r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    x = np.r_[fprs[fprs <= fpr_limit], fpr_limit]
    y = np.r_[pros[fprs <= fpr_limit], np.interp(fpr_limit, fprs, pros)]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / fpr_limit)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_pro_matches_brute_force_reference(fpr_limit: float) -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 48, 48), bool)
    for i in range(4):
        y, x = rng.integers(4, 30, 2)
        masks[i, y : y + 10, x : x + 14] = True
        masks[i, 40:46, 2:8] = True
    # A map that finds region 1 better than region 2: PRO well away from both 0 and 1.
    maps = rng.normal(0, 1, masks.shape) + masks * rng.uniform(0.2, 2.5, masks.shape)
    ours = metrics.pro_score(masks, maps, fpr_limit)
    assert 0.1 < ours < 0.99
    assert ours == pytest.approx(brute_force_pro(masks, maps, fpr_limit), abs=0.005)


def _letterboxed() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One 4x8 canvas: columns 2..5 are the image (16 px), the rest letterbox padding scored 0."""
    valid = np.zeros((1, 4, 8), bool)
    valid[:, :, 2:6] = True
    maps = np.zeros((1, 4, 8))
    content = np.arange(1, 17, dtype=float).reshape(4, 4)  # content scores 1..16
    maps[0, :, 2:6] = content
    masks = np.zeros((1, 4, 8), bool)
    masks[0, 0, 2] = True  # score 1: the weakest pixel is the defect
    masks[0, 3, 5] = True  # score 16: the strongest
    return masks, maps, valid


def test_pixel_auroc_counts_image_content_only() -> None:
    masks, maps, valid = _letterboxed()
    # Content: 14 good pixels scored 2..15. Defect 1 beats none, defect 16 beats all 14 -> 14 / 28.
    assert metrics.pixel_auroc(masks, maps, valid) == pytest.approx(0.5)
    # With the 16 padding pixels (score 0) counted as good, both defects beat them: (16 + 30) / 60.
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(46 / 60)


def test_content_metrics_equal_metrics_on_the_cropped_image() -> None:
    rng = np.random.default_rng(5)
    masks = np.zeros((3, 20, 40), bool)
    valid = np.zeros_like(masks)
    valid[:, :, 10:30] = True
    masks[:, 5:9, 12:18] = True
    masks[1, 12:16, 20:27] = True
    maps = rng.random(masks.shape) + 0.8 * masks
    maps[~valid] = rng.random(int((~valid).sum())) * 0.1  # calm padding inflates the metrics
    crop = (slice(None), slice(None), slice(10, 30))
    assert metrics.pro_score(masks, maps, valid=valid) == pytest.approx(metrics.pro_score(masks[crop], maps[crop]))
    assert metrics.pixel_auroc(masks, maps, valid) == pytest.approx(metrics.pixel_auroc(masks[crop], maps[crop]))
    assert metrics.pro_score(masks, maps) > metrics.pro_score(masks, maps, valid=valid) + 0.02


def test_defect_in_padding_is_refused() -> None:
    masks, maps, valid = _letterboxed()
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match="outside the valid region"):
        metrics.pixel_auroc(masks, maps, valid)
