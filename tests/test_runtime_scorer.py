"""OrtScorer against numpy, the graph-contract checks, and the backend decision table."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_somad.contracts.geometry import batch_frames
from edge_somad.contracts.manifest import EngineInfo, load_manifest
from edge_somad.errors import ArtifactError, BackendUnavailableError, ConfigError, InputError
from edge_somad.runtime.scorers.backends import open_scorer, select_backend
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.runtime.scorers.scorer import Scorer
from tests.helpers.runtime import H, W, build_onnx, defect, grey, make_model_dir

CPU = ["CPUExecutionProvider"]
GPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def reference(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = frames.astype(np.float32)
    amap = (f[..., 0] - f[..., 2]) / 255.0
    return amap, amap.reshape(len(f), -1).max(axis=1)


def test_ort_scorer_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    with OrtScorer(build_onnx(tmp_path / "m.onnx"), H, W, intra_op_threads=1) as s:
        assert isinstance(s, Scorer)
        assert (s.backend, s.device, s.max_batch) == ("onnxruntime", "CPUExecutionProvider", None)
        res = s.score(frames)
    amap, score = reference(frames)
    assert res.maps.dtype == np.float32 and res.maps.shape == (3, H, W) and res.scores.shape == (3,)
    np.testing.assert_allclose(res.maps, amap, atol=1e-6)
    np.testing.assert_allclose(res.scores, score, atol=1e-6)


def test_cpu_scorer_runs_a_batch_image_by_image_with_the_same_result(tmp_path: Path) -> None:
    """On CPU a batch is run one image per session call (its best rate); results equal a whole-batch run."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    with OrtScorer(build_onnx(tmp_path / "m.onnx"), H, W, lanes=1) as s:
        assert s.whole_batches is False and s.lanes == 1
        calls: list[int] = []
        run = s._sess.run

        class Spy:  # records the batch of every session call, then runs it
            def run(self, names: list[str], feed: dict) -> list:
                calls.append(len(feed["frames"]))
                return run(names, feed)

        s._sess = Spy()
        split = s.score(frames)
        s.whole_batches = True
        whole = s.score(frames)
    assert calls == [1, 1, 1, 1, 4]
    np.testing.assert_array_equal(split.maps, whole.maps)
    np.testing.assert_array_equal(split.scores, whole.scores)
    np.testing.assert_allclose(split.maps, reference(frames)[0], atol=1e-6)


def test_cpu_lanes_score_the_frames_of_a_batch_side_by_side_with_the_same_result(tmp_path: Path) -> None:
    """lanes=2: every frame of a batch is its own single-threaded run, two at once on the lane threads;
    a single frame stays on the all-cores session. Same numbers as one whole-batch run and the float64
    reference. The spy's barrier only opens when two runs are inside it at the same time, so lanes that
    ran one after the other fail here (BrokenBarrierError after 10 s)."""
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    with OrtScorer(build_onnx(tmp_path / "m.onnx"), H, W, lanes=2) as s:
        assert s.lanes == 2
        lane_run, main_run = s._lane_sess.run, s._sess.run
        meet = threading.Barrier(2, timeout=10)
        seen: list[tuple[int, str]] = []
        main_calls: list[int] = []

        class LaneSpy:
            def run(self, names: list[str], feed: dict) -> list:
                seen.append((len(feed["frames"]), threading.current_thread().name))
                meet.wait()
                return lane_run(names, feed)

        class MainSpy:
            def run(self, names: list[str], feed: dict) -> list:
                main_calls.append(len(feed["frames"]))
                return main_run(names, feed)

        s._lane_sess, s._sess = LaneSpy(), MainSpy()
        lanes = s.score(frames)
        one = s.score(frames[:1])
        s.whole_batches = True
        whole = s.score(frames)
    assert [n for n, _ in seen] == [1, 1, 1, 1] and all(name.startswith("score-lane") for _, name in seen)
    assert main_calls == [1, 4]  # the single frame, then the whole batch
    np.testing.assert_array_equal(lanes.maps, whole.maps)
    np.testing.assert_array_equal(lanes.scores, whole.scores)
    np.testing.assert_array_equal(one.maps, whole.maps[:1])
    np.testing.assert_allclose(lanes.maps, reference(frames)[0], atol=1e-6)
    with pytest.raises(ConfigError, match="lanes=0"):
        OrtScorer(build_onnx(tmp_path / "n.onnx"), H, W, lanes=0)


def test_ort_scorer_rejects_wrong_batch(tmp_path: Path) -> None:
    with OrtScorer(build_onnx(tmp_path / "m.onnx"), H, W) as s, pytest.raises(InputError, match="expected"):
        s.score(np.zeros((1, H + 1, W, 3), np.uint8))


def test_contract_violations_name_received_and_expected(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"inputs \[\('images'.*expected.*'frames'"):
        OrtScorer(build_onnx(tmp_path / "a.onnx", input_name="images"), H, W)
    with pytest.raises(ArtifactError, match=r"shape \['batch', 64, 96, 3\]; expected \[batch, 32, 96, 3\]"):
        OrtScorer(build_onnx(tmp_path / "b.onnx"), 32, W)


def test_cuda_requested_without_cuda_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        OrtScorer(build_onnx(tmp_path / "m.onnx"), H, W, providers=GPU)


def _engine(precision: str) -> EngineInfo:
    return EngineInfo(f"model.{precision}.engine", precision, "10.0", "GPU", "9.0", "x", max_batch=4)


@pytest.mark.parametrize(
    ("backend", "precision", "trt", "providers", "engines", "int8", "expect"),
    [
        ("auto", "fp32", False, CPU, (), False, ("onnxruntime", "model.onnx", ("CPUExecutionProvider",))),
        ("auto", "fp32", False, GPU, (), False,
         ("onnxruntime", "model.onnx", ("CUDAExecutionProvider", "CPUExecutionProvider"))),
        ("auto", "fp16", True, GPU, ("fp16",), False, ("tensorrt", "model.fp16.engine", ())),
        ("auto", "fp32", True, GPU, ("fp16",), False,  # engine of another precision: not used
         ("onnxruntime", "model.onnx", ("CUDAExecutionProvider", "CPUExecutionProvider"))),
        ("auto", "int8", False, CPU, (), True, ("onnxruntime", "model.int8.onnx", ("CPUExecutionProvider",))),
        ("onnxruntime", "fp32", True, CPU, ("fp32",), False,
         ("onnxruntime", "model.onnx", ("CPUExecutionProvider",))),
        ("tensorrt", "int8", True, GPU, ("int8",), False, ("tensorrt", "model.int8.engine", ())),
        ("torch", "fp32", False, CPU, (), False, ("torch", None, ())),
        ("tensorrt", "fp32", False, CPU, (), False, BackendUnavailableError),
        ("tensorrt", "fp16", True, GPU, ("fp32",), False, ArtifactError),
        ("onnxruntime", "int8", False, CPU, (), False, ArtifactError),
        ("auto", "int8", False, CPU, (), False, ArtifactError),
        ("onnxruntime", "fp16", False, CPU, (), False, ConfigError),
        ("auto", "fp16", False, GPU, (), False, ConfigError),  # no engine: never a silent fp32
        ("torch", "int8", False, CPU, (), False, ConfigError),
        ("openvino", "fp32", False, CPU, (), False, ConfigError),
        ("auto", "bf16", False, CPU, (), False, ConfigError),
    ],
)
def test_select_backend_table(
    tmp_path: Path, backend, precision, trt, providers, engines, int8, expect
) -> None:
    d = make_model_dir(tmp_path / "m", int8=int8, engines=tuple(_engine(p) for p in engines))
    manifest = load_manifest(d)
    if isinstance(expect, type):
        with pytest.raises(expect):
            select_backend(manifest, backend, precision, tensorrt_installed=trt, ort_providers=providers)
        return
    choice = select_backend(manifest, backend, precision, tensorrt_installed=trt, ort_providers=providers)
    assert (choice.backend, choice.artifact, choice.providers) == expect
    assert choice.precision == precision and choice.reason


def test_open_scorer_auto_logs_choice_and_scores(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = make_model_dir(tmp_path / "m")
    with caplog.at_level(logging.INFO, logger="edge_somad.runtime.scorers.backends"):
        scorer = open_scorer(d)
    assert "backend onnxruntime/fp32 (auto: tensorrt not importable" in caplog.text
    res = scorer.score(batch_frames([grey(), defect()], H, W, "letterbox"))
    assert res.scores[0] == 0.0 and res.scores[1] > 0.9
    scorer.close()


def test_open_scorer_explicit_errors(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        open_scorer(d, "tensorrt", "fp16")
    with pytest.raises(ArtifactError, match="edge-somad calibrate --int8"):
        open_scorer(d, "onnxruntime", "int8")
    with pytest.raises(ConfigError, match="fp16"):
        open_scorer(d, "onnxruntime", "fp16")


def test_open_scorer_int8_file_missing_or_replaced(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m", int8=True)
    assert open_scorer(d, "onnxruntime", "int8").device == "CPUExecutionProvider"
    (d / "model.int8.onnx").unlink()
    with pytest.raises(ArtifactError, match="calibrate --int8"):
        open_scorer(d, "onnxruntime", "int8")


def test_open_scorer_replaced_onnx_is_a_mismatch(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    build_onnx(d / "model.onnx", height=32)  # a different graph under the manifest's name
    with pytest.raises(ArtifactError, match="sha256"):
        open_scorer(d)


SMT_2C4T = "".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 2}\n\n" for i in range(4))


@pytest.mark.parametrize("cpuinfo, threads, want", [
    (SMT_2C4T, None, "min2"),  # 2 cores with 2 threads each: one lane per core, within the usable CPUs
    ("processor\t: 0\nphysical id\t: 0\ncore id\t\t: 0\n", None, 1),  # one core: no lanes
    ("processor\t: 0\nprocessor\t: 1\n", None, "usable"),  # no core ids (ARM): the usable CPUs
    (SMT_2C4T, 3, 3),  # intra-op threads set: one lane per thread
])
def test_cpu_lanes_follow_ort_default_threads(tmp_path: Path, cpuinfo: str, threads: int | None,
                                              want: int | str) -> None:
    from edge_somad.runtime.scorers.cpu_cores import cpu_lanes, physical_cores, usable_cpus

    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    expected = {"min2": min(2, usable_cpus()), "usable": usable_cpus()}.get(want, want)  # type: ignore[arg-type]
    assert cpu_lanes(threads, path) == expected
    assert physical_cores(SMT_2C4T) == 2 and physical_cores("processor\t: 0\n") is None
