"""The trigger book: which part waits for which frame, and the answer every trigger gets.

The pipeline, in triggered mode, hands every frame it takes to `select`: a frame captured after the
oldest waiting trigger of its camera is that trigger's frame (each trigger gets its own frame, so
two triggers within one frame interval take two frames); every other frame is skipped, counted,
and never scored. A frame captured before a trigger is never used for it. The last skipped frame
of each camera is held, so a trigger that arrives while its first frame is already being taken is
still matched to that frame, not the one after it.

Every accepted trigger is answered exactly once (ControlRequest.reply):
- its frame's verdict, once published (the published header plus `part_id`, `trigger_ts`, ...),
  if that verdict was ready before the deadline;
- `error: deadline ...` when its deadline passes first: the watchdog answers at the deadline,
  whether no frame came or the frame is still being scored (the pipeline then publishes that
  frame's verdict as the same deadline error, so the stream and the PLC agree);
- `error: not scored: shutdown ...` when the runtime stops first.
A part id seen before (the last REMEMBER ids) is answered `duplicate` with the first answer's
summary, and never scored twice. Deadline and shutdown errors without a frame are published on
the verdict stream too (`frame_used: false`), so bridges and the view see the reject.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_somad.errors import InputError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.verdict import Verdict, unscored
from edge_somad.runtime.trigger.control import ControlRequest, error_reply
from edge_somad.runtime.trigger.request import DEFAULT_DEADLINE_MS, TriggerRequest, parse_trigger

log = logging.getLogger(__name__)

REMEMBER = 10_000  # part ids kept for the duplicate check: hours of a line at a part per second
MAX_PENDING = 1000  # triggers waiting at once; beyond that a trigger is refused (busy), not queued


@dataclass
class _Entry:
    request: TriggerRequest
    reply: ControlRequest
    frame_id: int | None = None  # the frame it took
    answered: bool = False
    claimed: bool = False  # its verdict was ready in time: the publishing thread answers it


class TriggerBook:
    """Thread-safe: `handle` runs on the control thread, `select` on the loop, `claim`/`finish` on the
    publishing thread, the deadline watchdog on its own."""

    def __init__(self, cameras: Sequence[Any], publisher: Any, model: dict[str, Any], threshold: float | None,
                 wake: threading.Condition, default_deadline_ms: int = DEFAULT_DEADLINE_MS) -> None:
        self.cameras = {c.id: c for c in cameras}
        self.pub, self.model, self.threshold = publisher, model, threshold
        self.default_deadline_ms = default_deadline_ms
        self._wake = wake  # the pipeline's frame condition: a held frame matched now is taken at once
        self._cond = threading.Condition()
        self._pending: dict[str, deque[_Entry]] = {cid: deque() for cid in self.cameras}
        self._inflight: dict[tuple[str, int], _Entry] = {}
        self._held: dict[str, Any] = {}  # camera -> its last skipped frame
        self._ready: list[Any] = []  # held frames matched to a trigger that arrived after their capture
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._closing: str | None = None
        self.counts = {"received": 0, "answered": 0, "deadline": 0, "duplicate": 0, "refused": 0, "shutdown": 0,
                       "frames_skipped": 0}
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="trigger-deadlines", daemon=True)
        self._watchdog.start()

    def use_model(self, model: dict[str, Any], threshold: float | None) -> None:
        """A new model went live (runtime/pipeline/model_slot.py): error answers made here name it."""
        self.model, self.threshold = model, threshold

    # -- control thread ------------------------------------------------------------------------
    def handle(self, req: ControlRequest) -> dict[str, Any] | None:
        """The `trigger` command: None once accepted (answered later), else the refusal."""
        try:
            trig = parse_trigger(req.body, (req.received_at, req.received_mono), self.default_deadline_ms)
            trig = dataclasses.replace(trig, camera=self._camera(trig.camera))
        except InputError as exc:
            with self._cond:
                self.counts["refused"] += 1
            return error_reply(str(exc), "trigger")
        entry = _Entry(trig, req)
        with self._cond:
            refusal = self._refusal(trig)
            if refusal is None:
                self.counts["received"] += 1
                self._seen[trig.part_id] = {"state": "pending", "trigger_ts": trig.trigger_ts}
                while len(self._seen) > REMEMBER:
                    self._seen.popitem(last=False)
                held = self._held.get(trig.camera)
                if not self._pending[trig.camera] and held is not None and held.monotonic > trig.trigger_mono:
                    self._assign(entry, held)  # its first frame was skipped a moment ago: use it
                    self._ready.append(held)
                    del self._held[trig.camera]
                    self.counts["frames_skipped"] -= 1
                else:
                    self._pending[trig.camera].append(entry)
                self._cond.notify_all()
        if refusal is not None:
            return refusal
        if entry.frame_id is not None:
            with self._wake:
                self._wake.notify_all()
        else:
            self._software_trigger(entry)
        return None

    def _camera(self, camera: str | None) -> str:
        if camera is None:
            if len(self.cameras) != 1:
                raise InputError(f"this runtime has cameras {sorted(self.cameras)}; name one with \"camera\"")
            return next(iter(self.cameras))
        if camera not in self.cameras:
            raise InputError(f"camera {camera!r} is not one of this runtime's cameras {sorted(self.cameras)}")
        return camera

    def _refusal(self, trig: TriggerRequest) -> dict[str, Any] | None:
        fields = {**trig.fields(), "camera": trig.camera}
        if self._closing is not None:
            self.counts["shutdown"] += 1
            return error_reply(f"not scored: shutdown ({self._closing})", "trigger", **fields)
        first = self._seen.get(trig.part_id)
        if first is not None:
            self.counts["duplicate"] += 1
            return error_reply(f"duplicate: part id {trig.part_id!r} was triggered before (at "
                               f"{first['trigger_ts']:.3f}); it is not scored twice", "trigger", duplicate=True,
                               first=dict(first), **fields)
        if sum(len(q) for q in self._pending.values()) >= MAX_PENDING:
            self.counts["refused"] += 1
            return error_reply(f"busy: {MAX_PENDING} triggers already wait for frames", "trigger", **fields)
        return None

    def _software_trigger(self, entry: _Entry) -> None:
        """A triggerable source (e.g. a machine-vision camera in trigger mode) is asked for the frame."""
        cam = self.cameras[entry.request.camera]
        if not getattr(cam, "triggerable", True):  # free running (CameraSource.triggerable): the next frame is it
            return
        fire = getattr(cam, "software_trigger", None) or getattr(getattr(cam, "capture", None),
                                                                  "software_trigger", None)
        if fire is None:
            return
        try:
            fire()
        except Exception as exc:  # the camera refused: this part gets an error now, not a deadline later
            log.warning("camera %s: software trigger failed: %s", cam.id, exc)
            self._expire([(entry, f"camera trigger failed: {type(exc).__name__}: {exc}")], remove=True)

    # -- loop thread ---------------------------------------------------------------------------
    def select(self, items: list[Any]) -> list[Any]:
        """The frames to score: each the first one captured after a waiting trigger of its camera."""
        with self._cond:
            out, self._ready = self._ready, []
            for it in items:
                queue = self._pending.get(it.camera)
                if queue and queue[0].request.trigger_mono < it.monotonic:
                    self._assign(queue.popleft(), it)
                    out.append(it)
                else:
                    self._held[it.camera] = it
                    self.counts["frames_skipped"] += 1
            return out

    def _assign(self, entry: _Entry, item: Any) -> None:
        entry.frame_id = item.frame_id
        self._inflight[(item.camera, item.frame_id)] = entry

    # -- publishing thread ---------------------------------------------------------------------
    def claim(self, item: Any, v: Verdict) -> tuple[Verdict, dict[str, Any] | None]:
        """Just before the frame's verdict is published: the verdict to publish and the trigger's
        fields for its header (None: not a triggered frame). Ready after the deadline, it is an error
        verdict `deadline` (a reject) whatever it was; ready in time, the watchdog no longer answers
        it (the stream and the answer must agree)."""
        with self._cond:
            entry = self._inflight.get((item.camera, item.frame_id))
            if entry is None:
                return v, None
            trig = entry.request
            late_ms = (time.monotonic() - trig.deadline_mono) * 1000.0
            entry.claimed = late_ms <= 0 and not entry.answered
        fields = {**trig.fields(), "frame_used": True}
        if entry.claimed:
            return v, fields
        reason = f"deadline: scored {max(late_ms, 0.0):.1f} ms after the {trig.deadline_ms} ms deadline"
        return unscored(reason, v.threshold, v.geometry), fields

    def finish(self, item: Any, header: dict[str, Any]) -> None:
        """After the frame's verdict was published: answer its trigger (unless the watchdog did)."""
        with self._cond:
            entry = self._inflight.pop((item.camera, item.frame_id), None)
            if entry is None:
                return
            self._remember(entry.request, header)
            first = not entry.answered
            entry.answered = True
            late = str(header.get("error") or "").startswith("deadline")
            if first:
                self.counts["deadline" if late else "answered"] += 1
        if first:
            entry.reply.reply(self._answer(entry.request, header, ok=not late))

    # -- answers -------------------------------------------------------------------------------
    def _remember(self, trig: TriggerRequest, header: dict[str, Any]) -> None:
        if trig.part_id in self._seen:
            self._seen[trig.part_id] = {"state": "answered", "trigger_ts": trig.trigger_ts,
                                        **{k: header.get(k) for k in ("verdict", "error", "camera", "frame_id",
                                                                      "published_at")}}

    @staticmethod
    def _answer(trig: TriggerRequest, header: dict[str, Any], ok: bool) -> dict[str, Any]:
        published = header.get("published_at")
        took = round((published - trig.trigger_ts) * 1000.0, 3) if isinstance(published, float) else None
        return {**header, **trig.fields(), "cmd": "trigger", "ok": ok, "trigger_latency_ms": took}

    def _error_header(self, trig: TriggerRequest, reason: str, frame_id: int | None) -> dict[str, Any]:
        cam = self.cameras[trig.camera]
        used = frame_id is not None
        # Without a frame: the id the camera's next frame gets (frames and read errors both take ids).
        fid = frame_id if used else int(getattr(cam, "frames", 0)) + int(getattr(cam, "read_errors", 0))
        h = messages.header_of(Verdict("error", reason, threshold=self.threshold), camera=trig.camera, frame_id=fid,
                               captured_at=trig.trigger_ts, published_at=time.time(), defects=[], model=self.model,
                               heatmap=None, frame_shape=None, overlay=False)
        return {**h, **trig.fields(), "frame_used": used}

    def _expire(self, due: list[tuple[_Entry, str]], remove: bool = False) -> None:
        """Answer these entries with an error. Entries without a frame are published here too; one whose
        frame is being scored is published by the pipeline (its verdict turns into the same error)."""
        for entry, reason in due:
            with self._cond:
                if entry.answered:
                    continue
                entry.answered = True
                if remove and entry in self._pending[entry.request.camera]:
                    self._pending[entry.request.camera].remove(entry)
                self.counts["deadline" if reason.startswith("deadline") else "shutdown"] += 1
            header = self._error_header(entry.request, reason, entry.frame_id)
            if entry.frame_id is None:
                self.pub.publish_verdict(header)
                with self._cond:
                    self._remember(entry.request, header)
            entry.reply.reply(self._answer(entry.request, header, ok=False))

    # -- deadline watchdog ---------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                due: list[tuple[_Entry, str]] = []
                next_at = now + 1.0
                for queue in self._pending.values():
                    for entry in list(queue):
                        if entry.request.deadline_mono <= now:
                            queue.remove(entry)
                            due.append((entry, f"deadline: no frame from camera {entry.request.camera} within "
                                               f"{entry.request.deadline_ms} ms of the trigger"))
                        else:
                            next_at = min(next_at, entry.request.deadline_mono)
                for entry in self._inflight.values():
                    if entry.answered or entry.claimed:
                        continue
                    if entry.request.deadline_mono <= now:
                        due.append((entry, f"deadline: frame {entry.frame_id} not scored within "
                                           f"{entry.request.deadline_ms} ms of the trigger"))
                    else:
                        next_at = min(next_at, entry.request.deadline_mono)
                if not due:
                    self._cond.wait(max(0.0, next_at - now))
                    continue
            self._expire(due)

    # -- end -----------------------------------------------------------------------------------
    def stop_accepting(self, reason: str) -> None:
        """New triggers are answered `not scored: shutdown` from now on; waiting ones still get frames."""
        with self._cond:
            self._closing = self._closing or reason

    def close(self, reason: str) -> None:
        """After the last verdict was published: every trigger still unanswered gets a shutdown error."""
        self.stop_accepting(reason)
        with self._cond:
            left = [e for q in self._pending.values() for e in q] + list(self._inflight.values())
            for e in self._inflight.values():
                e.frame_id = None  # matched but never scored (the loop had ended): answered without a frame
            for q in self._pending.values():
                q.clear()
            self._inflight.clear()
            self._ready.clear()
            self._stop.set()
            self._cond.notify_all()
        self._expire([(e, f"not scored: shutdown ({reason})") for e in left])
        self._watchdog.join(2.0)

    def snapshot(self) -> dict[str, Any]:
        """For the heartbeat: counters and how many triggers wait."""
        with self._cond:
            waiting = sum(len(q) for q in self._pending.values()) + len(self._inflight)
        return {**self.counts, "waiting": waiting}
