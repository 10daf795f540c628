"""export/fp16.py: float16 body, float32 Mahalanobis tail, uint8 in / float32 out, parity on ORT CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto  # noqa: E402

from edge_somad.errors import ArtifactError  # noqa: E402
from edge_somad.export.fp16 import to_fp16  # noqa: E402
from tests.test_trt_tinymodel import build_tiny_onnx, random_frames, run_ort  # noqa: E402


def _io_types(path: Path) -> dict[str, int]:
    g = onnx.load(str(path)).graph
    return {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)}


def _value_types(path: Path) -> dict[str, int]:
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    return {v.name: v.type.tensor_type.elem_type for v in m.graph.value_info}


def test_keeps_io_types_and_converts_the_body(tmp_path: Path) -> None:
    src = build_tiny_onnx(tmp_path / "m.onnx")
    dst = to_fp16(src, tmp_path / "m16.onnx")
    assert _io_types(dst) == {"frames": TensorProto.UINT8, "anomaly_map": TensorProto.FLOAT,
                              "score": TensorProto.FLOAT}
    vt = _value_types(dst)
    # Backbone in float16 (the uint8 cast goes straight to float16) ...
    assert vt["x"] == vt["c"] == vt["feat"] == TensorProto.FLOAT16
    # ... the Mahalanobis tail in float32.
    assert vt["z"] == vt["z2"] == vt["delta"] == TensorProto.FLOAT
    conv_w = next(t for t in onnx.load(str(dst)).graph.initializer if t.name == "conv_w")
    assert conv_w.data_type == TensorProto.FLOAT16
    assert dst.stat().st_size < src.stat().st_size + 2048  # weights not duplicated


@pytest.mark.parametrize("batch", [1, 4])
def test_parity_with_float32_on_ort_cpu(tmp_path: Path, batch: int) -> None:
    src = build_tiny_onnx(tmp_path / "m.onnx")
    dst = to_fp16(src, tmp_path / "m16.onnx")
    frames = random_frames(batch)
    amap32, score32 = run_ort(src, frames)
    amap16, score16 = run_ort(dst, frames)
    assert amap16.dtype == np.float32 and amap16.shape == amap32.shape
    rel = np.abs(score16 - score32) / np.abs(score32)
    assert rel.max() < 1e-2, rel
    assert np.abs(amap16 - amap32).max() < 1e-2 * np.abs(amap32).max()


def test_float32_tail_survives_distances_beyond_fp16_range(tmp_path: Path) -> None:
    """Squared distances > 65504: a full float16 graph overflows, the float32 tail does not."""
    src = build_tiny_onnx(tmp_path / "m.onnx", whiten_scale=200.0)
    frames = random_frames(2)
    _, score32 = run_ort(src, frames)
    assert score32.min() > 65504.0  # the case the tail exists for
    _, score16 = run_ort(to_fp16(src, tmp_path / "tail.onnx"), frames)
    np.testing.assert_allclose(score16, score32, rtol=1e-2)
    # Without the tail the distances are typed float16, where these values are inf. (ORT CPU
    # upcasts ops it has no float16 kernel for, so the overflow itself only shows on a GPU.)
    all16 = to_fp16(src, tmp_path / "all16.onnx", keep_float32_ops=())
    assert _value_types(all16)["z2"] == TensorProto.FLOAT16


def test_refuses_graphs_with_subgraphs(tmp_path: Path) -> None:
    from onnx import helper

    branch = helper.make_graph([helper.make_node("Identity", ["a"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])])
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ArtifactError, match="subgraph"):
        to_fp16(path, tmp_path / "out.onnx")
