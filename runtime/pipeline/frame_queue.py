"""A camera's frames (FrameItem) and the bounded queue between its capture thread and the pipeline."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_somad.errors import ConfigError


@dataclass
class FrameItem:
    camera: str
    frame_id: int  # monotonic per camera, errors included
    captured_at: float  # time.time(), for the message
    monotonic: float  # time.monotonic(), for latency maths
    image: np.ndarray | None
    error: str | None = None
    # What the capture thread's `prepare` hook made of the frame (the pipeline's resized frame and
    # input checks), so the scoring thread only scores.
    prepared: Any = None
    # time.monotonic() when the read (decode) ended, the hook ended, the frame entered its camera queue
    # and the loop took it: the first marks of runtime/pipeline/trace.py's per-frame record.
    decoded_at: float = float("nan")
    prepared_at: float = float("nan")
    queued_at: float = float("nan")
    taken_at: float = float("nan")



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
            item.queued_at = time.monotonic()
            self._items.append(item)
            self._cond.notify_all()

    def wait_room(self, stop: threading.Event) -> None:
        """Replay: block until put() would not have to wait (or stop). Reading the next frame only then
        stamps it when it was read, not a batch earlier, and leaves no read frame waiting outside."""
        with self._cond:
            while len(self._items) >= self.maxsize and not stop.is_set():
                self._cond.wait(0.1)

    def peek(self) -> FrameItem | None:
        """The oldest item, left in the queue; caller holds the shared condition."""
        return self._items[0] if self._items else None

    def pop(self) -> FrameItem | None:
        """Non-blocking; caller holds or takes the shared condition."""
        with self._cond:
            item = self._items.popleft() if self._items else None
            if item is not None:
                item.taken_at = time.monotonic()
                self._cond.notify_all()
            return item

    def __len__(self) -> int:
        return len(self._items)
