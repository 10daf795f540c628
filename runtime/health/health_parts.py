"""The four drift checks of line health, each from its rolling window to a block {state, reason, ...}.

- input drift: rolling mean of brightness / contrast / sharpness vs the fit images, as z-scores
  (std floored: fit images are often more alike than a line ever is). Codec tolerance: JPEG/MJPG at
  the camera's resolution moves these by at most 0.33 log units of sharpness (z <= 2.2 at the floor,
  docs/health.md), below the warn level.
- score drift: the scores of every scored frame (pass AND fail: a model gone blind fails everything,
  which pass scores alone never show) above the calibration scores, one-sided two-sample KS with
  both sizes counted (runtime/health/drift.ks_pvalue), so a reference of 6 or 42 scores does not cry wolf.
- fail rate: share of fails among the last pass/fail verdicts.
- compression: JPEG block artefacts on frames at about the model's resolution, where the model
  sees them (a 224x224 MJPG stream scored 20/20 good parts as fails).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_somad.runtime.health import drift
from edge_somad.runtime.health.health_config import HealthConfig


def _level(value: float, warn: float, alarm: float) -> str:
    return "alarm" if value >= alarm else "warn" if value >= warn else "ok"


def input_drift(window: Sequence[dict[str, float]], ref: dict[str, Any], c: HealthConfig) -> dict[str, Any]:
    n = len(window)
    out: dict[str, Any] = {"state": "ok", "reason": None, "n": n}
    if not ref:
        return {**out, "reason": "no input reference in manifest.json (re-export or recalibrate the model)"}
    if n < c.input_min_frames:
        return out
    worst_z, worst_m = 0.0, ""
    for m in drift.INPUT_METRICS:
        r = ref.get(m)
        if not r:
            continue
        value = float(np.mean([row[m] for row in window]))
        z = (drift.comparable(m, value) - r["mean"]) / max(r["std"], c.floor(m))
        out[m] = {"value": round(value, 3), "z": round(z, 2)}
        if abs(z) > abs(worst_z):
            worst_z, worst_m = z, m
    out["state"] = _level(abs(worst_z), c.input_warn_z, c.input_alarm_z)
    if out["state"] != "ok":
        out["reason"] = f"{worst_m} {abs(worst_z):.1f} std {'above' if worst_z > 0 else 'below'} the fit images"
    return out


def score_drift(window: Sequence[float], quantiles: np.ndarray | None, n_ref: int,
                c: HealthConfig) -> dict[str, Any]:
    """Scores ABOVE calibration warn/alarm: parts look less normal than the good parts the threshold
    was set on (a new batch, a changed camera, a model gone blind). Scores below it are reported
    (`ks`, two-sided) but do not alarm: replaying the fit images does that, and it rejects nothing."""
    n = len(window)
    out: dict[str, Any] = {"state": "ok", "reason": None, "n": n, "n_distinct": None, "n_reference": n_ref,
                           "ks": None, "ks_above": None, "p": None, "psi": None}
    if quantiles is None:
        return {**out, "reason": "no calibration scores in manifest.json (or int8 run): not measured"}
    if n < c.score_min_samples:
        return out
    sample = np.fromiter(window, np.float64, n)
    # A looped replay (or a still scene) repeats exact scores: only distinct ones are evidence.
    distinct = int(np.unique(sample).size)
    d = drift.ks_above(quantiles, sample)
    p = drift.ks_pvalue(d, n_ref, distinct, one_sided=True)
    out.update(n_distinct=distinct, ks=round(drift.ks(quantiles, sample), 4), ks_above=round(d, 4),
               p=float(f"{p:.3g}"), psi=round(drift.psi(quantiles, sample), 4))
    if p < c.score_alarm_p and d >= c.ks_alarm:
        out["state"] = "alarm"
    elif p < c.score_warn_p and d >= c.ks_warn:
        out["state"] = "warn"
    if out["state"] != "ok":
        out["reason"] = (f"scores above calibration: KS {d:.3f} (p {p:.2g}) of the last {n} scores ({distinct} "
                         f"distinct) vs {n_ref} calibration scores")
    return out


def fail_rate(window: Sequence[bool], c: HealthConfig) -> dict[str, Any]:
    n = len(window)
    fails = int(sum(window))
    out: dict[str, Any] = {"state": "ok", "reason": None, "n": n, "fails": fails,
                           "rate": round(fails / n, 4) if n else None}
    if n < c.fail_min_verdicts:
        return out
    out["state"] = _level(fails / n, c.fail_rate_warn, c.fail_rate_alarm)
    if out["state"] != "ok":
        out["reason"] = (f"{fails} of the last {n} parts failed ({100 * fails / n:.0f} %; warn at "
                         f"{100 * c.fail_rate_warn:g} %, alarm at {100 * c.fail_rate_alarm:g} %)")
    return out


def compression(window: Sequence[float], ref: dict[str, Any] | None, c: HealthConfig) -> dict[str, Any]:
    """Warn at `blockiness_warn`, or above the fit images' own blockiness + margin when they were JPEGs
    the model saw at about its size (fit_info input_stats.blockiness)."""
    n = len(window)
    level = max(c.blockiness_warn, ref["mean"] + c.blockiness_margin) if ref else c.blockiness_warn
    out: dict[str, Any] = {"state": "ok", "reason": None, "n": n, "blockiness": None, "warn_at": round(level, 3)}
    if n < c.input_min_frames:
        return out
    value = float(np.mean(window))
    out["blockiness"] = round(value, 3)
    if value >= level:
        out["state"] = "warn"
        out["reason"] = (f"JPEG/MJPG blocks at the model's resolution (blockiness {value:.2f} >= {level:.2f}): "
                         "the model sees codec artefacts it was not fitted on. Use an uncompressed or "
                         "higher-resolution stream")
    return out
