"""The development suite: fit, export, calibrate and evaluate every category, SOMAD beside PaDiM.

Each category goes through the path a user takes (fit -> export -> threshold from the held-out good
images -> evaluate the exported graph with ONNX Runtime), once per method, and one table prints
image AUROC, pixel AUROC and PRO (image content only; "-" without masks), escapes and false rejects
at the calibrated threshold, the synthetic self-check, fit seconds, ms per frame and model MB, with
the mean over categories. Defaults are chosen on that mean, never on one category. Usage:

    python benchmarks/suite_user_path.py --root ~/.cache/edge-somad/suite --out runs/suite [--categories ...]
        [--methods somad padim auto] [--set score_norm=none] --json runs/suite/suite.json

Categories come from benchmarks/suite_data.py (see benchmarks/SUITE.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite_engine import input_spec
from edge_somad.calibration.threshold import confusion_at_threshold
from edge_somad.config import FitConfig
from edge_somad.data import load_category
from edge_somad.evaluate import evaluate
from edge_somad.export.exporter import export_model
from edge_somad.fit import fit_model
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.select import fit_auto
from edge_somad.workflows import calibrate_holdout

COLUMNS = (("image_auroc", "img AUROC", "{:.4f}"), ("pixel_auroc", "pix AUROC", "{:.4f}"), ("pro", "PRO", "{:.4f}"),
           ("escape_rate", "escapes", "{:.1%}"), ("frr", "FRR", "{:.1%}"), ("synthetic_escape", "synth esc", "{:.1%}"),
           ("fit_seconds", "fit s", "{:.0f}"), ("ms_per_image", "ms/frame", "{:.1f}"), ("model_mb", "MB", "{:.1f}"))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """--set key=value for top-level FitConfig fields (numbers parsed, everything else a string)."""
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields or key in ("input", "som"):
            raise SystemExit(f"--set {item!r}: expected key=value with key one of {sorted(fields - {'input', 'som'})}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def run_one(root: Path, category: str, config: FitConfig, model_dir: Path, auto: bool = False,
            aspect: bool = False) -> dict[str, Any]:
    cat = load_category(root, category)
    if aspect:  # the input a user would pick for the part's aspect (suite_engine.input_spec); else the default
        config = dataclasses.replace(config, input=input_spec(cat, config.input.height))
    # auto: the CLI's default, SOMAD or PaDiM picked by the synthetic self-check (edge_somad/select.py).
    fit = fit_auto if auto else fit_model
    info = fit(cat, config, model_dir, progress=False)
    export_model(model_dir)
    manifest = calibrate_holdout(model_dir, target_frr=0.005)
    spec = config.input
    with OrtScorer(model_dir / "model.onnx", spec.height, spec.width) as scorer:
        report = evaluate(model_dir, cat, scorer, spec, manifest.threshold, model_dir / "report.json", None,
                          confusion=confusion_at_threshold, pixel_threshold=manifest.pixel_threshold_for("fp32"),
                          min_area_px=manifest.calibration.min_defect_area_px)
    at = report["at_threshold"]
    return {
        "category": category, "method": "auto" if auto else config.method,
        "chosen": info["selection"]["chosen"] if auto else None, "image_auroc": report["image_auroc"],
        "pixel_auroc": report["pixel_auroc"], "pro": report["pro"],
        "escape_rate": at["escape_rate"], "frr": at["frr"],
        "synthetic_escape": manifest.calibration.details["self_check"]["synthetic_escape_rate"],
        "synthetic_auroc": manifest.calibration.details["self_check"]["synthetic_auroc"],
        "fit_seconds": info["fit_seconds"], "ms_per_image": report["ms_per_image"],
        "model_mb": (model_dir / "model.onnx").stat().st_size / 1e6, "threshold": manifest.threshold,
        "n_holdout": manifest.calibration.n_images, "box_iou": report.get("box_iou"),
        "input": f"{spec.height}x{spec.width}",
    }


def fmt_row(label: str, row: dict[str, Any]) -> str:
    cells = [label.ljust(36)]
    for key, _, f in COLUMNS:
        v = row.get(key)
        cells.append(("-" if v is None else f.format(v)).rjust(10))
    return "".join(cells)


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, _, _ in COLUMNS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/edge-somad/suite")
    ap.add_argument("--out", type=Path, default=Path("runs/suite-user"))
    ap.add_argument("--categories", nargs="+")
    ap.add_argument("--methods", nargs="+", default=["somad", "padim"], choices=["somad", "padim", "auto"])
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="FitConfig field=value")
    ap.add_argument("--aspect", action="store_true",
                    help="input sized to the part's aspect (as a user may pick); default: fit's default input")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cats = args.categories or sorted(p.name for p in args.root.iterdir() if (p / "train").is_dir())
    base = dataclasses.replace(FitConfig(), **parse_overrides(args.overrides))
    print("".join(["category / method".ljust(36)] + [h.rjust(10) for _, h, _ in COLUMNS]), flush=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for method in args.methods:
        config = dataclasses.replace(base, method="somad" if method == "auto" else method)
        for category in cats:
            done = args.out / f"{category}_{method}.json"
            if done.is_file():  # measured already (delete the file to measure again)
                row = json.loads(done.read_text())
            else:
                row = run_one(args.root, category, config, args.out / f"{category}_{method}", auto=method == "auto",
                              aspect=args.aspect)
                done.write_text(json.dumps(row) + "\n")
            rows.append(row)
            label = f"{category} / {method}" + (f" ({row['chosen']})" if row["chosen"] else "")
            print(fmt_row(label, row), flush=True)
    for method in args.methods:
        print(fmt_row(f"MEAN / {method}", mean_row([r for r in rows if r["method"] == method])), flush=True)
    print(f"({len(cats)} categories, {time.perf_counter() - t0:.0f} s; config {json.dumps(base.to_dict())})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": base.to_dict(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
