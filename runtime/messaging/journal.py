"""Bounded on-disk journal of the verdicts `run` published, for subscribers that missed some.

The publisher appends every verdict message as it was sent (topic, header with its `seq`, heatmap,
overlay) under its send lock, so the journal's order is the stream's order and a verdict is in the
journal before the next one is on the wire. The replay endpoint (runtime/messaging/replay.py) reads it back
for a bridge or subscriber that reconnects and saw a gap in `seq`.

Files: `DIR/<run>-<n>.sjr` segments of about max_bytes/8; when the total passes max_bytes the oldest
segment is deleted, and what it held is answered as gone (the asker counts it as missed). The
journal covers the current run only: segments of earlier runs are removed when `run` starts, and a
lock file keeps a second `run` off the same folder. Writes are plain (no fsync): the journal is
for subscribers that were away, not for a power cut. A failed write (disk full) disables it,
loudly, rather than stop the line.

Record: b"SJR1" | u16 camera length | u64 seq | u8 parts | camera | (u32 length | bytes) per part.
"""

from __future__ import annotations

import bisect
import logging
import os
import secrets
import struct
import threading
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_somad.errors import ConfigError

log = logging.getLogger(__name__)

MAGIC = b"SJR1"
_HEAD = struct.Struct("<4sHQB")
_LEN = struct.Struct("<I")
MIN_SEGMENT_BYTES = 64 * 1024


def new_run_id() -> str:
    """A `run` process's id: 63 random bits as 16 hex digits (an SQLite integer holds it)."""
    return f"{secrets.randbits(63):016x}"


@dataclass(frozen=True)
class JournalConfig:
    path: Path
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_bytes < 4 * MIN_SEGMENT_BYTES:
            raise ConfigError(f"--journal-max-mb {self.max_bytes / 2**20:g}; expected at least "
                              f"{4 * MIN_SEGMENT_BYTES / 2**20:g} MB (four segments)")

    @property
    def segment_bytes(self) -> int:
        return max(MIN_SEGMENT_BYTES, self.max_bytes // 8)


@dataclass
class _Segment:
    path: Path
    size: int = 0
    # camera -> (seqs, offsets, lengths): seqs ascending within a segment (one writer, in order)
    index: dict[str, tuple[array, array, array]] = field(default_factory=dict)


@dataclass(frozen=True)
class Slice:
    """What the journal holds for one camera from a requested seq on."""

    records: list[tuple[int, list[bytes]]]  # (seq, message parts as sent)
    oldest: int | None  # the oldest seq still held for the camera (None: nothing held)
    next_seq: int  # the seq the camera's next verdict will get (as far as the journal knows)


class Journal:
    def __init__(self, config: JournalConfig, run_id: str | None = None) -> None:
        self.config, self.run_id = config, run_id or new_run_id()
        path = Path(config.path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._lock_file = _exclusive(path / "journal.lock")
            for old in path.glob("*.sjr"):  # an earlier run's verdicts: not this run's seq numbers
                old.unlink()
        except OSError as exc:
            raise ConfigError(f"--journal {path}: {exc.strerror or exc}; expected a writable folder") from exc
        self.lock = threading.Lock()
        self.segments: deque[_Segment] = deque()
        self.total = 0
        self.next_seq: dict[str, int] = {}
        self.error: str | None = None
        self.evicted = 0  # records deleted to keep the bound
        self._file: Any = None
        self._n = 0
        self._open_segment()

    def _open_segment(self) -> None:
        seg = _Segment(Path(self.config.path) / f"{self.run_id}-{self._n:06d}.sjr")
        self._n += 1
        if self._file is not None:
            self._file.close()
        self._file = open(seg.path, "ab")  # noqa: SIM115 - the current segment, closed on rotation/close
        self.segments.append(seg)

    def append(self, camera: str, seq: int, parts: list[Any]) -> None:
        """Store one verdict message (called by the publisher under its lock, right after the send)."""
        if self.error is not None:
            return
        data = [p.tobytes() if hasattr(p, "tobytes") and not isinstance(p, (bytes, memoryview)) else bytes(p)
                for p in parts]
        cam = camera.encode()
        record = b"".join([_HEAD.pack(MAGIC, len(cam), seq, len(data)), cam,
                           *(_LEN.pack(len(d)) + d for d in data)])
        with self.lock:
            try:
                seg = self.segments[-1]
                if seg.size and seg.size + len(record) > self.config.segment_bytes:
                    self._open_segment()
                    seg = self.segments[-1]
                self._file.write(record)
                self._file.flush()  # readable by the replay thread (a separate file handle) at once
            except OSError as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("verdict journal %s disabled: %s; verdicts are published but no longer kept for "
                          "replay (free disk space and restart run)", self.config.path, self.error)
                return
            seqs, offsets, lengths = seg.index.setdefault(camera, (array("q"), array("q"), array("q")))
            seqs.append(seq)
            offsets.append(seg.size)
            lengths.append(len(record))
            seg.size += len(record)
            self.total += len(record)
            self.next_seq[camera] = seq + 1
            while self.total > self.config.max_bytes and len(self.segments) > 1:
                old = self.segments.popleft()
                self.total -= old.size
                self.evicted += sum(len(v[0]) for v in old.index.values())
                try:
                    old.path.unlink()
                except OSError as exc:  # counted out of the bound anyway; say why the disk still holds it
                    log.warning("verdict journal: cannot delete %s: %s", old.path, exc)

    def read(self, camera: str, from_seq: int, to_seq: int | None, max_records: int, max_bytes: int) -> Slice:
        """Records of `camera` with from_seq <= seq < to_seq, oldest first, within the limits."""
        wanted: list[tuple[int, Path, int, int]] = []
        with self.lock:
            oldest = None
            size = 0
            for seg in self.segments:
                entry = seg.index.get(camera)
                if entry is None or not len(entry[0]):
                    continue
                seqs, offsets, lengths = entry
                oldest = seqs[0] if oldest is None else oldest
                i = bisect.bisect_left(seqs, from_seq)
                while i < len(seqs) and (to_seq is None or seqs[i] < to_seq) and len(wanted) < max_records:
                    if wanted and size + lengths[i] > max_bytes:
                        break
                    wanted.append((seqs[i], seg.path, offsets[i], lengths[i]))
                    size += lengths[i]
                    i += 1
            next_seq = self.next_seq.get(camera, 0)
        records = []
        handles: dict[Path, Any] = {}
        try:
            for seq, path, offset, length in wanted:
                if path not in handles:
                    handles[path] = open(path, "rb")  # noqa: SIM115 - closed below
                f = handles[path]
                f.seek(offset)
                records.append((seq, _parse(f.read(length))))
        except FileNotFoundError:  # evicted while reading: the asker sees `oldest` move on and asks again
            pass
        finally:
            for f in handles.values():
                f.close()
        return Slice(records, oldest, next_seq)

    def cameras(self) -> dict[str, tuple[int | None, int]]:
        """camera -> (oldest seq held, next seq)."""
        with self.lock:
            out = {}
            for camera, nxt in self.next_seq.items():
                firsts = [s.index[camera][0][0] for s in self.segments if len(s.index.get(camera, ((),))[0])]
                out[camera] = (firsts[0] if firsts else None, nxt)
            return out

    def close(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self.error = self.error or "closed"
        self._lock_file.close()


def read_segment(path: Path) -> list[list[bytes]]:
    """Every whole record of one segment file, in order (for tools beside `run`; a torn tail is left out)."""
    data, pos, out = Path(path).read_bytes(), 0, []
    while pos + _HEAD.size <= len(data):
        magic, cam_len, _seq, n = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + cam_len
        for _ in range(n):
            if end + _LEN.size > len(data):
                return out
            end += _LEN.size + _LEN.unpack_from(data, end)[0]
        if magic != MAGIC or end > len(data):
            return out
        out.append(_parse(data[pos:end]))
        pos = end
    return out


def _parse(record: bytes) -> list[bytes]:
    magic, cam_len, _seq, n = _HEAD.unpack_from(record)
    if magic != MAGIC:
        raise ValueError(f"journal record starts with {magic!r}; expected {MAGIC!r}")
    pos, parts = _HEAD.size + cam_len, []
    for _ in range(n):
        (length,) = _LEN.unpack_from(record, pos)
        parts.append(record[pos + _LEN.size:pos + _LEN.size + length])
        pos += _LEN.size + length
    return parts


def _exclusive(path: Path) -> Any:
    import fcntl

    f = open(path, "a")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        f.close()
        raise ConfigError(f"--journal {path.parent} is in use by another run; give each run its own folder") from exc
    os.set_inheritable(f.fileno(), False)
    return f
