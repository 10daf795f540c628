"""Self-check without defect photos: how many synthetic defects would pass at the threshold.

Users fit on good parts only, so the question "would this model catch a defect?" has no data. Here
held-out good frames (model space, uint8 BGR) get synthetic defects pasted in (calibration/synthetic.py:
conspicuous ones — a cut-paste patch, a scratch, a colour blob — and faint ones — 1-3 px hairlines
and cracks a few tens of grey levels off the part, local texture changes) and the calibrated
threshold is applied to them. The result is an estimate of detectability, not a measurement on
real defects: read the per-kind escape rates as a warning when even these pass. numpy only (no torch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_somad.calibration.synthetic import KINDS, synthetic_defects
from edge_somad.contracts.decision import fails

log = logging.getLogger(__name__)

# Synthetic defects of each kind in all, at least, however few held-out images there are.
MIN_PER_KIND = 20


def detectability(good_scores: np.ndarray, defect_scores: np.ndarray, kinds: list[str],
                  threshold: float) -> dict[str, object]:
    """Synthetic AUROC (good vs pasted) and the share of pasted defects that pass at `threshold`."""
    from edge_somad.metrics import image_auroc

    good, bad = np.asarray(good_scores, np.float64), np.asarray(defect_scores, np.float64)
    labels = np.r_[np.zeros(good.size, int), np.ones(bad.size, int)]
    kind_arr = np.asarray(kinds)
    passed = ~fails(bad, threshold)  # the runtime's rule
    return {
        "n_good": int(good.size), "n_synthetic": int(bad.size),
        "synthetic_auroc": round(image_auroc(labels, np.r_[good, bad]), 4),
        "synthetic_escape_rate": round(float(passed.mean()), 4),
        "escape_rate_per_kind": {k: round(float(passed[kind_arr == k].mean()), 4) for k in KINDS
                                 if (kind_arr == k).any()},
        "note": "synthetic defects pasted into held-out good images; an estimate, not real defects",
    }


def self_check(score: Callable[[np.ndarray], np.ndarray], good_frames: np.ndarray, good_scores: np.ndarray,
               threshold: float, pad_value: int) -> dict[str, Any]:
    """Synthetic defects in the held-out good frames, scored by `score` and judged at `threshold`."""
    # At least MIN_PER_KIND synthetic defects of each kind, and one of each kind per held-out image
    # (six kinds: as many frames to score as the three kinds at two per image were).
    per_kind = max(1, math.ceil(MIN_PER_KIND / len(good_frames)))
    made = synthetic_defects(good_frames, per_kind, pad_value)
    report = detectability(good_scores, score(made.frames), made.kinds, threshold)
    log.info("self-check: %.0f%% of %d synthetic defects pass at the threshold",
             100 * report["synthetic_escape_rate"], report["n_synthetic"])
    return report


def summary(report: dict[str, Any] | None) -> str:
    """One line for the calibrate table."""
    if not report:
        return "not run"
    per = ", ".join(f"{k} {v:.0%}" for k, v in report["escape_rate_per_kind"].items())
    return (f"{report['synthetic_escape_rate']:.0%} of {report['n_synthetic']} synthetic defects pass "
            f"({per}); synthetic AUROC {report['synthetic_auroc']:.3f}")
