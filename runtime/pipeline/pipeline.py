"""The inspection loop: capture threads -> one resize -> scorer -> verdict -> ZeroMQ.

Frames waiting from several cameras are scored as ONE batch (a partial batch waits at most
`batch_wait_ms` for the rest), so more cameras cost no throughput: on a GPU a batch scores more
frames/s than calls of 1; a CPU scorer runs it image by image, its best rate (runtime/scorers/ort_scorer.py).
Batch k's verdicts are encoded and published on a second thread (runtime/pipeline/outbox.py) while batch k+1
is scored.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_somad.contracts.geometry import check_frame, plan_geometry, resize_planned
from edge_somad.contracts.manifest import Manifest
from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.health.drift import content_box
from edge_somad.runtime.health.health import LineHealth
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.verdict import judge, unscored
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
from edge_somad.runtime.pipeline.frames import check_useful_geometry
from edge_somad.runtime.pipeline.model_slot import LiveModel, ModelSlot
from edge_somad.runtime.pipeline.outbox import Outbox
from edge_somad.runtime.pipeline.pipeline_config import PipelineConfig, Stats
from edge_somad.runtime.scorers.scorer import Scorer
from edge_somad.runtime.trigger.book import TriggerBook

log = logging.getLogger(__name__)

NOT_SCORED = "not scored: shutdown"


@dataclass
class _Prepared:
    item: FrameItem
    resized: np.ndarray | None = None
    frame: np.ndarray | None = None  # BGR, for the overlay
    geometry: Any = None
    error: str | None = None
    score: float | None = None
    amap: np.ndarray | None = None
    repeated: str | None = None  # identical to the camera's previous frame: must not pass
    model: LiveModel | None = None  # the model this frame was judged under (None: the current one)


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
        # Shared by every capture thread: with --max-frames N, N frames are read in total, so every
        # frame read is taken and answered (a replay would otherwise have read queue_size more).
        self.reads = ReadBudget(config.max_frames)
        self.cameras = [CameraSource(cid, spec, self._cond, config.queue_size, self._events.append, opener=opener,
                                     budget=self.reads, open_report_s=config.open_report_s,
                                     stall_frames=config.stall_frames, stall_min_s=config.stall_min_s)
                        for cid, spec in cameras]
        self._kinds = {cid: spec.kind for cid, spec in cameras}
        self.health = LineHealth([c.id for c in self.cameras], manifest.reference, config.health,
                                 score_drift=config.precision != "int8", on_change=self._health_event)
        limit = getattr(scorer, "max_batch", None)
        if config.max_batch is not None and limit is not None and config.max_batch > limit:
            raise ConfigError(f"--max-batch {config.max_batch}; this {scorer.backend} graph takes at most {limit} "
                              f"frames per call (static batch). Give --max-batch {limit} or less, or leave it out.")
        want = config.max_batch or len(self.cameras)
        self.max_batch = max(1, min(want, limit) if limit else want)
        self._wait_s = config.batch_wait_ms / 1000.0
        self._taken = 0  # frames taken from the camera queues: each gets exactly one verdict
        # LineHealth and the latency window are written by the loop (frames) and the publisher
        # thread (verdicts), and read for the heartbeat: one lock for both.
        self._lock = threading.Lock()
        # The model in use, swappable while the line runs (model_slot.py): read once per batch under its lock.
        self.slot = ModelSlot(live or LiveModel(scorer, manifest, config.precision), publisher.publish_status,
                              self.max_batch, self.health, self._lock)
        self.watch = CameraWatch(self.cameras, self.health, self._lock, self.pub.publish_status,
                                 config.camera_timeout_s)
        self._outbox: Outbox[list[_Prepared]] = Outbox(self._publish_batch, depth=2)
        pre = manifest.preprocessing
        self._size = (pre.height, pre.width)
        self._rr = 0
        self._passes: dict[str, int] = {}  # passes published per camera (publisher thread only)
        self._started = time.monotonic()
        # Triggered mode: only the first frame after each trigger is scored (runtime/trigger/book.py).
        self.triggers = TriggerBook(self.cameras, publisher, self.slot.current.info, manifest.threshold_for(
            config.precision), self._cond, config.trigger_deadline_ms) if config.triggered else None
        if self.triggers is not None:  # its own error answers (deadline, shutdown) name the model in use
            self.slot.listeners.append(lambda m: self.triggers.use_model(m.info, m.threshold))

    scorer = property(lambda self: self.slot.current.scorer)
    manifest = property(lambda self: self.slot.current.manifest)
    model_info = property(lambda self: self.slot.current.info)

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
        """Up to n items, round robin: one per camera per pass, so every camera gets a place in the
        batch and a camera with several frames queued fills what the others leave. Waits up to
        `timeout` for the first frame, then up to batch_wait_ms for the batch to fill while a camera
        could still add a frame."""
        with self._cond:
            if not self._queued() and timeout > 0 and not self._stop.is_set():
                self._cond.wait(timeout)
            if n > 1 and self._wait_s > 0 and 0 < self._queued() < n:
                deadline = time.monotonic() + self._wait_s
                while (self._queued() < n and self._can_grow() and not self._stop.is_set()
                       and (left := deadline - time.monotonic()) > 0):
                    self._cond.wait(left)  # every put notifies
            items: list[FrameItem] = []
            cams = self.cameras[self._rr:] + self.cameras[:self._rr]
            self._rr = (self._rr + 1) % len(self.cameras)
            while len(items) < n and self._queued():  # we hold the lock: each pass takes at least one
                for cam in cams:
                    if len(items) < n and (item := cam.queue.pop()) is not None:
                        items.append(item)
            self._taken += len(items)
            return items

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
    def _prepare(self, item: FrameItem, model: LiveModel) -> _Prepared:
        p = _Prepared(item, error=item.error, model=model)
        if item.error is not None:
            return p
        pre = model.manifest.preprocessing
        try:
            p.frame = check_frame(item.image)
            # Planned once: the resize, the size check, the defect boxes and the overlay all use it.
            p.geometry = plan_geometry(p.frame.shape[0], p.frame.shape[1], pre.height, pre.width, pre.resize)
            check_useful_geometry(p.geometry, model.manifest)
            p.resized = resize_planned(p.frame, p.geometry, pre.resize, pre.pad_value)
        except InputError as exc:
            p.error = f"bad frame: {exc}"
            return p
        with self._lock:
            g = p.geometry
            fault = self.health.frame(item.camera, p.frame.shape[:2], p.resized, item.monotonic,
                                      content_box(g), p.frame, min(g.scale_x, g.scale_y))
            # Files of a folder are separate pictures, not a stream that can freeze: identical ones are
            # identical parts. Live sources and video files are streams.
            p.repeated = self.health.repeated(item.camera) if self._kinds[item.camera] != "folder" else None
        if fault is not None:  # a black or frozen picture says nothing about the part: never a pass
            p.error = f"camera fault: {fault}"
        return p

    def _triggered(self, items: list[FrameItem]) -> list[FrameItem]:
        return items if self.triggers is None else self.triggers.select(items)

    def _process(self, items: list[FrameItem]) -> None:
        items = self._triggered(items)
        if not items:
            return
        with self.slot.lock:  # one model for the whole batch: a swap waits for it to be scored
            model = self.slot.current
            prepared = [self._prepare(it, model) for it in items]
            self._score(model, prepared)
        self._emit(prepared)

    def _score(self, model: LiveModel, prepared: list[_Prepared]) -> None:
        good = [p for p in prepared if p.error is None]
        if good:
            try:
                result = model.scorer.score(np.stack([p.resized for p in good]))
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
        precision = self.config.precision
        model = p.model or self.slot.current
        self.slot.published(p.model, p.item.camera, p.item.frame_id)  # a new model's first verdict: announce it
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
        it = p.item
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
        self.pub.publish_verdict(header, heat, overlay)
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
        with self._lock:
            health = {c.id: self.health.snapshot(c.id) for c in self.cameras}
            latency = self.stats.latency()
        return {
            "schema": schema, "at": time.time(), "uptime_s": round(time.monotonic() - self._started, 3),
            "status": self.status, "model": self.model_info,
            "frames_scored": self.stats.frames_scored, "published": self.stats.published,
            "errors": self.stats.verdicts["error"], "verdicts": dict(self.stats.verdicts),
            "latency_ms": latency, **({"triggers": self.triggers.snapshot()} if self.triggers is not None else {}),
            "batches": {"max_batch": self.max_batch, "max_seen": self.stats.max_batch_seen,
                        "calls": self.stats.score_calls,
                        "mean": round(self.stats.frames_scored / max(1, self.stats.score_calls), 3)},
            # Per-subscriber losses are invisible to a publisher (ZeroMQ drops per peer, silently):
            # `sent` per topic lets each subscriber compare with the `seq` numbers it received.
            "sent": dict(self.pub.sent), "subscribers": self.pub.subscribers,
            "security": "curve" if self.pub.curve is not None else "none",
            "handshake_failures": dict(self.pub.handshake_failures),
            "subscriptions_refused": self.pub.subscriptions_refused, "peers_disconnected": self.pub.peers_disconnected,
            "cameras": {c.id: {"status": self.watch.status(c), "fps": round(c.fps(), 2), "frames": c.frames,
                               "capture_drops": c.drops, "read_errors": c.read_errors, "queued": len(c.queue),
                               "health": health[c.id]}
                        for c in self.cameras},
        }

