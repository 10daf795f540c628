"""A minimal stderr progress bar (no extra dependency); silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        pct = int(100 * done / total)
        # Off a terminal, print only every 25% so CI logs stay short.
        if pct == self._last or (not self.tty and pct % 25 and done != total):
            return
        self._last = pct
        bar = "#" * (pct // 4) + "-" * (25 - pct // 4)
        end = "\n" if done >= total or not self.tty else ""
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r{self.label:<22} [{bar}] {pct:3d}% {elapsed:6.1f}s{end}")
        sys.stderr.flush()
