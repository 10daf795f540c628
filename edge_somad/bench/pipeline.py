"""What does the streaming pipeline cost on top of the bare scorer?

Same video, same backend: (a) the bare scorer on the pre-resized frames, batch 1, in a loop;
(b) the real pipeline: capture thread -> resize -> scorer -> defects -> heatmap PNG -> PUB socket
-> a real SUB on 127.0.0.1 in another thread. Latency is capture -> publish, taken from the
headers the subscriber actually received.
overhead_pct = 100 * (scorer_fps / pipeline_fps - 1): the extra time per frame the pipeline adds.
With curve=True both ends use CURVE (throwaway keys), so the cost of encryption shows up in it.

`bench_cameras` does the same with N cameras, each a looping replay of the clip, batched across
cameras by the pipeline, against the bare scorer's BEST frames/s over batch sizes 1, 2, 4, 8 (the
most this scorer can do on this machine, whatever the batch): ratio = pipeline / bare best.
A saturated replay measures queues, not a line: with `fps` each count runs a second time with every
camera paced at that line rate (camera.SourceSpec.fps), and that row reports the latency at the
rate, the frames dropped (0 when the box keeps up) and p99 over the bare scorer's batch-1 p50; once
per phase mode (edge_somad/bench/stages.py: cameras ticking together, or free-running). Every row
carries the pipeline's per-stage times, what its scorer calls held and CPU per thread group.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_somad.bench.stages import PHASES, ThreadCpu, phases
from edge_somad.contracts.geometry import resize_frame
from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import (
    CurveClient,
    CurveServer,
    connect_subscriber,
    load_client,
    load_server,
    make_keys,
)
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.backends import open_scorer


def _read_frames(video: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    while len(frames) < n:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    if not frames:
        raise ConfigError(f"{video}: no frame could be read; expected a video file OpenCV can decode")
    return frames


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bare_scorer_fps(scorer: Any, frames: list[np.ndarray], h: int, w: int, mode: str, pad: int) -> float:
    batch = [resize_frame(f, h, w, mode, pad)[None] for f in frames]
    scorer.score(batch[0])  # warm-up: first-run allocations are not steady state
    t0 = time.perf_counter()
    for b in batch:
        scorer.score(b)
    return len(batch) / (time.perf_counter() - t0)


Received = tuple[float, float, str, int, str]  # latency_ms, published_at, camera, frame_id, verdict


def _receive(endpoint: str, expected: int, ready: threading.Event, out: list[Received],
             curve: CurveClient | None) -> None:
    """Collect (latency_ms, published_at, camera, frame_id, verdict) of each verdict."""
    # rcvhwm 0: the benchmark's subscriber keeps up; never lose a sample
    sock = connect_subscriber(endpoint, b"", curve, rcvhwm=0)
    ready.set()
    try:
        while len(out) < expected and sock.poll(5000):
            msg = messages.parse_message(sock.recv_multipart())
            if msg.kind == "verdict":
                h = msg.header
                out.append((float(h["latency_ms"]), float(h["published_at"]), str(h["camera"]), int(h["frame_id"]),
                            str(h["verdict"])))
    finally:
        sock.close()


def _throwaway_keys(folder: Path) -> tuple[CurveServer, CurveClient]:
    make_keys(folder, "server")
    make_keys(folder / "clients", "bench")
    server = load_server(folder / "server.key_secret", folder / "clients")
    client = load_client(folder / "server.key", folder / "clients" / "bench.key_secret")
    if server is None or client is None:
        raise ConfigError("throwaway CURVE keys could not be loaded")
    return server, client


def bench_pipeline(model_dir: Path, video: Path, backend: str, precision: str, frames: int,
                   curve: bool = False) -> dict:
    """-> {pipeline_fps, scorer_fps, overhead_pct, latency_p50_ms, latency_p99_ms, + context fields}."""
    with tempfile.TemporaryDirectory(prefix="edge-somad-keys-") as keys:
        server, client = _throwaway_keys(Path(keys)) if curve else (None, None)
        return _bench(Path(model_dir), Path(video), backend, precision, frames, server, client)


def _bench(model_dir: Path, video: Path, backend: str, precision: str, frames: int,
           server: CurveServer | None, client: CurveClient | None) -> dict:
    if frames < 2:
        raise ConfigError(f"frames={frames}; expected >= 2")
    manifest = load_manifest(model_dir)
    pre = manifest.preprocessing
    images = _read_frames(video, frames)
    scorer = open_scorer(model_dir, backend, precision, manifest=manifest)
    try:
        scorer_fps = _bare_scorer_fps(scorer, images, pre.height, pre.width, pre.resize, pre.pad_value)
        endpoint = f"tcp://127.0.0.1:{_free_port()}"
        latencies: list[Received] = []
        with Publisher(endpoint, "bench", sndhwm=1000, curve=server) as pub:
            ready = threading.Event()
            rx = threading.Thread(target=_receive, args=(endpoint, len(images), ready, latencies, client),
                                  daemon=True)
            rx.start()
            ready.wait(5)
            pub.wait_for_subscribers(1, timeout_s=5.0)
            config = PipelineConfig(heatmap="png", max_frames=len(images), precision=precision)
            pipe = Pipeline(scorer, manifest, [("bench", SourceSpec("file", str(video)))], pub, config)
            t0 = time.perf_counter()
            final = pipe.run()
            elapsed = time.perf_counter() - t0
            rx.join(10)
    finally:
        scorer.close()
    n = final["published"]
    lat = np.asarray([x[0] for x in latencies] or [np.nan])
    stamps = sorted(x[1] for x in latencies)
    # Steady state: first to last verdict, so camera open / thread start / shutdown (fixed costs of
    # a run, not per-frame overhead) do not count against the pipeline.
    if len(stamps) >= 3 and stamps[-1] > stamps[0]:
        pipeline_fps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    else:
        pipeline_fps = n / elapsed
    return {
        "pipeline_fps": round(pipeline_fps, 2),
        "wall_fps": round(n / elapsed, 2),
        "scorer_fps": round(scorer_fps, 2),
        "overhead_pct": round(100.0 * (scorer_fps / pipeline_fps - 1.0), 1),
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "latency_p99_ms": round(float(np.percentile(lat, 99)), 3),
        "frames": n,
        "received": len(latencies),
        "missed": n - len(latencies),
        "curve": server is not None,
        "backend": scorer.backend,
        "device": scorer.device,
    }


# ---------------------------------------------------------------- N cameras, batched across cameras

BARE_BATCHES = (1, 2, 4, 8)


class _Counting:
    """The scorer as the pipeline sees it, recording the size of every batch it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.sizes = inner, []
        self.backend, self.device = inner.backend, inner.device
        self.height, self.width = inner.height, inner.width
        self.max_batch = getattr(inner, "max_batch", None)
        self.whole_batches = getattr(inner, "whole_batches", True)  # the pipeline schedules by it
        self.lanes = getattr(inner, "lanes", 1)  # and by this

    def score(self, frames: np.ndarray) -> Any:
        self.sizes.append(len(frames))
        return self.inner.score(frames)

    def close(self) -> None:
        self.inner.close()


def bare_best(scorer: Any, resized: list[np.ndarray], batches: tuple[int, ...] = BARE_BATCHES,
              calls: int = 5) -> dict[str, Any]:
    """The bare scorer's frames/s per batch size (median of `calls` timed calls after one warm-up) and
    the best of them. Sizes above the scorer's limit are skipped, not failed."""
    per: dict[int, float] = {}
    cpu_ms: dict[int, float] = {}  # process CPU per frame: what the scorer costs with nothing beside it
    for b in batches:
        x = np.stack([resized[i % len(resized)] for i in range(b)])
        try:
            scorer.score(x)  # warm-up: this batch size's first-run allocations
        except InputError:  # e.g. a static-batch graph or engine smaller than b
            continue
        t = []
        c0 = time.process_time()
        for _ in range(calls):
            t0 = time.perf_counter()
            scorer.score(x)
            t.append(time.perf_counter() - t0)
        cpu_ms[b] = round(1000.0 * (time.process_time() - c0) / (calls * b), 2)
        per[b] = round(b / float(np.median(t)), 2)
    if not per:
        raise ConfigError(f"the scorer ran none of the batch sizes {batches}; expected at least batch 1 to run")
    best = max(per, key=per.__getitem__)
    return {"best_fps": per[best], "best_batch": best, "fps_per_batch": per, "cpu_ms_per_frame": cpu_ms}


def bench_cameras(model_dir: Path, video: Path, backend: str, precision: str, cameras: list[int],
                  frames_per_camera: int, max_batch: int | None = None, batch_wait_ms: float = 5.0,
                  scorer: Any = None, fps: float | None = None,
                  phase_modes: tuple[str, ...] = PHASES) -> list[dict]:
    """One row per camera count: the whole pipeline with N looping replays of `video` ->
    {cameras, pipeline_fps, bare_best_fps, bare_best_batch, ratio, latency_p50_ms, latency_p99_ms,
    mean_batch, dropped, ...}. The bare scorer is timed before AND after the pipeline runs and the
    better of the two is kept, so a machine that got busier half-way does not flatter the ratio.
    fps: also one row per count and phase mode with each camera paced at that rate (fps_per_camera set).
    `scorer` (already open) replaces open_scorer, for tests; it is closed here either way."""
    if not cameras or min(cameras) < 1:
        raise ConfigError(f"--cameras {cameras}; expected one or more counts >= 1")
    if fps is not None and not 0 < fps <= 1000:
        raise ConfigError(f"--fps {fps}; expected a line rate per camera in (0, 1000] frames per second")
    if frames_per_camera < 2:
        raise ConfigError(f"frames per camera {frames_per_camera}; expected >= 2")
    for mode in phase_modes:
        phases(mode, 1)  # a bad mode fails before anything runs
    manifest = load_manifest(Path(model_dir))
    pre = manifest.preprocessing
    resized = [resize_frame(f, pre.height, pre.width, pre.resize, pre.pad_value)
               for f in _read_frames(Path(video), 8)]
    scorer = scorer if scorer is not None else open_scorer(Path(model_dir), backend, precision, manifest=manifest)
    try:
        before = bare_best(scorer, resized)
        runs = [(None, None)] + ([] if fps is None else [(fps, mode) for mode in phase_modes])
        rows = [_run_cameras(scorer, manifest, Path(video), n, frames_per_camera * n, precision, max_batch,
                             batch_wait_ms, rate, mode) for rate, mode in runs for n in cameras]
        after = bare_best(scorer, resized)
    finally:
        scorer.close()
    bare = max(before, after, key=lambda r: r["best_fps"])
    # The bare scorer's median batch-1 call: what a paced frame's latency is held against.
    one = bare["fps_per_batch"].get(1)
    scorer_p50 = round(1000.0 / one, 2) if one else None
    for r in rows:
        r.update(bare_best_fps=bare["best_fps"], bare_best_batch=bare["best_batch"],
                 bare_fps_per_batch=bare["fps_per_batch"], ratio=round(r["pipeline_fps"] / bare["best_fps"], 3),
                 bare_cpu_ms_per_frame=bare["cpu_ms_per_frame"].get(1),
                 bare_best_cpu_ms_per_frame=bare["cpu_ms_per_frame"].get(bare["best_batch"]),
                 scorer_p50_ms=scorer_p50, backend=scorer.backend, device=scorer.device,
                 p99_over_scorer_p50=round(r["latency_p99_ms"] / scorer_p50, 2) if scorer_p50 else None)
    return rows


def _run_cameras(scorer: Any, manifest: Any, video: Path, n: int, total: int, precision: str,
                 max_batch: int | None, batch_wait_ms: float, fps: float | None = None,
                 phase: str | None = None, tweak: dict[str, Any] | None = None) -> dict[str, Any]:
    counting = _Counting(scorer)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    got: list[Received] = []
    with Publisher(endpoint, "bench", sndhwm=max(1000, total)) as pub:
        ready = threading.Event()
        rx = threading.Thread(target=_receive, args=(endpoint, total, ready, got, None), daemon=True, name="rx")
        rx.start()
        ready.wait(5)
        pub.wait_for_subscribers(1, timeout_s=5.0)
        # queue_size 1: a replay reads as fast as the line scores, so a deeper queue only holds frames
        # that wait one more batch each (latency) without adding throughput: the next frame of every
        # camera is read while the current batch is scored. A live camera never builds that backlog
        # (it drops its oldest frame), whatever --queue-size is. A paced replay is such a camera: it
        # gets the run command's default queue.
        queue = 1 if fps is None else PipelineConfig.queue_size
        config = PipelineConfig(heatmap="png", max_frames=total, precision=precision, max_batch=max_batch,
                                batch_wait_ms=batch_wait_ms, queue_size=queue)
        config = dataclasses.replace(config, **(tweak or {}))  # benchmarks/pipeline_ab.py: other settings
        offsets = phases(phase or "aligned", n)
        cams = [(f"cam{i}", SourceSpec("file", str(video), loop=True, fps=fps, phase=offsets[i] if fps else 0.0))
                for i in range(n)]
        pipe = Pipeline(counting, manifest, cams, pub, config)
        cpu = ThreadCpu()
        final = pipe.run()
        cpu_ms = cpu.stop(final["published"])
        rx.join(10)
    stamps = sorted(x[1] for x in got)
    first = counting.sizes[0] if counting.sizes else 1
    # Steady state: frames published after the first batch, over the time after it (a batch's
    # verdicts go out together, so first-to-last would count the first batch for free).
    if len(stamps) > first + 1 and stamps[-1] > stamps[first - 1]:
        steady = (len(stamps) - first) / (stamps[-1] - stamps[first - 1])
    else:
        steady = float("nan")
    lat = np.asarray([x[0] for x in got] or [np.nan])
    by_cam: dict[str, list[int]] = {}
    for x in got:  # as the SUB received them: ZeroMQ keeps one publisher's order
        by_cam.setdefault(x[2], []).append(x[3])
    return {
        "cameras": n,
        "fps_per_camera": fps,
        "phase": phase if fps else None,
        "phases": [round(x, 3) for x in offsets] if fps else None,
        "dropped": sum(int(c["capture_drops"]) for c in final["cameras"].values()),
        # Fails carry their heatmap (and overlay), passes only every n-th: the host's work per frame
        # depends on this share, so a clip of other parts than the model's (all fails) costs more.
        "fail_share": round(sum(x[4] == "fail" for x in got) / len(got), 3) if got else None,
        "frames": final["published"],
        "received": len(got),
        "pipeline_fps": round(steady, 2),
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "mean_batch": round(float(np.mean(counting.sizes)), 2) if counting.sizes else None,
        "max_batch": max(counting.sizes) if counting.sizes else None,
        "out_of_order": sum(ids != sorted(ids) for ids in by_cam.values()),
        "errors": final["errors"],
        "stages": pipe.trace.stages(),
        "calls": pipe.trace.calls(),
        "cpu_ms_per_frame": cpu_ms,
    }


def format_cameras_table(rows: list[dict]) -> str:
    """Plain-text table of bench_cameras rows."""
    head = ("backend", "cameras", "fps/cam", "phase", "frames/s", "bare best", "@batch", "ratio", "p50 ms", "p99 ms",
            "p99/scorer", "mean batch", "dropped", "errors", "fails")
    body = [(r["backend"], str(r["cameras"]), "max" if r.get("fps_per_camera") is None else f"{r['fps_per_camera']:g}",
             r.get("phase") or "-",
             f"{r['pipeline_fps']:.2f}", f"{r['bare_best_fps']:.2f}", str(r["bare_best_batch"]), f"{r['ratio']:.2f}",
             f"{r['latency_p50_ms']:.1f}", f"{r['latency_p99_ms']:.1f}", str(r.get("p99_over_scorer_p50")),
             str(r["mean_batch"]), str(r.get("dropped")), str(r["errors"]),
             "-" if r.get("fail_share") is None else f"{100 * r['fail_share']:.0f} %") for r in rows]
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *body])
