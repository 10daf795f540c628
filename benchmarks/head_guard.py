"""The accuracy guard for a cheaper head, in sample and leave one category out, on suite_head's rows.

    python -m benchmarks.head_guard --out runs/suite-head --baseline full --heads full:s0:k2 full:s32:k2 ...

A head passes the guard on a set of categories when, against the baseline on the same categories,
mean image AUROC and mean PRO (over the masked ones) drop by no more than --allow (0.003), and
bottle, when in the set, keeps image AUROC >= 0.995, pixel AUROC >= 0.980 and PRO >= 0.930.
--heads lists the candidates fastest first (as measured by benchmarks/peer.py): leave one out
chooses, per fold, the first candidate that passes on the other categories (the baseline when none
does; the two ELPV solar-cell sets are held out together, as in benchmarks/suite.py), and scores
the held-out category with that choice. A cheaper default is kept only when every fold chooses it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

BOTTLE_FLOOR = {"image_auroc": 0.995, "pixel_auroc": 0.980, "pro": 0.930}
FOLDS_TOGETHER = ("solar_cell_mono", "solar_cell_poly")

Rows = dict[str, dict[str, dict[str, Any]]]


def means(rows: Rows, head: str, cats: list[str]) -> tuple[float, float]:
    img = [rows[c][head]["image_auroc"] for c in cats]
    pro = [rows[c][head]["pro"] for c in cats if rows[c][head]["pro"] is not None]
    return float(np.mean(img)), float(np.mean(pro)) if pro else float("nan")


def passes(rows: Rows, head: str, baseline: str, cats: list[str], allow: float) -> bool:
    (img, pro), (img0, pro0) = means(rows, head, cats), means(rows, baseline, cats)
    if img0 - img > allow or (not np.isnan(pro0) and pro0 - pro > allow):
        return False
    return "bottle" not in cats or all(rows["bottle"][head][k] >= v for k, v in BOTTLE_FLOOR.items())


def folds(cats: list[str]) -> list[list[str]]:
    together = [c for c in FOLDS_TOGETHER if c in cats]
    return [[c] for c in cats if c not in together] + ([together] if together else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, nargs="+", default=[Path("runs/suite-head")],
                    help="suite_head --out folders (rows merged; a later folder adds heads)")
    ap.add_argument("--baseline", default="full")
    ap.add_argument("--heads", nargs="+", required=True, help="candidates, fastest first")
    ap.add_argument("--allow", type=float, default=0.003)
    args = ap.parse_args()
    rows: Rows = {}
    for folder in args.out:
        for path in sorted(folder.glob("*.json")):
            rows.setdefault(path.stem, {}).update(json.loads(path.read_text()))
    cats = sorted(rows)
    heads = [args.baseline, *args.heads]
    missing = [f"{c}:{h}" for c in cats for h in heads if h not in rows[c]]
    if missing:
        raise SystemExit(f"error: rows missing for {missing}; run benchmarks.suite_head for them first")
    img0, pro0 = means(rows, args.baseline, cats)
    print(f"{'head':14s} {'mean img':>9s} {'Δ':>8s} {'mean PRO':>9s} {'Δ':>8s}  "
          "bottle (img/pix/PRO)  magnetic_tile  guard")
    for h in heads:
        img, pro = means(rows, h, cats)
        b, mt = rows["bottle"][h], rows.get("magnetic_tile", {}).get(h)
        print(f"{h:14s} {img:9.4f} {img - img0:+8.4f} {pro:9.4f} {pro - pro0:+8.4f}  "
              f"{b['image_auroc']:.4f}/{b['pixel_auroc']:.4f}/{b['pro']:.4f}  "
              f"{'-' if mt is None else format(mt['image_auroc'], '.4f'):>13s}  "
              f"{'held' if passes(rows, h, args.baseline, cats, args.allow) else 'NOT held'}")
    print("\nleave one category out (choice: the fastest candidate that holds the guard on the other categories)")
    chosen: list[str] = []
    loo: dict[str, dict[str, Any]] = {}
    for held in folds(cats):
        rest = [c for c in cats if c not in held]
        pick = next((h for h in args.heads if passes(rows, h, args.baseline, rest, args.allow)), args.baseline)
        chosen.append(pick)
        for c in held:
            loo[c] = rows[c][pick]
        print(f"  {'+'.join(held):34s} -> {pick}")
    img = float(np.mean([loo[c]["image_auroc"] for c in cats]))
    pro = float(np.mean([loo[c]["pro"] for c in cats if loo[c]["pro"] is not None]))
    print(f"leave-one-out rows: mean image AUROC {img:.4f} ({img - img0:+.4f}), mean PRO {pro:.4f} ({pro - pro0:+.4f})")
    print("every fold chose " + chosen[0] if len(set(chosen)) == 1 else f"folds disagree: {sorted(set(chosen))}")


if __name__ == "__main__":
    main()
