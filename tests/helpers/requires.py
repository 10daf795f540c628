"""What a test needs from the machine, probed directly, and what happens when it is missing.

A missing real component (Mosquitto, Chromium, ...) skips the test on a developer's machine but
FAILS it under CI (environment variable CI=true): CI installs them, so their absence there is a
broken set-up, not a reason to report green. GPU tests probe exactly what they use (ONNX Runtime's
CUDA provider, TensorRT + cuda-python, torch CUDA, nvidia-smi) instead of asking torch, so a
torch-free TensorRT box still runs its TensorRT tests.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_component(what: str, how: str) -> None:
    """Skip (developer machine) or fail (CI) a test whose real component is absent."""
    message = f"{what} is not available; {how}"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


# --- GPU probes: each returns None when usable, else why not ------------------------------------

@functools.cache
def _nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found (no NVIDIA driver)"
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed ({exc})"
    if out.returncode != 0 or "GPU" not in out.stdout:
        return f"nvidia-smi lists no GPU (exit {out.returncode})"
    return None


@functools.cache
def _ort_cuda() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (install edge-somad[gpu], not [cpu])"
    return _nvidia_smi()


@functools.cache
def _tensorrt() -> str | None:
    for module, extra in (("tensorrt", "tensorrt"), ("cuda.bindings", "cuda-python")):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{extra} is not installed (edge-somad[gpu])"
        except ModuleNotFoundError:
            return f"{extra} is not installed (edge-somad[gpu])"
    return _nvidia_smi()


@functools.cache
def _torch_cuda() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "torch has no CUDA device (CPU build or no GPU)"


GPU_PROBES = {"nvidia-smi": _nvidia_smi, "ort-cuda": _ort_cuda, "tensorrt": _tensorrt, "torch-cuda": _torch_cuda}


def gpu_unavailable(needs: tuple[str, ...]) -> str | None:
    """Why the GPU features `needs` (keys of GPU_PROBES; none: a GPU at all) are unusable, or None."""
    for need in needs or ("nvidia-smi",):
        if need not in GPU_PROBES:
            raise ValueError(f"@pytest.mark.gpu({need!r}): unknown need; expected one of {sorted(GPU_PROBES)}")
        why = GPU_PROBES[need]()
        if why:
            return why
    return None
