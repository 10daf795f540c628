"""`calibrate --int8`: write the Q/DQ graph, gate it on its accuracy drop, give it its own thresholds.

Split from commands.py (the fp32 calibration) so each stays small; both read frames and scores
through calibration/frames.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edge_somad.calibration.frames import open_model_scorer, score_all
from edge_somad.contracts import defaults
from edge_somad.contracts.decision import fails
from edge_somad.contracts.layout import split_paths
from edge_somad.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np

    from edge_somad.contracts.manifest import Manifest

log = logging.getLogger(__name__)

INT8_MAX_FRAMES = 64


def int8_frames(
    model_dir: Path, manifest: Manifest, fallback: np.ndarray, source: str
) -> tuple[np.ndarray, str]:
    """Up to 64 frames spread over the training split; the calibration frames if there is none."""
    import numpy as np

    from edge_somad.data import read_frames

    try:
        paths = split_paths(model_dir, "train")
    except ArtifactError:
        paths = []
    if paths:
        idx = np.unique(np.linspace(0, len(paths) - 1, min(INT8_MAX_FRAMES, len(paths))).round().astype(int))
        return read_frames([paths[i] for i in idx], manifest), f"{len(idx)} training-split images"
    log.warning("no training split in %s; INT8 ranges come from the calibration images", model_dir)
    return fallback[:INT8_MAX_FRAMES], f"{min(len(fallback), INT8_MAX_FRAMES)} of the {source}"


def quantize_and_check(model_dir: Path, good_frames: np.ndarray, target_frr: float, source: str,
                       pixel_quantile: float = defaults.PIXEL_QUANTILE, max_drop: float | None = None) -> Manifest:
    """Write model.int8.onnx, measure its accuracy drop, and record it with its own thresholds if usable.

    The int8 graph's statistics are refit on its own features of the fit images when the model dir
    allows (int8_stats.fit_frames_for). Its drop against fp32 is measured on the good frames and
    synthetic defects pasted into them (int8_gate; limit max_drop, default int8_gate.MAX_DROP). Over
    the limit the manifest names no int8 graph — `--precision int8` then refuses to run — and an
    ArtifactError gives the numbers. Usable: its threshold comes from int8 scores of the good frames,
    same rule as fp32: manifest.precision_thresholds["int8"], details in calibration.details; its
    pixel threshold likewise from its own maps: manifest.precision_pixel_thresholds["int8"].
    """
    import dataclasses

    import numpy as np

    from edge_somad.calibration import int8_gate
    from edge_somad.calibration.int8_stats import fit_frames_for
    from edge_somad.calibration.quantize import quantize_int8
    from edge_somad.calibration.threshold import empirical_threshold, pixel_threshold
    from edge_somad.contracts.manifest import load_manifest, save_manifest

    limit = int8_gate.MAX_DROP if max_drop is None else max_drop
    manifest = load_manifest(model_dir)
    frames, from_where = int8_frames(model_dir, manifest, good_frames, source)
    fit_frames, stats_note = fit_frames_for(model_dir, manifest)
    try:
        path = quantize_int8(model_dir, frames, fit_frames=fit_frames)
        gate_set = int8_gate.synthetic_set(good_frames, manifest.preprocessing.pad_value)
        with open_model_scorer(model_dir, "onnxruntime", "fp32") as fp32, \
                open_model_scorer(model_dir, "onnxruntime", "int8") as q8:
            r32, r8 = score_all(fp32, gate_set.frames), score_all(q8, gate_set.frames)
        drop = int8_gate.int8_drop(gate_set, r32, r8, limit)
    except BaseException:
        save_manifest(model_dir, int8_gate.without_int8(load_manifest(model_dir)))  # never left unchecked
        raise
    # The good frames come first in the gate set: their int8 scores and maps set int8's thresholds.
    s32, s8, maps8 = r32[0][:len(good_frames)], r8[0][:len(good_frames)], r8[1][:len(good_frames)]
    rel = (s8 - s32) / np.maximum(np.abs(s32), 1e-12)
    manifest = load_manifest(model_dir)
    est = empirical_threshold(s8, target_frr)
    pixel8 = pixel_threshold(maps8, pixel_quantile)
    check = {
        "file": path.name, "bytes": path.stat().st_size, "calibrated_on": from_where, "statistics": stats_note,
        "usable": drop["usable"], "accuracy_drop": drop,
        "score_rel_diff_median": float(np.median(rel)), "score_rel_diff_max_abs": float(np.abs(rel).max()),
        "good_rejected_at_fp32_threshold":
            None if manifest.threshold is None else int(np.count_nonzero(fails(s8, manifest.threshold))),
        "threshold": est.threshold, "achieved_frr_on_calibration_set": est.achieved_frr_on_calibration_set,
        "frr_upper_95": est.frr_upper_95, "pixel_threshold": pixel8,
    }
    calibration = dataclasses.replace(
        manifest.calibration, details={**manifest.calibration.details, "int8": check})
    if not drop["usable"]:
        save_manifest(model_dir, dataclasses.replace(int8_gate.without_int8(manifest), calibration=calibration))
        raise ArtifactError(
            f"int8 not usable: the {int8_gate.LABELS[drop['worst_metric']]} drop {drop['max_drop']:.4f} exceeds "
            f"{limit}; {int8_gate.summary(drop)}. {path.name} is kept for inspection but manifest.json "
            "no longer names it, so `--precision int8` refuses to run; the fp32 calibration is saved. "
            "Use fp32 (or fp16 on TensorRT), or retry `calibrate --int8` after fitting on more good images."
        )
    thresholds = {**manifest.precision_thresholds, "int8": float(est.threshold)}
    pixel_thresholds = {**manifest.precision_pixel_thresholds, "int8": pixel8}
    manifest = dataclasses.replace(manifest, calibration=calibration, precision_thresholds=thresholds,
                                   precision_pixel_thresholds=pixel_thresholds)
    save_manifest(model_dir, manifest)
    print(
        f"int8             {path.name}: {check['bytes'] / 2**20:.2f} MiB, ranges from {from_where}\n"
        f"int8 statistics  {stats_note}\n"
        f"int8 accuracy    usable: {int8_gate.summary(drop)}\n"
        f"int8 vs fp32     good scores {check['score_rel_diff_median']:+.1%} (median), "
        f"{check['good_rejected_at_fp32_threshold']}/{len(s8)} good rejected at the fp32 threshold\n"
        f"int8 threshold   {est.threshold:.6g} (same rule, int8 scores; manifest.precision_thresholds.int8), "
        f"pixel {pixel8:.6g} (int8 maps; manifest.precision_pixel_thresholds.int8)"
    )
    return manifest
