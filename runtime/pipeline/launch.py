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

from edge_somad.contracts import defaults
from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging.curve import CurveServer
from edge_somad.runtime.messaging.journal import Journal, JournalConfig
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.replay import ReplayServer
from edge_somad.runtime.messaging.verdict import NOT_CALIBRATED
from edge_somad.runtime.pipeline.camera import parse_cameras
from edge_somad.runtime.pipeline.model_slot import LiveModel, control_handlers, probe_score, warm_up
from edge_somad.runtime.pipeline.model_watch import ModelWatch
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
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
    model_watch: Path | None = None,
) -> dict[str, Any]:
    """Open everything, run until the sources end / max frames / SIGINT-SIGTERM; returns the final status.

    Raises (before any frame) on an unusable model, backend or source: the command maps it to exit != 0.
    While it runs, SIGHUP reloads the model folder and `model_watch` (a folder) swaps in new model
    folders copied there (runtime/pipeline/model_slot.py, model_watch.py).
    control: endpoint of the control socket (runtime/trigger/control.py): `trigger`, `swap_model`,
    `rollback`.
    """
    from edge_somad.runtime.scorers.backends import open_scorer

    if config.triggered and control is None:
        raise ConfigError("--trigger needs --control ENDPOINT (e.g. tcp://127.0.0.1:5560): triggers arrive there")
    sources = parse_cameras(cameras)
    waiting = [cid for cid, spec in sources if spec.gige is not None and spec.gige.trigger == "software"]
    if waiting and not config.triggered:  # nothing would ever ask these cameras for a frame
        raise ConfigError(f"camera(s) {', '.join(waiting)} have trigger=software, which takes a frame only when "
                          "a trigger asks; give --trigger --control ENDPOINT, or trigger=off for free running")
    pipe: Pipeline | None = None
    # Checked (and the folders already there noted) before anything opens; started with the loop.
    watch = None if model_watch is None else ModelWatch(
        model_watch, lambda path: pipe.slot.swap_model(path, via="watch") if pipe is not None else None)
    manifest = load_manifest(Path(model_dir))
    if manifest.threshold_for(config.precision) is None:
        log.warning("%s: every verdict will be 'error'", NOT_CALIBRATED)
    scorer = open_scorer(Path(model_dir), backend, config.precision, manifest=manifest)
    try:
        warm_up(scorer, manifest, Path(model_dir))
        # Its score of the check frame, before the line uses it: a rollback to it compares with this.
        live = LiveModel(scorer, manifest, config.precision, Path(model_dir), "checked at start",
                         probe_score(scorer, manifest))
        with _journal(journal, replay or "", curve) as kept, Publisher(
                publish, topic_prefix, sndhwm=send_queue, curve=curve, cameras=[cam_id for cam_id, _ in sources],
                journal=kept) as pub:
            log.info("publishing on %s (topics %s/<camera>)", pub.bound_endpoint, topic_prefix)
            if wait_subscribers and not pub.wait_for_subscribers(wait_subscribers, timeout_s=10.0):
                log.warning("only %d of %d subscribers after 10 s; starting anyway",
                            pub.subscribers, wait_subscribers)
            pipe = Pipeline(scorer, manifest, sources, pub, config, live=live)
            if watch is not None:
                watch.start()
            with _control(control, pipe), _signals(pipe, handle_signals):
                return pipe.run()
    finally:
        if watch is not None:
            watch.stop()
        if pipe is not None:  # the slot holds the models in use (swapped in or not) and the one before
            pipe.slot.close()
        else:
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
        for name, handler in control_handlers(pipe.slot).items():  # swap_model, rollback
            server.register(name, handler)
        server.start()
        log.info("control endpoint on %s (commands: %s)", server.bound_endpoint, ", ".join(server.commands()))
        yield server


class _signals:
    """Route SIGINT/SIGTERM to pipeline.stop(), SIGHUP to a model reload, while the loop runs (main thread only)."""

    def __init__(self, pipe: Pipeline, enabled: bool) -> None:
        self.pipe = pipe
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
            if hasattr(signal, "SIGHUP"):  # not on Windows
                self.saved[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._reload)

    def _handle(self, signum: int, _frame: object) -> None:
        self.pipe.stop(f"signal {signal.Signals(signum).name}")

    def _reload(self, _signum: int, _frame: object) -> None:
        # Loading takes seconds: on its own thread, so the loop (this thread) keeps scoring meanwhile.
        threading.Thread(target=self.pipe.slot.reload, kwargs={"via": "signal"}, name="model-reload",
                         daemon=True).start()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
