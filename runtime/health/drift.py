"""Drift statistics: per-frame image metrics (OpenCV), PSI and KS against stored references (numpy).

The references live in manifest.json (`reference`): the input metrics of the fit images (written
at fit, copied at export, filled in at calibrate for older models) and quantiles of the good
calibration scores (written at calibrate). Everything here is cheap enough to run on every frame:
metrics are taken on the model-input frame (already resized), never the full camera frame.
`grey` is the float reference of the luma the metrics use (tests hold frame_metrics to it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from edge_somad.contracts.geometry import Geometry

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 on the model canvas
# Blockiness is measured on frames the model sees at >= this share of their size: their 8-pixel
# JPEG blocks are still 6+ model pixels. Smaller shares average the blocks away.
BLOCKY_SCALE = 0.75

INPUT_METRICS = ("brightness", "contrast", "sharpness")
N_QUANTILES = 101  # 0 %, 1 %, ... 100 %: enough for 10 PSI bins and a KS CDF, and 2 kB of JSON
PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin would make PSI infinite; this is the usual small-count floor


def grey(frame: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> float32 luma (BT.601 weights, as cv2.cvtColor uses)."""
    f = frame.astype(np.float32)
    return f[..., 0] * 0.114 + f[..., 1] * 0.587 + f[..., 2] * 0.299


def content_box(g: Geometry) -> Box:
    """Where the frame's own pixels lie on the model canvas: letterbox padding is no part of the
    picture, and a square fit image letterboxed to a 4:3 camera's canvas would otherwise "drift"
    in brightness, contrast and sharpness by its black bands alone."""
    return g.top, min(g.dst_h, g.top + g.new_h), g.left, min(g.dst_w, g.left + g.new_w)


def frame_metrics(frame: np.ndarray, box: Box | None = None, sharpness: bool = True) -> dict[str, float]:
    """brightness = mean luma, contrast = std of luma, sharpness = variance of the 4-neighbour Laplacian
    over the interior pixels (left out with sharpness=False: the per-frame fault checks need only
    the first two), over the frame's content `box` (the whole frame when None).

    The definitions of `grey` and the numpy Laplacian, computed by OpenCV: float32 luma, sums in
    float64 (meanStdDev), so they agree with a float64 reference to ~1e-7 relative, in about a third
    of numpy's time (benchmarks/host_cuts.py; docs/results.md, "Speed").
    """
    if box is not None:
        frame = frame[box[0]:box[1], box[2]:box[3]]
    g = cv2.cvtColor(np.ascontiguousarray(frame).astype(np.float32), cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(g)
    out = {"brightness": float(mean[0, 0]), "contrast": float(std[0, 0])}
    if sharpness:
        if min(g.shape) < 3:  # no interior pixel: nothing to measure
            out["sharpness"] = 0.0
            return out
        # ksize=1 is exactly the 4-neighbour kernel [[0,1,0],[1,-4,1],[0,1,0]]; the border row and
        # column (OpenCV's reflected border) are cut so only interior pixels count, as in numpy.
        _, lap_std = cv2.meanStdDev(cv2.Laplacian(g, cv2.CV_32F, ksize=1)[1:-1, 1:-1])
        out["sharpness"] = float(lap_std[0, 0]) ** 2
    return out


def blockiness(frame: np.ndarray, block: int = 8) -> float | None:
    """JPEG/MJPG block artefacts: mean |step| across the 8-pixel block borders over the mean |step|
    everywhere (rows and columns). About 1.0 for an uncompressed picture; 1.2-1.9 for MJPG or JPEG
    q75 at 224x224 (docs/health.md). None for a frame too small to hold two blocks."""
    g = grey(frame)
    if min(g.shape) < 2 * block:
        return None
    dx, dy = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    edge = dx[:, block - 1::block].mean() + dy[block - 1::block, :].mean()
    return float(edge / max(dx.mean() + dy.mean(), 1e-6))

def comparable(metric: str, value: float) -> float:
    """The scale a metric is compared on. Sharpness spans decades (focus, texture, noise), so it is
    compared on log(1 + x): a defocus that halves it is the same step at any texture level."""
    return float(np.log1p(max(value, 0.0))) if metric == "sharpness" else float(value)


def input_reference(frames: Iterable[np.ndarray], source: str, boxes: Sequence[Box] | None = None,
                    blocky: Sequence[float] | None = None) -> dict[str, Any]:
    """Mean/std per metric (on the comparable scale) of good frames resized as the runtime does,
    each over its content box (content_box) when given; and of the blockiness of the originals the
    model sees at about its own size (`blocky`), when there are any: a model fitted on JPEGs at its
    resolution has seen their blocks."""
    frames = list(frames)
    rows = [frame_metrics(f, boxes[i] if boxes is not None else None) for i, f in enumerate(frames)]
    if not rows:
        return {}
    out: dict[str, Any] = {"n": len(rows), "source": source}
    for m in INPUT_METRICS:
        v = np.array([comparable(m, r[m]) for r in rows], np.float64)
        out[m] = {"mean": float(v.mean()), "std": float(v.std())}
    if blocky:
        b = np.asarray(blocky, np.float64)
        out["blockiness"] = {"mean": float(b.mean()), "std": float(b.std()), "n": int(b.size)}
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


def ks_above(quantiles: np.ndarray, sample: np.ndarray) -> float:
    """One-sided KS distance: how far the sample's scores lie ABOVE the reference (the largest
    F_reference(x) - F_sample(x)); 0 when they are not higher anywhere."""
    q = np.asarray(quantiles, np.float64)
    s = np.sort(np.asarray(sample, np.float64))
    below = np.searchsorted(q, s, side="left") / len(q) - np.arange(0, len(s)) / len(s)
    return float(max(below.max(), 0.0))


def ks_pvalue(d: float, n: int, m: int, one_sided: bool = False) -> float:
    """p-value of a two-sample KS distance d between samples of n and m values (asymptotic
    Kolmogorov distribution with Stephens' small-sample correction; one-sided: exp(-2 lambda^2)).
    Small n or m make a large d likely by chance: 6 calibration scores against 20 frames reach
    d = 0.5 about one time in five."""
    if n < 1 or m < 1:
        return 1.0
    en = np.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if one_sided:
        return float(min(1.0, np.exp(-2.0 * lam * lam)))
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101)
    p = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * lam * lam))
    return float(min(1.0, max(0.0, p)))
