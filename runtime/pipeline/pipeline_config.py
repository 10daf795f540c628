"""The inspection loop's settings (PipelineConfig, CLI options of `run`) and its counters (Stats)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_somad.errors import ConfigError
from edge_somad.runtime.health.health import HealthConfig
from edge_somad.runtime.messaging import messages


@dataclass(frozen=True)
class PipelineConfig:
    heatmap: str = "png"  # png | f16 | none
    overlay: bool = False
    # Pictures (heatmap, overlay) of passes go out on every n-th pass per camera, the first included
    # (1: every pass, 0: none); fails and errors always carry theirs. Encoding is most of the host's
    # per-frame work after the resize, and on a good line nearly every frame is a pass.
    heatmap_passes: int = 10
    max_frames: int | None = None  # stop after this many verdicts in total
    queue_size: int = 2
    heartbeat_s: float = 1.0
    drain_timeout_s: float = 5.0  # on SIGTERM: at most this long scoring what is queued; the rest -> NOT_SCORED
    precision: str = "fp32"  # what the scorer runs, for the message's model block
    health: HealthConfig = field(default_factory=HealthConfig)  # camera faults and drift (runtime/health/health.py)
    # Frames per scorer call. None: the number of cameras, within the scorer's static batch limit;
    # larger lets a camera with several frames queued fill the batch (replays, bursts).
    max_batch: int | None = None
    # A partial batch waits for the other cameras' frames until this long after its oldest frame
    # arrived (a frame that already waited for a busy scorer does not wait again). Small: a frame's
    # latency grows by it, and cameras that run freely (replays, a busy line) have frames queued anyway.
    batch_wait_ms: float = 5.0
    # Resize and input checks in each camera's capture thread, beside the scorer (True), or on the
    # scoring thread between calls (False: what a box with no core to spare beside the scorer may want;
    # `bench` compares both).
    prepare_in_capture: bool = True
    # End the run (exit 1 from `run`) when a camera has delivered nothing for this long; None: never.
    camera_timeout_s: float | None = None
    # A running live camera with no frame for this many frame intervals (and at least stall_min_s) is
    # `stalled`; a source that has not answered an open within open_report_s is `unavailable`.
    stall_frames: float = 5.0
    stall_min_s: float = 1.0
    open_report_s: float = 1.0
    # Triggered inspection (runtime/trigger/): score only the first frame after each trigger from the
    # control endpoint, answer with the part's verdict; a trigger without a deadline gets this one.
    triggered: bool = False
    trigger_deadline_ms: int = 500

    def __post_init__(self) -> None:
        if self.heatmap not in messages.HEATMAP_ENCODINGS:
            raise ConfigError(f"--heatmap {self.heatmap!r}; expected one of {messages.HEATMAP_ENCODINGS}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames {self.max_frames}; expected >= 1 (or leave it out)")
        if self.queue_size < 1:
            raise ConfigError(f"--queue-size {self.queue_size}; expected >= 1")
        if self.heatmap_passes < 0:
            raise ConfigError(f"--heatmap-passes {self.heatmap_passes}; expected >= 0 (0: no pass pictures)")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"--drain-timeout {self.drain_timeout_s}; expected >= 0 seconds")
        if self.heartbeat_s <= 0:
            raise ConfigError(f"heartbeat interval {self.heartbeat_s}; expected > 0 seconds")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch}; expected >= 1 (or leave it out: one per camera)")
        if self.camera_timeout_s is not None and not self.camera_timeout_s > 0:
            raise ConfigError(f"--camera-timeout {self.camera_timeout_s:g}; expected > 0 seconds (or leave it out)")
        if self.stall_frames < 1 or self.stall_min_s <= 0 or self.open_report_s <= 0:
            raise ConfigError(f"stall after {self.stall_frames:g} frame intervals / {self.stall_min_s:g} s, open "
                              f"report after {self.open_report_s:g} s; expected >= 1 interval and > 0 s")
        if not 0 < self.trigger_deadline_ms <= 60_000:
            raise ConfigError(f"--trigger-deadline-ms {self.trigger_deadline_ms}; expected 1..60000 milliseconds")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"--batch-wait-ms {self.batch_wait_ms:g}; expected 0..1000 ms (0: never wait)")



@dataclass
class Stats:
    frames_scored: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: {v: 0 for v in messages.VERDICTS})
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=1000))  # capture -> publish, recent
    score_calls: int = 0  # scorer calls; frames_scored / score_calls = mean batch
    max_batch_seen: int = 0

    @property
    def published(self) -> int:
        return sum(self.verdicts.values())

    def latency(self) -> dict[str, Any]:
        """The heartbeat's `latency_ms` block: capture -> publish over the last (up to 1000) verdicts."""
        lat = np.fromiter(list(self.latencies_ms), np.float64)
        p50, p99 = np.percentile(lat, (50, 99)).round(3).tolist() if lat.size else (None, None)
        return {"p50": p50, "p99": p99, "n": int(lat.size)}
