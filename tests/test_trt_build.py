"""export/trt_build.py and contracts/engines.py: pure helpers on CPU; engine builds on a GPU (marked gpu)."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edge_somad.contracts.engines import check_engine_compat, engine_path, rebuild_command
from edge_somad.contracts.manifest import EngineInfo, load_manifest, save_manifest, sha256_file
from edge_somad.errors import ArtifactError, BackendUnavailableError, ConfigError, EngineMismatchError
from edge_somad.export.trt_build import build_engine, profile_shapes
from edge_somad.runtime.scorers.trt_env import import_tensorrt
from tests.test_trt_tinymodel import make_model_dir, random_frames, run_ort

INFO = EngineInfo(path="model.fp16.engine", precision="fp16", tensorrt_version="10.8.0.43",
                  gpu_name="Orin", compute_capability="8.7", onnx_sha256="a" * 64, max_batch=4)
HERE = {"trt_version": "10.8.0.43", "gpu_name": "Orin", "compute_capability": "8.7", "onnx_sha256": "a" * 64}


def test_same_machine_same_graph_is_compatible(tmp_path: Path) -> None:
    check_engine_compat(INFO, model_dir=tmp_path, **HERE)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("gpu_name", "NVIDIA GeForce RTX 4090", ["GPU", "built for Orin", "running on NVIDIA GeForce RTX 4090"]),
    ("compute_capability", "8.9", ["compute capability", "built for 8.7", "running on 8.9"]),
    ("trt_version", "10.9.0.34", ["TensorRT", "built with 10.8.0.43", "running 10.9.0.34"]),
    ("onnx_sha256", "b" * 64, ["ONNX graph", "re-exported"]),
])
def test_mismatch_names_it_and_gives_the_rebuild_command(tmp_path: Path, field: str, value: str,
                                                         words: list[str]) -> None:
    with pytest.raises(EngineMismatchError) as err:
        check_engine_compat(INFO, model_dir=tmp_path, **{**HERE, field: value})
    msg = str(err.value)
    for w in words:
        assert w in msg
    assert f"edge-somad build-engine --model {tmp_path} --precision fp16" in msg


def test_every_mismatch_is_listed(tmp_path: Path) -> None:
    with pytest.raises(EngineMismatchError) as err:
        check_engine_compat(INFO, "11.0.0", "H100", "9.0", "c" * 64, tmp_path)
    msg = str(err.value)
    assert all(w in msg for w in ("GPU:", "compute capability:", "TensorRT:", "ONNX graph:"))


def test_profile_shapes_are_nhwc_with_dynamic_batch() -> None:
    assert profile_shapes(224, 320, 8) == ((1, 224, 320, 3), (8, 224, 320, 3), (8, 224, 320, 3))
    assert profile_shapes(64, 64, 1) == ((1, 64, 64, 3),) * 3
    with pytest.raises(ConfigError):
        profile_shapes(64, 64, 0)


def test_engine_path_naming(tmp_path: Path) -> None:
    assert engine_path(tmp_path, "fp16") == tmp_path / "model.fp16.engine"
    assert engine_path(tmp_path, "int8").name == "model.int8.engine"
    with pytest.raises(ConfigError, match="precision"):
        engine_path(tmp_path, "bf16")
    cmd = "edge-somad build-engine --model models/x --precision int8"
    assert rebuild_command(Path("models/x"), "int8") == cmd


def test_build_without_tensorrt_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` -> ImportError
    model_dir = make_model_dir(tmp_path / "m")
    before = (model_dir / "manifest.json").read_text()
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-somad\[gpu\]'"):
        build_engine(model_dir, "fp16")
    assert not engine_path(model_dir, "fp16").exists()
    assert (model_dir / "manifest.json").read_text() == before


def test_tensorrt_older_than_10_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8\.6\.1 found; .* >= 10\.0"):
        import_tensorrt()


def test_int8_without_calibrated_graph_points_to_calibrate(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"calibrate --model .* --int8"):
        build_engine(model_dir, "int8")
    with pytest.raises(ConfigError):
        build_engine(model_dir, "fp8")


# ---------------------------------------------------------------- GPU


def _write_int8(model_dir: Path) -> None:
    """A Q/DQ model.int8.onnx (symmetric int8, what TensorRT's explicit quantization expects)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"frames": random_frames(1, seed=s)} for s in range(4)])

        def get_next(self):
            return next(self.batches, None)

    out = model_dir / "model.int8.onnx"
    quantize_static(str(model_dir / "model.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    m = load_manifest(model_dir)
    save_manifest(model_dir, dataclasses.replace(m, int8_onnx=out.name, int8_onnx_sha256=sha256_file(out)))


@pytest.mark.gpu("tensorrt")
def test_fp16_engine_matches_onnxruntime(tmp_path: Path) -> None:
    from edge_somad.runtime.scorers.trt_scorer import TensorRTScorer

    model_dir = make_model_dir(tmp_path / "m")
    info = build_engine(model_dir, "fp16", max_batch=4, workspace_gb=1.0)
    assert engine_path(model_dir, "fp16").is_file() and (model_dir / "trt.timing.cache").is_file()
    manifest = load_manifest(model_dir)
    assert manifest.engines == (info,) and info.onnx_sha256 == manifest.onnx_sha256
    frames = random_frames(3)
    amap_ref, score_ref = run_ort(model_dir / "model.onnx", frames)
    with TensorRTScorer(model_dir, manifest, "fp16") as scorer:
        res = scorer.score(frames)
        res1 = scorer.score(frames[:1])
    np.testing.assert_allclose(res.scores, score_ref, rtol=2e-2)
    assert np.abs(res.maps - amap_ref).max() < 2e-2 * np.abs(amap_ref).max()
    np.testing.assert_allclose(res1.scores, res.scores[:1], rtol=1e-3)
    # A rebuild replaces the entry instead of appending a second fp16 engine.
    build_engine(model_dir, "fp16", max_batch=2, workspace_gb=1.0)
    assert [e.max_batch for e in load_manifest(model_dir).engines] == [2]


@pytest.mark.gpu("tensorrt")
def test_int8_engine_builds_and_loads(tmp_path: Path) -> None:
    from edge_somad.runtime.scorers.trt_scorer import TensorRTScorer

    model_dir = make_model_dir(tmp_path / "m")
    _write_int8(model_dir)
    info = build_engine(model_dir, "int8", max_batch=2, workspace_gb=1.0)
    manifest = load_manifest(model_dir)
    assert info.onnx_sha256 == manifest.int8_onnx_sha256
    with TensorRTScorer(model_dir, manifest, "int8") as scorer:
        res = scorer.score(random_frames(2))
    assert res.scores.shape == (2,) and np.isfinite(res.maps).all()
