"""Drift statistics: per-frame image metrics (OpenCV), PSI and KS against stored references (numpy).

The references live in manifest.json (`reference`): the input metrics of the fit images (written
at fit, copied at export, filled in at calibrate for older models) and quantiles of the good
calibration scores (written at calibrate). Everything here is cheap enough to run on every frame:
metrics are taken on the model-input frame (already resized), never the full camera frame.
`grey` is the float reference of the luma the metrics use (tests hold frame_metrics to it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

INPUT_METRICS = ("brightness", "contrast", "sharpness")
N_QUANTILES = 101  # 0 %, 1 %, ... 100 %: enough for 10 PSI bins and a KS CDF, and 2 kB of JSON
PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin would make PSI infinite; this is the usual small-count floor


def grey(frame: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> float32 luma (BT.601 weights, as cv2.cvtColor uses)."""
    f = frame.astype(np.float32)
    return f[..., 0] * 0.114 + f[..., 1] * 0.587 + f[..., 2] * 0.299


def frame_metrics(frame: np.ndarray, sharpness: bool = True) -> dict[str, float]:
    """brightness = mean luma, contrast = std of luma, sharpness = variance of the 4-neighbour Laplacian
    over the interior pixels (left out with sharpness=False: the per-frame fault checks need only
    the first two).

    The definitions of `grey` and the numpy Laplacian, computed by OpenCV: float32 luma, sums in
    float64 (meanStdDev), so they agree with a float64 reference to ~1e-7 relative, in about a third
    of numpy's time (benchmarks/host_cuts.py; docs/results.md, "Speed").
    """
    g = cv2.cvtColor(np.ascontiguousarray(frame).astype(np.float32), cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(g)
    out = {"brightness": float(mean[0, 0]), "contrast": float(std[0, 0])}
    if sharpness:
        # ksize=1 is exactly the 4-neighbour kernel [[0,1,0],[1,-4,1],[0,1,0]]; the border row and
        # column (OpenCV's reflected border) are cut so only interior pixels count, as in numpy.
        _, lap_std = cv2.meanStdDev(cv2.Laplacian(g, cv2.CV_32F, ksize=1)[1:-1, 1:-1])
        out["sharpness"] = float(lap_std[0, 0]) ** 2
    return out


def comparable(metric: str, value: float) -> float:
    """The scale a metric is compared on. Sharpness spans decades (focus, texture, noise), so it is
    compared on log(1 + x): a defocus that halves it is the same step at any texture level."""
    return float(np.log1p(max(value, 0.0))) if metric == "sharpness" else float(value)


def input_reference(frames: Iterable[np.ndarray], source: str) -> dict[str, Any]:
    """Mean/std per metric (on the comparable scale) of good frames resized as the runtime does."""
    rows = [frame_metrics(f) for f in frames]
    if not rows:
        return {}
    out: dict[str, Any] = {"n": len(rows), "source": source}
    for m in INPUT_METRICS:
        v = np.array([comparable(m, r[m]) for r in rows], np.float64)
        out[m] = {"mean": float(v.mean()), "std": float(v.std())}
    return out


def score_reference(scores: np.ndarray, source: str) -> dict[str, Any]:
    """Quantiles of good calibration scores: the distribution score drift is measured against."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {}
    q = np.quantile(s, np.linspace(0.0, 1.0, N_QUANTILES))
    return {"n": int(s.size), "quantiles": [float(x) for x in q], "source": source}


def psi(quantiles: np.ndarray, sample: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of `sample` against the reference, on reference-decile bins.

    Rule of thumb (credit scoring, where PSI comes from): < 0.1 stable, 0.1-0.25 moderate shift,
    > 0.25 major shift. The stored quantiles are binned like the sample (bins [e_i, e_i+1)), so the
    expected and actual fractions agree on ties too (discrete scores: many equal quantiles).
    """
    q = np.asarray(quantiles, np.float64)
    edges = np.unique(np.quantile(q, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    n_bins = len(edges) + 1
    expected = np.bincount(np.searchsorted(edges, q, side="right"), minlength=n_bins) / len(q)
    actual = np.bincount(np.searchsorted(edges, sample, side="right"), minlength=n_bins) / len(sample)
    e, a = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(quantiles: np.ndarray, sample: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: largest gap between the sample's CDF and the reference CDF
    (the stored quantiles as a step function: 1 % resolution, far below the warn level)."""
    q = np.asarray(quantiles, np.float64)
    s = np.sort(np.asarray(sample, np.float64))
    n = len(s)
    ref_right = np.searchsorted(q, s, side="right") / len(q)
    ref_left = np.searchsorted(q, s, side="left") / len(q)
    above = np.arange(1, n + 1) / n - ref_right
    below = ref_left - np.arange(0, n) / n
    return float(max(above.max(), below.max(), 0.0))
