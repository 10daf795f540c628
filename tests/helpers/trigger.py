"""A triggered runtime in this process for the trigger tests: a Pipeline with a live fake-driver camera at
50 frames/s, its publisher, a SUB collecting every message, and the control endpoint, wired as
`run --trigger --control` wires them (runtime/pipeline/launch._control)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.launch import _control
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.poll import wait_until
from tests.helpers.runtime import FakeDriver, H, W, defect, free_port, grey, make_model_dir
from tests.test_runtime_pipeline import Collector

FRAME_S = 0.02  # the fake camera's frame interval


class Line(FakeDriver):
    """A live camera at 50 frames/s showing a good part, or a defective one while `Line.bad` is set;
    it records when each frame was delivered (time.time())."""

    bad = threading.Event()
    delivered: ClassVar[list[float]] = []

    def read(self):
        time.sleep(FRAME_S)
        self.n += 1
        img = defect() if Line.bad.is_set() else grey()
        img[-30:, -40:] = 100 + self.n % 50  # grey (scores 0) but never two identical frames: not a frozen camera
        Line.delivered.append(time.time())
        return "frame", img, None


class Runtime:
    """Pipeline + control endpoint on threads, as `run --trigger --control` wires them (launch._control)."""

    def __init__(self, tmp: Path, triggered: bool = True, deadline_ms: int = 2000, opener: type = Line) -> None:
        model_dir = make_model_dir(tmp / "m")
        manifest = load_manifest(model_dir)
        self.scorer = OrtScorer(model_dir / "model.onnx", H, W)
        self.publish = f"tcp://127.0.0.1:{free_port()}"
        self.control = f"tcp://127.0.0.1:{free_port()}"
        self.pub = Publisher(self.publish)
        self.sub = Collector(self.publish)
        assert self.pub.wait_for_subscribers(1, 5.0)
        self.sub.start()
        config = PipelineConfig(triggered=triggered, trigger_deadline_ms=deadline_ms, heatmap="none")
        Line.delivered.clear()
        Line.bad.clear()
        self.pipe = Pipeline(self.scorer, manifest, [("cam0", SourceSpec("stream", "rtsp://line"))], self.pub,
                             config, opener=opener)
        self.final: dict = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.pipe.status == "running" and len(Line.delivered) > 3, 10.0)

    def _run(self) -> None:
        with _control(self.control, self.pipe):
            self.final = self.pipe.run()

    def stop(self) -> dict:
        self.pipe.stop("test over")
        self.thread.join(20)
        self.sub.join(20)
        self.pub.close()
        self.scorer.close()
        return self.final


