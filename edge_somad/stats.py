"""Per-node (or per-position) Gaussian statistics and their whitening factors.

Covariances are accumulated in float64. A node with few members borrows the pooled within-node
covariance (shrinkage weight a / (n_j + a)), and eps*I keeps every matrix positive definite, so
no node ever produces NaN. Inverses come from Cholesky + triangular solve: batched
torch.linalg.inv on float64 was seen failing on CPU torch 2.13 ("Pivots given to lu_solve...").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NodeStats:
    centers: torch.Tensor  # (M, d) float32: mean of each node's members (the node itself if empty)
    whiten: torch.Tensor  # (M, d, d) float32: L_j^-1 with Sigma_j = L_j L_j^T
    counts: torch.Tensor  # (M,) int64: training patches per node


def accumulate(x: torch.Tensor, assign: torch.Tensor, m: int) -> tuple[torch.Tensor, ...]:
    """Per-group count, sum and sum of outer products (float64). x (n, d), assign (n,) in [0, m).

    Patches are sorted by group once and each group's X^T X is one small GEMM: ~10x faster than
    scattering (n, d, d) outer products with index_add_, and it never holds more than one group.
    """
    d = x.shape[1]
    counts = torch.bincount(assign, minlength=m)
    order = torch.argsort(assign, stable=True)
    xs = x[order].to(torch.float64)
    sums = torch.zeros(m, d, dtype=torch.float64, device=x.device)
    outer = torch.zeros(m, d, d, dtype=torch.float64, device=x.device)
    nonempty = torch.nonzero(counts).flatten().tolist()
    groups = torch.split(xs, counts[counts > 0].tolist())
    for j, g in zip(nonempty, groups, strict=True):
        sums[j] = g.sum(0)
        outer[j] = g.T @ g
    return counts.to(torch.float64), sums, outer


def whitening(cov: torch.Tensor) -> torch.Tensor:
    """(M, d, d) SPD float64 -> L^-1 (lower triangular), so |L^-1 v|^2 = v^T Sigma^-1 v."""
    chol = torch.linalg.cholesky(cov)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    return torch.linalg.solve_triangular(chol, eye, upper=False)


def node_covariances(
    x: torch.Tensor, assign: torch.Tensor, fallback_centers: torch.Tensor, eps: float, shrinkage: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centroids (M, d), regularised covariances (M, d, d), the pooled one + eps*I (d, d), counts (M,); float64.

    Node j's covariance is w_j C_j + (1 - w_j) P + eps I with w_j = dof_j / (dof_j + shrinkage): it
    differs from the pooled P + eps I only by w_j (C_j - P), which is what the low-rank head keeps.
    """
    m, d = fallback_centers.shape
    counts, sums, outer = accumulate(x, assign, m)
    n = counts.view(m, 1)
    centroid = torch.where(n > 0, sums / n.clamp_min(1), fallback_centers.to(torch.float64))
    # Scatter around the centroid: sum xx^T - n mu mu^T (zero for empty nodes).
    scatter = outer - n.view(m, 1, 1) * centroid.unsqueeze(2) * centroid.unsqueeze(1)
    dof = (counts - 1).clamp_min(0)
    pooled = scatter.sum(0) / dof.sum().clamp_min(1)
    cov_j = scatter / dof.clamp_min(1).view(m, 1, 1)
    w = (dof / (dof + shrinkage)).view(m, 1, 1) if shrinkage > 0 else (dof > 0).to(cov_j).view(m, 1, 1)
    ridge = eps * torch.eye(d, dtype=torch.float64, device=x.device)
    cov = w * cov_j + (1 - w) * pooled + ridge
    return centroid, cov, pooled + ridge, counts.to(torch.int64)


def node_statistics(
    x: torch.Tensor, assign: torch.Tensor, fallback_centers: torch.Tensor, eps: float, shrinkage: float
) -> NodeStats:
    """Statistics of the patches assigned to each node, around the members' centroid."""
    centroid, cov, _, counts = node_covariances(x, assign, fallback_centers, eps, shrinkage)
    return NodeStats(centroid.to(torch.float32), whitening(cov).to(torch.float32), counts)


def positional_statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PaDiM: one Gaussian per position. x (n_images, N, d) -> means (N, d), whiten (N, d, d)."""
    n_img, _, d = x.shape
    xd = x.to(torch.float64)
    means = xd.mean(0)
    delta = (xd - means).transpose(0, 1)  # (N, n_img, d)
    cov = delta.transpose(1, 2) @ delta / max(1, n_img - 1)
    cov = cov + eps * torch.eye(d, dtype=torch.float64)
    return means.to(torch.float32), whitening(cov).to(torch.float32)
