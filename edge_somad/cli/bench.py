"""`edge-somad bench`: the command's options; the work is edge_somad/bench/scorers.py's run_bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_somad.bench.scorers import DEFAULT_BACKENDS, run_bench
from edge_somad.cli.options import handle_errors


@handle_errors
def bench(
    model: Annotated[Path, typer.Option("--model", help="Exported model directory (manifest.json).")],
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", help=f"Repeatable. Default: {', '.join(DEFAULT_BACKENDS)}.")] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32 | fp16 | int8 (the torch row is always fp32).")] = "fp32",
    batch: Annotated[list[int] | None, typer.Option("--batch", help="Repeatable. Default: 1, 4.")] = None,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per batch size.")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls first.")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all results as JSON here.")] = None,
    pipeline: Annotated[bool, typer.Option(
        "--pipeline", help="Also time the streaming pipeline (capture -> ZeroMQ) per backend.")] = False,
    video: Annotated[Path | None, typer.Option(
        "--video", help="Clip for --pipeline, --cameras and --triggers, or a folder of images (e.g. DATA/<category>/"
        "test/good: the model's own parts at their own size). Default: the bundled sample's test images at "
        "640x480, which are not your model's parts (most verdicts then fail and carry a heatmap).")] = None,
    curve: Annotated[bool, typer.Option(
        "--curve", help="--pipeline with CURVE on both ends (throwaway keys): the cost of encryption.")] = False,
    cameras: Annotated[list[int] | None, typer.Option(
        "--cameras", help="Repeatable: time the whole pipeline with N looping replays of the clip as cameras "
        "(--iters frames each), against the bare scorer's best frames/s over batch 1, 2, 4, 8.")] = None,
    fps: Annotated[float | None, typer.Option(
        "--fps", help="With --cameras: also run each count at this line rate per camera (frames/s): latency "
        "at that rate and frames dropped.")] = None,
    phase: Annotated[str, typer.Option(
        "--phase", help="With --fps: aligned (cameras tick together), independent (free-running cameras, "
        "random phases with a fixed seed) or both (a row each).")] = "both",
    triggers: Annotated[str | None, typer.Option(
        "--triggers", help="Trigger rates per second, comma-separated (e.g. 5,20): trigger -> verdict latency "
        "p50/p99 of a triggered pipeline, --iters triggers per rate (docs/triggers.md).")] = None,
) -> None:
    """Latency (p50/p99 at batch 1), throughput (best batch) and model size per backend."""
    from edge_somad.bench.triggers import parse_rates

    run_bench(model, backend, precision, batch, iters, warmup, json_out, pipeline, video, curve, cameras, fps,
              say=typer.echo, phase=phase, triggers=parse_rates(triggers) if triggers is not None else None)
