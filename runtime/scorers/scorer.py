"""The Scorer interface every backend implements, and backend selection.

One loader + one runner per backend (Polygraphy's shape): constructors allocate everything,
`score()` does no I/O. An explicitly requested backend that cannot run raises
BackendUnavailableError; it is never silently replaced by another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_somad.errors import InputError


@dataclass(frozen=True)
class ScoreResult:
    """Raw graph outputs for a batch: scores (B,) float32 and anomaly maps (B, H, W) float32."""

    scores: np.ndarray
    maps: np.ndarray


@runtime_checkable
class Scorer(Protocol):
    backend: str  # "torch" | "onnxruntime" | "tensorrt"
    device: str  # what actually runs it, e.g. "CPUExecutionProvider", "NVIDIA H100"
    height: int
    width: int

    def score(self, frames: np.ndarray) -> ScoreResult:
        """frames: (B, height, width, 3) uint8 BGR, already resized (see edge_somad.contracts.geometry)."""
        ...

    def close(self) -> None: ...


def check_batch(frames: np.ndarray, height: int, width: int, max_batch: int | None = None) -> None:
    """Raise InputError naming what arrived and what the graph expects."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        got = frames.dtype if isinstance(frames, np.ndarray) else type(frames).__name__
        raise InputError(f"frames dtype {got}; expected uint8 (B, {height}, {width}, 3) BGR")
    if frames.ndim != 4 or frames.shape[1:] != (height, width, 3):
        raise InputError(
            f"frames shape {frames.shape}; expected (B, {height}, {width}, 3). "
            "Resize with edge_somad.contracts.geometry.batch_frames first."
        )
    if frames.shape[0] < 1 or (max_batch is not None and frames.shape[0] > max_batch):
        raise InputError(f"batch size {frames.shape[0]}; expected 1..{max_batch or 'any'}")
