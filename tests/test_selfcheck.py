"""Synthetic-defect self-check: defects land on the part, and the report counts them right."""

from __future__ import annotations

import numpy as np
import pytest

from edge_somad.calibration import selfcheck
from edge_somad.contracts.geometry import resize_frame
from edge_somad.errors import InputError


def _letterboxed_part(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    part = (rng.random((120, 60, 3)) * 80 + 90).astype(np.uint8)  # a tall textured part
    return resize_frame(part, 64, 96, "letterbox", pad_value=0)


def test_content_box_finds_the_letterboxed_part() -> None:
    frame = _letterboxed_part(0)
    box = selfcheck.content_box(frame, 0)
    assert (box.top, box.bottom) == (0, 64) and 30 <= box.left <= 33 and 63 <= box.right <= 66
    assert selfcheck.content_box(np.zeros((64, 96, 3), np.uint8), 0) == selfcheck.Box(0, 0, 64, 96)


@pytest.mark.parametrize("kind", selfcheck.KINDS)
def test_each_kind_changes_the_part_and_never_the_padding(kind: str) -> None:
    frames = np.stack([_letterboxed_part(i) for i in range(4)])
    out, kinds = selfcheck.synthetic_defects(frames, per_kind=3, pad_value=0, seed=1)
    assert out.shape == (4 * 3 * 3, 64, 96, 3) and out.dtype == np.uint8 and len(kinds) == len(out)
    for i, (img, k) in enumerate(zip(out, kinds, strict=True)):
        if k != kind:
            continue
        src = frames[i // 9]
        changed = (img != src).any(axis=2)
        assert changed.sum() >= 4, f"{kind} left the frame unchanged"
        box = selfcheck.content_box(src, 0)
        outside = changed.copy()
        outside[box.top:box.bottom, box.left:box.right] = False
        assert not outside.any(), f"{kind} painted letterbox padding"


def test_detectability_counts_escapes_at_the_runtime_rule() -> None:
    good = np.array([1.0, 2.0, 3.0])
    bad = np.array([2.5, 5.0, 5.0, 0.5, 9.0, 3.0])  # 3.0 == threshold fails (score >= threshold)
    kinds = ["cutpaste", "cutpaste", "scratch", "scratch", "blob", "blob"]
    r = selfcheck.detectability(good, bad, kinds, threshold=3.0)
    assert r["synthetic_escape_rate"] == round(2 / 6, 4)
    assert r["escape_rate_per_kind"] == {"cutpaste": 0.5, "scratch": 0.5, "blob": 0.0}
    # AUROC by hand: pairs (good, bad) where bad > good: 2.5 beats 2; 5, 5, 9 beat 3; 3.0 beats 2 (ties 1/2).
    wins = sum(1.0 if b > g else 0.5 if b == g else 0.0 for g in good for b in bad)
    assert r["synthetic_auroc"] == pytest.approx(round(wins / 18, 4))


def test_bad_frames_are_refused() -> None:
    with pytest.raises(InputError, match=r"expected uint8 \(N, H, W, 3\)"):
        selfcheck.synthetic_defects(np.zeros((2, 8, 8), np.uint8), 1, 0)
