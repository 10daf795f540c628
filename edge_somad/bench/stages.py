"""What `bench --cameras N --fps F` prints beside its rows: where the latency goes and who used the CPU.

- Phase modes of paced cameras: `aligned` (every camera ticks at the same instant, as cameras
  triggered by one encoder do: N frames arrive together and the N-th waits for the N-1 before it on a
  scorer that takes one frame at a time) and `independent` (free-running cameras: each camera's
  ticks sit at its own phase of the period, drawn at random with a fixed seed that is printed).
- The per-stage table: p50/p99 per stage of runtime/pipeline/trace.py for every row.
- CPU per thread group over a row (Linux /proc/self/task), in ms per frame: the scoring thread (it
  runs ONNX Runtime's calling thread too), the library pools (ONNX Runtime's intra-op workers,
  ZeroMQ I/O), capture threads (decode), the publishing thread (encode), the benchmark's subscriber.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from edge_somad.errors import ConfigError
from edge_somad.runtime.pipeline.trace import STAGES

PHASES = ("aligned", "independent")
PHASE_SEED = 19


def phases(mode: str, n: int, seed: int = PHASE_SEED) -> list[float]:
    """Each camera's phase as a fraction of the frame period."""
    if mode == "aligned":
        return [0.0] * n
    if mode == "independent":
        return [float(x) for x in np.random.default_rng(seed).uniform(0.0, 1.0, n)]
    raise ConfigError(f"--phase {mode!r}; expected one of {', '.join(PHASES)} or both")


def _group(name: str, comm: str) -> str:
    if name.startswith("capture-"):
        return "capture"
    if name == "MainThread":
        return "scoring loop"
    if name in ("publish", "rx", "cpu-sampler"):
        return {"publish": "publish", "rx": "subscriber", "cpu-sampler": "cpu sampler"}[name]
    if name == "publisher-peers":  # the Publisher's subscription/peer upkeep, every few ms
        return "publisher upkeep"
    if name.startswith("score-lane"):  # runtime/scorers/ort_scorer.py: frames side by side on a CPU
        return "score lanes"
    if comm.startswith("ZMQbg"):
        return "zeromq io"
    return "other threads" if name else "native pool (ORT workers)"


def _tasks() -> dict[int, tuple[str, float]]:
    """{thread id: (group, CPU seconds so far)} of this process; {} where /proc is absent."""
    root = Path("/proc/self/task")
    if not root.is_dir():
        return {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in root.iterdir():
        try:
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread ended between the listing and the read
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        tid = int(task.name)
        out[tid] = (_group(names.get(tid, ""), comm), (int(fields[11]) + int(fields[12])) / tick)  # utime+stime
    return out


class ThreadCpu:
    """CPU seconds per thread group over a stretch of time. Threads that end inside it (capture and
    publishing threads end with the run) would take their CPU time with them, so a background thread
    samples every `every_s` and keeps each thread's last figure (at most `every_s` of one is lost)."""

    def __init__(self, every_s: float = 0.1) -> None:
        self._every = every_s
        self._base = _tasks()
        self._last = dict(self._base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._last.update(_tasks())

    def stop(self, frames: int) -> dict[str, float]:
        """ms of CPU per frame per thread group since the start (the sampler itself left out)."""
        self._stop.set()
        self._thread.join(2.0)
        self._last.update(_tasks())
        out: dict[str, float] = {}
        for tid, (group, cpu) in self._last.items():
            if group != "cpu sampler":
                out[group] = out.get(group, 0.0) + cpu - self._base.get(tid, (group, 0.0))[1]
        return {g: round(1000.0 * v / max(1, frames), 2) for g, v in sorted(out.items())}


def _cell(s: dict | None) -> str:
    if not s or s.get("p50") is None:
        return "-"
    return f"{s['p50']:.1f}/{s['p99']:.1f}"


def row_name(r: dict) -> str:
    fps = r.get("fps_per_camera")
    return f"{r['cameras']} cam " + ("max" if fps is None else f"{fps:g} fps {r.get('phase', '')}").rstrip()


def format_stage_table(rows: list[dict]) -> str:
    """p50/p99 ms per stage (capture -> queue -> prepare -> score -> encode -> send) per row."""
    cols = (*STAGES, "total")
    head = ("row", *cols)
    body = [(row_name(r), *(_cell(r.get("stages", {}).get(c)) for c in cols)) for r in rows]
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    lines = ["per-stage latency, p50/p99 ms (stages: runtime/pipeline/trace.py)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    return "\n".join(lines)


# Thread groups that are the host's own work per frame, beside the scorer (the scoring loop runs ONNX
# Runtime's calling thread, so it counts as the scorer's).
HOST_GROUPS = ("capture", "publish", "publisher upkeep", "subscriber", "zeromq io", "other threads")


def ceiling(r: dict) -> dict | None:
    """On a CPU the host's threads and the scorer share the cores, so an unthrottled line can reach at
    most S / (S + H) of the bare best, S the bare scorer's CPU per frame at its best batch and H the
    host's CPU per frame in the row (a lower bound of the loss: caches and memory bandwidth shared
    with the host cost the scorer more on top). None without the CPU figures."""
    cpu, bare = r.get("cpu_ms_per_frame") or {}, r.get("bare_best_cpu_ms_per_frame")
    if not cpu or not bare:
        return None
    host = sum(ms for g, ms in cpu.items() if g in HOST_GROUPS)
    return {"host_cpu_ms": round(host, 2), "scorer_cpu_ms": bare, "ceiling": round(bare / (bare + host), 3)}


def format_calls_and_cpu(rows: list[dict]) -> str:
    """Per row: scorer calls (frames per call, capture spread within a call) and CPU ms per frame."""
    lines = []
    for r in rows:
        c = r.get("calls") or {}
        sizes = ", ".join(f"{k}x{v}" for k, v in (c.get("sizes") or {}).items())
        cpu = ", ".join(f"{g} {ms:g}" for g, ms in (r.get("cpu_ms_per_frame") or {}).items())
        lines.append(f"{row_name(r)}: calls {c.get('calls', 0)} (frames per call {sizes or '-'}; capture spread "
                     f"within a call p50 {c.get('spread_p50_ms', '-')} ms; scorer busy {c.get('busy', '-')}) | "
                     f"CPU ms/frame: {cpu or '-'} (bare scorer alone: {r.get('bare_cpu_ms_per_frame', '-')})")
        if r.get("fps_per_camera") is None and (c := ceiling(r)) is not None:
            lines.append(f"  {row_name(r)}: host CPU {c['host_cpu_ms']} ms/frame beside the bare scorer's "
                         f"{c['scorer_cpu_ms']} at its best batch: on shared cores at most {c['ceiling']:.2f} of "
                         "the bare best")
    return "\n".join(lines)
