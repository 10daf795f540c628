"""OpenCV drawing: colour scale, overlays with ground-truth outlines, line plots, montages."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_somad import viz
from edge_somad.errors import InputError


def test_colorize_fixed_scale_blue_to_red() -> None:
    ramp = np.linspace(-1.0, 3.0, 41)[None, :].repeat(2, axis=0)
    bgr = viz.colorize(ramp, vmin=0.0, vmax=2.0)
    assert bgr.dtype == np.uint8 and bgr.shape == (2, 41, 3)
    blue, red = bgr[0, :, 0].astype(int), bgr[0, :, 2].astype(int)
    # JET's channels are not monotonic (dark blue -> blue ... red -> dark red), its hue is:
    # OpenCV hue 120 = blue falls steadily to 0 = red as the value rises.
    hue = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[0, 10:31, 0].astype(int)  # values 0 .. 2
    assert np.all(np.diff(hue) <= 0) and hue[0] == 120 and hue[-1] == 0
    assert blue[10] > 100 and red[10] == 0  # vmin -> blue
    assert red[30] > 100 and blue[30] == 0  # vmax -> red
    # Below vmin / above vmax clip to the ends: a fixed scale, no per-image autoscale.
    assert (bgr[0, 0] == bgr[0, 10]).all() and (bgr[0, 40] == bgr[0, 30]).all()
    # Same values on a different scale give a different colour (the scale really is the caller's).
    assert not np.array_equal(viz.colorize(np.ones((1, 1)), 0, 2), viz.colorize(np.ones((1, 1)), 0, 10))


@pytest.mark.parametrize(
    ("amap", "vmin", "vmax", "match"),
    [
        (np.zeros((2, 2)), 1.0, 1.0, "vmax > vmin"),
        (np.zeros((2, 2, 1)), 0.0, 1.0, "HxW"),
        (np.full((2, 2), np.nan), 0.0, 1.0, "NaN"),
    ],
)
def test_colorize_rejects(amap: np.ndarray, vmin: float, vmax: float, match: str) -> None:
    with pytest.raises(InputError, match=match):
        viz.colorize(amap, vmin, vmax)


def test_overlay_draws_mask_outline_where_the_border_is() -> None:
    image = np.full((80, 100, 3), 60, np.uint8)
    amap = np.zeros((80, 100))
    mask = np.zeros((80, 100), bool)
    mask[20:50, 30:70] = True
    out = viz.overlay(image, amap, mask, vmin=0.0, vmax=1.0, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    green = (out[..., 1] == 255) & (out[..., 0] == 0) & (out[..., 2] == 0)
    border = mask ^ cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert green[border].mean() > 0.95  # the outline follows the mask border ...
    assert not green[~cv2.dilate(border.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)].any()
    # ... and away from it the pixels are the heatmap blended with the image.
    expected = cv2.addWeighted(image, 0.5, viz.colorize(amap, 0.0, 1.0), 0.5, 0.0)
    assert (out[0:10, 0:10] == expected[0:10, 0:10]).all()
    assert (viz.overlay(image, amap, None, 0.0, 1.0) == expected).all()


def test_overlay_title_strip_and_shape_checks() -> None:
    image = np.zeros((64, 64), np.uint8)  # grey input is accepted
    out = viz.overlay(image, np.zeros((64, 64)), None, 0.0, 1.0, title="colour/00.png score 3.2")
    assert out.shape[1:] == (64, 3) and out.shape[0] > 64
    strip = out[: out.shape[0] - 64]
    assert (strip > 128).any()  # text was drawn
    with pytest.raises(InputError, match="map it to the image"):
        viz.overlay(np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32)), None, 0.0, 1.0)
    with pytest.raises(InputError, match="mask shape"):
        viz.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), np.zeros((4, 4), bool), 0.0, 1.0)


def test_plot_curves_writes_png_with_curve_pixels(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "roc.png"
    x = np.linspace(0, 1, 50)
    viz.plot_curves(path, {"model": (x, np.sqrt(x)), "chance": (x, x)}, "ROC", "FPR", "TPR")
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (480, 640, 3)
    left, top, pw, ph = 70, 40, 550, 380  # the plot area's layout in viz.plot_curves
    first = np.array(viz._PALETTE[0])
    for xv in (0.2, 0.5, 0.8):
        px = left + round(xv * pw)
        py = top + round(ph - np.sqrt(xv) * ph)
        patch = img[py - 2 : py + 3, px - 2 : px + 3].reshape(-1, 3).astype(int)
        # The first curve's colour (not white, not grid grey) is on the curve at each sample x.
        assert np.abs(patch - first).sum(axis=1).min() < 60, (xv, patch)
    assert (img[top + ph // 2, 2:60] < 128).any()  # the rotated y label is present
    assert (img[440:480, 200:440] < 128).any()  # tick labels and x label below the axes


def test_plot_curves_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no curves"):
        viz.plot_curves(tmp_path / "a.png", {}, "t", "x", "y")
    with pytest.raises(InputError, match="must be equal"):
        viz.plot_curves(tmp_path / "a.png", {"c": (np.zeros(3), np.zeros(4))}, "t", "x", "y")


def test_montage_grid() -> None:
    a = np.full((10, 20, 3), 50, np.uint8)
    b = np.full((6, 8), 200, np.uint8)
    out = viz.montage([a, b, a], cols=2)
    assert out.shape == (20, 40, 3) and out.dtype == np.uint8
    assert (out[0:10, 0:20] == 50).all()
    assert (out[2:8, 26:34] == 200).all() and (out[0:2, 20:40] == 0).all()  # b centred in its cell
    assert (out[10:20, 20:40] == 0).all()  # the empty last cell is black
    assert viz.montage([a], cols=5).shape == (10, 20, 3)
    with pytest.raises(InputError):
        viz.montage([], cols=2)
