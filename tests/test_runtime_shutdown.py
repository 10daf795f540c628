"""SIGTERM during a folder replay: every frame read gets a verdict (scored, or `not scored: shutdown`)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.launch import _signals
from edge_somad.runtime.pipeline.pipeline import NOT_SCORED, Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.runtime import H, W, free_port, grey, make_model_dir
from tests.test_runtime_pipeline import Collector

FRAMES = 200


class SignalAfter:
    """Scores like the inner scorer, and sends this process a real SIGTERM at batch `after` once the
    replay has filled its queue (the capture thread then waits for room: the moment a stop used to
    evict a frame), and a second one `again` batches later if given. Deterministic: mid-replay."""

    def __init__(self, inner: OrtScorer, after: int, again: int | None, queue_full: Callable[[], bool]) -> None:
        self.inner, self.backend, self.device, self.max_batch = inner, inner.backend, inner.device, None
        self.after, self.again, self.calls, self.queue_full = after, again, 0, queue_full

    def score(self, frames):
        self.calls += 1
        if self.calls == self.after:
            deadline = time.monotonic() + 10
            while not self.queue_full() and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGTERM)
        if self.again is not None and self.calls == self.after + self.again:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.inner.score(frames)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("replay")
    for i in range(FRAMES):
        cv2.imwrite(str(d / f"{i:04d}.png"), grey())
    return d


@pytest.mark.parametrize(("drain_s", "again"), [(5.0, None), (0.0, None), (5.0, 3)],
                         ids=["drained", "drain-limit", "second-signal"])
def test_sigterm_during_replay_loses_no_frame(tmp_path: Path, folder: Path, drain_s: float, again: int | None) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    manifest = load_manifest(model_dir)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = PipelineConfig(queue_size=60, drain_timeout_s=drain_s, heatmap="none")
    with Publisher(endpoint) as pub, OrtScorer(model_dir / "model.onnx", H, W) as inner:
        sub = Collector(endpoint)
        assert pub.wait_for_subscribers(1, 5.0)
        sub.start()
        scorer = SignalAfter(inner, 5, again, queue_full=lambda: len(pipe.cameras[0].queue) >= config.queue_size)
        pipe = Pipeline(scorer, manifest, [("c", SourceSpec("folder", str(folder)))], pub, config)
        with _signals(pipe, enabled=True):
            final = pipe.run()
        sub.join(20)
    cam = final["cameras"]["c"]
    read = cam["frames"] + cam["read_errors"]
    verdicts = sub.verdicts()
    unscored = [v for v in verdicts if v["verdict"] == "error" and v["error"].startswith(NOT_SCORED)]
    assert final["reason"] == "signal SIGTERM" and final["status"] == "stopped"
    # The replay stopped reading, and dropped nothing (the frame it was waiting to queue included).
    assert 5 + config.queue_size <= read < FRAMES and cam["capture_drops"] == 0 and cam["queued"] == 0
    assert [v["frame_id"] for v in verdicts] == list(range(read))  # verdicts + not scored = frames read
    assert final["published"] == read and final["frames_scored"] == read - len(unscored)
    if drain_s == 0.0:
        assert unscored and all("drain limit 0 s reached" in v["error"] for v in unscored)
    elif again is not None:
        assert unscored and all("second signal" in v["error"] for v in unscored)
    else:
        assert unscored == []
    assert all(v["verdict"] == "pass" for v in verdicts if v not in unscored)
