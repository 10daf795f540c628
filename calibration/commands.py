"""`edge-somad calibrate`: set the pass/fail threshold from good images the SOM never saw.

Writes manifest.threshold and manifest.calibration only; the graph is untouched, so recalibrating
never forces a re-export. Heavy imports (cv2, scipy, onnxruntime, torch) live in function bodies
so `edge-somad --help` works on any box.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edge_somad.calibration.report import format_table
from edge_somad.contracts.decision import fails
from edge_somad.contracts.exits import handle_errors
from edge_somad.contracts.layout import SPLIT_NAME, read_fit_info, split_paths
from edge_somad.contracts.names import IMAGE_SUFFIXES
from edge_somad.errors import ArtifactError, ConfigError, DatasetError, EdgeSomadError

if TYPE_CHECKING:
    import numpy as np

    from edge_somad.contracts.manifest import Manifest
    from edge_somad.runtime.scorer import Scorer

log = logging.getLogger(__name__)

METHODS = ("robust", "empirical", "chi2")
# Chosen on the development suite's mean (README, "Development suite"): at the 0.5 % target the
# robust rule let fewer defects pass (25 % vs 32 %) at a lower test FRR (4.3 % vs 4.7 %).
DEFAULT_METHOD = "robust"
CALIBRATION_NAMES = {"robust": "robust-normal", "empirical": "empirical-quantile", "chi2": "chi2"}
INT8_MAX_FRAMES = 64
SCORE_BATCH = 8


@handle_errors
def calibrate(
    model: Annotated[Path, typer.Option("--model", help="Model directory (manifest.json, model.onnx).")],
    target_frr: Annotated[float, typer.Option("--target-frr", help="Target false-reject rate on good parts.")]
    = 0.005,
    calibration_dir: Annotated[
        Path | None,
        typer.Option("--calibration-dir", help="Folder of good images to use instead of the held-out split."),
    ] = None,
    method: Annotated[str, typer.Option(
        "--method", help="robust (median + z*MAD) | empirical (quantile, max + margin) | chi2 (Gaussian theory)."
    )] = DEFAULT_METHOD,
    pixel_quantile: Annotated[
        float, typer.Option("--pixel-quantile", help="Quantile of good-map pixels for the pixel threshold.")
    ] = 0.999,
    min_area: Annotated[
        int | None,
        typer.Option("--min-area", help="Min defect region, px; default: largest on good maps + 1."),
    ] = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write model.int8.onnx.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="Scorer backend for the fp32 scores.")]
    = "onnxruntime",
) -> None:
    """Set the pass/fail threshold (manifest.json) from held-out good images; optionally quantize to INT8."""
    run_calibrate(model, target_frr, calibration_dir, method, pixel_quantile, min_area, int8, backend)


def run_calibrate(
    model: Path, target_frr: float, calibration_dir: Path | None, method: str, pixel_quantile: float,
    min_area: int | None, int8: bool, backend: str,
) -> Manifest:
    """The command's work, raising EdgeSomadError subclasses; prints the table (and int8 report)."""
    from edge_somad.contracts.manifest import load_manifest

    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is unknown; expected one of {METHODS}")
    manifest = load_manifest(model)
    frames, source = load_good_frames(model, manifest, calibration_dir)
    patch_sq, reason = patch_sq_distances(model, frames)
    scorer = open_model_scorer(model, backend)
    try:
        manifest = calibrate_model(model, frames, target_frr, method, pixel_quantile, min_area, scorer,
                                   patch_sq_distances=patch_sq, source=source, chi2_skip_reason=reason)
    finally:
        scorer.close()
    typer.echo(format_table(manifest))
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
    area = th.min_defect_area(maps, pix, min_area)
    details: dict[str, Any] = {
        **dataclasses.asdict(estimate),
        "source": source,
        "scorer": f"{scorer.backend} fp32 on {scorer.device}",
        "good_scores": {"min": float(scores.min()), "median": _median(scores), "max": float(scores.max())},
        "pixel_rule": f"quantile {pixel_quantile} of all good-map pixels (an observed value)",
        "min_area_rule": "given by the user" if min_area is not None
        else "largest 8-connected region >= pixel threshold on any good map + 1",
        "chi2_fit": report if report is not None else {"skipped": chi2_skip_reason},
    }
    if method != "empirical":
        details["empirical"] = dataclasses.asdict(empirical)
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
    from edge_somad.runtime import drift

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


def score_all(scorer: Scorer, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and maps (N, H, W) float32 for a stack of frames, in batches the scorer accepts."""
    import numpy as np

    from edge_somad.evaluate import score_timed

    batch = min(SCORE_BATCH, getattr(scorer, "max_batch", None) or SCORE_BATCH)
    scores, maps, _ = score_timed(scorer, frames, batch)
    return scores.astype(np.float32), maps.astype(np.float32)


def open_model_scorer(model_dir: Path, backend: str, precision: str = "fp32") -> Scorer:
    from edge_somad.runtime.backends import open_scorer

    return open_scorer(model_dir, backend, precision)


def load_good_frames(
    model_dir: Path, manifest: Manifest, calibration_dir: Path | None
) -> tuple[np.ndarray, str]:
    """Resized uint8 BGR frames of the good calibration images, and a description of their source."""
    from edge_somad.data import read_frames

    if calibration_dir is not None:
        paths = image_files(calibration_dir)
        source = f"{len(paths)} good images from {calibration_dir}"
    else:
        paths = split_paths(model_dir, "holdout")
        if not paths:
            raise DatasetError(
                f"{Path(model_dir) / SPLIT_NAME} lists 0 held-out good images "
                "(fit with holdout_fraction=0?). "
                "Pass --calibration-dir with good images the model never saw, or re-fit with a holdout."
            )
        source = f"{len(paths)} held-out good images (split.json)"
    return read_frames(paths, manifest), source


def load_holdout_frames(model_dir: Path) -> np.ndarray:
    """Resized uint8 BGR frames of split.json's held-out good images (for export/evaluate workflows)."""
    from edge_somad.contracts.manifest import load_manifest

    return load_good_frames(model_dir, load_manifest(model_dir), None)[0]


def image_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"--calibration-dir {folder} is not a folder; expected a folder of good images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files; expected good part images")
    return paths


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
                       pixel_quantile: float = 0.999, max_drop: float | None = None) -> Manifest:
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
    typer.echo(
        f"int8             {path.name}: {check['bytes'] / 2**20:.2f} MiB, ranges from {from_where}\n"
        f"int8 statistics  {stats_note}\n"
        f"int8 accuracy    usable: {int8_gate.summary(drop)}\n"
        f"int8 vs fp32     good scores {check['score_rel_diff_median']:+.1%} (median), "
        f"{check['good_rejected_at_fp32_threshold']}/{len(s8)} good rejected at the fp32 threshold\n"
        f"int8 threshold   {est.threshold:.6g} (same rule, int8 scores; manifest.precision_thresholds.int8), "
        f"pixel {pixel8:.6g} (int8 maps; manifest.precision_pixel_thresholds.int8)"
    )
    return manifest
