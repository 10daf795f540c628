"""Measure the suite's candidate settings per category and keep the rows (one JSON per category and features).

    python benchmarks/suite_grid.py --root ~/.cache/edge-somad/suite --out runs/suite-grid [--features lite0@224]

A category already measured under a features key is skipped (delete its JSON to measure again), so the
grid grows as categories are added. `benchmarks/suite.py` reads these rows and prints the in-sample
and leave-one-category-out tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.suite_engine import FeatureKey, HeadVariant, MapVariant, category_rows, input_spec

# The shipped default first: a setting replaces it only with a strictly better mean.
# Sized for a 2-core machine (about 3-10 minutes a category): the knobs the shipped defaults were
# chosen on, each against one alternative, and the PaDiM baseline with and without standardisation.
HEADS = [HeadVariant(), HeadVariant(shrinkage=1024.0), HeadVariant(method="padim"),
         HeadVariant(method="padim", score_norm="zscore")]
MAPS = [MapVariant(), MapVariant(top=0.0), MapVariant(sigma=2.0)]
FEATURES = {k.name: k for k in (FeatureKey(), FeatureKey(aspect=False), FeatureKey("efficientnet-lite1"),
                                FeatureKey("efficientnet-lite1", aspect=False),
                                FeatureKey("efficientnet-lite2"), FeatureKey(short=320))}


def is_square(root: Path, category: str, short: int) -> bool:
    from edge_somad.data import load_category

    spec = input_spec(load_category(root, category), short)
    return spec.height == spec.width


def rows_path(out: Path, category: str, key: FeatureKey) -> Path:
    return out / f"{category}__{key.name.replace('@', '_')}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/edge-somad/suite")
    ap.add_argument("--out", type=Path, default=Path("runs/suite-grid"))
    ap.add_argument("--categories", nargs="+")
    ap.add_argument("--features", nargs="+", default=["lite0@224"], choices=sorted(FEATURES))
    ap.add_argument("--heads", default="all", choices=["all", "default", "padim"],
                    help="'default': only the shipped head and map (e.g. for a backbone or size comparison); "
                    "'padim': only the PaDiM baseline (default map), kept in its own file")
    args = ap.parse_args()
    torch.manual_seed(0)
    cats = args.categories or sorted(p.name for p in args.root.iterdir() if (p / "train").is_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    heads, maps = {"all": (HEADS, MAPS), "default": (HEADS[:1], MAPS[:1]),
                   "padim": ([HeadVariant(method="padim")], MAPS[:1])}[args.heads]
    for fname in args.features:
        key = FEATURES[fname]
        for cat in cats:
            path = rows_path(args.out, cat, key)
            if args.heads == "padim":
                path = path.with_name(path.stem + "__padim.json")
            if path.is_file():
                continue
            same = rows_path(args.out, cat, FeatureKey(key.backbone, key.short))
            if not key.aspect and same.is_file() and is_square(args.root, cat, key.short):
                # A square part: the square input is the aspect one, already measured with every head.
                if args.heads != "padim":
                    rows = [{**r, "features": key.name} for r in json.loads(same.read_text())]
                    path.write_text(json.dumps(rows) + "\n")
                continue
            t0 = time.perf_counter()
            rows = category_rows(args.root, cat, key, heads, maps, pixel_for=lambda h, m: m == MapVariant())
            path.write_text(json.dumps(rows) + "\n")
            print(f"{cat} under {key.name}: {len(rows)} settings in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
