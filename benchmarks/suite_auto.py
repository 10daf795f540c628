"""What `fit --method auto` chooses on each suite category, with the product's own fit_auto.

    python benchmarks/suite_auto.py --root ~/.cache/edge-somad/suite --out runs/suite-grid

Writes <out>/auto/<category>.json (the selection table fit_auto records). `benchmarks/suite.py` then
reads the measured row of the chosen candidate, so `auto` is judged on the same test numbers as the
forced methods, and checks that it never ends below forced SOMAD at pixel level.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.suite_engine import input_spec
from edge_somad.config import FitConfig
from edge_somad.data import load_category
from edge_somad.select import fit_auto

# fit_auto's candidate names -> the head names of benchmarks/suite_engine.HeadVariant.
HEAD_OF = {"somad": "somad s256 k4", "padim": "padim", "padim+zscore": "padim+z"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/edge-somad/suite")
    ap.add_argument("--out", type=Path, default=Path("runs/suite-grid"))
    ap.add_argument("--categories", nargs="+")
    args = ap.parse_args()
    cats = args.categories or sorted(p.name for p in args.root.iterdir() if (p / "train").is_dir())
    (args.out / "auto").mkdir(parents=True, exist_ok=True)
    for name in cats:
        path = args.out / "auto" / f"{name}.json"
        if path.is_file():
            continue
        cat = load_category(args.root, name)
        config = FitConfig(input=input_spec(cat))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            info = fit_auto(cat, config, Path(tmp) / name, device="cpu", progress=False)
        sel = info["selection"]
        path.write_text(json.dumps({**sel, "head": HEAD_OF[sel["chosen"]], "fit_seconds": time.perf_counter() - t0},
                                   indent=1) + "\n")
        print(f"{name}: auto chose {sel['chosen']} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
