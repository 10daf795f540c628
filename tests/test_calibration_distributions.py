"""The numpy/stdlib distribution functions calibration uses, against scipy as the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edge_somad.calibration import distributions as dist


@pytest.mark.parametrize(("failures", "n"), [(1, 20), (3, 100), (7, 50), (40, 3000), (199, 200)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_binomial_upper_is_the_beta_quantile(failures: int, n: int, confidence: float) -> None:
    expected = stats.beta.ppf(confidence, failures + 1, n - failures)
    assert dist.binomial_upper(failures, n, confidence) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [1, 2, 7, 64, 100, 512])
def test_chi2_cdf_and_tails_match_scipy(d: int) -> None:
    x = np.array([0.0, 0.01, 0.5 * d, d - 1.0, float(d), d + 1.0, 2.0 * d, 4.0 * d + 50.0]).clip(0)
    assert dist.chi2_cdf(x, d) == pytest.approx(stats.chi2.cdf(x, d), rel=1e-10, abs=1e-14)
    for tail in (0.5, 0.01, 1e-4, 1e-7):
        assert dist.chi2_isf(tail, d) == pytest.approx(stats.chi2.isf(tail, d), rel=1e-9)


def test_normal_ppf_matches_scipy() -> None:
    for q in (0.5, 0.9, 0.995, 1 - 1e-6):
        assert dist.normal_ppf(q) == pytest.approx(stats.norm.ppf(q), rel=1e-9)


def test_ks_statistic_matches_scipy_on_a_fitting_and_a_wrong_law() -> None:
    rng = np.random.default_rng(3)
    for sample, d in ((rng.chisquare(16, 5000), 16), (rng.chisquare(16, 5000) * 1.5, 16)):
        s = np.sort(sample)
        ours = dist.ks_statistic(s, dist.chi2_cdf(s, d))
        assert ours == pytest.approx(stats.kstest(sample, stats.chi2(d).cdf).statistic, rel=1e-9)
