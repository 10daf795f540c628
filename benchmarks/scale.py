"""Cost against pixel count: fit seconds, ORT latency and model size at 224x224 and at a tall input.

The SOM's node count is capped (SomConfig.max_nodes) and its epochs sample patches, so every cost
should grow about linearly with the pixel count. This fits the same training images at each
geometry (default model otherwise), exports, and times the exported graph with `edge-somad bench`'s
own timing loop (ONNX Runtime, batch 1). Usage:

    python benchmarks/scale.py --root ~/.cache/edge-somad/suite --category juice_bottle \
        --max-train 231 --sizes 224x224 560x224 [--method somad|padim|auto] --json runs/scale.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from edge_somad.bench.scorers import bench_scorers
from edge_somad.config import FitConfig, InputSpec
from edge_somad.data import load_category
from edge_somad.export.exporter import export_model
from edge_somad.fit import fit_model
from edge_somad.select import fit_auto


def run(root: Path, category: str, max_train: int, height: int, width: int, iters: int, method: str) -> dict:
    cat = load_category(root, category)
    config = FitConfig(method="somad" if method == "auto" else method, input=InputSpec(height, width, "letterbox"))
    # max_train images are fitted; the 10 % hold-out comes on top, as in a user's folder of n images.
    n = min(len(cat.train), round(max_train / (1 - config.holdout_fraction)))
    cat = dataclasses.replace(cat, train=cat.train[:n])
    with tempfile.TemporaryDirectory() as tmp:
        # auto = what `edge-somad fit` does by default: three candidates and a self-check on top.
        fit = fit_auto if method == "auto" else fit_model
        info = fit(cat, config, Path(tmp), progress=False)
        export_model(Path(tmp))
        (row,) = bench_scorers(Path(tmp), ["onnxruntime"], "fp32", [1], iters, warmup=5)
        onnx_mb = (Path(tmp) / "model.onnx").stat().st_size / 1e6
    return {"size": f"{height}x{width}", "method": info.get("selection", {}).get("chosen", method),
            "feature_grid": info["feature_grid"], "som_grid": info.get("som_grid") or ["-"],
            "n_train_images": info["n_train_images"], "fit_seconds": info["fit_seconds"],
            "p50_ms": row["latency_ms_p50"], "p99_ms": row["latency_ms_p99"], "onnx_mb": round(onnx_mb, 1),
            "arrays_mb": round(info["model_bytes"] / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/edge-somad/suite")
    ap.add_argument("--category", default="juice_bottle")
    ap.add_argument("--max-train", type=int, default=231)
    ap.add_argument("--sizes", nargs="+", default=["224x224", "560x224"])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--method", default="somad", choices=["somad", "padim", "auto"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    head = (f"{'size':>9}{'grid':>10}{'SOM':>9}{'train':>7}{'fit s':>8}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'ONNX MB':>9}{'npz MB':>8}")
    print(head, flush=True)
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        r = run(args.root, args.category, args.max_train, h, w, args.iters, args.method)
        rows.append(r)
        print(f"{r['size']:>9}{'x'.join(map(str, r['feature_grid'])):>10}{'x'.join(map(str, r['som_grid'])):>9}"
              f"{r['n_train_images']:>7}{r['fit_seconds']:>8.0f}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
              f"{r['onnx_mb']:>9.1f}{r['arrays_mb']:>8.1f}", flush=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['size']} vs {base['size']}: p50 x{r['p50_ms'] / base['p50_ms']:.2f}, "
              f"fit x{r['fit_seconds'] / base['fit_seconds']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
