"""Benchmark the scorers of one model directory in one run: latency, throughput, artifact size.

`edge-somad bench --model models/bottle --backend onnxruntime --backend tensorrt --precision fp16
 --batch 1 --batch 4 --iters 100 --json bench.json [--pipeline [--video clip.avi]] [--cameras 1 --cameras 4]
 [--triggers 5,20]`

Every requested backend gets a row; one that cannot run here is reported as
"unavailable: <reason>" (never silently dropped), so a table from a CPU box and one from a Jetson
differ only in which rows have numbers. The "torch-unfused" row is the same model in eager torch
(TorchScorer) on CPU: the reference the fused ONNX/TensorRT graphs are compared against.
Every table comes with the machine line (CPU, SIMD flags, cores, threads and library of each row),
the graph's FLOP/byte count per frame and each row's achieved GFLOP/s as a fraction of an fp32
GEMM of the same FLOP count timed in the same run (edge_somad.bench.machine, edge_somad.graph_cost).
Heavy modules (onnxruntime, torch, tensorrt, cv2) are imported inside functions.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.errors import (
    ArtifactError,
    BackendUnavailableError,
    ConfigError,
    EngineMismatchError,
    InputError,
)

TORCH_REF = "torch-unfused"
DEFAULT_BACKENDS = (TORCH_REF, "onnxruntime", "tensorrt")
# What "cannot run here" looks like: missing package/GPU, missing artifact, engine for another GPU,
# a precision the backend does not offer. Anything else is a bug and propagates.
UNAVAILABLE = (BackendUnavailableError, ArtifactError, EngineMismatchError, ConfigError, ImportError)

ScorerFactory = Callable[[Path, str, str], Any]  # (model_dir, backend, precision) -> Scorer


def open_for_bench(model_dir: Path, backend: str, precision: str) -> Any:
    """The default factory: TorchScorer for the reference row, runtime.scorers.backends.open_scorer otherwise."""
    if backend == TORCH_REF:
        from edge_somad.runtime.scorers.torch_scorer import TorchScorer

        return TorchScorer(model_dir, device="cpu")
    from edge_somad.runtime.scorers.backends import open_scorer

    return open_scorer(model_dir, backend, precision)


def bench_scorers(model_dir: Path, backends: list[str], precision: str, batches: list[int], iters: int,
                  warmup: int, scorer_factory: ScorerFactory = open_for_bench) -> list[dict]:
    """One row per backend: p50/p99 latency at batch 1, images/s per batch, best batch, model bytes."""
    from edge_somad.bench.machine import cpu_info, scorer_threads
    from edge_somad.contracts.manifest import load_manifest

    _check_args(backends, batches, iters, warmup)
    cpu = cpu_info()
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    h, w = manifest.preprocessing.height, manifest.preprocessing.width
    rng = np.random.default_rng(0)
    frames = {b: rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8) for b in sorted({1, *batches})}
    rows = []
    for backend in backends:
        row_precision = "fp32" if backend == TORCH_REF else precision
        row: dict[str, Any] = {"backend": backend, "precision": row_precision}
        row.update(_artifact(model_dir, manifest, backend, row_precision))
        try:
            scorer = scorer_factory(model_dir, backend, row_precision)
        except UNAVAILABLE as exc:
            rows.append({**row, "status": "unavailable", "reason": str(exc)})
            continue
        try:
            measured = _measure(scorer, frames, batches, iters, warmup)
            rt = scorer_threads(scorer, cpu)
            row.update(status="ok", device=str(scorer.device), **measured, library=rt.library,
                       threads=rt.threads, threads_note=rt.note, gpu=rt.gpu)
        finally:
            scorer.close()
        rows.append(row)
    _add_speedups(rows)
    return rows


def _measure(scorer: Any, frames: dict[int, np.ndarray], batches: list[int], iters: int,
             warmup: int) -> dict[str, Any]:
    lat = _time_calls(scorer, frames[1], iters, warmup)
    per_batch = []
    for b in sorted(set(batches)):
        try:
            t = lat if b == 1 else _time_calls(scorer, frames[b], iters, warmup)
        except InputError as exc:  # e.g. a TensorRT engine built for a smaller max_batch
            per_batch.append({"batch": b, "skipped": str(exc)})
            continue
        per_batch.append({"batch": b, "p50_ms": _ms(np.percentile(t, 50)),
                          "images_per_s": round(b / float(np.median(t)), 2)})
    timed = [r for r in per_batch if "images_per_s" in r]
    best = max(timed, key=lambda r: r["images_per_s"]) if timed else None
    return {
        "latency_ms_p50": _ms(np.percentile(lat, 50)),
        "latency_ms_p99": _ms(np.percentile(lat, 99)),
        "batches": per_batch,
        "best_batch": best["batch"] if best else None,
        "throughput_ips": best["images_per_s"] if best else None,
    }


def _time_calls(scorer: Any, frames: np.ndarray, iters: int, warmup: int) -> np.ndarray:
    """Seconds per score() call; warm-up calls first (allocator, kernel autotuning, caches)."""
    for _ in range(warmup):
        scorer.score(frames)
    out = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        scorer.score(frames)
        out[i] = time.perf_counter() - t0
    return out


def _add_speedups(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["backend"] == TORCH_REF and r["status"] == "ok"), None)
    for r in rows:
        if ref is not None and r["status"] == "ok":
            r["speedup_vs_torch"] = round(ref["latency_ms_p50"] / r["latency_ms_p50"], 2)


def machine_and_cost(model_dir: Path, rows: list[dict], iters: int = 20) -> dict[str, Any]:
    """The machine line, the graph's FLOPs/bytes per frame, a GEMM peak per CPU thread count; annotates rows.

    Each ok row gains achieved_gflops (graph FLOPs / p50 at batch 1) and, on CPU, peak_fraction:
    its share of an fp32 GEMM of the same FLOP count, timed now with the row's thread count.
    Counting needs the onnx package, which the edge install lacks: then the lines say so.
    """
    from edge_somad.bench.machine import RowThreads, cpu_info, machine_line

    cpu = cpu_info()
    ok = [r for r in rows if r["status"] == "ok"]
    threads = {r["backend"]: RowThreads(r["library"], r["threads"], r["threads_note"], r["gpu"])
               for r in ok if "library" in r}
    out: dict[str, Any] = {"machine": {"line": machine_line(cpu, threads), "cpu": dataclasses.asdict(cpu)}}
    try:
        import onnx  # noqa: F401  (graph_cost and the GEMM graph are built with it)
    except ImportError:
        why = "unavailable: counting FLOPs needs the onnx package (pip install onnx)"
        return {**out, "graph_cost": None, "graph_cost_line": f"graph cost: {why}", "peak": [],
                "peak_line": f"peak: {why}"}
    from edge_somad.bench.machine import efficiency, measure_gemm_peak
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.graph_cost import graph_cost

    model_dir = Path(model_dir)
    cost = graph_cost(model_dir / load_manifest(model_dir).onnx)
    peaks = {t: measure_gemm_peak(cost.flops, t, iters=iters)
             for t in dict.fromkeys(r.get("threads") for r in ok if not r.get("gpu"))}
    for r in ok:  # a GPU row gets achieved GFLOP/s only: a CPU GEMM is not its yardstick
        r.update(efficiency(r["latency_ms_p50"], 1, cost.flops, None if r.get("gpu") else peaks[r.get("threads")]))
    return {**out, "graph_cost": cost.as_dict(), "graph_cost_line": cost.summary(),
            "peak": [dataclasses.asdict(p) for p in peaks.values()],
            "peak_line": "; ".join(f"peak: {p.what}: {p.m}x{p.k}x{p.n}, {_fmt(p.threads)} threads, "
                                   f"{p.gflops} GFLOP/s p50 (best {p.best_gflops})" for p in peaks.values())}


def _artifact(model_dir: Path, manifest: Any, backend: str, precision: str) -> dict[str, Any]:
    """The file a backend runs, and its size (None when it does not exist here)."""
    from edge_somad.export.trt_build import engine_path

    if backend == TORCH_REF or backend == "torch":
        name = "arrays.npz"
    elif backend == "tensorrt" and precision in ("fp32", "fp16", "int8"):
        name = engine_path(model_dir, precision).name
    elif precision == "int8":
        name = manifest.int8_onnx or "model.int8.onnx"
    else:
        name = manifest.onnx
    path = model_dir / name
    return {"model_file": name, "model_bytes": path.stat().st_size if path.is_file() else None}


def model_sizes(model_dir: Path) -> dict[str, int]:
    """Bytes of every artifact in the model dir: ONNX graphs, arrays.npz, engines."""
    model_dir = Path(model_dir)
    files = sorted({*model_dir.glob("*.onnx"), *model_dir.glob("*.engine"), model_dir / "arrays.npz"})
    return {p.name: p.stat().st_size for p in files if p.is_file()}


def format_table(rows: list[dict]) -> str:
    """Plain-text table; unavailable rows say why instead of showing numbers."""
    head = ("backend", "precision", "device", "threads", "p50 ms", "p99 ms", "img/s", "@batch", "x torch",
            "GFLOP/s", "% peak", "model MB")
    cells = {id(r): _cells(r) for r in rows if r["status"] == "ok"}
    widths = [max(len(c[i]) for c in [head, *cells.values()]) for i in range(len(head))]
    for i, key in ((0, "backend"), (1, "precision")):
        widths[i] = max([widths[i]] + [len(r[key]) for r in rows])
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(head, widths, strict=True)).rstrip()]
    for r in rows:
        if id(r) in cells:
            lines.append("  ".join(c.ljust(wd) for c, wd in zip(cells[id(r)], widths, strict=True)).rstrip())
        else:
            lines.append(f"{r['backend'].ljust(widths[0])}  {r['precision'].ljust(widths[1])}  "
                         f"unavailable: {r['reason']}")
    return "\n".join(lines)


def _cells(r: dict) -> tuple[str, ...]:
    mb = "-" if r.get("model_bytes") is None else f"{r['model_bytes'] / 1e6:.2f}"
    frac = r.get("peak_fraction")
    return (r["backend"], r["precision"], r["device"], _fmt(r.get("threads")), f"{r['latency_ms_p50']:.2f}",
            f"{r['latency_ms_p99']:.2f}", _fmt(r["throughput_ips"]), _fmt(r["best_batch"]),
            _fmt(r.get("speedup_vs_torch")), _fmt(r.get("achieved_gflops")),
            "-" if frac is None else f"{100 * frac:.1f}", mb)


def sample_images(limit: int = 32) -> list[Path]:
    """Test images shipped in edge_somad/sample_data (good and defective parts)."""
    from edge_somad import sample_data

    root = Path(sample_data.__file__).parent
    found = sorted(p for ext in ("*.png", "*.jpg") for p in root.glob(f"*/test/**/{ext}"))
    return found[:limit]


def write_video(images: Sequence[Path], out: Path, size: tuple[int, int] | None, fps: float = 10.0) -> Path:
    """Write images as an MJPG .avi with cv2.VideoWriter.

    size=(width, height) resizes every image to it; None keeps the images' own resolution (the
    camera the model was fitted on), and an image of another size is then an error, not a resize.
    """
    import cv2

    from edge_somad.data import read_image

    if not images:
        raise ConfigError("no images to make a video from; pass --video PATH")
    first = read_image(images[0])
    width, height = size or (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise BackendUnavailableError(f"OpenCV cannot write MJPG video to {out}; pass --video PATH")
    try:
        for p in images:
            img = read_image(p)
            if size is not None:
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            elif img.shape[:2] != (height, width):
                raise ConfigError(f"{p} is {img.shape[1]}x{img.shape[0]}; the video is {width}x{height} "
                                  "(pass a size to resize, or use images from one camera)")
            writer.write(img)
    finally:
        writer.release()
    return out


def _check_args(backends: list[str], batches: list[int], iters: int, warmup: int) -> None:
    if not backends:
        raise ConfigError("no backend to benchmark; give --backend at least once")
    if not batches or min(batches) < 1:
        raise ConfigError(f"batches {batches}; expected one or more sizes >= 1")
    if iters < 1 or warmup < 0:
        raise ConfigError(f"iters={iters}, warmup={warmup}; expected iters >= 1 and warmup >= 0")


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1e3, 3)


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


# ---------------------------------------------------------------- the command's job

VIDEO_SIZE = (640, 480)  # (width, height) of the generated clip: a VGA camera, so the host resize is real


def run_bench(model: Path, backend: list[str] | None, precision: str, batch: list[int] | None, iters: int,
              warmup: int, json_out: Path | None, pipeline: bool, video: Path | None, curve: bool,
              cameras: list[int] | None, fps: float | None, say: Callable[[str], None] = print,
              phase: str = "both", triggers: list[float] | None = None) -> dict:
    """`edge-somad bench`'s whole job: every table `say`s a line at a time; the JSON result is returned.

    `video` may be a folder of images (e.g. the good parts of the model's own category): they become
    the clip at their own resolution, so the replayed line shows the parts and the camera the model
    was fitted for (its verdicts mostly passes, as on a good line), not the bundled sample's."""
    if video is None or not Path(video).is_dir():
        return _run_bench(model, backend, precision, batch, iters, warmup, json_out, pipeline, video, curve,
                          cameras, fps, say, phase, triggers)
    from edge_somad.contracts.names import IMAGE_SUFFIXES

    images = sorted(p for p in Path(video).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(f"--video {video} is a folder without image files ({', '.join(IMAGE_SUFFIXES)}); "
                          "expected a video file or a folder of images of one size")
    with tempfile.TemporaryDirectory(prefix="edge-somad-clip-") as tmp:
        clip = write_video(images, Path(tmp) / "clip.avi", None)
        say(f"clip: {len(images)} images of {video} at their own size")
        return _run_bench(model, backend, precision, batch, iters, warmup, json_out, pipeline, clip, curve,
                          cameras, fps, say, phase, triggers)


def _run_bench(model: Path, backend: list[str] | None, precision: str, batch: list[int] | None, iters: int,
               warmup: int, json_out: Path | None, pipeline: bool, video: Path | None, curve: bool,
               cameras: list[int] | None, fps: float | None, say: Callable[[str], None],
               phase: str, triggers: list[float] | None) -> dict:
    backends = list(backend or DEFAULT_BACKENDS)
    if fps is not None and (not cameras or not 0 < fps <= 1000):
        raise ConfigError(f"--fps {fps:g} needs --cameras N and a rate in (0, 1000] frames/s per camera")
    from edge_somad.bench.stages import PHASES

    if phase not in (*PHASES, "both"):
        raise ConfigError(f"--phase {phase!r}; expected {', '.join(PHASES)} or both")
    modes = PHASES if phase == "both" else (phase,)
    rows = bench_scorers(model, backends, precision, list(batch or [1, 4]), iters, warmup)
    truth = machine_and_cost(model, rows, iters=max(5, min(iters, 20)))
    say(truth["machine"]["line"])
    say(format_table(rows))
    say(truth["graph_cost_line"])
    if truth["peak_line"]:
        say(truth["peak_line"])
    sizes = model_sizes(model)
    say("artifacts: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    result: dict[str, Any] = {"model": str(model), "precision": precision, "iters": iters, "warmup": warmup,
                              "sizes": sizes, "results": rows, **truth}
    if pipeline:
        result["pipeline"] = _pipeline(model, rows, precision, max(iters, 2), video, curve)
        for p in result["pipeline"]:
            say(f"pipeline {p['backend']}: " + ", ".join(f"{k}={v}" for k, v in p.items()
                                                                 if k != "backend"))
    if cameras:
        from edge_somad.bench.pipeline import format_cameras_table
        from edge_somad.bench.stages import format_calls_and_cpu, format_stage_table

        result["cameras"] = _cameras(model, rows, precision, max(iters, 2), video, list(cameras), fps, modes)
        ok = [r for r in result["cameras"] if "unavailable" not in r]
        if ok:
            say(format_cameras_table(ok))
            say(format_stage_table(ok))
            say(format_calls_and_cpu(ok))
        for r in result["cameras"]:
            if "unavailable" in r:
                say(f"cameras {r['backend']}: unavailable: {r['unavailable']}")
    if triggers:
        from edge_somad.bench.triggers import run_triggers

        runnable = [r["backend"] for r in rows if r["status"] == "ok" and r["backend"] != TORCH_REF]
        result["triggers"] = run_triggers(model, runnable, precision, video, triggers, max(iters, 2),
                                          lambda d: write_video(sample_images(), d / "line.avi", VIDEO_SIZE), say)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
        say(f"wrote {json_out}")
    return result


def _pipeline(model: Path, rows: list[dict], precision: str, frames: int, video: Path | None,
              curve: bool) -> list[dict]:
    """bench_pipeline for every backend whose scorer ran (the torch reference is not a runtime backend)."""
    from edge_somad.bench.pipeline import bench_pipeline

    runnable = [r["backend"] for r in rows if r["status"] == "ok" and r["backend"] != TORCH_REF]
    out = []
    with tempfile.TemporaryDirectory(prefix="edge-somad-bench-") as tmp:
        if video is None and runnable:
            images = sample_images()
            # Cycle the sample so the clip is as long as the measurement (steady state, not start-up).
            clip = [images[i % len(images)] for i in range(max(frames, len(images)))] if images else []
            video = write_video(clip, Path(tmp) / "bench.avi", VIDEO_SIZE)
        for name in runnable:
            try:
                out.append({"backend": name, **bench_pipeline(model, video, name, precision, frames, curve)})
            except UNAVAILABLE as exc:
                out.append({"backend": name, "unavailable": str(exc)})
    return out


def _cameras(model: Path, rows: list[dict], precision: str, frames: int, video: Path | None,
             counts: list[int], fps: float | None = None, modes: tuple[str, ...] = ("aligned",)) -> list[dict]:
    """bench_cameras for every runtime backend whose scorer ran: N looping replays of one clip."""
    from edge_somad.bench.pipeline import bench_cameras

    runnable = [r["backend"] for r in rows if r["status"] == "ok" and r["backend"] != TORCH_REF]
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edge-somad-bench-") as tmp:
        if video is None and runnable:  # the replays loop: the sample images once are enough
            video = write_video(sample_images(), Path(tmp) / "cameras.avi", VIDEO_SIZE)
        for name in runnable:
            try:
                out.extend(bench_cameras(model, video, name, precision, counts, frames, fps=fps, phase_modes=modes))
            except UNAVAILABLE as exc:
                out.append({"backend": name, "unavailable": str(exc)})
    return out
