"""Time two or more fused graphs of the same input size interleaved, in one process.

Why interleaved: the development VM drifts by up to ±40 % between runs of the same command, so two
graphs timed in separate runs cannot be compared; round-robin in one process, same threads and
spinning off (or each session's spinning threads steal the other's cores), they can. Used for the
README's before/after figure of issue 13:

    git worktree add ../before f0e4f5a && (cd ../before && edge-somad export --model COPY_OF_MODEL)
    python benchmarks/compare_graphs.py COPY_OF_MODEL/model.onnx models/bottle/model.onnx --iters 60

Prints p50/p99 per graph, each one's ratio to the first, and the largest difference of outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import open_session, time_round_robin  # benchmarks/ is a folder of scripts, not a package


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+", type=Path, help="model.onnx files with the same input size")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT's default)")
    args = ap.parse_args(argv)
    if len(args.graphs) < 2 or args.iters < 1:
        ap.error("give two or more graphs and --iters >= 1")
    sessions = {str(p): open_session(p, args.threads) for p in args.graphs}
    shapes = {tuple(s.get_inputs()[0].shape[1:]) for s in sessions.values()}
    if len(shapes) != 1:
        ap.error(f"the graphs take different frame shapes {sorted(shapes)}; expected one input size")
    h, w, c = shapes.pop()
    frames = np.random.default_rng(0).integers(0, 256, (1, h, w, c), dtype=np.uint8)
    first = next(iter(sessions))
    ref = sessions[first].run(None, {"frames": frames})
    times = time_round_robin(sessions, frames, args.iters, args.warmup)
    base = float(np.percentile(times[first], 50))
    print(f"{h}x{w}, batch 1, {args.iters} calls each, round-robin")
    for name, t in times.items():
        out = sessions[name].run(None, {"frames": frames})
        diff = max(float(np.abs(a - b).max()) for a, b in zip(out, ref, strict=True))
        p50, p99 = float(np.percentile(t, 50)), float(np.percentile(t, 99))
        print(f"{name}: p50 {1e3 * p50:.2f} ms, p99 {1e3 * p99:.2f} ms, {base / p50:.2f}x the first, "
              f"max output difference from the first {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
