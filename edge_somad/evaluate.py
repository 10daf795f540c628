"""evaluate: score an MVTec test split with any backend; metrics, report JSON, pictures.

Works on the exported graph (onnxruntime/tensorrt) as well as the torch reference, so the
AUROCs of the deployable artifact are measured, not assumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad import metrics, viz
from edge_somad.config import InputSpec
from edge_somad.contracts.geometry import resize_frame, resize_mask
from edge_somad.contracts.jsonio import write_json
from edge_somad.contracts.layout import ONNX_NAME, read_fit_info
from edge_somad.data import Category, Sample, read_image, read_mask
from edge_somad.runtime.scorers.scorer import Scorer

# Pixel metrics count image content only: letterbox padding is no part of any photo, and counting
# it as "good pixels" inflated PRO (0.65 on content became 0.80 with padding on a tall part).
PIXEL_REGION = "image content in model space (letterbox padding excluded)"


@dataclass(frozen=True)
class TestSet:
    samples: tuple[Sample, ...]
    frames: np.ndarray  # (N, H, W, 3) uint8 BGR, model space
    masks: np.ndarray | None  # (N, H, W) bool, model space; None for image-level-only sets
    labels: np.ndarray  # (N,) int
    valid: np.ndarray  # (N, H, W) bool: pixels that show the image (False = letterbox padding)
    resize: str = "letterbox"  # how frames went to model space (pictures map the heat back)


def load_test_set(category: Category, spec: InputSpec) -> TestSet:
    # A set with no ground_truth/ at all is image-level only; data.load_category allows no mix.
    has_masks = all(s.mask_path is not None for s in category.test if s.label == 1)
    frames, masks, valid = [], [], []
    for s in category.test:
        img = read_image(s.path)
        frames.append(resize_frame(img, spec.height, spec.width, spec.resize, spec.pad_value))
        valid.append(resize_mask(np.ones(img.shape[:2], np.uint8), spec.height, spec.width, spec.resize))
        if has_masks:
            masks.append(resize_mask(read_mask(s, img.shape[:2]), spec.height, spec.width, spec.resize))
    labels = np.array([s.label for s in category.test])
    return TestSet(tuple(category.test), np.stack(frames), np.stack(masks) if has_masks else None, labels,
                   np.stack(valid), spec.resize)


def score_timed(scorer: Scorer, frames: np.ndarray, batch: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores (N,) float64, maps (N, H, W) and mean milliseconds per image (calibration.calibrate.score_all
    is the untimed float32 pair the calibration steps use)."""
    scores, maps = [], []
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        r = scorer.score(np.ascontiguousarray(frames[i : i + batch]))
        scores.append(r.scores)
        maps.append(r.maps)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(frames))
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps), ms


def compute_metrics(ts: TestSet, scores: np.ndarray, maps: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"image_auroc": metrics.image_auroc(ts.labels, scores)}
    if ts.masks is None:
        out.update(pixel_auroc=None, pro=None, pixel_metrics="none: the set has image-level labels only")
    else:
        out.update(pixel_auroc=metrics.pixel_auroc(ts.masks, maps, ts.valid),
                   pro=metrics.pro_score(ts.masks, maps, valid=ts.valid), pixel_metrics=PIXEL_REGION)
    per_type = {}
    good = ts.labels == 0
    for t in sorted({s.defect_type for s in ts.samples if s.label == 1}):
        sel = good | np.array([s.defect_type == t for s in ts.samples])
        per_type[t] = metrics.image_auroc(ts.labels[sel], scores[sel])
    out["image_auroc_per_type"] = per_type
    return out


def box_report(ts: TestSet, scores: np.ndarray, maps: np.ndarray, threshold: float | None,
               pixel_threshold: float | None, min_area_px: int = 0) -> dict[str, Any]:
    """How well the runtime's defect boxes sit on the real defects (report key `boxes`).

    For every defective test image with a mask that the model fails at `threshold`, the boxes the
    runtime would publish (runtime/pipeline/defects.find_defects with defects.box_threshold, in original
    image pixels) are matched with the ground-truth boxes (8-connected components of the mask):
    `median_iou` is the median over predicted boxes of each one's best IoU with a ground-truth box,
    `median_iou_gt` the median over ground-truth boxes of the best IoU with a predicted box (0 when
    missed), `frame_share` the median share of the image the boxes cover.
    """
    from edge_somad.contracts.geometry import plan_geometry
    from edge_somad.runtime.pipeline.defects import box_threshold, find_defects

    if ts.masks is None or threshold is None or pixel_threshold is None:
        return {"median_iou": None, "why": "needs ground-truth masks, an image threshold and a pixel threshold"}
    per_pred: list[float] = []
    per_gt: list[float] = []
    shares: list[float] = []
    no_box = 0
    for i, s in enumerate(ts.samples):
        if s.label != 1 or scores[i] < threshold:  # only a fail carries boxes (contracts/decision.fails)
            continue
        image = read_image(s.path)
        h, w = image.shape[:2]
        gt = metrics.mask_boxes(read_mask(s, (h, w)))
        geometry = plan_geometry(h, w, maps[i].shape[0], maps[i].shape[1], ts.resize)
        cut = box_threshold(pixel_threshold, threshold, maps[i])
        boxes = [(d["x"], d["y"], d["w"], d["h"]) for d in find_defects(maps[i], geometry, cut, min_area_px)]
        no_box += not boxes
        a, b = metrics.best_ious(boxes, gt)
        per_pred += a
        per_gt += b
        shares.append(sum(bw * bh for _, _, bw, bh in boxes) / float(h * w))

    def med(v: list[float]) -> float | None:
        return round(float(np.median(v)), 4) if v else None

    return {"median_iou": med(per_pred), "median_iou_gt": med(per_gt), "frame_share": med(shares),
            "n_images": len(shares), "n_boxes": len(per_pred), "n_gt_boxes": len(per_gt),
            "fails_without_box": no_box}


def evaluate(
    model_dir: Path, category: Category, scorer: Scorer, spec: InputSpec, threshold: float | None,
    report_path: Path | None, pictures_dir: Path | None, n_pictures: int = 12,
    confusion: Callable[..., dict[str, Any]] | None = None,
    pixel_threshold: float | None = None, min_area_px: int = 0,
) -> dict[str, Any]:
    ts = load_test_set(category, spec)
    scores, maps, ms = score_timed(scorer, ts.frames)
    report: dict[str, Any] = {
        "category": category.name, "backend": scorer.backend, "device": scorer.device,
        "n_test_images": len(ts.samples), "n_defective": int(ts.labels.sum()),
        **compute_metrics(ts, scores, maps), "ms_per_image": round(ms, 2),
    }
    fit_info = read_fit_info(model_dir)
    if fit_info:
        report["fit_seconds"] = fit_info.get("fit_seconds")
    from edge_somad.artifacts import model_bytes

    report["model_bytes"] = model_bytes(Path(model_dir))
    onnx_path = Path(model_dir) / ONNX_NAME
    report["onnx_bytes"] = onnx_path.stat().st_size if onnx_path.is_file() else None
    report["threshold"] = threshold
    if threshold is not None and confusion is not None:
        types = [s.defect_type for s in ts.samples]
        report["at_threshold"] = confusion(ts.labels, types, scores, threshold)
    report["boxes"] = box_report(ts, scores, maps, threshold, pixel_threshold, min_area_px)
    report["box_iou"] = report["boxes"]["median_iou"]
    if pictures_dir is not None:
        report["pictures"] = write_pictures(pictures_dir, ts, scores, maps, threshold, n_pictures)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(report_path, report)
    return report


def write_pictures(out: Path, ts: TestSet, scores: np.ndarray, maps: np.ndarray,
                   threshold: float | None, n: int) -> list[str]:
    """Heatmap overlays (GT contour drawn) for a spread of test images, plus ROC and PRO curves.

    Overlays are drawn on the ORIGINAL image at its own resolution (the map is moved back through
    the same letterbox/crop/stretch geometry the runtime uses), not on the small model-space frame:
    a quality engineer has to be able to read the part and the defect outline.
    """
    import cv2

    from edge_somad.contracts.geometry import plan_geometry
    from edge_somad.runtime.pipeline.defects import map_to_frame

    out.mkdir(parents=True, exist_ok=True)
    # One colour scale for every picture: good images' score range, so overlays are comparable.
    vmin = float(np.percentile(maps[ts.labels == 0], 1)) if (ts.labels == 0).any() else float(maps.min())
    vmax = threshold if threshold is not None else float(np.percentile(scores, 95))
    picks = np.linspace(0, len(ts.samples) - 1, num=min(n, len(ts.samples))).round().astype(int)
    written = []
    for i in sorted(set(picks.tolist())):
        s = ts.samples[i]
        title = f"{s.defect_type}/{s.path.stem} score {scores[i]:.2f}"
        image = read_image(s.path)
        h, w = image.shape[:2]
        geometry = plan_geometry(h, w, maps[i].shape[0], maps[i].shape[1], ts.resize)
        mask = read_mask(s, (h, w)) if ts.masks is not None else None
        img = viz.overlay(image, map_to_frame(maps[i], geometry), mask, vmin, vmax, title=title)
        path = out / f"{s.defect_type}_{s.path.stem}.png"
        cv2.imwrite(str(path), img)
        written.append(path.name)
    fpr, tpr, _ = metrics.roc_curve(ts.labels, scores)
    viz.plot_curves(out / "roc.png", {"image ROC": (fpr, tpr)}, "Image-level ROC", "FPR", "TPR")
    if ts.masks is None:
        return [*written, "roc.png"]
    pfpr, pro = metrics.pro_curve(ts.masks, maps, 0.3, valid=ts.valid)
    viz.plot_curves(out / "pro.png", {"PRO": (pfpr, pro)}, "Per-region overlap", "FPR", "PRO", xlim=(0, 0.3))
    return [*written, "roc.png", "pro.png"]


def format_table(report: dict[str, Any]) -> str:
    def num(v: float | None) -> str:
        return "n/a (no masks)" if v is None else f"{v:.4f}"

    rows = [
        ("image AUROC", num(report["image_auroc"])), ("pixel AUROC", num(report["pixel_auroc"])),
        ("PRO (FPR<=0.3)", num(report["pro"])), ("pixel metrics on", report["pixel_metrics"]),
        ("backend", f"{report['backend']} ({report['device']})"),
        ("ms / image", f"{report['ms_per_image']:.1f}"), ("fit seconds", str(report.get("fit_seconds"))),
        ("model bytes", f"{report['model_bytes']:,}"),
    ]
    if report.get("box_iou") is not None:
        b = report["boxes"]
        rows.append(("box IoU (median)", f"{b['median_iou']:.3f} over {b['n_boxes']} boxes on {b['n_images']} "
                     f"failed defective images; boxes cover {100 * b['frame_share']:.0f} % of an image"))
    for t, v in report["image_auroc_per_type"].items():
        rows.append((f"  image AUROC {t}", f"{v:.4f}"))
    at = report.get("at_threshold")
    if at:
        rows.append(("threshold", f"{report['threshold']:.4f}"))
        for k, v in at.items():
            if not isinstance(v, dict):
                rows.append((f"  {k}", str(v)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
