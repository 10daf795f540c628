"""The scoring maths against float64 references computed the slow, obvious way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_somad import scoring
from edge_somad.stats import whitening


def _spd(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    a = rng.normal(size=(m, d, d))
    return a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)


@pytest.mark.parametrize(("b", "n", "m", "d", "k"), [(1, 5, 7, 3, 1), (2, 30, 12, 6, 4), (1, 8, 4, 2, 4)])
def test_topk_mahalanobis_matches_float64_reference(b: int, n: int, m: int, d: int, k: int) -> None:
    rng = np.random.default_rng(b * 100 + n)
    x = rng.normal(size=(b, n, d))
    nodes = rng.normal(size=(m, d))
    centers = nodes + 0.1 * rng.normal(size=(m, d))
    cov = _spd(rng, m, d)
    inv = np.linalg.inv(cov)
    # Reference: explicit Euclidean sort, explicit inverse covariance, min over the k nearest.
    ref = np.empty((b, n))
    for bi in range(b):
        for i in range(n):
            eu = ((nodes - x[bi, i]) ** 2).sum(1)
            cand = np.argsort(eu, kind="stable")[:k]
            ref[bi, i] = min((x[bi, i] - centers[j]) @ inv[j] @ (x[bi, i] - centers[j]) for j in cand)
    w = whitening(torch.from_numpy(cov)).to(torch.float32)
    xt, nt = torch.from_numpy(x).float(), torch.from_numpy(nodes).float()
    idx = scoring.topk_nearest(xt, nt, (nt * nt).sum(-1), k)
    got = scoring.min_mahalanobis_sq(xt, torch.from_numpy(centers).float(), w, idx).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-4)


def test_squared_distances_equal_brute_force() -> None:
    rng = np.random.default_rng(1)
    x, nodes = rng.normal(size=(2, 9, 5)), rng.normal(size=(11, 5))
    ref = ((x[:, :, None, :] - nodes[None, None]) ** 2).sum(-1)
    nt = torch.from_numpy(nodes)
    got = scoring.squared_distances(torch.from_numpy(x), nt, (nt * nt).sum(-1)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_whitening_gives_the_inverse_covariance() -> None:
    rng = np.random.default_rng(2)
    cov = _spd(rng, 4, 6)
    w = whitening(torch.from_numpy(cov)).numpy()
    np.testing.assert_allclose(w.transpose(0, 2, 1) @ w, np.linalg.inv(cov), rtol=1e-8, atol=1e-10)
    assert np.allclose(np.triu(w, 1), 0)  # lower triangular: the artifact stores only the triangle


def test_positional_mahalanobis_matches_reference() -> None:
    rng = np.random.default_rng(3)
    x, means, cov = rng.normal(size=(2, 5, 3)), rng.normal(size=(5, 3)), _spd(rng, 5, 3)
    inv = np.linalg.inv(cov)
    ref = np.einsum("bnd,nde,bne->bn", x - means, inv, x - means)
    w = whitening(torch.from_numpy(cov))
    got = scoring.positional_mahalanobis_sq(torch.from_numpy(x), torch.from_numpy(means), w).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_kernel_is_normalised_and_symmetric(sigma: float) -> None:
    k = scoring.gaussian_kernel1d(sigma).numpy()
    assert k.size == 2 * int(np.ceil(4 * sigma)) + 1
    assert abs(k.sum() - 1) < 1e-6 and np.allclose(k, k[::-1]) and k.argmax() == k.size // 2


def test_smoothing_preserves_constants_and_image_score_is_the_max() -> None:
    flat = torch.full((2, 6 * 8), 3.0)
    amap = scoring.smooth_and_upsample(flat, (6, 8), (24, 32), scoring.gaussian_kernel1d(4.0))
    assert amap.shape == (2, 24, 32) and torch.allclose(amap, torch.tensor(3.0))
    spike = torch.zeros(1, 6 * 8)
    spike[0, 20] = 10.0
    amap = scoring.smooth_and_upsample(spike, (6, 8), (24, 32), scoring.gaussian_kernel1d(1.0))
    assert scoring.image_scores(amap).item() == pytest.approx(amap.max().item())
    assert 0 < amap.max().item() < 10.0  # blurred, so the peak spreads


@pytest.mark.parametrize(("h", "w", "top", "expected_k"), [
    (224, 224, 0.0, 1),        # 0 share: the paper's maximum
    (224, 224, 0.01, 502),     # 1 % of 50176 pixels
    (560, 224, 0.01, 1254),    # tall input: the share follows the pixel count
    (1024, 1024, 0.01, 3840),  # capped at TensorRT's TopK limit
    (8, 8, 0.001, 1),          # never fewer than one pixel
])
def test_image_score_pixels(h: int, w: int, top: float, expected_k: int) -> None:
    assert scoring.image_score_pixels(h, w, top) == expected_k


def test_image_score_is_the_mean_of_the_hottest_pixels_float64() -> None:
    g = torch.Generator().manual_seed(3)
    amap = torch.rand(3, 20, 30, generator=g) * 5
    ref = np.sort(amap.double().numpy().reshape(3, -1), axis=1)[:, -17:].mean(1)
    got = scoring.image_scores(amap, 17).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # One isolated hot pixel moves the maximum, barely the top-k mean: the point of the mean.
    spiked = amap.clone()
    spiked[0, 5, 5] = 100.0
    assert scoring.image_scores(spiked, 1)[0] == 100.0
    assert scoring.image_scores(spiked, 17)[0] < scoring.image_scores(amap, 17)[0] + 100.0 / 17 + 1e-4
