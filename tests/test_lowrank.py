"""The low-rank head (edge_somad/lowrank.py) against float64 references, and its graph against torch.

Stated tolerances: the float32 graph form equals the float64 evaluation of the same approximation to
rtol 1e-4; where a node's covariance differs from the pooled one in at most r directions, or r = d,
it equals the exact per-node Mahalanobis distance to rtol 1e-4; otherwise its error is at most
max over the dropped directions of |1/lambda - alpha| times |z - c|^2 (the bound the truncation gives).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_somad import scoring
from edge_somad.artifacts import load_arrays, load_config
from edge_somad.config import FitConfig
from edge_somad.lowrank import lowrank_factors, lowrank_statistics, node_axes
from tests.helpers.synth import fit_widget


def _exact_min(x: np.ndarray, centers: np.ndarray, inv: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float64: min over idx of (x - c_j)^T inv_j (x - c_j), the slow obvious way. x (B, N, d), idx (B, N, k)."""
    out = np.empty(idx.shape[:2])
    for b in range(idx.shape[0]):
        for i in range(idx.shape[1]):
            out[b, i] = min((x[b, i] - centers[j]) @ inv[j] @ (x[b, i] - centers[j]) for j in idx[b, i])
    return out


def _graph_form(z: np.ndarray, centers_z: np.ndarray, cov_z: np.ndarray, idx: np.ndarray, rank: int,
                block: int = scoring.LOWRANK_BLOCK) -> np.ndarray:
    basis, coef, alpha = lowrank_factors(torch.from_numpy(cov_z), rank)
    f = torch.float32
    return scoring.min_lowrank_mahalanobis_sq(
        torch.from_numpy(z).to(f), torch.from_numpy(centers_z).to(f), basis.to(f), coef.to(f), alpha.to(f),
        torch.from_numpy(idx), block).double().numpy()


def _near_identity(rng: np.random.Generator, m: int, d: int, deviating: int) -> np.ndarray:
    """(m, d, d) covariances equal to I except in `deviating` random directions per node."""
    cov = np.tile(np.eye(d), (m, 1, 1))
    for j in range(m):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        lam = np.ones(d)
        lam[:deviating] = rng.uniform(0.2, 5.0, deviating)
        cov[j] = q @ np.diag(lam) @ q.T
    return cov


@pytest.mark.parametrize(("d", "rank", "deviating"), [(8, 8, 8), (16, 4, 4), (16, 6, 3)])
def test_exact_when_the_node_deviates_from_the_pool_in_at_most_r_directions(d: int, rank: int,
                                                                           deviating: int) -> None:
    rng = np.random.default_rng(d * 10 + rank)
    m, b, n, k = 9, 2, 40, 3
    cov = _near_identity(rng, m, d, deviating)
    z, centers = rng.normal(size=(b, n, d)) * 2, rng.normal(size=(m, d))
    idx = rng.integers(0, m, size=(b, n, k))
    ref = _exact_min(z, centers, np.linalg.inv(cov), idx)
    np.testing.assert_allclose(_graph_form(z, centers, cov, idx, rank), ref, rtol=1e-4)


def test_general_covariances_match_the_approximation_and_its_error_bound() -> None:
    rng = np.random.default_rng(3)
    m, d, rank, b, n, k = 7, 12, 4, 1, 64, 2
    a = rng.normal(size=(m, d, d)) * 0.3
    cov = np.eye(d) + a @ a.transpose(0, 2, 1)  # deviates from I in every direction
    z, centers = rng.normal(size=(b, n, d)) * 2, rng.normal(size=(m, d))
    idx = rng.integers(0, m, size=(b, n, k))
    basis, coef, alpha = (t.numpy() for t in lowrank_factors(torch.from_numpy(cov), rank))
    approx_inv = alpha[:, None, None] * np.eye(d) + np.einsum("mrd,mr,mre->mde", basis, coef, basis)
    got = _graph_form(z, centers, cov, idx, rank)
    np.testing.assert_allclose(got, _exact_min(z, centers, approx_inv, idx), rtol=1e-4)
    # The truncation's error per candidate: at most max |1/lambda_dropped - alpha| |delta|^2.
    lam, vecs = np.linalg.eigh(cov)
    exact_inv = np.linalg.inv(cov)
    for j in range(m):
        kept = np.abs(basis[j] @ vecs[j]).max(0) > 0.5  # the kept eigen-directions
        worst = np.abs(1 / lam[j][~kept] - alpha[j]).max()
        for v in rng.normal(size=(20, d)):
            err = abs(v @ approx_inv[j] @ v - v @ exact_inv[j] @ v)
            assert err <= worst * (v @ v) * (1 + 1e-9)
    # Blocks of patches (static slices in the graph) change nothing.
    np.testing.assert_array_equal(_graph_form(z, centers, cov, idx, rank, block=5), got)


def test_statistics_whiten_with_the_pool_and_the_rotation_is_orthogonal() -> None:
    rng = np.random.default_rng(4)
    d, m = 6, 5
    x = torch.from_numpy(rng.normal(size=(2000, d)) @ rng.normal(size=(d, d)))
    assign = torch.from_numpy(rng.integers(0, m, 2000))
    nodes = torch.from_numpy(rng.normal(size=(m, d)))
    st = lowrank_statistics(x.float(), assign, nodes.float(), eps=0.5, shrinkage=16.0, rank=d)
    from edge_somad.stats import node_covariances

    _, cov, pooled, _ = node_covariances(x.float(), assign, nodes.float(), 0.5, 16.0)
    t = st.transform.double()
    np.testing.assert_allclose((t.T @ pooled @ t).numpy(), np.eye(d), atol=1e-5)
    q = node_axes(nodes)
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(d), atol=1e-10)
    # rank = d: alpha I + U^T diag(c) U is the exact inverse of every node's covariance (in z coordinates).
    inv_z = np.einsum("mrd,mr,mre->mde", st.basis.double(), st.coef.double(), st.basis.double())
    ref = np.linalg.inv((t.T @ cov @ t).numpy())
    np.testing.assert_allclose(inv_z, ref, rtol=1e-4, atol=1e-5)


def test_truncated_search_keeps_euclidean_order_when_the_dropped_axes_are_flat() -> None:
    """search_share < 1 ranks by the nodes' leading principal axes; where the nodes do not spread along the
    others, the ranking (and so the candidates) is exactly the full Euclidean one."""
    rng = np.random.default_rng(6)
    d, s, m = 8, 3, 64
    nodes = np.zeros((m, d))
    nodes[:, :s] = rng.normal(size=(m, s)) * 3
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    nodes = nodes @ rot.T + rng.normal(size=d)
    x = rng.normal(size=(1, 50, d)) * 3
    axes = node_axes(torch.from_numpy(nodes))[:, :s]
    full = scoring.topk_nearest(torch.from_numpy(x), scoring.search_table(torch.from_numpy(nodes)), 4)
    cut = scoring.topk_nearest(torch.from_numpy(x) @ axes, scoring.search_table(torch.from_numpy(nodes) @ axes), 4)
    np.testing.assert_array_equal(np.sort(full.numpy(), -1), np.sort(cut.numpy(), -1))


@pytest.fixture(scope="module")
def lowrank_exported(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_config: FitConfig) -> Path:
    """A real fit with the low-rank head (rank 4 of d = 16, search on 8 axes) on the synthetic parts, exported."""
    config = dataclasses.replace(tiny_config, head="lowrank", head_rank=4, search_share=0.5)
    return fit_widget(synth_root, config, tmp_path_factory.mktemp("lowrank") / "widget", export=True)


def test_lowrank_model_round_trips_and_old_configs_keep_the_full_head(lowrank_exported: Path,
                                                                      tiny_fitted: Path) -> None:
    config = load_config(lowrank_exported)
    assert (config.head, config.head_rank, config.search_dims) == ("lowrank", 4, 8)  # 0.5 of d = 16
    arrays = load_arrays(lowrank_exported, config)
    assert arrays.whiten is None and arrays.basis.shape[1:] == (4, 16) and arrays.coef.shape[1] == 4
    assert np.isfinite(arrays.basis).all() and (arrays.alpha > 0).all()
    # A config.json written before the head setting existed loads with the full head and its d x d factors.
    import json

    old = tiny_fitted.parent / "old_config"
    shutil.copytree(tiny_fitted, old)
    data = json.loads((old / "config.json").read_text())
    for key in ("head", "head_rank", "search_share"):
        data.pop(key, None)
    (old / "config.json").write_text(json.dumps(data))
    cfg = load_config(old)
    assert cfg.head == "full" and load_arrays(old, cfg).whiten is not None


def test_lowrank_graph_matches_torch_and_uses_only_tensorrt_ops(lowrank_exported: Path, synth_root: Path) -> None:
    from edge_somad.data import load_category
    from edge_somad.evaluate import load_test_set
    from edge_somad.export.onnx_graph import TRT_ALLOWED_OPS, check_graph
    from edge_somad.model import load_torch_model
    from edge_somad.runtime.scorers.ort_scorer import OrtScorer

    report = check_graph(lowrank_exported / "model.onnx", 64, 96)
    assert set(report.op_types) <= TRT_ALLOWED_OPS
    frames = load_test_set(load_category(synth_root, "widget"), load_config(lowrank_exported).input).frames
    net = load_torch_model(lowrank_exported)
    with torch.inference_mode():
        tmap, tscore = (t.numpy() for t in net(torch.from_numpy(frames)))
    with OrtScorer(lowrank_exported / "model.onnx", 64, 96) as ort:
        for batch in (1, 3):
            got = ort.score(frames[:batch])
            np.testing.assert_allclose(got.scores, tscore[:batch], rtol=1e-4)
            np.testing.assert_allclose(got.maps, tmap[:batch], atol=1e-3, rtol=1e-4)


def test_int8_refit_of_the_lowrank_head_reproduces_fit_on_the_same_features(lowrank_exported: Path,
                                                                             synth_root: Path, tmp_path: Path) -> None:
    """The int8 statistics refit, run on a stand-in int8 graph whose features are the fp32 graph's own, must
    give back fit's statistics (scores within 1e-3 relative: the graph's features differ from torch's in
    float32 rounding, which can move a near-tie patch to another node), replacing only the head's factors."""
    import onnx
    from onnx import numpy_helper

    from edge_somad.calibration.int8_lowrank import refit_head_statistics
    from edge_somad.calibration.int8_stats import fit_frames_for
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.data import load_category
    from edge_somad.evaluate import load_test_set
    from edge_somad.runtime.scorers.ort_scorer import OrtScorer

    frames, why = fit_frames_for(lowrank_exported, load_manifest(lowrank_exported))
    assert frames is not None, why
    standin = tmp_path / "standin.int8.onnx"
    shutil.copy(lowrank_exported / "model.onnx", standin)
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(standin)).graph.initializer}
    report = refit_head_statistics(lowrank_exported, standin, frames)
    assert len(report["tensors"]) == 6  # centres, basis, coef, alpha + the score norm's mean and 1/std
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(standin)).graph.initializer}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed <= set(report["tensors"])
    test = load_test_set(load_category(synth_root, "widget"), load_config(lowrank_exported).input).frames
    with OrtScorer(lowrank_exported / "model.onnx", 64, 96) as a, OrtScorer(standin, 64, 96) as b:
        np.testing.assert_allclose(b.score(test[:4]).scores, a.score(test[:4]).scores, rtol=1e-3)
