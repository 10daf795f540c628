"""Ablations of SOMAD design choices against the PaDiM baseline on the same split.

Every variant is fitted, exported and evaluated on the same category and train/holdout split
(ONNX Runtime on the exported graph: what ships), and one table row is printed per variant. Usage:
    python benchmarks/ablation.py --category bottle --data-root ../shared/data/mvtec_ad \
        --variants default subset d32 d96 padim k1 som32 --json reports/ablation.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from edge_somad.config import FitConfig, InputSpec, SomConfig
from edge_somad.data import load_category
from edge_somad.evaluate import compute_metrics, load_test_set, score_timed
from edge_somad.export.exporter import export_model
from edge_somad.fit import fit_model
from edge_somad.runtime.scorers.ort_scorer import OrtScorer

BASE = FitConfig()
# The configuration before the covariance ablation (the paper's eps, light shrinkage).
PAPER = replace(BASE, eps=0.01, shrinkage=16.0)
VARIANTS: dict[str, FitConfig] = {
    "default": BASE,
    "paper-cov": PAPER,
    "subset": replace(BASE, projection="subset"),
    "d32": replace(BASE, d=32),
    "d48": replace(BASE, d=48),
    "d96": replace(BASE, d=96),
    "k1": replace(BASE, topk=1),
    "k8": replace(BASE, topk=8),
    "som32": replace(BASE, som=SomConfig(rows=32, cols=32)),
    "som1epoch": replace(BASE, som=SomConfig(epochs=1)),
    "noshrink": replace(BASE, shrinkage=0.0),
    "shrink64": replace(BASE, shrinkage=64.0),
    "shrink256": replace(BASE, shrinkage=256.0),
    "shrink1024": replace(BASE, shrinkage=1024.0),
    "shrink4096": replace(BASE, shrinkage=4096.0),
    "shrink16k": replace(BASE, shrinkage=16384.0),
    "pooled": replace(BASE, shrinkage=1e9),
    "shrink4096-eps1": replace(BASE, shrinkage=4096.0, eps=1.0),
    "eps1": replace(BASE, eps=1.0),
    "padim": replace(BASE, method="padim"),
    "padim-subset": replace(BASE, method="padim", projection="subset"),
    "sigma0": replace(BASE, smoothing_sigma=0.0),
    "lite1": replace(BASE, backbone="efficientnet-lite1"),
    "lite2": replace(BASE, backbone="efficientnet-lite2"),
    "r01": replace(BASE, som=SomConfig(radius_end=0.1)),
    "in256": replace(BASE, input=InputSpec(256, 256)),
}


def run(name: str, config: FitConfig, category_name: str, data_root: Path) -> dict:
    category = load_category(data_root, category_name)
    with tempfile.TemporaryDirectory() as tmp:
        info = fit_model(category, config, Path(tmp), progress=False)
        export_model(Path(tmp))
        ts = load_test_set(category, config.input)
        with OrtScorer(Path(tmp) / "model.onnx", config.input.height, config.input.width) as scorer:
            scores, maps, ms = score_timed(scorer, ts.frames)
    m = compute_metrics(ts, scores, maps)
    return {"variant": name, "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"], "pro": m["pro"],
            "fit_seconds": info["fit_seconds"], "model_bytes": info["model_bytes"], "ort_ms": round(ms, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=["default", "padim"], choices=sorted(VARIANTS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    print(f"{'variant':<14}{'img AUROC':>10}{'pix AUROC':>10}{'PRO':>8}{'fit s':>8}{'MB':>7}{'ORT ms':>9}", flush=True)
    for name in args.variants:
        r = run(name, VARIANTS[name], args.category, args.data_root)
        rows.append(r)
        print(f"{name:<14}{r['image_auroc']:>10.4f}{r['pixel_auroc']:>10.4f}{r['pro']:>8.4f}"
              f"{r['fit_seconds']:>8.1f}{r['model_bytes'] / 1e6:>7.1f}{r['ort_ms']:>9.1f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
