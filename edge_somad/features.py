"""Frames -> projected multi-scale patch features, as one exportable nn.Module.

uint8 (B, H, W, 3) BGR -> cast -> RGB -> normalise -> backbone stages (strides 4/8/16) ->
upsample to the stride-4 grid -> concat -> random projection (a 1x1 convolution) -> (B, h*w, d).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_somad.backbones import StagedBackbone
from edge_somad.config import FitConfig
from edge_somad.errors import ConfigError


def make_projection(config: FitConfig, channels: int) -> np.ndarray:
    """(d, C) float32 projection, seeded.

    gaussian: Johnson-Lindenstrauss, entries N(0, 1/d), which preserves distances in expectation
    and mixes all stages; subset: d channels picked at random (PaDiM's choice); none: identity.
    """
    rng = np.random.default_rng(config.seed)
    if config.projection == "none":
        if config.d != channels:
            raise ConfigError(f"projection=none keeps all {channels} channels; set d={channels}, got d={config.d}")
        return np.eye(channels, dtype=np.float32)
    if config.d > channels:
        raise ConfigError(
            f"d={config.d} exceeds the backbone's {channels} feature channels; choose d <= {channels}"
        )
    if config.projection == "gaussian":
        return (rng.standard_normal((config.d, channels)) / np.sqrt(config.d)).astype(np.float32)
    picked = np.sort(rng.choice(channels, size=config.d, replace=False))
    proj = np.zeros((config.d, channels), np.float32)
    proj[np.arange(config.d), picked] = 1.0
    return proj


class FeatureExtractor(nn.Module):
    def __init__(self, backbone: StagedBackbone, height: int, width: int, projection: np.ndarray) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        info = backbone.info
        self.height, self.width = height, width
        self.grid = (height // 4, width // 4)
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("projection", torch.from_numpy(projection).view(*projection.shape, 1, 1))
        self.register_buffer("bgr_to_rgb", torch.tensor([2, 1, 0], dtype=torch.int64))
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def d(self) -> int:
        return int(self.projection.shape[0])

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) BGR -> float (B, 3, H, W) RGB, normalised. No scale guessing: always /std."""
        x = frames.permute(0, 3, 1, 2).to(torch.float32)
        # BGR (OpenCV) -> RGB (ImageNet weights). The index is a buffer on the model's device: a Python
        # list index is a host tensor copied at every call, which a CUDA graph cannot capture.
        x = x.index_select(1, self.bgr_to_rgb)
        return (x - self.mean) * self.inv_std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 (B, H, W, 3) BGR -> patch features (B, h*w, d) float32."""
        f1, f2, f3 = self.backbone(self.normalise(frames))
        # Static target size (from the config), so the exported graph has no shape arithmetic.
        f2 = F.interpolate(f2, size=self.grid, mode="bilinear", align_corners=False)
        f3 = F.interpolate(f3, size=self.grid, mode="bilinear", align_corners=False)
        feats = torch.cat([f1, f2, f3], dim=1)
        z = F.conv2d(feats, self.projection)  # (B, d, h, w)
        return z.flatten(2).transpose(1, 2)
