"""`edge-somad bench`: the typer command around edge_somad.bench (registered by cli.py).

Usage: edge-somad bench --model models/bottle --backend onnxruntime --backend tensorrt
       --precision fp16 --batch 1 --batch 4 --iters 100 --json bench.json [--pipeline [--video clip.avi]]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_somad import bench as B

VIDEO_SIZE = (640, 480)  # (width, height) of the generated clip: a VGA camera, so the host resize is real


def bench(
    model: Annotated[Path, typer.Option("--model", help="Exported model directory (manifest.json).")],
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", help=f"Repeatable. Default: {', '.join(B.DEFAULT_BACKENDS)}.")] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32 | fp16 | int8 (the torch row is always fp32).")] = "fp32",
    batch: Annotated[list[int] | None, typer.Option("--batch", help="Repeatable. Default: 1, 4.")] = None,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per batch size.")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls first.")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all results as JSON here.")] = None,
    pipeline: Annotated[bool, typer.Option(
        "--pipeline", help="Also time the streaming pipeline (capture -> ZeroMQ) per backend.")] = False,
    video: Annotated[Path | None, typer.Option(
        "--video", help="Clip for --pipeline; default: made from the bundled test images.")] = None,
) -> None:
    """Latency (p50/p99 at batch 1), throughput (best batch) and model size per backend."""
    backends = list(backend or B.DEFAULT_BACKENDS)
    rows = B.bench_scorers(model, backends, precision, list(batch or [1, 4]), iters, warmup)
    typer.echo(B.format_table(rows))
    sizes = B.model_sizes(model)
    typer.echo("artifacts: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    result: dict[str, Any] = {"model": str(model), "precision": precision, "iters": iters, "warmup": warmup,
                              "sizes": sizes, "results": rows}
    if pipeline:
        result["pipeline"] = _pipeline(model, rows, precision, max(iters, 2), video)
        for p in result["pipeline"]:
            typer.echo(f"pipeline {p['backend']}: " + ", ".join(f"{k}={v}" for k, v in p.items()
                                                                 if k != "backend"))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        typer.echo(f"wrote {json_out}")


def _pipeline(model: Path, rows: list[dict], precision: str, frames: int, video: Path | None) -> list[dict]:
    """bench_pipeline for every backend whose scorer ran (the torch reference is not a runtime backend)."""
    from edge_somad.runtime.pipeline_bench import bench_pipeline

    runnable = [r["backend"] for r in rows if r["status"] == "ok" and r["backend"] != B.TORCH_REF]
    out = []
    with tempfile.TemporaryDirectory(prefix="edge-somad-bench-") as tmp:
        if video is None and runnable:
            video = B.write_video(B.sample_images(), Path(tmp) / "bench.avi", VIDEO_SIZE)
        for name in runnable:
            try:
                out.append({"backend": name, **bench_pipeline(model, video, name, precision, frames)})
            except B.UNAVAILABLE as exc:
                out.append({"backend": name, "unavailable": str(exc)})
    return out
