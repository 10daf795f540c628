"""Threshold rules the suite compares, each the product's own function applied to the held-out good scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edge_somad.calibration import threshold as th

Rule = Callable[[np.ndarray], float]

RULES: dict[str, Rule] = {
    "robust@0.005": lambda s: th.robust_threshold(s, 0.005).threshold,
    "robust@0.01": lambda s: th.robust_threshold(s, 0.01).threshold,
    "robust@0.02": lambda s: th.robust_threshold(s, 0.02).threshold,
    "robust@0.05": lambda s: th.robust_threshold(s, 0.05).threshold,
    "empirical@0.005": lambda s: th.empirical_threshold(s, 0.005).threshold,
    "robust-unguarded@0.005": lambda s: th.robust_threshold(s, 0.005, guard=False).threshold,
}
SHIPPED_RULE = "robust@0.005"
# Commissioning on the line (docs/commissioning.md), simulated: the threshold comes from every other test
# good image (the "first good frames of the line", taken the way the test set was), the FRR is counted
# on the others. Reported beside the rules, never chosen: a user only has it after commissioning.
COMMISSIONED = {"line robust@0.005": RULES["robust@0.005"], "line robust@0.02": RULES["robust@0.02"]}


def apply_rule(row: dict[str, Any], rule: str) -> dict[str, float]:
    """FRR and escapes on the row's test set at the threshold `rule` sets from its held-out scores."""
    scores, labels = np.asarray(row["test_scores"]), np.asarray(row["test_labels"])
    good, bad = scores[labels == 0], scores[labels == 1]
    if rule in COMMISSIONED:
        thr = COMMISSIONED[rule](good[0::2].astype(np.float64))
        good = good[1::2]
    else:
        thr = RULES[rule](np.asarray(row["hold_scores"], np.float64))
    return {"threshold": thr, "frr": float((good >= thr).mean()), "escape_rate": float((bad < thr).mean())}


def transfer(row: dict[str, Any], rule: str) -> dict[str, float]:
    """How the held-out goods the threshold was set on compare with the test goods it is judged on.

    shift: (median of test goods - median of held-out goods) in robust sigmas of the held-out goods;
    margin: (threshold - median of test goods) in the same unit. A positive shift means the test goods
    score higher than the held-out ones (FRR above target); a margin near 0 puts half of them above.
    """
    hold = np.asarray(row["hold_scores"], np.float64)
    scores, labels = np.asarray(row["test_scores"]), np.asarray(row["test_labels"])
    good = scores[labels == 0]
    med = float(np.median(hold))
    sigma = max(1.4826 * float(np.median(np.abs(hold - med))), 1e-12)
    at = apply_rule(row, rule)
    return {"n_holdout": float(hold.size), "shift": (float(np.median(good)) - med) / sigma,
            "margin": (at["threshold"] - float(np.median(good))) / sigma, "frr": at["frr"]}
