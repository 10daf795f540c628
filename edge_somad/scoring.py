"""SOMAD scoring maths as plain tensor functions: the single source of truth.

Fit (statistics on training patches), the torch backend and the ONNX export all call these, so
there is exactly one definition of "score". Export-friendly by construction: no cdist, no
data-dependent Python branches, static k, only ops TensorRT implements (MatMul, TopK, Gather,
ReduceSum, Sqrt, Resize, Conv, Pad).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edge_somad.errors import ConfigError


def squared_distances(x: torch.Tensor, nodes: torch.Tensor, nodes_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, expanded as |x|^2 - 2 x.n + |n|^2 (one GEMM, no cdist).

    x (..., N, d), nodes (M, d), nodes_sq (M,) = |n|^2 precomputed -> (..., N, M).
    """
    x_sq = (x * x).sum(-1, keepdim=True)
    return (x_sq - 2.0 * (x @ nodes.transpose(0, 1)) + nodes_sq).clamp_min(0.0)


# Nodes per group of the exact two-stage top-k (topk_nearest). 32 measured best of 16/32/64/112.
SEARCH_GROUP = 32
# Ranking value of the padding columns that fill the last group: never among the nearest.
PAD_RANK = 1.0e30


def search_table(nodes: torch.Tensor, group: int = SEARCH_GROUP) -> torch.Tensor:
    """(d+1, M') table [-2 n ; |n|^2]^T: one GEMM of [x, 1] against it gives |n|^2 - 2 x.n.

    Folding |n|^2 into the GEMM as an extra row removes a broadcast add over the (N, M) matrix
    that the graph would otherwise write and read once more (~3 ms of a 40 ms CPU frame). The
    columns are padded to a multiple of `group` (0 for -2n, PAD_RANK for |n|^2) so topk_nearest can
    view them as whole groups; a padding column ranks behind every node, so no index >= M is returned.
    """
    table = torch.cat([-2.0 * nodes, (nodes * nodes).sum(-1, keepdim=True)], dim=1).transpose(0, 1)
    pad = -table.shape[1] % group
    if pad:
        filler = torch.zeros(table.shape[0], pad, dtype=table.dtype, device=table.device)
        filler[-1] = PAD_RANK
        table = torch.cat([table, filler], dim=1)
    return table.contiguous()


def ranking_distances(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """|n|^2 - 2 x.n for every node (table from search_table): the squared distance minus |x|^2.

    |x|^2 is constant per patch, so ranking nodes (top-k, best-matching unit) does not need it.
    """
    ones = torch.ones_like(x[..., :1])
    return torch.cat([x, ones], dim=-1) @ table


def topk_nearest(x: torch.Tensor, table: torch.Tensor, k: int, group: int = SEARCH_GROUP) -> torch.Tensor:
    """Indices (..., N, k) of the k nodes nearest to each patch by Euclidean distance.

    Exact, in two stages, because a TopK over all M nodes is a third of the CPU head's time: the
    minimum of each group of `group` nodes (one cheap ReduceMin), a TopK over the groups, then a
    TopK over the k chosen groups' members only. Why it is exact: a group holding one of the k
    nearest nodes has its minimum at or below the k-th nearest distance, and only k groups can
    (each of them holds a distinct node at or below it), so those groups are the k best by minimum.
    (Taking the patches 512 at a time, like the Mahalanobis blocks, measured no faster: 23.1 ms both.)
    """
    rank = ranking_distances(x, table)
    m = rank.shape[-1]
    if m % group or m // group <= k:  # tiny maps (tests, toy SOMs): one TopK is cheaper
        return torch.topk(rank, k, dim=-1, largest=False).indices
    minima = rank.reshape(*rank.shape[:-1], m // group, group).amin(-1)
    groups = torch.topk(minima, k, dim=-1, largest=False).indices  # (..., N, k)
    cols = (groups.unsqueeze(-1) * group + torch.arange(group, device=rank.device)).flatten(-2)
    local = torch.topk(torch.gather(rank, -1, cols), k, dim=-1, largest=False).indices
    return torch.gather(cols, -1, local)


# Patches per Mahalanobis block. The gathered whitening factors of one block (512 x 64 x 64 floats
# = 8 MB per candidate) stay in the CPU's cache between the Gather that writes them and the
# MatMul that reads them; unblocked they are 51 MB per candidate and make two trips to DRAM.
# Measured on the 2-core dev machine: the head went from 33 to 23 ms (docs/results.md, "Speed on the CPU").
MAHALANOBIS_BLOCK = 512


def min_mahalanobis_sq(
    x: torch.Tensor, centers: torch.Tensor, whiten: torch.Tensor, idx: torch.Tensor,
    block: int = MAHALANOBIS_BLOCK,
) -> torch.Tensor:
    """Minimum squared Mahalanobis distance over the candidate nodes idx.

    x (B, N, d); centers (M, d); whiten (M, d, d) with whiten_j^T whiten_j = inverse covariance_j
    (whiten_j = L_j^-1 for Sigma_j = L_j L_j^T); idx (B, N, k) -> (B, N).

    Memory: patches are taken `block` at a time (static slices, so the graph unrolls them) and the
    candidates one at a time (k is static too), which keeps the largest intermediate at
    (B, block, d, d) instead of (B, N, k, d, d).
    """
    n = x.shape[1]
    parts = [_min_over_candidates(x[:, i : i + block], centers, whiten, idx[:, i : i + block])
             for i in range(0, n, block)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def min_mahalanobis_sq_grouped(
    x: torch.Tensor, centers: torch.Tensor, whiten: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """min_mahalanobis_sq for eager torch: the same distances, grouped by node instead of gathered.

    The exported graph gathers each patch's (d, d) factor: one standard op that TensorRT parses, at
    B*N*k*d*d floats moved. In eager torch on a CPU that gather dominates fit's self-check and the
    benchmark suite (0.8 GB per candidate for 8 frames of 560x224), so here the (patch, candidate)
    pairs are sorted by node and each node's pairs are one (n_j, d) @ (d, d) product: the factor is
    read once per node. Not exportable (a data-dependent loop); tests hold it to the gathered form.
    """
    threads = torch.get_num_threads()
    # One thread: the loop's products are tiny, and a thread pool's wake-ups cost ~100x the maths
    # (measured: 11.7 s with 2 threads vs 0.12 s with 1 for 25k pairs).
    torch.set_num_threads(1)
    try:
        return _grouped(x, centers, whiten, idx)
    finally:
        torch.set_num_threads(threads)


def _grouped(x: torch.Tensor, centers: torch.Tensor, whiten: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    k = idx.shape[-1]
    flat_x = x.reshape(b * n, d)
    nodes = idx.reshape(-1)
    order = torch.argsort(nodes, stable=True)
    rows = torch.div(order, k, rounding_mode="floor")  # the patch of each sorted (patch, candidate) pair
    counts = torch.bincount(nodes, minlength=centers.shape[0])
    present = torch.nonzero(counts).flatten().tolist()
    out = torch.empty(nodes.numel(), dtype=x.dtype, device=x.device)
    start = 0
    for j, size in zip(present, counts[counts > 0].tolist(), strict=True):
        sel = order[start : start + size]
        z = (flat_x[rows[start : start + size]] - centers[j]) @ whiten[j].T
        out[sel] = (z * z).sum(-1)
        start += size
    return out.reshape(b, n, k).amin(-1)


def _min_over_candidates(
    x: torch.Tensor, centers: torch.Tensor, whiten: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    best = _candidate_sq(x, centers, whiten, idx[..., 0])
    for i in range(1, idx.shape[-1]):
        best = torch.minimum(best, _candidate_sq(x, centers, whiten, idx[..., i]))
    return best


def _candidate_sq(x: torch.Tensor, centers: torch.Tensor, whiten: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """|W_j (x - mu_j)|^2 for one candidate node per patch; j (B, N)."""
    delta = x - centers[j]  # (B, N, d)
    z = (whiten[j] @ delta.unsqueeze(-1)).squeeze(-1)  # (B, N, d); whiten[j] is the (B, N, d, d) peak
    return (z * z).sum(-1)


# Patches per block of the low-rank head. Its gathered factors are r d + r + 1 floats per candidate
# instead of d * d, so a block of all k candidates (512 x 4 x 8 x 64 floats = 4 MB at r = 8) stays in
# the CPU's cache between the Gather and the MatMul.
LOWRANK_BLOCK = 512


def min_lowrank_mahalanobis_sq(
    z: torch.Tensor, centers: torch.Tensor, basis: torch.Tensor, coef: torch.Tensor, alpha: torch.Tensor,
    idx: torch.Tensor, block: int = LOWRANK_BLOCK,
) -> torch.Tensor:
    """Minimum over the candidates idx of alpha_j |z - c_j|^2 + sum_i coef_ji (u_ji . (z - c_j))^2 (lowrank.py).

    z (B, N, d) in the pooled-whitened coordinates; centers (M, d) in the same coordinates; basis
    (M, r, d) the rows u_ji; coef (M, r); alpha (M,); idx (B, N, k) -> (B, N). All k candidates of a
    block are gathered at once (one Gather per factor): k times fewer graph nodes than the full head.
    """
    n = z.shape[1]
    parts = [_lowrank_block(z[:, i : i + block], centers, basis, coef, alpha, idx[:, i : i + block])
             for i in range(0, n, block)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _lowrank_block(z: torch.Tensor, centers: torch.Tensor, basis: torch.Tensor, coef: torch.Tensor,
                   alpha: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    delta = z.unsqueeze(2) - centers[idx]  # (B, n, k, d)
    proj = (basis[idx] @ delta.unsqueeze(-1)).squeeze(-1)  # (B, n, k, r)
    dist = alpha[idx] * (delta * delta).sum(-1) + (coef[idx] * proj * proj).sum(-1)
    return dist.amin(-1)


def positional_mahalanobis_sq(x: torch.Tensor, means: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """PaDiM baseline: one Gaussian per patch position. x (B, N, d), means (N, d), whiten (N, d, d)."""
    delta = x - means
    z = (whiten @ delta.unsqueeze(-1)).squeeze(-1)
    return (z * z).sum(-1)


def standardise(dist: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
    """Per-position z-score of patch distances: (B, N) with mean, inv_std (N,) from good images.

    A position that is hot on every good part (a tread centre, a specular rim) stops winning the
    image maximum; a defect is measured against what is normal *at that place*.
    """
    return (dist - mean) * inv_std


def position_statistics(dist: torch.Tensor, std_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and floored std per position of good images' patch distances (n, N) -> (N,), (N,).

    The floor (a fraction of the median std) keeps a position that happened to be calm on the few
    training images from turning noise into a z-score of 50.
    """
    d = dist.to(torch.float64)
    mean = d.mean(0)
    std = d.std(0, unbiased=True) if d.shape[0] > 1 else torch.ones_like(mean)
    floor = std_floor * float(torch.quantile(std, 0.5))  # the median (mean of the middle two)
    return mean.to(torch.float32), std.clamp_min(max(floor, 1e-6)).to(torch.float32)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius ceil(4 sigma) (the paper's sigma=4 -> 33 taps)."""
    radius = max(1, math.ceil(4.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def smoothing_operators(
    grid: tuple[int, int], size: tuple[int, int], sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_h (H, h), A_w (W, w)) with map = A_h @ patch_scores @ A_w^T: upsample, then blur.

    The map is bilinear upsampling (align_corners=False) followed by a Gaussian blur of `sigma`
    pixels (radius ceil(4 sigma), reflect padding, so borders are not darkened; sigma <= 0: no
    blur). Both are linear and separable, so each axis is one (size x grid) matrix, built here by
    pushing the identity through exactly those torch ops in float64. In the graph that is two
    small MatMuls (~3.5 M multiply-adds at 224x224) instead of Resize + Pad + two 33-tap
    convolutions over the full-resolution map (~2 ms on the dev CPU).
    """
    kernel = gaussian_kernel1d(sigma).to(torch.float64) if sigma > 0 else None
    return _axis_operator(grid[0], size[0], kernel), _axis_operator(grid[1], size[1], kernel)


def _axis_operator(n: int, size: int, kernel: torch.Tensor | None) -> torch.Tensor:
    eye = torch.eye(n, dtype=torch.float64).unsqueeze(1)  # n signals of length n, one per input cell
    m = F.interpolate(eye, size=size, mode="linear", align_corners=False)  # (n, 1, size)
    if kernel is not None:
        r = (kernel.numel() - 1) // 2
        if r >= size:
            raise ConfigError(f"smoothing radius {r} px (sigma) needs a map side > {r} px; got {size}: "
                              "lower smoothing_sigma or raise the input size")
        m = F.conv1d(F.pad(m, (r, r), mode="reflect"), kernel.view(1, 1, -1))
    return m[:, 0].transpose(0, 1).to(torch.float32).contiguous()  # (size, n)


def smooth_and_upsample(patch_scores: torch.Tensor, grid: tuple[int, int], rows_op: torch.Tensor,
                        cols_op: torch.Tensor) -> torch.Tensor:
    """Patch scores (B, h*w) -> anomaly map (B, H, W) with the operators of smoothing_operators."""
    m = patch_scores.reshape(-1, grid[0], grid[1])
    return rows_op @ m @ cols_op.transpose(0, 1)


# TensorRT's TopK takes k <= 3840 (TopK operator docs), so the mean is capped there on huge maps.
MAX_SCORE_PIXELS = 3840


def image_score_pixels(height: int, width: int, top: float) -> int:
    """How many of a height x width map's hottest pixels make the image score (0 share -> 1 = max)."""
    return max(1, min(MAX_SCORE_PIXELS, round(top * height * width)))


def image_scores(anomaly_map: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Image score = mean of the k largest values of the smoothed map (k=1: its maximum). (B, H, W) -> (B,)."""
    flat = anomaly_map.flatten(1)
    if k == 1:
        return flat.amax(1)
    return flat.topk(k, dim=1, sorted=False).values.mean(1)
