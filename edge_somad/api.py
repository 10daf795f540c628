"""The public Python API: score frames with an exported model, or fit and export one.

    from edge_somad import Detector
    detector = Detector.load("models/hazelnut_toy")
    print(detector.predict(cv2.imread("part.jpg")).verdict)

Scoring imports no torch: Detector runs the same scorer, decision and defect rule as `edge-somad
run` (runtime.scorers.backends, runtime.messaging.verdict, runtime.pipeline.defects), one frame at a
time and without ZeroMQ.
fit_model and export_model (workflows.fit / workflows.export) need the [fit] extra. They are not
called `fit` and `export`: edge_somad.fit and edge_somad.export are modules of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.config import ExportConfig, FitConfig
from edge_somad.contracts.geometry import check_frame, plan_geometry, resize_planned
from edge_somad.contracts.manifest import Manifest, load_manifest
from edge_somad.errors import InputError
from edge_somad.runtime.scorers.scorer import Scorer

__all__ = ["Detector", "ExportConfig", "FitConfig", "Prediction", "export_model", "fit_model"]


@dataclass(frozen=True)
class Prediction:
    """One frame's result.

    verdict: "pass" | "fail" | "error" (error: not calibrated, or a non-finite score; `error` says why).
    score and threshold are in the model's units (fail when score >= threshold). heatmap: float32
    (frame height, frame width) anomaly map over the frame as given, in the same units; None when the
    frame could not be scored. defects: regions at or above the pixel threshold, in frame pixels,
    [{x, y, w, h, area_px, max_score}], hottest first.
    """

    score: float | None
    verdict: str
    threshold: float | None
    heatmap: np.ndarray | None
    defects: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class Detector:
    """An exported model directory, opened once, scoring BGR uint8 frames (what cv2.imread returns)."""

    def __init__(self, model_dir: Path, manifest: Manifest, scorer: Scorer, precision: str) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.scorer = scorer
        self.precision = precision
        self.threshold = manifest.threshold_for(precision)
        self.pixel_threshold = manifest.pixel_threshold_for(precision)

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "auto", precision: str = "fp32") -> Detector:
        """Open MODEL_DIR (manifest.json + graph). backend: auto | onnxruntime | tensorrt | torch;
        auto picks TensorRT when an engine for `precision` exists and tensorrt imports, else ONNX Runtime."""
        from edge_somad.runtime.scorers.backends import open_scorer

        model_dir = Path(model_dir)
        manifest = load_manifest(model_dir)
        return cls(model_dir, manifest, open_scorer(model_dir, backend, precision, manifest=manifest), precision)

    def predict(self, frame: np.ndarray | str | Path) -> Prediction:
        """Score one frame: a BGR/BGRA/grey uint8 array of any size, or an image file path."""
        from edge_somad.runtime.messaging.verdict import judge
        from edge_somad.runtime.pipeline.defects import defects_of, map_to_frame
        from edge_somad.runtime.pipeline.frames import check_useful_geometry

        bgr = check_frame(_read(frame) if isinstance(frame, (str, Path)) else frame)
        pre = self.manifest.preprocessing
        geometry = plan_geometry(bgr.shape[0], bgr.shape[1], pre.height, pre.width, pre.resize)
        check_useful_geometry(geometry, self.manifest)  # a frame too small for the model is refused, as in `run`
        batch = resize_planned(bgr, geometry, pre.resize, pre.pad_value)[None]
        result = self.scorer.score(batch)
        verdict = judge(float(result.scores[0]), result.maps[0], self.threshold, geometry)
        heatmap = map_to_frame(verdict.anomaly_map, geometry) if verdict.anomaly_map is not None else None
        defects = defects_of(verdict, self.pixel_threshold, self.manifest.calibration.min_defect_area_px)
        return Prediction(verdict.score, verdict.verdict, self.threshold, heatmap, defects, verdict.error)

    def close(self) -> None:
        self.scorer.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(path: str | Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image file; expected a JPEG, PNG or BMP the camera wrote")
    return image


def fit_model(category: str, out: str | Path | None = None, config: FitConfig | None = None, *,
        data_root: str | Path | None = None, device: str = "auto") -> Path:
    """Fit on DATA_ROOT/CATEGORY/train/good (MVTec layout; "hazelnut_toy" is bundled) into OUT
    [models/CATEGORY]; returns OUT. config None: the defaults, method picked by a self-check. Needs [fit]."""
    from edge_somad.workflows import fit as fit_dir

    target = Path(out) if out is not None else Path("models") / category
    fit_dir(category, target, config, data_root=Path(data_root) if data_root is not None else None, device=device)
    return target


def export_model(model_dir: str | Path, config: ExportConfig | None = None) -> Manifest:
    """Export a fitted MODEL_DIR: model.onnx + manifest.json, calibrated when it was not yet. Needs [fit]."""
    from edge_somad.workflows import export as export_dir

    return export_dir(Path(model_dir), config)
