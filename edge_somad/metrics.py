"""Anomaly-detection metrics in plain numpy: ROC/AUROC (image and pixel level) and PRO.

Conventions follow the MVTec AD evaluation: a pixel or image is predicted anomalous when its score
is above the threshold, tied scores move together (one ROC point per distinct score), and PRO is
integrated up to a false-positive-rate limit (0.3) and divided by that limit, so it lies in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_somad.errors import MetricError


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # Written out: np.trapz was renamed np.trapezoid in numpy 2 and we support both majors.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.shape != scores.shape:
        raise MetricError(f"labels shape {labels.shape} != scores shape {scores.shape}; expected equal shapes")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise MetricError(
                f"labels hold values {np.unique(labels)[:5]}; expected only 0 (good) and 1 (defect)"
            )
        labels = labels.astype(bool)
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        raise MetricError("scores hold NaN/inf or are not numeric; expected finite real numbers")
    return labels.ravel(), scores.ravel()


def _check_both_classes(labels: np.ndarray, what: str) -> None:
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0:
        raise MetricError(
            f"{what}: only negatives (label 0) among {labels.size}; AUROC needs both classes. "
            "Add defect images to the evaluation set (MVTec layout: test/<defect type>/ beside test/good/)"
        )
    if n_pos == labels.size:
        raise MetricError(
            f"{what}: only positives (label 1) among {labels.size}; AUROC needs both classes. "
            "Add good images to the evaluation set (test/good/)"
        )


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds), thresholds descending; the first point is (0, 0) at +inf.

    Point i counts every sample with score >= thresholds[i] as positive. Equal scores form one step,
    so a tie between a positive and a negative gives a diagonal segment (worth 1/2 in the area).
    """
    labels, scores = _check_binary(labels, scores)
    _check_both_classes(labels, "roc_curve")
    # One sort. The order inside a tie group does not matter: ties are merged below.
    order = np.argsort(scores)[::-1]
    s = scores[order]
    tps = np.cumsum(labels[order], dtype=np.int64)
    # Keep the last index of every run of equal scores: the point after the whole tie group.
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tps = tps[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    thresholds = np.r_[np.inf, s[last].astype(np.float64)]
    return fpr, tpr, thresholds


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoid rule, so ties count 1/2). MetricError for one class."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return _trapezoid(tpr, fpr)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level AUROC: one label (0 good, 1 defect) and one score per image."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.ndim != 1:
        raise MetricError(f"image labels have shape {labels.shape}; expected (N,) one per image")
    return auroc(labels, scores)


def _check_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise MetricError(
            f"masks {masks.shape} and maps {maps.shape}: expected equal shapes (N, H, W); resize the "
            "maps to the mask size (or the masks to the model size) first"
        )
    masks = masks.astype(bool, copy=False)
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float32)
    if not np.isfinite(maps).all():
        raise MetricError("anomaly maps hold NaN/inf; expected finite scores")
    return masks, maps


def _check_valid(valid: np.ndarray | None, masks: np.ndarray) -> np.ndarray:
    """The pixels that count: all of them, or those marked True (e.g. image content, not padding)."""
    if valid is None:
        return np.ones(masks.shape, bool)
    valid = np.asarray(valid)
    if valid.ndim == 2:
        valid = valid[None]
    if valid.shape != masks.shape:
        raise MetricError(f"valid {valid.shape} and masks {masks.shape}: expected equal shapes (N, H, W)")
    if masks[~valid.astype(bool)].any():
        raise MetricError("masks mark defect pixels outside the valid region; a defect cannot lie in padding")
    return valid.astype(bool)


def pixel_auroc(masks: np.ndarray, maps: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Pixel-level AUROC over every pixel (or every `valid` pixel) of every image.

    valid (N, H, W) bool excludes pixels that are not image content (letterbox padding): counting
    them as good pixels inflates the metric with pixels no camera ever saw.

    Same value as auroc() (ties count 1/2), computed as the Mann-Whitney statistic: sort the good
    pixels once (np.sort, no index array) and binary-search the defect pixels into them. For
    100x224x224 maps that is ~4x faster and lighter than building the full ROC curve.
    """
    masks, maps = _check_maps(masks, maps)
    keep = _check_valid(valid, masks)
    _check_both_classes(masks[keep], "pixel_auroc")
    good = np.sort(maps[~masks & keep])
    bad = maps[masks]
    below = np.searchsorted(good, bad, side="left").sum(dtype=np.float64)
    ties = (np.searchsorted(good, bad, side="right") - np.searchsorted(good, bad, side="left")).sum(
        dtype=np.float64
    )
    return float((below + 0.5 * ties) / (good.size * bad.size))


def _regions(masks: np.ndarray, maps: np.ndarray) -> list[np.ndarray]:
    """Sorted scores of each 8-connected ground-truth region, over all images."""
    out: list[np.ndarray] = []
    for mask, amap in zip(masks, maps, strict=True):
        if not mask.any():
            continue
        n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        flat_lab, flat_map = lab.ravel(), amap.ravel()
        inside = np.flatnonzero(flat_lab)
        by_region = inside[np.argsort(flat_lab[inside], kind="stable")]
        sizes = np.bincount(flat_lab[inside], minlength=n)[1:]
        for chunk in np.split(flat_map[by_region], np.cumsum(sizes)[:-1]):
            out.append(np.sort(chunk))
    return out


def pro_curve(
    masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, num_thresholds: int = 200,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve (fpr, pro) on [0, fpr_limit], ending exactly at fpr_limit.

    valid (N, H, W) bool: only those pixels count as good pixels for the false-positive rate.

    Thresholds are the good-pixel scores at num_thresholds evenly spaced FPR targets, so every
    point is exact (no approximation of FPR); only the spacing between points is coarse.
    """
    masks, maps = _check_maps(masks, maps)
    if not 0 < fpr_limit <= 1:
        raise MetricError(f"fpr_limit={fpr_limit}; expected 0 < fpr_limit <= 1")
    if num_thresholds < 2:
        raise MetricError(f"num_thresholds={num_thresholds}; expected >= 2")
    good = np.sort(maps[~masks & _check_valid(valid, masks)])
    n_good = good.size
    if n_good == 0:
        raise MetricError("masks are all defect: no good pixels to measure the false-positive rate")
    regions = _regions(masks, maps)
    if not regions:
        raise MetricError("masks hold no defect pixels: PRO needs at least one ground-truth region")
    # Allowing m good pixels above the threshold means threshold = the (m+1)-th largest good score
    # and prediction = score > threshold, so ties never push FPR past the target.
    m = np.floor(np.linspace(0.0, fpr_limit, num_thresholds) * n_good + 1e-9).astype(np.int64)
    m = np.unique(m)
    thr = np.where(m < n_good, good[np.clip(n_good - 1 - m, 0, None)], -np.inf)
    thr = np.unique(thr)[::-1]  # descending, tie-free
    # One more threshold below the last one, so the curve can be interpolated at fpr_limit.
    below = good[good < thr[-1]]
    thr = np.r_[thr, below[-1] if below.size else -np.inf] if np.isfinite(thr[-1]) else thr
    fpr = (n_good - np.searchsorted(good, thr, side="right")) / n_good
    overlap = np.zeros(thr.size)
    for r in regions:
        overlap += (r.size - np.searchsorted(r, thr, side="right")) / r.size
    pro = overlap / len(regions)
    keep = fpr <= fpr_limit
    end = np.interp(fpr_limit, fpr, pro)
    if fpr[keep][-1] < fpr_limit:
        return np.r_[fpr[keep], fpr_limit], np.r_[pro[keep], end]
    return fpr[keep], pro[keep]


def pro_score(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, valid: np.ndarray | None = None) -> float:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (MVTec AD: in [0, 1])."""
    fpr, pro = pro_curve(masks, maps, fpr_limit, valid=valid)
    return _trapezoid(pro, fpr) / fpr_limit


# -- defect boxes ------------------------------------------------------------------------------------
# A PLC or operator acts on the published boxes, not on the map: how well they sit on the real
# defect is measured as the IoU of each predicted box with the ground-truth box it overlaps most.

Box = tuple[int, int, int, int]  # x, y, w, h in pixels


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the 8-connected components of a ground-truth mask (x, y, w, h)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=8)
    return [tuple(int(v) for v in stats[i, :4]) for i in range(1, n)]  # type: ignore[misc]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def best_ious(pred: list[Box], gt: list[Box]) -> tuple[list[float], list[float]]:
    """(for each predicted box its best IoU with a ground-truth box, for each ground-truth box its best
    IoU with a predicted box); 0 where the other side has none."""
    table = np.array([[box_iou(p, g) for g in gt] for p in pred], np.float64).reshape(len(pred), len(gt))
    per_pred = table.max(axis=1).tolist() if gt else [0.0] * len(pred)
    per_gt = table.max(axis=0).tolist() if pred else [0.0] * len(gt)
    return per_pred, per_gt
