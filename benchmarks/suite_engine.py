"""The suite's measuring engine: every candidate setting of one category scored on features extracted once.

A setting is (features, head, map): the features are the backbone and input size (extracted once per
category), the head is what turns a patch's features into a distance (method, covariance shrinkage,
top-k, per-position standardisation; the SOM is trained once per features and shared), the map is
how patch distances become the image score (smoothing sigma, share of hottest pixels). Every setting
is scored with the library's own modules (fit.train_map/som_arrays, model.SomadNet.score_features),
so the numbers are those of `fit` + `export` (graph parity torch <-> ONNX Runtime is tested). Each
setting also gets a threshold from the held-out good images by every rule, and its escapes and false
rejects on the test set.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_somad import metrics, scoring
from edge_somad.config import FitConfig, InputSpec
from edge_somad.data import Category, read_image
from edge_somad.evaluate import TestSet, load_test_set
from edge_somad.fit import extract, fit_arrays, load_frames, prepare, som_arrays, train_map, with_position_norm
from edge_somad.model import SomadNet

# The input's short side; the long side follows the part's aspect (letterbox, never squashed), as a
# user would pick --height/--width for a 1250x500 frame.
SHORT_SIDE = 224
MAX_ASPECT = 2.5


@dataclass(frozen=True)
class FeatureKey:
    backbone: str = "efficientnet-lite0"
    short: int = SHORT_SIDE
    # False: a square short x short input, the part letterboxed into it (fewer pixels on a long part).
    aspect: bool = True

    @property
    def name(self) -> str:
        return f"{self.backbone.replace('efficientnet-', '')}@{self.short}" + ("" if self.aspect else "sq")


@dataclass(frozen=True)
class HeadVariant:
    method: str = "somad"
    shrinkage: float = 256.0
    topk: int = FitConfig.topk
    score_norm: str = "none"
    search_share: float = FitConfig.search_share

    @property
    def name(self) -> str:
        if self.method == "padim":
            return "padim" + ("+z" if self.score_norm == "zscore" else "")
        search = "" if self.search_share == 1.0 else f" a{self.search_share:g}"  # share of the axes searched
        return f"somad s{self.shrinkage:g} k{self.topk}{search}" + ("+z" if self.score_norm == "zscore" else "")


@dataclass(frozen=True)
class MapVariant:
    sigma: float = 4.0
    top: float = 0.01

    @property
    def name(self) -> str:
        return f"sig{self.sigma:g} top{self.top:g}"


@dataclass(frozen=True)
class Setting:
    features: FeatureKey
    head: HeadVariant
    map: MapVariant

    @property
    def name(self) -> str:
        return f"{self.features.name} | {self.head.name} | {self.map.name}"

    def config(self, spec: InputSpec) -> FitConfig:
        return dataclasses.replace(FitConfig(), backbone=self.features.backbone, input=spec, method=self.head.method,
                                   shrinkage=self.head.shrinkage, topk=self.head.topk,
                                   search_share=self.head.search_share, score_norm=self.head.score_norm,
                                   smoothing_sigma=self.map.sigma,
                                   image_score_top=self.map.top)


def input_spec(category: Category, short: int = SHORT_SIDE, aspect: bool = True) -> InputSpec:
    """Model input for a category: `short` on the short side, the long side by the frames' aspect
    (capped at MAX_ASPECT), both multiples of 16, letterboxed; aspect=False: short x short."""
    if not aspect:
        return InputSpec(short, short)
    h, w = read_image(category.train[0]).shape[:2]
    aspect = min(MAX_ASPECT, max(h, w) / min(h, w))
    long = int(round(short * aspect / 16) * 16) if aspect >= 1.25 else short
    return InputSpec(long, short) if h > w else InputSpec(short, long)


@dataclass
class Scored:
    """One category under one features key: what every head/map variant needs."""

    category: Category
    key: FeatureKey
    spec: InputSpec
    test: TestSet
    hold_feats: torch.Tensor
    test_feats: torch.Tensor
    prep: Any  # fit.Prepared
    extract_seconds: float


def load_features(category: Category, key: FeatureKey, weights: str | None = None) -> Scored:
    t0 = time.perf_counter()
    spec = input_spec(category, key.short, key.aspect)
    base = dataclasses.replace(FitConfig(), backbone=key.backbone, input=spec)
    prep = prepare(category, base, weights, "cpu", progress=False)
    hold = extract(prep.extractor, load_frames(prep.hold_paths, base), prep.device, progress=False)
    test = load_test_set(category, spec)
    test_feats = extract(prep.extractor, test.frames, prep.device, progress=False)
    return Scored(category, key, spec, test, hold, test_feats, prep, time.perf_counter() - t0)


def head_distances(scored: Scored, head: HeadVariant, trained: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Patch distances (n, N) of the held-out and test images under one head; fit seconds of the head."""
    t0 = time.perf_counter()
    config = Setting(scored.key, head, MapVariant()).config(scored.spec)
    feats = scored.prep.feats
    if head.method == "somad":
        arrays, _ = som_arrays(feats, trained, config, scored.prep.projection)
        arrays = with_position_norm(arrays, config, feats)
    else:
        arrays, _ = fit_arrays(scored.prep, config, progress=False)
    net = SomadNet(scored.prep.extractor, arrays, config).eval()
    net.head.grouped = True  # same distances, eager kernel (tests/test_scoring.py)
    fit_s = time.perf_counter() - t0
    with torch.inference_mode():
        hold = torch.cat([net.head(scored.hold_feats[i : i + 8]) for i in range(0, len(scored.hold_feats), 8)])
        test = torch.cat([net.head(scored.test_feats[i : i + 8]) for i in range(0, len(scored.test_feats), 8)])
    return hold, test, fit_s


def map_scores(scored: Scored, dist: torch.Tensor, variant: MapVariant) -> tuple[np.ndarray, np.ndarray]:
    """(scores (n,) float64, maps (n, H, W) float32) of patch distances under one map variant."""
    grid = scored.prep.extractor.grid
    rows_op, cols_op = scoring.smoothing_operators(grid, (scored.spec.height, scored.spec.width), variant.sigma)
    k = scoring.image_score_pixels(scored.spec.height, scored.spec.width, variant.top)
    scores, maps = [], []
    with torch.inference_mode():
        for i in range(0, len(dist), 16):
            amap = scoring.smooth_and_upsample(dist[i : i + 16], grid, rows_op, cols_op)
            maps.append(amap.numpy())
            scores.append(scoring.image_scores(amap, k).numpy())
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps)


def test_metrics(ts: TestSet, scores: np.ndarray, maps: np.ndarray, pixel: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"image_auroc": metrics.image_auroc(ts.labels, scores), "pixel_auroc": None, "pro": None}
    if pixel and ts.masks is not None:
        out["pixel_auroc"] = metrics.pixel_auroc(ts.masks, maps, ts.valid)
        out["pro"] = metrics.pro_score(ts.masks, maps, valid=ts.valid)
    return out


def score_category(scored: Scored, heads: list[HeadVariant], maps: list[MapVariant],
                   pixel_for: Callable[[HeadVariant, MapVariant], bool],
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per (head, map) variant: test metrics, and the held-out and test scores (thresholds are
    applied by the caller, so a new rule needs no re-scoring)."""
    rows = []
    trained = None
    som_s = 0.0
    if any(h.method == "somad" for h in heads):
        t0 = time.perf_counter()
        trained = train_map(scored.prep.feats, Setting(scored.key, HeadVariant(), MapVariant()).config(scored.spec),
                            scored.prep.extractor.grid)
        som_s = time.perf_counter() - t0
    for head in heads:
        hold_d, test_d, fit_s = head_distances(scored, head, trained)
        for mv in maps:
            hold_s, _ = map_scores(scored, hold_d, mv)
            test_s, test_m = map_scores(scored, test_d, mv)
            row = {"category": scored.category.name, "features": scored.key.name,
                   "input": f"{scored.spec.height}x{scored.spec.width}", "head": head.name,
                   "map": mv.name, "n_holdout": len(hold_s), "n_test": len(test_s),
                   "fit_seconds": scored.extract_seconds + fit_s + (som_s if head.method == "somad" else 0.0),
                   **test_metrics(scored.test, test_s, test_m, pixel_for(head, mv)),
                   "hold_scores": hold_s.tolist(), "test_scores": test_s.tolist(),
                   "test_labels": scored.test.labels.tolist()}
            rows.append(row)
            log(f"  {scored.category.name:16s} {head.name:22s} {mv.name:16s} img {row['image_auroc']:.4f}"
                + (f" pro {row['pro']:.4f}" if row["pro"] is not None else ""))
    return rows


def category_rows(root: Path, name: str, key: FeatureKey, heads: list[HeadVariant], maps: list[MapVariant],
                  pixel_for: Callable[[HeadVariant, MapVariant], bool],
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    from edge_somad.data import load_category

    scored = load_features(load_category(root, name), key)
    log(f"{name}: {scored.spec.height}x{scored.spec.width}, {len(scored.prep.fit_paths)} fit / "
        f"{len(scored.hold_feats)} held out / {len(scored.test_feats)} test, features {scored.extract_seconds:.0f} s")
    return score_category(scored, heads, maps, pixel_for, log)
