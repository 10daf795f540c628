"""Synthetic-defect self-check: the report counts escapes right and covers every kind."""

from __future__ import annotations

import numpy as np
import pytest

from edge_somad.calibration import selfcheck
from edge_somad.calibration.synthetic import KINDS


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


def test_self_check_scores_every_kind_on_each_held_out_frame() -> None:
    rng = np.random.default_rng(0)
    frames = (rng.random((3, 48, 64, 3)) * 80 + 90).astype(np.uint8)
    seen = []

    def score(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch.mean(axis=(1, 2, 3))

    report = selfcheck.self_check(score, frames, score(frames), threshold=1e9, pad_value=0)
    per_kind = -(-selfcheck.MIN_PER_KIND // 3)
    assert seen[-1] == 3 * per_kind * len(KINDS) == report["n_synthetic"]
    assert set(report["escape_rate_per_kind"]) == set(KINDS) and report["synthetic_escape_rate"] == 1.0
