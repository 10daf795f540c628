"""Node statistics (empty and sparse nodes) and SOM training behaviour."""

from __future__ import annotations

import numpy as np
import torch

from edge_somad.config import SomConfig
from edge_somad.som import best_matching_units, init_nodes, train_som
from edge_somad.stats import node_statistics


def test_node_statistics_match_numpy_and_handle_empty_nodes() -> None:
    rng = np.random.default_rng(0)
    d = 3
    x = np.concatenate([rng.normal(0, 1, (400, d)), rng.normal(5, 2, (300, d)), rng.normal(-3, 1, (1, d))])
    assign = np.array([0] * 400 + [1] * 300 + [2])
    fallback = np.zeros((4, d), np.float32)  # node 3 has no members at all
    st = node_statistics(torch.from_numpy(x).float(), torch.from_numpy(assign), torch.from_numpy(fallback),
                         eps=0.01, shrinkage=0.0)
    assert torch.isfinite(st.whiten).all() and torch.isfinite(st.centers).all()
    np.testing.assert_allclose(st.centers[0].numpy(), x[:400].mean(0), rtol=1e-5, atol=1e-5)
    cov0 = np.cov(x[:400].T) + 0.01 * np.eye(d)
    w0 = st.whiten[0].double().numpy()
    np.testing.assert_allclose(w0.T @ w0, np.linalg.inv(cov0), rtol=1e-4, atol=1e-5)
    assert st.counts.tolist() == [400, 300, 1, 0]
    # Nodes with < 2 members fall back to the pooled within-node covariance, the same for both.
    np.testing.assert_allclose(st.whiten[2].numpy(), st.whiten[3].numpy(), rtol=1e-6)
    np.testing.assert_allclose(st.centers[3].numpy(), fallback[3])


def test_shrinkage_pulls_small_nodes_towards_pooled() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (500, 2)), rng.normal(0, 10, (5, 2))])
    assign = torch.tensor([0] * 500 + [1] * 5)
    fb = torch.zeros(2, 2)
    loose = node_statistics(torch.from_numpy(x).float(), assign, fb, eps=1e-3, shrinkage=0.0)
    shrunk = node_statistics(torch.from_numpy(x).float(), assign, fb, eps=1e-3, shrinkage=50.0)
    # A 5-member node's own covariance is huge; shrinkage moves it towards the pooled one (smaller).
    assert shrunk.whiten[1].abs().sum() > loose.whiten[1].abs().sum()


def test_som_init_from_position_means_and_training_reduces_error() -> None:
    rng = np.random.default_rng(2)
    h, w, d = 4, 5, 6
    centres = rng.normal(0, 3, (h * w, d))
    feats = np.concatenate([c + 0.3 * rng.normal(size=(50, d)) for c in centres]).astype(np.float32)
    pos_means = torch.from_numpy(centres.reshape(h, w, d)).float()
    nodes0 = init_nodes(pos_means, h, w)
    assert torch.allclose(nodes0, pos_means.reshape(-1, d))  # same grid: nodes are the means
    shuffled_init = pos_means.reshape(-1, d)[torch.randperm(h * w)].reshape(h, w, d) * 0.1
    f = torch.from_numpy(feats)
    # Random clusters have no 2-D topology, so let the neighbourhood shrink below one grid step.
    cfg = SomConfig(epochs=10, batch_size=100, radius_end=0.1)
    res = train_som(f, shuffled_init, cfg, seed=0)
    flat_init = shuffled_init.reshape(-1, d)
    before = (f - flat_init[best_matching_units(f, flat_init)]).norm(dim=1).mean()
    assert res.quantisation_error < 0.5 * float(before)
    again = train_som(f, shuffled_init, cfg, seed=0)
    assert torch.equal(res.nodes, again.nodes)  # seeded: bit-identical


def test_som_topology_neighbours_are_closer_than_far_nodes() -> None:
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 1, (4000, 1))
    feats = torch.from_numpy(np.concatenate([t, 0.01 * rng.normal(size=(4000, 1))], 1)).float()  # a 1-D line
    init = torch.from_numpy(rng.normal(0.5, 0.05, (1, 8, 2))).float()
    res = train_som(feats, init, SomConfig(epochs=5, batch_size=500, radius_start=3.0), seed=0)
    n = res.nodes[:, 0].numpy()
    steps = np.abs(np.diff(n))
    assert np.abs(n[-1] - n[0]) > 0.6  # the map unfolded along the data
    assert steps.max() < 0.35  # and grid neighbours stay close on it
