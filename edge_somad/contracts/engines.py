"""What a TensorRT engine promises (manifest.engines) and the check made before one is loaded.

Pure: no tensorrt, no CUDA. The environment (TensorRT version, GPU) comes in as arguments, so the
rules are tested on any machine; runtime/scorers/trt_env.py reads the real one.
"""

from __future__ import annotations

from pathlib import Path

from edge_somad.contracts.layout import engine_name
from edge_somad.contracts.manifest import EngineInfo, Manifest
from edge_somad.errors import EngineMismatchError


def engine_path(model_dir: Path, precision: str) -> Path:
    """DIR/model.<precision>.engine."""
    return Path(model_dir) / engine_name(precision)


def find_engine(manifest: Manifest, precision: str) -> EngineInfo | None:
    return next((e for e in manifest.engines if e.precision == precision), None)


def rebuild_command(model_dir: Path, precision: str) -> str:
    """The command that builds (or rebuilds) the engine of this precision here, fp16 and int8 alike."""
    return f"edge-somad build-engine --model {model_dir} --precision {precision}"


def check_engine_compat(info: EngineInfo, trt_version: str, gpu_name: str, compute_capability: str,
                        onnx_sha256: str, model_dir: Path) -> None:
    """Raise EngineMismatchError unless the engine was built here, with this TensorRT, from this graph.

    TensorRT engines are specific to the GPU model and the exact TensorRT version they were built
    with; onnx_sha256 is the graph the manifest names now (a re-export makes the engine stale).
    """
    built = f"{info.gpu_name} (compute {info.compute_capability}) with TensorRT {info.tensorrt_version}"
    here = f"{gpu_name} (compute {compute_capability}) with TensorRT {trt_version}"
    problems = []
    if info.gpu_name != gpu_name:
        problems.append(f"GPU: built for {info.gpu_name}, running on {gpu_name}")
    if info.compute_capability != compute_capability:
        problems.append(f"compute capability: built for {info.compute_capability}, "
                        f"running on {compute_capability}")
    if info.tensorrt_version != trt_version:
        problems.append(f"TensorRT: built with {info.tensorrt_version}, running {trt_version}")
    if info.onnx_sha256 != onnx_sha256:
        problems.append(f"ONNX graph: built from sha256 {info.onnx_sha256[:12]}…, the manifest now names "
                        f"{onnx_sha256[:12]}… (the model was re-exported or recalibrated after the build)")
    if problems:
        raise EngineMismatchError(
            f"TensorRT engine {Path(model_dir) / info.path} ({info.precision}) does not match this machine: "
            + "; ".join(problems) + f". Built for {built}; here: {here}. Engines only run on the GPU and "
            "TensorRT version they were built with. "
            f"Rebuild it here: `{rebuild_command(model_dir, info.precision)}`"
        )
