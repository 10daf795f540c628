"""What machine a benchmark ran on, and what it can do: the line printed beside every bench table.

A latency figure means little without the CPU (model, SIMD flags such as AVX-512/VNNI), the cores
and the threads that actually ran, and the library versions. `measure_gemm_peak` times an fp32
GEMM through ONNX Runtime with the same thread count in the same run, so "fraction of peak" is
measured against this machine now (with whatever else is running on it), not against a datasheet.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.runtime.scorers.cpu_cores import physical_cores, usable_cpus

# SIMD features that decide CPU inference speed, as /proc/cpuinfo spells them. x86: AVX2/FMA (fp32
# GEMM), F16C (fp16 storage), AVX-512 and VNNI (int8 dot products), AMX (tile matmul). ARM:
# NEON/ASIMD, dot product (asimddp), fp16 arithmetic (asimdhp), int8 matmul (i8mm), SVE.
X86_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")
ARM_FLAGS = {"neon": "neon", "asimd": "asimd", "asimddp": "dotprod", "asimdhp": "fp16",
             "i8mm": "i8mm", "sve": "sve"}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    flags: tuple[str, ...]  # the relevant ones only, in X86_FLAGS / ARM_FLAGS order
    logical: int
    physical: int | None  # None when the OS does not say (then ORT's default is not knowable here)
    usable: int  # CPUs this process may run on (affinity / container cpuset)


def parse_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...], int, int | None]:
    """/proc/cpuinfo text -> (model name, relevant flags, logical CPUs, physical cores).

    Physical cores = distinct (physical id, core id) pairs; without those fields (ARM kernels
    omit them) the count is unknown (None), never guessed from the logical count.
    """
    model = None
    flags: set[str] = set()
    logical = 0
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor" and value.isdigit():
            logical += 1
        elif key in ("model name", "Model name", "Hardware") and model is None and value:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
    picked = [f for f in X86_FLAGS if f in flags] + [name for f, name in ARM_FLAGS.items() if f in flags]
    return model, tuple(picked), logical, physical_cores(text)


def cpu_info(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU: /proc/cpuinfo first, lscpu for the model name (ARM), platform last."""
    text = cpuinfo_path.read_text(errors="replace") if cpuinfo_path.is_file() else ""
    model, flags, logical, physical = parse_cpuinfo(text)
    model = model or _lscpu_model() or platform.processor() or "unknown CPU"
    logical = logical or os.cpu_count() or 1
    usable = usable_cpus()
    return CpuInfo(model=model, arch=platform.machine(), flags=flags, logical=logical, physical=physical,
                   usable=usable)


def _lscpu_model() -> str | None:
    """ARM kernels often leave the model out of /proc/cpuinfo; lscpu decodes the part number."""
    exe = shutil.which("lscpu")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return m.group(1).strip() if m else None


def gpu_name() -> str | None:
    """Name of GPU 0 from nvidia-smi, else torch; None when neither sees one."""
    exe = shutil.which("nvidia-smi")
    if exe is not None:
        try:
            out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=False).stdout.strip()
            if out:
                return out.splitlines()[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


@dataclass(frozen=True)
class RowThreads:
    """The threads one bench row ran with, and the library that ran it."""

    library: str  # "onnxruntime 1.x" | "torch 2.x" | "tensorrt 10.x"
    threads: int | None  # None: the library's own default, which it does not report
    note: str = ""  # e.g. "ORT default: physical cores"
    gpu: str | None = None


def ort_session_threads(session: Any, cpu: CpuInfo) -> tuple[int | None, str]:
    """Intra-op threads of an ORT InferenceSession: the option when set, else ORT's documented default.

    ORT's default (intra_op_num_threads = 0) is one thread per physical core (onnxruntime.ai,
    "Thread management"); the session does not report the number it picked, so we say it is the rule.
    """
    n = int(session.get_session_options().intra_op_num_threads)
    if n > 0:
        return n, "set"
    return cpu.physical, "ORT default: physical cores"


def scorer_threads(scorer: Any, cpu: CpuInfo) -> RowThreads:
    """Threads and library of a bench scorer (OrtScorer, TorchScorer, TensorRTScorer or a test double)."""
    sess = getattr(scorer, "_sess", None)
    if getattr(scorer, "backend", None) == "torch" or hasattr(scorer, "net"):
        import torch

        gpu = str(scorer.device) if not str(scorer.device).startswith("cpu") else None
        return RowThreads(f"torch {torch.__version__}", torch.get_num_threads(), "torch.get_num_threads", gpu)
    if sess is not None and hasattr(sess, "get_session_options"):
        import onnxruntime as ort

        n, note = ort_session_threads(sess, cpu)
        providers = sess.get_providers()
        # A GPU row must never be measured against the CPU GEMM: name it even when the name is unknown.
        gpu = (gpu_name() or "GPU (name unknown)") if providers and providers[0] != "CPUExecutionProvider" else None
        return RowThreads(f"onnxruntime {ort.__version__}", n, note, gpu)
    if getattr(scorer, "backend", None) == "tensorrt":
        try:
            import tensorrt

            lib = f"tensorrt {tensorrt.__version__}"
        except ImportError:
            lib = "tensorrt"
        return RowThreads(lib, None, "GPU", gpu_name() or "GPU (name unknown)")
    return RowThreads(type(scorer).__name__, None, "unknown scorer type")


@dataclass(frozen=True)
class GemmPeak:
    """Measured fp32 GEMM throughput: the yardstick for 'fraction of peak'."""

    gflops: float  # median over the timed calls (the same statistic as the rows' p50)
    best_gflops: float
    m: int
    k: int
    n: int
    threads: int | None
    what: str = "fp32 GEMM (ONNX Runtime MatMul, CPU, spinning off), measured in this run"


def gemm_shape(flops: float) -> tuple[int, int, int]:
    """Square (n, n, n) GEMM with about `flops` = 2 n^3 floating-point operations (n >= 8)."""
    n = max(8, round((flops / 2.0) ** (1.0 / 3.0)))
    return n, n, n


def measure_gemm_peak(flops: float, threads: int | None, iters: int = 20, warmup: int = 3) -> GemmPeak:
    """Time an ORT MatMul of the same FLOP count with `threads` intra-op threads (None: ORT default)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = gemm_shape(flops)
    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    # Same as the scorer sessions: idle spinning would steal cores from the other sessions here.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((m, k)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {"a": a})
    t = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        sess.run(None, {"a": a})
        t[i] = time.perf_counter() - t0
    done = 2.0 * m * k * n
    return GemmPeak(round(done / float(np.median(t)) / 1e9, 2), round(done / float(t.min()) / 1e9, 2),
                    m, k, n, threads)


def machine_line(cpu: CpuInfo, rows: dict[str, RowThreads] | None = None) -> str:
    """One line: CPU, flags, cores, then per row its library and threads (and GPU where one ran)."""
    phys = "?" if cpu.physical is None else str(cpu.physical)
    parts = [f"machine: {cpu.model} ({cpu.arch})", "flags: " + (" ".join(cpu.flags) or "none of the SIMD ones"),
             f"cores: {cpu.logical} logical, {phys} physical, {cpu.usable} usable"]
    for name, rt in (rows or {}).items():
        threads = "threads ?" if rt.threads is None else f"{rt.threads} threads"
        gpu = f", GPU {rt.gpu}" if rt.gpu else ""
        parts.append(f"{name}: {rt.library}, {threads} ({rt.note}){gpu}")
    return " | ".join(parts)



def efficiency(p50_ms: float, batch: int, flops_per_frame: float, peak: GemmPeak | None) -> dict[str, Any]:
    """Achieved GFLOP/s of a timed call and its share of the measured GEMM peak (None: no CPU peak applies)."""
    achieved = flops_per_frame * batch / (p50_ms / 1e3) / 1e9
    out: dict[str, Any] = {"achieved_gflops": round(achieved, 3)}
    if peak is not None and peak.gflops > 0:
        out["peak_fraction"] = round(achieved / peak.gflops, 3)
    return out
