"""Trigger -> verdict latency: how long a PLC waits for a part's answer at a given trigger rate.

A triggered pipeline (`run --trigger`) on one camera, a looping replay of the clip paced at
CAMERA_FPS (a camera on a line: the frame after a trigger comes up to one frame interval later), the
control endpoint on 127.0.0.1, and for each rate `count` triggers sent on schedule (i / rate s after
the start, each from its own REQ client, so a slow answer does not delay the next trigger).
Latency = answer received - request sent, measured by the client (what the PLC sees: wait for
the next frame, resize, score, publish, answer). The runtime's own trigger_ts -> published_at is
reported beside it. Any answer without a frame scored in time (deadline, busy, ...) is counted as an error.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError, EdgeSomadError
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.backends import open_scorer
from edge_somad.runtime.trigger.client import request_trigger
from edge_somad.runtime.trigger.control import ControlServer

CAMERA_FPS = 30.0
DEADLINE_MS = 2000  # generous: the bench measures latency; a deadline error would hide it


def parse_rates(text: str) -> list[float]:
    """`--triggers 5,20` -> [5.0, 20.0]; ConfigError naming the bad part otherwise."""
    try:
        rates = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        rates = []
    if not rates or not all(0 < r <= 200 for r in rates):
        raise ConfigError(f"--triggers {text!r}; expected trigger rates per second in (0, 200], comma-separated, "
                          "e.g. 5,20")
    return rates


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _fire(control: str, rate: float, count: int) -> list[tuple[float, dict[str, Any]]]:
    """count triggers at `rate` per second; (client latency ms, answer) of each, in the order sent."""
    out: list[tuple[float, dict[str, Any]] | None] = [None] * count
    t0 = time.monotonic() + 0.2

    def one(i: int) -> None:
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        sent = time.perf_counter()
        try:
            answer = request_trigger(control, f"bench-{rate:g}-{i}", DEADLINE_MS, DEADLINE_MS / 1000 + 5,
                                     source="bench")
        except EdgeSomadError as exc:  # counted as an error answer, not dropped from the table
            answer = {"verdict": "error", "error": str(exc)}
        out[i] = ((time.perf_counter() - sent) * 1000.0, answer)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_MS / 1000 + 10)
    return [o for o in out if o is not None]


def bench_triggers(model_dir: Path, video: Path, backend: str, precision: str, rates: list[float],
                   count: int) -> list[dict[str, Any]]:
    """One row per rate: {triggers_per_s, sent, answered, p50_ms, p99_ms, runtime_p50_ms, errors, ...}."""
    if count < 2:
        raise ConfigError(f"{count} triggers per rate; expected >= 2")
    manifest = load_manifest(Path(model_dir))
    scorer = open_scorer(Path(model_dir), backend, precision, manifest=manifest)
    rows = []
    try:
        with Publisher(_free_endpoint(), "bench") as pub, ControlServer(_free_endpoint()) as control:
            config = PipelineConfig(triggered=True, trigger_deadline_ms=DEADLINE_MS, precision=precision,
                                    heatmap="png")
            cam = SourceSpec("file", str(video), loop=True, fps=CAMERA_FPS)
            pipe = Pipeline(scorer, manifest, [("bench", cam)], pub, config)
            assert pipe.triggers is not None
            control.register("trigger", pipe.triggers.handle)
            control.start()
            runner = threading.Thread(target=pipe.run, name="bench-pipeline", daemon=True)
            runner.start()
            try:
                request_trigger(control.bound_endpoint, "bench-warm-up", DEADLINE_MS, 30.0, source="bench")
                for rate in rates:
                    rows.append(_row(rate, _fire(control.bound_endpoint, rate, count)))
            finally:
                pipe.stop("bench over")
                runner.join(30)
    finally:
        scorer.close()
    for r in rows:
        r.update(backend=scorer.backend, device=scorer.device, camera_fps=CAMERA_FPS)
    return rows


def _row(rate: float, got: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    # Answered: a frame was scored and published in time. A looping clip shows the same picture again
    # now and then, which line health reports as a camera fault (an error verdict): still an answer.
    ok = [(ms, a) for ms, a in got if a.get("frame_used") and a.get("ok")]
    lat = np.asarray([ms for ms, _ in ok] or [np.nan])
    inside = np.asarray([a["trigger_latency_ms"] for _, a in ok if a.get("trigger_latency_ms") is not None]
                        or [np.nan])
    return {"triggers_per_s": rate, "sent": len(got), "answered": len(ok), "errors": len(got) - len(ok),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "runtime_p50_ms": round(float(np.percentile(inside, 50)), 1),
            "runtime_p99_ms": round(float(np.percentile(inside, 99)), 1),
            "error_reasons": sorted({str(a.get("error"))[:60] for _, a in got if a.get("verdict") == "error"})}


def format_triggers_table(rows: list[dict]) -> str:
    head = ("backend", "triggers/s", "sent", "answered", "errors", "p50 ms", "p99 ms", "runtime p50", "runtime p99")
    body = [(r["backend"], f"{r['triggers_per_s']:g}", str(r["sent"]), str(r["answered"]), str(r["errors"]),
             f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['runtime_p50_ms']:.1f}", f"{r['runtime_p99_ms']:.1f}")
            for r in rows]
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *body])


def run_triggers(model: Path, backends: list[str], precision: str, video: Path | None, rates: list[float],
                 count: int, clip: Callable[[Path], Path], say: Callable[[str], None]) -> list[dict]:
    """bench_triggers for each runtime backend; `clip(folder)` writes the default clip when no video is given."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edge-somad-bench-") as tmp:
        video = video or clip(Path(tmp))
        for name in backends:
            rows.extend(bench_triggers(model, video, name, precision, rates, count))
    say(f"trigger -> verdict (one camera replaying at {CAMERA_FPS:g} frames/s; {count} triggers per rate; "
        "p50/p99 as the client sees them, runtime = trigger received -> verdict published):")
    say(format_triggers_table(rows))
    return rows
