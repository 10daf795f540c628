"""Frame sources: camera index, video file, RTSP/HTTP stream, image folder (sorted replay), and
GigE Vision / USB3 Vision cameras through Aravis (`aravis:<device>?...`, runtime/pipeline/gige.py).

One capture thread per source feeds a small bounded queue. Live sources (index, stream) drop the
OLDEST frame when the queue is full, so the scorer always works on the freshest part on the line,
and count the drops. Replay sources (file, folder) wait for room instead: a replay exists to score
every frame (validation, demos, benchmarks), and nothing is lost by waiting.
An optional `prepare` hook runs on every item in its capture thread before it is queued (the
pipeline's resize and input checks): that work then runs beside the scorer, not between its calls.
Live sources reconnect with exponential backoff; replay sources end with an `ended` event, or,
with `loop=True` (benchmarks: N cameras from one clip), start again from the first frame.
A replay given `fps` plays the part of a camera on a line (bench --fps): one frame every 1/fps s,
stamped at its tick, dropped like a live camera's when the line has no room, and a tick the
reader itself missed is counted as a drop too.
A frame that cannot be decoded becomes a FrameItem with `error` set, never silence.
A source that cannot be opened, or does not answer within `open_report_s`, is `unavailable` at once
(an event), and a live source that delivers nothing for a few frame intervals is `stalled` (the
pipeline asks `stalled_for`): a dead camera is never silent. A shared ReadBudget (`--max-frames`)
stops every capture thread once that many frames were read, so no frame is read and left unanswered.
A software-triggered camera takes a frame when `software_trigger()` asks; a triggered camera is
silent between parts, so it is never `stalled` (its loss is reported by the driver instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_somad.errors import CameraError, ConfigError, InputError
from edge_somad.runtime.messaging.messages import check_camera_id
from edge_somad.runtime.pipeline.capture import (
    LIVE_KINDS,
    Capture,
    ReadBudget,
    SourceSpec,
    _Capture,
    folder_warning,
    open_capture,
)
from edge_somad.runtime.pipeline.frame_queue import DropOldestQueue, FrameItem
from edge_somad.runtime.pipeline.gige_spec import is_gige, parse_gige

__all__ = ["LIVE_KINDS", "CameraEvent", "CameraSource", "DropOldestQueue", "FrameItem", "ReadBudget", "SourceSpec",
           "_Capture", "parse_cameras", "parse_source"]

log = logging.getLogger(__name__)

_NOT_IN_IDS = ("/", "\\", ":")  # a '=' after one of these belongs to a path or URL, not to an id


@dataclass(frozen=True)
class CameraEvent:
    camera: str
    status: str  # running | unavailable | reconnecting | stalled | ended | stopped
    detail: str
    at: float


def parse_source(spec: str) -> SourceSpec:
    """digits -> camera index; existing dir -> folder; existing file -> video; rtsp/http(s) -> stream;
    aravis:<device>?k=v -> a GigE Vision / USB3 Vision camera (Aravis checked for here, not before)."""
    s = spec.strip()
    if is_gige(s):
        settings = parse_gige(s)
        from edge_somad.runtime.pipeline.gige import load_aravis

        load_aravis()  # a missing install is a ConfigError naming the packages, before anything starts
        return SourceSpec("aravis", settings.device, gige=settings)
    if s.isdigit():
        return SourceSpec("index", int(s))
    if s.lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return SourceSpec("stream", s)
    p = Path(s).expanduser()
    if p.is_dir():
        if (why := folder_warning(p)) is not None:
            log.warning("%s", why)
        return SourceSpec("folder", str(p))
    if p.is_file():
        return SourceSpec("file", str(p))
    raise ConfigError(
        f"camera source {spec!r} is neither a camera index (0, 1, ...), an existing video file or image "
        "folder, an rtsp:// / http(s):// URL, nor aravis:<device id>?key=value (docs/cameras.md). Check the "
        "path, or give e.g. --camera 0."
    )


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for the file system, an embedded NUL
        return False


def parse_cameras(specs: list[str]) -> list[tuple[str, SourceSpec]]:
    """`--camera` values -> [(camera id, source)]; ids default to cam0, cam1, ... or come as id=spec."""
    if not specs:
        raise ConfigError("no --camera given; expected at least one, e.g. --camera 0 or --camera l1=a.avi")
    out: list[tuple[str, SourceSpec]] = []
    for i, raw in enumerate(specs):
        name, sep, rest = raw.partition("=")
        # "rtsp://h/x?a=b" and "dir/a=b.avi" have '=' too; an id is a plain word before the first '='.
        if sep and not any(c in name for c in _NOT_IN_IDS) and not _exists(raw):
            try:
                cam_id, spec = check_camera_id(name), rest
            except InputError as exc:
                raise ConfigError(f"--camera {raw!r}: {exc}") from exc
        else:
            cam_id, spec = f"cam{i}", raw
        out.append((cam_id, parse_source(spec)))
    ids = [c for c, _ in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"camera ids {ids} are not unique; name them with id=spec")
    return out


class CameraSource:
    """A capture thread for one source.

    Status: starting | running | unavailable (cannot open / no answer yet) | reconnecting (a live
    source was lost) | ended | stopped. `stalled_for` adds the pipeline's view of a running live
    source that delivers nothing.
    """

    def __init__(
        self,
        camera_id: str,
        spec: SourceSpec,
        cond: threading.Condition,
        queue_size: int = 2,
        on_event: Callable[[CameraEvent], None] | None = None,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        drop_when_full: bool | None = None,
        opener: Callable[[SourceSpec], Capture] = open_capture,
        budget: ReadBudget | None = None,
        open_report_s: float = 1.0,
        stall_frames: float = 5.0,
        stall_min_s: float = 1.0,
        prepare: Callable[[FrameItem], None] | None = None,
    ) -> None:
        self.id = camera_id
        self.spec = spec
        self.queue = DropOldestQueue(queue_size, cond)
        self.status = "starting"
        self.detail = ""
        self.frames = 0
        self.read_errors = 0
        self.started_at = time.monotonic()
        self._running_since = self.started_at
        self.last_frame_at: float | None = None  # monotonic time of the last item read (frame or error)
        # A paced replay stands for a camera: the line does not slow it down, it loses frames.
        self._drop = (spec.live or spec.fps is not None) if drop_when_full is None else drop_when_full
        self.missed_ticks = 0  # paced replay: ticks that passed while the reader was still decoding
        self._on_event = on_event
        self._backoff = backoff_s
        self._opener = opener
        self._budget = budget
        self._prepare = prepare
        self._open_report_s = open_report_s
        self._stall = (stall_frames, stall_min_s)
        self._stop = threading.Event()
        self.capture: Capture | None = None  # the open source: software_trigger() asks it for a frame
        self._next_id = 0
        self._times: deque[float] = deque(maxlen=32)
        # daemon: a stream stuck inside cv2 (e.g. a long RTSP timeout) must not keep the process alive
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera_id}", daemon=True)

    @property
    def triggerable(self) -> bool:
        """Whether software_trigger() can work: a camera configured for software triggers."""
        return self.spec.gige is not None and self.spec.gige.trigger == "software"

    def software_trigger(self) -> None:
        """Ask the camera for one frame now; it arrives through the queue like any frame.

        Raises ConfigError for a source that is not software-triggered, CameraError while the camera
        is not connected (the caller answers that part with an error, never a pass)."""
        if not self.triggerable:
            raise ConfigError(f"camera {self.id} ({self.spec.kind} {self.spec.target!r}) cannot be triggered by "
                              "software; give --camera aravis:<device>?trigger=software (docs/cameras.md)")
        cap = self.capture
        if cap is None or self.status != "running":
            raise CameraError(f"camera {self.id} is {self.status} ({self.detail or 'not connected'}); "
                              "no frame can be taken now")
        cap.software_trigger()  # type: ignore[attr-defined]

    @property
    def drops(self) -> int:
        return self.queue.drops + self.missed_ticks

    @property
    def finished(self) -> bool:
        return self.status in ("ended", "stopped")

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the last 32 frames; 0 while the source is not delivering (not
        running, or stalled): a stale rate would say the camera is fine."""
        if self.status != "running" or self.stalled_for(time.monotonic() if now is None else now) is not None:
            return 0.0
        t = list(self._times)
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def stall_limit(self) -> float:
        """Seconds without a frame after which a running live source is stalled: `stall_frames`
        median frame intervals, at least `stall_min_s`."""
        frames, floor = self._stall
        t = list(self._times)
        interval = float(np.median(np.diff(t))) if len(t) > 2 else 0.0
        return max(frames * interval, floor)

    def stalled_for(self, now: float) -> float | None:
        """Seconds since the last frame of a running live source past its stall limit, else None."""
        if not self.spec.live or self.status != "running" or self.triggered:
            return None
        since = self.last_frame_at if self.last_frame_at is not None else self.started_at
        age = now - max(since, self._running_since)
        return age if age > self.stall_limit() else None

    @property
    def triggered(self) -> bool:
        """A triggered camera is silent between parts: that is not a stall."""
        return self.spec.gige is not None and self.spec.gige.triggered

    def no_frame_for(self, now: float) -> float:
        """Seconds since this source last delivered anything (since start if never)."""
        return now - (self.last_frame_at if self.last_frame_at is not None else self.started_at)

    def start(self) -> None:
        self.started_at = self._running_since = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set(self, status: str, detail: str) -> None:
        if status == "running":
            self._running_since = time.monotonic()
        self.status, self.detail = status, detail
        log.info("camera %s: %s (%s)", self.id, status, detail)
        if self._on_event is not None:
            self._on_event(CameraEvent(self.id, status, detail, time.time()))
        with self.queue._cond:  # wake the consumer: it may be waiting for "all ended"
            self.queue._cond.notify_all()

    def _claim(self) -> bool:
        return self._budget is None or self._budget.take()

    def _emit(self, image: np.ndarray | None, error: str | None, at: tuple[float, float] | None = None) -> None:
        """at: (time.time(), time.monotonic()) of the capture when it was not now (a paced tick)."""
        wall, mono = at if at is not None else (time.time(), time.monotonic())
        item = FrameItem(self.id, self._next_id, wall, mono, image, error, decoded_at=time.monotonic())
        self._next_id += 1
        if self._prepare is not None:  # in this camera's thread, in its frame order, beside the scoring
            self._prepare(item)
        item.prepared_at = time.monotonic()
        self.last_frame_at = item.monotonic
        if error is None:
            self.frames += 1
            self._times.append(item.monotonic)
        else:
            self.read_errors += 1
        evicted = self.queue.drops
        self.queue.put(item, block=not self._drop, stop=self._stop)
        if self.queue.drops > evicted and self._budget is not None:
            self._budget.give_back()  # a dropped frame is counted as a drop, not against --max-frames

    def _open(self) -> tuple[Capture | None, str | None]:
        """Open in a helper thread: report `unavailable` if it has not answered within open_report_s
        (a driver or server can block for tens of seconds), and give up waiting on stop."""
        box: list[Capture | BaseException] = []
        done, abandoned = threading.Event(), threading.Event()

        def attempt() -> None:
            try:
                box.append(self._opener(self.spec))
            except Exception as exc:  # a folder that vanished, a driver error: reported, retried
                box.append(exc)
            done.set()
            if abandoned.is_set() and not isinstance(box[0], BaseException):
                box[0].release()  # nobody will read it: free the device or connection

        threading.Thread(target=attempt, name=f"open-{self.id}", daemon=True).start()
        if not done.wait(self._open_report_s):
            self._set("unavailable", f"opening {self.spec.kind} {self.spec.target}: no answer after "
                                     f"{self._open_report_s:g} s")
            while not done.wait(0.1):
                if self._stop.is_set():
                    abandoned.set()
                    return None, "stop requested"
        got = box[0]
        if isinstance(got, BaseException):
            return None, f"cannot open {self.spec.target}: {type(got).__name__}: {got}"
        return got, None

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            cap, why = self._open()
            if self._stop.is_set():
                if cap is not None:
                    cap.release()
                break
            try:
                if cap is None or not cap.opened():
                    why = why or f"cannot open {self.spec.target}"
                    if not self.spec.live:
                        if self._claim():  # a replay that never starts still answers with one error
                            self._emit(None, f"cannot open {self.spec.kind} {self.spec.target}")
                        self._set("ended", why)
                        return
                    self._set("unavailable", f"{why}; retry in {delay:g}s")
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
                self.capture = cap
                self._set("running", f"{self.spec.kind} {self.spec.target} opened")
                delay = self._backoff[0]
                why = self._pump(cap)
            finally:
                self.capture = None
                if cap is not None:
                    cap.release()
            if self._stop.is_set():
                break
            if not self.spec.live or (self._budget is not None and self._budget.spent):
                self._set("ended", str(why))
                return
            self._set("reconnecting", f"{why}; retry in {delay:g}s")
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])
        self._set("stopped", "stop requested")

    def _pump(self, cap: Capture) -> str:
        """Read until the source ends, fails (live), the read budget is spent or stop; returns why."""
        period = None if self.spec.fps is None else 1.0 / self.spec.fps
        tick = time.monotonic()
        if period is not None:  # the first tick on this camera's grid: same rate and phase, same ticks
            tick = (tick // period + 1.0 + self.spec.phase) * period
        while not self._stop.is_set():
            at = None
            if period is not None:
                tick = self._next_tick(tick, period)
                if self._stop.is_set():
                    break
                at = (time.time() - (time.monotonic() - tick), tick)  # the capture happened at the tick
            elif not self._drop:
                self.queue.wait_room(self._stop)
                if self._stop.is_set():
                    break
            if not self._claim():
                return f"max frames ({self._budget.limit if self._budget else 0}) reached"
            kind, img, why = cap.read()
            if kind == "idle":  # nothing within the driver's wait (a triggered camera between parts)
                if self._budget is not None:
                    self._budget.give_back()
                continue
            if kind == "frame":
                self._emit(img, None, at)
            elif kind == "corrupt":  # one bad frame (packets lost): an error verdict, the link is fine
                self._emit(None, why, at)
            elif kind == "error":
                self._emit(None, why, at)
                if self.spec.live:  # a live camera that returns nothing is unplugged: reconnect
                    return str(why)
            else:
                if self._budget is not None:
                    self._budget.give_back()  # nothing was read: another camera may use it
                return str(why)
            if period is not None:
                tick += period
        return "stop requested"

    def _next_tick(self, tick: float, period: float) -> float:
        """Wait for the tick; ticks already past by a whole period were missed (counted as drops)."""
        late = time.monotonic() - tick
        if late >= period:
            skipped = int(late // period)
            self.missed_ticks += skipped
            tick += skipped * period
        self._stop.wait(max(0.0, tick - time.monotonic()))
        return tick
