"""Self-Organising Map training, batched in torch (uses the GPU when the features live there).

Mini-batch online SOM: for each batch, best-matching units (BMU) by one GEMM, per-node sums of
the batch, a Gaussian neighbourhood on the K x K grid applied as a separable convolution (so the
cost does not grow with the radius times the node count), then every node moves a learning-rate
step towards the neighbourhood-weighted mean. Radius and learning rate decay geometrically.
Seeded shuffling makes it deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_somad.config import SomConfig
from edge_somad.scoring import ranking_distances, search_table


@dataclass(frozen=True)
class SomResult:
    nodes: torch.Tensor  # (K*K, d), row-major over the grid
    rows: int
    cols: int
    quantisation_error: float  # mean distance of training patches to their BMU after training


def som_grid(feature_grid: tuple[int, int], config: SomConfig) -> tuple[int, int]:
    """The SOM's rows x cols: explicit, or the feature grid scaled down (aspect kept) to max_nodes."""
    if config.rows:
        return config.rows, config.cols
    h, w = feature_grid
    if h * w <= config.max_nodes:
        return h, w
    scale = math.sqrt(config.max_nodes / (h * w))
    return max(2, math.floor(h * scale)), max(2, math.floor(w * scale))


def init_nodes(position_means: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Nodes from per-position means (the paper's init): (h, w, d) means resized to (rows, cols, d)."""
    m = position_means.permute(2, 0, 1).unsqueeze(0)  # (1, d, h, w)
    if m.shape[-2:] != (rows, cols):
        m = F.interpolate(m, size=(rows, cols), mode="bilinear", align_corners=True)
    return m[0].permute(1, 2, 0).reshape(rows * cols, -1).contiguous()


def _neighbourhood(radius: float, size: int) -> torch.Tensor:
    r = min(size - 1, max(1, math.ceil(3.0 * radius)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    return torch.exp(-0.5 * (t / radius) ** 2)


def _grid_smooth(values: torch.Tensor, rows: int, cols: int, radius: float) -> torch.Tensor:
    """Apply the Gaussian neighbourhood over the grid: values (rows*cols, c) -> same shape."""
    c = values.shape[1]
    v = values.T.reshape(1, c, rows, cols)
    ky, kx = _neighbourhood(radius, rows).to(v), _neighbourhood(radius, cols).to(v)
    v = F.conv2d(v, ky.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(ky.numel() // 2, 0), groups=c)
    v = F.conv2d(v, kx.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, kx.numel() // 2), groups=c)
    return v.reshape(c, rows * cols).T


def best_matching_units(x: torch.Tensor, nodes: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """BMU index for each row of x (n, d), in chunks so memory stays at chunk x nodes."""
    table = search_table(nodes)
    out = [ranking_distances(x[i : i + chunk], table).argmin(-1) for i in range(0, len(x), chunk)]
    return torch.cat(out)


def train_som(
    features: torch.Tensor,
    position_means: torch.Tensor,
    config: SomConfig,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> SomResult:
    """Train a SOM on all patch features (n, d); grid from som_grid()."""
    h, w, _ = position_means.shape
    rows, cols = som_grid((h, w), config)
    nodes = init_nodes(position_means, rows, cols).to(features)
    n_all = features.shape[0]
    n = min(n_all, config.max_patches_per_epoch)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    r0 = config.radius_start or max(rows, cols) / 4.0
    r1 = min(config.radius_end, r0)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(n_all, generator=gen)[:n].to(features.device)
        for s in range(steps_per_epoch):
            frac = step / max(1, total - 1)
            lr = config.lr_start * (config.lr_end / config.lr_start) ** frac
            radius = r0 * (r1 / r0) ** frac
            batch = features[order[s * config.batch_size : (s + 1) * config.batch_size]]
            nodes = _update(nodes, batch, rows, cols, lr, radius)
            step += 1
            if progress is not None:
                progress(step, total)
    bmu = best_matching_units(features, nodes)
    qe = float((features - nodes[bmu]).norm(dim=1).mean())
    return SomResult(nodes, rows, cols, qe)


def _update(nodes: torch.Tensor, batch: torch.Tensor, rows: int, cols: int, lr: float, radius: float) -> torch.Tensor:
    bmu = best_matching_units(batch, nodes)
    m = nodes.shape[0]
    sums = torch.zeros_like(nodes).index_add_(0, bmu, batch)
    counts = torch.bincount(bmu, minlength=m).to(nodes).unsqueeze(1)
    both = _grid_smooth(torch.cat([sums, counts], dim=1), rows, cols, radius)
    h_sum, h_cnt = both[:, :-1], both[:, -1:]
    # Nodes outside every BMU's neighbourhood (h_cnt ~ 0) stay where they are.
    target = torch.where(h_cnt > 1e-6, h_sum / h_cnt.clamp_min(1e-6), nodes)
    weight = lr * (h_cnt / (h_cnt + 1e-3)).clamp(max=1.0)
    return nodes + weight * (target - nodes)
