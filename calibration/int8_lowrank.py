"""Quantization-aware statistics for the low-rank head (edge_somad/lowrank.py).

The same refit as calibration/int8_stats.py: the int8 graph's own projected features of the fit
images, each patch assigned to its best-matching SOM node as in fit, the same regularised
covariances (stats.node_covariances), then the low-rank factors. The head's coordinates (the pooled
whitening and the search axes, one `transform` initializer) and the SOM nodes stay those of the fp32
fit, so the int8 graph searches exactly as the fp32 one; only the centres and the per-node factors
(basis, coef, alpha) of the int8 graph are replaced. model.onnx is untouched.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edge_somad.calibration.int8_stats import find_initializer, int8_features, refit_norm, replace_initializer
from edge_somad.errors import ArtifactError

if TYPE_CHECKING:
    from edge_somad.artifacts import FittedArrays
    from edge_somad.config import FitConfig

log = logging.getLogger(__name__)
FACTORS = ("centers", "basis", "coef", "alpha")


def refit_head_statistics(model_dir: Path, int8_path: Path, fit_frames: np.ndarray) -> dict[str, object]:
    """The int8 statistics refit of the model's own head: low-rank here, the others in int8_stats."""
    from edge_somad.artifacts import load_arrays, load_config
    from edge_somad.calibration.int8_stats import refit_statistics

    config = load_config(model_dir)
    if config.method == "somad" and config.head == "lowrank":
        return refit_lowrank(model_dir, int8_path, fit_frames, config, load_arrays(model_dir, config))
    return refit_statistics(model_dir, int8_path, fit_frames)


def feature_input(model: onnx.ModelProto, transform: str) -> str:
    """The projected-feature tensor: the first input of the MatMul that applies the head's transform."""
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] == transform:
            return node.input[0]
    raise ArtifactError(f"found the low-rank transform {transform!r} but no MatMul(features, {transform}); "
                        "expected the graph `edge-somad export` writes. Re-export and calibrate again.")


def refit_lowrank(model_dir: Path, int8_path: Path, fit_frames: np.ndarray, config: FitConfig,
                  arrays: FittedArrays) -> dict[str, object]:
    """Replace the low-rank factors of int8_path with those of its own features; returns a report."""
    import torch

    from edge_somad.lowrank import lowrank_factors
    from edge_somad.model import Head
    from edge_somad.som import best_matching_units
    from edge_somad.stats import node_covariances

    model = onnx.load(str(int8_path))
    head = Head(arrays, config)  # the buffers exactly as export wrote them
    names = {k: find_initializer(model, getattr(head, k).numpy(), f"low-rank {k}")
             for k in ("transform", *FACTORS)}
    feats = torch.from_numpy(int8_features(model, feature_input(model, names["transform"]),
                                           model.graph.input[0].name, fit_frames))
    flat = feats.reshape(-1, feats.shape[-1])
    nodes = torch.from_numpy(arrays.nodes)
    centroid, cov, _, _ = node_covariances(flat, best_matching_units(flat, nodes), nodes, config.eps,
                                           config.shrinkage)
    t = torch.from_numpy(arrays.transform).to(torch.float64)
    basis, coef, alpha = lowrank_factors(t.T @ cov @ t, config.head_rank)
    int8_arrays = dataclasses.replace(arrays, centers=centroid.float().numpy(), basis=basis.float().numpy(),
                                      coef=coef.float().numpy(), alpha=alpha.float().numpy())
    refit = Head(int8_arrays, config)
    for k in FACTORS:
        replace_initializer(model, names[k], getattr(refit, k).numpy())
    tensors = [names[k] for k in FACTORS]
    if config.score_norm != "none":
        tensors += refit_norm(model, arrays, int8_arrays, config, feats)
    onnx.save(model, str(int8_path))
    shift = float(np.linalg.norm(int8_arrays.centers - arrays.centers, axis=-1).mean())
    log.info("int8 low-rank statistics refit on %d images; mean centre shift %.4g", len(fit_frames), shift)
    return {"images": len(fit_frames), "patches": int(feats.shape[0] * feats.shape[1]), "tensors": tensors,
            "mean_center_shift": shift}
