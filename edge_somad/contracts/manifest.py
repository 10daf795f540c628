"""manifest.json: the contract between export, calibration and the runtime.

The runtime reads only this file and the ONNX/engine it names, so it never needs torch or the
fit config. Thresholds live here, not in the graph: recalibrating never forces a re-export.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_somad.contracts.jsonio import read_json, write_json
from edge_somad.contracts.layout import MANIFEST_NAME
from edge_somad.contracts.manifest_check import check_manifest_dict
from edge_somad.errors import ArtifactError

MANIFEST_SCHEMA = "edge-somad/manifest/1"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # "batch" for the dynamic axis
    dtype: str


@dataclass(frozen=True)
class Preprocessing:
    """What the host does before the graph: one resize of a BGR uint8 frame to height x width."""

    height: int
    width: int
    resize: str  # letterbox | crop | stretch (edge_somad.contracts.names.RESIZE_MODES)
    pad_value: int = 0
    interpolation: str = "area"
    layout: str = "NHWC"
    channel_order: str = "BGR"
    # Done inside the graph (documented so a reader of the manifest knows the whole chain).
    in_graph: str = "cast float32, BGR->RGB, (x - mean) / std"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Calibration:
    """Pass/fail decision, set by `edge-somad calibrate`. threshold None means 'not calibrated'."""

    method: str = "none"  # robust-normal | empirical-quantile | chi2 | manual | none
    target_frr: float | None = None
    n_images: int = 0
    pixel_threshold: float | None = None
    min_defect_area_px: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineInfo:
    """A TensorRT engine and what it was built for. A mismatch at load time is an error."""

    path: str
    precision: str  # fp16 | int8 | fp32
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: str
    max_batch: int = 1


@dataclass(frozen=True)
class Manifest:
    name: str
    onnx: str
    onnx_sha256: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    preprocessing: Preprocessing
    threshold: float | None = None
    calibration: Calibration = field(default_factory=Calibration)
    model: dict[str, Any] = field(default_factory=dict)  # backbone, d, som grid, topk, method
    versions: dict[str, str] = field(default_factory=dict)
    int8_onnx: str | None = None
    int8_onnx_sha256: str | None = None
    engines: tuple[EngineInfo, ...] = ()
    # Thresholds for graphs whose scores differ from the fp32 graph's (INT8 quantisation noise
    # shifts Mahalanobis distances). Key: precision. `threshold` above is the fp32 one.
    precision_thresholds: dict[str, float] = field(default_factory=dict)
    # The same for the pixel threshold (defect regions); calibration.pixel_threshold is the fp32 one.
    precision_pixel_thresholds: dict[str, float] = field(default_factory=dict)
    # Line-health references (runtime/health/drift.py): {"input": fit-image statistics, "scores": quantiles
    # of the good calibration scores}. Empty in manifests written before: drift is then not measured.
    reference: dict[str, Any] = field(default_factory=dict)
    schema: str = MANIFEST_SCHEMA

    def threshold_for(self, precision: str) -> float | None:
        """The image threshold to apply to scores of the graph run at `precision`.

        fp32 and fp16 share `threshold` (the fp16 graph keeps the distance maths in float32; its
        scores were measured within 0.2% of fp32). int8 uses only its own calibrated threshold:
        applying the fp32 one to int8 scores would reject good parts, so None (-> error verdict
        "not calibrated") until `edge-somad calibrate --int8` has set it.
        """
        if precision == "int8":
            return self.precision_thresholds.get("int8")
        return self.precision_thresholds.get(precision, self.threshold)

    def pixel_threshold_for(self, precision: str) -> float | None:
        """The pixel threshold (defect regions) for maps of the graph run at `precision`.

        Same rule as threshold_for: fp16 shares the fp32 one, int8 has only its own (written by
        `calibrate --int8` from the int8 graph's maps of the good images), None until then.
        """
        if precision == "int8":
            return self.precision_pixel_thresholds.get("int8")
        return self.precision_pixel_thresholds.get(precision, self.calibration.pixel_threshold)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build from parsed JSON; every field is type- and range-checked first (contracts/manifest_check)."""
        if not isinstance(data, dict):
            raise ArtifactError(f"manifest.json holds a {type(data).__name__}; expected a JSON object")
        data = dict(data)
        if data.get("schema") != MANIFEST_SCHEMA:
            raise ArtifactError(
                f"manifest schema {data.get('schema')!r} is not supported: expected {MANIFEST_SCHEMA!r}. "
                "Re-export with `edge-somad export --model DIR`."
            )
        check_manifest_dict(data)
        try:
            return cls(
                input=_tensor(data.pop("input")),
                outputs=tuple(_tensor(o) for o in data.pop("outputs")),
                preprocessing=Preprocessing(**_tuples(data.pop("preprocessing"))),
                calibration=Calibration(**data.pop("calibration", {})),
                engines=tuple(EngineInfo(**e) for e in data.pop("engines", ())),
                **data,
            )
        except (TypeError, KeyError) as exc:
            raise ArtifactError(f"manifest.json does not match the schema {MANIFEST_SCHEMA}: {exc}") from exc

    def with_calibration(self, threshold: float | None, calibration: Calibration) -> Manifest:
        return dataclasses.replace(self, threshold=threshold, calibration=calibration)


def _tensor(d: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(model_dir: Path, verify_onnx: bool = True) -> Manifest:
    """Read DIR/manifest.json; optionally check the ONNX file it names is the one it was written for."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path} does not exist: {model_dir} is not an exported model. "
            f"Run `edge-somad export --model {model_dir}` first."
        )
    try:
        manifest = Manifest.from_dict(read_json(path))
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    if verify_onnx:
        onnx_path = model_dir / manifest.onnx
        if not onnx_path.is_file():
            raise ArtifactError(f"{onnx_path} named by {path} is missing; re-run `edge-somad export`")
        actual = sha256_file(onnx_path)
        if actual != manifest.onnx_sha256:
            raise ArtifactError(
                f"{onnx_path} has sha256 {actual[:12]}…, but {path} expects {manifest.onnx_sha256[:12]}…: "
                "the graph was replaced after export. Re-run `edge-somad export`."
            )
    return manifest


def save_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = Path(model_dir) / MANIFEST_NAME
    write_json(path, manifest.to_dict())
    return path
