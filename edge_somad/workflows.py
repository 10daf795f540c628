"""The library side of the CLI: each step's whole job as one function on a model directory
(testable without the command line). The steps, their functions and what each writes into the model directory:

fit           fit (fit_from_cli)                     config.json arrays.npz split.json fit_info.json
export        export (export_from_cli)               model.onnx manifest.json (calibrates only a fresh model)
calibrate     calibration.calibrate.run_calibrate    manifest thresholds (+ model.int8.onnx with --int8)
build-engine  build_engine_from_cli                  model.<precision>.engine, manifest.engines
evaluate      evaluate_from_cli                      report.json pictures/
run           runtime.pipeline.launch.run_pipeline   nothing: verdicts over ZeroMQ
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_somad.config import ExportConfig, FitConfig, InputSpec, SomConfig
from edge_somad.contracts import defaults
from edge_somad.contracts.layout import PICTURES_NAME, REPORT_NAME, is_exported, is_fitted, read_split
from edge_somad.contracts.manifest import EngineInfo, Manifest, load_manifest
from edge_somad.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)


def fit(category: str, out: Path | None = None, config: FitConfig | None = None, *,
        select_method: bool | None = None, data_root: Path | None = None, weights: str | None = None,
        device: str = "auto") -> dict[str, Any]:
    """Fit on CATEGORY/train/good and write the model directory OUT [models/CATEGORY]; returns fit_info.

    config None: the defaults, with SOMAD or PaDiM picked by the self-check on synthetic defects
    (select_method defaults to True then, to False when a config is given: its method is used).
    """
    from edge_somad.data import resolve_category

    select = config is None if select_method is None else select_method
    config = config if config is not None else FitConfig()
    cat = resolve_category(category, data_root)
    out = out or Path("models") / category
    if select:
        from edge_somad.select import fit_auto

        return fit_auto(cat, config, out, weights=weights, device=device)
    from edge_somad.fit import fit_model

    return fit_model(cat, config, out, weights=weights, device=device)


def fit_from_cli(category: str, data_root: Path | None, out: Path | None, backbone: str, weights: str | None,
                 height: int, width: int, resize: str, method: str, d: int, projection: str, som_size: int,
                 topk: int, score_norm: str, image_score_top: float, seed: int,
                 device: str, head: str = FitConfig.head, head_rank: int = FitConfig.head_rank,
                 search_share: float = FitConfig.search_share) -> dict[str, Any]:
    config = FitConfig(
        # auto: the base config; select.fit_auto sets method and score_norm per candidate.
        method="somad" if method == "auto" else method, backbone=backbone, input=InputSpec(height, width, resize),
        projection=projection, d=d,
        som=SomConfig(rows=som_size, cols=som_size), topk=topk, score_norm=score_norm,
        image_score_top=image_score_top, seed=seed, head=head, head_rank=head_rank, search_share=search_share,
    )
    return fit(category, out, config, select_method=method == "auto", data_root=data_root, weights=weights,
               device=device)


def evaluate_from_cli(model: Path, category: str | None, data_root: Path | None, backend: str, precision: str,
                      report: Path | None, pictures: Path | None) -> dict[str, Any]:
    from edge_somad.artifacts import load_config
    from edge_somad.calibration.threshold import confusion_at_threshold
    from edge_somad.data import resolve_category
    from edge_somad.evaluate import evaluate
    from edge_somad.runtime.scorers.backends import open_scorer

    split = read_split(model)
    cat = resolve_category(category or split["category"], data_root or Path(split["data_root"]))
    config = load_config(model)
    threshold = pixel_threshold = None
    min_area = 0
    if is_exported(model):
        manifest = load_manifest(model, verify_onnx=False)
        threshold, pixel_threshold = manifest.threshold_for(precision), manifest.pixel_threshold_for(precision)
        min_area = manifest.calibration.min_defect_area_px
    elif backend != "torch":
        raise ArtifactError(f"{model} has no manifest.json: run `edge-somad export --model {model}` "
                            "or evaluate the unexported model with --backend torch")
    with open_scorer(model, backend, precision) as scorer:
        return evaluate(model, cat, scorer, config.input, threshold, report or model / REPORT_NAME,
                        pictures or model / PICTURES_NAME, confusion=confusion_at_threshold,
                        pixel_threshold=pixel_threshold, min_area_px=min_area)


def export_from_cli(category: str | None, model: Path | None, data_root: Path | None, trt: bool | None,
                    precision: str, target_frr: float) -> Manifest:
    """Fit first (the defaults) if the directory holds no fit, then `export`."""
    if model is None and category is None:
        raise ConfigError("give --category X (fits models/X when needed) or --model DIR")
    model_dir = model or Path("models") / str(category)
    if not is_fitted(model_dir):
        if category is None:
            raise ArtifactError(f"{model_dir} holds no fitted model; add --category X to fit it first")
        log.info("no fitted model in %s: fitting category %s with the defaults", model_dir, category)
        fit(category, model_dir, data_root=data_root)
    return export(model_dir, ExportConfig(target_frr=target_frr, trt=trt, engine_precision=precision))


def export(model_dir: Path, config: ExportConfig | None = None) -> Manifest:
    """Export the fitted model in MODEL_DIR: model.onnx + manifest.json; calibrate only a model that has no
    calibration yet (a user's chi2 or --calibration-dir threshold is never replaced); build the engine."""
    from edge_somad.export.exporter import export_model, trt_wanted

    config = config if config is not None else ExportConfig()
    model_dir = Path(model_dir)
    manifest = export_model(model_dir)
    if manifest.threshold is None:
        manifest = calibrate_holdout(model_dir, config.target_frr)
    else:
        kept = f"calibration kept ({manifest.calibration.method}, threshold {manifest.threshold:.6g}"
        kept += f", int8 graph {manifest.int8_onnx})" if manifest.int8_onnx else ")"
        log.info("%s; `edge-somad calibrate --model %s` recalibrates", kept, model_dir)
    if trt_wanted(config.trt):
        build_engine_from_cli(model_dir, config.engine_precision)
        manifest = load_manifest(model_dir)
    return manifest


def build_engine_from_cli(model_dir: Path, precision: str, max_batch: int = defaults.MAX_BATCH,
                          workspace_gb: float = defaults.WORKSPACE_GB) -> EngineInfo:
    """A TensorRT engine for this GPU from the model directory's graph (int8: model.int8.onnx)."""
    from edge_somad.export.trt_build import build_engine

    return build_engine(model_dir, precision=precision, max_batch=max_batch, workspace_gb=workspace_gb)


def calibrate_holdout(model_dir: Path, target_frr: float) -> Manifest:
    """Threshold from the held-out good images recorded at fit time (no re-export involved)."""
    from edge_somad.calibration.calibrate import DEFAULT_METHOD, calibrate_model
    from edge_somad.calibration.frames import load_holdout_frames
    from edge_somad.runtime.scorers.backends import open_scorer

    frames = load_holdout_frames(model_dir)
    with open_scorer(model_dir, "onnxruntime", "fp32") as scorer:
        return calibrate_model(model_dir, frames, target_frr, DEFAULT_METHOD, defaults.PIXEL_QUANTILE, None, scorer)
