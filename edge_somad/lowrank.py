"""The low-rank SOMAD head's statistics: one shared whitening, a rank-r correction per node.

Every node's covariance is the pooled one plus w_j (C_j - P) (stats.node_covariances), so after
whitening all patches once with the pooled covariance, each node's covariance is close to the
identity. In those coordinates a node's inverse covariance is kept as

    alpha_j I + sum_i c_ji u_ji u_ji^T        (i = 1..r)

where u_ji are the r eigen-directions whose eigenvalue deviates most from 1 (largest |log
eigenvalue|: where the node is much tighter or looser than the pool), c_ji = 1/lambda_ji - alpha_j,
and alpha_j is the mean of 1/lambda over the dropped directions (the trace of the inverse is exact).
A candidate then costs O(r d) instead of O(d^2), and the factors gathered per (patch, candidate)
shrink from d*d to r*d + r + 1 floats. With r = d the form is the exact per-node Mahalanobis distance.

The nearest-node search stays Euclidean on the SOM nodes, as in the full head; `search_rotation`
orders the coordinates by how much the nodes spread along them (their PCA, an orthogonal
rotation, so Euclidean distances are unchanged), so a search on the first `search_share` of the
coordinates loses the least of the distances between nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge_somad.stats import node_covariances, whitening


@dataclass(frozen=True)
class LowRankStats:
    transform: torch.Tensor  # (d, d) float32: z = x @ transform, whitened by the pooled covariance
    search_rotation: torch.Tensor  # (d, d) float32 orthogonal: the nodes' principal axes, widest first
    centers: torch.Tensor  # (M, d) float32: members' centroid in x coordinates (the node if empty)
    basis: torch.Tensor  # (M, r, d) float32: the kept eigen-directions u_ji in z coordinates
    coef: torch.Tensor  # (M, r) float32: c_ji = 1/lambda_ji - alpha_j
    alpha: torch.Tensor  # (M,) float32: the isotropic part of the inverse covariance
    counts: torch.Tensor  # (M,) int64


def node_axes(nodes: torch.Tensor) -> torch.Tensor:
    """(d, d) float64 orthogonal rotation whose columns are the nodes' principal axes, widest spread first."""
    x = nodes.to(torch.float64)
    spread = x - x.mean(0)
    _, vecs = torch.linalg.eigh(spread.T @ spread)
    return vecs.flip(-1).contiguous()  # eigh sorts ascending


def lowrank_factors(cov_z: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, d, d) covariances (float64, near I) -> basis (M, r, d), coef (M, r), alpha (M,); float64.

    inverse(cov_z) ~= alpha I + basis^T diag(coef) basis, exact for rank = d (alpha is then unused: 0).
    """
    lam, vecs = torch.linalg.eigh(cov_z)  # (M, d); columns of vecs are the eigenvectors
    d = lam.shape[-1]
    order = torch.argsort(lam.log().abs(), dim=-1, descending=True)
    lam = torch.gather(lam, -1, order)
    vecs = torch.gather(vecs, -1, order.unsqueeze(1).expand(-1, d, -1))
    inv = 1.0 / lam
    alpha = inv[:, rank:].mean(-1) if rank < d else torch.zeros_like(inv[:, 0])
    return vecs[..., :rank].transpose(1, 2).contiguous(), inv[:, :rank] - alpha.unsqueeze(-1), alpha


def lowrank_statistics(x: torch.Tensor, assign: torch.Tensor, nodes: torch.Tensor, eps: float, shrinkage: float,
                       rank: int) -> LowRankStats:
    """Node statistics (the same regularised covariances as stats.node_statistics) in low-rank form."""
    centroid, cov, pooled, counts = node_covariances(x, assign, nodes, eps, shrinkage)
    t = whitening(pooled.unsqueeze(0))[0].T  # z = x @ t: |z|^2 = x^T pooled^-1 x
    cov_z = t.T @ cov @ t  # ~ identity where a node looks like the pool
    basis, coef, alpha = lowrank_factors(cov_z, rank)
    f = torch.float32
    return LowRankStats(t.to(f), node_axes(nodes).to(f), centroid.to(f), basis.to(f), coef.to(f), alpha.to(f),
                        counts)
