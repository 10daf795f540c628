"""Cross-camera batching: real video files as cameras -> one scorer call per batch -> real PUB/SUB.

Every frame read gets exactly one verdict, in per-camera order, with the score of ITS frame; the
scorer really sees batches of several cameras; a partial batch waits for the other cameras only as
long as `batch_wait_ms`; the publishing thread keeps order and never swallows an error.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import CameraSource, SourceSpec
from edge_somad.runtime.pipeline.outbox import Outbox
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.runtime.scorers.scorer import ScoreResult
from tests.helpers.runtime import FakeDriver, H, W, defect, free_port, grey, make_model_dir, write_video
from tests.test_runtime_pipeline import Collector


class SlowSpy:
    """The real stand-in graph, `delay_s` slower per call, recording the batch size of every call."""

    def __init__(self, inner: OrtScorer, delay_s: float, max_batch: int | None = None) -> None:
        self.inner, self.delay_s, self.sizes = inner, delay_s, []
        self.backend, self.device, self.max_batch = inner.backend, inner.device, max_batch

    def score(self, frames: np.ndarray) -> ScoreResult:
        self.sizes.append(len(frames))
        time.sleep(self.delay_s)
        return self.inner.score(frames)

    def close(self) -> None:
        self.inner.close()


def run_with_sub(model_dir: Path, cams: list[tuple[str, SourceSpec]], scorer: SlowSpy, config: PipelineConfig,
                 opener=None) -> tuple[dict, Collector]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    manifest = load_manifest(model_dir)
    with Publisher(endpoint) as pub:
        sub = Collector(endpoint)
        assert pub.wait_for_subscribers(1, 5.0)
        sub.start()
        kw = {} if opener is None else {"opener": opener}
        final = Pipeline(scorer, manifest, cams, pub, config, **kw).run()
        sub.join(20)
    return final, sub


def level(value: int) -> np.ndarray:
    """A flat 120x160 frame of one grey level (scores 0: a pass)."""
    return np.full((120, 160, 3), value, np.uint8)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model")


def test_three_video_cameras_share_batches_one_verdict_each_in_order(tmp_path: Path, model_dir: Path) -> None:
    n = 12
    videos = {  # distinct content per camera: a verdict scored from another camera's frame shows up
        "fails": write_video(tmp_path / "a.avi", [defect()] * n),
        "passes": write_video(tmp_path / "b.avi", [level(100 + i) for i in range(n)]),
        "alt": write_video(tmp_path / "c.avi", [grey() if i % 2 == 0 else defect() for i in range(n)]),
    }
    expected = {"fails": ["fail"] * n, "passes": ["pass"] * n, "alt": ["pass", "fail"] * (n // 2)}
    scorer = SlowSpy(OrtScorer(model_dir / "model.onnx", H, W), delay_s=0.04)
    cams = [(cid, SourceSpec("file", str(v))) for cid, v in videos.items()]
    final, sub = run_with_sub(model_dir, cams, scorer, PipelineConfig(heatmap="png"))

    assert sum(scorer.sizes) == 3 * n and max(scorer.sizes) == 3
    assert scorer.sizes.count(3) >= n - 3  # batches of all three cameras, not one frame per call
    vs = sub.verdicts()
    assert len(vs) == 3 * n
    for cid in videos:
        mine = [v for v in vs if v["camera"] == cid]  # in the order the SUB received them
        assert [v["frame_id"] for v in mine] == list(range(n))
        assert [v["verdict"] for v in mine] == expected[cid]
    assert final["reason"] == "all sources ended" and final["published"] == 3 * n and final["errors"] == 0
    assert final["batches"] == {"max_batch": 3, "max_seen": 3, "calls": len(scorer.sizes),
                                "mean": round(3 * n / len(scorer.sizes), 3)}
    lat = final["latency_ms"]
    assert lat["n"] == 3 * n and 40.0 <= lat["p50"] <= lat["p99"]  # each frame waited for a 40 ms call at least
    assert lat["p99"] <= max(v["latency_ms"] for v in vs) + 5.0


def test_one_camera_delivers_several_queued_frames_when_max_batch_allows(tmp_path: Path, model_dir: Path) -> None:
    n = 16
    video = write_video(tmp_path / "v.avi", [level(100 + i) if i % 3 else defect() for i in range(n)])  # no repeats
    scorer = SlowSpy(OrtScorer(model_dir / "model.onnx", H, W), delay_s=0.03)
    config = PipelineConfig(heatmap="none", max_batch=4, queue_size=4)
    final, sub = run_with_sub(model_dir, [("c", SourceSpec("file", str(video)))], scorer, config)
    assert max(scorer.sizes) == 4 and sum(scorer.sizes) == n
    vs = sub.verdicts()
    assert [v["frame_id"] for v in vs] == list(range(n))
    assert [v["verdict"] for v in vs] == ["fail" if i % 3 == 0 else "pass" for i in range(n)]
    assert final["batches"]["max_batch"] == 4


class Paced(FakeDriver):
    """A camera that delivers 6 frames, one every 80 ms; camera 'late' 25 ms after camera 'early'."""

    start = 0.0

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self.offset = 0.025 if spec.target == "late" else 0.0

    def read(self):
        if self.n >= 6:
            return "end", None, "done"
        due = Paced.start + self.offset + 0.08 * self.n
        time.sleep(max(0.0, due - time.monotonic()))
        self.n += 1
        return "frame", level(90 + self.n), None


@pytest.mark.parametrize("wait_ms", [300.0, 0.0])
def test_partial_batch_waits_for_other_cameras_only_as_long_as_batch_wait(model_dir: Path, wait_ms: float) -> None:
    scorer = SlowSpy(OrtScorer(model_dir / "model.onnx", H, W), delay_s=0.0)
    cams = [("early", SourceSpec("file", "early")), ("late", SourceSpec("file", "late"))]
    Paced.start = time.monotonic() + 0.2
    final, sub = run_with_sub(model_dir, cams, scorer, PipelineConfig(heatmap="none", batch_wait_ms=wait_ms),
                              opener=Paced)
    assert sum(scorer.sizes) == 12 and final["published"] == 12
    if wait_ms:  # the early frame waits (25 ms) for the late one: one call per pair
        assert scorer.sizes.count(2) >= 5
    else:  # nothing waits: the early frame is scored alone before the late one arrives
        assert scorer.sizes.count(1) >= 4
    for cid in ("early", "late"):
        assert [v["frame_id"] for v in sub.verdicts() if v["camera"] == cid] == list(range(6))


def test_max_batch_is_checked_against_the_scorer(model_dir: Path, tmp_path: Path) -> None:
    manifest = load_manifest(model_dir)
    video = write_video(tmp_path / "v.avi", [grey()])
    cams = [(f"c{i}", SourceSpec("file", str(video))) for i in range(3)]
    with pytest.raises(ConfigError, match="--max-batch"):
        PipelineConfig(max_batch=0)
    with pytest.raises(ConfigError, match="--batch-wait-ms"):
        PipelineConfig(batch_wait_ms=-1.0)
    with Publisher(f"tcp://127.0.0.1:{free_port()}") as pub:
        limited = SlowSpy(OrtScorer(model_dir / "model.onnx", H, W), 0.0, max_batch=2)
        with pytest.raises(ConfigError, match=r"--max-batch 4; this onnxruntime graph takes at most 2"):
            Pipeline(limited, manifest, cams, pub, PipelineConfig(max_batch=4))
        assert Pipeline(limited, manifest, cams, pub).max_batch == 2  # default: cameras, within the limit
        free = SlowSpy(OrtScorer(model_dir / "model.onnx", H, W), 0.0)
        assert Pipeline(free, manifest, cams, pub).max_batch == 3
        assert Pipeline(free, manifest, cams, pub, PipelineConfig(max_batch=8)).max_batch == 8


# ---------------------------------------------------------------- looping replays (bench --cameras)

def test_looping_replay_restarts_and_numbers_on(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", [level(10), level(20), level(30)])
    cam = CameraSource("c", SourceSpec("file", str(video), loop=True), threading.Condition(), queue_size=2)
    cam.start()
    items = []
    deadline = time.monotonic() + 10
    while len(items) < 8 and time.monotonic() < deadline:
        item = cam.queue.pop()
        if item is None:
            time.sleep(0.002)
        else:
            items.append(item)
    cam.stop()
    assert cam.join(5)
    assert [it.frame_id for it in items] == list(range(8)) and all(it.error is None for it in items)
    levels = [int(it.image.mean().round(-1)) for it in items]
    assert levels == [10, 20, 30, 10, 20, 30, 10, 20]


def test_loop_is_for_replays_and_an_empty_one_still_ends(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only a video file or an image folder"):
        SourceSpec("index", 0, loop=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    cam = CameraSource("c", SourceSpec("folder", str(empty), loop=True), threading.Condition())
    cam.start()
    assert cam.join(5) and cam.status == "ended"  # a loop that cannot make progress ends


# ---------------------------------------------------------------- the publishing thread

def test_outbox_keeps_order_bounds_the_backlog_and_raises_handler_errors() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def handler(batch: list[int]) -> None:
        gate.wait(5)
        seen.extend(batch)

    box: Outbox[list[int]] = Outbox(handler, depth=2)
    box.start()
    box.put([0, 1])
    box.put([2])
    blocked = threading.Thread(target=box.put, args=([3],))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive() and box.pending() == 2  # a third batch waits for room
    gate.set()
    blocked.join(5)
    box.close()
    assert seen == [0, 1, 2, 3] and box.handled == 3

    def broken(batch: list[int]) -> None:
        raise ValueError(f"cannot encode {batch}")

    bad: Outbox[list[int]] = Outbox(broken, depth=1)
    bad.start()
    bad.put([7])
    with pytest.raises(RuntimeError, match=r"publishing thread failed: ValueError: cannot encode \[7\]"):
        for _ in range(100):  # the error surfaces at the next put (or close), never lost in the thread
            bad.put([8])
            time.sleep(0.01)
    with pytest.raises(RuntimeError, match="ValueError"):
        bad.close()
