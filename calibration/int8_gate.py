"""Is the int8 graph usable? Its accuracy drop against fp32, measured without defect photos.

`calibrate --int8` has only good images, so the drop is measured where the self-check measures
detectability: synthetic defects (calibration/synthetic.py) pasted into held-out good frames, with
the pasted pixels as ground truth. Both graphs score the same frames and the three metrics of
`evaluate` are computed for each — image AUROC, pixel AUROC and PRO — and drop = fp32 - int8. The
int8 graph is usable when the image and pixel AUROC drops are at most MAX_DROP (the target on
bottle's real test set: docs/results.md, INT8). PRO is reported, not gated: on synthetic defects its drop
follows the draw of defects more than the graph (a small model, hazelnut_toy at 128 px: -0.001 to
+0.010 over five draws of 360 defects, against 0.0015 on its real test set), while both AUROC
drops stayed within +-0.005 and moved together with real breakage (scrambled int8 weights).

Reported beside it, not gated: how far int8 scores move from fp32 scores, relative to the fp32
score range of the same frames. The int8 graph's statistics are refit on its own features, so its
scores shift a little by design, and it gets its own threshold; what matters is the ranking.
numpy + OpenCV only (no torch, no onnxruntime): the scores come from the caller.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_somad import metrics
from edge_somad.calibration.synthetic import CONSPICUOUS, content_box, synthetic_defects
from edge_somad.errors import InputError

if TYPE_CHECKING:
    from edge_somad.contracts.manifest import Manifest

MAX_DROP = 0.005  # the INT8 accuracy target: no metric more than this below fp32
# Good frames that get defects pasted in (spread over the held-out set), and synthetic defects in
# all: with ~70 defects the image AUROC drop of hazelnut_toy (6 held-out images) moved between
# -0.012 and +0.007 from draw to draw; with 360, between -0.005 and +0.002. Scored twice (fp32,
# int8): under a minute at 224 px on 2 cores.
MAX_BASE_IMAGES = 24
MIN_SYNTHETIC = 360
# A pixel counts as defect when a synthetic defect changed it by more than this (grey levels), so
# the faint fringe of a blurred blob is not ground truth the model is blamed for missing.
MASK_TOLERANCE = 8
METRICS = ("image_auroc", "pixel_auroc", "pro")
GATED = ("image_auroc", "pixel_auroc")  # PRO: reported only (module docstring)
LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO"}


@dataclass(frozen=True)
class SyntheticSet:
    """Good frames then synthetic defects; labels, defect masks and valid (non-padding) pixels."""

    frames: np.ndarray  # (N, H, W, 3) uint8 BGR, model space
    labels: np.ndarray  # (N,) 0 good, 1 synthetic defect
    masks: np.ndarray  # (N, H, W) bool
    valid: np.ndarray  # (N, H, W) bool: inside the part's content box (letterbox padding excluded)
    n_good: int


def synthetic_set(good_frames: np.ndarray, pad_value: int, seed: int = 0) -> SyntheticSet:
    """All good frames, and defects pasted into up to MAX_BASE_IMAGES of them (spread evenly)."""
    if good_frames.ndim != 4 or good_frames.dtype != np.uint8 or len(good_frames) == 0:
        raise InputError(f"good frames are {good_frames.dtype}{good_frames.shape}; expected uint8 (N>=1, H, W, 3)")
    n = len(good_frames)
    base_idx = np.unique(np.linspace(0, n - 1, min(n, MAX_BASE_IMAGES)).round().astype(int))
    base = good_frames[base_idx]
    per_kind = max(2, math.ceil(MIN_SYNTHETIC / (len(CONSPICUOUS) * len(base))))
    # The conspicuous kinds only: the drop's draw-to-draw spread (above) was measured on them.
    made = synthetic_defects(base, per_kind, pad_value, seed=seed, kinds=CONSPICUOUS)
    bad, origin = made.frames, base[made.origin]
    masks = np.r_[np.zeros((n, *good_frames.shape[1:3]), bool),
                  (np.abs(bad.astype(np.int16) - origin).max(axis=-1) > MASK_TOLERANCE)]
    frames = np.concatenate([good_frames, bad])
    valid = np.zeros(masks.shape, bool)
    for i, frame in enumerate(frames):
        box = content_box(frame if i < n else origin[i - n], pad_value)
        valid[i, box.top:box.bottom, box.left:box.right] = True
    masks &= valid
    labels = np.r_[np.zeros(n, int), np.ones(len(bad), int)]
    return SyntheticSet(frames, labels, masks, valid, n)


def accuracy(data: SyntheticSet, scores: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """The three `evaluate` metrics on the synthetic set."""
    if scores.shape != data.labels.shape or maps.shape != data.masks.shape:
        raise InputError(f"scores {scores.shape} / maps {maps.shape}; expected {data.labels.shape} / "
                         f"{data.masks.shape} (one per frame of the synthetic set)")
    scores, maps = np.asarray(scores, np.float64), np.asarray(maps, np.float32)
    return {"image_auroc": metrics.image_auroc(data.labels, scores),
            "pixel_auroc": metrics.pixel_auroc(data.masks, maps, data.valid),
            "pro": metrics.pro_score(data.masks, maps, valid=data.valid)}


def int8_drop(data: SyntheticSet, fp32: tuple[np.ndarray, np.ndarray], int8: tuple[np.ndarray, np.ndarray],
              max_drop: float = MAX_DROP) -> dict[str, Any]:
    """fp32 vs int8 on the synthetic set: metrics, drops, score movement, and the verdict `usable`."""
    a32, a8 = accuracy(data, *fp32), accuracy(data, *int8)
    drop = {k: a32[k] - a8[k] for k in METRICS}
    s32, s8 = np.asarray(fp32[0], np.float64), np.asarray(int8[0], np.float64)
    span = float(np.ptp(s32)) or 1.0
    moved = np.abs(s8 - s32) / span
    worst = max(GATED, key=lambda k: drop[k])
    return {
        "n_good": data.n_good, "n_synthetic": int(data.labels.sum()),
        "fp32": a32, "int8": a8, "drop": drop, "max_drop": drop[worst], "worst_metric": worst,
        "limit": max_drop, "usable": bool(drop[worst] <= max_drop),
        "score_shift_median_of_fp32_range": float(np.median(moved)),
        "score_shift_max_of_fp32_range": float(moved.max()),
        "rule": f"fp32 - int8 image AUROC, pixel AUROC (and PRO, reported only) on held-out good frames and "
                f"synthetic defects pasted into them; usable when both AUROC drops are <= {max_drop}",
    }


def summary(report: dict[str, Any]) -> str:
    """The measurement, for the calibrate output and the refusal message."""
    def row(values: dict[str, float], fmt: str) -> str:
        return ", ".join(f"{LABELS[k]} {values[k]:{fmt}}" for k in METRICS)

    moved = (report["score_shift_median_of_fp32_range"], report["score_shift_max_of_fp32_range"])
    return (f"drop {row(report['drop'], '+.4f')} (limit {report['limit']} on both AUROC) on "
            f"{report['n_good']} held-out good images + {report['n_synthetic']} synthetic defects "
            f"(fp32 {row(report['fp32'], '.4f')}; int8 {row(report['int8'], '.4f')}); int8 scores moved "
            f"{moved[0]:.2%} of the fp32 score range (median, max {moved[1]:.2%})")


def without_int8(manifest: Manifest) -> Manifest:
    """The manifest naming no int8 graph and no int8 threshold: `--precision int8` refuses to run."""
    thresholds = {k: v for k, v in manifest.precision_thresholds.items() if k != "int8"}
    return dataclasses.replace(manifest, int8_onnx=None, int8_onnx_sha256=None, precision_thresholds=thresholds)
