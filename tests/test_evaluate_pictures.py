"""evaluate's pictures are drawn at the original image resolution, with the heat where the defect is."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_somad.config import InputSpec
from edge_somad.data import load_category
from edge_somad.evaluate import load_test_set, write_pictures


def test_pictures_at_original_resolution(tmp_path: Path, synth_root: Path) -> None:
    category = load_category(synth_root, "widget")  # 120x160 images
    ts = load_test_set(category, InputSpec(48, 48, resize="letterbox"))
    assert ts.frames.shape[1:3] == (48, 48)
    # a "perfect" model: the map is the ground truth in model space, so the heat must land on the defect
    maps = ts.masks.astype(np.float32) if ts.masks is not None else np.zeros(ts.frames.shape[:3], np.float32)
    scores = maps.reshape(len(maps), -1).max(1)
    names = write_pictures(tmp_path, ts, scores, maps, threshold=1.0, n=len(ts.samples))
    pictures = [n for n in names if n.startswith("paint_")]
    assert pictures and "roc.png" in names
    for name in pictures:
        img = cv2.imread(str(tmp_path / name))
        assert img.shape[1] == 160 and img.shape[0] > 120  # full width; the title strip sits on top
        body = img[-120:]
        sample = next(s for s in ts.samples if f"{s.defect_type}_{s.path.stem}.png" == name)
        mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        # JET red (hot) inside the defect, blue (cold) far from it
        inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        red = body[..., 2].astype(int) - body[..., 0].astype(int)
        assert red[inner].mean() > 50
        far = ~cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
        assert red[far].mean() < 0
