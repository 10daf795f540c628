"""The model directory: one folder holds everything a step reads or writes (docs/DESIGN.md).

File names live here once; the readers of the small JSON files that several steps share
(split.json, fit_info.json) too, so each step reads them the same way and fails the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_somad.contracts.jsonio import read_json
from edge_somad.contracts.names import PRECISIONS
from edge_somad.errors import ArtifactError, ConfigError

CONFIG_NAME = "config.json"  # FitConfig (fit)
ARRAYS_NAME = "arrays.npz"  # fitted arrays (fit)
SPLIT_NAME = "split.json"  # train / holdout image lists (fit)
FIT_INFO_NAME = "fit_info.json"  # feature grid, timings, input statistics, selection (fit)
ONNX_NAME = "model.onnx"  # the fused fp32 graph (export)
MANIFEST_NAME = "manifest.json"  # the contract the runtime reads (export, calibrate, build-engine)
INT8_ONNX_NAME = "model.int8.onnx"  # Q/DQ graph (calibrate --int8)
FP16_ONNX_NAME = "model.fp16.onnx"  # float16 copy an fp16 engine is built from (build-engine)
REFERENCE_FRAME_NAME = "reference_frame.npz"  # a known frame the graph's export-time score is checked on (export)
TIMING_CACHE_NAME = "trt.timing.cache"  # TensorRT autotuning cache (build-engine)
REPORT_NAME = "report.json"  # metrics (evaluate)
PICTURES_NAME = "pictures"  # PNG folder (evaluate)
SPLIT_PARTS = ("train", "holdout")


def engine_name(precision: str) -> str:
    """model.<precision>.engine, the file a TensorRT engine of that precision is written to."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; expected one of {PRECISIONS}")
    return f"model.{precision}.engine"


def is_fitted(model_dir: Path) -> bool:
    return (Path(model_dir) / CONFIG_NAME).is_file()


def is_exported(model_dir: Path) -> bool:
    return (Path(model_dir) / MANIFEST_NAME).is_file()


def read_split(model_dir: Path) -> dict[str, Any]:
    """split.json as written by fit: {category, data_root, train: [...], holdout: [...]}."""
    path = Path(model_dir) / SPLIT_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path} does not exist: {model_dir} was not written by `edge-somad fit`, so its images are "
            "unknown. Re-fit, or give the images explicitly (calibrate: --calibration-dir DIR)."
        )
    return read_json(path)


def split_paths(model_dir: Path, part: str) -> list[Path]:
    """Image paths of split.json's `part`; relative entries are under split.json's data_root."""
    split = read_split(model_dir)
    entries = split.get(part)
    if not isinstance(entries, list):
        raise ArtifactError(f"{Path(model_dir) / SPLIT_NAME} has no list {part!r}; "
                            "expected keys train, holdout, data_root, category")
    root = Path(str(split.get("data_root", ".")))
    return [Path(p) if Path(p).is_absolute() else root / p for p in entries]


def read_fit_info(model_dir: Path) -> dict[str, Any]:
    """fit_info.json, or {} for a model dir without one (an edge box holding only the export)."""
    path = Path(model_dir) / FIT_INFO_NAME
    return read_json(path) if path.is_file() else {}
