"""Pick and open the scorer for a model directory: `open_scorer(model_dir, backend, precision)`.

`select_backend` is pure (the environment comes in as arguments) so the decision table is tested
without a GPU. Explicit requests that cannot run raise; only `auto` chooses, and it logs why.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_somad.contracts.engines import find_engine, rebuild_command
from edge_somad.contracts.manifest import Manifest, load_manifest, sha256_file
from edge_somad.contracts.names import PRECISIONS
from edge_somad.errors import ArtifactError, BackendUnavailableError, ConfigError
from edge_somad.runtime.scorers.scorer import Scorer

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # onnxruntime | tensorrt | torch
    precision: str
    artifact: str | None  # file inside the model dir (ONNX or engine); None for torch
    providers: tuple[str, ...] = ()  # onnxruntime only
    reason: str = ""


def _engine_for(manifest: Manifest, precision: str) -> str | None:
    info = find_engine(manifest, precision)
    return info.path if info else None


def _onnxruntime(manifest: Manifest, precision: str, ort_providers: Sequence[str], why: str) -> BackendChoice:
    if precision == "fp16":
        raise ConfigError(
            "precision fp16 with onnxruntime: the exported graphs are fp32 (model.onnx) and int8 "
            "(model.int8.onnx); fp16 exists only as a TensorRT engine. Use --backend tensorrt "
            "--precision fp16 on a GPU, or --precision fp32. (Precision is never changed silently.)"
        )
    if precision == "int8":
        if not manifest.int8_onnx:
            raise ArtifactError(
                "precision int8 requested but the manifest names no int8 ONNX: "
                "run `edge-somad calibrate --int8 --model DIR` first."
            )
        # ORT's CUDA provider does not accelerate QDQ int8 graphs; the CPU kernels are the fast path.
        return BackendChoice("onnxruntime", "int8", manifest.int8_onnx, (CPU_EP,),
                             f"{why}; int8 QDQ graph on {CPU_EP}")
    if CUDA_EP in ort_providers:
        return BackendChoice("onnxruntime", "fp32", manifest.onnx, (CUDA_EP, CPU_EP),
                             f"{why}; {CUDA_EP} is available")
    return BackendChoice("onnxruntime", "fp32", manifest.onnx, (CPU_EP,), f"{why}; no CUDA provider, CPU")


def select_backend(
    manifest: Manifest,
    backend: str,
    precision: str,
    *,
    tensorrt_installed: bool,
    ort_providers: Sequence[str],
) -> BackendChoice:
    """The decision table. Raises ConfigError / BackendUnavailableError / ArtifactError; never downgrades."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; expected one of {BACKENDS}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; expected one of {PRECISIONS}")
    engine = _engine_for(manifest, precision)
    if backend == "tensorrt":
        if not tensorrt_installed:
            raise BackendUnavailableError(
                "--backend tensorrt requested, but the tensorrt Python package is not importable here. "
                "Install the [gpu] extra on a CUDA machine, or use --backend onnxruntime."
            )
        if engine is None:
            have = [e.precision for e in manifest.engines] or "none"
            raise ArtifactError(
                f"no TensorRT engine for precision {precision} in the manifest (engines: {have}). "
                f"Build one on this GPU first (`{rebuild_command(Path('DIR'), precision)}`), "
                "or pick a precision that has an engine."
            )
        return BackendChoice("tensorrt", precision, engine, reason="requested explicitly")
    if backend == "torch":
        if precision != "fp32":
            raise ConfigError(f"--backend torch runs fp32 only; got --precision {precision}")
        return BackendChoice("torch", "fp32", None, reason="requested explicitly")
    if backend == "onnxruntime":
        return _onnxruntime(manifest, precision, ort_providers, "requested explicitly")
    # auto
    if tensorrt_installed and engine is not None:
        return BackendChoice("tensorrt", precision, engine,
                             reason=f"auto: tensorrt importable and engine {engine} matches {precision}")
    why = ("auto: tensorrt not importable" if not tensorrt_installed
           else f"auto: no TensorRT engine for {precision} in the manifest")
    return _onnxruntime(manifest, precision, ort_providers, why)


def detect_environment() -> tuple[bool, list[str]]:
    """(tensorrt importable, onnxruntime providers). Imports onnxruntime, never tensorrt/torch.

    Logs the active ONNX Runtime flavour and warns when the CPU and GPU builds are both installed."""
    from edge_somad.runtime.scorers.ort_flavour import check_flavour

    flavour = check_flavour()
    return importlib.util.find_spec("tensorrt") is not None, list(flavour.providers)


def open_scorer(
    model_dir: Path, backend: str = "auto", precision: str = "fp32", *, manifest: Manifest | None = None
) -> Scorer:
    """Open the scorer for DIR/manifest.json. Logs the choice; raises on anything it cannot honour.

    The precision that runs is always the one asked for (auto picks the backend, never the precision).
    `manifest`: the already loaded DIR/manifest.json, so a caller that read it does not read it again.
    """
    model_dir = Path(model_dir)
    manifest = manifest if manifest is not None else load_manifest(model_dir)
    trt_ok, providers = detect_environment()
    choice = select_backend(manifest, backend, precision, tensorrt_installed=trt_ok, ort_providers=providers)
    log.info("backend %s/%s (%s)", choice.backend, choice.precision, choice.reason)
    pre = manifest.preprocessing
    if choice.backend == "onnxruntime":
        from edge_somad.runtime.scorers.ort_scorer import OrtScorer

        path = model_dir / str(choice.artifact)
        if choice.precision == "int8":
            _check_int8(path, manifest)
        scorer: Scorer = OrtScorer(path, pre.height, pre.width, providers=choice.providers)
    elif choice.backend == "tensorrt":
        try:
            from edge_somad.runtime.scorers.trt_scorer import TensorRTScorer
        except ImportError as exc:
            raise BackendUnavailableError(
                f"TensorRT backend cannot load here ({exc}); it needs tensorrt and CUDA (the [gpu] extra)."
            ) from exc
        scorer = TensorRTScorer(model_dir, manifest, choice.precision)
    else:
        from edge_somad.runtime.scorers.torch_scorer import TorchScorer

        scorer = TorchScorer(model_dir, device="cpu")
    return scorer


def _check_int8(path: Path, manifest: Manifest) -> None:
    if not path.is_file():
        raise ArtifactError(
            f"{path} (manifest.int8_onnx) is missing: "
            f"run `edge-somad calibrate --int8 --model {path.parent}`."
        )
    if manifest.int8_onnx_sha256 and sha256_file(path) != manifest.int8_onnx_sha256:
        raise ArtifactError(
            f"{path} does not match manifest.int8_onnx_sha256: it was replaced after calibration. "
            "Re-run `edge-somad calibrate --int8`."
        )
