"""Compile the fused ONNX graph into a TensorRT engine on the target GPU (Jetson or desktop).

Written against the TensorRT 10.x / 11.x Python API; TensorRT < 10 is refused. Docs relied on:
- Python API, Builder / NetworkDefinitionCreationFlag: EXPLICIT_BATCH is "[DEPRECATED] Ignored
  because networks are always explicit batch in TensorRT 10.0"; STRONGLY_TYPED takes every tensor
  type from the network
  (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html).
- Migration 10.x -> 11.x, "Strongly Typed Networks Are Now Required" and "Removed Python APIs":
  BuilderFlag.FP16 / INT8 (and IBuilderConfig.int8_calibrator) are removed in 11.x; weak typing
  was deprecated in 10.12. FP16 = convert the ONNX graph to float16 (export/fp16.py), INT8 =
  explicit quantization with Q/DQ nodes (model.int8.onnx from `calibrate --int8`). The
  STRONGLY_TYPED flag is required for this on 10.x and accepted-but-ignored on 11.x
  (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html).
- ITimingCache / IBuilderConfig.create_timing_cache(bytes), set_timing_cache(cache, ignore_mismatch),
  ITimingCache.serialize() (python-api/infer/Core/TimingCache.html; NVIDIA/TensorRT
  python/src/infer/pyCore.cpp bindings; Polygraphy backend/trt/loader.py EngineBytesFromNetwork).
- OnnxParser.parse_from_file / num_errors / get_error, IOptimizationProfile.set_shape(name, min,
  opt, max), build_serialized_network (Polygraphy backend/trt/loader.py; Builder.html).
Engines are standard serialized files (no header of ours), so trtexec / Polygraphy load them too;
what they were built for lives in manifest.engines and is checked at load (check_engine_compat).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from types import ModuleType

from edge_somad.contracts import defaults
from edge_somad.contracts.engines import engine_path
from edge_somad.contracts.layout import FP16_ONNX_NAME, TIMING_CACHE_NAME
from edge_somad.contracts.manifest import EngineInfo, Manifest, load_manifest, save_manifest, sha256_file
from edge_somad.contracts.names import INPUT_NAME, PRECISIONS
from edge_somad.errors import ArtifactError, BackendUnavailableError, ConfigError
from edge_somad.runtime.scorers.trt_env import gpu_info, import_tensorrt

log = logging.getLogger(__name__)


def profile_shapes(height: int, width: int, max_batch: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of `frames` for the one optimization profile.

    opt = max: the streaming runtime fills batches from all cameras up to max_batch, so that is
    the shape worth the kernel autotuning; batch 1 still runs, on the same kernels.
    """
    if max_batch < 1:
        raise ConfigError(f"max_batch={max_batch}; expected >= 1")
    if height < 1 or width < 1:
        raise ConfigError(f"input size {height}x{width}; expected positive height and width")
    return (1, height, width, 3), (max_batch, height, width, 3), (max_batch, height, width, 3)


def source_onnx(model_dir: Path, manifest: Manifest, precision: str) -> tuple[Path, str]:
    """The ONNX an engine of this precision is built from, and its sha256 as the manifest records it."""
    _check_precision(precision)
    model_dir = Path(model_dir)
    if precision != "int8":
        return model_dir / manifest.onnx, manifest.onnx_sha256
    if not manifest.int8_onnx or not manifest.int8_onnx_sha256:
        raise ArtifactError(
            f"{model_dir} has no INT8 graph: an int8 engine is built from the Q/DQ model written by "
            f"`edge-somad calibrate --model {model_dir} --int8`. Run that first, or use --precision fp16."
        )
    path = model_dir / manifest.int8_onnx
    if not path.is_file() or sha256_file(path) != manifest.int8_onnx_sha256:
        raise ArtifactError(f"{path} is missing or differs from the manifest; re-run "
                            f"`edge-somad calibrate --model {model_dir} --int8`")
    return path, manifest.int8_onnx_sha256


def build_engine(model_dir: Path, precision: str = defaults.ENGINE_PRECISION, max_batch: int = defaults.MAX_BATCH,
                 workspace_gb: float = defaults.WORKSPACE_GB) -> EngineInfo:
    """Build DIR/model.<precision>.engine for this GPU and record it in manifest.engines."""
    _check_precision(precision)
    if workspace_gb <= 0:
        raise ConfigError(f"workspace_gb={workspace_gb}; expected > 0")
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    pre = manifest.preprocessing
    shapes = profile_shapes(pre.height, pre.width, max_batch)
    src, src_sha = source_onnx(model_dir, manifest, precision)
    trt, (gpu_name, cc) = _gpu_here(precision)
    if precision == "fp16":
        from edge_somad.export.fp16 import to_fp16

        src = to_fp16(src, model_dir / FP16_ONNX_NAME)
    log.info("building %s TensorRT engine from %s on %s (compute %s)", precision, src.name, gpu_name, cc)
    blob = _build_serialized(trt, src, shapes, int(workspace_gb * (1 << 30)), model_dir / TIMING_CACHE_NAME)
    out = engine_path(model_dir, precision)
    _write_atomic(out, blob)
    info = EngineInfo(path=out.name, precision=precision, tensorrt_version=str(trt.__version__),
                      gpu_name=gpu_name, compute_capability=cc, onnx_sha256=src_sha, max_batch=max_batch)
    engines = (*(e for e in manifest.engines if e.precision != precision), info)
    save_manifest(model_dir, dataclasses.replace(manifest, engines=engines))
    return info


def _gpu_here(precision: str) -> tuple[ModuleType, tuple[str, str]]:
    """tensorrt and (GPU name, compute capability), or the error that this step needs a GPU."""
    try:
        return import_tensorrt(), gpu_info()
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"building a {precision} TensorRT engine needs an NVIDIA GPU with TensorRT on this machine: {exc}. "
            "Engines are specific to the GPU and TensorRT version they are built with: run build-engine on the "
            "target device (Jetson or GPU PC); the ONNX graphs run anywhere with --backend onnxruntime."
        ) from exc


def _build_serialized(trt: ModuleType, onnx_path: Path, shapes: tuple[tuple[int, ...], ...],
                      workspace_bytes: int, cache_path: Path) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Precision comes from the ONNX types (see module docstring); no BuilderFlag.FP16/INT8.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and would run the float32 Mahalanobis tail at 10 mantissa bits.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(profile)
    cache = _load_timing_cache(config, cache_path)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path}; see its log above")
    _write_atomic(cache_path, bytes(cache.serialize()))
    return bytes(blob)


def _load_timing_cache(config, cache_path: Path):
    """Reuse DIR/trt.timing.cache: rebuilds (new threshold, new max_batch) take seconds, not minutes."""
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: start an empty one (it is only a speed-up).
        log.warning("%s was written for another GPU/TensorRT; starting a new timing cache", cache_path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; expected one of {PRECISIONS}")
