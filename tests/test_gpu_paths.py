"""GPU paths of the same model: torch CUDA and ONNX Runtime's CUDA provider (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_somad.config import FitConfig
from edge_somad.data import load_category
from edge_somad.evaluate import load_test_set
from edge_somad.runtime.scorers.torch_scorer import TorchScorer


@pytest.mark.gpu("torch-cuda")
def test_torch_cuda_matches_cpu(tiny_exported: Path, synth_root: Path, tiny_config: FitConfig) -> None:
    frames = load_test_set(load_category(synth_root, "widget"), tiny_config.input).frames
    cpu = TorchScorer(tiny_exported, device="cpu").score(frames)
    gpu = TorchScorer(tiny_exported, device="cuda").score(frames)
    np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-3)
    np.testing.assert_allclose(gpu.maps, cpu.maps, rtol=1e-3, atol=1e-2)


@pytest.mark.gpu("ort-cuda")
def test_onnxruntime_cuda_provider_is_really_used(tiny_exported: Path, synth_root: Path,
                                                   tiny_config: FitConfig) -> None:
    from edge_somad.runtime.scorers.ort_scorer import OrtScorer

    frames = load_test_set(load_category(synth_root, "widget"), tiny_config.input).frames
    h, w = tiny_config.input.height, tiny_config.input.width
    with OrtScorer(tiny_exported / "model.onnx", h, w, ("CUDAExecutionProvider", "CPUExecutionProvider")) as s:
        assert s.device == "CUDAExecutionProvider"
        got = s.score(frames)
    with OrtScorer(tiny_exported / "model.onnx", h, w) as cpu:
        np.testing.assert_allclose(got.scores, cpu.score(frames).scores, rtol=1e-3)
