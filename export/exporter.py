"""`edge-somad export`: fitted model dir -> model.onnx + manifest.json (+ TensorRT engine)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import platform
from pathlib import Path
from typing import Any

from edge_somad.artifacts import load_config
from edge_somad.contracts.layout import is_exported, read_fit_info
from edge_somad.contracts.manifest import (
    Calibration,
    Manifest,
    Preprocessing,
    TensorSpec,
    load_manifest,
    save_manifest,
    sha256_file,
)
from edge_somad.contracts.names import INPUT_NAME, MAP_NAME, SCORE_NAME
from edge_somad.export.onnx_graph import GraphReport, export_onnx

log = logging.getLogger(__name__)
_VERSIONED = ("edge-somad", "torch", "onnx", "onnxruntime", "numpy", "opencv-python-headless", "tensorrt")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def build_manifest(model_dir: Path, report: GraphReport, previous: Manifest | None) -> Manifest:
    """Manifest for a freshly exported graph. What `calibrate` and `build-engine` wrote is kept: the
    thresholds (image and pixel, every precision) and the int8 graph depend on the fitted model, not
    on the fp32 graph's bytes; an engine is kept only while the graph it was built from is unchanged
    (sha256), so a stale one is dropped here instead of failing at load."""
    config = load_config(model_dir)
    fit_info = read_fit_info(model_dir)
    from edge_somad.backbones import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD

    wrn = config.backbone == "wide_resnet50_2"
    spec = config.input
    h, w = spec.height, spec.width
    onnx_sha = sha256_file(report.path)
    return Manifest(
        name=model_dir.name, onnx=report.path.name, onnx_sha256=onnx_sha,
        input=TensorSpec(INPUT_NAME, ("batch", h, w, 3), "uint8"),
        outputs=(TensorSpec(MAP_NAME, ("batch", h, w), "float32"), TensorSpec(SCORE_NAME, ("batch",), "float32")),
        preprocessing=Preprocessing(
            height=h, width=w, resize=spec.resize, pad_value=spec.pad_value,
            mean=IMAGENET_MEAN if wrn else TF_MEAN, std=IMAGENET_STD if wrn else TF_STD,
        ),
        threshold=previous.threshold if previous else None,
        calibration=previous.calibration if previous else Calibration(),
        model={
            "method": config.method, "backbone": config.backbone, "d": config.d,
            "projection": config.projection, "som_grid": fit_info.get("som_grid"), "topk": config.topk,
            "head": config.head, "head_rank": config.head_rank if config.head == "lowrank" else None,
            "search_share": config.search_share if config.method == "somad" else None,
            "feature_grid": fit_info.get("feature_grid"), "smoothing_sigma": config.smoothing_sigma,
            "score_norm": config.score_norm,
            "image_score_top": config.image_score_top,
            "onnx_bytes": report.bytes, "largest_intermediate": {
                "name": report.largest_intermediate[0], "shape_batch1": list(report.largest_intermediate[1]),
                "bytes": report.largest_intermediate[2]},
        },
        versions=package_versions(),
        reference=_reference(fit_info, previous),
        **_kept(previous, onnx_sha),
    )


def _kept(previous: Manifest | None, onnx_sha: str) -> dict[str, Any]:
    """The int8 graph, per-precision thresholds and still-valid engines of the previous manifest."""
    if previous is None:
        return {}
    engines = tuple(e for e in previous.engines
                    if e.onnx_sha256 == (previous.int8_onnx_sha256 if e.precision == "int8" else onnx_sha))
    return {"int8_onnx": previous.int8_onnx, "int8_onnx_sha256": previous.int8_onnx_sha256,
            "precision_thresholds": dict(previous.precision_thresholds),
            "precision_pixel_thresholds": dict(previous.precision_pixel_thresholds), "engines": engines}


def _reference(fit_info: dict, previous: Manifest | None) -> dict:
    """Line-health references: fit-image statistics from fit_info.json (fits before they existed
    get them at the next calibrate); the calibration scores belong to the calibration, kept with it."""
    ref = dict(previous.reference) if previous else {}
    if fit_info.get("input_stats"):
        ref["input"] = fit_info["input_stats"]
    return ref


def export_model(model_dir: Path, weights: str | None = None) -> Manifest:
    """Write model.onnx and manifest.json into model_dir; returns the manifest."""
    model_dir = Path(model_dir)
    previous = None
    if is_exported(model_dir):
        previous = load_manifest(model_dir, verify_onnx=False)
    report = export_onnx(model_dir, weights=weights)
    manifest = _with_reference_frame(model_dir, build_manifest(model_dir, report, previous))
    save_manifest(model_dir, manifest)
    return manifest


def _with_reference_frame(model_dir: Path, manifest: Manifest) -> Manifest:
    """The self-check frame and its score (runtime/scorers/reference_frame.py), scored by ONNX Runtime on
    the CPU. Without onnxruntime here the bundle goes out without one: `run` then checks finite output
    only before swapping it in, and says so; the warning says how to add it."""
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: %s gets no reference frame (the self-check before a live "
                    "model swap falls back to finite output). Install the [cpu] extra and re-export.", model_dir)
        return dataclasses.replace(manifest, reference={k: v for k, v in manifest.reference.items() if k != "frame"})
    from edge_somad.runtime.scorers.ort_scorer import OrtScorer
    from edge_somad.runtime.scorers.reference_frame import write_reference

    pre = manifest.preprocessing
    with OrtScorer(model_dir / manifest.onnx, pre.height, pre.width) as scorer:
        return write_reference(model_dir, manifest, scorer)


def trt_wanted(flag: bool | None) -> bool:
    """--trt / --no-trt; unset means: build when tensorrt imports and a CUDA device is present."""
    if flag is not None:
        return flag
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        from edge_somad.runtime.scorers.trt_env import gpu_info

        gpu_info()
    except Exception as exc:
        log.info("tensorrt is installed but no usable GPU (%s): not building an engine", exc)
        return False
    return True
