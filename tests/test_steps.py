"""The steps as the CLI runs them: export keeps a calibration, the engine rebuild command works as printed."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_somad.cli import app
from edge_somad.contracts.engines import check_engine_compat
from edge_somad.contracts.manifest import EngineInfo, load_manifest, save_manifest, sha256_file
from edge_somad.errors import EngineMismatchError


@pytest.fixture(scope="module")
def raw_fitted(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_config) -> Path:
    """A real tiny fit with raw distances (score_norm none), the model chi2 calibrates."""
    from tests.helpers.synth import fit_widget

    config = dataclasses.replace(tiny_config, score_norm="none")
    return fit_widget(synth_root, config, tmp_path_factory.mktemp("raw_model"))


def test_export_again_keeps_a_chi2_calibration_and_the_int8_entries(raw_fitted: Path, tmp_path: Path) -> None:
    from edge_somad.calibration.calibrate import run_calibrate

    model_dir = tmp_path / "m"
    shutil.copytree(raw_fitted, model_dir)
    first = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--no-trt"])
    assert first.exit_code == 0, first.output
    assert load_manifest(model_dir).calibration.method == "robust-normal"  # a fresh model is calibrated
    run_calibrate(model_dir, 0.01, None, "chi2", 0.999, None, False, "onnxruntime")
    # What `calibrate --int8` records, without its minutes of quantization: a graph and its thresholds.
    shutil.copyfile(model_dir / "model.onnx", model_dir / "model.int8.onnx")
    calibrated = dataclasses.replace(
        load_manifest(model_dir), int8_onnx="model.int8.onnx",
        int8_onnx_sha256=sha256_file(model_dir / "model.int8.onnx"),
        precision_thresholds={"int8": 123.0}, precision_pixel_thresholds={"int8": 45.0})
    save_manifest(model_dir, calibrated)

    again = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--no-trt"])
    assert again.exit_code == 0, again.output
    after = load_manifest(model_dir)
    assert after.calibration == calibrated.calibration and after.calibration.method == "chi2"
    assert after.threshold == calibrated.threshold
    assert after.reference["scores"] == calibrated.reference["scores"]
    assert (after.int8_onnx, after.int8_onnx_sha256) == (calibrated.int8_onnx, calibrated.int8_onnx_sha256)
    assert after.threshold_for("int8") == 123.0 and after.pixel_threshold_for("int8") == 45.0
    assert after.pixel_threshold_for("fp32") == calibrated.calibration.pixel_threshold


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed here: build-engine would really build")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_mismatch_command_runs_as_printed_up_to_the_gpu_error(tmp_path: Path, precision: str) -> None:
    from tests.test_trt_tinymodel import make_model_dir

    model_dir = make_model_dir(tmp_path / "m")
    shutil.copyfile(model_dir / "model.onnx", model_dir / "model.int8.onnx")
    manifest = dataclasses.replace(load_manifest(model_dir), int8_onnx="model.int8.onnx",
                                   int8_onnx_sha256=sha256_file(model_dir / "model.int8.onnx"))
    save_manifest(model_dir, manifest)
    info = EngineInfo(path=f"model.{precision}.engine", precision=precision, tensorrt_version="10.8.0",
                      gpu_name="Orin", compute_capability="8.7", onnx_sha256="0" * 64)
    with pytest.raises(EngineMismatchError) as err:
        check_engine_compat(info, "10.8.0", "RTX 4090", "8.9", manifest.onnx_sha256, model_dir)
    printed = re.search(r"`(edge-somad [^`]+)`", str(err.value))
    assert printed is not None, str(err.value)
    argv = shlex.split(printed.group(1))

    result = CliRunner().invoke(app, argv[1:])
    assert result.exit_code == 2, result.output
    assert "No such option" not in result.output and "Usage:" not in result.output
    assert f"building a {precision} TensorRT engine needs an NVIDIA GPU with TensorRT" in result.output
    assert not (model_dir / f"model.{precision}.engine").exists()
