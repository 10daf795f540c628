"""Model directory I/O: config.json + arrays.npz (+ split.json, fit_info.json). No pickle anywhere.

Whitening factors are lower triangular, so only the triangle is stored (half the bytes); the
loader rebuilds the full matrices.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.config import FitConfig
from edge_somad.contracts.jsonio import read_json, write_json
from edge_somad.contracts.layout import ARRAYS_NAME, CONFIG_NAME, FIT_INFO_NAME, SPLIT_NAME
from edge_somad.errors import ArtifactError

LOWRANK_ARRAYS = ("transform", "search_rotation", "basis", "coef", "alpha")
_REQUIRED = {
    ("somad", "full"): ("projection", "nodes", "centers", "whiten_tril", "counts"),
    ("somad", "lowrank"): ("projection", "nodes", "centers", "counts", *LOWRANK_ARRAYS),
    ("padim", "full"): ("projection", "means", "whiten_tril"),
    ("padim", "lowrank"): ("projection", "means", "whiten_tril"),  # PaDiM ignores the head setting
}


@dataclass(frozen=True)
class FittedArrays:
    """Everything fit produces besides the backbone (whose weights come from their package/file)."""

    projection: np.ndarray  # (d, C)
    whiten: np.ndarray | None  # (M, d, d) lower triangular; None for the low-rank head
    nodes: np.ndarray | None = None  # somad (M, d): search keys for top-k
    centers: np.ndarray | None = None  # somad (M, d): Mahalanobis centres
    counts: np.ndarray | None = None  # somad (M,)
    means: np.ndarray | None = None  # padim (N, d)
    # score_norm != none: per-position mean / std of the training images' patch distances (N,)
    norm_mean: np.ndarray | None = None
    norm_std: np.ndarray | None = None
    # head=lowrank (edge_somad/lowrank.py): z = x @ transform (d, d), the search's rotation (d, d);
    # per node basis (M, r, d), coef (M, r), alpha (M,)
    transform: np.ndarray | None = None
    search_rotation: np.ndarray | None = None
    basis: np.ndarray | None = None
    coef: np.ndarray | None = None
    alpha: np.ndarray | None = None


def held_whitening(whiten: np.ndarray) -> np.ndarray:
    """The whitening factors at the precision every graph and backend holds them: float16 values, as float32.

    They are ~90 % of a graph's bytes, so the exported graph stores them in float16
    (export/onnx_graph.store_half, lossless on these values) and model.Head scores with the same
    rounded numbers; the int8 refit (calibration/int8_stats) finds and replaces them by this rule.
    Distances still accumulate in float32; on bottle they move by 3e-5 (median) / 7e-5 (max) relative.
    """
    return np.asarray(whiten).astype(np.float16).astype(np.float32)


def save_model(out_dir: Path, config: FitConfig, arrays: FittedArrays, split: dict[str, Any],
               fit_info: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"projection": arrays.projection}
    if arrays.whiten is not None:
        rows, cols = np.tril_indices(arrays.whiten.shape[-1])
        payload["whiten_tril"] = arrays.whiten[:, rows, cols]
    for name in ("nodes", "centers", "counts", "means", "norm_mean", "norm_std", *LOWRANK_ARRAYS):
        value = getattr(arrays, name)
        if value is not None:
            payload[name] = value
    tmp = out_dir / (ARRAYS_NAME + ".tmp.npz")
    np.savez(tmp, **payload)
    tmp.replace(out_dir / ARRAYS_NAME)
    write_json(out_dir / CONFIG_NAME, config.to_dict())
    write_json(out_dir / SPLIT_NAME, split)
    write_json(out_dir / FIT_INFO_NAME, fit_info)


def load_config(model_dir: Path) -> FitConfig:
    return FitConfig.from_dict(read_json(Path(model_dir) / CONFIG_NAME))


def load_arrays(model_dir: Path, config: FitConfig) -> FittedArrays:
    path = Path(model_dir) / ARRAYS_NAME
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: {model_dir} is not a fitted model (run edge-somad fit)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"{path} is corrupt ({exc}); re-run edge-somad fit") from exc
    required = _REQUIRED[config.method, config.head] + (("norm_mean", "norm_std") if config.score_norm != "none"
                                                        else ())
    missing = [k for k in required if k not in data]
    if missing:
        raise ArtifactError(f"{path} lacks arrays {missing} needed by method={config.method}, head={config.head}; "
                            "re-run fit")
    d = data["projection"].shape[0]
    if "whiten_tril" not in data:  # the low-rank head keeps no d x d factors
        if d != config.d:
            raise ArtifactError(f"{path}: projection has d={d}, but config.json says d={config.d}")
        return FittedArrays(whiten=None, **{k: data[k] for k in data})
    tril = data.pop("whiten_tril")
    if d != config.d or tril.shape[-1] != d * (d + 1) // 2:
        raise ArtifactError(
            f"{path}: projection has d={d} and whitening {tril.shape}, but config.json says d={config.d}"
        )
    whiten = np.zeros((tril.shape[0], d, d), np.float32)
    rows, cols = np.tril_indices(d)
    whiten[:, rows, cols] = tril
    return FittedArrays(whiten=whiten, **{k: data[k] for k in data})


def model_bytes(model_dir: Path) -> int:
    """Bytes of the fitted state (arrays + JSON); the backbone ships in its own package."""
    names = (ARRAYS_NAME, CONFIG_NAME, SPLIT_NAME, FIT_INFO_NAME)
    return sum((Path(model_dir) / n).stat().st_size for n in names if (Path(model_dir) / n).is_file())
