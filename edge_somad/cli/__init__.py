"""The `edge-somad` command line. Commands only parse options and call library functions.

Heavy packages (torch, cv2, zmq, onnxruntime, tensorrt) are imported inside command bodies, so
`edge-somad --help` works on a bare edge box. Every command is registered behind the one error
handler (cli/options.py; exit codes in contracts/exits.py: 0 done, 1 outcome not reached, 2 error).

This package holds commands and their options only: fit, export, build-engine, evaluate and demo
here; calibrate, bench, runtime (run, subscribe, keys, view) and bridge (mqtt, opcua) beside it.
The work each command does is a library function elsewhere (workflows.py lists the steps').
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge_somad.cli.calibrate import calibrate
from edge_somad.cli.options import handle_errors
from edge_somad.cli.runtime import keys, run, subscribe, view
from edge_somad.config import FitConfig, InputSpec, SomConfig
from edge_somad.contracts import defaults

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
DataRoot = Annotated[Path | None, typer.Option(help="Folder holding CATEGORY/train/good (MVTec layout).")]


def fit(
    category: Annotated[str, typer.Option(help="MVTec category, or hazelnut_toy (bundled).")] = "hazelnut_toy",
    data_root: DataRoot = None,
    out: Annotated[Path | None, typer.Option(help="Model directory [models/CATEGORY].")] = None,
    backbone: Annotated[str, typer.Option(help="efficientnet-lite0|1|2 or wide_resnet50_2.")] = FitConfig.backbone,
    weights: Annotated[str | None, typer.Option(help="torchvision .pth for wide_resnet50_2.")] = None,
    height: Annotated[int, typer.Option(help="Model input height (multiple of 16).")] = InputSpec.height,
    width: Annotated[int, typer.Option(help="Model input width (multiple of 16).")] = InputSpec.width,
    resize: Annotated[str, typer.Option(help="letterbox | crop | stretch (stretch distorts).")] = InputSpec.resize,
    method: Annotated[str, typer.Option(
        help="auto (SOMAD or PaDiM, picked by a self-check on synthetic defects) | somad | padim (baseline)."
    )] = "auto",
    d: Annotated[int, typer.Option(help="Projected feature dimension.")] = FitConfig.d,
    projection: Annotated[str, typer.Option(help="gaussian | subset | none.")] = FitConfig.projection,
    som_size: Annotated[int, typer.Option(
        help="SOM grid K (KxK); 0 = feature grid capped at 3136 nodes.")] = SomConfig.rows,
    topk: Annotated[int, typer.Option(help="Nearest SOM nodes searched per patch.")] = FitConfig.topk,
    head: Annotated[str, typer.Option(
        help="SOMAD's node covariance: full (d x d per node) | lowrank (pooled whitening + rank-r per node; "
        "faster, docs/results.md).")] = FitConfig.head,
    head_rank: Annotated[int, typer.Option(help="lowrank: directions kept per node.")] = FitConfig.head_rank,
    search_share: Annotated[float, typer.Option(
        help="lowrank: share of the d coordinates the node search uses (1 = all, exact).")] = FitConfig.search_share,
    score_norm: Annotated[str, typer.Option(
        help="none: raw distances; zscore: standardise each position by the training maps (auto picks it)."
    )] = FitConfig.score_norm,
    image_score_top: Annotated[float, typer.Option(
        help="Image score = mean of this share of the map's hottest pixels (0 = the maximum)."
    )] = FitConfig.image_score_top,
    seed: int = FitConfig.seed,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Fit SOMAD (or the PaDiM baseline) on good training images."""
    from edge_somad.workflows import fit_from_cli

    info = fit_from_cli(category, data_root, out, backbone, weights, height, width, resize, method, d,
                        projection, som_size, topk, score_norm, image_score_top, seed, device,
                        head=head, head_rank=head_rank, search_share=search_share)
    typer.echo(json.dumps(info, indent=2))
    if "selection" in info:
        from edge_somad.selection_rule import one_line

        # On stderr, so stdout stays one JSON document for scripts.
        typer.echo(one_line(info["selection"]), err=True)


def evaluate(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    category: Annotated[str | None, typer.Option(help="[the one it was fitted on]")] = None,
    data_root: DataRoot = None,
    backend: Annotated[str, typer.Option(help="torch | onnxruntime | tensorrt.")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8.")] = "fp32",
    report: Annotated[Path | None, typer.Option(help="Report JSON [MODEL/report.json].")] = None,
    pictures: Annotated[Path | None, typer.Option(help="PNG folder [MODEL/pictures].")] = None,
) -> None:
    """Image/pixel AUROC, PRO, confusion at the threshold; writes a report and PNG pictures."""
    from edge_somad.evaluate import format_table
    from edge_somad.workflows import evaluate_from_cli

    result = evaluate_from_cli(model, category, data_root, backend, precision, report, pictures)
    typer.echo(format_table(result))


def export(
    category: Annotated[str | None, typer.Option(help="Fit this category first if MODEL has no fit.")] = None,
    model: Annotated[Path | None, typer.Option("--model", "--out", help="Model dir [models/CATEGORY].")] = None,
    data_root: DataRoot = None,
    trt: Annotated[bool | None, typer.Option("--trt/--no-trt", help="Build a TensorRT engine [auto].")] = None,
    precision: Annotated[str, typer.Option(help="TensorRT precision: fp16 | int8 | fp32.")] = defaults.ENGINE_PRECISION,
    target_frr: Annotated[float, typer.Option(help="Calibrate at this false-reject rate.")] = defaults.TARGET_FRR,
) -> None:
    """Fused ONNX graph + manifest (+ threshold when not calibrated yet, + TensorRT engine on a GPU).

    An existing calibration (thresholds of every precision, the int8 graph) is kept as it is."""
    from edge_somad.workflows import export_from_cli

    manifest = export_from_cli(category, model, data_root, trt, precision, target_frr)
    typer.echo(json.dumps({"onnx": manifest.onnx, "sha256": manifest.onnx_sha256, "threshold": manifest.threshold,
                           "engines": [e.path for e in manifest.engines], **manifest.model}, indent=2))


def build_engine(
    model: Annotated[Path, typer.Option("--model", help="Exported model directory (manifest.json).")],
    precision: Annotated[str, typer.Option(
        help="fp16 (from model.onnx) | int8 (from model.int8.onnx, `calibrate --int8` first) | fp32.")
    ] = defaults.ENGINE_PRECISION,
    max_batch: Annotated[int, typer.Option(
        help="Largest batch the engine accepts (cameras scored together).")] = defaults.MAX_BATCH,
    workspace_gb: Annotated[float, typer.Option(help="TensorRT builder workspace, GiB.")] = defaults.WORKSPACE_GB,
) -> None:
    """TensorRT engine for THIS GPU from the exported graph; recorded in manifest.engines. Needs a GPU."""
    from edge_somad.workflows import build_engine_from_cli

    info = build_engine_from_cli(model, precision, max_batch, workspace_gb)
    typer.echo(json.dumps(dataclasses.asdict(info), indent=2))


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo model goes.")] = Path("models/hazelnut_toy"),
    publish: Annotated[str, typer.Option(help="ZeroMQ PUB endpoint.")] = defaults.ENDPOINT,
    curve: Annotated[bool, typer.Option("--curve", help="Stream with CURVE (keys made in OUT/keys).")] = False,
) -> None:
    """The main job on the bundled Hazelnut Toy sample: fit -> export -> calibrate -> run -> verdicts."""
    from edge_somad.demo import run_demo

    raise typer.Exit(run_demo(out, publish, curve))


def _register() -> None:
    """The steps in their order, then the tools; all behind handle_errors (bridge's own sub-app too)."""
    from edge_somad.cli.bench import bench
    from edge_somad.cli.bridge import app as bridge_app
    from edge_somad.cli.trigger import trigger

    for name, command in (("fit", fit), ("export", export), ("calibrate", calibrate),
                          ("build-engine", build_engine), ("evaluate", evaluate), ("run", run),
                          ("subscribe", subscribe), ("keys", keys), ("view", view), ("demo", demo),
                          ("bench", bench), ("trigger", trigger)):
        app.command(name)(handle_errors(command))
    app.add_typer(bridge_app, name="bridge")


_register()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app()

