"""What does the streaming pipeline cost on top of the bare scorer?

Same video, same backend: (a) the bare scorer on the pre-resized frames, batch 1, in a loop;
(b) the real pipeline: capture thread -> resize -> scorer -> defects -> heatmap PNG -> PUB socket
-> a real SUB on 127.0.0.1 in another thread. Latency is capture -> publish, taken from the
headers the subscriber actually received.
overhead_pct = 100 * (scorer_fps / pipeline_fps - 1): the extra time per frame the pipeline adds.
With curve=True both ends use CURVE (throwaway keys), so the cost of encryption shows up in it.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_somad.contracts.geometry import resize_frame
from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime import messages
from edge_somad.runtime.backends import open_scorer
from edge_somad.runtime.camera import SourceSpec
from edge_somad.runtime.curve import CurveClient, CurveServer, connect_subscriber, load_client, load_server, make_keys
from edge_somad.runtime.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.publisher import Publisher


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


def _receive(endpoint: str, expected: int, ready: threading.Event, out: list[tuple[float, float]],
             curve: CurveClient | None) -> None:
    """Collect (latency_ms, published_at) of each verdict."""
    # rcvhwm 0: the benchmark's subscriber keeps up; never lose a sample
    sock = connect_subscriber(endpoint, b"", curve, rcvhwm=0)
    ready.set()
    try:
        while len(out) < expected and sock.poll(5000):
            msg = messages.parse_message(sock.recv_multipart())
            if msg.kind == "verdict":
                out.append((float(msg.header["latency_ms"]), float(msg.header["published_at"])))
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
    scorer = open_scorer(model_dir, backend, precision)
    try:
        scorer_fps = _bare_scorer_fps(scorer, images, pre.height, pre.width, pre.resize, pre.pad_value)
        endpoint = f"tcp://127.0.0.1:{_free_port()}"
        latencies: list[tuple[float, float]] = []
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
