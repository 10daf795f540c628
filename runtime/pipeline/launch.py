"""Open the model, scorer and publisher, then run the Pipeline until the sources end or a signal.

`run_pipeline` is what `edge-somad run` calls; the loop itself is runtime/pipeline/pipeline.py.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.contracts import defaults
from edge_somad.contracts.manifest import Manifest, load_manifest
from edge_somad.errors import ArtifactError, ConfigError, EdgeSomadError
from edge_somad.runtime.messaging.curve import CurveServer
from edge_somad.runtime.messaging.journal import Journal, JournalConfig
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.replay import ReplayServer
from edge_somad.runtime.messaging.verdict import NOT_CALIBRATED
from edge_somad.runtime.pipeline.camera import parse_cameras
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.scorer import Scorer
from edge_somad.runtime.trigger.control import ControlServer, error_reply

log = logging.getLogger(__name__)


def run_pipeline(
    model_dir: Path,
    cameras: list[str],
    backend: str = "auto",
    publish: str = defaults.ENDPOINT,
    topic_prefix: str = "somad",
    config: PipelineConfig = PipelineConfig(),
    wait_subscribers: int = 0,
    handle_signals: bool = True,
    curve: CurveServer | None = None,
    send_queue: int = 100,
    journal: JournalConfig | None = None,
    replay: str | None = None,
    control: str | None = None,
) -> dict[str, Any]:
    """Open everything, run until the sources end / max frames / SIGINT-SIGTERM; returns the final status.

    Raises (before any frame) on an unusable model, backend or source: the command maps it to exit != 0.
    control: endpoint of the control socket (runtime/trigger/control.py): `trigger` and other commands.
    """
    from edge_somad.runtime.scorers.backends import open_scorer

    if config.triggered and control is None:
        raise ConfigError("--trigger needs --control ENDPOINT (e.g. tcp://127.0.0.1:5560): triggers arrive there")
    sources = parse_cameras(cameras)
    waiting = [cid for cid, spec in sources if spec.gige is not None and spec.gige.trigger == "software"]
    if waiting and not config.triggered:  # nothing would ever ask these cameras for a frame
        raise ConfigError(f"camera(s) {', '.join(waiting)} have trigger=software, which takes a frame only when "
                          "a trigger asks; give --trigger --control ENDPOINT, or trigger=off for free running")
    manifest = load_manifest(Path(model_dir))
    if manifest.threshold_for(config.precision) is None:
        log.warning("%s: every verdict will be 'error'", NOT_CALIBRATED)
    scorer = open_scorer(Path(model_dir), backend, config.precision, manifest=manifest)
    try:
        _warm_up(scorer, manifest, Path(model_dir))
        with _journal(journal, replay or "", curve) as kept, Publisher(
                publish, topic_prefix, sndhwm=send_queue, curve=curve, cameras=[cam_id for cam_id, _ in sources],
                journal=kept) as pub:
            log.info("publishing on %s (topics %s/<camera>)", pub.bound_endpoint, topic_prefix)
            if wait_subscribers and not pub.wait_for_subscribers(wait_subscribers, timeout_s=10.0):
                log.warning("only %d of %d subscribers after 10 s; starting anyway",
                            pub.subscribers, wait_subscribers)
            pipe = Pipeline(scorer, manifest, sources, pub, config)
            with _control(control, pipe), _signals(pipe, handle_signals):
                return pipe.run()
    finally:
        scorer.close()


@contextlib.contextmanager
def _journal(config: JournalConfig | None, replay: str, curve: CurveServer | None) -> Iterator[Journal | None]:
    """The verdict journal and its replay endpoint (messaging/journal.py, replay.py), or None without --journal."""
    if config is None:
        yield None
        return
    journal = Journal(config)
    try:
        server = ReplayServer(replay, journal, curve)
    except BaseException:
        journal.close()
        raise
    log.info("verdict journal in %s (up to %.0f MB), replay on %s", config.path, config.max_bytes / 2**20,
             server.bound_endpoint)
    try:
        yield journal
    finally:
        server.close()
        journal.close()


@contextlib.contextmanager
def _control(endpoint: str | None, pipe: Pipeline) -> Iterator[ControlServer | None]:
    """The control endpoint (None without --control), open while the loop runs; closed after the
    loop answered every trigger it accepted."""
    if endpoint is None:
        yield None
        return
    with ControlServer(endpoint) as server:
        if pipe.triggers is not None:
            server.register("trigger", pipe.triggers.handle)
        else:
            server.register("trigger", lambda req: error_reply(
                "this runtime is free-running (every frame is scored); start `edge-somad run` with --trigger "
                "to answer triggers", "trigger"))
        server.start()
        log.info("control endpoint on %s (commands: %s)", server.bound_endpoint, ", ".join(server.commands()))
        yield server


def _warm_up(scorer: Scorer, manifest: Manifest, model_dir: Path) -> None:
    """First-run allocations (ORT arenas, TensorRT context) happen now, not on the first part; and a
    graph that loads but cannot run fails here, before the line starts, as a clear error."""
    pre = manifest.preprocessing
    try:
        scorer.score(np.zeros((1, pre.height, pre.width, 3), np.uint8))
    except EdgeSomadError:
        raise
    except Exception as exc:  # backends raise their own types (ORT: Fail, RuntimeException, ...)
        raise ArtifactError(
            f"{model_dir / manifest.onnx}: the graph loaded but failed on a blank {pre.height}x{pre.width} frame "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Rebuild it where the model "
            f"was fitted: `edge-somad export --model {model_dir}` (keeps the calibration)."
        ) from exc


class _signals:
    """Route SIGINT/SIGTERM to pipeline.stop() while the loop runs (main thread only)."""

    def __init__(self, pipe: Pipeline, enabled: bool) -> None:
        self.pipe = pipe
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.pipe.stop(f"signal {signal.Signals(signum).name}")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
