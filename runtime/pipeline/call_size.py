"""How many frames the next scorer call takes, for a scorer that runs a batch frame by frame (CPU).

A lone frame on all cores has the lowest latency; frames side by side on single-threaded lanes
(runtime/scorers/ort_scorer.py) give more frames per second but each one takes longer (measured,
bottle, 2-core EPYC: a frame 15 ms on both cores, 25 ms on one lane; pairs 74-77 frames/s against
68-69). So lanes pay only when the line cannot keep up anyway. Two frames that arrive together at
line rate (cameras ticking together, or free-running ones that happen to collide) are a burst, not a
backlog: on all cores they are answered at 15 and 30 ms, side by side at 25 and 25 ms, slower still
while capture threads decode beside them; measured at 4 cameras x 5 fps, lanes on every collision
raised p99 by 4-11 ms. A backlog is frames waiting at several calls in a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_somad.errors import ConfigError

# Calls in a row that found two or more frames waiting before the line counts as saturated; at 5
# frames/s on 4 free-running cameras a run of 4 such calls was not seen in the bench's rows, while an
# unthrottled line meets it at once.
BACKLOG_CALLS = 4


@dataclass
class CallSize:
    """Frames per call: `lanes` while frames have been waiting for `backlog_calls` calls in a row, else 1."""

    lanes: int
    backlog_calls: int = BACKLOG_CALLS
    streak: int = 0

    def __post_init__(self) -> None:
        if self.lanes < 1 or self.backlog_calls < 1:
            raise ConfigError(f"lanes {self.lanes}, backlog after {self.backlog_calls} calls; expected >= 1 each")

    def next(self, waiting: int) -> int:
        """`waiting`: frames queued across the cameras as the call is formed. -> frames to take (>= 1)."""
        self.streak = self.streak + 1 if waiting >= 2 else 0
        return self.lanes if self.streak >= self.backlog_calls else 1
