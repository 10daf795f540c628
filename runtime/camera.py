"""Frame sources: camera index, video file, RTSP/HTTP stream, image folder (sorted replay).

One capture thread per source feeds a small bounded queue. Live sources (index, stream) drop the
OLDEST frame when the queue is full, so the scorer always works on the freshest part on the line,
and count the drops. Replay sources (file, folder) wait for room instead: a replay exists to score
every frame (validation, demos, benchmarks), and nothing is lost by waiting.
Live sources reconnect with exponential backoff; replay sources end with an `ended` event, or,
with `loop=True` (benchmarks: N cameras from one clip), start again from the first frame.
A replay given `fps` plays the part of a camera on a line (bench --fps): one frame every 1/fps s,
stamped at its tick, dropped like a live camera's when the line has no room, and a tick the
reader itself missed is counted as a drop too.
A frame that cannot be decoded becomes a FrameItem with `error` set, never silence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_somad.contracts.names import IMAGE_SUFFIXES
from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.frames import read_image_file
from edge_somad.runtime.messages import check_camera_id

log = logging.getLogger(__name__)

LIVE_KINDS = ("index", "stream")
_NOT_IN_IDS = ("/", "\\", ":")  # a '=' after one of these belongs to a path or URL, not to an id


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # index | file | stream | folder
    target: int | str
    loop: bool = False  # replays only: start again at the end instead of ending (bench --cameras)
    fps: float | None = None  # replays only: paced at this line rate, live-like drops (bench --fps)

    def __post_init__(self) -> None:
        if self.loop and self.kind in LIVE_KINDS:
            raise ConfigError(f"loop=True for a live {self.kind} source {self.target!r}; only a video file or "
                              "an image folder can be replayed in a loop")
        if self.fps is not None and (self.kind in LIVE_KINDS or not 0 < self.fps <= 1000):
            raise ConfigError(f"fps={self.fps} for a {self.kind} source; a line rate paces replays only "
                              "(video file or image folder), in frames per second within (0, 1000]")

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS


@dataclass
class FrameItem:
    camera: str
    frame_id: int  # monotonic per camera, errors included
    captured_at: float  # time.time(), for the message
    monotonic: float  # time.monotonic(), for latency maths
    image: np.ndarray | None
    error: str | None = None


@dataclass(frozen=True)
class CameraEvent:
    camera: str
    status: str  # running | reconnecting | ended | stopped
    detail: str
    at: float


def parse_source(spec: str) -> SourceSpec:
    """digits -> camera index; existing dir -> folder; existing file -> video; rtsp/http(s) -> stream."""
    s = spec.strip()
    if s.isdigit():
        return SourceSpec("index", int(s))
    if s.lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return SourceSpec("stream", s)
    p = Path(s).expanduser()
    if p.is_dir():
        return SourceSpec("folder", str(p))
    if p.is_file():
        return SourceSpec("file", str(p))
    raise ConfigError(
        f"camera source {spec!r} is neither a camera index (0, 1, ...), an existing video file or image "
        "folder, nor an rtsp:// / http(s):// URL. Check the path, or give e.g. --camera 0."
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


class DropOldestQueue:
    """Bounded FIFO. put() on a full queue evicts the oldest item and counts a drop.

    Shares a Condition with the consumer so one wait covers every camera.
    """

    def __init__(self, maxsize: int, cond: threading.Condition) -> None:
        if maxsize < 1:
            raise ConfigError(f"queue size {maxsize}; expected >= 1")
        self.maxsize = maxsize
        self.drops = 0
        self._items: deque[FrameItem] = deque()
        self._cond = cond

    def put(self, item: FrameItem, block: bool = False, stop: threading.Event | None = None) -> None:
        """Live (block=False): evict the oldest when full. Replay (block=True): wait for room; on stop,
        append anyway (the queue then holds one item more than maxsize) - a frame that was read is
        never thrown away, the pipeline scores it or reports it."""
        with self._cond:
            if block:  # woken by pop
                while len(self._items) >= self.maxsize and not (stop and stop.is_set()):
                    self._cond.wait(0.1)
            elif len(self._items) >= self.maxsize:
                self._items.popleft()
                self.drops += 1
            self._items.append(item)
            self._cond.notify_all()

    def wait_room(self, stop: threading.Event) -> None:
        """Replay: block until put() would not have to wait (or stop). Reading the next frame only then
        stamps it when it was read, not a batch earlier, and leaves no read frame waiting outside."""
        with self._cond:
            while len(self._items) >= self.maxsize and not stop.is_set():
                self._cond.wait(0.1)

    def pop(self) -> FrameItem | None:
        """Non-blocking; caller holds or takes the shared condition."""
        with self._cond:
            item = self._items.popleft() if self._items else None
            if item is not None:
                self._cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)


class _Capture:
    """What the thread reads from: cv2.VideoCapture, or a sorted image folder."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.files: list[Path] = []
        self.pos = 0
        self.total = 0
        self._read_this_pass = 0  # frames delivered since the last (re)start: a loop must make progress
        self.cap: cv2.VideoCapture | None = None
        if spec.kind == "folder":
            folder = Path(str(spec.target))
            self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.total = len(self.files)
        else:
            self.cap = cv2.VideoCapture(spec.target)
            if spec.kind == "file" and self.cap.isOpened():
                self.total = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def opened(self) -> bool:
        return self.spec.kind == "folder" or bool(self.cap is not None and self.cap.isOpened())

    def read(self) -> tuple[str, np.ndarray | None, str | None]:
        """-> ("frame", img, None) | ("error", None, why) | ("end", None, why)."""
        kind, img, why = self._read_once()
        if kind == "end" and self.spec.loop and self._read_this_pass > 0:
            # Loop from the start. Only after a pass that produced a frame: an empty folder or a file
            # that decodes nothing ends as before instead of spinning here forever.
            self._rewind()
            kind, img, why = self._read_once()
        if kind == "frame":
            self._read_this_pass += 1
        return kind, img, why

    def _rewind(self) -> None:
        self.pos, self._read_this_pass = 0, 0
        if self.cap is not None:  # reopen rather than seek: seeking is unreliable for some codecs
            self.cap.release()
            self.cap = cv2.VideoCapture(self.spec.target)

    def _read_once(self) -> tuple[str, np.ndarray | None, str | None]:
        if self.spec.kind == "folder":
            if self.pos >= len(self.files):
                return "end", None, f"folder replay finished ({self.total} images)"
            path = self.files[self.pos]
            self.pos += 1
            img, why = read_image_file(path)  # whole files only: a truncated JPEG is an error, not a part
            return ("error", None, why) if img is None else ("frame", img, None)
        if self.cap is None:
            return "end", None, "capture released"
        ok, img = self.cap.read()
        if ok and img is not None:
            self.pos += 1
            return "frame", img, None
        if self.spec.kind == "file" and self.total > 0 and self.pos < self.total:
            # The header promised more frames: the file is truncated or corrupt from here on.
            failed_at, self.pos = self.pos, self.total
            return "error", None, f"video decode failed at frame {failed_at} of {self.total} (truncated?)"
        return "end", None, "end of stream"

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()


class CameraSource:
    """A capture thread for one source. Status: starting | running | reconnecting | ended | stopped."""

    def __init__(
        self,
        camera_id: str,
        spec: SourceSpec,
        cond: threading.Condition,
        queue_size: int = 2,
        on_event: Callable[[CameraEvent], None] | None = None,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        drop_when_full: bool | None = None,
        opener: Callable[[SourceSpec], _Capture] = _Capture,
    ) -> None:
        self.id = camera_id
        self.spec = spec
        self.queue = DropOldestQueue(queue_size, cond)
        self.status = "starting"
        self.frames = 0
        self.read_errors = 0
        # A paced replay stands for a camera: the line does not slow it down, it loses frames.
        self._drop = (spec.live or spec.fps is not None) if drop_when_full is None else drop_when_full
        self.missed_ticks = 0  # paced replay: ticks that passed while the reader was still decoding
        self._on_event = on_event
        self._backoff = backoff_s
        self._opener = opener
        self._stop = threading.Event()
        self._next_id = 0
        self._times: deque[float] = deque(maxlen=32)
        # daemon: a stream stuck inside cv2 (e.g. a long RTSP timeout) must not keep the process alive
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera_id}", daemon=True)

    @property
    def drops(self) -> int:
        return self.queue.drops + self.missed_ticks

    @property
    def finished(self) -> bool:
        return self.status in ("ended", "stopped")

    def fps(self) -> float:
        t = list(self._times)
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set(self, status: str, detail: str) -> None:
        self.status = status
        log.info("camera %s: %s (%s)", self.id, status, detail)
        if self._on_event is not None:
            self._on_event(CameraEvent(self.id, status, detail, time.time()))
        with self.queue._cond:  # wake the consumer: it may be waiting for "all ended"
            self.queue._cond.notify_all()

    def _emit(self, image: np.ndarray | None, error: str | None, at: tuple[float, float] | None = None) -> None:
        """at: (time.time(), time.monotonic()) of the capture when it was not now (a paced tick)."""
        wall, mono = at if at is not None else (time.time(), time.monotonic())
        item = FrameItem(self.id, self._next_id, wall, mono, image, error)
        self._next_id += 1
        if error is None:
            self.frames += 1
            self._times.append(item.monotonic)
        else:
            self.read_errors += 1
        self.queue.put(item, block=not self._drop, stop=self._stop)

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            cap = self._opener(self.spec)
            try:
                if not cap.opened():
                    if not self.spec.live:
                        self._emit(None, f"cannot open {self.spec.kind} {self.spec.target}")
                        self._set("ended", f"cannot open {self.spec.target}")
                        return
                    self._set("reconnecting", f"cannot open {self.spec.target}; retry in {delay:g}s")
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
                    continue
                self._set("running", f"{self.spec.kind} {self.spec.target} opened")
                delay = self._backoff[0]
                why = self._pump(cap)
            finally:
                cap.release()
            if self._stop.is_set():
                break
            if not self.spec.live:
                self._set("ended", why)
                return
            self._set("reconnecting", f"{why}; retry in {delay:g}s")
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])
        self._set("stopped", "stop requested")

    def _pump(self, cap: _Capture) -> str:
        """Read until the source ends, fails (live) or stop; returns why it stopped."""
        period = None if self.spec.fps is None else 1.0 / self.spec.fps
        tick = time.monotonic()
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
            kind, img, why = cap.read()
            if kind == "frame":
                self._emit(img, None, at)
            elif kind == "error":
                self._emit(None, why, at)
                if self.spec.live:  # a live camera that returns nothing is unplugged: reconnect
                    return str(why)
            else:
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
