"""A tiny stand-in for the fused SOMAD graph, honouring the graph contract, for the TensorRT/fp16/bench
tests (imported by test_fp16.py, test_bench.py, test_trt_*.py). Its own tests check the contract.

Graph: frames uint8 (B,H,W,3) -> Cast -> (x - mean) / std -> NCHW -> Conv stride 2 -> Resize x2
-> Relu -> NHWC features (d=4) -> |W (f - mu)|^2 (MatMul + ReduceSum, the Mahalanobis tail)
-> anomaly_map (B,H,W) float32, score = ReduceMax (B,) float32.
`whiten_scale` makes the squared distances large (> 65504) to exercise float16 overflow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_somad.contracts.manifest import (  # noqa: E402
    Manifest,
    Preprocessing,
    TensorSpec,
    save_manifest,
    sha256_file,
)

H, W = 32, 48


def build_tiny_onnx(path: Path, height: int = H, width: int = W, whiten_scale: float = 1.0,
                    seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    inits = {
        "mean": np.array([104.0, 117.0, 123.0], np.float32),
        "std": np.array([58.0, 57.0, 59.0], np.float32),
        "conv_w": (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32),
        "conv_b": (rng.standard_normal(4) * 0.1).astype(np.float32),
        "scales": np.array([1.0, 1.0, 2.0, 2.0], np.float32),
        "mu": (rng.standard_normal(4) * 0.2).astype(np.float32),
        "whiten": (np.eye(4) * whiten_scale + rng.standard_normal((4, 4)) * 0.1).astype(np.float32),
        "axis_last": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["frames"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["x", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("Transpose", ["xn"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Resize", ["c", "", "scales"], ["up"], mode="linear"),
        helper.make_node("Relu", ["up"], ["f"]),
        helper.make_node("Transpose", ["f"], ["feat"], perm=[0, 2, 3, 1]),
        helper.make_node("Sub", ["feat", "mu"], ["delta"]),
        helper.make_node("MatMul", ["delta", "whiten"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["z2"]),
        helper.make_node("ReduceSum", ["z2", "axis_last"], ["anomaly_map"], keepdims=0),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny_somad",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", height, width, 3])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", height, width]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def make_model_dir(root: Path, height: int = H, width: int = W, whiten_scale: float = 1.0) -> Path:
    """A model directory as export writes it: model.onnx, arrays.npz, manifest.json."""
    root.mkdir(parents=True, exist_ok=True)
    onnx_path = build_tiny_onnx(root / "model.onnx", height, width, whiten_scale)
    np.savez(root / "arrays.npz", centers=np.zeros((4, 4), np.float32))
    manifest = Manifest(
        name="tiny",
        onnx="model.onnx",
        onnx_sha256=sha256_file(onnx_path),
        input=TensorSpec("frames", ("batch", height, width, 3), "uint8"),
        outputs=(TensorSpec("anomaly_map", ("batch", height, width), "float32"),
                 TensorSpec("score", ("batch",), "float32")),
        preprocessing=Preprocessing(height=height, width=width, resize="stretch"),
    )
    save_manifest(root, manifest)
    return root


def run_ort(path: Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    amap, score = sess.run(["anomaly_map", "score"], {"frames": frames})
    return amap, score


def random_frames(batch: int, height: int = H, width: int = W, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def test_tiny_model_honours_the_graph_contract(tmp_path: Path) -> None:
    path = build_tiny_onnx(tmp_path / "m.onnx")
    for batch in (1, 3):
        amap, score = run_ort(path, random_frames(batch))
        assert amap.dtype == np.float32 and amap.shape == (batch, H, W)
        assert score.dtype == np.float32 and score.shape == (batch,)
        np.testing.assert_allclose(score, amap.reshape(batch, -1).max(1))


def test_tiny_model_dir_manifest_loads(tmp_path: Path) -> None:
    from edge_somad.contracts.manifest import load_manifest

    m = load_manifest(make_model_dir(tmp_path / "tiny"))
    assert (m.preprocessing.height, m.preprocessing.width) == (H, W)
    assert m.engines == ()
