"""End to end on real photos (Hazelnut Toy, CC-BY-4.0): the CLI's fit -> export -> evaluate.

Runs on the sample bundled in the package (edge_somad/sample_data), so a clean clone runs it: no
data folder outside the repository is needed. A small input (128x128) keeps it to ~20 s on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_somad.cli import app
from edge_somad.data import sample_data_root

HAZELNUT_ROOT = sample_data_root()
runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("e2e") / "hazelnut"
    _ok(["fit", "--category", "hazelnut_toy", "--data-root", str(HAZELNUT_ROOT), "--out", str(model),
         "--height", "128", "--width", "128", "--d", "32", "--device", "cpu", "--method", "somad"])
    _ok(["export", "--model", str(model), "--no-trt"])
    return model


def test_exported_model_is_calibrated_and_complete(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["threshold"] > 0 and manifest["calibration"]["n_images"] == 6  # 20% of 28 held out
    assert manifest["model"]["d"] == 32 and manifest["model"]["som_grid"] == [32, 32]
    assert {p.name for p in exported.iterdir()} >= {"config.json", "arrays.npz", "model.onnx", "manifest.json"}


def test_onnxruntime_reproduces_torch_metrics(exported: Path) -> None:
    reports = {}
    for backend in ("torch", "onnxruntime"):
        out = exported / f"report_{backend}.json"
        text = _ok(["evaluate", "--model", str(exported), "--backend", backend, "--report", str(out),
                    "--pictures", str(exported / f"pictures_{backend}")])
        assert "image AUROC" in text
        reports[backend] = json.loads(out.read_text())
    t, o = reports["torch"], reports["onnxruntime"]
    for key in ("image_auroc", "pixel_auroc", "pro"):
        assert 0.0 <= o[key] <= 1.0
        assert abs(t[key] - o[key]) < 5e-4, (key, t[key], o[key])  # same to the third decimal
    # Real defects on real photos: the model must actually work, not just run.
    assert o["image_auroc"] >= 0.95 and o["pixel_auroc"] >= 0.95
    at = o["at_threshold"]
    assert at["n_good"] == 6 and at["n_defect"] == 17 and "colour" in at["per_type"]
    pictures = exported / "pictures_onnxruntime"
    assert (pictures / "roc.png").is_file() and (pictures / "pro.png").is_file()
    assert len(list(pictures.glob("colour_*.png"))) >= 1


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "split.json" in result.output
    result = runner.invoke(app, ["fit", "--category", "hazelnut_toy", "--data-root", str(tmp_path),
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "hazelnut_toy" in result.output
    result = runner.invoke(app, ["fit", "--height", "100", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "multiple of 16" in result.output
