"""SOMAD heads compared on the suite's 12 categories, on cached features (benchmarks/suite_cache.py).

    python -m benchmarks.suite_head --heads full lowrank:r16:s0:k4 lowrank:r8:s32:k4 [--categories ...]

A head is `full` (the per-node d x d whitening, Euclidean search: the shipped head) or
`lowrank:rR:sS:kK` (pooled whitening, rank-R + diagonal per node, search on the first S coordinates,
0 = all, K candidates; edge_somad/lowrank.py). Every head is scored on the same features and the same
trained SOM per category, with the shipped map (sigma 4, top 1 %), through model.Head and
suite_engine's metrics, so the differences are the head's alone. Rows go to --out/<category>.json
(one row per head, kept across runs; a head already measured is skipped) and the table prints
image AUROC per category, the mean over all categories and the mean PRO over the masked ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.suite_cache import Cached, load
from benchmarks.suite_engine import MapVariant, map_scores, test_metrics
from edge_somad.config import FitConfig
from edge_somad.fit import som_arrays
from edge_somad.model import Head


def head_config(name: str, base: FitConfig) -> FitConfig:
    """`full` or `lowrank:rR:sS:kK` -> the FitConfig with that head."""
    if name == "full":
        return dataclasses.replace(base, head="full")
    kind, *parts = name.split(":")
    if kind != "lowrank" or len(parts) != 3:
        raise SystemExit(f"error: head {name!r}: expected 'full' or 'lowrank:rR:sS:kK' (e.g. lowrank:r16:s32:k4)")
    values = {p[0]: int(p[1:]) for p in parts}
    share = values["s"] / base.d if values["s"] else 1.0  # sS: S of the d coordinates (s0: all)
    return dataclasses.replace(base, head="lowrank", head_rank=values["r"], search_share=share, topk=values["k"])


def score_head(cached: Cached, name: str) -> dict[str, Any]:
    scored = cached.scored
    config = head_config(name, dataclasses.replace(FitConfig(), input=scored.spec))
    t0 = time.perf_counter()
    arrays, _ = som_arrays(scored.prep.feats, cached.trained, config, scored.prep.projection)
    head = Head(arrays, config).eval()
    head.grouped = True  # the full head's eager kernel (same distances, tests/test_scoring.py)
    fit_s = time.perf_counter() - t0
    with torch.inference_mode():
        hold = torch.cat([head(scored.hold_feats[i : i + 8]) for i in range(0, len(scored.hold_feats), 8)])
        test = torch.cat([head(scored.test_feats[i : i + 8]) for i in range(0, len(scored.test_feats), 8)])
    hold_s, _ = map_scores(scored, hold, MapVariant())
    test_s, test_m = map_scores(scored, test, MapVariant())
    return {"category": scored.category.name, "head": name, "head_fit_seconds": round(fit_s, 2),
            **test_metrics(scored.test, test_s, test_m, pixel=True),
            "hold_scores": hold_s.tolist(), "test_scores": test_s.tolist()}


def table(rows: dict[str, dict[str, dict[str, Any]]], heads: list[str], cats: list[str]) -> str:
    lines = [f"{'category':16s}" + "".join(f"{h:>24s}" for h in heads) + "   (image AUROC / pixel AUROC / PRO)"]
    for c in cats:
        cells = []
        for h in heads:
            r = rows.get(c, {}).get(h)
            cells.append("-" if r is None else f"{r['image_auroc']:.4f}/{_f(r['pixel_auroc'])}/{_f(r['pro'])}")
        lines.append(f"{c:16s}" + "".join(f"{x:>24s}" for x in cells))
    for label, key in (("mean img AUROC", "image_auroc"), ("mean pix AUROC", "pixel_auroc"), ("mean PRO", "pro")):
        cells = []
        for h in heads:
            vals = [rows[c][h][key] for c in cats if h in rows.get(c, {})]
            vals = [v for v in vals if v is not None]
            done = sum(h in rows.get(c, {}) for c in cats)
            cells.append(f"{np.mean(vals):.4f} ({done}/{len(cats)})" if vals else "-")
        lines.append(f"{label:16s}" + "".join(f"{x:>24s}" for x in cells))
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/edge-somad/suite")
    ap.add_argument("--cache", type=Path, default=Path("runs/suite-cache"))
    ap.add_argument("--out", type=Path, default=Path("runs/suite-head"))
    ap.add_argument("--categories", nargs="+")
    ap.add_argument("--heads", nargs="+", default=["full", "lowrank:r8:s0:k4"])
    ap.add_argument("--no-measure", action="store_true", help="only print the rows already measured")
    args = ap.parse_args()
    for h in args.heads:
        head_config(h, FitConfig())  # a typo fails before any category is scored
    cats = args.categories or sorted(p.name for p in args.root.iterdir() if (p / "train").is_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for cat in cats:
        path = args.out / f"{cat}.json"
        rows[cat] = json.loads(path.read_text()) if path.is_file() else {}
        todo = [h for h in args.heads if h not in rows[cat]]
        if args.no_measure or not todo:
            continue
        cached = load(args.root, cat, args.cache)
        for h in todo:
            t0 = time.perf_counter()
            rows[cat][h] = score_head(cached, h)
            r = rows[cat][h]
            print(f"{cat:16s} {h:22s} img {r['image_auroc']:.4f} pro {_f(r['pro'])} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            path.write_text(json.dumps(rows[cat]) + "\n")
    print(table(rows, args.heads, cats))


if __name__ == "__main__":
    main()
