"""The few distribution functions calibration needs, in numpy and the standard library.

Why not scipy: `calibrate` and `evaluate` run on the torch-free edge install, which should not pull
a 40 MB scientific stack for a binomial bound, a normal quantile and a chi-squared law. Each
function here is checked against scipy in the test suite (scipy is a test-only dependency).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

# Bisection on [0, 1] or on a bracket: 200 halvings exhaust float64 resolution.
_BISECT_STEPS = 200
# Series / continued fraction of the incomplete gamma: terms needed grow like sqrt(a); this caps
# a = d / 2 far beyond any projected feature dimension used here (hundreds).
_MAX_TERMS = 10_000
_EPS = 1e-16
_TINY = 1e-300


def normal_ppf(q: float) -> float:
    """Quantile of the standard normal law."""
    return NormalDist().inv_cdf(q)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n may be thousands)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def binomial_upper(failures: int, n: int, confidence: float) -> float:
    """One-sided Clopper–Pearson upper bound: the p with P(X <= failures | n, p) = 1 - confidence.

    Equal to the Beta(failures + 1, n - failures) quantile at `confidence`; the binomial CDF falls
    monotonically in p, so bisection finds it to float64 resolution.
    """
    if failures >= n:
        return 1.0
    if failures == 0:  # closed form, exact
        return 1.0 - (1.0 - confidence) ** (1.0 / n)
    lo, hi = 0.0, 1.0
    target = 1.0 - confidence
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _binom_cdf(failures, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _gamma_p_q(a: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Regularised incomplete gamma P(a, x) and Q(a, x) = 1 - P, each computed where it is accurate.

    Series for x < a + 1, Lentz continued fraction otherwise (Numerical Recipes §6.2); returning
    both keeps the upper tail exact when it is tiny (thresholds at 1 - 1e-6).
    """
    x = np.asarray(x, dtype=np.float64)
    p = np.zeros_like(x)
    q = np.ones_like(x)
    pos = x > 0
    log_front = np.full_like(x, -np.inf)
    log_front[pos] = -x[pos] + a * np.log(x[pos]) - math.lgamma(a)
    low = pos & (x < a + 1.0)
    if low.any():
        xs = x[low]
        term = np.full_like(xs, 1.0 / a)
        total = term.copy()
        ap = a
        for _ in range(_MAX_TERMS):
            ap += 1.0
            term = term * xs / ap
            total += term
            if np.all(np.abs(term) < np.abs(total) * _EPS):
                break
        p[low] = np.exp(log_front[low]) * total
        q[low] = 1.0 - p[low]
    high = pos & ~low
    if high.any():
        xs = x[high]
        b = xs + 1.0 - a
        c = np.full_like(xs, 1.0 / _TINY)
        d = 1.0 / b
        h = d.copy()
        for i in range(1, _MAX_TERMS):
            an = -i * (i - a)
            b = b + 2.0
            d = an * d + b
            d = np.where(np.abs(d) < _TINY, _TINY, d)
            c = b + an / c
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            d = 1.0 / d
            delta = d * c
            h = h * delta
            if np.all(np.abs(delta - 1.0) < _EPS):
                break
        q[high] = np.exp(log_front[high]) * h
        p[high] = 1.0 - q[high]
    return p, q


def chi2_cdf(x: np.ndarray | float, d: int) -> np.ndarray:
    """CDF of the chi-squared law with `d` degrees of freedom (element-wise)."""
    return _gamma_p_q(0.5 * d, 0.5 * np.asarray(x, dtype=np.float64))[0]


def chi2_isf(tail: float, d: int) -> float:
    """The x with P(chi2(d) >= x) = tail; bisection on the upper tail, exact for tiny tails."""
    a = 0.5 * d
    hi = max(1.0, float(d))
    while _gamma_p_q(a, np.array([0.5 * hi]))[1][0] > tail:
        hi *= 2.0
    lo = 0.0
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _gamma_p_q(a, np.array([0.5 * mid]))[1][0] > tail:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def chi2_ppf(q: float, d: int) -> float:
    """Quantile of chi2(d) at probability `q`."""
    return chi2_isf(1.0 - q, d)


def ks_statistic(sample: np.ndarray, cdf: np.ndarray) -> float:
    """Two-sided Kolmogorov–Smirnov distance given a sample and the law's CDF at each sorted point."""
    n = sample.size
    f = np.asarray(cdf, dtype=np.float64)
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(max(np.max(i / n - f), np.max(f - (i - 1) / n)))
