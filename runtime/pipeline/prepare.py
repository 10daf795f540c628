"""What happens to a frame before it is scored: the one resize and the input checks.

Run in the frame's capture thread (runtime/pipeline/camera.py's `prepare` hook), beside the scorer, or
on the scoring thread (PipelineConfig.prepare_in_capture False, triggered mode). Never raises: a bad
frame, a camera fault or a failing check is an `error` on the prepared frame, which becomes an error
verdict.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_somad.contracts.geometry import check_frame, plan_geometry, resize_planned
from edge_somad.contracts.manifest import Manifest
from edge_somad.errors import InputError
from edge_somad.runtime.health.drift import content_box
from edge_somad.runtime.health.health import LineHealth
from edge_somad.runtime.pipeline.frame_queue import FrameItem
from edge_somad.runtime.pipeline.frames import check_useful_geometry
from edge_somad.runtime.pipeline.trace import MARKS

if TYPE_CHECKING:
    from edge_somad.runtime.pipeline.model_slot import LiveModel

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    item: FrameItem
    resized: np.ndarray | None = None
    frame: np.ndarray | None = None  # BGR, for the overlay
    geometry: Any = None
    error: str | None = None
    score: float | None = None
    amap: np.ndarray | None = None
    repeated: str | None = None  # identical to the camera's previous frame: must not pass
    marks: list[float] = field(default_factory=lambda: [float("nan")] * len(MARKS))  # trace.MARKS of this frame
    model: LiveModel | None = None  # the model it was scored and judged under (None: the current one)


class Preparer:
    """`kinds`: camera id -> source kind (a folder's identical files are identical parts, not a freeze)."""

    def __init__(self, manifest: Manifest, health: LineHealth, lock: threading.Lock, kinds: dict[str, str]) -> None:
        self.manifest, self.health, self._lock, self._kinds = manifest, health, lock, kinds

    def safe(self, item: FrameItem) -> _Prepared:
        try:
            return self.prepare(item)
        except Exception as exc:  # a bug in the checks must not end a camera's thread or the loop: an error verdict
            log.exception("camera %s frame %d: preparing it failed", item.camera, item.frame_id)
            return _Prepared(item, error=f"preparing the frame failed: {type(exc).__name__}: {exc}")

    def prepare(self, item: FrameItem) -> _Prepared:
        p = _Prepared(item, error=item.error)
        if item.error is not None:
            return p
        pre = self.manifest.preprocessing
        try:
            p.frame = check_frame(item.image)
            # Planned once: the resize, the size check, the defect boxes and the overlay all use it.
            p.geometry = plan_geometry(p.frame.shape[0], p.frame.shape[1], pre.height, pre.width, pre.resize)
            check_useful_geometry(p.geometry, self.manifest)
            p.resized = resize_planned(p.frame, p.geometry, pre.resize, pre.pad_value)
        except InputError as exc:
            p.error = f"bad frame: {exc}"
            return p
        with self._lock:
            g = p.geometry
            fault = self.health.frame(item.camera, p.frame.shape[:2], p.resized, item.monotonic,
                                      content_box(g), p.frame, min(g.scale_x, g.scale_y))
            # Files of a folder are separate pictures, not a stream that can freeze: identical ones are
            # identical parts. Live sources and video files are streams.
            p.repeated = self.health.repeated(item.camera) if self._kinds[item.camera] != "folder" else None
        if fault is not None:  # a black or frozen picture says nothing about the part: never a pass
            p.error = f"camera fault: {fault}"
        return p
