"""What line health and the defect boxes measure on a real model and real images (docs/results.md).

    python benchmarks/health_checks.py drift --model models/bottle --good DATA/bottle/test/good
    python benchmarks/health_checks.py boxes --model models/bottle --category bottle --data-root DATA
    python benchmarks/health_checks.py codec --model models/bottle --good DATA/bottle/test/good

`drift`: the good images as PNG, as an MJPG clip at their own resolution, pre-resized to the model
and MJPG-encoded, and the model's fit images: median score, fails, the old rule (PSI of pass scores)
and the new one (one-sided KS above calibration, its p-value with both sizes, blockiness).
`boxes`: median IoU of the defect boxes with the ground-truth boxes on the failed defective test
images, with boxes at the pixel threshold (before) and at the box level (runtime/pipeline/defects.box_threshold).
`codec`: the input statistics of the good images before and after an MJPG round trip at their own
size and at the model's size (the codec tolerance of input drift).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_somad import metrics
from edge_somad.contracts.geometry import plan_geometry, resize_frame
from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.health import drift
from edge_somad.runtime.pipeline.defects import box_threshold, find_defects
from edge_somad.runtime.scorers.ort_scorer import OrtScorer


def mjpg_round_trip(frames: list[np.ndarray], path: Path) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def drift_table(model: Path, good: Path, n_fit: int) -> None:
    m = load_manifest(model)
    pre, ref = m.preprocessing, m.reference["scores"]
    q, thr = np.asarray(ref["quantiles"]), float(m.threshold or 0)
    scorer = OrtScorer(model / m.onnx, pre.height, pre.width)
    imgs = [cv2.imread(str(p)) for p in sorted(good.glob("*.png")) + sorted(good.glob("*.jpg"))]
    fit = [cv2.imread(p) for p in json.loads((model / "split.json").read_text())["train"][:n_fit]]
    small = [resize_frame(f, pre.height, pre.width, pre.resize, pre.pad_value) for f in imgs]
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"good, as files": imgs, "good, MJPG at own size": mjpg_round_trip(imgs, Path(tmp) / "a.avi"),
                 f"fit images ({len(fit)})": fit,
                 "good, MJPG at model size": mjpg_round_trip(small, Path(tmp) / "b.avi")}
    print(f"calibration scores: {ref['n']}, threshold {thr:.2f}")
    print("| replay | median score | fails | old: PSI of passes | new: KS above | p | blockiness |")
    print("|---|---|---|---|---|---|---|")
    for name, frames in cases.items():
        batch = np.stack([resize_frame(f, pre.height, pre.width, pre.resize, pre.pad_value) for f in frames])
        s = scorer.score(batch).scores.astype(np.float64)
        passes = s[s < thr]
        psi = f"{drift.psi(q, passes):.2f}" if passes.size else "n/a (no pass)"
        d = drift.ks_above(q, s)
        p = drift.ks_pvalue(d, int(ref["n"]), int(np.unique(s).size), one_sided=True)
        scale = min(pre.height / frames[0].shape[0], pre.width / frames[0].shape[1])
        block = f"{np.mean([drift.blockiness(f) for f in frames]):.2f}" if scale >= 0.75 else "n/a (large frame)"
        print(f"| {name} | {np.median(s):.2f} | {int((s >= thr).sum())}/{len(s)} | {psi} | {d:.2f} | {p:.2g} | "
              f"{block} |")


def box_table(model: Path, category: str, data_root: Path) -> None:
    from edge_somad.artifacts import load_config
    from edge_somad.data import read_image, read_mask, resolve_category
    from edge_somad.evaluate import load_test_set

    m = load_manifest(model)
    pix, thr, area = m.calibration.pixel_threshold, m.threshold, m.calibration.min_defect_area_px
    if pix is None or thr is None:
        raise SystemExit(f"{model} is not calibrated (no image or pixel threshold)")
    ts = load_test_set(resolve_category(category, data_root), load_config(model).input)
    r = OrtScorer(model / m.onnx, m.preprocessing.height, m.preprocessing.width).score(ts.frames)
    rules = {"pixel threshold (before)": lambda _: pix, "box level (now)": lambda a: box_threshold(pix, thr, a)}
    print(f"pixel threshold {pix:.2f}, image threshold {thr:.2f}, min area {area} px")
    for name, level in rules.items():
        ious, shares = [], []
        for i, s in enumerate(ts.samples):
            if s.label != 1 or r.scores[i] < thr:
                continue
            img = read_image(s.path)
            h, w = img.shape[:2]
            g = plan_geometry(h, w, *r.maps[i].shape, ts.resize)
            boxes = [(d["x"], d["y"], d["w"], d["h"]) for d in find_defects(r.maps[i], g, level(r.maps[i]), area)]
            ious += metrics.best_ious(boxes, metrics.mask_boxes(read_mask(s, (h, w))))[0]
            shares.append(sum(b[2] * b[3] for b in boxes) / (h * w))
        print(f"{name}: median IoU {np.median(ious):.3f} over {len(ious)} boxes, boxes cover "
              f"{100 * np.median(shares):.0f} % of an image (median)")


def codec_table(model: Path, good: Path) -> None:
    pre = load_manifest(model).preprocessing
    imgs = [cv2.imread(str(p)) for p in sorted(good.glob("*.png")) + sorted(good.glob("*.jpg"))]
    small = [resize_frame(f, pre.height, pre.width, pre.resize, pre.pad_value) for f in imgs]

    def mean_metrics(frames: list[np.ndarray]) -> dict[str, float]:
        rows = [drift.frame_metrics(resize_frame(f, pre.height, pre.width, pre.resize, pre.pad_value)) for f in frames]
        return {k: float(np.mean([drift.comparable(k, r[k]) for r in rows])) for k in drift.INPUT_METRICS}

    base = mean_metrics(imgs)
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in (("MJPG at own size", mjpg_round_trip(imgs, Path(tmp) / "a.avi")),
                             ("MJPG at model size", mjpg_round_trip(small, Path(tmp) / "b.avi"))):
            now = mean_metrics(frames)
            print(f"{name}: " + ", ".join(f"{k} {now[k] - base[k]:+.2f}" for k in drift.INPUT_METRICS)
                  + " (sharpness in log units, the others in grey levels)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("drift")
    d.add_argument("--model", type=Path, required=True)
    d.add_argument("--good", type=Path, required=True, help="folder of good images (validation set)")
    d.add_argument("--fit-images", type=int, default=60, help="how many of the model's fit images")
    c = sub.add_parser("codec")
    c.add_argument("--model", type=Path, required=True)
    c.add_argument("--good", type=Path, required=True)
    b = sub.add_parser("boxes")
    b.add_argument("--model", type=Path, required=True)
    b.add_argument("--category", required=True)
    b.add_argument("--data-root", type=Path, required=True)
    a = ap.parse_args()
    if a.what == "drift":
        drift_table(a.model, a.good, a.fit_images)
    elif a.what == "codec":
        codec_table(a.model, a.good)
    else:
        box_table(a.model, a.category, a.data_root)


if __name__ == "__main__":
    main()
