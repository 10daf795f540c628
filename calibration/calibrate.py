"""Calibration's library side: set the pass/fail threshold from good images the SOM never saw.

The `edge-somad calibrate` command (edge_somad/cli/calibrate.py) parses its options and calls run_calibrate.

Writes manifest.threshold and manifest.calibration only; the graph is untouched, so recalibrating
never forces a re-export. Heavy imports (cv2, scipy, onnxruntime, torch) live in function bodies
so `edge-somad --help` works on any box.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_somad.calibration.frames import (
    SCORE_BATCH,
    load_good_frames,
    open_model_scorer,
    score_all,
)
from edge_somad.calibration.int8_step import quantize_and_check
from edge_somad.calibration.report import format_table
from edge_somad.contracts.decision import fails
from edge_somad.contracts.layout import read_fit_info
from edge_somad.errors import ArtifactError, ConfigError, EdgeSomadError

if TYPE_CHECKING:
    import numpy as np

    from edge_somad.contracts.manifest import Manifest
    from edge_somad.runtime.scorers.scorer import Scorer

log = logging.getLogger(__name__)

METHODS = ("robust", "empirical", "chi2")
# Chosen on the development suite's mean (docs/results.md, "Development suite"): at the 0.5 % target the
# robust rule let fewer defects pass (25 % vs 32 %) at a lower test FRR (4.3 % vs 4.7 %).
DEFAULT_METHOD = "robust"
CALIBRATION_NAMES = {"robust": "robust-normal", "empirical": "empirical-quantile", "chi2": "chi2"}


def run_calibrate(
    model: Path, target_frr: float, calibration_dir: Path | None, method: str, pixel_quantile: float,
    min_area: int | None, int8: bool, backend: str, calibration_video: Path | None = None,
) -> Manifest:
    """The command's work, raising EdgeSomadError subclasses; prints the table (and int8 report)."""
    from edge_somad.contracts.manifest import load_manifest

    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is unknown; expected one of {METHODS}")
    manifest = load_manifest(model)
    frames, source = load_good_frames(model, manifest, calibration_dir, calibration_video)
    patch_sq, reason = patch_sq_distances(model, frames)
    scorer = open_model_scorer(model, backend)
    try:
        manifest = calibrate_model(model, frames, target_frr, method, pixel_quantile, min_area, scorer,
                                   patch_sq_distances=patch_sq, source=source, chi2_skip_reason=reason)
    finally:
        scorer.close()
    print(format_table(manifest))
    for warning in manifest.calibration.details.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if int8:
        manifest = quantize_and_check(model, frames, target_frr, source, pixel_quantile)
    return manifest


def calibrate_model(
    model_dir: Path,
    good_frames: np.ndarray,
    target_frr: float,
    method: str,
    pixel_quantile: float,
    min_area: int | None,
    scorer: Scorer,
    *,
    patch_sq_distances: np.ndarray | None = None,
    source: str = "",
    chi2_skip_reason: str = "no patch distances given",
) -> Manifest:
    """Score good frames, set threshold/pixel threshold/min area, save and return the manifest.

    good_frames: (N, H, W, 3) uint8 BGR, already resized. patch_sq_distances: (N, h, w) squared
    patch distances from the torch model, for the chi2 report and method (optional).
    """
    import dataclasses

    from edge_somad.calibration import selfcheck
    from edge_somad.calibration import threshold as th
    from edge_somad.contracts.manifest import Calibration, load_manifest, save_manifest

    if method not in METHODS:
        raise ConfigError(f"method {method!r} is unknown; expected one of {METHODS}")
    manifest = load_manifest(model_dir)
    scores, maps = score_all(scorer, good_frames)
    empirical = th.empirical_threshold(scores, target_frr)
    report = th.chi2_fit_report(patch_sq_distances, _d(manifest)) if patch_sq_distances is not None else None
    if method == "chi2":
        estimate = _chi2_estimate(model_dir, manifest, scores, maps, target_frr, patch_sq_distances, report)
    elif method == "robust":
        estimate = th.robust_threshold(scores, target_frr)
    else:
        estimate = empirical
    pix = th.pixel_threshold(maps, pixel_quantile)
    # Boxes are drawn at the box level (runtime/pipeline/defects.box_threshold: never below the image
    # threshold), so the smallest defect region is measured on the good maps at that level too.
    from edge_somad.runtime.pipeline.defects import box_threshold

    area = th.min_defect_area(maps, box_threshold(pix, estimate.threshold) or pix, min_area)
    details: dict[str, Any] = {
        **dataclasses.asdict(estimate),
        "source": source,
        "scorer": f"{scorer.backend} fp32 on {scorer.device}",
        "good_scores": {"min": float(scores.min()), "median": _median(scores), "max": float(scores.max())},
        "pixel_rule": f"quantile {pixel_quantile} of all good-map pixels (an observed value)",
        "min_area_rule": "given by the user" if min_area is not None
        else "largest 8-connected region >= the box level (max of pixel and image threshold) on any good map + 1",
        "chi2_fit": report if report is not None else {"skipped": chi2_skip_reason},
    }
    if method != "empirical":
        details["empirical"] = dataclasses.asdict(empirical)
    details["warnings"] = th.calibration_warnings(scores, target_frr)
    for warning in details["warnings"]:
        log.warning("calibrate: %s", warning)
    details["self_check"] = selfcheck.self_check(lambda f: score_all(scorer, f)[0], good_frames, scores,
                                                 estimate.threshold, manifest.preprocessing.pad_value)
    calibration = Calibration(
        method=CALIBRATION_NAMES[method],
        target_frr=float(target_frr),
        n_images=len(scores),
        pixel_threshold=pix,
        min_defect_area_px=area,
        details=details,
    )
    manifest = dataclasses.replace(manifest.with_calibration(estimate.threshold, calibration),
                                   reference=_reference(manifest, scores, good_frames, source))
    save_manifest(model_dir, manifest)
    return manifest


def _reference(manifest: Manifest, scores: np.ndarray, good_frames: np.ndarray, source: str) -> dict[str, Any]:
    """Line-health references for `run`: the good scores' quantiles (score drift), and the input
    statistics of these good frames when the fit did not store them (models fitted before)."""
    from edge_somad.runtime.health import drift

    ref = dict(manifest.reference)
    ref["scores"] = drift.score_reference(scores, f"{len(scores)} good calibration images ({source}), fp32")
    if not ref.get("input"):
        ref["input"] = drift.input_reference(good_frames, f"{len(good_frames)} good calibration images")
    return ref


def _d(manifest: Manifest) -> int:
    d = manifest.model.get("d")
    if not isinstance(d, int) or d < 1:
        raise ArtifactError(
            f"manifest.model['d'] is {d!r}; expected the projected feature dimension (int >= 1). "
            "Re-export the model, or use --method empirical."
        )
    return d


def _median(x: np.ndarray) -> float:
    import numpy as np

    return float(np.median(x))


def _chi2_estimate(
    model_dir: Path, manifest: Manifest, scores: np.ndarray, maps: np.ndarray, target_frr: float,
    patch_sq: np.ndarray | None, report: dict[str, Any] | None,
) -> Any:
    """chi2 image threshold (union bound over patches), with its FRR checked on the good scores."""
    import numpy as np

    norm = manifest.model.get("score_norm", "none")
    if norm != "none":
        # chi2(d) describes raw squared Mahalanobis distances; this model's score is in z units.
        raise ConfigError(
            f"--method chi2 sets a threshold on raw Mahalanobis distances, but {model_dir} scores "
            f"per-position standardised distances (score_norm={norm}). Use --method robust or empirical, or "
            "fit with --score-norm none to use chi2."
        )

    from edge_somad.calibration import threshold as th

    # The number of patches behind one score: the patch grid if known, else every map pixel (more
    # terms in the union bound, so a higher, still valid threshold).
    if patch_sq is not None:
        n_patches, where = int(np.prod(patch_sq.shape[1:])), "patch grid of the torch model"
    elif _feature_grid(model_dir, manifest):
        n_patches, where = int(np.prod(_feature_grid(model_dir, manifest))), "the model's feature_grid"
    else:
        n_patches, where = int(np.prod(maps.shape[1:])), "map pixels (grid unknown; conservative)"
    scale = report["scale_estimate"] if report else 1.0
    thr = th.image_chi2_threshold(_d(manifest), target_frr, n_patches, scale)
    rejects = int(np.count_nonzero(fails(scores, thr)))
    upper = th.clopper_pearson_upper(rejects, len(scores))
    note = (
        f"chi2({_d(manifest)}) x scale {scale:.3g}, union bound over {n_patches} patches ({where}); "
        f"{rejects}/{len(scores)} good images rejected by it (95% upper bound {upper:.1%})."
    )
    if report is not None and not report["fits"]:
        note += f" chi2 does NOT fit (KS {report['ks_statistic']:.2f}): prefer --method empirical."
    return th.ThresholdEstimate(thr, float(target_frr), len(scores), rejects / len(scores), upper, note)


def _feature_grid(model_dir: Path, manifest: Manifest) -> list[int] | None:
    """[h, w] of the patch grid: manifest.model (export writes it), else fit_info.json."""
    grid = manifest.model.get("feature_grid")
    if grid is None:
        grid = read_fit_info(model_dir).get("feature_grid")
    return grid if isinstance(grid, list) and len(grid) == 2 else None


def patch_sq_distances(model_dir: Path, frames: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Squared patch distances (N, h, w) from the torch model, or (None, why not). Never raises."""
    try:
        import torch

        from edge_somad.model import load_torch_model
    except ImportError as exc:
        reason = f"torch model unavailable ({exc})"
        log.warning("chi2 fit report skipped: %s", reason)
        return None, reason
    try:
        net = load_torch_model(model_dir)
    except EdgeSomadError as exc:  # e.g. an edge box with manifest + ONNX but no arrays.npz
        reason = f"cannot rebuild the torch model from {model_dir} ({exc})"
        log.warning("chi2 fit report skipped: %s", reason)
        return None, reason
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), SCORE_BATCH):
            dist = net.patch_distances(torch.from_numpy(frames[i:i + SCORE_BATCH])).double()
            out.append((dist * dist).numpy())
    import numpy as np

    return np.concatenate(out), ""


