"""FLOPs and bytes of one frame through an ONNX graph, counted from the graph itself.

The work that sets a CPU's floor: multiply-accumulates of Conv (grouped and depthwise included),
MatMul (batched, broadcast) and Gemm, and the bytes that must cross the memory bus at least once:
the weights (initializers and Constant tensors) and every Gather's output (the SOM head gathers a
whitening factor per patch and candidate, hundreds of MB per frame). Elementwise ops, Resize, TopK
and reductions are not counted: they are small next to these. Shapes at batch 1 come from ONNX
Runtime's symbolic shape inference (onnx's own stops at the exporter's Shape/Reshape arithmetic).
A node whose shapes cannot be resolved is listed, never counted as zero silently.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAC_OPS = ("Conv", "ConvInteger", "MatMul", "MatMulInteger", "Gemm")


@dataclass(frozen=True)
class GraphCost:
    macs: dict[str, int]  # per op type, batch 1
    weight_bytes: int  # initializers + Constant tensors
    gather_bytes: int  # sum of Gather outputs at batch 1
    unresolved: tuple[str, ...]  # nodes of MAC_OPS/Gather whose shapes were unknown (not counted)

    @property
    def flops(self) -> int:
        """2 FLOPs per multiply-accumulate."""
        return 2 * sum(self.macs.values())

    @property
    def bytes(self) -> int:
        """Bytes a frame must move at least once: weights read + gathered tensors written."""
        return self.weight_bytes + self.gather_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "gflop_per_frame": round(self.flops / 1e9, 4),
                "weight_bytes": self.weight_bytes, "gather_bytes": self.gather_bytes,
                "mb_per_frame": round(self.bytes / 1e6, 2), "unresolved": list(self.unresolved),
                "counted": "MACs of " + "/".join(MAC_OPS) + " x2; bytes = weights + Gather outputs; batch 1"}

    def summary(self) -> str:
        ops = ", ".join(f"{k} {2 * v / 1e9:.3f}" for k, v in sorted(self.macs.items()) if v)
        miss = f"; {len(self.unresolved)} node(s) with unknown shapes not counted" if self.unresolved else ""
        return (f"graph cost per frame (batch 1): {self.flops / 1e9:.3f} GFLOP ({ops}); "
                f"{self.bytes / 1e6:.1f} MB moved (weights {self.weight_bytes / 1e6:.1f} MB + "
                f"Gather outputs {self.gather_bytes / 1e6:.1f} MB){miss}")


def graph_cost(model: Any) -> GraphCost:
    """Count MACs and bytes of an onnx.ModelProto or a path to one, at batch 1."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    inferred = infer_batch1(model)
    shapes, dtypes = static_shapes(inferred)
    macs = dict.fromkeys(MAC_OPS, 0)
    gather = 0
    unresolved = []
    for node in inferred.graph.node:
        if node.op_type == "Gather":
            out = shapes.get(node.output[0])
            if out is None:
                unresolved.append(f"{node.op_type} {node.name or node.output[0]}")
                continue
            gather += int(np.prod(out)) * dtypes[node.output[0]]
        elif node.op_type in MAC_OPS:
            n = _node_macs(node, shapes)
            if n is None:
                unresolved.append(f"{node.op_type} {node.name or node.output[0]}")
                continue
            macs[node.op_type] += n
    return GraphCost(macs, _weight_bytes(model), gather, tuple(unresolved))


def infer_batch1(model: Any) -> Any:
    """A copy of the model with the dynamic batch axis set to 1 and every shape ONNX Runtime's
    symbolic inference can resolve (onnx's own gives up after the exporter's Shape/Reshape arithmetic)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    m = copy.deepcopy(model)
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1  # the dynamic batch axis
    return SymbolicShapeInference.infer_shapes(m, auto_merge=True)


def _node_macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> int | None:
    out = shapes.get(node.output[0])
    ins = [shapes.get(name) for name in node.input[:2]]
    if out is None or any(s is None for s in ins):
        return None
    a, b = ins
    if node.op_type in ("Conv", "ConvInteger"):
        # weight (C_out, C_in / group, k...): each output element is one dot product of that length,
        # which covers grouped and depthwise convolutions without reading `group`.
        return int(np.prod(out)) * int(np.prod(b[1:]))
    if node.op_type == "Gemm":
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return int(np.prod(out)) * int(k)
    return int(np.prod(out)) * int(a[-1])  # MatMul: (..., m, k) @ (..., k, n) -> (..., m, n)


def static_shapes(model: Any) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Static shapes (and element sizes) of every named tensor: values, I/O, initializers, Constants."""
    from onnx import helper

    shapes: dict[str, tuple[int, ...]] = {}
    itemsize: dict[str, int] = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.elem_type and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
            itemsize[vi.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    for t in list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant" for a in n.attribute
                                    if a.name == "value"]:
        name = t.name
        shapes[name] = tuple(int(d) for d in t.dims)
        itemsize[name] = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    for n in g.node:  # a Constant's tensor carries no name; its output does
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = tuple(int(d) for d in a.t.dims)
                    itemsize[n.output[0]] = np.dtype(helper.tensor_dtype_to_np_dtype(a.t.data_type)).itemsize
    return shapes, itemsize


def _weight_bytes(model: Any) -> int:
    from onnx import helper

    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    return sum(int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in tensors)
