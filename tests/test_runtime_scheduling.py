"""Scheduling of the inspection loop: oldest capture first, one frame per call for a scorer that runs
images one by one, preparation (resize, input checks) in the capture threads, per-stage marks of every
verdict, and paced replays whose ticks are phase-aligned or not."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import CameraSource, FrameItem, SourceSpec
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.pipeline.trace import MARKS, STAGES, Trace
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.runtime import H, W, defect, free_port, make_model_dir, write_video
from tests.test_runtime_batching import SlowSpy, level, run_with_sub


class PerImageSpy(SlowSpy):
    """SlowSpy saying what OrtScorer says on a CPU: it runs a batch image by image (`whole_batches`
    False), in `lanes` side by side."""

    def __init__(self, inner: OrtScorer, delay_s: float = 0.0, lanes: int = 1) -> None:
        super().__init__(inner, delay_s, inner.max_batch)
        self.whole_batches, self.lanes = inner.whole_batches, lanes


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model")


def _item(cam: str, n: int, at: float) -> FrameItem:
    return FrameItem(cam, n, 0.0, at, level(100))


def test_collect_takes_the_oldest_capture_first_across_cameras_and_rotates_ties(model_dir: Path,
                                                                                  tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", [level(100)])
    cams = [(f"c{i}", SourceSpec("file", str(video))) for i in range(3)]
    with Publisher(f"tcp://127.0.0.1:{free_port()}") as pub:
        pipe = Pipeline(PerImageSpy(OrtScorer(model_dir / "model.onnx", H, W)), load_manifest(model_dir), cams, pub)
        q = {c.id: c.queue for c in pipe.cameras}  # the capture threads are not started: we fill the queues
        for cam, n, at in (("c0", 0, 3.0), ("c0", 1, 5.0), ("c1", 0, 1.0), ("c1", 1, 4.0), ("c2", 0, 2.0)):
            q[cam]._items.append(_item(cam, n, at))
        got = pipe._collect(5, timeout=0.0)
        assert [(it.camera, it.monotonic) for it in got] == [("c1", 1.0), ("c2", 2.0), ("c0", 3.0), ("c1", 4.0),
                                                              ("c0", 5.0)]
        assert all(len(c.queue) == 0 for c in pipe.cameras) and pipe._taken == 5
        # three cameras on one trigger: the same instant; who goes first rotates from call to call
        firsts = []
        for k in range(3):
            for cam in ("c0", "c1", "c2"):
                q[cam]._items.append(_item(cam, 2 + k, 10.0 + k))
            firsts.append([it.camera for it in pipe._collect(3, timeout=0.0)])
        assert firsts == [["c1", "c2", "c0"], ["c2", "c0", "c1"], ["c0", "c1", "c2"]]


def test_a_per_image_scorer_gets_one_frame_per_call_and_every_frame_in_order(model_dir: Path,
                                                                              tmp_path: Path) -> None:
    n = 10
    videos = {"fails": write_video(tmp_path / "a.avi", [defect()] * n),
              "passes": write_video(tmp_path / "b.avi", [level(100 + i) for i in range(n)]),
              "alt": write_video(tmp_path / "c.avi", [level(50 + i) if i % 2 else defect() for i in range(n)])}
    inner = OrtScorer(model_dir / "model.onnx", H, W)
    assert inner.whole_batches is False  # ONNX Runtime on the CPU
    scorer = PerImageSpy(inner, delay_s=0.02)
    cams = [(cid, SourceSpec("file", str(v))) for cid, v in videos.items()]
    final, sub = run_with_sub(model_dir, cams, scorer, PipelineConfig(heatmap="png"))
    assert scorer.sizes == [1] * (3 * n)  # no frame waits for another's scoring
    expected = {"fails": ["fail"] * n, "passes": ["pass"] * n, "alt": ["fail", "pass"] * (n // 2)}
    vs = sub.verdicts()
    for cid in videos:
        mine = [v for v in vs if v["camera"] == cid]
        assert [v["frame_id"] for v in mine] == list(range(n)) and [v["verdict"] for v in mine] == expected[cid]
    assert final["published"] == 3 * n and final["errors"] == 0 and final["batches"]["max_batch"] == 1


def test_a_per_image_scorer_with_lanes_gets_what_is_queued_up_to_its_lanes_without_waiting(
        model_dir: Path, tmp_path: Path) -> None:
    """Two lanes, three replays kept busy by a slow scorer: calls hold 1 or 2 frames (never more, some
    2), and every camera's verdicts come in frame order; a lone frame is never held back to fill."""
    n = 10
    videos = {f"c{i}": write_video(tmp_path / f"{i}.avi", [level(60 + 10 * i + k) for k in range(n)]) for i in range(3)}
    scorer = PerImageSpy(OrtScorer(model_dir / "model.onnx", H, W, lanes=2), delay_s=0.02, lanes=2)
    cams = [(cid, SourceSpec("file", str(v))) for cid, v in videos.items()]
    final, sub = run_with_sub(model_dir, cams, scorer, PipelineConfig(heatmap="none", batch_wait_ms=1000))
    assert set(scorer.sizes) <= {1, 2} and 2 in scorer.sizes and sum(scorer.sizes) == 3 * n, scorer.sizes
    vs = sub.verdicts()
    for cid in videos:
        assert [v["frame_id"] for v in vs if v["camera"] == cid] == list(range(n))
    assert final["published"] == 3 * n and final["errors"] == 0 and final["batches"]["max_batch"] == 2
    # One camera at 5 frames/s: a frame is alone in its queue for 200 ms. Waiting for a second one to
    # fill the lanes (as a whole-batch scorer does, up to batch_wait_ms) would hold every verdict that long.
    paced = [("p", SourceSpec("file", str(videos["c0"]), fps=5.0))]
    scorer = PerImageSpy(OrtScorer(model_dir / "model.onnx", H, W, lanes=2), lanes=2)
    final, sub = run_with_sub(model_dir, paced, scorer, PipelineConfig(heatmap="none", batch_wait_ms=1000))
    lat = [v["latency_ms"] for v in sub.verdicts()]
    assert scorer.sizes == [1] * n and len(lat) == n and max(lat) < 150, (scorer.sizes, lat)


def test_every_verdict_leaves_its_stage_marks_in_order(model_dir: Path, tmp_path: Path) -> None:
    n = 8
    video = write_video(tmp_path / "v.avi", [level(100 + i) for i in range(n)])
    cams = [(f"c{i}", SourceSpec("file", str(video))) for i in range(2)]
    manifest = load_manifest(model_dir)
    with Publisher(f"tcp://127.0.0.1:{free_port()}") as pub:
        pipe = Pipeline(PerImageSpy(OrtScorer(model_dir / "model.onnx", H, W)), manifest, cams, pub,
                        PipelineConfig(heatmap="none"))
        final = pipe.run()
    marks = pipe.trace.marks()
    assert marks.shape == (2 * n, len(MARKS)) and final["published"] == 2 * n
    assert np.isfinite(marks).all()
    assert (np.diff(marks, axis=1) >= 0).all()  # captured <= decoded <= prepared (capture thread) <= queued ...
    stages = pipe.trace.stages()
    assert set(stages) == {*STAGES, "total"} and all(stages[s]["n"] == 2 * n for s in stages)
    total = (marks[:, -1] - marks[:, 0]) * 1000.0
    assert stages["total"]["p50"] == pytest.approx(float(np.percentile(total, 50)), abs=1e-3)
    calls = pipe.trace.calls()
    assert calls["calls"] == 2 * n and calls["sizes"] == {1: 2 * n} and calls["spread_p50_ms"] == 0.0
    assert 0 < calls["busy"] <= 1.0


def test_trace_skips_unscored_stages_and_checks_its_rows() -> None:
    t = Trace()
    t.frame([0.0, 0.001, 0.002, 0.002, 0.003, 0.004, 0.014, 0.015, 0.016, 0.017])
    t.frame([0.0, 0.001, 0.002, 0.002, 0.003] + [float("nan")] * 2 + [0.004, 0.005, 0.006])  # an error verdict
    s = t.stages()
    assert s["score"] == {"p50": 10.0, "p99": 10.0, "mean": 10.0, "n": 1}
    assert s["total"]["n"] == 2 and s["total"]["p50"] == pytest.approx(11.5)
    with pytest.raises(ValueError, match="expected 10"):
        t.frame([0.0, 1.0])


@pytest.mark.parametrize("in_capture", [True, False])
def test_a_failure_while_preparing_a_frame_is_an_error_verdict(model_dir: Path, tmp_path: Path,
                                                                in_capture: bool) -> None:
    n = 6
    video = write_video(tmp_path / "v.avi", [level(100 + 10 * i) for i in range(n)])
    manifest = load_manifest(model_dir)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Publisher(endpoint) as pub:
        pipe = Pipeline(PerImageSpy(OrtScorer(model_dir / "model.onnx", H, W)), manifest,
                        [("c", SourceSpec("file", str(video)))], pub,
                        PipelineConfig(heatmap="none", prepare_in_capture=in_capture))
        frame, seen = pipe.health.frame, []

        def flaky(camera: str, *args: object) -> object:
            seen.append(threading.current_thread().name)
            if len(seen) == 3:  # the third frame
                raise RuntimeError("drift metrics broke")
            return frame(camera, *args)

        pipe.health.frame = flaky
        final = pipe.run()
    assert final["published"] == n and final["errors"] == 1 and final["verdicts"]["pass"] == n - 1
    assert pipe.cameras[0].frames == n  # the camera's thread went on after the failure
    # the input checks ran in the capture thread (default), or on the scoring loop when asked
    assert seen == ["capture-c" if in_capture else "MainThread"] * n


def test_paced_cameras_tick_on_a_shared_grid_at_their_phase(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", [level(100), level(110), level(120)])
    with pytest.raises(ConfigError, match="phase"):
        SourceSpec("file", str(video), fps=10, phase=1.0)
    with pytest.raises(ConfigError, match="needs a line rate"):
        SourceSpec("file", str(video), phase=0.5)
    fps, per = 20.0, 0.05
    cond = threading.Condition()
    cams = [CameraSource(f"c{i}", SourceSpec("file", str(video), loop=True, fps=fps, phase=ph), cond, queue_size=50)
            for i, ph in enumerate((0.0, 0.0, 0.5))]
    for c in cams:
        c.start()
    deadline = time.monotonic() + 10
    while min(len(c.queue) for c in cams) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    for c in cams:
        c.stop()
        assert c.join(5)
    stamps = [[it.monotonic for it in list(c.queue._items)[:4]] for c in cams]
    assert all(c.missed_ticks == 0 for c in cams)
    for s in stamps:
        assert np.allclose(np.diff(s), per, atol=1e-6)
    # the same rate and phase: the same ticks (one may have started a tick later)
    offset = (np.asarray(stamps[1][0]) - stamps[0][0]) / per
    assert abs(offset - round(offset)) < 1e-6
    half = ((stamps[2][0] - stamps[0][0]) / per) % 1.0
    assert half == pytest.approx(0.5, abs=1e-6)


def test_bench_phase_modes_and_a_bad_one(model_dir: Path) -> None:
    from edge_somad.bench.scorers import run_bench
    from edge_somad.bench.stages import phases

    assert phases("aligned", 3) == [0.0, 0.0, 0.0]
    free = phases("independent", 4)
    assert free == phases("independent", 4) and len(set(free)) == 4 and all(0 <= p < 1 for p in free)
    with pytest.raises(ConfigError, match="--phase 'sideways'"):
        phases("sideways", 2)
    with pytest.raises(ConfigError, match="--phase 'sideways'"):
        run_bench(model_dir, ["onnxruntime"], "fp32", [1], 2, 1, None, False, None, False, [2], 5.0, phase="sideways")


def test_a_frame_waits_for_a_batch_to_fill_only_batch_wait_ms_from_its_arrival(model_dir: Path,
                                                                                tmp_path: Path) -> None:
    """A whole-batch scorer (GPU-like: no `whole_batches` False) with a 1 s batch wait: a frame that has
    been queued for 2 s already (it waited for a busy scorer) is taken at once; a fresh one waits."""
    from tests.test_runtime_batching import SlowSpy

    video = write_video(tmp_path / "v.avi", [level(100)])
    cams = [(f"c{i}", SourceSpec("file", str(video))) for i in range(2)]
    with Publisher(f"tcp://127.0.0.1:{free_port()}") as pub:
        pipe = Pipeline(SlowSpy(OrtScorer(model_dir / "model.onnx", H, W), 0.0), load_manifest(model_dir), cams, pub,
                        PipelineConfig(batch_wait_ms=1000.0))
        assert pipe.max_batch == 2
        queue = pipe.cameras[0].queue  # capture threads not started: c1 could still deliver
        old = _item("c0", 0, time.monotonic() - 2.0)
        old.queued_at = time.monotonic() - 2.0
        queue._items.append(old)
        t0 = time.monotonic()
        assert pipe._collect(2, timeout=0.0) == [old]
        assert time.monotonic() - t0 < 0.5  # not the full second again
        fresh = _item("c0", 1, time.monotonic())
        fresh.queued_at = time.monotonic()
        queue._items.append(fresh)
        t0 = time.monotonic()
        assert pipe._collect(2, timeout=0.0) == [fresh]
        assert time.monotonic() - t0 >= 0.9  # it did wait for c1's frame, up to batch_wait_ms


def test_the_publishers_upkeep_backs_off_while_idle_and_returns_on_work() -> None:
    from edge_somad.runtime.messaging.publisher import DRAIN_IDLE_S, DRAIN_PERIOD_S, drain_period

    waits = [DRAIN_PERIOD_S]
    for _ in range(8):
        waits.append(drain_period(waits[-1], 0))
    assert waits[:3] == [DRAIN_PERIOD_S, 2 * DRAIN_PERIOD_S, 4 * DRAIN_PERIOD_S]
    assert max(waits) == waits[-1] == DRAIN_IDLE_S  # idle: capped, never longer
    assert drain_period(DRAIN_IDLE_S, 1) == DRAIN_PERIOD_S  # a subscription or peer event: fast again
