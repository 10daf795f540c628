"""fit --method auto: pick SOMAD or PaDiM per category by a self-check on synthetic defects.

Users fit from good parts only, so the choice cannot look at real defects. Each candidate is fitted
on the same features (extracted once) and scores the held-out good images and synthetic defects
pasted into them (calibration/selfcheck.py); the highest synthetic AUROC wins, ties go to the
earlier candidate (SOMAD). On the development suite this picked the method with the best real
image AUROC on every category where the methods differed (docs/results.md, "Development suite").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_somad.artifacts import FittedArrays
from edge_somad.calibration.selfcheck import MIN_PER_KIND, detectability, synthetic_defects
from edge_somad.config import FitConfig
from edge_somad.data import Category
from edge_somad.errors import ConfigError
from edge_somad.fit import Prepared, extract, fit_arrays, load_frames, prepare, split_train, write_model
from edge_somad.model import SomadNet


@dataclass(frozen=True)
class Candidate:
    name: str
    method: str
    score_norm: str

    def config(self, base: FitConfig) -> FitConfig:
        return dataclasses.replace(base, method=self.method, score_norm=self.score_norm)


# The few knobs that mattered on the suite: the method, and per-position standardisation, which
# helped PaDiM (mean image AUROC 0.895 -> 0.946) but not SOMAD.
CANDIDATES = (Candidate("somad", "somad", "none"), Candidate("padim+zscore", "padim", "zscore"),
              Candidate("padim", "padim", "none"))
# Held-out images the selection pastes into: every candidate scores them all in eager torch, so a
# cap keeps `auto` inside the fit budget (560x224, 231 images: 244 s with all 58 held-out images).
MAX_SELECTION_IMAGES = 24


def _scores(net: SomadNet, feats: torch.Tensor, batch: int = 8) -> np.ndarray:
    with torch.inference_mode():
        out = [net.score_features(feats[i : i + batch])[1] for i in range(0, len(feats), batch)]
    return torch.cat(out).cpu().numpy().astype(np.float64)


def self_check_features(prep: Prepared, config: FitConfig, progress: bool) -> tuple[torch.Tensor, int, list[str]]:
    """Features of the held-out good frames followed by their synthetic defects; (feats, n_good, kinds)."""
    paths = prep.hold_paths
    if len(paths) > MAX_SELECTION_IMAGES:
        pick = np.random.default_rng(config.seed).choice(len(paths), MAX_SELECTION_IMAGES, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    good = load_frames(paths, config)
    per_kind = max(1, math.ceil(MIN_PER_KIND / len(good)))
    bad, kinds = synthetic_defects(good, per_kind, config.input.pad_value, seed=config.seed)
    feats = extract(prep.extractor, np.concatenate([good, bad]), prep.device, progress=progress)
    return feats, len(good), kinds


def fit_auto(category: Category, base: FitConfig, out_dir: Path, weights: str | None = None,
             device: str = "auto", progress: bool = True,
             candidates: tuple[Candidate, ...] = CANDIDATES) -> dict[str, Any]:
    """Fit every candidate on shared features, keep the one the self-check ranks first."""
    if not split_train(category.train, base.holdout_fraction, base.seed)[1]:
        raise ConfigError(f"--method auto needs held-out good images to run its self-check; {category.name} has "
                          f"{len(category.train)} train images and holdout_fraction={base.holdout_fraction}. "
                          "Add good images or pick --method somad|padim.")
    prep = prepare(category, base, weights, device, progress)
    feats, n_good, kinds = self_check_features(prep, base, progress)
    best: tuple[float, Candidate, FittedArrays, dict[str, Any]] | None = None
    table = []
    for cand in candidates:
        config = cand.config(base)
        arrays, info = fit_arrays(prep, config, progress)
        net = SomadNet(prep.extractor, arrays, config).to(prep.device).eval()
        scores = _scores(net, feats)
        # Only the synthetic AUROC ranks candidates; detectability's threshold argument (here the max
        # good score) feeds its escape rate, which the selection does not use.
        report = detectability(scores[:n_good], scores[n_good:], kinds, float(scores[:n_good].max()))
        table.append({"candidate": cand.name, "method": cand.method, "score_norm": cand.score_norm,
                      "synthetic_auroc": report["synthetic_auroc"]})
        if best is None or report["synthetic_auroc"] > best[0]:
            best = (report["synthetic_auroc"], cand, arrays, info)
    assert best is not None  # candidates is never empty
    _, chosen, arrays, info = best
    selection = {"rule": "highest synthetic AUROC on held-out good images (ties: first candidate)",
                 "n_good": n_good, "n_synthetic": len(kinds), "candidates": table, "chosen": chosen.name}
    return write_model(category, chosen.config(base), prep, arrays, {**info, "selection": selection}, out_dir)
