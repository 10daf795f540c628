"""INT8 Q/DQ quantization of a small stand-in graph that honours the model.onnx contract.

The stand-in: uint8 frames (B,H,W,3) -> Cast -> NCHW (through a shape-path Concat + Reshape) ->
2 backbone Convs -> SOMAD-like head (Resize + Concat of both stages, 1x1 projection Conv, squared
distance to K nodes, TopK smallest, ReduceMin, Sqrt, Resize, Gaussian smoothing Conv) ->
anomaly_map (B,H,W) and score (B,) = max of the map.
`make_standin_model_dir` is reused by the calibration command tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_somad.calibration import quantize
from edge_somad.calibration.quantize import INT16_MAX, backbone_convs, quantize_int8, u8s8_pair_bound
from edge_somad.contracts.manifest import (
    Manifest,
    Preprocessing,
    TensorSpec,
    load_manifest,
    save_manifest,
    sha256_file,
)
from edge_somad.errors import ArtifactError, InputError
from tests.test_trt_tinymodel import run_ort

H, W, C, D, K = 32, 48, 8, 4, 6
INT8_SCORE_RTOL = 0.05  # stated tolerance: int8 scores within 5% of fp32 on in-distribution frames


def synthetic_frames(n: int, seed: int, height: int = H, width: int = W) -> np.ndarray:
    """Smooth 'parts' (a lit disc on a gradient) with sensor noise: uint8 BGR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        cy, cx = height / 2 + rng.normal(0, 1), width / 2 + rng.normal(0, 1)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < (height / 3) ** 2) * 120.0
        base = 40 + 60 * xx / width + disc
        img = base[..., None] + rng.normal(0, 6, (height, width, 3)) + np.array([0, 10, 20])
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _graph(nodes_fk: np.ndarray | None, rng: np.random.Generator, chained: bool = False) -> onnx.ModelProto:
    """Features-only graph when nodes_fk is None (to pick SOM nodes), else the full contract graph.

    Like the real export: a shape-path Concat before the backbone (Shape -> Concat -> Reshape),
    two backbone stages fused by Resize + Concat, a 1x1 projection Conv, then the distance head.
    chained: conv2 reads conv1's raw output (like EfficientNet's project conv -> next block), so
    that output is quantized and ONNX Runtime runs conv1 as an integer QLinearConv.
    """
    w1 = rng.normal(0, 0.3, (C, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (C, C, 3, 3)).astype(np.float32)
    proj = rng.normal(0, 1 / np.sqrt(2 * C), (D, 2 * C, 1, 1)).astype(np.float32)
    g = np.exp(-((np.arange(3) - 1.0) ** 2) / 2)
    smooth = (np.outer(g, g) / np.outer(g, g).sum()).astype(np.float32).reshape(1, 1, 3, 3)
    inits = [
        _init("scale", np.float32(1 / 255)), _init("chw", np.array([3, H, W], np.int64)),
        _init("w1", w1), _init("b1", np.zeros(C, np.float32)),
        _init("w2", w2), _init("b2", np.zeros(C, np.float32)),
        _init("proj", proj), _init("roi", np.zeros(0, np.float32)),
        _init("up2", np.array([1, 1, 2, 2], np.float32)),
    ]
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Shape", ["nchw"], ["shp"], start=0, end=1),
        helper.make_node("Concat", ["shp", "chw"], ["shape4"], name="shape_concat", axis=0),
        helper.make_node("Reshape", ["nchw", "shape4"], ["nchw2"]),
        helper.make_node("Mul", ["nchw2", "scale"], ["x"]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="backbone_conv1", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="backbone_conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Resize", ["r2", "roi", "up2"], ["r2up"], mode="linear"),
        helper.make_node("Concat", ["r1", "r2up"], ["multi"], axis=1),
        helper.make_node("Conv", ["multi", "proj"], ["z"], name="head_projection"),
        helper.make_node("Transpose", ["z"], ["feat"], perm=[0, 2, 3, 1]),
    ]
    if chained:  # conv1 -> conv2 directly; the head's first stage is the upsampled second one
        nodes = [n for n in nodes if n.output[0] != "r1"]
        by_output = {n.output[0]: n for n in nodes}
        by_output["c2"].input[0] = "c1"
        by_output["multi"].input[0] = "r2up"
    frames = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", H, W, 3])
    if nodes_fk is None:
        out = helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["batch", H // 2, W // 2, D])
        return helper.make_model(helper.make_graph(nodes, "features", [frames], [out], inits),
                                 opset_imports=[helper.make_opsetid("", 17)])
    inits += [
        _init("som", nodes_fk.astype(np.float32)), _init("ax3", np.array([3], np.int64)),
        _init("axl", np.array([-1], np.int64)), _init("k", np.array([2], np.int64)),
        _init("ax1", np.array([1], np.int64)), _init("smooth", smooth),
    ]
    nodes += [
        helper.make_node("Unsqueeze", ["feat", "ax3"], ["fu"]),
        helper.make_node("Sub", ["fu", "som"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axl"], ["d2"], keepdims=0),
        helper.make_node("TopK", ["d2", "k"], ["topv", "topi"], largest=0),
        helper.make_node("ReduceMin", ["topv"], ["dmin"], axes=[-1], keepdims=0),
        helper.make_node("Sqrt", ["dmin"], ["dist"]),
        helper.make_node("Unsqueeze", ["dist", "ax1"], ["d4"]),
        helper.make_node("Resize", ["d4", "roi", "up2"], ["up"], mode="linear"),
        helper.make_node("Conv", ["up", "smooth"], ["sm"], name="head_smooth", pads=[1, 1, 1, 1]),
        helper.make_node("Squeeze", ["sm", "ax1"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0),
    ]
    outs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", H, W]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "standin", [frames], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def make_standin_model_dir(root: Path, seed: int = 0, chained: bool = False) -> Path:
    """A model dir with model.onnx (contract graph) and manifest.json; SOM nodes = real features."""
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    feats_model = _graph(None, np.random.default_rng(seed), chained)
    sess = ort.InferenceSession(feats_model.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {"frames": synthetic_frames(8, seed + 100)})[0].reshape(-1, D)
    som = feats[np.random.default_rng(seed).choice(len(feats), K, replace=False)]
    onnx.save(_graph(som, np.random.default_rng(seed), chained), str(model_dir / "model.onnx"))
    manifest = Manifest(
        name="standin",
        onnx="model.onnx",
        onnx_sha256=sha256_file(model_dir / "model.onnx"),
        input=TensorSpec("frames", ("batch", H, W, 3), "uint8"),
        outputs=(
            TensorSpec("anomaly_map", ("batch", H, W), "float32"),
            TensorSpec("score", ("batch",), "float32"),
        ),
        preprocessing=Preprocessing(height=H, width=W, resize="stretch"),
        model={"backbone": "standin", "d": D, "topk": 2},
    )
    save_manifest(model_dir, manifest)
    return model_dir


_run = run_ort  # the shared stand-in runner


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model_dir = make_standin_model_dir(tmp_path_factory.mktemp("q"))
    out = quantize_int8(model_dir, synthetic_frames(24, seed=1))
    return model_dir, out


def test_backbone_convs_split_head_from_backbone(quantized: tuple[Path, Path]) -> None:
    model = onnx.load(str(quantized[0] / "model.onnx"))
    assert backbone_convs(model) == (["backbone_conv1", "backbone_conv2"], ["head_projection", "head_smooth"])


def test_qdq_nodes_only_around_backbone_convs(quantized: tuple[Path, Path]) -> None:
    model = onnx.load(str(quantized[1]))
    nodes = model.graph.node
    dq_outputs = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    convs_fed = {n.name for n in nodes if n.op_type == "Conv" and any(i in dq_outputs for i in n.input)}
    assert convs_fed == {"backbone_conv1", "backbone_conv2"}
    # Activations quantized: each backbone Conv's input only (r1 is conv2's input; the head reads
    # that same stage output). Not the raw Conv outputs c1/c2: their pre-ReLU range would set the
    # scale and leave few levels for what the ReLU keeps. Nothing the head computes.
    quantized_tensors = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    assert quantized_tensors == {"x", "r1"}
    head_types = {"ReduceSum", "TopK", "ReduceMin", "Sqrt", "ReduceMax", "MatMul"}
    head_nodes = {"head_projection", "head_smooth"} | {n.name for n in nodes if n.op_type in head_types}
    assert not [n.name for n in nodes if n.name in head_nodes and set(n.input) & dq_outputs]
    # Symmetric int8: every activation zero point is int8 and 0 (TensorRT's requirement).
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in nodes if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert len(zps) == 2 and all(z.dtype == np.int8 and not z.any() for z in zps)


def test_int8_runs_in_ort_cpu_within_tolerance(quantized: tuple[Path, Path]) -> None:
    model_dir, int8_path = quantized
    frames = synthetic_frames(8, seed=7)
    amap32, score32 = _run(model_dir / "model.onnx", frames)
    amap8, score8 = _run(int8_path, frames)
    assert amap8.shape == (8, H, W) and score8.shape == (8,) and score8.dtype == np.float32
    np.testing.assert_allclose(score8, score32, rtol=INT8_SCORE_RTOL)
    assert np.median(np.abs(amap8 - amap32) / np.abs(amap32).max()) < INT8_SCORE_RTOL
    assert not np.array_equal(score8, score32)  # it really is another (quantized) graph


def test_manifest_gains_int8_fields(quantized: tuple[Path, Path]) -> None:
    model_dir, int8_path = quantized
    m = load_manifest(model_dir)
    assert m.int8_onnx == "model.int8.onnx" == int8_path.name
    assert m.int8_onnx_sha256 == sha256_file(int8_path)
    assert m.threshold is None  # quantizing never touches the decision


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, H, W, 3), np.float32),
        np.zeros((2, H + 1, W, 3), np.uint8),
        np.zeros((0, H, W, 3), np.uint8),
    ],
)
def test_quantize_rejects_bad_frames(tmp_path: Path, frames: np.ndarray) -> None:
    model_dir = make_standin_model_dir(tmp_path)
    with pytest.raises(InputError, match="calibration frames"):
        quantize_int8(model_dir, frames)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv name -> its quantized weight (the constant behind the DequantizeLinear feeding input 1)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: inits[producer[n.input[1]].input[0]] for n in model.graph.node
            if n.op_type == "Conv" and n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"}


def test_no_u8s8_pair_can_saturate_on_cpus_without_vnni(tmp_path: Path) -> None:
    """x86 without VNNI sums two u8 x s8 products in a saturating int16 (VPMADDUBSW): any integer
    Conv must keep 2 * 255 * |w| <= 32767, whatever CPU runs the test."""
    model_dir = make_standin_model_dir(tmp_path, chained=True)
    int8_path = quantize_int8(model_dir, synthetic_frames(24, seed=1))
    model = onnx.load(str(int8_path))
    w = _weights(model)
    # conv1's output is conv2's (quantized) input: an integer kernel, so 7-bit weights, range used.
    assert w["backbone_conv1"].dtype == np.int8 and 32 < np.abs(w["backbone_conv1"].astype(int)).max() <= 64
    # conv2's output stays float (ReLU, then the head): it keeps full 8-bit weights.
    assert np.abs(w["backbone_conv2"].astype(int)).max() == 127
    assert 2 * 255 * 64 == u8s8_pair_bound(model) <= INT16_MAX
    # What the installed onnxruntime really runs as integer kernels: every one has 7-bit weights.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # CPU-independent fusions
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in optimized.graph.initializer}
    integer = [n for n in optimized.graph.node if n.op_type in {"QLinearConv", "ConvInteger", "MatMulInteger",
                                                                  "QLinearMatMul", "QGemm", "MatMulIntegerToFloat"}]
    assert [n.op_type for n in integer] == ["QLinearConv"]  # conv1; conv2 runs as DQ + float Conv
    for node in integer:
        weight = inits[node.input[3]].astype(int) - inits[node.input[5]].astype(int).reshape(-1, 1, 1, 1)
        assert 2 * 255 * np.abs(weight).max() <= INT16_MAX


def test_quantize_refuses_a_graph_that_could_saturate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = make_standin_model_dir(tmp_path, chained=True)
    # Without the 7-bit override the integer Conv gets full-range weights: 2 * 255 * 127 = 64770.
    monkeypatch.setattr(quantize, "integer_conv_weights", lambda model, convs: [])
    with pytest.raises(ArtifactError, match="64770 > 32767, which saturates"):
        quantize_int8(model_dir, synthetic_frames(24, seed=1))
    assert load_manifest(model_dir).int8_onnx is None  # never recorded
