"""Threshold rules on synthetic scores with known distributions, and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from edge_somad.calibration.threshold import (
    chi2_fit_report,
    chi2_threshold,
    clopper_pearson_upper,
    confusion_at_threshold,
    empirical_threshold,
    image_chi2_threshold,
    largest_area_above,
    min_defect_area,
    pixel_threshold,
    robust_threshold,
)
from edge_somad.errors import ConfigError, InputError


@pytest.mark.parametrize(
    ("target", "seed"),
    [(0.01, 0), (0.01, 1), (0.05, 2), (0.1, 3)],
)
def test_empirical_threshold_lands_on_true_exponential_quantile(target: float, seed: int) -> None:
    n = 10_000
    scores = np.random.default_rng(seed).exponential(2.0, n)
    est = empirical_threshold(scores, target)
    true_q = stats.expon(scale=2.0).ppf(1 - target)
    # The (1-p) order statistic has sd sqrt(p(1-p)/n)/f(q); allow 4 sd.
    density = stats.expon(scale=2.0).pdf(true_q)
    tol = 4 * math.sqrt(target * (1 - target) / n) / density
    assert abs(est.threshold - true_q) < tol
    assert est.n_images == n
    assert est.achieved_frr_on_calibration_set <= target
    assert np.count_nonzero(scores >= est.threshold) == round(target * n)
    assert est.frr_upper_95 > est.achieved_frr_on_calibration_set
    assert "95%" in est.note


@pytest.mark.parametrize(
    ("scores", "target", "expected_thr", "expected_rejects"),
    [
        ([5.0], 0.005, float(np.nextafter(np.float32(5.0), np.float32(np.inf))), 0),  # n = 1
        ([3.0, 3.0, 3.0, 3.0], 0.5, float(np.nextafter(np.float32(3.0), np.float32(np.inf))), 0),  # ties
        ([1.0, 2.0, 4.0], 0.01, 5.0, 0),  # k = 0: max + half of the top gap (4 + 2/2)
        ([1.0, 2.0, 3.0, 4.0], 0.25, 3.5, 1),  # k = 1: midpoint of 3 and 4
        # k = 1 but the two largest tie: rejecting both would be 2 > k, so neither is rejected.
        ([1.0, 2.0, 4.0, 4.0], 0.25, float(np.nextafter(np.float32(4.0), np.float32(np.inf))), 0),
        ([1.0, 2.0, 3.0, 3.0, 4.0, 5.0], 0.34, 3.5, 2),  # k = 2: midpoint of 3 and 4
    ],
)
def test_empirical_threshold_small_cases(
    scores: list[float], target: float, expected_thr: float, expected_rejects: int
) -> None:
    est = empirical_threshold(np.array(scores), target)
    assert est.threshold == pytest.approx(expected_thr)
    rejects = int(np.count_nonzero(np.array(scores) >= est.threshold))
    assert rejects == expected_rejects
    assert est.achieved_frr_on_calibration_set == rejects / len(scores)
    # Runtime may compare in float32: the max good image must still pass when k = 0.
    if expected_rejects == 0:
        assert np.float32(max(scores)) < np.float32(est.threshold)


def test_empirical_threshold_note_names_needed_images() -> None:
    est = empirical_threshold(np.linspace(0, 1, 21), 0.005)
    assert "needs >= 200 good images" in est.note and "you gave 21" in est.note
    ok = empirical_threshold(np.linspace(0, 1, 200), 0.005)
    assert "needs >=" not in ok.note
    assert np.count_nonzero(np.linspace(0, 1, 200) >= ok.threshold) == 1


@pytest.mark.parametrize(
    ("scores", "count"),
    [([1.0, np.nan, 2.0], "1 of 3"), ([np.nan, np.inf, 1.0, 2.0, 3.0], "2 of 5")],
)
def test_empirical_threshold_rejects_nonfinite_naming_count(scores: list[float], count: str) -> None:
    with pytest.raises(InputError, match=count):
        empirical_threshold(np.array(scores), 0.01)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 5.0])
def test_empirical_threshold_rejects_bad_target(target: float) -> None:
    with pytest.raises(ConfigError, match="target_frr"):
        empirical_threshold(np.ones(10), target)


def test_empirical_threshold_rejects_empty() -> None:
    with pytest.raises(InputError, match="no good scores"):
        empirical_threshold(np.array([]), 0.01)


@pytest.mark.parametrize(
    ("failures", "n", "expected"),
    [
        (0, 21, 1 - 0.05 ** (1 / 21)),  # closed form when nothing failed
        (0, 600, 1 - 0.05 ** (1 / 600)),
        (3, 100, stats.beta.ppf(0.95, 4, 97)),
        (10, 10, 1.0),
    ],
)
def test_clopper_pearson_upper(failures: int, n: int, expected: float) -> None:
    assert clopper_pearson_upper(failures, n) == pytest.approx(expected, rel=1e-9)


def test_clopper_pearson_matches_scipy_binomtest() -> None:
    ci = stats.binomtest(3, 100).proportion_ci(confidence_level=0.90, method="exact")
    # A two-sided 90% interval's upper end is the one-sided 95% upper bound.
    assert clopper_pearson_upper(3, 100) == pytest.approx(ci.high, rel=1e-9)


@pytest.mark.parametrize(("d", "fpr", "scale"), [(1, 0.05, 1.0), (64, 0.01, 1.0), (100, 0.001, 0.5)])
def test_chi2_threshold_matches_scipy(d: int, fpr: float, scale: float) -> None:
    assert chi2_threshold(d, fpr, scale) == pytest.approx(math.sqrt(scale * stats.chi2.ppf(1 - fpr, d)))
    assert chi2_threshold(1, 0.05) == pytest.approx(1.959964, abs=1e-6)  # |N(0,1)| two-sided 95%


def test_image_chi2_threshold_is_union_bound() -> None:
    assert image_chi2_threshold(64, 0.01, 784) == pytest.approx(chi2_threshold(64, 0.01 / 784))
    assert image_chi2_threshold(64, 0.01, 784) > chi2_threshold(64, 0.01)


@pytest.mark.parametrize(
    ("d", "fpr", "scale"), [(0, 0.01, 1.0), (8, 0.0, 1.0), (8, 0.01, 0.0), (2.5, 0.1, 1.0)]
)
def test_chi2_threshold_rejects_bad_args(d: float, fpr: float, scale: float) -> None:
    with pytest.raises(ConfigError):
        chi2_threshold(d, fpr, scale)  # type: ignore[arg-type]


def test_chi2_fit_report_good_fit_on_chi2_samples() -> None:
    x = np.random.default_rng(0).chisquare(64, 50_000)
    r = chi2_fit_report(x, 64)
    assert r["fits"] is True
    assert r["ks_statistic"] < 0.02
    assert r["mean"] == pytest.approx(64, rel=0.02)
    assert r["scale_estimate"] == pytest.approx(1.0, rel=0.02)
    for q in ("0.5", "0.9", "0.99"):
        assert r["quantiles"][q]["empirical"] == pytest.approx(r["quantiles"][q]["chi2"], rel=0.03)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_chi2_fit_report_detects_scaled_distances(scale: float) -> None:
    x = scale * np.random.default_rng(1).chisquare(64, 50_000)
    r = chi2_fit_report(x, 64)
    assert r["fits"] is False
    assert r["ks_statistic"] > 0.3
    assert r["scale_estimate"] == pytest.approx(scale, rel=0.02)
    # Feeding the estimated scale back gives the right empirical 99% distance quantile.
    assert chi2_threshold(64, 0.01, r["scale_estimate"]) ** 2 == pytest.approx(
        r["quantiles"]["0.99"]["empirical"], rel=0.03
    )


def test_chi2_fit_report_is_json_ready() -> None:
    import json

    json.dumps(chi2_fit_report(np.random.default_rng(2).chisquare(8, (3, 10, 10)), 8))


def test_pixel_threshold_quantile() -> None:
    maps = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    assert pixel_threshold(maps, 0.999) == 999.0
    assert pixel_threshold(maps, 0.5) == 500.0  # 'higher': an observed value, never interpolated
    with pytest.raises(InputError, match=r"\(B, H, W\)"):
        pixel_threshold(maps[0], 0.9)


def test_min_defect_area_from_good_maps() -> None:
    maps = np.zeros((2, 20, 20), np.float32)
    maps[0, 2:5, 2:5] = 5.0  # 9 px blob
    maps[1, 10:12, 10:12] = 5.0  # 4 px blob
    maps[1, 12, 12] = 5.0  # touches diagonally: 8-connected -> 5 px
    assert largest_area_above(maps, 1.0) == 9
    assert min_defect_area(maps, 1.0) == 10
    assert min_defect_area(maps, 10.0) == 1  # nothing above: any region counts
    assert min_defect_area(maps, 1.0, user_px=50) == 50
    with pytest.raises(ConfigError, match="min_area"):
        min_defect_area(maps, 1.0, user_px=0)


def test_confusion_counts_by_hand() -> None:
    labels = [0, 0, 0, 1, 1, 1, 1]
    types = ["good", "good", "good", "crack", "crack", "colour", "colour"]
    scores = [1.0, 2.0, 3.0, 2.9, 5.0, 3.0, 0.5]
    r = confusion_at_threshold(np.array(labels), types, np.array(scores), 3.0)
    assert (r["n_good"], r["n_defect"]) == (3, 4)
    assert r["false_rejects"] == 1  # the good 3.0 (>= thr)
    assert r["escapes"] == 2  # crack 2.9, colour 0.5
    assert r["frr"] == pytest.approx(1 / 3) and r["escape_rate"] == pytest.approx(0.5)
    assert r["per_type"] == {
        "colour": {"n": 2, "false_rejects": 0, "escapes": 1},
        "crack": {"n": 2, "false_rejects": 0, "escapes": 1},
        "good": {"n": 3, "false_rejects": 1, "escapes": 0},
    }


def test_confusion_rejects_mismatched_lengths() -> None:
    with pytest.raises(InputError, match="one entry per image"):
        confusion_at_threshold(np.array([0, 1]), ["good"], np.array([1.0, 2.0]), 1.5)


@pytest.mark.parametrize(("target", "seed"), [(0.005, 0), (0.01, 1), (0.05, 2)])
def test_robust_threshold_lands_on_true_normal_quantile(target: float, seed: int) -> None:
    scores = np.random.default_rng(seed).normal(10.0, 2.0, 5000)
    est = robust_threshold(scores, target)
    assert est.threshold == pytest.approx(10.0 + 2.0 * stats.norm.ppf(1 - target), rel=0.02)
    assert est.achieved_frr_on_calibration_set == pytest.approx(target, abs=max(0.004, target / 2))


def test_robust_threshold_equals_float64_reference_and_ignores_one_odd_image() -> None:
    good = np.array([9.1, 9.4, 9.6, 9.8, 10.0, 10.1, 10.3, 10.6, 20.6])  # one odd good image
    med = np.median(good.astype(np.float64))
    mad = 1.4826 * np.median(np.abs(good - med))
    est = robust_threshold(good.astype(np.float32), 0.005)
    assert est.threshold == pytest.approx(med + stats.norm.ppf(0.995) * mad, rel=1e-6)
    assert est.threshold < 12.0 < empirical_threshold(good, 0.005).threshold  # the outlier no longer sets it
    assert est.achieved_frr_on_calibration_set == pytest.approx(1 / 9)  # ... and is reported as rejected
    assert "1/9 calibration images" in est.note


@pytest.mark.parametrize(("scores", "why"), [
    ([5.0, 6.0], "2 scores"),                    # too few to model a spread
    ([3.0, 3.0, 3.0, 3.0, 9.0], "MAD 0"),          # ties: no spread around the median
])
def test_robust_threshold_falls_back_to_empirical(scores: list[float], why: str) -> None:
    s = np.array(scores)
    est = robust_threshold(s, 0.01)
    assert est.threshold == empirical_threshold(s, 0.01).threshold
    assert why in est.note and "empirical rule used" in est.note


@pytest.mark.parametrize("bad", [[], [1.0, float("nan"), 2.0]])
def test_robust_threshold_rejects_bad_scores(bad: list[float]) -> None:
    with pytest.raises(InputError):
        robust_threshold(np.array(bad), 0.01)


@pytest.mark.parametrize(("n", "target"), [(42, 0.005), (9, 0.005), (200, 0.01), (5000, 0.05), (30, 0.2)])
def test_plausible_rejects_matches_the_float64_binomial_tail(n: int, target: float) -> None:
    from edge_somad.calibration.threshold import plausible_rejects

    r = plausible_rejects(n, target)
    # r rejects are still explained by the target FRR at 95 %; r + 1 are not.
    assert stats.binom.sf(r - 1, n, target) >= 0.05 if r > 0 else True
    assert stats.binom.sf(r, n, target) < 0.05


def test_robust_guard_fires_on_a_heavy_tail_and_stays_quiet_on_normal_scores() -> None:
    rng = np.random.default_rng(3)
    normal = rng.normal(10.0, 1.0, 60)
    quiet, raw = robust_threshold(normal, 0.005), robust_threshold(normal, 0.005, guard=False)
    assert quiet.threshold == raw.threshold and "guard" not in quiet.note  # nothing to guard against
    # A tight core and a heavy right tail (a fifth of the goods score high): the MAD sees only the core.
    tail = np.r_[rng.normal(10.0, 0.2, 48), rng.uniform(12.0, 14.0, 12)]
    unguarded, guarded = robust_threshold(tail, 0.005, guard=False), robust_threshold(tail, 0.005)
    assert int((tail >= unguarded.threshold).sum()) >= 10  # the normal model rejects the whole tail
    assert int((tail >= guarded.threshold).sum()) == 1  # the guard leaves the one odd image it always tolerates
    assert "raised" in guarded.note and guarded.threshold > unguarded.threshold
