"""Export a fitted model to ONE fused ONNX graph: uint8 frames in -> anomaly_map + score out.

Cast, BGR->RGB, normalisation, backbone, stage concat, projection, top-k SOM search,
Mahalanobis, minimum, upsampling and Gaussian smoothing all live in the graph, so the host only
resizes. Only operators TensorRT's ONNX parser implements are allowed (checked after export).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_somad.contracts.layout import ONNX_NAME
from edge_somad.contracts.names import INPUT_NAME, MAP_NAME, OUTPUT_NAMES, SCORE_NAME
from edge_somad.errors import ArtifactError

OPSET = 17
# Operators in TensorRT's ONNX operator support matrix (onnx-tensorrt docs/operators.md) that
# this graph may use. Anything else fails the export instead of failing later on the Jetson.
TRT_ALLOWED_OPS = frozenset({
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Expand", "Flatten", "Gather",
    "Identity", "MatMul", "Max", "Min", "Mul", "Neg", "Pad", "ReduceMax", "ReduceMean", "ReduceSum", "Relu",
    "Reshape", "Resize", "Shape", "Slice", "Sqrt", "Squeeze", "Sub", "TopK", "Transpose",
    "Unsqueeze", "Sigmoid", "BatchNormalization", "MaxPool", "Equal", "Where", "ConstantOfShape",
    "Range", "Split", "QuantizeLinear", "DequantizeLinear", "ReduceMin", "GatherElements",
})


@dataclass(frozen=True)
class GraphReport:
    path: Path
    bytes: int
    op_types: tuple[str, ...]
    largest_intermediate: tuple[str, tuple[int, ...], int]  # name, shape at batch 1, bytes


def export_onnx(model_dir: Path, out_path: Path | None = None, weights: str | None = None) -> GraphReport:
    """Trace SomadNet with a dynamic batch axis and write model.onnx; returns a report."""
    import torch

    from edge_somad.model import load_torch_model

    model_dir = Path(model_dir)
    out_path = out_path or model_dir / ONNX_NAME
    net = load_torch_model(model_dir, weights)
    h, w = net.size
    dummy = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        # The TorchScript exporter warns it is deprecated in favour of dynamo; its output is the
        # plain opset-17 graph TensorRT parses best, so we keep it and silence the notice.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (dummy,), str(out_path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, MAP_NAME: {0: "batch"}, SCORE_NAME: {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    store_half(out_path)
    return check_graph(out_path, h, w)


# Only tensors this large are worth a Cast node: the whitening factors (51 MB at d=64, 3136 nodes).
HALF_MIN_ELEMENTS = 1 << 20


def store_half(path: Path) -> int:
    """Store large float32 initializers that float16 holds exactly as float16 + a Cast; returns bytes saved.

    Lossless by construction: only values the model already rounded to float16 (the whitening
    factors, see model.Head) qualify. ONNX Runtime and TensorRT fold the Cast of a constant when
    the session/engine is built, so the running graph is unchanged and only the file (and the
    download to a Jetson) halves. Gathering float16 and casting per block was measured too: no
    faster on a CPU without float16 arithmetic, so the Cast sits on the initializer.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    saved = 0
    casts = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < HALF_MIN_ELEMENTS:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name + "_f16"))
        casts.append(helper.make_node("Cast", [name + "_f16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}_to_float"))
        saved += values.nbytes - half.nbytes
    if casts:
        nodes = casts + list(graph.node)  # casts first, before every consumer: still topologically sorted
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(path))
    return saved


def check_graph(path: Path, height: int, width: int) -> GraphReport:
    """onnx.checker with full shape inference, the I/O contract, and the TensorRT op allow-list."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    graph = inferred.graph
    _check_io(graph, height, width, path)
    ops = tuple(sorted({n.op_type for n in graph.node}))
    bad = sorted(set(ops) - TRT_ALLOWED_OPS)
    if bad:
        raise ArtifactError(f"{path} uses operators outside the TensorRT allow-list: {bad}")
    return GraphReport(path, path.stat().st_size, ops, _largest(model))


def _check_io(graph: object, height: int, width: int, path: Path) -> None:
    import onnx

    def dims(vi: object) -> list[int | str]:
        return [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]

    ins = {i.name: i for i in graph.input}
    outs = {o.name: o for o in graph.output}
    if list(ins) != [INPUT_NAME] or tuple(outs) != OUTPUT_NAMES:
        raise ArtifactError(f"{path}: I/O {list(ins)} -> {list(outs)}; expected [frames] -> {list(OUTPUT_NAMES)}")
    fr = ins[INPUT_NAME]
    if fr.type.tensor_type.elem_type != onnx.TensorProto.UINT8 or dims(fr)[1:] != [height, width, 3]:
        raise ArtifactError(f"{path}: input frames is {dims(fr)}; expected uint8 [batch, {height}, {width}, 3]")


def _largest(model: object) -> tuple[str, tuple[int, ...], int]:
    """Largest tensor a frame creates at batch 1 (shapes from edge_somad.graph_cost.infer_batch1).

    Tensors computed from constants alone (the Cast of the float16 whitening, see store_half) are
    folded once when the runtime loads the graph, so they are weights, not per-frame intermediates.
    """
    from edge_somad.graph_cost import infer_batch1, static_shapes

    inferred = infer_batch1(model)
    shapes, itemsize = static_shapes(inferred)
    constant = {i.name for i in inferred.graph.initializer}
    best = ("", (), 0)
    for node in inferred.graph.node:  # topological order: a node's inputs are known before it
        if all(name in constant for name in node.input if name):
            constant.update(node.output)
            continue
        for name in node.output:
            if name in shapes:
                nbytes = int(np.prod(shapes[name])) * itemsize[name]
                if nbytes > best[2]:
                    best = (name, shapes[name], nbytes)
    return best
