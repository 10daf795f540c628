"""runtime/scorers/trt_scorer.py on CPU: the errors a machine without an engine or TensorRT must give."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import pytest

from edge_somad.contracts.manifest import EngineInfo, Manifest, load_manifest
from edge_somad.errors import ArtifactError, BackendUnavailableError, ConfigError
from edge_somad.runtime.scorers.trt_scorer import TensorRTScorer
from tests.test_trt_tinymodel import make_model_dir


def _with_engine(model_dir: Path, precision: str = "fp16") -> Manifest:
    m = load_manifest(model_dir)
    info = EngineInfo(path=f"model.{precision}.engine", precision=precision, tensorrt_version="10.8.0",
                      gpu_name="Orin", compute_capability="8.7", onnx_sha256=m.onnx_sha256, max_batch=4)
    return dataclasses.replace(m, engines=(info,))


def test_no_engine_for_the_precision_gives_the_build_command(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    manifest = _with_engine(model_dir, "int8")
    with pytest.raises(ArtifactError) as err:
        TensorRTScorer(model_dir, manifest, "fp16")
    assert f"edge-somad build-engine --model {model_dir} --precision fp16" in str(err.value)
    assert "built: int8" in str(err.value)


def test_without_tensorrt_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model_dir = make_model_dir(tmp_path / "m")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-somad\[gpu\]'"):
        TensorRTScorer(model_dir, _with_engine(model_dir), "fp16")


def test_without_cuda_python_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.8.0"))
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    model_dir = make_model_dir(tmp_path / "m")
    with pytest.raises(BackendUnavailableError, match=r"cuda-python .*edge-somad\[gpu\]"):
        TensorRTScorer(model_dir, _with_engine(model_dir), "fp16")


def test_unknown_precision_is_a_config_error(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    with pytest.raises(ConfigError):
        TensorRTScorer(model_dir, _with_engine(model_dir), "fp64")


def test_runtime_module_imports_no_torch_or_tensorrt() -> None:
    import subprocess

    code = ("import sys, edge_somad.runtime.scorers.trt_scorer; "
            "bad = [m for m in ('torch', 'tensorrt', 'cuda') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
