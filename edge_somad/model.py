"""SomadNet: the whole scorer as one plain, exportable nn.Module (frames in -> map + score out).

The same module is the torch backend, the float reference for ONNX parity, and the thing
torch.onnx exports, so there is one implementation of preprocessing and scoring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_somad import scoring
from edge_somad.artifacts import FittedArrays, held_whitening, load_arrays, load_config
from edge_somad.backbones import load_backbone
from edge_somad.config import FitConfig
from edge_somad.contracts.layout import read_fit_info
from edge_somad.features import FeatureExtractor


class Head(nn.Module):
    """Projected patch features (B, N, d) -> patch distances (B, N), standardised per position.

    Split from the backbone so fit (on cached features), the int8 refit and the exported graph all
    run this one module: one definition of a patch's score.
    """

    def __init__(self, arrays: FittedArrays, config: FitConfig) -> None:
        super().__init__()
        self.method = config.method
        self.topk = config.topk
        # Eager-only kernel for fit's self-check and the benchmark suite (scoring.min_mahalanobis_sq_grouped);
        # export and the torch backend keep the gathered form the graph has.
        self.grouped = False
        t = torch.from_numpy
        self.lowrank = config.method == "somad" and config.head == "lowrank"
        if self.lowrank:
            self._lowrank_buffers(arrays, config)
        else:
            # Held at float16 precision, like the exported graph's (artifacts.held_whitening says why).
            self.register_buffer("whiten", t(held_whitening(arrays.whiten)))
            if config.method == "somad":
                self.register_buffer("search", scoring.search_table(t(arrays.nodes)))
                self.register_buffer("centers", t(arrays.centers))
            else:
                self.register_buffer("means", t(arrays.means))
        # Absent until fit has measured the training maps (and always absent for score_norm=none).
        norm = arrays.norm_mean is not None and arrays.norm_std is not None
        self.register_buffer("norm_mean", t(arrays.norm_mean) if norm else None)
        self.register_buffer("norm_inv_std", t(1.0 / arrays.norm_std) if norm else None)

    def _lowrank_buffers(self, arrays: FittedArrays, config: FitConfig) -> None:
        """Centres moved into the whitened coordinates once here; the search keys rotated when truncated."""
        t = torch.from_numpy
        transform, nodes = t(arrays.transform), t(arrays.nodes)
        d = transform.shape[0]
        self.search_dims = config.search_dims if config.search_dims < d else 0  # 0: all d, on x itself
        if self.search_dims:  # one MatMul gives both: [whitened z | the first search_dims principal axes]
            axes = t(arrays.search_rotation)[:, : self.search_dims]
            transform = torch.cat([transform, axes], dim=1)
            nodes = nodes @ axes
        self.register_buffer("transform", transform.contiguous())
        self.register_buffer("search", scoring.search_table(nodes.contiguous()))
        # In float64, then rounded: the int8 refit recomputes this buffer to find it in the graph by value.
        self.register_buffer("centers", (t(arrays.centers).double() @ t(arrays.transform).double()).float())
        self.register_buffer("basis", t(arrays.basis))
        self.register_buffer("coef", t(arrays.coef))
        self.register_buffer("alpha", t(arrays.alpha))

    def distances_sq(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance per patch (B, N), raw (what chi2 theory describes)."""
        if self.lowrank:
            y = x @ self.transform
            d = x.shape[-1]
            keys = y[..., d:] if self.search_dims else x  # all d: the full head's search, unchanged
            idx = scoring.topk_nearest(keys, self.search, self.topk)
            return scoring.min_lowrank_mahalanobis_sq(y[..., :d], self.centers, self.basis, self.coef, self.alpha, idx)
        if self.method == "somad":
            idx = scoring.topk_nearest(x, self.search, self.topk)
            if self.grouped:
                return scoring.min_mahalanobis_sq_grouped(x, self.centers, self.whiten, idx)
            return scoring.min_mahalanobis_sq(x, self.centers, self.whiten, idx)
        return scoring.positional_mahalanobis_sq(x, self.means, self.whiten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = self.distances_sq(x).clamp_min(0).sqrt()
        if self.norm_mean is None:
            return dist
        return scoring.standardise(dist, self.norm_mean, self.norm_inv_std)


class SomadNet(nn.Module):
    def __init__(self, features: FeatureExtractor, arrays: FittedArrays, config: FitConfig) -> None:
        super().__init__()
        self.features = features
        self.head = Head(arrays, config)
        self.size = (config.input.height, config.input.width)
        self.grid = features.grid
        self.score_pixels = scoring.image_score_pixels(*self.size, config.image_score_top)
        rows_op, cols_op = scoring.smoothing_operators(self.grid, self.size, config.smoothing_sigma)
        self.register_buffer("rows_op", rows_op)
        self.register_buffer("cols_op", cols_op)

    def patch_distances(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw Mahalanobis distances at the patch grid (B, h, w) (not standardised, not smoothed)."""
        d2 = self.head.distances_sq(self.features(frames))
        return d2.clamp_min(0).sqrt().reshape(-1, *self.grid)

    def score_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected features (B, N, d) -> (anomaly_map, score): everything after the backbone.

        Split out so fit's method selection scores several heads on features extracted once.
        """
        amap = scoring.smooth_and_upsample(self.head(feats), self.grid, self.rows_op, self.cols_op)
        return amap, scoring.image_scores(amap, self.score_pixels)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 (B, H, W, 3) BGR -> (anomaly_map (B, H, W) float32, score (B,) float32)."""
        return self.score_features(self.features(frames))


def build_net(config: FitConfig, arrays: FittedArrays, weights: str | None = None) -> SomadNet:
    backbone = load_backbone(config.backbone, weights)
    feats = FeatureExtractor(backbone, config.input.height, config.input.width, arrays.projection)
    return SomadNet(feats, arrays, config).eval()


def load_torch_model(model_dir: Path, weights: str | None = None) -> SomadNet:
    """Rebuild the fitted model from a model directory (backbone weights from package or --weights)."""
    config = load_config(model_dir)
    if weights is None and config.backbone == "wide_resnet50_2":
        weights = _recorded_weights(Path(model_dir))
    return build_net(config, load_arrays(model_dir, config), weights)


def _recorded_weights(model_dir: Path) -> str | None:
    path = read_fit_info(model_dir).get("backbone_weights")
    return path if path and Path(path).is_file() else None


def score_frames(net: SomadNet, frames: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Score a stack of resized uint8 frames in batches -> (scores (N,), maps (N, H, W)) numpy."""
    scores, maps = [], []
    with torch.inference_mode():
        for i in range(0, len(frames), batch_size):
            amap, s = net(torch.from_numpy(frames[i : i + batch_size]))
            maps.append(amap.numpy())
            scores.append(s.numpy())
    return np.concatenate(scores), np.concatenate(maps)
