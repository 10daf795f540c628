"""What a capture thread reads from: a cv2.VideoCapture (index, file, stream), a sorted image folder,
or an Aravis camera (runtime/pipeline/gige.py, imported only when one is asked for).

A network stream is opened with FFmpeg's open and read timeouts set (OPEN_TIMEOUT_MSEC /
READ_TIMEOUT_MSEC), so an RTSP/HTTP server that accepts and never answers costs `STREAM_TIMEOUT_S`,
not FFmpeg's default 30 s per attempt. The capture thread also opens in a helper thread
(runtime/pipeline/camera.py) and reports the camera unavailable while it waits, whatever the backend does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge_somad.contracts.names import IMAGE_SUFFIXES
from edge_somad.errors import ConfigError
from edge_somad.runtime.pipeline.frames import read_image_file
from edge_somad.runtime.pipeline.gige_spec import GigESettings

log = logging.getLogger(__name__)

LIVE_KINDS = ("index", "stream", "aravis")
# Open and read timeout of a network stream: long enough for a slow RTSP handshake, short enough
# that a dead server is retried (and reported) in seconds.
STREAM_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # index | file | stream | folder | aravis
    target: int | str
    loop: bool = False  # replays only: start again at the end instead of ending (bench --cameras)
    fps: float | None = None  # replays only: paced at this line rate, live-like drops (bench --fps)
    # Paced replays only: where in the frame period this camera's ticks fall, in [0, 1). Ticks sit on
    # a grid of the monotonic clock, so cameras with the same rate and phase tick together (cameras
    # triggered by one encoder) and different phases stand for free-running cameras.
    phase: float = 0.0
    gige: GigESettings | None = None  # aravis only: the camera's settings from --camera

    def __post_init__(self) -> None:
        if (self.kind == "aravis") != (self.gige is not None):
            raise ConfigError(f"source kind {self.kind!r} with gige={self.gige!r}; an aravis source needs its "
                              "settings (parse_source('aravis:...')) and no other kind takes them")
        if self.loop and self.kind in LIVE_KINDS:
            raise ConfigError(f"loop=True for a live {self.kind} source {self.target!r}; only a video file or "
                              "an image folder can be replayed in a loop")
        if self.fps is not None and (self.kind in LIVE_KINDS or not 0 < self.fps <= 1000):
            raise ConfigError(f"fps={self.fps} for a {self.kind} source; a line rate paces replays only "
                              "(video file or image folder), in frames per second within (0, 1000]")
        if not 0.0 <= self.phase < 1.0 or (self.phase and self.fps is None):
            raise ConfigError(f"phase={self.phase} (fps={self.fps}); a phase is a fraction of the frame period "
                              "in [0, 1) and needs a line rate (fps)")

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS



def video_capture(spec: SourceSpec) -> cv2.VideoCapture:
    """cv2.VideoCapture for an index, file or stream; streams with bounded open/read waits."""
    if spec.kind == "stream":
        ms = int(STREAM_TIMEOUT_S * 1000)
        return cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    return cv2.VideoCapture(spec.target)


def folder_images(folder: Path) -> list[Path]:
    """The image files of a folder camera, sorted (the replay order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def folder_warning(folder: Path) -> str | None:
    """Why a folder camera will deliver nothing (empty, or images only in subfolders), or None."""
    try:
        if folder_images(folder):
            return None
        subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and folder_images(p))
    except OSError as exc:
        return f"folder camera {folder} cannot be listed: {exc.strerror or exc}"
    hint = f"; its subfolder(s) {', '.join(subs[:5])} do: did you mean {folder / subs[0]}?" if subs else ""
    return (f"folder camera {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}){hint} "
            "It will end at once without a verdict.")


class Capture(Protocol):
    """What CameraSource reads from. read() -> ("frame", img, None) | ("error", None, why): the source
    failed (a live one is reopened) | ("corrupt", None, why): one bad frame, the link is fine |
    ("idle", None, None): nothing yet, ask again | ("end", None, why)."""

    def opened(self) -> bool: ...

    def read(self) -> tuple[str, np.ndarray | None, str | None]: ...

    def release(self) -> None: ...


def open_capture(spec: SourceSpec) -> Capture:
    """The default opener: Aravis for `aravis` sources (imported here, on first use), else _Capture."""
    if spec.gige is not None:
        from edge_somad.runtime.pipeline.gige import GigECapture

        return GigECapture(spec.gige)
    return _Capture(spec)


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
            self.files = folder_images(folder)
            self.total = len(self.files)
        else:
            self.cap = video_capture(spec)
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
            self.cap = video_capture(self.spec)

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


class ReadBudget:
    """Frames all capture threads may still read together (`--max-frames`); None: no limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Claim one read; False once the limit is reached (the thread then ends its source)."""
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.used = max(0, self.used - 1)

    @property
    def spent(self) -> bool:
        return self.limit is not None and self.used >= self.limit
