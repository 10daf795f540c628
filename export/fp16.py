"""Float16 copy of the fused graph for strongly typed TensorRT builds (and ONNX Runtime parity checks).

Why a conversion pass at all: TensorRT 10.12+ deprecates weak typing (BuilderFlag.FP16) and
TensorRT 11 removes it; a strongly typed network takes every tensor's precision from the ONNX
types, so "build in FP16" means "hand TensorRT a graph whose tensors are float16"
(docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html,
"Migrating from Weak Typing to Strong Typing"). NVIDIA's example uses ModelOpt AutoCast with
keep_io_types=True; we do the same job in ~200 lines of onnx so the export needs no extra
package (onnxconverter-common would also do it, but it is one more dependency with its own op
block lists to keep in sync, and we need a graph-specific float32 tail anyway).

The contract is kept: input `frames` stays uint8 (the first Cast now goes straight to float16,
exact for 0..255) and `anomaly_map` / `score` stay float32.

Precision choice: the backbone (all the convolutions, i.e. almost all of the FLOPs) runs in
float16. The SOMAD distance tail runs in float32: it starts at the first node whose op type is in
`keep_float32_ops` (MatMul, TopK, ReduceSum, Sqrt, ...) and covers everything downstream of it,
plus the elementwise ops feeding only that region (so |x|^2 in |x|^2 - 2 x.n + |n|^2 is squared
and summed in float32). Reasons: squared Mahalanobis distances of defective patches routinely
exceed 65504 (float16 max -> inf, and inf then wins every max); the expanded Euclidean distance
subtracts numbers of similar size (catastrophic cancellation at 11 mantissa bits reorders the
TopK candidates); and the threshold is calibrated in raw Mahalanobis units, so the score must
not move with precision. The tail is a few small GEMMs per patch, so keeping it in float32 costs
little.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from edge_somad.errors import ArtifactError

FP16_MAX = 65504.0
# Op types that start the float32 tail (see module docstring).
FLOAT32_TAIL_OPS: frozenset[str] = frozenset(
    {"MatMul", "Gemm", "Einsum", "TopK", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Sqrt", "Pow"}
)
# Pulled into the tail when every consumer of their output is already float32.
_ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div", "Neg", "Abs", "Max", "Min", "Clip"})
# Inputs that the ONNX spec types as tensor(float) only, whatever the node's precision.
_FLOAT32_ONLY_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}


def to_fp16(src: Path, dst: Path, keep_float32_ops: Collection[str] = FLOAT32_TAIL_OPS) -> Path:
    """Write a float16 copy of ONNX model `src` to `dst`; uint8 input and float32 outputs are kept.

    keep_float32_ops: op types that start the float32 tail (empty -> everything but the I/O in
    float16). Returns dst.
    """
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(src))
    _refuse_subgraphs(model, src)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError / ValidationError subclasses
        raise ArtifactError(f"{src}: ONNX shape inference failed ({exc}); re-export the model") from exc
    g = model.graph
    types = _elem_types(model)
    nodes = [_copy(n) for n in g.node]
    inits = {t.name: t for t in g.initializer}
    fp32 = _float32_nodes(nodes, types, inits, set(keep_float32_ops), {o.name for o in g.output})

    prec = _convert_initializers(nodes, inits, fp32)  # float tensor -> its element type in the new graph
    for i in g.input:
        if types.get(i.name) == TensorProto.FLOAT:
            prec[i.name] = TensorProto.FLOAT  # keep_io_types
    new_nodes = _rewrite_nodes(nodes, types, prec, fp32, {o.name for o in g.output})

    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # stale float32 annotations; re-inferred below
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as exc:  # a type we could not infer or retarget: say so, never write a broken graph
        raise ArtifactError(f"float16 conversion of {src} gave an inconsistent graph ({exc}); "
                            "build with --precision fp32 and report the op named above") from exc
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def _convert_initializers(nodes: list, inits: dict, fp32: set[int]) -> dict[str, int]:
    """Initializers used only by float16 nodes become float16; shared or out-of-range ones stay
    float32 and reach float16 consumers through a Cast (ONNX Runtime and TensorRT fold those)."""
    from onnx import TensorProto, numpy_helper

    prec: dict[str, int] = {}
    for name, t in inits.items():
        if t.data_type != TensorProto.FLOAT:
            continue
        uses = [(i, k) for i, n in enumerate(nodes) for k, x in enumerate(n.input) if x == name]
        if uses and not any(i in fp32 or _float32_only(nodes[i], k) for i, k in uses):
            arr = numpy_helper.to_array(t)
            if np.abs(arr).max(initial=0.0) <= FP16_MAX:
                t.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), name))
                prec[name] = TensorProto.FLOAT16
                continue
            fp32.update(i for i, _ in uses)  # float16 would make these weights inf: keep the ops float32
        prec[name] = TensorProto.FLOAT
    return prec


def _rewrite_nodes(nodes: list, types: dict[str, int], prec: dict[str, int], fp32: set[int],
                   out_names: set[str]) -> list:
    """Retype every node, inserting one Cast per (tensor, precision) where producer and consumer differ."""
    from onnx import TensorProto, helper

    new_nodes, casts = [], {}
    for i, node in enumerate(nodes):
        want = TensorProto.FLOAT if i in fp32 else TensorProto.FLOAT16
        if i not in fp32 and not any(types.get(o) == TensorProto.FLOAT for o in node.output):
            # No float output (Shape, comparisons, ArgMax...): take the type of the first float input
            # instead of casting it, so a Shape of a float32 tensor does not get a useless Cast.
            want = next((prec[x] for x in node.input if x in prec), want)
        if want == TensorProto.FLOAT16:
            _retarget_attrs(node)
        for k, name in enumerate(node.input):
            if name not in prec:
                continue  # non-float tensor or optional input ""
            need = TensorProto.FLOAT if _float32_only(node, k) else want
            if prec[name] != need:
                key = (name, need)
                if key not in casts:
                    casts[key] = f"{name}__as_{'fp16' if need == TensorProto.FLOAT16 else 'fp32'}"
                    new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=need,
                                                      name=f"{casts[key]}_cast"))
                node.input[k] = casts[key]
        trailing = []
        for k, name in enumerate(node.output):
            if types.get(name) != TensorProto.FLOAT:
                continue
            if name in out_names and want == TensorProto.FLOAT16:
                # Graph outputs stay float32: the node writes a float16 tensor, a Cast restores the name.
                inner = f"{name}__fp16"
                node.output[k] = inner
                _rename_inputs(nodes[i + 1:], name, inner)
                prec[inner] = want
                trailing.append(helper.make_node("Cast", [inner], [name], to=TensorProto.FLOAT,
                                                 name=f"{name}_cast"))
            else:
                prec[name] = want
        new_nodes.append(node)
        new_nodes.extend(trailing)
    return new_nodes


def _float32_nodes(nodes: list, types: dict[str, int], inits: dict, keep: set[str],
                   outputs: set[str]) -> set[int]:
    """Indices of the nodes that run in float32: the tail, elementwise feeders, constant subgraphs."""
    from onnx import TensorProto

    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    consumers: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for j, n in enumerate(nodes):
        for name in n.input:
            if name in producer:
                consumers[producer[name]].append(j)
    fp32: set[int] = set()
    dynamic: set[int] = set()  # depends on a graph input (not a constant subgraph)
    for i, n in enumerate(nodes):  # nodes are topologically sorted (ONNX requirement)
        ups = [producer[x] for x in n.input if x in producer]
        if any(u in fp32 for u in ups) or n.op_type in keep:
            fp32.add(i)
        if any(u in dynamic for u in ups) or any(x and x not in producer and x not in inits for x in n.input):
            dynamic.add(i)
        if _fixed_float32(n):
            fp32.add(i)  # an output type we do not know how to retarget: leave it float32
    for i in reversed(range(len(nodes))):
        n, users = nodes[i], consumers[i]
        feeds_only_fp32 = bool(users) and all(j in fp32 for j in users)
        if i not in dynamic and any(j in fp32 for j in users):
            fp32.add(i)  # constants used by the tail keep their float32 value
        elif n.op_type in _ELEMENTWISE and feeds_only_fp32 and not (set(n.output) & outputs):
            fp32.add(i)
    # A float16 node must have some float tensor to be worth converting; others are type-neutral.
    return {i for i in fp32 if any(types.get(o) == TensorProto.FLOAT for o in nodes[i].output) or
            nodes[i].op_type in keep}


def _retarget_attrs(node) -> None:
    """Make Cast/Constant/ConstantOfShape of a float16 node produce float16."""
    from onnx import AttributeProto, TensorProto, numpy_helper

    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif a.type == AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(a.t)
            if np.abs(arr).max(initial=0.0) <= FP16_MAX:
                a.t.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), a.t.name))
            else:
                raise ArtifactError(f"constant in node {node.name!r} exceeds the float16 range; "
                                    f"add {node.op_type!r} to keep_float32_ops")


def _float32_only(node, k: int) -> bool:
    return k in _FLOAT32_ONLY_INPUTS.get(node.op_type, ())


def _fixed_float32(node) -> bool:
    """True when the node's float output type is set by something we do not rewrite."""
    names = {a.name for a in node.attribute}
    if node.op_type == "Constant":
        return "value" not in names  # value_float(s): a float32 literal
    if node.op_type == "ConstantOfShape":
        return "value" not in names  # default value is float32 zero
    return node.op_type != "Cast" and bool(names & {"dtype", "to"})


def _copy(node):
    from onnx import NodeProto

    c = NodeProto()
    c.CopyFrom(node)
    return c


def _rename_inputs(nodes: list, old: str, new: str) -> None:
    for n in nodes:
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = new


def _elem_types(model) -> dict[str, int]:
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def _refuse_subgraphs(model, src: Path) -> None:
    from onnx import AttributeProto

    for n in model.graph.node:
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in n.attribute):
            raise ArtifactError(
                f"{src}: node {n.name!r} ({n.op_type}) has a subgraph; the float16 pass handles flat "
                "graphs only (the fused SOMAD export is flat). Build with --precision fp32 instead."
            )
