"""Quantization-aware statistics on a tiny stand-in: the graph's features are the pixels themselves.

Stand-in graph: uint8 frames (B, 8, 8, 3) -> Cast -> Reshape (B, 64, 3) -> Mul(gain) = features ->
nearest SOM node (TopK 1) -> Gather centre / whitening -> |W (x - mu)|^2 -> dist2 (B, 64).
gain 1 is the "fp32" graph; gain 1.3 stands in for an int8 backbone whose features moved away
from the ones the statistics were fit on (the real int8 shift is what the Hazelnut test checks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")

import torch

from edge_somad.artifacts import FittedArrays, save_model
from edge_somad.calibration.int8_stats import find_head_tensors, fit_frames_for, refit_statistics
from edge_somad.config import FitConfig
from edge_somad.errors import ArtifactError
from edge_somad.som import best_matching_units
from edge_somad.stats import node_statistics
from tests.test_calibration_quantize import make_standin_model_dir, synthetic_frames

S, D, M = 8, 3, 4
CONFIG = FitConfig(d=D, eps=0.01, shrinkage=4.0, score_norm="none")  # node statistics only


def _graph(gain: float, arrays: FittedArrays) -> onnx.ModelProto:
    init = numpy_helper.from_array
    inits = [
        init(np.array([0, S * S, D], np.int64), "shape"), init(np.float32(gain), "gain"),
        init(arrays.nodes, "som_nodes"), init(arrays.centers, "node_centres"), init(arrays.whiten, "node_whiten"),
        init(np.array([2], np.int64), "ax2"), init(np.array([-1], np.int64), "axl"),
        init(np.array([1], np.int64), "k"),
    ]
    n = helper.make_node
    nodes = [
        n("Cast", ["frames"], ["f"], to=TensorProto.FLOAT), n("Reshape", ["f", "shape"], ["flat"]),
        n("Mul", ["flat", "gain"], ["feat"]),
        n("Unsqueeze", ["feat", "ax2"], ["fu"]), n("Sub", ["fu", "som_nodes"], ["diff"]),
        n("Mul", ["diff", "diff"], ["sq"]), n("ReduceSum", ["sq", "axl"], ["d2"], keepdims=0),
        n("TopK", ["d2", "k"], ["topv", "topi"], largest=0), n("Squeeze", ["topi", "axl"], ["idx"]),
        n("Gather", ["node_centres", "idx"], ["mu"]), n("Sub", ["feat", "mu"], ["delta"]),
        n("Gather", ["node_whiten", "idx"], ["wj"]), n("Unsqueeze", ["delta", "axl"], ["dcol"]),
        n("MatMul", ["wj", "dcol"], ["z4"]), n("Squeeze", ["z4", "axl"], ["z"]),
        n("Mul", ["z", "z"], ["z2"]), n("ReduceSum", ["z2", "axl"], ["dist2"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "standin_head", [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["b", S, S, 3])],
        [helper.make_tensor_value_info("dist2", TensorProto.FLOAT, ["b", S * S])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dist2(model: onnx.ModelProto | Path, frames: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["dist2"], {"frames": frames})[0]


@pytest.fixture()
def fitted(tmp_path: Path) -> tuple[Path, FittedArrays, np.ndarray]:
    """A model dir whose arrays are fit (edge_somad.stats) on the gain-1 features of `frames`."""
    frames = synthetic_frames(40, seed=3, height=S, width=S)
    flat = torch.from_numpy(frames.reshape(-1, D).astype(np.float32))
    nodes = flat[torch.from_numpy(np.random.default_rng(0).choice(len(flat), M, replace=False))]
    st = node_statistics(flat, best_matching_units(flat, nodes), nodes, CONFIG.eps, CONFIG.shrinkage)
    arrays = FittedArrays(projection=np.eye(D, dtype=np.float32), whiten=st.whiten.numpy(),
                          nodes=nodes.numpy(), centers=st.centers.numpy(), counts=st.counts.numpy())
    save_model(tmp_path, CONFIG, arrays, {"train": [], "holdout": []}, {})
    return tmp_path, arrays, frames


def test_head_tensors_found_by_value(fitted: tuple[Path, FittedArrays, np.ndarray]) -> None:
    _, arrays, _ = fitted
    head = find_head_tensors(_graph(1.3, arrays), arrays.centers, arrays.whiten)
    assert (head.features, head.location, head.whiten) == ("feat", "node_centres", "node_whiten")
    with pytest.raises(ArtifactError, match="another fit"):  # a graph exported from other arrays
        find_head_tensors(_graph(1.0, arrays), arrays.centers + 1, arrays.whiten)


def test_refit_brings_shifted_features_back_to_fp32_distances(
    fitted: tuple[Path, FittedArrays, np.ndarray], tmp_path: Path
) -> None:
    model_dir, arrays, frames = fitted
    fp32 = _dist2(_graph(1.0, arrays), frames).mean()
    path = tmp_path / "standin.int8.onnx"
    onnx.save(_graph(1.3, arrays), str(path))
    before = _dist2(path, frames).mean()
    report = refit_statistics(model_dir, path, frames)
    after = _dist2(path, frames).mean()
    # Members of a Gaussian fit sit at mean squared Mahalanobis ~ d; the shifted features are far off.
    assert before > 3 * fp32
    assert after == pytest.approx(fp32, rel=0.25)
    assert report["tensors"] == ["node_centres", "node_whiten"] and report["patches"] == 40 * S * S
    # Only the statistics changed: the SOM search keys and the feature path are the fp32 ones.
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    np.testing.assert_array_equal(inits["som_nodes"], arrays.nodes)
    assert not np.allclose(inits["node_centres"], arrays.centers)
    assert np.allclose(np.triu(inits["node_whiten"], 1), 0)  # still Cholesky-lower-triangular


def test_fit_frames_for_says_why_it_cannot_refit(tmp_path: Path) -> None:
    from edge_somad.contracts.manifest import load_manifest

    model_dir = make_standin_model_dir(tmp_path)  # manifest + ONNX only, like a deployed box
    frames, why = fit_frames_for(model_dir, load_manifest(model_dir))
    assert frames is None and "no arrays.npz" in why
