"""Pictures for reports, drawn with OpenCV only (no matplotlib on edge boxes): heatmap overlays,
ROC/PRO line plots and image montages.

Heatmaps use one fixed colour scale given by the caller (usually 0 .. threshold*k), never a
per-image autoscale: autoscaling paints every good part as red as the worst defect.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from edge_somad.errors import InputError

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR line colours for plot_curves, picked for contrast on white.
_PALETTE = ((200, 90, 30), (40, 40, 220), (40, 160, 40), (160, 40, 160), (0, 140, 230), (90, 90, 90))


def colorize(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """HxW scores -> BGR uint8 with COLORMAP_JET: vmin and below blue, vmax and above red."""
    amap = np.asarray(amap)
    if amap.ndim != 2:
        raise InputError(f"anomaly map shape {amap.shape}; expected HxW")
    if not vmax > vmin:
        raise InputError(f"colour range vmin={vmin}, vmax={vmax}; expected vmax > vmin")
    if not np.isfinite(amap).all():
        raise InputError("anomaly map holds NaN/inf; expected finite scores")
    unit = np.clip((amap.astype(np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
    return cv2.applyColorMap(np.round(unit * 255).astype(np.uint8), cv2.COLORMAP_JET)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"image dtype {image.dtype}; expected uint8 BGR")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise InputError(f"image shape {image.shape}; expected HxW or HxWx3 (BGR)")


def _title_strip(width: int, title: str) -> np.ndarray:
    scale = 0.5 * max(1.0, width / 640)  # readable on full-resolution pictures too
    (tw, th), base = cv2.getTextSize(title, _FONT, scale, 1)
    if tw > width - 8:  # shrink long titles to fit rather than cutting them off
        scale *= (width - 8) / tw
        (tw, th), base = cv2.getTextSize(title, _FONT, scale, 1)
    strip = np.zeros((th + base + 10, width, 3), np.uint8)
    cv2.putText(strip, title, (4, th + 5), _FONT, scale, (255, 255, 255), max(1, round(scale)), cv2.LINE_AA)
    return strip


def overlay(
    image_bgr: np.ndarray,
    amap: np.ndarray,
    mask: np.ndarray | None,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    title: str = "",
) -> np.ndarray:
    """Heatmap blended onto the image, ground-truth outline in green (white halo), optional title.

    amap and mask must already be at the image's size (move them with the contracts.geometry Geometry);
    resizing here would hide a letterbox/crop mismatch. With a title the result gains a strip on top.
    """
    image = _as_bgr(image_bgr)
    h, w = image.shape[:2]
    if np.shape(amap) != (h, w):
        raise InputError(
            f"anomaly map shape {np.shape(amap)} != image size {(h, w)}; map it to the image first"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha}; expected 0 <= alpha <= 1")
    out = cv2.addWeighted(image, 1.0 - alpha, colorize(amap, vmin, vmax), alpha, 0.0)
    if mask is not None:
        if np.shape(mask) != (h, w):
            raise InputError(f"mask shape {np.shape(mask)} != image size {(h, w)}")
        binary = (np.asarray(mask) > 0).astype(np.uint8)
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        # A white halo under a green core stays visible on both the blue and the red of the JET map.
        cv2.drawContours(out, contours, -1, (255, 255, 255), 3, cv2.LINE_8)
        cv2.drawContours(out, contours, -1, (0, 255, 0), 1, cv2.LINE_8)
    if title:
        out = np.vstack([_title_strip(w, title), out])
    return out


def _ticks(lo: float, hi: float, n: int = 6) -> np.ndarray:
    return np.linspace(lo, hi, n)


def _y_range(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    ys = np.concatenate([np.asarray(y, np.float64).ravel() for _, y in curves.values()])
    lo, hi = float(ys.min()), float(ys.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0  # rates and scores: always the same [0, 1] frame, so plots compare
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def _put_centered(img: np.ndarray, text: str, cx: int, y: int, scale: float = 0.45) -> None:
    (tw, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    cv2.putText(img, text, (cx - tw // 2, y), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def plot_curves(
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0, 1),
) -> None:
    """Write a 640x480 PNG line plot of named (x, y) curves with axes, ticks, grid and legend."""
    if not curves:
        raise InputError("plot_curves got no curves; expected at least one name -> (x, y)")
    for name, (x, y) in curves.items():
        if np.shape(x) != np.shape(y) or np.size(x) < 1:
            raise InputError(f"curve {name!r}: x {np.shape(x)} and y {np.shape(y)} must be equal, non-empty")
    if not xlim[1] > xlim[0]:
        raise InputError(f"xlim={xlim}; expected (low, high) with high > low")
    width, height, left, right, top, bottom = 640, 480, 70, 20, 40, 60
    pw, ph = width - left - right, height - top - bottom
    canvas = np.full((height, width, 3), 255, np.uint8)
    area = np.full((ph + 1, pw + 1, 3), 255, np.uint8)  # own buffer: lines are clipped to the axes
    ylim = _y_range(curves)

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = (np.asarray(x, np.float64) - xlim[0]) / (xlim[1] - xlim[0]) * pw
        py = ph - (np.asarray(y, np.float64) - ylim[0]) / (ylim[1] - ylim[0]) * ph
        return np.stack([px, py], axis=1)

    for t in _ticks(*xlim):
        gx = round((t - xlim[0]) / (xlim[1] - xlim[0]) * pw)
        cv2.line(area, (gx, 0), (gx, ph), (225, 225, 225), 1)
        _put_centered(canvas, f"{t:.2g}", left + gx, top + ph + 18)
    for t in _ticks(*ylim):
        gy = round(ph - (t - ylim[0]) / (ylim[1] - ylim[0]) * ph)
        cv2.line(area, (0, gy), (pw, gy), (225, 225, 225), 1)
        label = f"{t:.2g}"
        (tw, th), _ = cv2.getTextSize(label, _FONT, 0.45, 1)
        cv2.putText(
            canvas, label, (left - tw - 6, top + gy + th // 2), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    shift = 4  # sub-pixel precision for smooth anti-aliased lines
    for i, (x, y) in enumerate(curves.values()):
        pts = np.round(to_px(x, y) * (1 << shift)).astype(np.int32)
        cv2.polylines(area, [pts], False, _PALETTE[i % len(_PALETTE)], 2, cv2.LINE_AA, shift)
    canvas[top : top + ph + 1, left : left + pw + 1] = area
    cv2.rectangle(canvas, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    _put_centered(canvas, title, width // 2, 26, 0.6)
    _put_centered(canvas, xlabel, left + pw // 2, height - 14, 0.5)
    (tw, th), base = cv2.getTextSize(ylabel, _FONT, 0.5, 1)
    ylab = np.full((th + base + 4, tw + 4, 3), 255, np.uint8)
    cv2.putText(ylab, ylabel, (2, th + 2), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    ylab = cv2.rotate(ylab, cv2.ROTATE_90_COUNTERCLOCKWISE)[: ph + 1]
    y0 = top + (ph + 1 - ylab.shape[0]) // 2
    canvas[y0 : y0 + ylab.shape[0], 4 : 4 + ylab.shape[1]] = ylab
    _legend(canvas, list(curves), left + pw - 8, top + ph - 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise InputError(f"cannot write plot {path}; expected a writable .png path")


def _legend(canvas: np.ndarray, names: list[str], x_right: int, y_bottom: int) -> None:
    """Boxed legend anchored at the lower right of the plot area (ROC/PRO curves live top-left)."""
    sizes = [cv2.getTextSize(n, _FONT, 0.45, 1)[0] for n in names]
    row = max(s[1] for s in sizes) + 8
    box_w = max(s[0] for s in sizes) + 40
    x0, y0 = x_right - box_w, y_bottom - row * len(names) - 6
    cv2.rectangle(canvas, (x0, y0), (x_right, y_bottom), (255, 255, 255), -1)
    cv2.rectangle(canvas, (x0, y0), (x_right, y_bottom), (120, 120, 120), 1)
    for i, name in enumerate(names):
        cy = y0 + 4 + row * i + row // 2
        cv2.line(canvas, (x0 + 6, cy), (x0 + 28, cy), _PALETTE[i % len(_PALETTE)], 2, cv2.LINE_AA)
        cv2.putText(canvas, name, (x0 + 34, cy + 5), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def montage(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Tile images into a grid, row by row; smaller images are centred on black cells."""
    if not images:
        raise InputError("montage got no images; expected at least one")
    if cols < 1:
        raise InputError(f"cols={cols}; expected >= 1")
    tiles = [_as_bgr(im) for im in images]
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    out = np.zeros((rows * cell_h, cols * cell_w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y = r * cell_h + (cell_h - tile.shape[0]) // 2
        x = c * cell_w + (cell_w - tile.shape[1]) // 2
        out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return out
