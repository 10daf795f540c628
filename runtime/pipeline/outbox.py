"""An ordered hand-off to one worker thread: the pipeline publishes batch k while it scores batch k+1.

Encoding a batch's verdicts (defects, PNG heatmaps, overlays, JSON, ZeroMQ sends) is CPU work that
needs no result of the next inference, so it runs here, overlapped with scoring, instead of between
two inferences. Guarantees the pipeline relies on:
- batches are handled one at a time, in the order they were put (per-camera verdict order holds);
- at most `depth` batches are waiting or in progress: `put` blocks beyond that, so a slow publisher
  slows the line down instead of growing memory and latency without bound;
- `close()` returns only once every batch put before it was handled (the final status comes last);
- an exception in the handler is not lost in the thread: the next `put` or `close` raises it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from edge_somad.errors import ConfigError

T = TypeVar("T")


class Outbox(Generic[T]):
    def __init__(self, handler: Callable[[T], None], depth: int = 2, name: str = "publish") -> None:
        if depth < 1:
            raise ConfigError(f"outbox depth {depth}; expected >= 1 batch")
        self._handler = handler
        self._depth = depth
        self._items: deque[T] = deque()  # the head is the batch being handled
        self._cond = threading.Condition()
        self._closing = False
        self.error: BaseException | None = None
        self.handled = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def accepting(self) -> bool:
        """Started and not closed (a failed handler still counts: `put` then raises its error)."""
        return self._thread.ident is not None and not self._closing

    def put(self, batch: T) -> None:
        """Queue a batch; blocks while `depth` batches are still unhandled. Raises the handler's error."""
        with self._cond:
            while len(self._items) >= self._depth and self.error is None:
                self._cond.wait()
            self._raise()
            self._items.append(batch)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        """Handle everything queued, stop the thread, and raise the handler's error if there was one."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the publishing thread failed: {type(self.error).__name__}: {self.error}") \
                from self.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    return
                batch = self._items[0]
            try:
                self._handler(batch)
            except BaseException as exc:  # handed to the loop thread, which raises it
                with self._cond:
                    self.error = exc
                    self._items.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._items.popleft()
                self.handled += 1
                self._cond.notify_all()
