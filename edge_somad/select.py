"""fit --method auto: SOMAD, or PaDiM where a self-check on synthetic defects shows it is better.

Users fit from good parts only, so the choice cannot look at real defects. Each candidate is fitted
on the same features (extracted once) and scores the held-out good images and synthetic defects
pasted into them (calibration/synthetic.py), maps included. SOMAD, the first candidate, stays
unless another beats its synthetic image AUROC beyond the bootstrap uncertainty without ranking
the pasted pixels worse (edge_somad/selection_rule.py, docs/selection.md): a margin of noise once
picked a candidate whose maps had collapsed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_somad import selection_rule as rule
from edge_somad.calibration.synthetic import content_box, synthetic_defects
from edge_somad.config import FitConfig
from edge_somad.data import Category
from edge_somad.errors import ConfigError
from edge_somad.fit import Prepared, extract, fit_arrays, load_frames, prepare, split_train, write_model
from edge_somad.metrics import image_auroc, pixel_auroc, pro_score
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
# Synthetic defects of each kind in all (calibration/synthetic.py, six kinds: 72 frames), dealt over
# the selected frames: as many frames to score as three kinds on 24 frames were, whatever the holdout.
SELECTION_PER_KIND = 12
# Good pixels the pixel metrics sample (pixel_region).
MAX_GOOD_PIXELS = 2_000_000


def _score_maps(net: SomadNet, feats: torch.Tensor, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,) float64, maps (N, H, W) float32) of features extracted once."""
    scores, maps = [], []
    # On a CPU the node-grouped kernel gives the same distances several times faster (scoring.py).
    net.head.grouped = feats.device.type == "cpu"
    with torch.inference_mode():
        for i in range(0, len(feats), batch):
            amap, score = net.score_features(feats[i : i + batch])
            maps.append(amap.cpu().numpy())
            scores.append(score.cpu().numpy())
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps)


@dataclass(frozen=True)
class SelectionSet:
    """The frames every candidate scores: held-out goods, then synthetic defects pasted into them."""

    feats: torch.Tensor  # (n_good + n_bad, N, d)
    n_good: int
    kinds: list[str]
    origin: np.ndarray  # (n_bad,) the good frame each defect was pasted into
    masks: np.ndarray  # (n_good + n_bad, H, W) bool: defect pixels (none on the good frames)
    valid: np.ndarray  # (n_good + n_bad, H, W) bool: the pixels the pixel metrics count


def pixel_region(frames: np.ndarray, masks: np.ndarray, pad_value: int, seed: int) -> np.ndarray:
    """Pixels the pixel metrics count: inside the part, every defect pixel and a seeded sample of good ones.

    Sorting every good pixel of every candidate's maps would cost seconds per candidate at 560x224;
    MAX_GOOD_PIXELS drawn once (the same for every candidate) pin the good-pixel distribution far
    finer than the metrics are read.
    """
    valid = np.zeros(masks.shape, bool)
    for i, frame in enumerate(frames):
        box = content_box(frame, pad_value)
        valid[i, box.top:box.bottom, box.left:box.right] = True
    n_good_px = int((valid & ~masks).sum())
    if n_good_px > MAX_GOOD_PIXELS:
        valid &= masks | (np.random.default_rng(seed).random(masks.shape, np.float32) < MAX_GOOD_PIXELS / n_good_px)
    return valid


def selection_set(prep: Prepared, config: FitConfig, progress: bool) -> SelectionSet:
    """Up to MAX_SELECTION_IMAGES held-out good frames, SELECTION_PER_KIND defects of each kind pasted into them."""
    paths = prep.hold_paths
    if len(paths) > MAX_SELECTION_IMAGES:
        pick = np.random.default_rng(config.seed).choice(len(paths), MAX_SELECTION_IMAGES, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    good = load_frames(paths, config)
    pad = config.input.pad_value
    made = synthetic_defects(good, SELECTION_PER_KIND, pad, seed=config.seed, spread=True)
    feats = extract(prep.extractor, np.concatenate([good, made.frames]), prep.device, progress=progress)
    masks = np.concatenate([np.zeros((len(good), *good.shape[1:3]), bool), made.masks])
    valid = pixel_region(np.concatenate([good, good[made.origin]]), masks, pad, config.seed)
    return SelectionSet(feats, len(good), made.kinds, made.origin, masks, valid)


def evidence(name: str, data: SelectionSet, scores: np.ndarray, maps: np.ndarray) -> rule.Evidence:
    """One candidate's synthetic image AUROC, pixel AUROC and PRO."""
    labels = np.r_[np.zeros(data.n_good, int), np.ones(len(scores) - data.n_good, int)]
    return rule.Evidence(name, image_auroc(labels, scores), pixel_auroc(data.masks, maps, data.valid),
                    pro_score(data.masks, maps, valid=data.valid))


def fit_auto(category: Category, base: FitConfig, out_dir: Path, weights: str | None = None,
             device: str = "auto", progress: bool = True,
             candidates: tuple[Candidate, ...] = CANDIDATES) -> dict[str, Any]:
    """Fit every candidate on shared features; keep the first (SOMAD) unless another beats it beyond doubt."""
    if not split_train(category.train, base.holdout_fraction, base.seed)[1]:
        raise ConfigError(f"--method auto needs held-out good images to run its self-check; {category.name} has "
                          f"{len(category.train)} train images and holdout_fraction={base.holdout_fraction}. "
                          "Add good images or pick --method somad|padim.")
    prep = prepare(category, base, weights, device, progress)
    data = selection_set(prep, base, progress)
    if data.n_good < 2:
        raise ConfigError(f"--method auto needs at least 2 held-out good images for its bootstrap; {category.name} "
                          f"holds out {data.n_good}. Raise holdout_fraction, add good images or pick --method somad.")
    fitted, proof, good_scores, bad_scores = [], [], [], []
    for cand in candidates:
        config = cand.config(base)
        arrays, info = fit_arrays(prep, config, progress)
        scores, maps = _score_maps(SomadNet(prep.extractor, arrays, config).to(prep.device).eval(), data.feats)
        proof.append(evidence(cand.name, data, scores, maps))
        good_scores.append(scores[:data.n_good])
        bad_scores.append(scores[data.n_good:])
        fitted.append((arrays, info))
        del maps
    draws = rule.resample_draws(data.n_good, rule.N_RESAMPLES, base.seed)
    aurocs = rule.bootstrap_aurocs(np.stack(good_scores), np.stack(bad_scores), data.origin, draws)
    chosen, rows = rule.decide(proof, aurocs)
    for row, cand in zip(rows, candidates, strict=True):
        row.update(method=cand.method, score_norm=cand.score_norm)
    selection = {
        "rule": (f"keep {candidates[0].name} unless a candidate's synthetic image AUROC is higher with the "
                 f"one-sided {rule.LEVEL:.0%} lower bound of the margin > 0 (paired bootstrap, "
                 f"{rule.N_RESAMPLES} resamples of held-out frames with their defects) and its pixel AUROC and "
                 f"PRO on the pasted masks are "
                 f"not lower by more than {rule.PIXEL_TOLERANCE} (docs/selection.md)"),
        "n_good": data.n_good, "n_synthetic": len(data.kinds),
        "kinds": {k: data.kinds.count(k) for k in dict.fromkeys(data.kinds)},
        "candidates": rows, "chosen": candidates[chosen].name,
    }
    arrays, info = fitted[chosen]
    return write_model(category, candidates[chosen].config(base), prep, arrays, {**info, "selection": selection},
                       out_dir)
