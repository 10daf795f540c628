"""edge_somad.bench.scorers: rows per backend, unavailable ones explained, the CLI command, the bench video."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge_somad.bench import scorers as B
from edge_somad.errors import BackendUnavailableError, ConfigError, InputError
from edge_somad.runtime.scorers.scorer import ScoreResult, check_batch
from tests.test_trt_tinymodel import H, W, make_model_dir


class OrtTiny:
    """A Scorer on the tiny graph through plain onnxruntime (independent of runtime.scorers.backends)."""

    def __init__(self, model_dir: Path, delay_s: float = 0.0, max_batch: int | None = None,
                 backend: str = "onnxruntime") -> None:
        import onnxruntime as ort

        self.backend, self.device, self.height, self.width = backend, "CPUExecutionProvider", H, W
        self._sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        self.delay_s, self.max_batch, self.calls, self.closed = delay_s, max_batch, 0, False

    def score(self, frames: np.ndarray) -> ScoreResult:
        check_batch(frames, H, W, self.max_batch)
        self.calls += 1
        time.sleep(self.delay_s)
        amap, score = self._sess.run(["anomaly_map", "score"], {"frames": frames})
        return ScoreResult(scores=score, maps=amap)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "tiny")


def test_rows_for_every_backend_with_unavailable_explained(model_dir: Path) -> None:
    opened: dict[str, OrtTiny] = {}

    def factory(d: Path, backend: str, precision: str) -> OrtTiny:
        if backend == "tensorrt":
            raise BackendUnavailableError("tensorrt is not installed here")
        s = OrtTiny(d, delay_s=0.01 if backend == B.TORCH_REF else 0.0,
                    max_batch=2 if backend == "onnxruntime" else None)
        opened[backend] = s
        return s

    rows = B.bench_scorers(model_dir, [B.TORCH_REF, "onnxruntime", "tensorrt"], "fp32", [1, 2, 4],
                           iters=5, warmup=2, scorer_factory=factory)
    by = {r["backend"]: r for r in rows}
    assert [r["backend"] for r in rows] == [B.TORCH_REF, "onnxruntime", "tensorrt"]
    assert by["tensorrt"]["status"] == "unavailable"
    assert by["tensorrt"]["reason"] == "tensorrt is not installed here"
    assert by["tensorrt"]["model_file"] == "model.fp32.engine" and by["tensorrt"]["model_bytes"] is None

    ort_row = by["onnxruntime"]
    assert ort_row["status"] == "ok" and ort_row["device"] == "CPUExecutionProvider"
    assert 0 < ort_row["latency_ms_p50"] <= ort_row["latency_ms_p99"]
    assert ort_row["model_bytes"] == (model_dir / "model.onnx").stat().st_size
    timed = {b["batch"]: b for b in ort_row["batches"]}
    assert "images_per_s" in timed[1] and "images_per_s" in timed[2]
    assert "batch size 4" in timed[4]["skipped"]  # InputError: above this scorer's max batch
    assert ort_row["best_batch"] in (1, 2)
    assert ort_row["throughput_ips"] == max(timed[b]["images_per_s"] for b in (1, 2))
    # warm-up + timed calls, per measured batch size (batch 1 timed once, batch 4 failed on its first call)
    assert opened["onnxruntime"].calls == (2 + 5) * 2 and opened["onnxruntime"].closed
    import onnxruntime as ort

    # the threads the session really has (ORT default: one per physical core), and the library version
    assert ort_row["library"] == f"onnxruntime {ort.__version__}" and ort_row["gpu"] is None
    assert ort_row["threads"] == _physical_cores() and "default" in ort_row["threads_note"]

    torch_row = by[B.TORCH_REF]
    assert torch_row["model_file"] == "arrays.npz" and torch_row["latency_ms_p50"] >= 10.0
    assert torch_row["speedup_vs_torch"] == 1.0
    expected = round(torch_row["latency_ms_p50"] / ort_row["latency_ms_p50"], 2)
    assert ort_row["speedup_vs_torch"] == expected > 1.0

    table = B.format_table(rows)
    assert "unavailable: tensorrt is not installed here" in table
    assert table.splitlines()[0].split()[:2] == ["backend", "precision"]


def _physical_cores() -> int | None:
    from edge_somad.bench.machine import cpu_info

    return cpu_info().physical


def test_real_backends_on_this_machine(model_dir: Path) -> None:
    """Default factory (runtime.scorers.backends.open_scorer): ORT runs on CPU; TensorRT is explained, not skipped."""
    rows = B.bench_scorers(model_dir, ["onnxruntime", "tensorrt"], "fp32", [1, 2], iters=3, warmup=1)
    by = {r["backend"]: r for r in rows}
    assert by["onnxruntime"]["status"] == "ok" and by["onnxruntime"]["best_batch"] in (1, 2)
    assert by["tensorrt"]["status"] == "unavailable" and by["tensorrt"]["reason"]  # no engine built here


def test_bad_arguments_are_config_errors(model_dir: Path) -> None:
    from edge_somad.errors import ConfigError

    for kwargs in ({"backends": []}, {"batches": [0]}, {"iters": 0}):
        args = {"backends": ["onnxruntime"], "batches": [1], "iters": 1, **kwargs}
        with pytest.raises(ConfigError):
            B.bench_scorers(model_dir, args["backends"], "fp32", args["batches"], args["iters"], 0)


def test_cli_prints_table_and_writes_json(model_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from edge_somad.cli.bench import bench

    app = typer.Typer()
    app.command()(bench)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["--model", str(model_dir), "--backend", "onnxruntime", "--backend",
                                   "tensorrt", "--batch", "1", "--iters", "3", "--warmup", "1",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "tensorrt" in res.output and "unavailable:" in res.output
    assert "model.onnx" in res.output  # artifact sizes line
    import onnxruntime as ort

    from edge_somad.graph_cost import graph_cost

    lines = res.output.splitlines()
    assert lines[0].startswith("machine: ") and f"onnxruntime {ort.__version__}" in lines[0]
    assert "GFLOP/s  % peak" in lines[1]
    assert any(ln.startswith("graph cost per frame") for ln in lines)
    assert any(ln.startswith("peak: fp32 GEMM") for ln in lines)
    data = json.loads(out.read_text())
    assert data["machine"]["line"] == lines[0]
    cost = graph_cost(model_dir / "model.onnx")
    assert data["graph_cost"]["gflop_per_frame"] == round(cost.flops / 1e9, 4) > 0
    row = data["results"][0]
    achieved = cost.flops / (row["latency_ms_p50"] / 1e3) / 1e9
    assert row["achieved_gflops"] == round(achieved, 3)
    (peak,) = data["peak"]
    assert peak["threads"] == row["threads"] and row["peak_fraction"] == round(achieved / peak["gflops"], 3)
    assert [r["backend"] for r in data["results"]] == ["onnxruntime", "tensorrt"]
    assert data["sizes"]["model.onnx"] == (model_dir / "model.onnx").stat().st_size
    assert data["sizes"]["arrays.npz"] > 0


def test_bench_video_from_bundled_test_images(tmp_path: Path) -> None:
    import cv2

    images = B.sample_images(limit=6)
    assert len(images) == 6 and all("test" in p.parts for p in images)
    video = B.write_video(images, tmp_path / "clip.avi", (160, 120), fps=5)
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (120, 160, 3)


def test_cli_pipeline_runs_on_onnxruntime(model_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from edge_somad.cli.bench import bench

    app = typer.Typer()
    app.command()(bench)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["--model", str(model_dir), "--backend", "onnxruntime", "--batch", "1",
                                   "--iters", "4", "--warmup", "1", "--pipeline", "--json", str(out)])
    assert res.exit_code == 0, res.output
    pipe = json.loads(out.read_text())["pipeline"]
    assert [p["backend"] for p in pipe] == ["onnxruntime"]
    assert pipe[0]["frames"] == 4 and pipe[0]["pipeline_fps"] > 0


def test_input_error_is_not_swallowed_at_batch_one(model_dir: Path) -> None:
    """A scorer that rejects batch 1 is broken, not 'unavailable': the error propagates."""
    class Broken(OrtTiny):
        def score(self, frames: np.ndarray) -> ScoreResult:
            raise InputError("always wrong")

    with pytest.raises(InputError):
        B.bench_scorers(model_dir, ["onnxruntime"], "fp32", [1], 1, 0,
                        scorer_factory=lambda d, b, p: Broken(d))


def test_cli_error_exit_for_a_directory_that_was_not_exported(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edge_somad.cli import app

    res = CliRunner().invoke(app, ["bench", "--model", str(tmp_path), "--backend", "onnxruntime"])
    assert res.exit_code == 2
    assert "manifest.json" in res.output and "edge-somad export" in res.output


def test_write_video_keeps_native_size_and_refuses_mixed_sizes(tmp_path: Path) -> None:
    import cv2

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(b), np.zeros((64, 64, 3), np.uint8))
    video = B.write_video([a, a], tmp_path / "v.avi", None)
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (48, 64, 3)
    with pytest.raises(ConfigError, match=r"b\.png is 64x64; the video is 64x48"):
        B.write_video([a, b], tmp_path / "w.avi", None)


def test_machine_line_without_onnx_says_what_is_missing(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge install has onnxruntime but not onnx: the machine line still prints, the cost says why not."""
    rows = B.bench_scorers(model_dir, ["onnxruntime"], "fp32", [1], iters=2, warmup=0)
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # makes `import onnx` raise ImportError
    truth = B.machine_and_cost(model_dir, rows)
    assert truth["machine"]["line"].startswith("machine: ") and truth["graph_cost"] is None
    assert "pip install onnx" in truth["graph_cost_line"] and "peak_fraction" not in rows[0]
