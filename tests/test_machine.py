"""edge_somad.bench.machine and edge_somad.graph_cost: the machine line, the GEMM peak, FLOPs/bytes of a graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_somad.bench import machine as M
from edge_somad.graph_cost import graph_cost

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512dq avx512_vnni amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512dq avx512_vnni amx_tile

processor\t: 2
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f avx512dq avx512_vnni amx_tile
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd42

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def test_parse_x86_cpuinfo_flags_and_cores() -> None:
    model, flags, logical, physical = M.parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert flags == ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile")  # avx512dq is not reported
    assert logical == 3 and physical == 2  # two hyperthreads share core 0


def test_parse_arm_cpuinfo_names_dotprod_and_leaves_cores_unknown() -> None:
    model, flags, logical, physical = M.parse_cpuinfo(ARM_CPUINFO)
    assert model is None  # lscpu decodes the part number; cpu_info() asks it
    assert flags == ("asimd", "dotprod", "fp16")
    assert logical == 2 and physical is None  # no physical/core id: unknown, not guessed


def test_cpu_info_of_this_machine() -> None:
    cpu = M.cpu_info()
    assert cpu.model and cpu.logical >= 1 and 1 <= cpu.usable <= cpu.logical
    assert set(cpu.flags) <= set(M.X86_FLAGS) | set(M.ARM_FLAGS.values())


def _tiny_session(threads: int) -> ort.InferenceSession:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                sess_options=opts, providers=["CPUExecutionProvider"])


def test_machine_line_names_ort_version_and_session_threads() -> None:
    class Scorer:
        backend = "onnxruntime"

        def __init__(self, threads: int) -> None:
            self._sess = _tiny_session(threads)

    cpu = M.CpuInfo("Test CPU", "x86_64", ("avx2", "fma"), 8, 4, 6)
    rt = M.scorer_threads(Scorer(3), cpu)
    assert rt == M.RowThreads(f"onnxruntime {ort.__version__}", 3, "set", None)
    default = M.scorer_threads(Scorer(0), cpu)
    assert default.threads == 4 and "default" in default.note  # ORT's rule: one per physical core
    line = M.machine_line(cpu, {"onnxruntime": rt})
    assert line.startswith("machine: Test CPU (x86_64)")
    assert "flags: avx2 fma" in line and "8 logical, 4 physical, 6 usable" in line
    assert f"onnxruntime {ort.__version__}, 3 threads" in line


def test_torch_row_threads() -> None:
    torch = pytest.importorskip("torch")

    class TorchLike:
        backend, device, net = "torch", "cpu", None

    rt = M.scorer_threads(TorchLike(), M.cpu_info())
    assert rt.library == f"torch {torch.__version__}" and rt.threads == torch.get_num_threads()


def test_gemm_peak_has_the_requested_flops_and_threads() -> None:
    m, k, n = M.gemm_shape(2e6)
    assert m == k == n == 100
    peak = M.measure_gemm_peak(2e6, threads=1, iters=3, warmup=1)
    assert (peak.m, peak.threads) == (100, 1) and 0 < peak.gflops <= peak.best_gflops
    assert "fp32 GEMM" in peak.what and "this run" in peak.what
    eff = M.efficiency(p50_ms=10.0, batch=2, flops_per_frame=1e9, peak=peak)
    assert eff["achieved_gflops"] == 200.0  # 2 frames x 1 GFLOP in 10 ms
    assert eff["peak_fraction"] == round(200.0 / peak.gflops, 3)
    assert "peak_fraction" not in M.efficiency(10.0, 1, 1e9, None)


def _tiny_graph(path: Path) -> dict[str, int]:
    """x (B,3,16,16) -> Conv 3x3 -> depthwise Conv 3x3/2 -> MatMul; a Gemm; a Gather. Returns expected counts."""
    rng = np.random.default_rng(0)
    arrays = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "w2": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
        "shape": np.array([1, 8, 64], np.int64),
        "b": rng.standard_normal((8, 5)).astype(np.float32),
        "ga": rng.standard_normal((6, 4)).astype(np.float32),  # Gemm A, used transposed: (4, 6)
        "gb": rng.standard_normal((6, 3)).astype(np.float32),
        "table": rng.standard_normal((10, 4, 4)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=8),
        helper.make_node("Reshape", ["c2", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "b"], ["y"]),
        helper.make_node("Gemm", ["ga", "gb"], ["g"], transA=1),
        helper.make_node("Gather", ["table", "idx"], ["picked"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 7])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "g", "picked")],
        [numpy_helper.from_array(a, k) for k, a in arrays.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return {
        # output elements x (C_in / group) x kernel area
        "Conv": 8 * 16 * 16 * (3 * 3 * 3) + 8 * 8 * 8 * (1 * 3 * 3),
        "MatMul": (64 * 5) * 8,
        "Gemm": (4 * 3) * 6,
        "weights": sum(a.nbytes for a in arrays.values()),
        "gather": 7 * 4 * 4 * 4,
    }


def test_graph_cost_of_a_hand_made_graph(tmp_path: Path) -> None:
    want = _tiny_graph(tmp_path / "g.onnx")
    cost = graph_cost(tmp_path / "g.onnx")
    assert cost.unresolved == ()
    assert {k: v for k, v in cost.macs.items() if v} == {k: want[k] for k in ("Conv", "MatMul", "Gemm")}
    assert cost.flops == 2 * (want["Conv"] + want["MatMul"] + want["Gemm"])
    assert cost.weight_bytes == want["weights"] and cost.gather_bytes == want["gather"]
    assert cost.bytes == want["weights"] + want["gather"]
    assert f"{cost.flops / 1e9:.3f} GFLOP" in cost.summary()


def test_unknown_shapes_are_listed_not_counted(tmp_path: Path) -> None:
    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], name="pick")], "g",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", "n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [table])
    cost = graph_cost(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert cost.unresolved == ("Gather pick",) and cost.gather_bytes == 0
    assert "1 node(s) with unknown shapes not counted" in cost.summary()
