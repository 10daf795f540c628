"""Per-position score standardisation (score_norm=zscore) against float64 references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_somad import scoring
from edge_somad.artifacts import FittedArrays, load_arrays, load_config
from edge_somad.config import FitConfig, SomConfig
from edge_somad.model import Head
from edge_somad.som import som_grid
from edge_somad.stats import whitening


def _head_arrays(rng: np.random.Generator, m: int, n: int, d: int) -> FittedArrays:
    a = rng.normal(size=(m, d, d))
    cov = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    nodes = rng.normal(size=(m, d)).astype(np.float32)
    return FittedArrays(
        projection=np.eye(d, dtype=np.float32), whiten=whitening(torch.from_numpy(cov)).float().numpy(),
        nodes=nodes, centers=(nodes + 0.1 * rng.normal(size=(m, d))).astype(np.float32),
        counts=np.ones(m, np.int64), norm_mean=rng.uniform(1, 3, n).astype(np.float32),
        norm_std=rng.uniform(0.2, 2, n).astype(np.float32),
    ), cov


def test_standardised_head_equals_float64_reference() -> None:
    rng = np.random.default_rng(7)
    b, n, m, d, k = 2, 12, 9, 4, 3
    arrays, cov = _head_arrays(rng, m, n, d)
    x = rng.normal(size=(b, n, d))
    # The head keeps its whitening factors at float16 precision (model.Head: the graph stores them
    # so); the reference uses the inverse covariance those rounded factors define, in float64.
    w = arrays.whiten.astype(np.float16).astype(np.float64)
    inv = w.transpose(0, 2, 1) @ w
    assert np.allclose(inv, np.linalg.inv(cov), rtol=5e-3, atol=5e-3)  # and it is still the model's
    ref = np.empty((b, n))
    for bi in range(b):
        for i in range(n):
            cand = np.argsort(((arrays.nodes.astype(np.float64) - x[bi, i]) ** 2).sum(1), kind="stable")[:k]
            d2 = min((x[bi, i] - arrays.centers[j]) @ inv[j] @ (x[bi, i] - arrays.centers[j]) for j in cand)
            ref[bi, i] = (np.sqrt(d2) - arrays.norm_mean[i]) / arrays.norm_std[i]
    head = Head(arrays, FitConfig(d=d, topk=k, search_share=1.0))  # the exact search (truncated: test_search_share)
    got = head(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-4)
    raw = Head(dataclasses.replace(arrays, norm_mean=None, norm_std=None), FitConfig(d=d, topk=k, search_share=1.0,
                                                                                           score_norm="none"))
    np.testing.assert_allclose(raw(torch.from_numpy(x).float()).double().numpy(),
                               ref * arrays.norm_std + arrays.norm_mean, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("floor", [0.1, 0.5, 1.0])
def test_position_statistics_float64_with_floor(floor: float) -> None:
    rng = np.random.default_rng(3)
    dist = rng.gamma(2.0, size=(15, 40)) * rng.uniform(0.01, 3, 40)  # some positions nearly constant
    mean, std = scoring.position_statistics(torch.from_numpy(dist).float(), floor)
    ref_std = dist.std(0, ddof=1)
    ref_std = np.maximum(ref_std, floor * np.median(ref_std))
    np.testing.assert_allclose(mean.numpy(), dist.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-4)
    assert std.min().item() >= floor * np.median(dist.std(0, ddof=1)) * (1 - 1e-5)


def test_hot_zone_stops_winning_the_image_score() -> None:
    """Every good image is hot at one place; a defect elsewhere must outscore it once standardised."""
    rng = np.random.default_rng(0)
    good = rng.normal(1.0, 0.1, size=(30, 64))
    good[:, 10] += 4.0  # nominal hot zone: high on every good part
    mean, std = scoring.position_statistics(torch.from_numpy(good).float(), 0.1)
    test_good = torch.from_numpy(np.r_[rng.normal(1.0, 0.1, 64)]).float()[None]
    test_good[0, 10] += 4.0
    defect = torch.from_numpy(rng.normal(1.0, 0.1, size=(1, 64))).float()
    defect[0, 10] += 4.0
    defect[0, 40] += 2.0  # a real defect, weaker than the hot zone in raw units
    assert test_good.max() >= defect.max() - 0.5  # raw: the hot zone dominates both
    z_good = scoring.standardise(test_good, mean, 1 / std).max()
    z_defect = scoring.standardise(defect, mean, 1 / std).max()
    assert z_defect > z_good + 5


def test_fit_stores_training_map_statistics(tiny_fitted: Path) -> None:
    config = load_config(tiny_fitted)
    arrays = load_arrays(tiny_fitted, config)
    assert config.score_norm == "zscore"
    n = arrays.norm_mean.shape[0]
    assert arrays.norm_std.shape == (n,) and np.isfinite(arrays.norm_mean).all() and (arrays.norm_std > 0).all()


@pytest.mark.parametrize(("grid", "som", "expected"), [
    ((56, 56), SomConfig(), (56, 56)),  # 224x224: the paper's choice, unchanged
    ((140, 56), SomConfig(), (88, 35)),  # 560x224: capped, aspect kept
    ((16, 24), SomConfig(), (16, 24)),
    ((140, 56), SomConfig(rows=10, cols=12), (10, 12)),  # explicit wins
    ((300, 300), SomConfig(max_nodes=100), (10, 10)),
])
def test_som_grid_is_capped(grid: tuple[int, int], som: SomConfig, expected: tuple[int, int]) -> None:
    rows, cols = som_grid(grid, som)
    assert (rows, cols) == expected
    assert som.rows or rows * cols <= max(som.max_nodes, 1) or (rows, cols) == grid
