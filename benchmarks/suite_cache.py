"""Cache one category's extracted features and trained SOM on disk, so heads can be compared without
re-extracting (extraction and the SOM are most of a category's minutes on a 2-core machine).

    python -m benchmarks.suite_cache --root ~/.cache/edge-somad/suite --cache runs/suite-cache [--categories ...]

The cache holds what benchmarks/suite_engine.py computes for the shipped features key (lite0, 224x224,
letterboxed): the fit / held-out / test features, the trained map and each training patch's node, the
test labels, masks and content masks. Files live under runs/ (ignored by git); delete one to rebuild it.
A cache entry is only valid for the code that wrote it: the `code` field records the features key.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.suite_engine import FeatureKey, HeadVariant, MapVariant, Scored, Setting, load_features
from edge_somad.evaluate import TestSet
from edge_somad.fit import Prepared, TrainedMap, train_map
from edge_somad.som import SomResult

SHIPPED_KEY = FeatureKey(aspect=False)  # fit's default input: 224x224, a long part letterboxed


@dataclass
class Cached:
    scored: Scored
    trained: TrainedMap


def cache_path(cache: Path, category: str, key: FeatureKey = SHIPPED_KEY) -> Path:
    return cache / f"{category}__{key.name.replace('@', '_')}.pt"


def build(root: Path, category: str, cache: Path, key: FeatureKey = SHIPPED_KEY) -> Path:
    """Extract, train the map, and write the cache file (returns its path)."""
    from edge_somad.data import load_category

    path = cache_path(cache, category, key)
    t0 = time.perf_counter()
    scored = load_features(load_category(root, category), key)
    config = Setting(key, HeadVariant(), MapVariant()).config(scored.spec)
    trained = train_map(scored.prep.feats, config, scored.prep.extractor.grid)
    ts = scored.test
    payload: dict[str, Any] = {
        "code": key.name, "category": category, "spec": [scored.spec.height, scored.spec.width],
        "fit_paths": [str(p) for p in scored.prep.fit_paths], "hold_paths": [str(p) for p in scored.prep.hold_paths],
        "feats": scored.prep.feats, "hold_feats": scored.hold_feats, "test_feats": scored.test_feats,
        "projection": torch.from_numpy(scored.prep.projection), "grid": list(scored.prep.extractor.grid),
        "nodes": trained.som.nodes, "som_shape": [trained.som.rows, trained.som.cols],
        "qe": trained.som.quantisation_error, "assign": trained.assign,
        "labels": torch.from_numpy(ts.labels), "valid": torch.from_numpy(ts.valid),
        "masks": None if ts.masks is None else torch.from_numpy(ts.masks),
        "extract_seconds": scored.extract_seconds, "som_seconds": time.perf_counter() - t0 - scored.extract_seconds,
    }
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


class _Grid:
    """The part of a FeatureExtractor the heads read (its grid); the backbone is not needed on cached features."""

    def __init__(self, grid: tuple[int, int]) -> None:
        self.grid = grid


def load(root: Path, category: str, cache: Path, key: FeatureKey = SHIPPED_KEY) -> Cached:
    """The cached category (built first when missing)."""
    from edge_somad.config import InputSpec
    from edge_somad.data import load_category

    path = cache_path(cache, category, key)
    deadline = time.monotonic() + 3600.0
    while path.with_suffix(".tmp").exists() and not path.is_file() and time.monotonic() < deadline:
        time.sleep(5.0)  # another process is writing this entry (a parallel cache run): wait for it
    if not path.is_file():
        build(root, category, cache, key)
    p = torch.load(path, weights_only=True)
    if p["code"] != key.name:
        raise ValueError(f"{path} holds features {p['code']!r}, expected {key.name!r}: delete it to rebuild")
    cat = load_category(root, category)
    spec = InputSpec(*p["spec"])
    grid = tuple(p["grid"])
    prep = Prepared([Path(x) for x in p["fit_paths"]], [Path(x) for x in p["hold_paths"]], _Grid(grid),  # type: ignore[arg-type]
                    p["feats"], p["projection"].numpy(), {}, torch.device("cpu"), 0.0)
    masks = None if p["masks"] is None else p["masks"].numpy()
    ts = TestSet(tuple(cat.test), np.zeros((0,), np.uint8), masks, p["labels"].numpy(), p["valid"].numpy())
    scored = Scored(cat, key, spec, ts, p["hold_feats"], p["test_feats"], prep, p["extract_seconds"])
    som = SomResult(p["nodes"], p["som_shape"][0], p["som_shape"][1], p["qe"])
    return Cached(scored, TrainedMap(som, p["assign"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/edge-somad/suite")
    ap.add_argument("--cache", type=Path, default=Path("runs/suite-cache"))
    ap.add_argument("--categories", nargs="+")
    args = ap.parse_args()
    cats = args.categories or sorted(p.name for p in args.root.iterdir() if (p / "train").is_dir())
    for cat in cats:
        if cache_path(args.cache, cat).is_file():
            continue
        t0 = time.perf_counter()
        path = build(args.root, cat, args.cache)
        print(f"{cat}: {path} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
