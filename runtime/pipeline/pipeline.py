"""The inspection loop: capture threads (read, resize, input checks) -> scorer -> verdict -> ZeroMQ.

The scoring thread takes the oldest captured frames first across cameras and only scores: each
capture thread resizes and checks its own frames while the scorer runs. A scorer that takes whole
batches (GPU) gets the frames waiting from several cameras as ONE batch (a partial batch waits at
most `batch_wait_ms` for the rest): on a GPU a batch scores more frames/s than calls of 1. A
scorer that runs a batch image by image (ONNX Runtime on a CPU, runtime/scorers/ort_scorer.py)
gets one frame per call by default, so each verdict leaves as soon as its own frame is scored, and
one frame per core side by side only while a backlog lasts (runtime/pipeline/call_size.py).
Batch k's verdicts are encoded and published on a second thread (runtime/pipeline/outbox.py) while batch k+1
is scored. Every verdict leaves its per-stage times in `trace` (runtime/pipeline/trace.py).

Never `pass` on doubt: a bad, truncated or too small frame, a scorer exception, a NaN/inf score or
map, or a model without a threshold all give an `error` verdict with the reason, and the loop goes
on. SIGINT/SIGTERM stop the cameras (replays stop reading), score what is already queued within
`drain_timeout_s`, publish an `error` "not scored: shutdown ..." verdict for every frame still
queued after that (or after a second signal), then the final status: every frame read gets a verdict.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_somad.contracts.manifest import Manifest
from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.health.health import LineHealth
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.verdict import judge, unscored
from edge_somad.runtime.pipeline.call_size import CallSize
from edge_somad.runtime.pipeline.camera import (
    CameraEvent,
    CameraSource,
    FrameItem,
    ReadBudget,
    SourceSpec,
)
from edge_somad.runtime.pipeline.camera_watch import CameraWatch
from edge_somad.runtime.pipeline.capture import Capture, open_capture
from edge_somad.runtime.pipeline.defects import defects_of, render_overlay
from edge_somad.runtime.pipeline.heartbeat import line_status
from edge_somad.runtime.pipeline.model_slot import LiveModel, ModelSlot
from edge_somad.runtime.pipeline.outbox import Outbox
from edge_somad.runtime.pipeline.pipeline_config import PipelineConfig, Stats
from edge_somad.runtime.pipeline.prepare import Preparer, _Prepared
from edge_somad.runtime.pipeline.trace import Trace
from edge_somad.runtime.scorers.scorer import Scorer
from edge_somad.runtime.trigger.book import TriggerBook

log = logging.getLogger(__name__)

NOT_SCORED = "not scored: shutdown"


class Pipeline:
    def __init__(
        self,
        scorer: Scorer,
        manifest: Manifest,
        cameras: list[tuple[str, SourceSpec]],
        publisher: Publisher,
        config: PipelineConfig = PipelineConfig(),
        opener: Callable[[SourceSpec], Capture] = open_capture,
        live: LiveModel | None = None,  # scorer + manifest with their folder and check score (launch.py)
    ) -> None:
        self.pub, self.config = publisher, config
        self.stats = Stats()
        self.trace = Trace()  # per-frame stage times and scorer calls (bench --cameras prints them)
        self.status = "starting"
        self._cond = threading.Condition()
        self._events: deque[CameraEvent] = deque()
        self._stop = threading.Event()
        self._abort = threading.Event()  # a second signal: stop draining, report the rest unscored
        self._stop_reason = ""
        for cid, _ in cameras:
            try:
                messages.check_camera_id(cid)
            except InputError as exc:
                raise ConfigError(str(exc)) from exc
        # LineHealth and the latency window are written by the capture threads (frames), the
        # publisher thread (verdicts), and read for the heartbeat: one lock for both.
        self._lock = threading.Lock()
        self.health = LineHealth([cid for cid, _ in cameras], manifest.reference, config.health,
                                 score_drift=config.precision != "int8", on_change=self._health_event)
        self._prep = Preparer(manifest, self.health, self._lock, {cid: spec.kind for cid, spec in cameras})
        # Shared by every capture thread: with --max-frames N, N frames are read in total, so every
        # frame read is taken and answered (a replay would otherwise have read queue_size more).
        self.reads = ReadBudget(config.max_frames)
        # Each capture thread resizes and checks its own frames (`_prepare`) while the scorer runs,
        # so the scoring thread goes from one call to the next without host work in between. Not in
        # triggered mode: only the frame after a trigger is scored, and resizing every other one would
        # be wasted work.
        in_capture = config.prepare_in_capture and not config.triggered
        self.cameras = [CameraSource(cid, spec, self._cond, config.queue_size, self._events.append, opener=opener,
                                     budget=self.reads, open_report_s=config.open_report_s,
                                     stall_frames=config.stall_frames, stall_min_s=config.stall_min_s,
                                     prepare=self._prepare_in_capture if in_capture else None)
                        for cid, spec in cameras]
        limit = getattr(scorer, "max_batch", None)
        if config.max_batch is not None and limit is not None and config.max_batch > limit:
            raise ConfigError(f"--max-batch {config.max_batch}; this {scorer.backend} graph takes at most {limit} "
                              f"frames per call (static batch). Give --max-batch {limit} or less, or leave it out.")
        # A scorer that runs a batch image by image (ONNX Runtime on a CPU) gains no speed from a larger
        # batch than it has lanes (ort_scorer.py: frames side by side, one per core; one frame alone runs
        # on all cores), and a batch makes its first frame's verdict wait for the others: by default it
        # gets one frame per call, up to `lanes` while a backlog lasts (call_size.py), the oldest first,
        # and nothing waits for a batch to fill. An explicit --max-batch is taken as given.
        per_image = getattr(scorer, "whole_batches", True) is False
        want = config.max_batch or (int(getattr(scorer, "lanes", 1)) if per_image else len(self.cameras))
        self.max_batch = max(1, min(want, limit) if limit else want)
        self._wait_s = 0.0 if per_image else config.batch_wait_ms / 1000.0
        self._sizer = CallSize(self.max_batch) if per_image and config.max_batch is None and self.max_batch > 1 \
            else None
        # The model in use, swappable while the line runs (model_slot.py): read once per batch under its lock.
        self.slot = ModelSlot(live or LiveModel(scorer, manifest, config.precision), publisher.publish_status,
                              self.max_batch, self.health, self._lock)
        self._taken = 0  # frames taken from the camera queues: each gets exactly one verdict
        self.watch = CameraWatch(self.cameras, self.health, self._lock, self.pub.publish_status,
                                 config.camera_timeout_s)
        self._outbox: Outbox[list[_Prepared]] = Outbox(self._publish_batch, depth=2)
        pre = manifest.preprocessing
        self._size = (pre.height, pre.width)
        self._rr = 0  # which camera goes first among frames captured at the same instant
        self._passes: dict[str, int] = {}  # passes published per camera (publisher thread only)
        self._started = time.monotonic()
        # Triggered mode: only the first frame after each trigger is scored (runtime/trigger/book.py).
        self.triggers = TriggerBook(self.cameras, publisher, self.model_info, manifest.threshold_for(
            config.precision), self._cond, config.trigger_deadline_ms) if config.triggered else None
        self.slot.listeners.append(self._model_installed)

    scorer = property(lambda self: self.slot.current.scorer)
    manifest = property(lambda self: self.slot.current.manifest)
    model_info = property(lambda self: self.slot.current.info)

    def _model_installed(self, model: LiveModel) -> None:
        """A swap (model_slot.py): frames prepared from now on are checked against the new model, and the
        trigger book's own error answers (deadline, shutdown) name it."""
        self._prep.manifest = model.manifest
        if self.triggers is not None:
            self.triggers.use_model(model.info, model.threshold)

    def stop(self, reason: str = "stop requested") -> None:
        """Thread- and signal-safe: only sets a flag the loop polls every 100 ms. A second call while
        stopping ends the drain: what is still queued is published as NOT_SCORED errors."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()
        elif self.status == "stopping":
            self._abort.set()

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._started = time.monotonic()
        self._outbox.start()
        for cam in self.cameras:
            cam.start()
        self.status = "running"
        next_beat = 0.0
        reason = "all sources ended"
        while True:
            if self._stop.is_set():
                reason = self._stop_reason
                break
            batch = self._collect(self._budget(self.max_batch), timeout=0.1)
            self._flush_events()
            if (why := self.watch.check()) is not None:
                reason = why
                break
            self._process(batch)  # also when empty: a trigger may have matched a frame held back
            if not batch and all(c.finished for c in self.cameras) and not self._queued():
                if self.reads.spent:
                    reason = f"max frames ({self.config.max_frames}) reached"
                break
            if self._budget(1) == 0:
                reason = f"max frames ({self.config.max_frames}) reached"
                break
            if time.monotonic() >= next_beat:
                self.pub.publish_heartbeat(self._health(messages.HEARTBEAT_SCHEMA))
                next_beat = time.monotonic() + self.config.heartbeat_s
        return self._shutdown(reason, drain=self._stop.is_set())

    def _shutdown(self, reason: str, drain: bool) -> dict[str, Any]:
        self.status = "stopping"
        log.info("stopping: %s", reason)
        if self.triggers is not None:
            self.triggers.stop_accepting(reason)
        for cam in self.cameras:
            cam.stop()
        with self._cond:  # replay threads waiting for queue room
            self._cond.notify_all()
        for cam in self.cameras:
            if not cam.join(2.0):
                log.warning("camera %s did not stop within 2 s (stuck in the capture driver)", cam.id)
        deadline = time.monotonic() + self.config.drain_timeout_s
        while (drain and self._queued() and time.monotonic() < deadline and self._budget(1)
               and not self._abort.is_set()):
            self._process(self._collect(self._budget(self.max_batch), timeout=0.0))
        self._report_unscored()  # normally nothing is left: the drain limit, a second signal, a camera timeout
        self._outbox.close()  # every verdict is out before the final status
        self.slot.announce_unscored()  # a model swapped in after the last frame: its event, before the final
        if self.triggers is not None:
            self.triggers.close(reason)  # a trigger still waiting is answered, never left in silence
        self._flush_events()
        self.status = "stopped" if drain else "ended"
        final = self._health(messages.STATUS_SCHEMA)
        final.update(event="final", reason=reason, camera_timeout=self.watch.timed_out)
        self.pub.publish_status(final)
        return final

    def _report_unscored(self) -> None:
        """Every frame read gets a verdict: those left after the drain limit are errors, not silence."""
        why = ("second signal" if self._abort.is_set() else "camera timeout" if self.watch.timed_out
               else f"drain limit {self.config.drain_timeout_s:g} s reached")
        items: list[FrameItem] = []
        for cam in self.cameras:
            while (item := cam.queue.pop()) is not None:
                items.append(item)
        self._taken += len(items)
        left = [_Prepared(it, error=f"{NOT_SCORED} ({why})") for it in self._triggered(items)]
        if left:  # behind the scored batches still in the outbox: per-camera order holds
            self._emit(left)
            log.warning("%d queued frame(s) published as '%s' (%s); raise --drain-timeout to score them",
                        len(left), NOT_SCORED, why)

    def _budget(self, n: int) -> int:
        # Counted on frames taken, not published: publishing lags scoring by up to two batches.
        if self.config.max_frames is None:
            return n
        return max(0, min(n, self.config.max_frames - self._taken))

    def _queued(self) -> int:
        return sum(len(c.queue) for c in self.cameras)

    def _collect(self, n: int, timeout: float) -> list[FrameItem]:
        """Up to n items, the oldest captures first across cameras (each camera's queue is FIFO, so its
        own order holds); frames captured at the same instant (cameras on one trigger) go in a rotating
        camera order, so no camera is always the last one scored. Waits up to `timeout` for the first
        frame, then for the batch to fill while a camera could still add a frame, until batch_wait_ms
        after the oldest waiting frame arrived."""
        with self._cond:
            if not self._queued() and timeout > 0 and not self._stop.is_set():
                self._cond.wait(timeout)
            if self._sizer is not None and n > 1:
                n = min(n, self._sizer.next(self._queued()))
            if n > 1 and self._wait_s > 0 and 0 < self._queued() < n:
                # From the oldest waiting frame's arrival: one that already waited for a busy scorer
                # does not wait again for the batch to fill.
                deadline = min(self._arrived(c) for c in self.cameras) + self._wait_s
                while (self._queued() < n and self._can_grow() and not self._stop.is_set()
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(left)  # every put notifies
            items: list[FrameItem] = []
            cams = self.cameras[self._rr:] + self.cameras[:self._rr]
            self._rr = (self._rr + 1) % len(self.cameras)
            while len(items) < n:  # we hold the lock: the queues only grow meanwhile
                heads = [(head.monotonic, i) for i, c in enumerate(cams) if (head := c.queue.peek()) is not None]
                if not heads:
                    break
                items.append(cams[min(heads)[1]].queue.pop())
            self._taken += len(items)
            return items

    def _arrived(self, cam: CameraSource) -> float:
        head = cam.queue.peek()
        return float("inf") if head is None else head.queued_at

    def _can_grow(self) -> bool:
        """Could a frame still join this batch? Only from a camera that reads and has queue room (a
        full live queue replaces its oldest frame, a full replay waits: neither adds one)."""
        return any(not c.finished and len(c.queue) < c.queue.maxsize for c in self.cameras)

    def _flush_events(self) -> None:
        while self._events:
            ev = self._events.popleft()
            self.pub.publish_status({"schema": messages.STATUS_SCHEMA, "event": "camera", "camera": ev.camera,
                                     "status": ev.status, "detail": ev.detail, "at": ev.at})

    # -- one batch -----------------------------------------------------------------------------
    def _prepare_in_capture(self, item: FrameItem) -> None:
        item.prepared = self._prep.safe(item)

    def _triggered(self, items: list[FrameItem]) -> list[FrameItem]:
        return items if self.triggers is None else self.triggers.select(items)

    def _process(self, items: list[FrameItem]) -> None:
        items = self._triggered(items)
        if not items:
            return
        # Prepared in the capture thread, or here (config.prepare_in_capture False).
        prepared = [it.prepared if isinstance(it.prepared, _Prepared) else self._prep.safe(it) for it in items]
        with self.slot.lock:  # one model for the whole batch: a swap waits for it to be scored
            model = self.slot.current
            for p in prepared:
                p.model = model
            self._score(model, prepared)
        self._emit(prepared)

    def _score(self, model: LiveModel, prepared: list[_Prepared]) -> None:
        good = [p for p in prepared if p.error is None]
        if good:
            try:
                started = time.monotonic()
                # one frame (a CPU scorer's default) goes as a view: no copy
                frames = good[0].resized[None] if len(good) == 1 else np.stack([p.resized for p in good])
                result = model.scorer.score(frames)
                ended = time.monotonic()
                self.trace.call([p.item.monotonic for p in good], started, ended)
                for p in good:
                    p.marks[5:7] = started, ended
                scores, maps = np.asarray(result.scores), np.asarray(result.maps)
                if scores.shape != (len(good),) or maps.shape != (len(good), *self._size):
                    raise InputError(f"scorer returned scores {scores.shape}, maps {maps.shape}; expected "
                                     f"({len(good)},) and ({len(good)}, {self._size[0]}, {self._size[1]})")
                for p, s, m in zip(good, scores, maps, strict=True):
                    p.score, p.amap = float(s), m
                self.stats.frames_scored += len(good)
                self.stats.score_calls += 1
                self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(good))
            except Exception as exc:  # the line keeps running; these frames are reported as errors
                log.exception("scorer failed on a batch of %d", len(good))
                for p in good:
                    p.error = f"scorer failed: {type(exc).__name__}: {exc}"

    def _emit(self, prepared: list[_Prepared]) -> None:
        """To the publisher thread (in order, at most two batches behind), or here when it is not running."""
        (self._outbox.put if self._outbox.accepting else self._publish_batch)(prepared)

    def _publish_batch(self, prepared: list[_Prepared]) -> None:
        for p in prepared:
            self._publish(p)

    def _publish(self, p: _Prepared) -> None:
        it = p.item
        p.marks[:5] = it.monotonic, it.decoded_at, it.prepared_at, it.queued_at, it.taken_at
        p.marks[7] = time.monotonic()
        precision = self.config.precision
        model = p.model or self.slot.current
        self.slot.published(p.model, it.camera, it.frame_id)  # a new model's first verdict: announce it
        threshold = model.threshold
        # The one decision for this frame; defects, heatmap, overlay and header read it.
        v = judge(p.score, p.amap, threshold, p.geometry) if p.error is None else unscored(p.error, threshold)
        if p.repeated is not None and v.verdict == "pass":
            # A repeat of the previous frame may be a frozen camera before it can be declared one: it
            # shows no new part, so it never passes (a fail stays a fail: rejecting is safe).
            v = unscored(f"camera fault: {p.repeated}", threshold, p.geometry)
        trigger = None
        if self.triggers is not None:  # a verdict ready after its trigger's deadline is an error `deadline`
            v, trigger = self.triggers.claim(p.item, v)
        defects = defects_of(v, model.manifest.pixel_threshold_for(precision),
                             model.manifest.calibration.min_defect_area_px)
        picture = v.verdict != "pass" or self._pass_picture(it.camera)
        meta, heat = messages.heatmap_of(v, self.config.heatmap) if picture else (None, b"")
        overlay = None
        if self.config.overlay and picture and p.frame is not None:
            overlay = render_overlay(p.frame, v, defects)
        shape = p.frame.shape[:2] if p.frame is not None else None
        published_at = time.time()
        header = messages.header_of(
            v, camera=it.camera, frame_id=it.frame_id, captured_at=it.captured_at, published_at=published_at,
            defects=defects, model=model.info, heatmap=meta, frame_shape=shape, overlay=overlay is not None)
        header.update(trigger or {})  # part_id, trigger_ts, ...
        p.marks[8] = time.monotonic()
        self.pub.publish_verdict(header, heat, overlay)
        p.marks[9] = time.monotonic()
        self.trace.frame(p.marks)
        if self.triggers is not None:
            self.triggers.finish(it, header)
        self.stats.verdicts[v.verdict] += 1
        with self._lock:
            self.health.verdict(it.camera, v.verdict, v.score)
            self.stats.latencies_ms.append((time.monotonic() - it.monotonic) * 1000.0)
        if v.verdict == "error":
            log.warning("camera %s frame %d: error verdict: %s", it.camera, it.frame_id, v.error)

    def _pass_picture(self, camera: str) -> bool:
        n, self._passes[camera] = self._passes.get(camera, 0), self._passes.get(camera, 0) + 1
        return self.config.heatmap_passes > 0 and n % self.config.heatmap_passes == 0

    def _health_event(self, event: dict[str, Any]) -> None:
        log.warning("camera %s health %s -> %s: %s", event["camera"], event["previous"], event["state"],
                    "; ".join(event["reasons"]) or "all clear")
        self.pub.publish_status({"schema": messages.STATUS_SCHEMA, "at": time.time(), **event})

    def _health(self, schema: str) -> dict[str, Any]:
        return line_status(self, schema)
