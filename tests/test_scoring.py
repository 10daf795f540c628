"""The scoring maths against float64 references computed the slow, obvious way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_somad import scoring
from edge_somad.errors import ConfigError
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
    idx = scoring.topk_nearest(xt, scoring.search_table(nt), k)
    got = scoring.min_mahalanobis_sq(xt, torch.from_numpy(centers).float(), w, idx).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-4)
    # Blocking the patches (cache-sized slices in the graph) must not change a single value.
    blocked = scoring.min_mahalanobis_sq(xt, torch.from_numpy(centers).float(), w, idx, block=3)
    np.testing.assert_array_equal(blocked.double().numpy(), got)
    # The eager kernel (pairs grouped by node) gives the same distances up to float32 summation order.
    grouped = scoring.min_mahalanobis_sq_grouped(xt, torch.from_numpy(centers).float(), w, idx).double().numpy()
    np.testing.assert_allclose(grouped, ref, rtol=2e-4, atol=1e-4)
    np.testing.assert_allclose(grouped, got, rtol=1e-5, atol=1e-5)


def test_ranking_table_orders_nodes_like_true_distances() -> None:
    rng = np.random.default_rng(5)
    x, nodes = rng.normal(size=(2, 40, 6)), rng.normal(size=(25, 6))
    true = ((x[:, :, None, :] - nodes[None, None]) ** 2).sum(-1)
    nt = torch.from_numpy(nodes)
    rank = scoring.ranking_distances(torch.from_numpy(x), scoring.search_table(nt, group=1)).numpy()
    np.testing.assert_allclose(rank + (x * x).sum(-1, keepdims=True), true, rtol=1e-10, atol=1e-10)
    idx = scoring.topk_nearest(torch.from_numpy(x), scoring.search_table(nt), 3).numpy()
    np.testing.assert_array_equal(np.sort(idx, -1), np.sort(np.argsort(true, -1, kind="stable")[..., :3], -1))


@pytest.mark.parametrize(("m", "group", "k"), [(3136, 32, 4), (100, 8, 4), (37, 8, 3), (50, 16, 1), (12, 32, 4)])
def test_grouped_topk_is_exact(m: int, group: int, k: int) -> None:
    """The two-stage search returns exactly the k nearest nodes (float64 sort), padding never wins."""
    rng = np.random.default_rng(m + group)
    # Clustered nodes: many near-equal distances, the case where a lossy search would slip.
    nodes = rng.normal(size=(m, 8)) + 3 * rng.normal(size=(1 + m // 10, 8))[rng.integers(0, 1 + m // 10, m)]
    x = rng.normal(size=(2, 64, 8)) * 2
    table = scoring.search_table(torch.from_numpy(nodes), group)
    assert table.shape[1] % group == 0 and table.shape[1] - m < group
    got = scoring.topk_nearest(torch.from_numpy(x), table, k, group).numpy()
    true = ((x[:, :, None, :] - nodes[None, None]) ** 2).sum(-1)
    ref = np.argsort(true, -1, kind="stable")[..., :k]
    np.testing.assert_array_equal(np.sort(got, -1), np.sort(ref, -1))
    assert got.max() < m


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


def _upsample_blur_float64(scores: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """The map's definition done the obvious way: bilinear upsampling, reflect pad, 2-D Gaussian."""
    import torch.nn.functional as F

    m = torch.from_numpy(scores).unsqueeze(1)
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    k = scoring.gaussian_kernel1d(sigma).double()
    r = (k.numel() - 1) // 2
    m = F.conv2d(F.pad(m, (r, r, r, r), mode="reflect"), torch.outer(k, k).view(1, 1, *k.shape * 2))
    return m[:, 0].numpy()


@pytest.mark.parametrize(("grid", "size", "sigma"), [((6, 8), (24, 32), 4.0), ((14, 7), (56, 28), 1.0),
                                                     ((56, 56), (224, 224), 4.0), ((5, 5), (40, 40), 0.0)])
def test_smoothing_operators_equal_the_direct_upsample_and_blur(grid, size, sigma) -> None:
    rng = np.random.default_rng(sum(grid))
    scores = rng.gamma(2.0, 1.0, size=(2, *grid))
    rows_op, cols_op = scoring.smoothing_operators(grid, size, sigma)
    assert rows_op.shape == (size[0], grid[0]) and cols_op.shape == (size[1], grid[1])
    got = scoring.smooth_and_upsample(torch.from_numpy(scores).float().flatten(1), grid, rows_op, cols_op)
    if sigma > 0:
        ref = _upsample_blur_float64(scores, size, sigma)
    else:
        import torch.nn.functional as F

        ref = F.interpolate(torch.from_numpy(scores).unsqueeze(1), size=size, mode="bilinear",
                            align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_smoothing_preserves_constants_and_image_score_is_the_max() -> None:
    ops = scoring.smoothing_operators((6, 8), (24, 32), 4.0)
    amap = scoring.smooth_and_upsample(torch.full((2, 6 * 8), 3.0), (6, 8), *ops)
    assert amap.shape == (2, 24, 32) and torch.allclose(amap, torch.tensor(3.0))
    spike = torch.zeros(1, 6 * 8)
    spike[0, 20] = 10.0
    amap = scoring.smooth_and_upsample(spike, (6, 8), *scoring.smoothing_operators((6, 8), (24, 32), 1.0))
    assert scoring.image_scores(amap).item() == pytest.approx(amap.max().item())
    assert 0 < amap.max().item() < 10.0  # blurred, so the peak spreads


def test_smoothing_radius_larger_than_the_map_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a map side"):
        scoring.smoothing_operators((4, 4), (16, 16), 4.0)  # radius 16 px on a 16 px map


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
