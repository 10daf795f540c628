"""Is TensorRT usable here? `import tensorrt` (>= 10) and pycuda, or BackendUnavailableError saying
what to install. Shared by the TensorRT scorer and the engine builder (export/trt_build.py)."""

from __future__ import annotations

from types import ModuleType

from edge_somad.errors import BackendUnavailableError

MIN_TENSORRT = (10, 0)
GPU_INSTALL_HINT = "pip install 'edge-somad[gpu]'  (TensorRT >= 10, pycuda)"


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


def import_pycuda() -> ModuleType:
    """`pycuda.driver`, initialised; no torch.cuda in the runtime."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailableError(
            f"pycuda is not installed ({exc}); the tensorrt backend uses it for GPU buffers. "
            f"Install: {GPU_INSTALL_HINT}"
        ) from exc
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            raise BackendUnavailableError("no CUDA GPU visible (pycuda reports 0 devices)")
    except cuda.Error as exc:
        raise BackendUnavailableError(f"CUDA driver could not start ({exc}); is this a GPU machine?") from exc
    return cuda


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of CUDA device `device`."""
    cuda = import_pycuda()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return str(dev.name()), f"{major}.{minor}"


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
