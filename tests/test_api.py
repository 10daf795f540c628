"""The public API: `from edge_somad import Detector` scores a frame in three lines, torch-free.

The stand-in graph (tests/helpers/runtime.py) scores blue minus red, so a grey part passes and
a part with a blue patch fails with one defect region where the patch is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_somad
from edge_somad import Detector, Prediction
from edge_somad.errors import ArtifactError, InputError
from tests.helpers.runtime import THRESHOLD, defect, grey, make_model_dir

REPO = Path(__file__).resolve().parents[1]
# The README's example, verbatim (test_readme_shows_the_tested_example keeps them the same).
README_EXAMPLE = '''from edge_somad import Detector
detector = Detector.load("models/hazelnut_toy")
print(detector.predict("part.jpg").verdict)'''


def test_predict_passes_a_good_part_and_fails_a_defect_with_its_region(tmp_path: Path) -> None:
    with Detector.load(make_model_dir(tmp_path / "m"), backend="onnxruntime") as detector:
        good = detector.predict(grey())
        bad = detector.predict(defect(box=(40, 30, 24, 20)))
    assert isinstance(good, Prediction)
    assert (good.verdict, good.score, good.threshold, good.defects, good.error) == ("pass", 0.0, THRESHOLD, [], None)
    assert bad.verdict == "fail" and bad.score == pytest.approx(1.0) and bad.error is None
    assert bad.heatmap is not None and bad.heatmap.shape == (120, 160) and bad.heatmap.dtype == np.float32
    (region,) = bad.defects  # in frame pixels, like `run` publishes
    assert abs(region["x"] - 40) <= 2 and abs(region["y"] - 30) <= 2
    assert abs(region["w"] - 24) <= 3 and abs(region["h"] - 20) <= 3
    assert bad.heatmap[35, 50] == pytest.approx(1.0, abs=0.02) and bad.heatmap[100, 10] == 0.0


def test_an_uncalibrated_model_gives_error_verdicts_never_a_pass(tmp_path: Path) -> None:
    with Detector.load(make_model_dir(tmp_path / "m", threshold=None), backend="onnxruntime") as detector:
        p = detector.predict(grey())
    assert p.verdict == "error" and "not calibrated" in (p.error or "") and p.threshold is None


def test_bad_inputs_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        Detector.load(tmp_path / "nothing-here")
    with Detector.load(make_model_dir(tmp_path / "m"), backend="onnxruntime") as detector:
        with pytest.raises(InputError, match="dtype"):
            detector.predict(np.zeros((120, 160, 3), np.float32))
        with pytest.raises(InputError, match="not a readable image"):
            detector.predict(tmp_path / "missing.jpg")


def test_the_readme_example_runs_without_torch(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "models" / "hazelnut_toy")
    cv2.imwrite(str(tmp_path / "part.jpg"), defect())
    code = README_EXAMPLE + "\nimport sys; assert 'torch' not in sys.modules, 'scoring imported torch'\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fail"


def test_readme_shows_the_tested_example() -> None:
    assert README_EXAMPLE in (REPO / "README.md").read_text()


def test_import_is_lazy_and_names_are_public() -> None:
    code = ("import sys, edge_somad; heavy = [m for m in ('edge_somad.api', 'numpy', 'cv2', 'onnxruntime', "
            "'torch') if m in sys.modules]; assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    public = {"Detector", "Prediction", "fit_model", "export_model", "FitConfig", "ExportConfig"}
    assert set(edge_somad.__all__) >= public
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = edge_somad.nope
    assert (REPO / "edge_somad" / "py.typed").is_file()


def test_fit_and_export_library_functions_make_a_detector(tmp_path: Path, synth_root: Path, tiny_config) -> None:
    # The submodules edge_somad.fit and edge_somad.export loaded first: the public names stay the functions.
    import edge_somad.export
    import edge_somad.fit  # noqa: F401
    from edge_somad import ExportConfig, export_model, fit_model

    model = fit_model("widget", tmp_path / "widget", tiny_config, data_root=synth_root, device="cpu")
    assert model == tmp_path / "widget" and (model / "config.json").is_file()
    manifest = export_model(model, ExportConfig(target_frr=0.1, trt=False))
    assert manifest.threshold is not None and manifest.threshold > 0
    frame = cv2.imread(str(next((synth_root / "widget" / "test" / "good").iterdir())))
    with Detector.load(model, backend="onnxruntime") as detector:
        p = detector.predict(frame)
    assert p.verdict in ("pass", "fail") and p.threshold == manifest.threshold
    assert p.heatmap is not None and p.heatmap.shape == frame.shape[:2]
