"""Issue targets on a real MVTec category, printed as a table (a benchmark, not a timed test).

Fits the default configuration (or reuses --model), exports the fused graph, evaluates it with
ONNX Runtime on the CPU, and prints each measured value beside its target:
    python benchmarks/targets.py --data-root ../shared/data/mvtec_ad --category bottle --model models/bottle
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_somad.config import FitConfig
from edge_somad.data import load_category
from edge_somad.evaluate import evaluate
from edge_somad.export.exporter import export_model
from edge_somad.fit import fit_model
from edge_somad.runtime.scorers.ort_scorer import OrtScorer

# (key, target, higher_is_better)
TARGETS = (
    ("image_auroc", 0.995, True), ("pixel_auroc", 0.980, True), ("pro", 0.930, True),
    ("fit_seconds", 180.0, False), ("model_bytes", 64 * 2**20, False),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--model", type=Path, default=Path("models/bottle"))
    ap.add_argument("--refit", action="store_true", help="fit even if --model already holds a model")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    category = load_category(args.data_root, args.category)
    config = FitConfig()
    if args.refit or not (args.model / "config.json").is_file():
        fit_model(category, config, args.model)
    export_model(args.model)
    with OrtScorer(args.model / "model.onnx", config.input.height, config.input.width) as scorer:
        report = evaluate(args.model, category, scorer, config.input, None, None, None)
    print(f"{'metric':<14}{'measured':>14}{'target':>14}  status")
    for key, target, higher in TARGETS:
        value = report[key]
        ok = value >= target if higher else value <= target
        print(f"{key:<14}{value:>14.4f}{target:>14.4f}  {'met' if ok else 'MISSED'}")
    print(f"{'ms/image ORT':<14}{report['ms_per_image']:>14.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
