"""Where a frame's latency goes: per-stage timestamps of every verdict, and what every scorer call held.

Each published verdict leaves one row of time.monotonic() marks (a few clock reads per frame, so it
is always on); `stages()` turns the rows into per-stage p50/p99/mean milliseconds:
- read: capture (a paced camera's tick, else the end of the read) -> read done; for a paced replay
  this is the decode, for a live camera ~0 (the driver decoded before the frame was stamped);
- prepare: resize and input health (drift metrics, frozen check), in the camera's capture thread;
- enqueue: a replay waiting for room in its queue (0 for a live camera: it drops its oldest);
- queue: waiting in the camera queue until the scoring loop took the frame;
- before_score: taken -> its scorer call starts (the rest of its batch being taken; with
  PipelineConfig.prepare_in_capture False, the loop's resize and checks of the batch, and `prepare` is 0);
- score: its scorer call (the whole batch's call when several frames share one);
- handoff: call ended -> the publishing thread starts on this frame (earlier batches still going out,
  earlier frames of the same batch);
- encode: judge, defects, heatmap/overlay encoding and the header;
- send: the ZeroMQ send.
`total` is capture -> sent. Frames that were never scored (errors) have no score stages and are left
out of those stages' figures but not of `total`.
`calls()` describes batch composition: frames per call, and the spread of the capture times within
one call (cameras whose ticks are phase-aligned arrive together: spread ~0).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

# Marks recorded per frame, in order; stage i runs from mark i to mark i + 1.
MARKS = ("captured", "decoded", "prepared", "queued", "taken", "score_start", "score_end", "publish_start",
         "encoded", "sent")
STAGES = ("read", "prepare", "enqueue", "queue", "before_score", "score", "handoff", "encode", "send")


class Trace:
    """Bounded record of the last `maxlen` frames and scorer calls (written by the loop and publish threads:
    deque appends are atomic, and readers copy)."""

    def __init__(self, maxlen: int = 20000) -> None:
        self._frames: deque[tuple[float, ...]] = deque(maxlen=maxlen)
        self._calls: deque[tuple[int, float, float, float, float]] = deque(maxlen=maxlen)

    def frame(self, marks: list[float]) -> None:
        if len(marks) != len(MARKS):
            raise ValueError(f"{len(marks)} marks; expected {len(MARKS)} ({', '.join(MARKS)})")
        self._frames.append(tuple(marks))

    def call(self, captured: list[float], started: float, ended: float) -> None:
        """One scorer call: the capture times of its frames, and when it ran."""
        self._calls.append((len(captured), (max(captured) - min(captured)) * 1000.0, (ended - started) * 1000.0,
                            started, ended))

    def __len__(self) -> int:
        return len(self._frames)

    def marks(self) -> np.ndarray:
        """(frames, len(MARKS)) float64 monotonic seconds, NaN where a frame skipped a stage."""
        rows = list(self._frames)
        return np.asarray(rows, np.float64).reshape(len(rows), len(MARKS))

    def stages(self) -> dict[str, dict[str, float | int | None]]:
        """{stage: {p50, p99, mean, n}} in ms, for STAGES and `total`."""
        m = self.marks()
        spans = {name: (m[:, i + 1] - m[:, i]) * 1000.0 for i, name in enumerate(STAGES)}
        spans["total"] = (m[:, -1] - m[:, 0]) * 1000.0
        return {name: _summary(v) for name, v in spans.items()}

    def calls(self) -> dict[str, Any]:
        """{calls, mean_size, sizes: {size: count}, spread_p50_ms, spread_p99_ms, call_p50_ms, busy}; busy: the
        share of the time from the first call's start to the last one's end the scorer spent in calls."""
        c = np.asarray(list(self._calls), np.float64).reshape(-1, 5)
        if not len(c):
            return {"calls": 0}
        sizes, counts = np.unique(c[:, 0].astype(int), return_counts=True)
        return {"calls": len(c), "mean_size": round(float(c[:, 0].mean()), 3),
                "sizes": {int(s): int(n) for s, n in zip(sizes, counts, strict=True)},
                "spread_p50_ms": round(float(np.percentile(c[:, 1], 50)), 3),
                "spread_p99_ms": round(float(np.percentile(c[:, 1], 99)), 3),
                "call_p50_ms": round(float(np.percentile(c[:, 2], 50)), 3),
                "busy": round(float(c[:, 2].sum() / 1000.0 / max(c[:, 4].max() - c[:, 3].min(), 1e-9)), 3)}


def _summary(v: np.ndarray) -> dict[str, float | int | None]:
    v = v[np.isfinite(v)]
    if not v.size:
        return {"p50": None, "p99": None, "mean": None, "n": 0}
    p50, p99 = np.percentile(v, (50, 99))
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "mean": round(float(v.mean()), 3),
            "n": int(v.size)}
