"""Input geometry, host side: exactly one resize of a BGR uint8 frame to the model's HxW.

Used by fit, evaluate, calibrate and the runtime alike, so training and deployment see the same
pixels. Everything else (cast, colour order, normalisation) happens inside the graph. Pixel scale
is never guessed from the data: the input must already be uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_somad.contracts.names import RESIZE_MODES
from edge_somad.errors import InputError


@dataclass(frozen=True)
class Geometry:
    """How a frame of size (src_h, src_w) maps onto the model canvas (dst_h, dst_w).

    The frame is scaled by (scale_y, scale_x), its region [y0:y1, x0:x1] of the scaled image is
    placed at canvas offset (top, left). Lets masks and heatmaps move between the two spaces.
    """

    src_h: int
    src_w: int
    dst_h: int
    dst_w: int
    scale_y: float
    scale_x: float
    top: int
    left: int
    crop_y: int
    crop_x: int
    new_h: int
    new_w: int


def plan_geometry(src_h: int, src_w: int, dst_h: int, dst_w: int, mode: str) -> Geometry:
    if mode not in RESIZE_MODES:
        raise InputError(f"resize mode {mode!r} is unknown; expected one of {RESIZE_MODES}")
    if src_h < 1 or src_w < 1:
        raise InputError(f"frame shape is {src_h}x{src_w}: empty image")
    if mode == "stretch":
        return Geometry(src_h, src_w, dst_h, dst_w, dst_h / src_h, dst_w / src_w, 0, 0, 0, 0, dst_h, dst_w)
    fit = min if mode == "letterbox" else max
    s = fit(dst_h / src_h, dst_w / src_w)
    new_h, new_w = max(1, round(src_h * s)), max(1, round(src_w * s))
    if mode == "letterbox":
        new_h, new_w = min(new_h, dst_h), min(new_w, dst_w)
        return Geometry(src_h, src_w, dst_h, dst_w, s, s, (dst_h - new_h) // 2, (dst_w - new_w) // 2,
                        0, 0, new_h, new_w)
    new_h, new_w = max(new_h, dst_h), max(new_w, dst_w)
    return Geometry(src_h, src_w, dst_h, dst_w, s, s, 0, 0, (new_h - dst_h) // 2, (new_w - dst_w) // 2,
                    new_h, new_w)


def check_frame(frame: object) -> np.ndarray:
    """Validate a camera frame: uint8, HxW (grey), HxWx1, HxWx3 (BGR) or HxWx4 (BGRA). Returns BGR."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame is a {type(frame).__name__}; expected a numpy uint8 array HxWx3 (BGR)")
    if frame.dtype != np.uint8:
        raise InputError(
            f"frame dtype is {frame.dtype}; expected uint8 (0..255). Convert explicitly, e.g. "
            "np.clip(x * 255, 0, 255).astype(np.uint8) for [0,1] floats; the scale is never guessed."
        )
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise InputError(f"frame shape is {frame.shape}; expected HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA)")


def resize_frame(frame: np.ndarray, height: int, width: int, mode: str, pad_value: int = 0) -> np.ndarray:
    """One resize of a frame to (height, width, 3) uint8 BGR, contiguous, as the graph expects."""
    bgr = check_frame(frame)
    if bgr.shape[0] < 1 or bgr.shape[1] < 1:
        raise InputError(f"frame shape is {bgr.shape}: empty image")
    return resize_planned(bgr, plan_geometry(bgr.shape[0], bgr.shape[1], height, width, mode), mode, pad_value)


def resize_planned(bgr: np.ndarray, g: Geometry, mode: str, pad_value: int = 0) -> np.ndarray:
    """resize_frame for a checked BGR frame whose geometry the caller planned already (the runtime
    plans it once per frame and keeps it for the defect boxes and the overlay)."""
    if bgr.shape[:2] != (g.src_h, g.src_w):
        raise InputError(f"frame is {bgr.shape[0]}x{bgr.shape[1]} but its geometry was planned for {g.src_h}x{g.src_w}")
    height, width = g.dst_h, g.dst_w
    if (g.new_h, g.new_w) == bgr.shape[:2]:
        scaled = bgr
    else:
        # INTER_AREA is the right filter for the usual downscale and is deterministic; one fixed
        # choice recorded in the manifest, so fit and runtime match bit for bit.
        scaled = cv2.resize(bgr, (g.new_w, g.new_h), interpolation=cv2.INTER_AREA)
    if mode == "crop":
        out = scaled[g.crop_y:g.crop_y + height, g.crop_x:g.crop_x + width]
    elif mode == "letterbox" and (g.new_h, g.new_w) != (height, width):
        out = np.full((height, width, 3), pad_value, np.uint8)
        out[g.top:g.top + g.new_h, g.left:g.left + g.new_w] = scaled
    else:
        out = scaled
    return np.ascontiguousarray(out)


def resize_mask(mask: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Move a ground-truth mask (HxW, nonzero = defect) into model space; returns bool (height, width)."""
    m = (mask.reshape(mask.shape[:2]) > 0).astype(np.uint8) * 255
    g = plan_geometry(m.shape[0], m.shape[1], height, width, mode)
    scaled = cv2.resize(m, (g.new_w, g.new_h), interpolation=cv2.INTER_NEAREST)
    if mode == "crop":
        scaled = scaled[g.crop_y:g.crop_y + height, g.crop_x:g.crop_x + width]
    elif mode == "letterbox":
        out = np.zeros((height, width), np.uint8)
        out[g.top:g.top + g.new_h, g.left:g.left + g.new_w] = scaled
        scaled = out
    return scaled > 127


def batch_frames(
    frames: list[np.ndarray], height: int, width: int, mode: str, pad_value: int = 0
) -> np.ndarray:
    """Resize and stack frames into the graph input (B, height, width, 3) uint8."""
    return np.stack([resize_frame(f, height, width, mode, pad_value) for f in frames])
