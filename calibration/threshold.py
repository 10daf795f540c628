"""Pass/fail thresholds from held-out good images (numpy and OpenCV only: no torch, no scipy).

Convention used everywhere here (and expected of the runtime): an image FAILS when
`score >= threshold`, a pixel is anomalous when `map >= pixel_threshold`. Thresholds are placed
strictly between observed scores, so the calibration-set counts are the same under `>` or `>=`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_somad.calibration import distributions as dist
from edge_somad.contracts import defaults
from edge_somad.contracts.decision import fails
from edge_somad.errors import ConfigError, InputError

# One-sided: the question a line owner asks is "how bad can the FRR be?", not a symmetric interval.
CONFIDENCE = 0.95
# Rule of thumb for chi2_fit_report["fits"]: a KS distance below this means the chi2(d) law
# describes the patch distances well enough to set a threshold from it.
KS_GOOD_FIT = 0.05
_REPORT_QUANTILES = (0.5, 0.9, 0.99, 0.999)
_KS_MAX_SAMPLES = 200_000


@dataclass(frozen=True)
class ThresholdEstimate:
    threshold: float
    target_frr: float
    n_images: int
    achieved_frr_on_calibration_set: float
    frr_upper_95: float  # one-sided 95% Clopper–Pearson upper bound of the true FRR
    note: str


def _check_rate(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
        raise ConfigError(f"{name}={value!r} must be a fraction in (0, 1), e.g. 0.005 for 0.5%")


def _finite_1d(values: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise InputError(f"no {what} arrived; expected at least one (score more held-out good images)")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise InputError(
            f"{bad} of {x.size} {what} are NaN or infinite; expected finite numbers. "
            "Check the model (re-fit or re-export) and the input frames."
        )
    return x


def clopper_pearson_upper(failures: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson upper bound of a binomial rate after `failures` out of `n`."""
    if n < 1 or not 0 <= failures <= n:
        raise InputError(f"clopper_pearson_upper({failures}, {n}): need 0 <= failures <= n and n >= 1")
    if failures == n:
        return 1.0
    return float(dist.binomial_upper(failures, n, confidence))


def _above(value: float) -> float:
    """Smallest float32 strictly above value: survives a float32 cast by the runtime."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def _between(low: float, high: float) -> float:
    """Midpoint of two observed scores; never rounds down onto `low`, even in float32."""
    mid = 0.5 * (low + high)
    return mid if np.float32(mid) > np.float32(low) else _above(low)


def empirical_threshold(good_scores: np.ndarray, target_frr: float) -> ThresholdEstimate:
    """Threshold rejecting at most floor(target_frr * n) of n good images the SOM never saw.

    Rule: sort the scores; k = floor(target_frr * n) may be rejected; the threshold is the midpoint
    between the largest accepted score and the next larger distinct score (ties all pass or all fail
    together, so never more than k rejects). When target_frr * n < 1 no reject is allowed and the
    threshold is the max good score plus half the gap between the two largest scores (the same
    midpoint rule, the unseen next score extrapolated by the last gap); with one image or a zero gap
    it is the next float32 above the max. The FRR is then NOT verifiable on this set.
    """
    _check_rate("target_frr", target_frr)
    s = np.sort(_finite_1d(good_scores, "good scores"))
    n = s.size
    k = math.floor(target_frr * n + 1e-9)  # + eps: 0.005 * 200 must give 1, not 0.999…
    accepted_max = float(s[n - k - 1])  # k < n because target_frr < 1
    higher = s[s > accepted_max]
    if k >= 1 and higher.size:
        threshold = _between(accepted_max, float(higher[0]))
    else:
        gap = float(s[-1] - s[-2]) if n >= 2 else 0.0
        threshold = _between(float(s[-1]), float(s[-1]) + gap) if gap > 0 else _above(float(s[-1]))
    rejects = int(np.count_nonzero(fails(s, threshold)))
    upper = clopper_pearson_upper(rejects, n)
    return ThresholdEstimate(
        threshold=float(threshold),
        target_frr=float(target_frr),
        n_images=n,
        achieved_frr_on_calibration_set=rejects / n,
        frr_upper_95=upper,
        note=("Threshold = max good score + margin. " if k < 1 else "") + _frr_note(target_frr, n, rejects, upper),
    )


# Below this many good scores a median/MAD is too coarse to describe the distribution's spread.
ROBUST_MIN_IMAGES = 3
# 1.4826 * MAD estimates the standard deviation of a normal law (consistency constant).
_MAD_TO_SIGMA = 1.4826


def plausible_rejects(n: int, target_frr: float, alpha: float = 1.0 - CONFIDENCE) -> int:
    """Most calibration rejects a true FRR of `target_frr` still explains: the largest r with
    P(X >= r) >= alpha for X ~ Binomial(n, target_frr). E.g. n=42 at 0.5 %: 1 (P(X >= 2) = 0.018)."""
    if n < 1:
        raise InputError(f"plausible_rejects(n={n}): need n >= 1 scores")
    below = 0.0  # P(X < r), built up term by term
    for r in range(n + 1):
        if 1.0 - below < alpha:
            return r - 1
        # In log space: comb(5000, 250) alone overflows a float.
        below += math.exp(math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)
                          + r * math.log(target_frr) + (n - r) * math.log1p(-target_frr))
    return n


def robust_threshold(good_scores: np.ndarray, target_frr: float, guard: bool = True) -> ThresholdEstimate:
    """Threshold = median + z(1 - target_frr) * 1.4826 * MAD of the good scores, guarded.

    A normal model of the good scores, fitted robustly: a handful of held-out images cannot give a
    0.5 % quantile by counting, and their maximum is set by the one oddest good image (on the
    development suite one such image lifted a threshold above 96 % of the real defects). The median
    and MAD ignore that image, so the rule may reject a few calibration images, which the estimate
    reports. The guard keeps the threshold above the bulk of the good scores: when the normal model
    rejects more calibration images than the target FRR can explain (plausible_rejects, and never
    fewer than one: a heavy right tail the MAD did not see), the threshold rises to reject only that
    many. Falls back to
    `empirical_threshold` when fewer than ROBUST_MIN_IMAGES scores or a zero MAD leave no spread to
    model.
    """
    _check_rate("target_frr", target_frr)
    s = _finite_1d(good_scores, "good scores")
    n = s.size
    med = float(np.median(s))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(s - med)))
    if n < ROBUST_MIN_IMAGES or sigma <= 0:
        est = empirical_threshold(s, target_frr)
        why = f"{n} scores" if n < ROBUST_MIN_IMAGES else "all scores equal to the median (MAD 0)"
        return dataclasses.replace(est, note=f"robust rule not applicable ({why}); empirical rule used. " + est.note)
    z = dist.normal_ppf(1.0 - target_frr)
    threshold = med + z * sigma
    rule = f"Threshold = median {med:.4g} + {z:.3f} x robust sigma {sigma:.4g} (normal model of the good scores)"
    # One odd good image is always tolerated: that is what the median/MAD are for.
    allowed = max(1, plausible_rejects(n, target_frr))
    if guard and int(np.count_nonzero(fails(s, threshold))) > allowed:
        ordered = np.sort(s)
        kept = float(ordered[n - allowed - 1])
        threshold = _between(kept, float(ordered[n - allowed])) if ordered[n - allowed] > kept else _above(kept)
        rule += (f", raised to {threshold:.4g} by the guard: the normal model rejected more than the {allowed} "
                 f"calibration image(s) a {target_frr:g} FRR explains")
    rejects = int(np.count_nonzero(fails(s, threshold)))
    upper = clopper_pearson_upper(rejects, n)
    note = f"{rule}; {rejects}/{n} calibration images score above it. " + _frr_note(target_frr, n, rejects, upper)
    return ThresholdEstimate(float(threshold), float(target_frr), n, rejects / n, upper, note)


# Below this many good images a median and a MAD move with every image added: the threshold, and so
# the line's FRR, is a guess. Commissioning on the line (docs/commissioning.md) brings more.
MIN_CALIBRATION_IMAGES = 20


def calibration_warnings(good_scores: np.ndarray, target_frr: float) -> list[str]:
    """What an operator must know before trusting a threshold from these good scores (empty: nothing)."""
    s = _finite_1d(good_scores, "good scores")
    n, out = s.size, []
    if n < MIN_CALIBRATION_IMAGES:
        out.append(f"only {n} good calibration images (fewer than {MIN_CALIBRATION_IMAGES}): the threshold is "
                   f"uncertain; recalibrate from good parts of the line (calibrate --calibration-dir or "
                   f"--calibration-video) before relying on a {target_frr:g} FRR")
    if n >= ROBUST_MIN_IMAGES:
        raw = robust_threshold(s, target_frr, guard=False)
        above, allowed = int(np.count_nonzero(fails(s, raw.threshold))), max(1, plausible_rejects(n, target_frr))
        if above > allowed:
            out.append(f"the good calibration images are too spread for a {target_frr:g} FRR: {above} of {n} score "
                       f"above a normal model's threshold (at most {allowed} expected); some good parts look unlike "
                       "the others: look at the highest-scoring ones, add good images, or fit again with them")
    return out


def _frr_note(target_frr: float, n: int, rejects: int, upper: float) -> str:
    needed = math.ceil(1.0 / target_frr - 1e-9)
    # With zero rejects, the 95% bound reaches the target only from n >= ln(20) / target.
    proven = math.ceil(math.log(1.0 / (1.0 - CONFIDENCE)) / target_frr)
    pct = f"{target_frr * 100:g}%"
    if n < needed:
        return (
            f"{pct} target needs >= {needed} good images to be checkable; you gave {n}. "
            f"Its FRR is not verifiable here "
            f"(95% upper bound {upper:.1%}). Add good images (>= {proven} to bound FRR <= {pct})."
        )
    if upper > target_frr:
        return (
            f"{rejects}/{n} good images rejected; the true FRR may still be up to {upper:.2%} (95%). "
            f"Bounding it below {pct} needs about {proven}+ good images."
        )
    return f"{rejects}/{n} good images rejected; true FRR <= {upper:.2%} with 95% confidence."


def chi2_threshold(d: int, target_fpr: float, scale: float = 1.0) -> float:
    """Distance threshold from chi2(d) (Rippel et al., ICPR 2020).

    Squared Mahalanobis distances of Gaussian d-dim features follow chi2(d). `scale` multiplies the
    squared distances (D² ≈ scale·chi2(d)), e.g. chi2_fit_report(...)["scale_estimate"] when the
    covariance regulariser shrinks them. Returns sqrt(scale · chi2.ppf(1 - fpr, d)), in distance units.
    """
    if int(d) != d or d < 1:
        raise ConfigError(f"d={d!r} must be a positive integer (the projected feature dimension)")
    _check_rate("target_fpr", target_fpr)
    if not scale > 0:
        raise ConfigError(f"scale={scale!r} must be > 0 (a multiplier of squared distances)")
    return float(math.sqrt(scale * dist.chi2_isf(target_fpr, int(d))))


def image_chi2_threshold(d: int, target_frr: float, n_patches: int, scale: float = 1.0) -> float:
    """Image-level threshold by the union bound over `n_patches` patch distances.

    The image score is the max (or the mean of the hottest pixels, which is no larger) of a
    smoothed, upsampled map of patch distances; smoothing and bilinear upsampling are convex
    combinations, so the score never exceeds the largest patch distance, and
    P(score >= t) <= n_patches · P(patch >= t). Valid only as far as chi2(d) holds
    at patch level (see chi2_fit_report), and loose because neighbouring patches are correlated.
    """
    if n_patches < 1:
        raise ConfigError(f"n_patches={n_patches} must be >= 1")
    _check_rate("target_frr", target_frr)
    return chi2_threshold(d, target_frr / n_patches, scale)


def chi2_fit_report(patch_sq_distances: np.ndarray, d: int) -> dict[str, Any]:
    """How well chi2(d) describes patch-level squared distances of held-out good images.

    JSON-ready (goes into manifest.calibration.details). `fits` is a rule of thumb: KS < 0.05.
    """
    if int(d) != d or d < 1:
        raise ConfigError(f"d={d!r} must be a positive integer")
    x = _finite_1d(patch_sq_distances, "patch squared distances")
    sample = x
    if x.size > _KS_MAX_SAMPLES:  # KS cost is a sort; a fixed subsample keeps it fast and repeatable
        sample = np.random.default_rng(0).choice(x, _KS_MAX_SAMPLES, replace=False)
    sample = np.sort(sample)
    ks = dist.ks_statistic(sample, dist.chi2_cdf(sample, int(d)))
    quantiles = {
        str(q): {"empirical": float(np.quantile(x, q)), "chi2": dist.chi2_ppf(q, int(d))} for q in _REPORT_QUANTILES
    }
    return {
        "d": int(d),
        "n_patches": int(x.size),
        "mean": float(x.mean()),
        "mean_expected": float(d),
        "var": float(x.var()),
        "var_expected": float(2 * d),
        "scale_estimate": float(x.mean() / d),
        "quantiles": quantiles,
        "ks_statistic": ks,
        "fits": bool(ks < KS_GOOD_FIT),
        "note": (
            "patch-level only: the image score is the max (or top-share mean) over a smoothed map of min-over-top-k "
            "distances, so chi2(d) at patch level does not give the image-level FRR directly."
        ),
    }


def pixel_threshold(good_maps: np.ndarray, quantile: float = defaults.PIXEL_QUANTILE) -> float:
    """Per-pixel threshold: the `quantile` of all pixels of held-out good maps (an observed value)."""
    _check_rate("quantile", quantile)
    maps = _check_maps(good_maps)
    return float(np.quantile(maps, quantile, method="higher"))


def _check_maps(good_maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(good_maps)
    if maps.ndim != 3:
        raise InputError(f"good maps shape {maps.shape}; expected (B, H, W) anomaly maps")
    _finite_1d(maps, "anomaly-map pixels")
    return maps


def largest_area_above(good_maps: np.ndarray, pixel_thr: float) -> int:
    """Largest 8-connected area (px) with map >= pixel_thr on any one of the maps."""
    import cv2  # lazy: importing this module for the threshold rules needs no OpenCV

    largest = 0
    for m in _check_maps(good_maps):
        count, labels = cv2.connectedComponents(fails(m, pixel_thr).astype(np.uint8), connectivity=8)
        if count > 1:  # label 0 is the background
            largest = max(largest, int(np.bincount(labels.ravel())[1:].max()))
    return largest


def min_defect_area(good_maps: np.ndarray, pixel_thr: float, user_px: int | None = None) -> int:
    """Smallest region (px, 8-connected, map >= pixel_thr) that counts as a defect.

    A user value wins (checked >= 1). Otherwise: the largest such region seen on any held-out good
    map + 1, so no good image of the calibration set would show a defect region.
    """
    if user_px is not None:
        if int(user_px) != user_px or user_px < 1:
            raise ConfigError(f"min_area={user_px!r} must be a whole number of pixels >= 1")
        return int(user_px)
    return largest_area_above(good_maps, pixel_thr) + 1


def confusion_at_threshold(
    labels: np.ndarray, defect_types: list[str], scores: np.ndarray, threshold: float
) -> dict[str, Any]:
    """False rejects (good >= thr) and escapes (defect < thr), overall and per defect type.

    labels: 0 = good, 1 = defect. defect_types: one name per image ("good", "crack", …).
    """
    y = np.asarray(labels).reshape(-1)
    s = _finite_1d(scores, "scores")
    types = [str(t) for t in defect_types]
    if not (y.size == s.size == len(types)):
        raise InputError(
            f"labels ({y.size}), defect_types ({len(types)}) and scores ({s.size}): "
            "expected one entry per image in each"
        )
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"labels hold {sorted(set(y.tolist()))}; expected only 0 (good) and 1 (defect)")
    fail = fails(s, threshold)
    good, bad = y == 0, y == 1
    per_type: dict[str, dict[str, int]] = {}
    for name in sorted(set(types)):
        sel = np.array([t == name for t in types])
        per_type[name] = {
            "n": int(sel.sum()),
            "false_rejects": int(np.count_nonzero(sel & good & fail)),
            "escapes": int(np.count_nonzero(sel & bad & ~fail)),
        }
    n_good, n_bad = int(good.sum()), int(bad.sum())
    fr, esc = int(np.count_nonzero(good & fail)), int(np.count_nonzero(bad & ~fail))
    return {
        "threshold": float(threshold),
        "n_good": n_good,
        "n_defect": n_bad,
        "false_rejects": fr,
        "escapes": esc,
        "frr": fr / n_good if n_good else None,
        "escape_rate": esc / n_bad if n_bad else None,
        "per_type": per_type,
    }
