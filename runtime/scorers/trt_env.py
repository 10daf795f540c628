"""Is TensorRT usable here? `import tensorrt` (>= 10) and cuda-python, or BackendUnavailableError saying
what to install. Shared by the TensorRT scorer and the engine builder (export/trt_build.py).

cuda-python (NVIDIA's bindings, used by the TensorRT Python samples) rather than pycuda: it ships
wheels, including for Jetson, where pycuda must be compiled against the local CUDA."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from edge_somad.errors import BackendUnavailableError, EdgeSomadError

MIN_TENSORRT = (10, 0)
GPU_INSTALL_HINT = "pip install 'edge-somad[gpu]'  (TensorRT >= 10, cuda-python)"


def import_tensorrt() -> ModuleType:
    """`import tensorrt`, or BackendUnavailableError saying what to install (>= 10 required)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc}); the tensorrt backend needs it. Install: {GPU_INSTALL_HINT}"
        ) from exc
    version = str(getattr(trt, "__version__", "0"))
    if version_tuple(version) < MIN_TENSORRT:
        raise BackendUnavailableError(
            f"TensorRT {version} found; edge-somad needs TensorRT >= {'.'.join(map(str, MIN_TENSORRT))} "
            "(strongly typed networks, named-tensor execute_async_v3 API). Upgrade: " + GPU_INSTALL_HINT
        )
    return trt


def import_cudart() -> ModuleType:
    """`cuda.bindings.runtime` (cuda-python >= 12.6), with at least one GPU visible; no torch.cuda."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendUnavailableError(
            f"cuda-python is not installed ({exc}); the tensorrt backend uses it for GPU buffers and streams. "
            f"Install: {GPU_INSTALL_HINT}"
        ) from exc
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailableError(
            f"the CUDA runtime could not start ({_error_name(cudart, err)}); is this a GPU machine with a driver?")
    if count < 1:
        raise BackendUnavailableError("no CUDA GPU visible (cudaGetDeviceCount reports 0 devices)")
    return cudart


def _error_name(cudart: ModuleType, err: object) -> str:
    name = cudart.cudaGetErrorName(err)[1]
    return name.decode() if isinstance(name, bytes) else str(name)


def cuda_call(cudart: ModuleType, result: tuple, what: str) -> Any:
    """Unpack a cuda-python call's (error, value...) tuple; raise EdgeSomadError naming the call."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise EdgeSomadError(f"CUDA {what} failed: {_error_name(cudart, err)}")
    return values[0] if len(values) == 1 else tuple(values) or None


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of CUDA device `device`."""
    cudart = import_cudart()
    prop = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return name, f"{prop.major}.{prop.minor}"


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
