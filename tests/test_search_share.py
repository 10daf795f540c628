"""The full head with a truncated search (search_share < 1) and fewer candidates (topk) against float64.

Stated tolerance: the head's squared distance equals, to rtol 1e-5, the float64 minimum of the exact
per-node Mahalanobis distance (with the factors the head holds: held_whitening's float16 values) over
the k nodes nearest in float64 on the nodes' first S principal axes. The exported graph equals the
torch module on ONNX Runtime (scores rtol 1e-4) and uses only the ops TensorRT parses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_somad import scoring
from edge_somad.artifacts import FittedArrays, held_whitening
from edge_somad.config import FitConfig
from edge_somad.model import Head
from tests.helpers.synth import fit_widget


def _arrays(rng: np.random.Generator, m: int, d: int) -> FittedArrays:
    """Nodes spread along d axes of clearly different widths (a well-defined PCA), random whitening factors."""
    widths = np.linspace(4.0, 0.3, d)
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    nodes = (rng.normal(size=(m, d)) * widths) @ rot.T + rng.normal(size=d)
    whiten = np.tril(rng.normal(size=(m, d, d)) * 0.3) + np.eye(d) * rng.uniform(0.5, 2.0, size=(m, 1, 1))
    centers = nodes + rng.normal(size=(m, d)) * 0.1
    f = np.float32
    return FittedArrays(projection=np.eye(d, dtype=f), whiten=whiten.astype(f), nodes=nodes.astype(f),
                        centers=centers.astype(f), counts=np.full(m, 100))


def _reference(x: np.ndarray, arrays: FittedArrays, dims: int, k: int) -> np.ndarray:
    """float64, the obvious way: rank by Euclidean distance on the first `dims` principal axes, then the exact
    per-node Mahalanobis distance over those k candidates."""
    nodes = arrays.nodes.astype(np.float64)
    spread = nodes - nodes.mean(0)
    _, vecs = np.linalg.eigh(spread.T @ spread)
    axes = vecs[:, ::-1][:, :dims]
    keys, node_keys = x @ axes, nodes @ axes
    whiten = held_whitening(arrays.whiten).astype(np.float64)
    out = np.empty(x.shape[:2])
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            near = np.argsort(((node_keys - keys[b, i]) ** 2).sum(-1))[:k]
            out[b, i] = min(float(np.sum((whiten[j] @ (x[b, i] - arrays.centers[j])) ** 2)) for j in near)
    return out


@pytest.mark.parametrize(("share", "k"), [(1.0, 4), (0.5, 4), (0.5, 2), (0.25, 1)])
def test_full_head_with_truncated_search_matches_float64(share: float, k: int) -> None:
    rng = np.random.default_rng(int(share * 100) + k)
    d, m = 8, 96  # 96 nodes: 3 groups of 32, so the two-stage top-k path runs
    arrays = _arrays(rng, m, d)
    config = dataclasses.replace(FitConfig(), d=d, head="full", search_share=share, topk=k)
    head = Head(arrays, config)
    assert (head.search_axes is None) == (share == 1.0)  # share 1: the unchanged exact search on x
    x = rng.normal(size=(2, 60, d)) * 3
    with torch.inference_mode():
        got = head.distances_sq(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(got, _reference(x, arrays, config.search_dims, k), rtol=1e-5)


def test_the_reference_tells_a_truncated_search_from_the_full_one() -> None:
    """The float64 check can fail: 2 of 8 axes and 1 candidate miss the nearest node for some patches, so
    that head's distances are above the all-axes reference there (never below: the same node set, fewer)."""
    rng = np.random.default_rng(3)
    arrays = _arrays(rng, 96, 8)
    head = Head(arrays, dataclasses.replace(FitConfig(), d=8, head="full", search_share=0.25, topk=1))
    x = rng.normal(size=(1, 200, 8)) * 3
    with torch.inference_mode():
        got = head.distances_sq(torch.from_numpy(x).float()).double().numpy()[0]
    full = _reference(x, arrays, 8, 1)[0]
    assert (np.abs(got - full) > 1e-3 * full).sum() >= 10


@pytest.fixture(scope="module")
def truncated_exported(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_config: FitConfig) -> Path:
    """A real fit with the full head, search on half the axes, 2 candidates, exported."""
    config = dataclasses.replace(tiny_config, head="full", search_share=0.5, topk=2)
    return fit_widget(synth_root, config, tmp_path_factory.mktemp("truncated") / "widget", export=True)


def test_truncated_search_graph_matches_torch_and_uses_only_tensorrt_ops(truncated_exported: Path,
                                                                         synth_root: Path) -> None:
    from edge_somad.artifacts import load_config
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.data import load_category
    from edge_somad.evaluate import load_test_set
    from edge_somad.export.onnx_graph import TRT_ALLOWED_OPS, check_graph
    from edge_somad.model import load_torch_model
    from edge_somad.runtime.scorers.ort_scorer import OrtScorer

    config = load_config(truncated_exported)
    assert (config.head, config.search_dims, config.topk) == ("full", 8, 2)
    assert load_manifest(truncated_exported).model["search_share"] == 0.5
    report = check_graph(truncated_exported / "model.onnx", 64, 96)
    assert set(report.op_types) <= TRT_ALLOWED_OPS
    frames = load_test_set(load_category(synth_root, "widget"), config.input).frames
    net = load_torch_model(truncated_exported)
    assert net.head.search_axes is not None and net.head.search_axes.shape == (16, 8)
    with torch.inference_mode():
        tmap, tscore = (t.numpy() for t in net(torch.from_numpy(frames)))
    with OrtScorer(truncated_exported / "model.onnx", 64, 96) as ort:
        for batch in (1, 3):
            got = ort.score(frames[:batch])
            np.testing.assert_allclose(got.scores, tscore[:batch], rtol=1e-4)
            np.testing.assert_allclose(got.maps, tmap[:batch], atol=1e-3, rtol=1e-4)


def test_search_axes_are_orthogonal_and_widest_first() -> None:
    rng = np.random.default_rng(0)
    nodes = torch.from_numpy(rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]))
    q = scoring.search_axes(nodes)
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(6), atol=1e-10)
    spread = ((nodes - nodes.mean(0)) @ q).var(0).numpy()
    assert (np.diff(spread) < 0).all()
