"""`calibrate` end to end on the stand-in contract graph: real PNGs, split.json, ORT scorer, manifest."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from edge_somad.calibration import int8_gate, quantize
from edge_somad.calibration.calibrate import calibrate_model, run_calibrate
from edge_somad.calibration.frames import load_holdout_frames, score_all
from edge_somad.calibration.int8_step import quantize_and_check
from edge_somad.calibration.threshold import (
    empirical_threshold,
    image_chi2_threshold,
    min_defect_area,
    pixel_threshold,
)
from edge_somad.cli.calibrate import calibrate
from edge_somad.contracts.manifest import load_manifest, save_manifest, sha256_file
from edge_somad.errors import ArtifactError, ConfigError, DatasetError
from edge_somad.runtime.scorers.backends import open_scorer
from tests.test_calibration_quantize import H, W, make_standin_model_dir, synthetic_frames

N_HOLDOUT, N_TRAIN = 12, 10


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("calibrate")(calibrate)

    @app.callback()
    def main() -> None:  # forces `calibrate` to be a subcommand, as in the real CLI
        """edge-somad (test)."""

    return app


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """Stand-in model + real PNGs (2x the model size, so resizing happens) + split.json."""
    model_dir = make_standin_model_dir(tmp_path)
    data_root = tmp_path / "data"
    (data_root / "train" / "good").mkdir(parents=True)
    frames = synthetic_frames(N_HOLDOUT + N_TRAIN, seed=3, height=2 * H, width=2 * W)
    rel = []
    for i, f in enumerate(frames):
        rel.append(f"train/good/{i:03d}.png")
        assert cv2.imwrite(str(data_root / rel[-1]), f)
    # Holdout: half relative to data_root, half absolute (split.json may hold either).
    holdout = [p if i % 2 else str(data_root / p) for i, p in enumerate(rel[:N_HOLDOUT])]
    split = {"train": rel[N_HOLDOUT:], "holdout": holdout, "data_root": str(data_root), "category": "standin"}
    (model_dir / "split.json").write_text(json.dumps(split))
    return model_dir


def test_calibrate_model_writes_threshold_pixel_rule_and_area(model_dir: Path) -> None:
    frames = synthetic_frames(N_HOLDOUT, seed=11)
    with open_scorer(model_dir, "onnxruntime", "fp32") as scorer:
        scores, maps = score_all(scorer, frames)
        m = calibrate_model(model_dir, frames, 0.1, "empirical", 0.99, None, scorer, source="test")
    est = empirical_threshold(scores, 0.1)
    assert m.threshold == est.threshold
    assert np.count_nonzero(scores >= m.threshold) == 1  # floor(0.1 * 12) = 1 reject allowed
    cal = m.calibration
    assert (cal.method, cal.n_images, cal.target_frr) == ("empirical-quantile", N_HOLDOUT, 0.1)
    assert cal.pixel_threshold == float(np.quantile(maps, 0.99, method="higher"))
    # measured at the level boxes are drawn at: never below the image threshold (runtime/pipeline/defects.py)
    assert cal.min_defect_area_px == min_defect_area(maps, max(cal.pixel_threshold, m.threshold))
    assert cal.details["frr_upper_95"] == est.frr_upper_95 and cal.details["note"] == est.note
    assert cal.details["chi2_fit"] == {"skipped": "no patch distances given"}
    # line-health references for `run`: the good scores' quantiles, and input statistics (this
    # stand-in was never fitted, so they come from the calibration frames)
    ref = m.reference
    assert ref["scores"]["n"] == N_HOLDOUT and len(ref["scores"]["quantiles"]) == 101
    assert ref["scores"]["quantiles"][0] == scores.min() and ref["scores"]["quantiles"][-1] == scores.max()
    assert ref["input"]["n"] == N_HOLDOUT and {"brightness", "contrast", "sharpness"} <= ref["input"].keys()
    assert load_manifest(model_dir) == m  # saved, and model.onnx still matches its sha256


def test_calibrate_model_robust_is_the_default_rule(model_dir: Path) -> None:
    from edge_somad.calibration.calibrate import DEFAULT_METHOD
    from edge_somad.calibration.threshold import robust_threshold

    frames = synthetic_frames(N_HOLDOUT, seed=13)
    with open_scorer(model_dir, "onnxruntime", "fp32") as scorer:
        scores, _ = score_all(scorer, frames)
        m = calibrate_model(model_dir, frames, 0.05, DEFAULT_METHOD, 0.99, None, scorer)
    est = robust_threshold(scores, 0.05)
    assert DEFAULT_METHOD == "robust" and m.calibration.method == "robust-normal"
    assert m.threshold == est.threshold and m.calibration.details["note"] == est.note
    assert m.calibration.details["empirical"]["threshold"] == empirical_threshold(scores, 0.05).threshold


def test_calibrate_model_chi2_with_patch_distances(model_dir: Path) -> None:
    frames = synthetic_frames(N_HOLDOUT, seed=12)
    patch_sq = np.random.default_rng(0).chisquare(4, (N_HOLDOUT, 16, 24))  # d = 4 in the stand-in
    with open_scorer(model_dir, "onnxruntime", "fp32") as scorer:
        m = calibrate_model(model_dir, frames, 0.05, "chi2", 0.999, 7, scorer, patch_sq_distances=patch_sq)
    report = m.calibration.details["chi2_fit"]
    assert report["fits"] is True and report["n_patches"] == patch_sq.size
    assert m.threshold == pytest.approx(image_chi2_threshold(4, 0.05, 16 * 24, report["scale_estimate"]))
    assert m.calibration.method == "chi2" and m.calibration.min_defect_area_px == 7
    assert "empirical" in m.calibration.details  # the data-driven estimate is kept for comparison


def test_cli_calibrate_from_split(model_dir: Path) -> None:
    onnx_before = sha256_file(model_dir / "model.onnx")
    result = CliRunner().invoke(_app(), ["calibrate", "--model", str(model_dir), "--target-frr", "0.1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = ("threshold", "n images", "achieved FRR", "FRR 95% upper", "pixel threshold", "min defect area")
    assert all(row in result.output for row in rows)
    assert "needs >= 10" not in result.output  # 12 images: a 10% target is checkable
    m = load_manifest(model_dir)
    assert m.threshold is not None and m.calibration.n_images == N_HOLDOUT
    assert "held-out" in m.calibration.details["source"]
    # No torch model can be rebuilt from the stand-in dir: the chi2 report is skipped, not a crash.
    assert "skipped" in m.calibration.details["chi2_fit"]
    assert sha256_file(model_dir / "model.onnx") == onnx_before  # never a re-export


def test_cli_calibrate_method_chi2_without_patch_grid(model_dir: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["calibrate", "--model", str(model_dir), "--method", "chi2", "--target-frr", "0.01"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    m = load_manifest(model_dir)
    # No patch grid known: the union bound runs over every map pixel (conservative), scale 1.
    assert m.threshold == pytest.approx(image_chi2_threshold(4, 0.01, H * W))
    assert "map pixels" in m.calibration.details["note"]


def test_cli_calibrate_int8(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stand-in is a random toy (fp32 image AUROC ~0.6 on its tiny synthetic defects), whose metrics
    # move by ~0.01 under any rounding; a real model passes the 0.005 limit (test_calibration_hazelnut).
    monkeypatch.setattr(int8_gate, "MAX_DROP", 0.05)
    result = CliRunner().invoke(
        _app(), ["calibrate", "--model", str(model_dir), "--target-frr", "0.1", "--int8"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "model.int8.onnx" in result.output and "MiB" in result.output
    assert "int8 accuracy    usable: drop image AUROC" in result.output
    assert "(limit 0.05 on both AUROC)" in result.output
    m = load_manifest(model_dir)
    drop = m.calibration.details["int8"]["accuracy_drop"]
    assert m.calibration.details["int8"]["usable"] and drop["usable"] and drop["limit"] == 0.05
    assert drop["n_good"] == N_HOLDOUT and drop["n_synthetic"] == N_HOLDOUT * 3 * 10  # >= 360
    assert set(drop["drop"]) == {"image_auroc", "pixel_auroc", "pro"}
    assert all(drop["drop"][k] == pytest.approx(drop["fp32"][k] - drop["int8"][k]) for k in drop["drop"])
    assert m.int8_onnx == "model.int8.onnx"
    assert m.int8_onnx_sha256 == sha256_file(model_dir / "model.int8.onnx")
    check = m.calibration.details["int8"]
    assert check["calibrated_on"] == f"{N_TRAIN} training-split images"
    # The stand-in has no arrays.npz: statistics cannot be refit, and the output says so.
    assert check["statistics"].startswith("fp32 fit's (no arrays.npz")
    assert "int8 statistics  fp32 fit's" in result.output
    assert check["score_rel_diff_max_abs"] < 0.1
    with open_scorer(model_dir, "onnxruntime", "int8") as q8:
        s8, maps8 = score_all(q8, load_holdout_frames(model_dir))
    assert check["threshold"] == empirical_threshold(s8, 0.1).threshold  # int8's own threshold
    assert m.pixel_threshold_for("int8") == pixel_threshold(maps8, 0.999)  # and its own pixel threshold
    assert m.pixel_threshold_for("fp16") == m.pixel_threshold_for("fp32") == m.calibration.pixel_threshold
    assert "int8 threshold" in result.output
    assert m.threshold is not None  # the threshold survives the int8 manifest update


def _broken_quantize(real: Callable[..., Path]) -> Callable[..., Path]:
    """quantize_int8, then scrambled int8 weights (a quantizer bug): the graph runs, scores are wrong."""
    def broken(model_dir: Path, *args: object, **kwargs: object) -> Path:
        path = real(model_dir, *args, **kwargs)
        model = onnx.load(str(path))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4:
                scrambled = rng.integers(-60, 60, tuple(init.dims)).astype(np.int8)
                init.CopyFrom(numpy_helper.from_array(scrambled, init.name))
        onnx.save(model, str(path))
        m = load_manifest(model_dir)
        save_manifest(model_dir, dataclasses.replace(m, int8_onnx_sha256=sha256_file(path)))
        return path

    return broken


def test_cli_calibrate_int8_refuses_a_graph_that_loses_accuracy(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(int8_gate, "MAX_DROP", 0.05)  # as above: the good graph is usable at this limit
    args = ["calibrate", "--model", str(model_dir), "--target-frr", "0.1", "--int8"]
    assert CliRunner().invoke(_app(), args).exit_code == 0
    assert load_manifest(model_dir).int8_onnx == "model.int8.onnx"
    monkeypatch.setattr(quantize, "quantize_int8", _broken_quantize(quantize.quantize_int8))
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output
    assert "error: int8 not usable: the " in result.output and "exceeds 0.05" in result.output
    m = load_manifest(model_dir)
    check = m.calibration.details["int8"]
    assert not check["usable"] and check["accuracy_drop"]["max_drop"] > 0.05
    assert f"{check['accuracy_drop']['max_drop']:.4f}" in result.output  # the numbers are in the message
    # The earlier usable graph is gone from the manifest; the fp32 calibration stays.
    assert m.int8_onnx is None and m.int8_onnx_sha256 is None and "int8" not in m.precision_thresholds
    assert m.threshold is not None and (model_dir / "model.int8.onnx").is_file()
    with pytest.raises(ArtifactError, match="names no int8 ONNX"):
        open_scorer(model_dir, "onnxruntime", "int8")


def test_int8_gate_limit_is_enforced_on_the_same_graph(model_dir: Path) -> None:
    """One graph, two limits: below its measured drop it is refused, at it it is usable."""
    frames = load_holdout_frames(model_dir)
    m = quantize_and_check(model_dir, frames, 0.1, "test", max_drop=1.0)
    drop = m.calibration.details["int8"]["accuracy_drop"]
    assert m.int8_onnx and drop["usable"]
    with pytest.raises(ArtifactError, match="int8 not usable"):
        quantize_and_check(model_dir, frames, 0.1, "test", max_drop=drop["max_drop"] - 1e-6)
    assert load_manifest(model_dir).int8_onnx is None
    assert quantize_and_check(model_dir, frames, 0.1, "test", max_drop=drop["max_drop"]).int8_onnx


def test_cli_calibrate_from_folder(tmp_path: Path) -> None:
    model_dir = make_standin_model_dir(tmp_path)  # no split.json at all
    folder = tmp_path / "good"
    folder.mkdir()
    for i, f in enumerate(synthetic_frames(5, seed=4, height=H + 10, width=W - 6)):
        cv2.imwrite(str(folder / f"{i}.png"), f)
    (folder / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(
        _app(), ["calibrate", "--model", str(model_dir), "--calibration-dir", str(folder), "--min-area", "9",
                 "--pixel-quantile", "0.99", "--backend", "onnxruntime", "--no-int8"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "needs >= 200 good images" in result.output and "you gave 5" in result.output
    m = load_manifest(model_dir)
    assert m.calibration.n_images == 5 and m.calibration.min_defect_area_px == 9
    assert m.calibration.details["pixel_rule"].startswith("quantile 0.99 ")
    assert m.int8_onnx is None and not (model_dir / "model.int8.onnx").exists()


@pytest.mark.parametrize(
    ("setup", "args", "error", "match"),
    [
        ("no_split", [], ArtifactError, "split.json does not exist"),
        ("empty_holdout", [], DatasetError, "0 held-out good images"),
        ("missing_image", [], DatasetError, "nope.png does not exist"),
        ("empty_folder", ["--calibration-dir", "{tmp}/empty"], DatasetError, "holds no"),
        ("none", ["--method", "bayes"], ConfigError, "bayes"),
    ],
)
def test_cli_calibrate_errors(
    model_dir: Path, tmp_path: Path, setup: str, args: list[str], error: type, match: str
) -> None:
    split_path = model_dir / "split.json"
    split = json.loads(split_path.read_text())
    if setup == "no_split":
        split_path.unlink()
    elif setup == "empty_holdout":
        split_path.write_text(json.dumps({**split, "holdout": []}))
    elif setup == "missing_image":
        split_path.write_text(json.dumps({**split, "holdout": [*split["holdout"], "train/good/nope.png"]}))
    elif setup == "empty_folder":
        (tmp_path / "empty").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(_app(), ["calibrate", "--model", str(model_dir), *args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and match in result.output
    with pytest.raises(error, match=match):  # the library function raises the typed error
        run_calibrate(model_dir, 0.005, Path(args[1]) if "--calibration-dir" in args else None,
                      args[1] if "--method" in args else "empirical", 0.999, None, False, "onnxruntime")
    assert load_manifest(model_dir).threshold is None  # nothing half-written


def test_load_holdout_frames_resizes_split_images(model_dir: Path) -> None:
    frames = load_holdout_frames(model_dir)
    assert frames.shape == (N_HOLDOUT, H, W, 3) and frames.dtype == np.uint8


def test_cli_calibrate_from_a_commissioning_video(tmp_path: Path) -> None:
    """A recording of good parts (MJPG .avi, non-square frames) calibrates like a folder of its frames."""
    model_dir = make_standin_model_dir(tmp_path)
    frames = synthetic_frames(30, seed=5, height=H + 10, width=W + 24)
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W + 24, H + 10))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    result = CliRunner().invoke(
        _app(), ["calibrate", "--model", str(model_dir), "--calibration-video", str(video), "--backend",
                 "onnxruntime", "--no-int8"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    m = load_manifest(model_dir)
    assert m.calibration.n_images == 30 and "30 frames spread over the 30 of" in m.calibration.details["source"]
    # 30 images: enough not to warn about their number.
    assert not any("only 30" in w for w in m.calibration.details["warnings"])


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: p, "does not exist"),
    (lambda p: (p.write_bytes(b"not a video at all" * 10), p)[1], "decoded no frame"),
])
def test_calibration_video_errors_name_the_file(tmp_path: Path, make: Callable[[Path], Path], match: str) -> None:
    model_dir = make_standin_model_dir(tmp_path)
    with pytest.raises(DatasetError, match=match):
        run_calibrate(model_dir, 0.005, None, "robust", 0.999, None, False, "onnxruntime",
                      calibration_video=make(tmp_path / "clip.avi"))


def test_calibration_warns_about_few_or_spread_goods_and_not_otherwise() -> None:
    from edge_somad.calibration.threshold import calibration_warnings

    rng = np.random.default_rng(0)
    assert calibration_warnings(rng.normal(10, 1, 60), 0.005) == []
    few = calibration_warnings(rng.normal(10, 1, 8), 0.005)
    assert len(few) == 1 and "only 8 good calibration images" in few[0]
    spread = calibration_warnings(np.r_[rng.normal(10, 0.2, 48), rng.uniform(12, 14, 12)], 0.005)
    assert len(spread) == 1 and "too spread" in spread[0]
