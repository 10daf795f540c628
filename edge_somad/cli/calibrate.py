"""`edge-somad calibrate`: the command's options; the work is calibration/calibrate.py's run_calibrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_somad.calibration.calibrate import DEFAULT_METHOD, run_calibrate
from edge_somad.cli.options import handle_errors
from edge_somad.contracts import defaults


@handle_errors
def calibrate(
    model: Annotated[Path, typer.Option("--model", help="Model directory (manifest.json, model.onnx).")],
    target_frr: Annotated[float, typer.Option("--target-frr", help="Target false-reject rate on good parts.")]
    = defaults.TARGET_FRR,
    calibration_dir: Annotated[
        Path | None,
        typer.Option("--calibration-dir", help="Folder of good images to use instead of the held-out split."),
    ] = None,
    calibration_video: Annotated[
        Path | None,
        typer.Option("--calibration-video", help="Video of good parts recorded on the line (commissioning): "
                     "up to 200 frames spread over it set the threshold."),
    ] = None,
    method: Annotated[str, typer.Option(
        "--method", help="robust (median + z*MAD) | empirical (quantile, max + margin) | chi2 (Gaussian theory)."
    )] = DEFAULT_METHOD,
    pixel_quantile: Annotated[
        float, typer.Option("--pixel-quantile", help="Quantile of good-map pixels for the pixel threshold.")
    ] = defaults.PIXEL_QUANTILE,
    min_area: Annotated[
        int | None,
        typer.Option("--min-area", help="Min defect region, px; default: largest on good maps + 1."),
    ] = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also write model.int8.onnx.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="Scorer backend for the fp32 scores.")]
    = "onnxruntime",
) -> None:
    """Set the pass/fail threshold (manifest.json) from held-out good images; optionally quantize to INT8."""
    run_calibrate(model, target_frr, calibration_dir, method, pixel_quantile, min_area, int8, backend,
                  calibration_video=calibration_video)
