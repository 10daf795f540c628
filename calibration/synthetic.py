"""Synthetic defects on good frames at the model's input scale, each with its ground-truth mask.

Users fit on good parts only, so the self-check (calibrate), the int8 gate and `fit --method auto`
paste defects into held-out good frames (model canvas, uint8 BGR). Two families:
- conspicuous ones: a cut-paste patch from elsewhere on the part, a contrasted scratch, a colour blob;
- faint ones, shaped like what escapes on real lines: hairlines (a straight or slightly curved
  line) and cracks (a jagged random walk), 1-3 px wide and only CONTRAST_RANGE grey levels off the
  part around them, and texture perturbations (local blur, noise, or the texture rotated/rescaled
  inside a small ellipse).
Every defect lies inside the content box (letterbox padding is never painted) and comes with its
mask: the pixels the defect drew that really changed. numpy + OpenCV only (no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge_somad.errors import InputError

# Defect size as a fraction of the content's shorter side: small enough to be a local defect, large
# enough to cover a few stride-4 patches of the feature grid.
SIZE_RANGE = (0.06, 0.16)
# Hairlines and cracks are longer than they are wide: their length as a fraction of the shorter side.
LINE_RANGE = (0.10, 0.30)
WIDTHS = (1, 2, 3)  # stroke widths (px) of hairlines and cracks, at the model's input scale
# Grey levels a faint defect moves its pixels by (same shift on B, G, R): what a thin scratch on
# brushed metal or a hairline crack in a moulded part looks like after the camera's resize.
CONTRAST_RANGE = (8, 32)
# A blob's soft edge beyond this weight is not counted as the defect (too faint to blame a model for).
BLOB_EDGE = 0.25
KINDS = ("cutpaste", "scratch", "blob", "hairline", "crack", "texture")
CONSPICUOUS = KINDS[:3]  # the original three, kept by the int8 gate whose stability was measured on them


@dataclass(frozen=True)
class Box:
    """Where the part is on the model canvas (letterbox padding excluded)."""

    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class Defects:
    """Synthetic defects: frames, their ground-truth masks, their kinds and the good frame each came from."""

    frames: np.ndarray  # (M, H, W, 3) uint8 BGR
    masks: np.ndarray  # (M, H, W) bool: pixels the defect drew and changed
    kinds: list[str]
    origin: np.ndarray  # (M,) int: index of the good frame it was pasted into


def content_box(frame: np.ndarray, pad_value: int) -> Box:
    """Bounding box of rows/columns that are not entirely the letterbox pad value."""
    differs = (frame != pad_value).any(axis=2)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    h, w = differs.shape
    if rows.size == 0 or cols.size == 0 or rows[-1] - rows[0] < h // 8 or cols[-1] - cols[0] < w // 8:
        return Box(0, 0, h, w)  # a frame that is (nearly) all pad value: use the whole canvas
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _spot(box: Box, rng: np.random.Generator, size_range: tuple[float, float] = SIZE_RANGE) -> tuple[int, int, int]:
    """Centre (y, x) and size of one defect inside the central 80 % of the content box."""
    side = min(box.bottom - box.top, box.right - box.left)
    size = max(4, int(side * rng.uniform(*size_range)))
    my, mx = (box.bottom - box.top) // 10, (box.right - box.left) // 10
    y = int(rng.integers(box.top + my, max(box.top + my + 1, box.bottom - my)))
    x = int(rng.integers(box.left + mx, max(box.left + mx + 1, box.right - mx)))
    return y, x, size


Made = tuple[np.ndarray, np.ndarray]  # (frame, footprint): the new frame and where the defect was drawn


def cutpaste(frame: np.ndarray, box: Box, rng: np.random.Generator) -> Made:
    """A patch of the part from another place, rotated 90 degrees, pasted over the spot."""
    y, x, s = _spot(box, rng)
    sy, sx, _ = _spot(box, rng)
    out, foot = frame.copy(), np.zeros(frame.shape[:2], bool)
    h, w = frame.shape[:2]
    y0, x0 = np.clip(y - s // 2, 0, h - s), np.clip(x - s // 2, 0, w - s)
    sy0, sx0 = np.clip(sy - s // 2, 0, h - s), np.clip(sx - s // 2, 0, w - s)
    patch = np.rot90(frame[sy0:sy0 + s, sx0:sx0 + s]).copy()
    out[y0:y0 + s, x0:x0 + s] = patch[:s, :s]
    foot[y0:y0 + s, x0:x0 + s] = True
    return out, foot


def scratch(frame: np.ndarray, box: Box, rng: np.random.Generator) -> Made:
    """A straight line, black or white against the part around it (anti-aliased: its fringe counts)."""
    y, x, s = _spot(box, rng)
    angle = rng.uniform(0, np.pi)
    dy, dx = int(np.sin(angle) * s), int(np.cos(angle) * s)
    local = frame[max(0, y - s):y + s, max(0, x - s):x + s].reshape(-1, 3).mean(0)
    colour = (0, 0, 0) if local.mean() > 100 else (255, 255, 255)
    out, foot = frame.copy(), np.zeros(frame.shape[:2], np.uint8)
    ends, thick = ((x - dx, y - dy), (x + dx, y + dy)), max(1, s // 12)
    cv2.line(out, *ends, colour, thickness=thick, lineType=cv2.LINE_AA)
    cv2.line(foot, *ends, 255, thickness=thick, lineType=cv2.LINE_AA)
    return out, foot > 0


def blob(frame: np.ndarray, box: Box, rng: np.random.Generator) -> Made:
    """A soft ellipse of a colour shifted away from the part's own (stain, paint, contamination)."""
    y, x, s = _spot(box, rng)
    alpha = np.zeros(frame.shape[:2], np.float32)
    axes = (max(2, s // 2), max(2, int(s * rng.uniform(0.3, 0.6))))
    cv2.ellipse(alpha, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, s / 10))
    shift = rng.choice([-1.0, 1.0], size=3) * rng.uniform(60, 120, size=3)
    stained = np.clip(frame.astype(np.float32) + shift, 0, 255)
    out = (frame * (1 - alpha[..., None]) + stained * alpha[..., None]).round().astype(np.uint8)
    return out, alpha >= BLOB_EDGE


def _faint(frame: np.ndarray, foot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift the footprint's pixels by CONTRAST_RANGE grey levels, toward the side the part has room on."""
    level = float(frame[foot].mean()) if foot.any() else 128.0
    step = int(rng.integers(CONTRAST_RANGE[0], CONTRAST_RANGE[1] + 1))
    room_up, room_down = 255 - level, level
    sign = rng.choice([-1, 1]) if min(room_up, room_down) > CONTRAST_RANGE[1] else (1 if room_up > room_down else -1)
    out = frame.astype(np.int16)
    out[foot] += sign * step
    return np.clip(out, 0, 255).astype(np.uint8)


def _stroke(shape: tuple[int, int], points: np.ndarray, width: int) -> np.ndarray:
    """A hard-edged polyline `width` px wide: a 1 px 8-connected centre line, thickened by a small kernel."""
    centre = np.zeros(shape, np.uint8)
    cv2.polylines(centre, [points.round().astype(np.int32).reshape(-1, 1, 2)], False, 1, 1, cv2.LINE_8)
    if width == 1:
        return centre.astype(bool)
    # 2: a 2x2 square; 3: a 3x3 cross. Both keep the stroke 2-3 px across in any direction.
    kernel = np.ones((2, 2), np.uint8) if width == 2 else cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(centre, kernel).astype(bool)


def hairline(frame: np.ndarray, box: Box, rng: np.random.Generator) -> Made:
    """A thin straight or slightly curved line, a few tens of grey levels off the part (a fine scratch)."""
    y, x, s = _spot(box, rng, LINE_RANGE)
    angle = rng.uniform(0, np.pi)
    direction, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    t = np.linspace(-0.5, 0.5, max(8, s))[:, None]
    bend = rng.uniform(-0.15, 0.15) * s  # sagitta: 0 = straight, up to 15 % of the length = a gentle arc
    points = np.array([x, y]) + t * s * direction + (1 - 4 * t**2) * bend * normal
    foot = _stroke(frame.shape[:2], points, int(rng.choice(WIDTHS)))
    return _faint(frame, foot, rng), foot


def crack(frame: np.ndarray, box: Box, rng: np.random.Generator) -> Made:
    """A jagged walk, 1-2 px wide and faint (a hairline crack), sometimes with one branch."""
    y, x, s = _spot(box, rng, LINE_RANGE)
    steps = max(4, s // 3)

    def walk(start: np.ndarray, course: float, n: int) -> np.ndarray:
        # Each step strays from the course on its own (a zigzag that never curls back onto itself,
        # which would make the stroke wider than it is drawn).
        heading = course + rng.normal(0, 0.45, n).clip(-1.0, 1.0)
        return start + np.cumsum(np.c_[np.cos(heading), np.sin(heading)] * rng.uniform(2, 4, (n, 1)), axis=0)

    course = rng.uniform(0, 2 * np.pi)
    trunk = walk(np.zeros(2), course, steps)
    points = [np.array([x, y]) + trunk - trunk.mean(0)]
    if rng.random() < 0.5:  # a branch leaving the trunk at a clear angle
        at = int(rng.integers(steps // 4, 3 * steps // 4 + 1))
        points.append(walk(points[0][at], course + rng.choice([-1, 1]) * rng.uniform(1.0, 1.5), steps // 2))
    width = int(rng.choice(WIDTHS[:2]))
    foot = np.zeros(frame.shape[:2], bool)
    for n, line in enumerate(points):  # the branch is 1 px: where it leaves the trunk, no wider stroke
        foot |= _stroke(frame.shape[:2], line, 1 if n else width)
    return _faint(frame, foot, rng), foot


def texture(frame: np.ndarray, box: Box, rng: np.random.Generator) -> Made:
    """Inside a small ellipse: the texture blurred, noisier, or rotated and rescaled (a local flaw)."""
    y, x, s = _spot(box, rng)
    foot = np.zeros(frame.shape[:2], np.uint8)
    axes = (max(2, s // 2), max(2, int(s * rng.uniform(0.4, 0.8))))
    cv2.ellipse(foot, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    inside = foot.astype(bool)
    mode = rng.choice(("blur", "noise", "warp"))
    if mode == "blur":
        changed = cv2.GaussianBlur(frame, (0, 0), rng.uniform(1.5, 3.0))
    elif mode == "warp":
        turn = cv2.getRotationMatrix2D((float(x), float(y)), rng.uniform(20, 90), rng.uniform(1.3, 2.0))
        changed = cv2.warpAffine(frame, turn, frame.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    if mode == "noise" or (np.abs(changed.astype(np.int16) - frame)[inside].max(-1) > 2).mean() < 0.25:
        # A flat spot barely changes when blurred or turned: fall back to noise, which always shows.
        noise = rng.normal(0, rng.uniform(6, 15), (*frame.shape[:2], 1))
        changed = np.clip(frame + noise, 0, 255).round().astype(np.uint8)
    out = frame.copy()
    out[inside] = changed[inside]
    return out, inside


MAKERS: dict[str, Callable[[np.ndarray, Box, np.random.Generator], Made]] = {
    "cutpaste": cutpaste, "scratch": scratch, "blob": blob, "hairline": hairline, "crack": crack,
    "texture": texture,
}


def synthetic_defects(frames: np.ndarray, per_kind: int, pad_value: int, seed: int = 0,
                      kinds: tuple[str, ...] = KINDS, spread: bool = False) -> Defects:
    """Synthetic defects pasted into good frames (model space, uint8 BGR), with their masks.

    spread=False: every frame gets `per_kind` defects of each kind (N * per_kind * len(kinds)).
    spread=True: `per_kind` defects of each kind in all, dealt over the frames in turn, so a fixed
    budget of scored images covers every kind whatever the number of frames.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames are {frames.dtype}{frames.shape}; expected uint8 (N, H, W, 3) in model space")
    if per_kind < 1:
        raise InputError(f"per_kind={per_kind}; expected >= 1 synthetic defect of each kind per image")
    unknown = [k for k in kinds if k not in MAKERS]
    if unknown or not kinds:
        raise InputError(f"synthetic defect kinds {list(kinds)}; expected a non-empty subset of {list(KINDS)}")
    if spread:
        total = per_kind * len(kinds)
        # Defect j is of kind j mod K; the frame turns with j and skips one more after each round of
        # kinds, so a frame does not always get the same kind when N and K share a factor.
        plan = [((j + j // len(kinds)) % len(frames), kinds[j % len(kinds)]) for j in range(total)]
    else:
        plan = [(i, kind) for i in range(len(frames)) for kind in kinds for _ in range(per_kind)]
    rng = np.random.default_rng(seed)
    boxes = [content_box(frame, pad_value) for frame in frames]
    out, masks = np.empty((len(plan), *frames.shape[1:]), np.uint8), np.zeros((len(plan), *frames.shape[1:3]), bool)
    for j, (i, kind) in enumerate(plan):
        box = boxes[i]
        out[j] = frames[i]
        # Confined to the part: a blob's blur or a scratch's end must not paint padding.
        inside = (slice(box.top, box.bottom), slice(box.left, box.right))
        made, foot = MAKERS[kind](frames[i], box, rng)
        out[j][inside] = made[inside]
        masks[j][inside] = foot[inside] & (made[inside] != frames[i][inside]).any(axis=-1)
    return Defects(out, masks, [k for _, k in plan], np.array([i for i, _ in plan], int))
