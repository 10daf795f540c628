"""fit: good images -> features -> SOM (or the PaDiM baseline) -> node statistics -> model dir."""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_somad import scoring
from edge_somad._version import __version__
from edge_somad.artifacts import FittedArrays, model_bytes, save_model
from edge_somad.backbones import load_backbone
from edge_somad.config import FitConfig
from edge_somad.contracts.geometry import plan_geometry, resize_frame
from edge_somad.data import Category, read_image
from edge_somad.errors import ConfigError, DatasetError
from edge_somad.features import FeatureExtractor, make_projection
from edge_somad.lowrank import lowrank_statistics
from edge_somad.progress import Progress
from edge_somad.runtime.health.drift import BLOCKY_SCALE, Box, blockiness, content_box, input_reference
from edge_somad.som import SomResult, best_matching_units, train_som
from edge_somad.stats import node_statistics, positional_statistics

NORM_MAX_IMAGES = 200


def split_train(paths: tuple[Path, ...], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic fit/holdout split. Holdout images are never seen by the SOM (for calibration)."""
    n_hold = round(fraction * len(paths))
    if fraction > 0 and len(paths) >= 4:
        n_hold = max(1, n_hold)
    if len(paths) - n_hold < 2:
        raise DatasetError(f"{len(paths)} training images leave {len(paths) - n_hold} to fit; need at least 2")
    order = np.random.default_rng(seed).permutation(len(paths))
    hold = sorted(paths[i] for i in order[:n_hold])
    fit = sorted(paths[i] for i in order[n_hold:])
    return fit, hold


def load_frames(paths: list[Path], config: FitConfig, boxes: list[Box] | None = None,
                blocky: list[float] | None = None) -> np.ndarray:
    """Read and resize images exactly as the runtime will: (N, H, W, 3) uint8 BGR. Appends each
    frame's content box on the canvas to `boxes` (input statistics leave padding out) and, for an
    image the model sees at about its own size, its JPEG blockiness to `blocky`, when given."""
    spec = config.input
    frames = []
    for p in paths:
        img = read_image(p)
        frames.append(resize_frame(img, spec.height, spec.width, spec.resize, spec.pad_value))
        g = plan_geometry(img.shape[0], img.shape[1], spec.height, spec.width, spec.resize)
        if boxes is not None:
            boxes.append(content_box(g))
        if blocky is not None and min(g.scale_x, g.scale_y) >= BLOCKY_SCALE and (b := blockiness(img)) is not None:
            blocky.append(b)
    return np.stack(frames)


def extract(extractor: FeatureExtractor, frames: np.ndarray, device: torch.device, batch: int = 8,
            progress: bool = True) -> torch.Tensor:
    """Patch features (N, h*w, d) float32 on `device`."""
    bar = Progress("features", progress)
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            out.append(extractor(torch.from_numpy(frames[i : i + batch]).to(device)))
            bar(min(i + batch, len(frames)), len(frames))
    return torch.cat(out)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for, but torch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What every candidate model of one category shares: the split, the extractor, its features."""

    fit_paths: list[Path]
    hold_paths: list[Path]
    extractor: FeatureExtractor
    feats: torch.Tensor  # (n_img, N, d) projected features of the fit images
    projection: np.ndarray  # (d, C) the Gaussian (or subset) projection the extractor applies
    input_stats: dict[str, Any]  # what `run` compares live frames with (input drift)
    device: torch.device
    started: float  # perf_counter() at the start, for fit_seconds


def prepare(category: Category, config: FitConfig, weights: str | None = None, device: str = "auto",
            progress: bool = True) -> Prepared:
    """Split train/good, load the backbone and projection, extract the fit images' features."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    fit_paths, hold_paths = split_train(category.train, config.holdout_fraction, config.seed)
    boxes: list[Box] = []
    blocky: list[float] = []
    frames = load_frames(fit_paths, config, boxes, blocky)
    backbone = load_backbone(config.backbone, weights)
    projection = make_projection(config, sum(backbone.info.channels))
    extractor = FeatureExtractor(backbone, config.input.height, config.input.width, projection).to(dev)
    feats = extract(extractor, frames, dev, progress=progress)
    # On the frames the model saw, resized as the runtime does.
    stats = input_reference(frames, f"{len(fit_paths)} fit images, resized as the runtime does", boxes, blocky)
    return Prepared(fit_paths, hold_paths, extractor, feats, projection, stats, dev, t0)


def fit_arrays(prep: Prepared, config: FitConfig, progress: bool = True) -> tuple[FittedArrays, dict[str, Any]]:
    """One method's arrays (SOM + node statistics, or PaDiM's per-position Gaussians) on shared features."""
    info: dict[str, Any] = {}
    if config.method == "somad":
        arrays, info = _fit_som(prep.feats, config, prep.extractor.grid, prep.projection, progress)
    else:
        means, whiten = positional_statistics(prep.feats.cpu(), config.eps)
        arrays = FittedArrays(projection=prep.projection, whiten=whiten.numpy(), means=means.numpy())
    return with_position_norm(arrays, config, prep.feats), info


def write_model(category: Category, config: FitConfig, prep: Prepared, arrays: FittedArrays,
                info: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Save config, arrays, split and fit_info into out_dir. Returns fit_info."""
    # Absolute paths: calibrate/evaluate may run from another working directory.
    split = {
        "category": category.name, "data_root": str(category.root.parent.resolve()),
        "train": [str(p.resolve()) for p in prep.fit_paths], "holdout": [str(p.resolve()) for p in prep.hold_paths],
    }
    bb = prep.extractor.backbone.info
    fit_info = {
        "fit_seconds": round(time.perf_counter() - prep.started, 2), "device": str(prep.device),
        "n_train_images": len(prep.fit_paths), "n_holdout_images": len(prep.hold_paths),
        "feature_grid": list(prep.extractor.grid), "backbone_channels": list(bb.channels),
        "backbone_weights": bb.weights, "edge_somad": __version__,
        "torch": torch.__version__, "python": platform.python_version(), **info,
        "input_stats": prep.input_stats,
    }
    save_model(out_dir, config, arrays, split, fit_info)
    fit_info["model_bytes"] = model_bytes(out_dir)
    return fit_info


def fit_model(category: Category, config: FitConfig, out_dir: Path, weights: str | None = None,
              device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Fit on category.train (minus the holdout) and write the model directory. Returns fit_info."""
    prep = prepare(category, config, weights, device, progress)
    arrays, info = fit_arrays(prep, config, progress)
    return write_model(category, config, prep, arrays, info, out_dir)


def with_position_norm(arrays: FittedArrays, config: FitConfig, feats: torch.Tensor, batch: int = 8) -> FittedArrays:
    """Add the per-position statistics of the training images' own patch distances (score_norm).

    In-sample maps sit a little low (the model has seen these patches), but by about the same amount
    at every position, and the threshold is still set on held-out images, so the bias cannot make
    the calibrated false-reject rate optimistic.
    """
    if config.score_norm == "none":
        return arrays
    from edge_somad.model import Head

    head = Head(arrays, config).to(feats.device)
    head.grouped = feats.device.type == "cpu"  # same distances, faster eager kernel (scoring.py)
    if len(feats) > NORM_MAX_IMAGES:
        # A seeded sample: 200 maps pin a mean and a std per position well, and scoring every image
        # of a large set would add a minute to fit on a 2-core box.
        pick = torch.randperm(len(feats), generator=torch.Generator().manual_seed(config.seed))[:NORM_MAX_IMAGES]
        feats = feats[pick.to(feats.device)]
    with torch.inference_mode():
        dist = torch.cat([head(feats[i : i + batch]) for i in range(0, len(feats), batch)])
    mean, std = scoring.position_statistics(dist.cpu(), config.norm_std_floor)
    return dataclasses.replace(arrays, norm_mean=mean.numpy(), norm_std=std.numpy())


def _fit_som(feats: torch.Tensor, config: FitConfig, grid: tuple[int, int], projection: np.ndarray,
             progress: bool) -> tuple[FittedArrays, dict[str, Any]]:
    return som_arrays(feats, train_map(feats, config, grid, progress), config, projection)


@dataclasses.dataclass(frozen=True)
class TrainedMap:
    """A trained SOM and each training patch's best-matching node (what node statistics need)."""

    som: SomResult
    assign: torch.Tensor  # (n_img * N,) node index of every training patch


def train_map(feats: torch.Tensor, config: FitConfig, grid: tuple[int, int], progress: bool = False) -> TrainedMap:
    """The SOM of the patch features (n_img, N, d), initialised from the per-position means."""
    n_img, n_pos, d = feats.shape
    position_means = feats.mean(0).reshape(grid[0], grid[1], d)
    flat = feats.reshape(n_img * n_pos, d)
    som = train_som(flat, position_means, config.som, config.seed, Progress("som", progress))
    return TrainedMap(som, best_matching_units(flat, som.nodes))


def som_arrays(feats: torch.Tensor, trained: TrainedMap, config: FitConfig, projection: np.ndarray
               ) -> tuple[FittedArrays, dict[str, Any]]:
    """Per-node statistics (eps, shrinkage of `config`) of a trained map -> arrays + fit info.

    Split from train_map so that the benchmark suite can compare covariance settings on one map.
    """
    d = feats.shape[-1]
    flat = feats.reshape(-1, d)
    som = trained.som
    if config.head == "lowrank":
        low = lowrank_statistics(flat, trained.assign, som.nodes, config.eps, config.shrinkage, config.head_rank)
        counts = low.counts
        arrays = FittedArrays(
            projection=projection, whiten=None, nodes=som.nodes.cpu().numpy(), centers=low.centers.cpu().numpy(),
            counts=counts.cpu().numpy(), transform=low.transform.cpu().numpy(),
            search_rotation=low.search_rotation.cpu().numpy(), basis=low.basis.cpu().numpy(),
            coef=low.coef.cpu().numpy(), alpha=low.alpha.cpu().numpy(),
        )
    else:
        stats = node_statistics(flat, trained.assign, som.nodes, config.eps, config.shrinkage)
        counts = stats.counts
        arrays = FittedArrays(
            projection=projection, whiten=stats.whiten.cpu().numpy(), nodes=som.nodes.cpu().numpy(),
            centers=stats.centers.cpu().numpy(), counts=counts.cpu().numpy(),
        )
    info = {
        "som_grid": [som.rows, som.cols], "n_train_patches": int(flat.shape[0]),
        "som_quantisation_error": round(som.quantisation_error, 4),
        "empty_nodes": int((counts == 0).sum()), "nodes_under_d_members": int((counts < d).sum()),
    }
    return arrays, info
