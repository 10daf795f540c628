"""Defect boxes: the IoU maths, the box level (never below the image threshold) and evaluate's box report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_somad import metrics
from edge_somad.config import InputSpec
from edge_somad.data import load_category
from edge_somad.evaluate import box_report, load_test_set
from edge_somad.runtime.pipeline.defects import box_threshold


def test_box_iou_against_hand_computed_values() -> None:
    assert metrics.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert metrics.box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert metrics.box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    pred, gt = metrics.best_ious([(0, 0, 10, 10), (50, 50, 4, 4)], [(0, 0, 10, 20)])
    assert pred == pytest.approx([0.5, 0.0]) and gt == pytest.approx([0.5])
    assert metrics.best_ious([], [(0, 0, 1, 1)]) == ([], [0.0])  # a missed defect counts as 0


def test_mask_boxes_are_the_8_connected_components() -> None:
    m = np.zeros((20, 30), np.uint8)
    m[2:5, 3:9] = 1
    m[5, 9] = 1  # diagonal neighbour: same component
    m[10:18, 20:22] = 1
    assert sorted(metrics.mask_boxes(m)) == [(3, 2, 7, 4), (20, 10, 2, 8)]


def test_boxes_are_drawn_no_lower_than_the_image_threshold() -> None:
    assert box_threshold(11.7, 13.2) == 13.2  # the pixel threshold below the image one: the image one
    assert box_threshold(15.0, 13.2) == 15.0
    assert box_threshold(None, 13.2) is None  # no pixel threshold: not calibrated for boxes
    assert box_threshold(0.5, None) == 0.5


def test_box_report_rewards_tight_boxes_and_punishes_whole_frame_boxes(synth_root: Path) -> None:
    ts = load_test_set(load_category(synth_root, "widget"), InputSpec(48, 64, resize="letterbox"))
    assert ts.masks is not None
    perfect = ts.masks.astype(np.float32) * 2.0  # the ground truth as the map: boxes = true boxes
    scores = perfect.reshape(len(perfect), -1).max(1)
    tight = box_report(ts, scores, perfect, threshold=1.0, pixel_threshold=0.5)
    assert tight["n_images"] == int(ts.labels.sum()) and tight["median_iou"] > 0.8
    assert tight["fails_without_box"] == 0
    blob = np.where(ts.valid, 2.0, 0.0).astype(np.float32)  # every defective part hot all over
    loose = box_report(ts, np.full(len(ts.samples), 2.0), blob, threshold=1.0, pixel_threshold=0.5)
    assert loose["median_iou"] < 0.3 and loose["frame_share"] > 0.9
    assert box_report(ts, scores, perfect, threshold=1.0, pixel_threshold=None)["median_iou"] is None
