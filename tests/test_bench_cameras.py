"""`bench --cameras N`: the whole pipeline with N looping replays, against the bare scorer's best."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edge_somad.bench import scorers as B
from edge_somad.bench.pipeline import bench_cameras, format_cameras_table
from edge_somad.cli.bench import bench
from edge_somad.contracts.geometry import resize_frame
from edge_somad.contracts.manifest import Calibration, load_manifest, save_manifest
from edge_somad.errors import ConfigError
from tests.test_bench import OrtTiny
from tests.test_trt_tinymodel import make_model_dir


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return B.write_video(B.sample_images(limit=5), tmp_path / "clip.avi", (160, 120))


@pytest.fixture
def model_dir(tmp_path: Path, clip: Path) -> Path:
    """The tiny graph, calibrated at the median score of the clip's frames: passes and fails both,
    so the pipeline encodes PNG heatmaps and finds defects as it would on a line."""
    import cv2

    d = make_model_dir(tmp_path / "tiny")
    m = load_manifest(d)
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while (got := cap.read())[0]:
        frames.append(resize_frame(got[1], m.preprocessing.height, m.preprocessing.width, m.preprocessing.resize))
    cap.release()
    scores = OrtTiny(d).score(np.stack(frames)).scores
    t = float(np.median(scores))
    save_manifest(d, dataclasses.replace(m, threshold=t, calibration=Calibration(
        method="manual", pixel_threshold=t, min_defect_area_px=4)))
    return d


def test_cli_cameras_two_runs_end_to_end_and_prints_the_table(model_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command()(bench)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["--model", str(model_dir), "--backend", "onnxruntime", "--batch", "1",
                                   "--iters", "12", "--warmup", "1", "--cameras", "2", "--fps", "30",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("backend") and "cameras" in line)
    assert lines[head].split()[:5] == ["backend", "cameras", "fps/cam", "phase", "frames/s"]
    assert lines[head + 1].split()[:4] == ["onnxruntime", "2", "max", "-"]
    assert lines[head + 2].split()[:4] == ["onnxruntime", "2", "30", "aligned"]
    assert lines[head + 3].split()[:4] == ["onnxruntime", "2", "30", "independent"]
    stage_head = next(i for i, line in enumerate(lines) if line.startswith("row "))
    assert lines[stage_head].split()[1:] == ["read", "prepare", "enqueue", "queue", "before_score", "score",
                                              "handoff", "encode", "send", "total"]
    assert [line.split("  ")[0] for line in lines[stage_head + 1:stage_head + 4]] == [
        "2 cam max", "2 cam 30 fps aligned", "2 cam 30 fps independent"]
    row, paced, free_running = json.loads(out.read_text())["cameras"]
    for r in (paced, free_running):
        assert r["fps_per_camera"] == 30 and r["frames"] == r["received"] == 24
        # every verdict's stages were recorded; total is capture -> sent of all 24
        assert r["stages"]["total"]["n"] == 24 and r["stages"]["score"]["n"] == 24
    assert paced["phases"] == [0.0, 0.0] and len(set(free_running["phases"])) == 2
    no_cameras = CliRunner().invoke(app, ["--model", str(model_dir), "--backend", "onnxruntime", "--fps", "5"])
    assert no_cameras.exit_code == 2 and "--fps 5 needs --cameras" in no_cameras.output
    # 12 frames per camera, every one received by the real SUB, in per-camera order, none an error
    assert row["cameras"] == 2 and row["frames"] == 24 and row["received"] == 24
    assert row["out_of_order"] == 0 and row["errors"] == 0
    assert row["pipeline_fps"] > 0 and row["bare_best_fps"] > 0
    assert row["ratio"] == round(row["pipeline_fps"] / row["bare_best_fps"], 3)
    assert row["bare_best_batch"] in (1, 2, 4, 8)
    assert row["bare_best_fps"] == max(row["bare_fps_per_batch"].values())
    assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
    assert row["max_batch"] <= 2  # default: one frame per camera per call
    assert row["bare_best_cpu_ms_per_frame"] > 0
    assert any(line.startswith("  2 cam max: host CPU") and "at most" in line for line in lines), res.output


def test_batches_form_across_looping_cameras_with_a_slow_scorer(model_dir: Path, clip: Path) -> None:
    """The clip has 5 frames and each camera runs 10: the replays loop. With scoring slower than
    decoding, every camera has a frame waiting, so calls are batches of all three cameras."""
    scorer = OrtTiny(model_dir, delay_s=0.03)
    rows = bench_cameras(model_dir, clip, "onnxruntime", "fp32", [3], 10, scorer=scorer)
    (row,) = rows
    assert row["frames"] == 30 and row["received"] == 30 and row["out_of_order"] == 0
    assert row["max_batch"] == 3 and row["mean_batch"] > 2.0
    assert scorer.closed
    table = format_cameras_table(rows)
    assert table.splitlines()[1].split()[:2] == ["onnxruntime", "3"]


def test_cameras_with_a_scorer_limited_to_two_frames(model_dir: Path, clip: Path) -> None:
    scorer = OrtTiny(model_dir, max_batch=2)
    (row,) = bench_cameras(model_dir, clip, "onnxruntime", "fp32", [3], 4, scorer=scorer)
    assert set(row["bare_fps_per_batch"]) == {1, 2}  # 4 and 8 skipped: above the graph's limit
    assert row["max_batch"] <= 2 and row["frames"] == 12


def test_bad_camera_counts_are_config_errors(model_dir: Path, clip: Path) -> None:
    for counts in ([], [0]):
        with pytest.raises(ConfigError, match="--cameras"):
            bench_cameras(model_dir, clip, "onnxruntime", "fp32", counts, 4, scorer=OrtTiny(model_dir))


# ---------------------------------------------------------------- line rate (--fps)

def test_paced_cameras_keep_up_with_no_drop_and_run_at_the_line_rate(model_dir: Path, clip: Path) -> None:
    rows = bench_cameras(model_dir, clip, "onnxruntime", "fp32", [2], 10, scorer=OrtTiny(model_dir), fps=20,
                         phase_modes=("aligned",))
    free, paced = rows
    assert free["fps_per_camera"] is None and paced["fps_per_camera"] == 20 and paced["phase"] == "aligned"
    assert paced["frames"] == paced["received"] == 20 and paced["errors"] == 0 and paced["out_of_order"] == 0
    assert paced["dropped"] == 0  # the tiny graph takes a few ms; 40 frames/s in all leaves it idle
    # the offered rate, not the box's best: 2 cameras x 20 frames/s (loose: a shared 2-core machine)
    assert 25 < paced["pipeline_fps"] < 50
    assert paced["p99_over_scorer_p50"] == round(paced["latency_p99_ms"] / paced["scorer_p50_ms"], 2)
    assert "max" in format_cameras_table(rows).splitlines()[1].split()


def test_a_line_faster_than_the_scorer_drops_frames_and_says_so(model_dir: Path, clip: Path) -> None:
    """60 ms a call against 2 x 50 frames/s: the cameras outrun the box, frames are dropped (counted),
    and every frame that was taken still gets its verdict."""
    scorer = OrtTiny(model_dir, delay_s=0.06)
    rows = bench_cameras(model_dir, clip, "onnxruntime", "fp32", [2], 12, scorer=scorer, fps=50)
    paced = rows[1]
    assert paced["dropped"] > 0
    assert paced["frames"] == paced["received"] == 24 and paced["errors"] == 0


def test_pacing_is_for_replays_within_a_sane_rate(model_dir: Path, clip: Path) -> None:
    from edge_somad.runtime.pipeline.camera import SourceSpec

    with pytest.raises(ConfigError, match="paces replays only"):
        SourceSpec("index", 0, fps=5)
    for bad in (0.0, -1.0, 5000.0):
        with pytest.raises(ConfigError, match="fps"):
            SourceSpec("file", str(clip), fps=bad)
    with pytest.raises(ConfigError, match="--fps"):
        bench_cameras(model_dir, clip, "onnxruntime", "fp32", [1], 4, scorer=OrtTiny(model_dir), fps=0)


def test_paced_replay_stamps_frames_at_its_ticks_and_counts_missed_ones(clip: Path) -> None:
    import threading
    import time

    from edge_somad.runtime.pipeline.camera import CameraSource, SourceSpec, _Capture

    def stamps(opener: type, fps: float, n: int) -> tuple[list[float], CameraSource]:
        cam = CameraSource("c", SourceSpec("file", str(clip), loop=True, fps=fps), threading.Condition(),
                           queue_size=100, opener=opener)
        cam.start()
        got: list[float] = []
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            item = cam.queue.pop()
            if item is None:
                time.sleep(0.002)
            else:
                got.append(item.monotonic)
        cam.stop()
        assert cam.join(5)
        return got, cam

    got, cam = stamps(_Capture, 25, 6)
    assert np.allclose(np.diff(got), 0.04, atol=1e-6)  # stamped at the ticks, not when decoded
    assert cam.drops == 0

    class SlowRead(_Capture):
        def read(self) -> tuple:
            time.sleep(0.05)  # a reader slower than the 100 frames/s line
            return super().read()

    got, cam = stamps(SlowRead, 100, 4)
    assert cam.missed_ticks > 0 and cam.drops >= cam.missed_ticks
    assert all(d >= 0.04 for d in np.diff(got))  # the ticks it skipped are not stamped on later frames


@pytest.mark.parametrize("threshold, share", [(1e9, 0.0), (1e-6, 1.0)])
def test_cli_video_folder_becomes_the_clip_and_the_fail_share_is_counted(model_dir: Path, tmp_path: Path,
                                                                        threshold: float, share: float) -> None:
    """--video DIR: the folder's images at their own size are the replayed line; the row says which share
    of its verdicts failed (fails carry heatmaps), counted from what the subscriber received."""
    import shutil

    import typer
    from typer.testing import CliRunner

    folder = tmp_path / "good"
    folder.mkdir()
    for p in B.sample_images(limit=3):
        shutil.copy(p, folder / p.name)
    (folder / "notes.txt").write_text("not an image")
    m = load_manifest(model_dir)
    save_manifest(model_dir, dataclasses.replace(m, threshold=threshold))
    app = typer.Typer()
    app.command()(bench)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["--model", str(model_dir), "--backend", "onnxruntime", "--batch", "1",
                                   "--iters", "4", "--warmup", "1", "--cameras", "1", "--video", str(folder),
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert f"clip: 3 images of {folder} at their own size" in res.output
    (row,) = json.loads(out.read_text())["cameras"]
    assert row["received"] == 4 and row["fail_share"] == share
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["--model", str(model_dir), "--backend", "onnxruntime", "--cameras", "1",
                                   "--video", str(empty)])
    assert res.exit_code == 2 and "is a folder without image files" in res.output, res.output


@pytest.mark.parametrize("cpu, bare, want", [
    # host = capture + publish + upkeep + subscriber + zeromq + other; the scorer's own groups do not count
    ({"capture": 2.0, "publish": 0.5, "scoring loop": 20.0, "native pool (ORT workers)": 10.0,
      "score lanes": 5.0, "subscriber": 0.5}, 27.0, {"host_cpu_ms": 3.0, "scorer_cpu_ms": 27.0, "ceiling": 0.9}),
    ({"capture": 0.0}, 10.0, {"host_cpu_ms": 0.0, "scorer_cpu_ms": 10.0, "ceiling": 1.0}),
    ({}, 27.0, None),  # no CPU figures (not Linux)
    ({"capture": 2.0}, None, None),  # the bare scorer's CPU unknown
])
def test_the_shared_core_ceiling(cpu: dict, bare: float | None, want: dict | None) -> None:
    from edge_somad.bench.stages import ceiling

    assert ceiling({"cpu_ms_per_frame": cpu, "bare_best_cpu_ms_per_frame": bare}) == want
