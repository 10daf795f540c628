"""Synthetic defects: on the part only, masks equal to what changed, thin and faint where they claim to be."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_somad.calibration import synthetic
from edge_somad.contracts.geometry import resize_frame
from edge_somad.errors import InputError

THIN = ("hairline", "crack")


def _letterboxed_part(seed: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A textured part letterboxed onto the canvas (padding on the left and right)."""
    rng = np.random.default_rng(seed)
    part = cv2.GaussianBlur((rng.random((240, 120, 3)) * 120 + 60).astype(np.uint8), (0, 0), 1.5)
    return resize_frame(part, height, width, "letterbox", pad_value=0)


@pytest.fixture(scope="module")
def drawn() -> tuple[np.ndarray, synthetic.Defects]:
    """Every kind, several times, on 224x560 canvases (the model's input scale, part in the middle)."""
    frames = np.stack([_letterboxed_part(i, 224, 560) for i in range(3)])
    return frames, synthetic.synthetic_defects(frames, per_kind=8, pad_value=0, seed=1)


def test_content_box_finds_the_letterboxed_part() -> None:
    frame = _letterboxed_part(0)
    box = synthetic.content_box(frame, 0)
    assert (box.top, box.bottom) == (0, 64) and 30 <= box.left <= 33 and 63 <= box.right <= 66
    assert synthetic.content_box(np.zeros((64, 96, 3), np.uint8), 0) == synthetic.Box(0, 0, 64, 96)


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_each_kind_changes_the_part_never_the_padding_and_its_mask_is_what_changed(
        kind: str, drawn: tuple[np.ndarray, synthetic.Defects]) -> None:
    frames, made = drawn
    assert made.frames.shape == (3 * 8 * len(synthetic.KINDS), 224, 560, 3) and made.frames.dtype == np.uint8
    assert len(made.kinds) == len(made.frames) == len(made.masks) == len(made.origin)
    for img, mask, k, i in zip(made.frames, made.masks, made.kinds, made.origin, strict=True):
        if k != kind:
            continue
        src = frames[i]
        diff = np.abs(img.astype(np.int16) - src).max(axis=-1)
        changed = diff > 0
        assert mask.sum() >= 4, f"{kind} left the frame (nearly) unchanged"
        box = synthetic.content_box(src, 0)
        outside = changed.copy()
        outside[box.top:box.bottom, box.left:box.right] = False
        assert not outside.any(), f"{kind} painted letterbox padding"
        assert not (mask & ~changed).any(), f"{kind}'s mask marks pixels that did not change"
        if kind == "blob":  # a soft edge: what changes beyond the mask is the faint fringe only
            assert diff[changed & ~mask].max(initial=0) <= synthetic.BLOB_EDGE * 120 + 1
        else:
            assert (mask == changed).all(), f"{kind}: changed pixels outside its mask"


@pytest.mark.parametrize("kind", THIN)
def test_hairlines_and_cracks_are_1_to_3_px_wide_and_faint(kind: str, drawn: tuple[np.ndarray, synthetic.Defects]
                                                           ) -> None:
    frames, made = drawn
    widths = []
    for img, mask, k, i in zip(made.frames, made.masks, made.kinds, made.origin, strict=True):
        if k != kind:
            continue
        stroke = mask.astype(np.uint8)
        # Distance of each stroke pixel to the nearest untouched pixel: 1 on a 1-2 px stroke, 2 at the
        # centre of a 3 px one; a 4 px stroke would also hold a 4x4 square, which none may.
        depth = cv2.distanceTransform(stroke, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        width = 2 * depth.max() - 1
        assert 1 <= width <= 3, f"{kind} stroke {width:.1f} px wide"
        assert not cv2.erode(stroke, np.ones((4, 4), np.uint8)).any(), f"{kind} holds a 4x4 block"
        widths.append(width)
        ys, xs = np.nonzero(mask)
        assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 3 * width, f"{kind} is not a line"
        # Faint: every stroke pixel moved by the same shift, within CONTRAST_RANGE (less only where clipped).
        delta = img[mask].astype(np.int16) - frames[i][mask]
        shift = np.abs(delta).max()
        assert synthetic.CONTRAST_RANGE[0] <= shift <= synthetic.CONTRAST_RANGE[1], f"{kind} shifted by {shift}"
        clipped = (img[mask] == 0) | (img[mask] == 255)
        assert (np.abs(delta)[~clipped] == shift).all()
    assert len(widths) == 24 and len(set(np.round(widths, 1))) >= 2, "stroke widths never vary"


def test_spread_deals_every_kind_over_the_frames() -> None:
    frames = np.stack([_letterboxed_part(i) for i in range(4)])
    made = synthetic.synthetic_defects(frames, per_kind=3, pad_value=0, seed=0, spread=True)
    assert len(made.frames) == 3 * len(synthetic.KINDS)
    assert {k: made.kinds.count(k) for k in synthetic.KINDS} == dict.fromkeys(synthetic.KINDS, 3)
    assert np.ptp(np.bincount(made.origin, minlength=4)) <= 1  # dealt evenly
    for k in ("hairline", "texture"):  # a kind is not stuck on one frame when 4 and 6 share a factor
        assert len({int(i) for i, kk in zip(made.origin, made.kinds, strict=True) if kk == k}) >= 2


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError, match=r"expected uint8 \(N, H, W, 3\)"):
        synthetic.synthetic_defects(np.zeros((2, 8, 8), np.uint8), 1, 0)
    with pytest.raises(InputError, match="expected a non-empty subset"):
        synthetic.synthetic_defects(np.zeros((1, 8, 8, 3), np.uint8), 1, 0, kinds=("dent",))
