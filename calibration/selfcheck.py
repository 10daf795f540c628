"""Self-check without defect photos: how many synthetic defects would pass at the threshold.

Users fit on good parts only, so the question "would this model catch a defect?" has no data. Here
held-out good frames (model space, uint8 BGR) get synthetic defects pasted in — a cut-paste patch
from elsewhere in the part, a scratch, a colour blob — and the calibrated threshold is applied to
them. The result is an estimate of detectability, not a measurement on real defects: synthetic
defects are larger and more contrasted than many real ones, so read it as an upper bound on what
the model can catch and a warning when even these pass. numpy + OpenCV only (no torch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_somad.contracts.decision import fails
from edge_somad.errors import InputError

log = logging.getLogger(__name__)

# Defect size as a fraction of the content's shorter side: small enough to be a local defect, large
# enough to cover a few stride-4 patches of the feature grid.
SIZE_RANGE = (0.06, 0.16)
KINDS = ("cutpaste", "scratch", "blob")
# Synthetic defects of each kind in all, at least, however few held-out images there are.
MIN_PER_KIND = 20


@dataclass(frozen=True)
class Box:
    """Where the part is on the model canvas (letterbox padding excluded)."""

    top: int
    left: int
    bottom: int
    right: int


def content_box(frame: np.ndarray, pad_value: int) -> Box:
    """Bounding box of rows/columns that are not entirely the letterbox pad value."""
    differs = (frame != pad_value).any(axis=2)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    h, w = differs.shape
    if rows.size == 0 or cols.size == 0 or rows[-1] - rows[0] < h // 8 or cols[-1] - cols[0] < w // 8:
        return Box(0, 0, h, w)  # a frame that is (nearly) all pad value: use the whole canvas
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _spot(box: Box, rng: np.random.Generator) -> tuple[int, int, int]:
    """Centre (y, x) and size of one defect inside the central 80 % of the content box."""
    side = min(box.bottom - box.top, box.right - box.left)
    size = max(4, int(side * rng.uniform(*SIZE_RANGE)))
    my, mx = (box.bottom - box.top) // 10, (box.right - box.left) // 10
    y = int(rng.integers(box.top + my, max(box.top + my + 1, box.bottom - my)))
    x = int(rng.integers(box.left + mx, max(box.left + mx + 1, box.right - mx)))
    return y, x, size


def cutpaste(frame: np.ndarray, box: Box, rng: np.random.Generator) -> np.ndarray:
    """A patch of the part from another place, rotated 90 degrees, pasted over the spot."""
    y, x, s = _spot(box, rng)
    sy, sx, _ = _spot(box, rng)
    out = frame.copy()
    h, w = frame.shape[:2]
    y0, x0 = np.clip(y - s // 2, 0, h - s), np.clip(x - s // 2, 0, w - s)
    sy0, sx0 = np.clip(sy - s // 2, 0, h - s), np.clip(sx - s // 2, 0, w - s)
    patch = np.rot90(frame[sy0:sy0 + s, sx0:sx0 + s]).copy()
    out[y0:y0 + s, x0:x0 + s] = patch[:s, :s]
    return out


def scratch(frame: np.ndarray, box: Box, rng: np.random.Generator) -> np.ndarray:
    """A thin straight line, darker or brighter than the part around it."""
    y, x, s = _spot(box, rng)
    angle = rng.uniform(0, np.pi)
    dy, dx = int(np.sin(angle) * s), int(np.cos(angle) * s)
    local = frame[max(0, y - s):y + s, max(0, x - s):x + s].reshape(-1, 3).mean(0)
    colour = (0, 0, 0) if local.mean() > 100 else (255, 255, 255)
    out = frame.copy()
    cv2.line(out, (x - dx, y - dy), (x + dx, y + dy), colour, thickness=max(1, s // 12), lineType=cv2.LINE_AA)
    return out


def blob(frame: np.ndarray, box: Box, rng: np.random.Generator) -> np.ndarray:
    """A soft ellipse of a colour shifted away from the part's own (stain, paint, contamination)."""
    y, x, s = _spot(box, rng)
    mask = np.zeros(frame.shape[:2], np.float32)
    axes = (max(2, s // 2), max(2, int(s * rng.uniform(0.3, 0.6))))
    cv2.ellipse(mask, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, s / 10))[..., None]
    shift = rng.choice([-1.0, 1.0], size=3) * rng.uniform(60, 120, size=3)
    stained = np.clip(frame.astype(np.float32) + shift, 0, 255)
    return (frame * (1 - mask) + stained * mask).round().astype(np.uint8)


MAKERS: dict[str, Callable[[np.ndarray, Box, np.random.Generator], np.ndarray]] = {
    "cutpaste": cutpaste, "scratch": scratch, "blob": blob,
}


def synthetic_defects(frames: np.ndarray, per_kind: int, pad_value: int, seed: int = 0
                      ) -> tuple[np.ndarray, list[str]]:
    """Each good frame with `per_kind` defects of each kind -> (frames (N*3*per_kind, H, W, 3), kinds)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames are {frames.dtype}{frames.shape}; expected uint8 (N, H, W, 3) in model space")
    if per_kind < 1:
        raise InputError(f"per_kind={per_kind}; expected >= 1 synthetic defect of each kind per image")
    rng = np.random.default_rng(seed)
    out, kinds = [], []
    for frame in frames:
        box = content_box(frame, pad_value)
        for kind in KINDS:
            for _ in range(per_kind):
                made = frame.copy()
                # Confined to the part: a blob's blur or a scratch's end must not paint padding.
                inside = (slice(box.top, box.bottom), slice(box.left, box.right))
                made[inside] = MAKERS[kind](frame, box, rng)[inside]
                out.append(made)
                kinds.append(kind)
    return np.stack(out), kinds


def detectability(good_scores: np.ndarray, defect_scores: np.ndarray, kinds: list[str],
                  threshold: float) -> dict[str, object]:
    """Synthetic AUROC (good vs pasted) and the share of pasted defects that pass at `threshold`."""
    from edge_somad.metrics import image_auroc

    good, bad = np.asarray(good_scores, np.float64), np.asarray(defect_scores, np.float64)
    labels = np.r_[np.zeros(good.size, int), np.ones(bad.size, int)]
    kind_arr = np.asarray(kinds)
    passed = ~fails(bad, threshold)  # the runtime's rule
    return {
        "n_good": int(good.size), "n_synthetic": int(bad.size),
        "synthetic_auroc": round(image_auroc(labels, np.r_[good, bad]), 4),
        "synthetic_escape_rate": round(float(passed.mean()), 4),
        "escape_rate_per_kind": {k: round(float(passed[kind_arr == k].mean()), 4) for k in KINDS},
        "note": "synthetic defects pasted into held-out good images; an estimate, not real defects",
    }


def self_check(score: Callable[[np.ndarray], np.ndarray], good_frames: np.ndarray, good_scores: np.ndarray,
               threshold: float, pad_value: int) -> dict[str, Any]:
    """Synthetic defects in the held-out good frames, scored by `score` and judged at `threshold`."""
    # At least 3 x MIN_PER_KIND synthetic defects, and 2 of each kind per held-out image.
    per_kind = max(2, math.ceil(MIN_PER_KIND / len(good_frames)))
    frames, kinds = synthetic_defects(good_frames, per_kind, pad_value)
    report = detectability(good_scores, score(frames), kinds, threshold)
    log.info("self-check: %.0f%% of %d synthetic defects pass at the threshold",
             100 * report["synthetic_escape_rate"], report["n_synthetic"])
    return report


def summary(report: dict[str, Any] | None) -> str:
    """One line for the calibrate table."""
    if not report:
        return "not run"
    per = ", ".join(f"{k} {v:.0%}" for k, v in report["escape_rate_per_kind"].items())
    return (f"{report['synthetic_escape_rate']:.0%} of {report['n_synthetic']} synthetic defects pass "
            f"({per}); synthetic AUROC {report['synthetic_auroc']:.3f}")
