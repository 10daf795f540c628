"""Frozen configuration dataclasses, saved as JSON beside the artifacts (never pickle)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edge_somad.contracts import defaults
from edge_somad.contracts.names import PRECISIONS, RESIZE_MODES
from edge_somad.errors import ArtifactError, ConfigError

CONFIG_SCHEMA = "edge-somad/fit-config/1"

BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "wide_resnet50_2")
PROJECTIONS = ("gaussian", "subset", "none")
METHODS = ("somad", "padim")
# SOMAD's per-node covariance: "full" = an exact d x d whitening factor per node, searched by
# Euclidean distance to the SOM nodes; "lowrank" = one pooled whitening for all patches, the search
# in those coordinates, a rank-r + diagonal inverse covariance per node (edge_somad/lowrank.py).
# PaDiM (one Gaussian per position) has no nodes and ignores it.
HEADS = ("full", "lowrank")
# How patch distances become the map the image score is taken from: raw Mahalanobis distances, or
# z-scored per position with statistics of the training images' own maps (see scoring.standardise).
SCORE_NORMS = ("none", "zscore")
# Every backbone stage we use has stride <= 16, and the 'same' padding of the stride-2 convolutions
# is only input-size independent when each stride-2 layer sees an even size.
INPUT_MULTIPLE = 16


@dataclass(frozen=True)
class InputSpec:
    """Model input geometry. Height and width are independent: cameras are rarely square."""

    height: int = 224
    width: int = 224
    # How a camera frame becomes the model's HxW input. Distorting the part is a visible choice:
    # "letterbox" keeps the aspect ratio and pads, "crop" keeps it and cuts the long side,
    # "stretch" squashes the frame to HxW (contracts/names.RESIZE_MODES).
    resize: str = "letterbox"
    pad_value: int = 0

    def __post_init__(self) -> None:
        for name, v in (("height", self.height), ("width", self.width)):
            if v < 32 or v % INPUT_MULTIPLE:
                raise ConfigError(
                    f"input {name}={v} is not usable: expected a multiple of {INPUT_MULTIPLE} and >= 32 "
                    f"(backbone strides go to 16). Try {max(32, round(v / INPUT_MULTIPLE) * INPUT_MULTIPLE)}."
                )
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize={self.resize!r} is unknown; expected one of {RESIZE_MODES}")
        if not 0 <= self.pad_value <= 255:
            raise ConfigError(f"pad_value={self.pad_value} must be a uint8 value in [0, 255]")


@dataclass(frozen=True)
class SomConfig:
    """Self-organising map training.

    rows/cols of 0 mean "the feature grid, capped at max_nodes": the paper sizes the map like the
    feature grid, which makes fit, scoring and the model grow with the square of the pixel count.
    Capping the node count (aspect kept) makes them linear in pixels; 3136 = the 56x56 grid of a
    224x224 input, so the 224x224 default is the paper's choice exactly.
    """

    rows: int = 0
    cols: int = 0
    max_nodes: int = 3136
    # Patches drawn (fresh, at random) for each epoch. Placing 3136 nodes needs a sample, not every
    # patch: without the cap SOM training grew with images x pixels (711 s at 560x224). Node
    # statistics still use every training patch.
    max_patches_per_epoch: int = 300_000
    epochs: int = 3
    batch_size: int = 4096
    lr_start: float = 0.5
    lr_end: float = 0.02
    # Neighbourhood radius in grid units; 0 means max(rows, cols) / 4.
    radius_start: float = 0.0
    radius_end: float = 0.5

    def __post_init__(self) -> None:
        if self.rows < 0 or self.cols < 0 or (self.rows == 0) != (self.cols == 0):
            raise ConfigError(f"SOM grid {self.rows}x{self.cols}: give both rows and cols > 0, or both 0")
        if self.max_patches_per_epoch < 1:
            raise ConfigError(f"SOM max_patches_per_epoch={self.max_patches_per_epoch} must be >= 1")
        if self.max_nodes < 4:
            raise ConfigError(f"SOM max_nodes={self.max_nodes} must be >= 4")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"SOM epochs={self.epochs}, batch_size={self.batch_size}: both must be >= 1")
        if not 0 < self.lr_end <= self.lr_start <= 1:
            raise ConfigError(f"SOM learning rate {self.lr_start}->{self.lr_end}: need 0 < end <= start <= 1")
        if self.radius_end <= 0 or (self.radius_start and self.radius_start < self.radius_end):
            raise ConfigError(f"SOM radius {self.radius_start}->{self.radius_end}: need 0 < end <= start")


@dataclass(frozen=True)
class FitConfig:
    """Everything that determines a fitted model. Saved as config.json beside the arrays."""

    method: str = "somad"
    backbone: str = "efficientnet-lite0"
    input: InputSpec = field(default_factory=InputSpec)
    projection: str = "gaussian"
    d: int = 64
    som: SomConfig = field(default_factory=SomConfig)
    topk: int = 4
    head: str = "full"
    # lowrank: eigen-directions kept per node (the rest becomes its diagonal); 1 <= head_rank <= d.
    head_rank: int = 8
    # lowrank: share of the d coordinates the nearest-node search uses (the nodes' widest spread
    # first); 1 = all d, the full head's exact search.
    search_share: float = 1.0
    # Covariance regulariser: eps*I plus shrinkage towards the pooled within-node covariance with
    # weight shrinkage/(n_j + shrinkage), so a node with few members borrows the global shape, never
    # NaN. Measured on MVTec bottle (benchmarks/ablation.py): ~190 patches per node are too few for a
    # 64x64 covariance; PRO rose from 0.925 (shrinkage 16, eps 0.01) to 0.949 (4096, eps 1.0).
    # On the development suite's mean (benchmarks/suite.py, docs/results.md, "Development suite") 256 beat
    # 4096 at image level on every category measured (mean image AUROC +0.03): 4096 turns most
    # nodes' covariances into the pooled one, which blurs what the SOM learnt locally.
    eps: float = 1.0
    shrinkage: float = 256.0
    smoothing_sigma: float = 4.0
    # Image score = mean of the hottest `image_score_top` share of the smoothed map (0 = its
    # maximum, the paper's). One hot pixel of sensor noise or one nominal hot spot moves a maximum;
    # a 1 % mean needs a region. Suite mean image AUROC 0.964 (max) -> 0.969 (top 1 %).
    image_score_top: float = 0.01
    # Per-position standardisation of the patch distances. Off by default: on the suite's mean it
    # lost to raw distances for SOMAD (0.955 vs 0.964), though it helps the PaDiM baseline.
    score_norm: str = "none"
    # Floor of the per-position std, as a fraction of its median over positions (score_norm=zscore).
    norm_std_floor: float = 0.1
    # Share of train/good held out (never seen by the SOM) to calibrate the pass/fail threshold.
    # 0.2 on the development suite's mean: escapes 25 % -> 19 % and FRR 4.3 % -> 3.3 % at the
    # calibrated threshold, image AUROC unchanged (0.968 vs 0.967); few held-out images made loose
    # thresholds on the small categories.
    holdout_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r} is unknown; expected one of {METHODS}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone={self.backbone!r} is unknown; expected one of {BACKBONES}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"projection={self.projection!r} is unknown; expected one of {PROJECTIONS}")
        if self.d < 1:
            raise ConfigError(f"d={self.d} must be >= 1")
        if self.topk < 1:
            raise ConfigError(f"topk={self.topk} must be >= 1")
        if self.head not in HEADS:
            raise ConfigError(f"head={self.head!r} is unknown; expected one of {HEADS}")
        if not 0 < self.search_share <= 1:
            raise ConfigError(f"search_share={self.search_share} must be in (0, 1] (1 = search all d coordinates)")
        if self.head == "lowrank" and not 1 <= self.head_rank <= self.d:
            raise ConfigError(f"head_rank={self.head_rank} must be in [1, d={self.d}] for head=lowrank; "
                              "lower --head-rank or raise --d")
        if self.eps <= 0 or self.shrinkage < 0:
            raise ConfigError(f"eps={self.eps} must be > 0 and shrinkage={self.shrinkage} >= 0")
        if self.smoothing_sigma < 0:
            raise ConfigError(f"smoothing_sigma={self.smoothing_sigma} must be >= 0 (0 disables smoothing)")
        if self.score_norm not in SCORE_NORMS:
            raise ConfigError(f"score_norm={self.score_norm!r} is unknown; expected one of {SCORE_NORMS}")
        if not 0 <= self.image_score_top <= 0.5:
            raise ConfigError(f"image_score_top={self.image_score_top} must be in [0, 0.5] (0 = the map's maximum)")
        if not 0 < self.norm_std_floor <= 1:
            raise ConfigError(f"norm_std_floor={self.norm_std_floor} must be in (0, 1]")
        if not 0 <= self.holdout_fraction < 0.5:
            raise ConfigError(f"holdout_fraction={self.holdout_fraction} must be in [0, 0.5)")

    @property
    def search_dims(self) -> int:
        """Coordinates the low-rank head's search uses (>= 1; d means all of them)."""
        return max(1, round(self.search_share * self.d))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CONFIG_SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        data = dict(data)
        # Models fitted before score_norm existed scored raw distances and carry no norm arrays.
        data.setdefault("score_norm", "none")
        # ... and took the map's maximum as the image score.
        data.setdefault("image_score_top", 0.0)
        # ... and had the full per-node head (their arrays hold d x d whitening factors).
        data.setdefault("head", "full")
        data.setdefault("head_rank", 8)
        data.setdefault("search_share", 1.0)
        schema = data.pop("schema", None)
        if schema != CONFIG_SCHEMA:
            raise ArtifactError(
                f"config schema {schema!r} is not supported: expected {CONFIG_SCHEMA!r}. "
                "Re-fit the model with this version of edge-somad."
            )
        try:
            return cls(
                input=InputSpec(**data.pop("input")),
                som=SomConfig(**data.pop("som")),
                **data,
            )
        except (TypeError, KeyError) as exc:
            # Unknown or missing keys are an error, never silently dropped.
            raise ArtifactError(f"config.json does not match FitConfig: {exc}") from exc


@dataclass(frozen=True)
class ExportConfig:
    """What `export` does after writing the graph: the threshold of a fresh model, the TensorRT engine."""

    # The false-reject rate a model without a calibration is calibrated at (an existing one is kept).
    target_frr: float = defaults.TARGET_FRR
    # Build a TensorRT engine: True / False, or None = when tensorrt imports and a CUDA GPU is there.
    trt: bool | None = None
    engine_precision: str = defaults.ENGINE_PRECISION

    def __post_init__(self) -> None:
        if not 0 < self.target_frr < 1:
            raise ConfigError(f"target_frr={self.target_frr} must be a fraction in (0, 1), e.g. 0.005 for 0.5 %")
        if self.engine_precision not in PRECISIONS:
            raise ConfigError(f"engine_precision={self.engine_precision!r}; expected one of {PRECISIONS}")
