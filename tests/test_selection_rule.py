"""The auto selection's rule on constructed scores: SOMAD stays unless a candidate is better beyond doubt."""

from __future__ import annotations

import numpy as np
import pytest

from edge_somad import metrics
from edge_somad import selection_rule as rule


def _scores(rng: np.random.Generator, n_good: int, per_frame: int, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Good scores N(0, 1) and defect scores N(gap, 1), `per_frame` defects pasted into each good frame."""
    return rng.normal(0, 1, n_good), rng.normal(gap, 1, n_good * per_frame)


def _decide(good: np.ndarray, bad: np.ndarray, origin: np.ndarray, pixel: list[tuple[float, float]],
            seed: int = 0) -> tuple[int, list[dict]]:
    labels = np.r_[np.zeros(good.shape[1], int), np.ones(bad.shape[1], int)]
    evidence = [rule.Evidence(name, metrics.image_auroc(labels, np.r_[g, b]), pix, pro)
                for name, g, b, (pix, pro) in zip(("somad", "cand"), good, bad, pixel, strict=True)]
    aurocs = rule.bootstrap_aurocs(good, bad, origin, rule.resample_draws(good.shape[1], 1000, seed))
    return rule.decide(evidence, aurocs)


CASES = [
    # name, n_good, defects per frame, somad gap, candidate gap, candidate pixel (AUROC, PRO), expected.
    # A candidate gap of None: SOMAD's scores with one defect moved up past 2 good frames and another
    # down past 1: one pair better in all (+1/192 of AUROC), each move in or out of a resample.
    ("hair above, small noisy sample", 8, 3, 1.0, None, (0.95, 0.90), 0),
    ("clearly better, large sample", 40, 4, 0.5, 3.0, (0.95, 0.90), 1),
    ("clearly better images, collapsed maps", 40, 4, 0.5, 3.0, (0.77, 0.40), 0),
    ("clearly better images, PRO worse beyond tolerance", 40, 4, 0.5, 3.0, (0.95, 0.89), 0),
    ("clearly better images, pixel AUROC lower within tolerance", 40, 4, 0.5, 3.0, (0.946, 0.90), 1),
]


@pytest.mark.parametrize(("name", "n_good", "per_frame", "gap_somad", "gap_cand", "pixel", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_rule_leaves_somad_only_beyond_uncertainty_and_with_maps_no_worse(
        name: str, n_good: int, per_frame: int, gap_somad: float, gap_cand: float | None,
        pixel: tuple[float, float], expected: int) -> None:
    rng = np.random.default_rng(3)
    gs, bs = _scores(rng, n_good, per_frame, gap_somad)
    if gap_cand is None:
        gs, bs = np.arange(n_good, dtype=float), rng.uniform(-1, n_good + 1, n_good * per_frame)
        up, down = np.flatnonzero((bs > 0) & (bs < n_good - 3))[0], np.flatnonzero((bs > 1) & (bs < n_good))[-1]
        gc, bc = gs, bs.copy()
        bc[up] += 2
        bc[down] -= 1
    else:
        gc, bc = _scores(rng, n_good, per_frame, gap_cand)
    origin = np.repeat(np.arange(n_good), per_frame)
    chosen, rows = _decide(np.stack([gs, gc]), np.stack([bs, bc]), origin, [(0.95, 0.90), pixel])
    assert chosen == expected, rows
    cand = rows[1]
    assert cand["margin"] > 0, "every case gives the candidate the higher image AUROC"
    if gap_cand is None:  # a hair: well inside one bootstrap std
        assert cand["margin"] < cand["margin_std"], cand
    lo, hi = cand["margin_interval"]
    assert lo <= cand["margin"] <= hi and cand["margin_std"] > 0
    assert rows[chosen].get("chosen") is True and "chosen" not in rows[1 - chosen]
    if expected == 0 and lo > 0:
        assert cand["why"].startswith("pixel ranking worse"), cand["why"]
    if expected == 0 and lo <= 0:
        assert "within its uncertainty" in cand["why"], cand["why"]


def test_equal_candidates_keep_the_baseline() -> None:
    rng = np.random.default_rng(0)
    good, bad = _scores(rng, 10, 2, 1.0)
    chosen, rows = _decide(np.stack([good, good]), np.stack([bad, bad]), np.repeat(np.arange(10), 2),
                           [(0.9, 0.8), (0.9, 0.8)])
    assert chosen == 0 and rows[1]["margin"] == 0 and rows[1]["margin_interval"] == [0, 0]


def test_the_largest_margin_among_eligible_candidates_wins() -> None:
    rng = np.random.default_rng(1)
    n, per = 40, 3
    sets = [_scores(rng, n, per, gap) for gap in (0.3, 2.0, 3.0)]
    good, bad = np.stack([s[0] for s in sets]), np.stack([s[1] for s in sets])
    labels = np.r_[np.zeros(n, int), np.ones(n * per, int)]
    evidence = [rule.Evidence(f"c{i}", metrics.image_auroc(labels, np.r_[g, b]), 0.9, 0.8)
                for i, (g, b) in enumerate(zip(good, bad, strict=True))]
    aurocs = rule.bootstrap_aurocs(good, bad, np.repeat(np.arange(n), per), rule.resample_draws(n))
    chosen, rows = rule.decide(evidence, aurocs)
    assert chosen == 2 and "not chosen: c2 has the larger margin" in rows[1]["why"]


def test_bootstrap_matches_a_float64_brute_force_loop() -> None:
    """Every resample's AUROC equals metrics.image_auroc on the resampled frames and their defects."""
    rng = np.random.default_rng(7)
    n_good, n_bad = 9, 23
    good = rng.normal(0, 1, (2, n_good)).round(1)  # rounded: ties between good and defect scores count 1/2
    bad = rng.normal(0.8, 1, (2, n_bad)).round(1)
    origin = rng.integers(0, n_good, n_bad)  # uneven: some frames carry several defects, some none
    draws = rule.resample_draws(n_good, 300, seed=5)
    fast = rule.bootstrap_aurocs(good, bad, origin, draws)
    slow = np.full((2, len(draws)), np.nan)
    for b, idx in enumerate(draws):
        picked = np.concatenate([np.flatnonzero(origin == k) for k in idx])
        if picked.size == 0:
            continue
        labels = np.r_[np.zeros(n_good, int), np.ones(picked.size, int)]
        for c in range(2):
            slow[c, b] = metrics.image_auroc(labels, np.r_[good[c, idx], bad[c, picked]])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    diff_slow = slow[1] - slow[0]
    diff_slow = diff_slow[np.isfinite(diff_slow)]
    full = np.array([metrics.image_auroc(np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int), np.r_[g, b])
                     for g, b in zip(good, bad, strict=True)])
    stats = rule.margins(fast, full)[1]
    assert stats["margin_std"] == pytest.approx(diff_slow.std(ddof=1), abs=1e-12)
    assert stats["margin_interval"] == pytest.approx(list(np.quantile(diff_slow, [0.05, 0.95])), abs=1e-12)


def test_resamples_are_seeded_and_shared() -> None:
    assert (rule.resample_draws(5, 10, 1) == rule.resample_draws(5, 10, 1)).all()
    with pytest.raises(ValueError, match="at least 2"):
        rule.resample_draws(1)


def test_one_line_names_the_choice_margin_and_uncertainty() -> None:
    rng = np.random.default_rng(3)
    n, per = 40, 4
    (gs, bs), (gc, bc) = _scores(rng, n, per, 0.5), _scores(rng, n, per, 3.0)
    origin = np.repeat(np.arange(n), per)
    for pixel, word in (((0.95, 0.9), "chose cand"), ((0.5, 0.2), "kept somad")):
        chosen, rows = _decide(np.stack([gs, gc]), np.stack([bs, bc]), origin, [(0.95, 0.9), pixel])
        line = rule.one_line({"candidates": rows, "chosen": rows[chosen]["candidate"]})
        assert word in line and f"{rows[1]['margin']:+.4f}" in line and f"{rows[1]['margin_std']:.4f}" in line
