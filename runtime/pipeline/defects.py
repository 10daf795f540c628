"""Defect regions from an anomaly map, mapped back to the ORIGINAL camera frame, and the overlay.

The map lives in model space (the letterboxed/cropped/stretched HxW canvas). Thresholds and the
minimum area come from manifest.calibration and are applied in model space, where they were
calibrated; boxes and areas are then reported in original frame pixels via contracts.geometry.Geometry.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge_somad.contracts.decision import fails
from edge_somad.contracts.geometry import Geometry
from edge_somad.runtime.messaging.verdict import Verdict

# Overlay heat scale: like the PNG heatmap, 0..2x the image threshold maps to the colour map.
OVERLAY_RANGE = 2.0


def find_defects(
    anomaly_map: np.ndarray,
    geometry: Geometry,
    pixel_threshold: float | None,
    min_area_px: int = 0,
) -> list[dict[str, Any]]:
    """Connected components of map >= pixel_threshold -> [{x, y, w, h, area_px, max_score}].

    x, y, w, h, area_px are in original frame pixels; max_score in the map's raw units. Empty when
    there is no pixel threshold (the model was not calibrated for localisation). The map must be
    finite: a Verdict's is (judge checked it); defects_of takes one.
    """
    if pixel_threshold is None:
        return []
    mask = fails(anomaly_map, pixel_threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    area_scale = 1.0 / (geometry.scale_x * geometry.scale_y)
    for i in range(1, n):  # label 0 is the background
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area_px:
            continue
        box = box_to_frame(x, y, w, h, geometry)
        if box is None:  # entirely inside the letterbox padding: not part of the frame
            continue
        out.append({
            "x": box[0], "y": box[1], "w": box[2], "h": box[3],
            "area_px": round(area * area_scale),
            "max_score": float(anomaly_map[labels == i].max()),
        })
    out.sort(key=lambda d: -d["max_score"])
    return out


def box_threshold(pixel_threshold: float | None, image_threshold: float | None,
                  anomaly_map: np.ndarray | None = None) -> float | None:
    """The map level a defect box is drawn at: the pixel threshold, but never below the image threshold.

    The image score is the mean of the map's hottest pixels, so the image threshold is on the map's
    own scale. The pixel threshold (a high quantile of good-map pixels) usually sits BELOW it: on a
    part that failed, most of the map then lies above it and the box grows to the whole hot area
    (bottle: boxes covering 27 % of the frame, median IoU 0.51 with the true defects; at the image
    threshold 21 % and 0.63 - docs/results.md). At the image threshold, a box marks where the
    map is as hot as a whole failing part must be.
    """
    if pixel_threshold is None:
        return None
    return pixel_threshold if image_threshold is None else max(pixel_threshold, image_threshold)


def defects_of(verdict: Verdict, pixel_threshold: float | None, min_area_px: int = 0) -> list[dict[str, Any]]:
    """The defect regions of a failing verdict's map.

    Only a `fail` has defects: a box is a region at or above the pixel threshold ON A REJECTED PART.
    A pass (below the image threshold) may still hold pixels above the pixel threshold; boxing them
    would show a PLC or operator "PASS" with a defect, so it gets none (its heatmap still shows them).
    """
    if verdict.verdict != "fail" or verdict.anomaly_map is None or verdict.geometry is None:
        return []
    cut = box_threshold(pixel_threshold, verdict.threshold, verdict.anomaly_map)
    return find_defects(verdict.anomaly_map, verdict.geometry, cut, min_area_px)


def box_to_frame(x: int, y: int, w: int, h: int, g: Geometry) -> tuple[int, int, int, int] | None:
    """Model-space box -> original-frame box (clipped); None if it lies outside the frame."""
    x0 = (x - g.left + g.crop_x) / g.scale_x
    y0 = (y - g.top + g.crop_y) / g.scale_y
    x1 = (x + w - g.left + g.crop_x) / g.scale_x
    y1 = (y + h - g.top + g.crop_y) / g.scale_y
    fx0, fy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    fx1, fy1 = min(g.src_w, int(np.ceil(x1))), min(g.src_h, int(np.ceil(y1)))
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    return fx0, fy0, fx1 - fx0, fy1 - fy0


def map_to_frame(anomaly_map: np.ndarray, g: Geometry) -> np.ndarray:
    """Model-space map -> float32 (src_h, src_w) map over the original frame (0 where not covered)."""
    out = np.zeros((g.src_h, g.src_w), np.float32)
    if g.new_h > g.dst_h or g.new_w > g.dst_w:
        # crop: the canvas shows scaled[crop_y:crop_y+dst_h, crop_x:crop_x+dst_w]; put it back there
        scaled = np.zeros((g.new_h, g.new_w), np.float32)
        scaled[g.crop_y:g.crop_y + g.dst_h, g.crop_x:g.crop_x + g.dst_w] = anomaly_map
    else:
        # letterbox/stretch: the frame occupies canvas[top:top+new_h, left:left+new_w]
        scaled = anomaly_map[g.top:g.top + g.new_h, g.left:g.left + g.new_w]
    resized = cv2.resize(np.ascontiguousarray(scaled, np.float32), (g.src_w, g.src_h),
                         interpolation=cv2.INTER_LINEAR)
    out[:] = resized
    return out


def render_overlay(
    frame: np.ndarray,
    verdict: Verdict,
    defects: list[dict[str, Any]],
    jpeg_quality: int = 80,
) -> bytes | None:
    """JPEG for operators: frame + heat (0..2x threshold) + defect boxes + verdict text.

    None when the JPEG cannot be encoded: the message then carries no overlay part and says so.
    """
    view = frame.copy()
    if verdict.normalised_map is not None and verdict.geometry is not None:
        heat = np.clip(map_to_frame(verdict.normalised_map, verdict.geometry), 0, OVERLAY_RANGE)
        heat_u8 = (heat * (255.0 / OVERLAY_RANGE)).astype(np.uint8)
        coloured = cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET)
        view = cv2.addWeighted(view, 0.6, coloured, 0.4, 0)
    colour = {"pass": (0, 200, 0), "fail": (0, 0, 255)}.get(verdict.verdict, (0, 200, 255))
    for d in defects:
        cv2.rectangle(view, (d["x"], d["y"]), (d["x"] + d["w"] - 1, d["y"] + d["h"] - 1), (0, 0, 255), 2)
    cv2.putText(view, verdict.verdict.upper(), (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    return buf.tobytes() if ok and len(buf) else None
