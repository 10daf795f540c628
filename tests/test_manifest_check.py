"""manifest.json fields are type- and range-checked at load, and the error names the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from edge_somad.cli.runtime import run
from edge_somad.contracts.manifest import Manifest, load_manifest
from edge_somad.errors import ArtifactError
from tests.helpers.runtime import free_port, grey, make_model_dir, write_video

DROP = object()  # remove the field instead of setting it

# (dotted path of the field, value written there, what the error must say)
CASES: list[tuple[str, Any, str]] = [
    ("threshold", "abc", "'threshold' is 'abc' (str); expected a finite number > 0"),
    ("threshold", float("nan"), "'threshold' is nan"),
    ("threshold", float("inf"), "'threshold' is inf"),
    ("threshold", -5, "'threshold' is -5"),
    ("threshold", 0, "'threshold' is 0"),
    ("threshold", True, "'threshold' is True (bool)"),
    ("threshold", [1.0], "'threshold' is [1.0] (list)"),
    ("name", DROP, "'name' is missing"),
    ("onnx", 5, "'onnx' is 5 (int); expected a non-empty string"),
    ("input", "frames", "'input' is 'frames' (str); expected a JSON object"),
    ("input.shape", [1, -3], "'input.shape[1]' is -3"),
    ("outputs", {"a": 1}, "'outputs'"),
    ("preprocessing", DROP, "'preprocessing' is missing"),
    ("preprocessing.height", "224", "'preprocessing.height' is '224' (str); expected an integer >= 1"),
    ("preprocessing.width", 0, "'preprocessing.width' is 0"),
    ("preprocessing.resize", "zoom", "'preprocessing.resize' is 'zoom'"),
    ("preprocessing.pad_value", 300, "'preprocessing.pad_value' is 300"),
    ("preprocessing.std", [1.0, 0.0, 1.0], "'preprocessing.std[1]' is 0.0"),
    ("preprocessing.mean", [0.0, 0.0], "'preprocessing.mean' is [0.0, 0.0]"),
    ("calibration.pixel_threshold", -1.0, "'calibration.pixel_threshold' is -1.0"),
    ("calibration.min_defect_area_px", 2.5, "'calibration.min_defect_area_px' is 2.5"),
    ("calibration.target_frr", 5, "'calibration.target_frr' is 5"),
    ("calibration.details", "x", "'calibration.details' is 'x'"),
    ("precision_thresholds", {"int8": "x"}, "'precision_thresholds.int8' is 'x'"),
    ("precision_thresholds", {"int4": 1.0}, "'precision_thresholds key' is 'int4'"),
    ("precision_pixel_thresholds", {"fp16": 0}, "'precision_pixel_thresholds.fp16' is 0"),
    ("engines", [{"path": "e"}], "'engines[0].precision' is missing"),
    ("reference", {"scores": {"quantiles": [1.0, "x"]}}, "'reference.scores.quantiles[1]' is 'x'"),
    ("reference", {"scores": {"quantiles": [2.0, 1.0]}}, "non-decreasing"),
    ("reference", {"input": {"brightness": {"mean": 1.0, "std": -1}}}, "'reference.input.brightness.std'"),
    ("reference", {"frame": {"file": "reference_frame.npz", "sha256": "x", "onnx_sha256": "y", "precision": "fp32",
                             "score": "high"}}, "'reference.frame.score' is 'high'"),
    ("reference", {"frame": {"file": "../../etc/x.npz", "sha256": "x", "onnx_sha256": "y", "precision": "fp32",
                             "score": 1.0}}, "'reference.frame.file' is '../../etc/x.npz'"),
    ("surprise", 1, "'surprise' is not a manifest field"),
]


def _set(data: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data[key]
    if value is DROP:
        del data[last]
    else:
        data[last] = value


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = make_model_dir(tmp_path_factory.mktemp("m"))
    return json.loads((d / "manifest.json").read_text())


def test_a_good_manifest_loads(good: dict) -> None:
    m = Manifest.from_dict(good)
    assert m.threshold == 0.5 and m.preprocessing.height == 64


@pytest.mark.parametrize(("path", "value", "says"), CASES, ids=[f"{p}={v!r}"[:40] for p, v, _ in CASES])
def test_bad_field_is_named(good: dict, path: str, value: Any, says: str) -> None:
    data = copy.deepcopy(good)
    _set(data, path, value)
    with pytest.raises(ArtifactError) as err:
        Manifest.from_dict(data)
    assert says in str(err.value)
    assert "manifest.json" in str(err.value)  # how to fix it


def test_run_exits_2_before_scoring(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    data = json.loads((d / "manifest.json").read_text())
    data["threshold"] = "abc"
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="threshold"):
        load_manifest(d)
    video = write_video(tmp_path / "v.avi", [grey()] * 3)
    app = typer.Typer()
    app.command("run")(run)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["run", "--camera", str(video), "--model", str(d),
                                   "--publish", f"tcp://127.0.0.1:{free_port()}"])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "'threshold' is 'abc'" in res.output and str(d) in res.output
