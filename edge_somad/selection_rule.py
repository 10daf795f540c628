"""The rule `fit --method auto` chooses by: SOMAD stays unless a candidate is better beyond doubt.

Each candidate scored the same held-out good frames and the same synthetic defects pasted into
them. A candidate replaces SOMAD (the first, baseline candidate) only when both hold:
- its synthetic image AUROC is higher by more than the measurement's uncertainty: over a paired
  bootstrap (the same resamples for every candidate) the one-sided 95 % lower bound of
  (candidate - SOMAD) is above 0;
- its pixel-level ranking of the pasted masks (pixel AUROC and PRO) is not worse than SOMAD's by
  more than PIXEL_TOLERANCE: an image score that rises while the maps stop pointing at the
  defect is a map that collapsed, not a better model.
Among the candidates that pass, the largest margin wins (ties: the earlier one). The bootstrap
resamples held-out frames *with* the defects pasted into them (a defect shares the background of
its frame, so frames are the independent units); pure numpy, no Python loop per resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95  # one-sided: the candidate must beat SOMAD with 95 % confidence
# Pixel AUROC and PRO a candidate may lose against SOMAD on the same synthetic masks and still be
# chosen: under the 0.01 the suite allows, so the rounding of a tie never decides.
PIXEL_TOLERANCE = 0.005
PIXEL_METRICS = ("pixel_auroc", "pro")


@dataclass(frozen=True)
class Evidence:
    """One candidate's accuracy on the synthetic set."""

    name: str
    image_auroc: float
    pixel_auroc: float
    pro: float


def pair_matrix(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """(n_good, n_bad) float64: 1 where the defect scores above the good frame, 1/2 on a tie, else 0.

    Its mean is the AUROC (Mann-Whitney); any resample's AUROC is a weighted mean of it.
    """
    g, b = np.asarray(good, np.float64)[:, None], np.asarray(bad, np.float64)[None, :]
    return (b > g) + 0.5 * (b == g)


def resample_draws(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples, n) indices drawn with replacement: the same draws serve every candidate."""
    if n < 2:
        raise ValueError(f"{n} units to resample; the bootstrap needs at least 2")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """How often each unit was drawn in each resample, (n_resamples, n) float64."""
    rows = np.repeat(np.arange(len(draws)), draws.shape[1])
    return np.bincount(rows * n + draws.ravel(), minlength=len(draws) * n).reshape(len(draws), n).astype(np.float64)


def bootstrap_aurocs(good: np.ndarray, bad: np.ndarray, origin: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """AUROC of every candidate on every resample, (n_candidates, n_resamples).

    good (C, n_good) and bad (C, n_bad) are the candidates' scores; origin (n_bad,) the good frame
    each defect was pasted into; draws (B, n_good) resampled frame indices (resample_draws). A frame
    drawn k times counts k times as a good frame and brings its defects k times.
    """
    good, bad, origin = np.atleast_2d(good), np.atleast_2d(bad), np.asarray(origin)
    n_good = good.shape[1]
    if origin.shape != (bad.shape[1],) or origin.min() < 0 or origin.max() >= n_good:
        raise ValueError(f"origin {origin.shape} with values outside [0, {n_good}); expected one frame "
                         f"index per defect ({bad.shape[1]})")
    w = _counts(draws, n_good)  # (B, n_good)
    per_frame = np.bincount(origin, minlength=n_good).astype(np.float64)
    out = np.empty((len(good), len(draws)))
    for c in range(len(good)):  # a few candidates: one matrix product each
        wins = pair_matrix(good[c], bad[c])  # (n_good, n_bad)
        by_frame = wins @ np.eye(n_good)[origin]  # [i, k]: wins of frame k's defects over good frame i
        pairs = w.sum(1) * (w @ per_frame)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = ((w @ by_frame) * w).sum(1) / pairs  # nan: a resample drew no frame with defects
    return out


def margins(aurocs: np.ndarray, full: np.ndarray, level: float = LEVEL) -> list[dict[str, float]]:
    """Per candidate: margin (full-sample AUROC - baseline's), its bootstrap std and percentile interval.

    The interval runs from the (1 - level) to the level quantile of the resampled differences, so
    its lower end is the one-sided `level` lower bound the rule compares with 0.
    """
    diff = aurocs - aurocs[0]
    diff = diff[:, np.isfinite(diff).all(0)]
    out = []
    for c in range(len(aurocs)):
        lo, hi = np.quantile(diff[c], [1 - level, level])
        out.append({"margin": float(full[c] - full[0]), "margin_std": float(diff[c].std(ddof=1)),
                    "margin_interval": [float(lo), float(hi)]})
    return out


def pixel_guard(cand: Evidence, base: Evidence, tolerance: float = PIXEL_TOLERANCE) -> str | None:
    """Why the candidate's maps rank the pasted pixels worse than the baseline's, or None when they don't."""
    worse = [f"{m.replace('_', ' ')} {getattr(cand, m):.4f} < {getattr(base, m):.4f} - {tolerance}"
             for m in PIXEL_METRICS if getattr(cand, m) < getattr(base, m) - tolerance]
    return "pixel ranking worse than " + base.name + ": " + "; ".join(worse) if worse else None


def decide(evidence: list[Evidence], aurocs: np.ndarray, level: float = LEVEL,
           tolerance: float = PIXEL_TOLERANCE) -> tuple[int, list[dict[str, Any]]]:
    """(index of the chosen candidate, one row per candidate with its numbers and why)."""
    if len(evidence) != len(aurocs):
        raise ValueError(f"{len(evidence)} candidates but {len(aurocs)} rows of bootstrap AUROCs")
    full = np.array([e.image_auroc for e in evidence])
    stats = margins(aurocs, full, level)
    base = evidence[0]
    rows, eligible = [], []
    for c, (ev, st) in enumerate(zip(evidence, stats, strict=True)):
        row: dict[str, Any] = {"candidate": ev.name, "synthetic_auroc": round(ev.image_auroc, 4),
                               "pixel_auroc": round(ev.pixel_auroc, 4), "pro": round(ev.pro, 4),
                               "margin": round(st["margin"], 4), "margin_std": round(st["margin_std"], 4),
                               "margin_interval": [round(v, 4) for v in st["margin_interval"]]}
        lower = st["margin_interval"][0]
        if c == 0:
            row["why"] = "baseline: kept unless a candidate beats it beyond the uncertainty"
        elif st["margin"] <= 0:
            row["why"] = f"not better than {base.name} (margin {st['margin']:+.4f})"
        elif lower <= 0:
            row["why"] = (f"margin {st['margin']:+.4f} within its uncertainty (one-sided {level:.0%} lower "
                          f"bound {lower:+.4f} <= 0)")
        elif (reason := pixel_guard(ev, base, tolerance)) is not None:
            row["why"] = reason
        else:
            row["why"] = f"beats {base.name} by {st['margin']:+.4f} (lower bound {lower:+.4f} > 0), maps no worse"
            eligible.append(c)
        rows.append(row)
    chosen = max(eligible, key=lambda c: (stats[c]["margin"], -c)) if eligible else 0
    for c in eligible:
        if c != chosen:
            rows[c]["why"] += f"; not chosen: {evidence[chosen].name} has the larger margin"
    rows[chosen]["chosen"] = True
    return chosen, rows


def one_line(selection: dict[str, Any]) -> str:
    """The line `fit` prints: the chosen candidate, its margin over the baseline and its uncertainty."""
    rows = {r["candidate"]: r for r in selection["candidates"]}
    row, base = rows[selection["chosen"]], selection["candidates"][0]
    if row is base:
        best = max(selection["candidates"][1:], key=lambda r: r["margin"], default=None)
        if best is None:
            return f"auto: kept {base['candidate']} (no other candidate)"
        return (f"auto: kept {base['candidate']} (synthetic AUROC {base['synthetic_auroc']:.4f}); best other "
                f"{best['candidate']} margin {best['margin']:+.4f} ± {best['margin_std']:.4f}: {best['why']}")
    return (f"auto: chose {row['candidate']} over {base['candidate']}: synthetic AUROC margin {row['margin']:+.4f} "
            f"± {row['margin_std']:.4f} (bootstrap std; {LEVEL:.0%} lower bound {row['margin_interval'][0]:+.4f})")
