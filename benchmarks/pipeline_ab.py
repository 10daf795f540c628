"""The inspection loop's scheduling variants against each other, interleaved in one process.

`bench --cameras N --fps F` measures the shipped loop; this runs the same rows (N looping replays,
unthrottled, then paced at F frames/s per camera with phase-aligned and with independent ticks) for
each variant in turn, `--repeats` rounds, so a busy machine slows every variant alike and only the
ratios within the run count. Variants (runtime/pipeline/pipeline_config.PipelineConfig):

- batched: one call per N frames (one per camera), the scoring thread resizes and checks each frame
  before the call (the loop as it was before per-frame scheduling);
- per-frame: one frame per call, oldest capture first, the scoring thread still resizes;
- per-frame+capture-prep: the shipped default: resize and input checks in the capture threads; on
  a CPU one frame per call on all cores, and while a backlog lasts one frame per lane side by side
  (runtime/pipeline/call_size.py, runtime/scorers/ort_scorer.py);
- all-cores-per-frame: the same with --max-batch 1: every frame alone on all cores, backlog or not;
- lanes-always: --max-batch 2: two frames side by side whenever two are waiting (2-core box);
- cv1: the default with OpenCV's own thread pool off (cv2.setNumThreads(1)).

    python benchmarks/pipeline_ab.py --model models/bottle [--cameras 4] [--fps 5] [--frames 60]
        [--repeats 3] [--variants ...] [--rows max aligned independent] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS: dict[str, dict[str, Any]] = {
    "batched": {"prepare_in_capture": False},  # max_batch = cameras, set per run
    "per-frame": {"prepare_in_capture": False},
    "per-frame+capture-prep": {},
    "all-cores-per-frame": {"max_batch": 1},
    "lanes-always": {"max_batch": 2},
    # OpenCV's own thread pool off (cv2.setNumThreads(1), process-wide): each capture thread resizes alone
    "cv1": {"_cv_threads": 1},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--video", type=Path, default=None, help="default: the bench's 640x480 MJPG sample clip")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--frames", type=int, default=60, help="frames per camera per row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--rows", nargs="+", default=["max", "aligned", "independent"],
                    choices=["max", "aligned", "independent"], help="which rows to run (default: all three)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import cv2

    cv_default = cv2.getNumThreads()

    import tempfile

    from edge_somad.bench.pipeline import _read_frames, _run_cameras, bare_best
    from edge_somad.bench.scorers import VIDEO_SIZE, sample_images, write_video
    from edge_somad.bench.stages import format_calls_and_cpu, format_stage_table
    from edge_somad.contracts.geometry import resize_frame
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.runtime.scorers.backends import open_scorer

    manifest = load_manifest(args.model)
    pre = manifest.preprocessing
    n, total = args.cameras, args.cameras * args.frames
    rows: list[dict[str, Any]] = []
    bares: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-somad-ab-") as tmp:
        video = args.video or write_video(sample_images(), Path(tmp) / "cameras.avi", VIDEO_SIZE)
        resized = [resize_frame(f, pre.height, pre.width, pre.resize, pre.pad_value) for f in _read_frames(video, 8)]
        scorer = open_scorer(args.model, "onnxruntime", "fp32", manifest=manifest)
        try:
            for rep in range(args.repeats):
                bares.append(bare_best(scorer, resized))
                for name in args.variants:
                    tweak = {"max_batch": n if name == "batched" else None, **VARIANTS[name]}
                    cv2.setNumThreads(int(tweak.pop("_cv_threads", cv_default)))
                    for fps, phase in ((None, None), (args.fps, "aligned"), (args.fps, "independent")):
                        if (phase or "max") not in args.rows:
                            continue
                        r = _run_cameras(scorer, manifest, video, n, total, "fp32", None, 5.0, fps, phase, tweak)
                        r.update(variant=name, repeat=rep)
                        rows.append(r)
                        print(f"round {rep} {name:24s} {'max' if fps is None else phase:12s} "
                              f"{r['pipeline_fps']:6.2f} frames/s  p50 {r['latency_p50_ms']:7.1f}  "
                              f"p99 {r['latency_p99_ms']:7.1f} ms  dropped {r['dropped']}", flush=True)
            bares.append(bare_best(scorer, resized))
        finally:
            scorer.close()
    best = max(b["best_fps"] for b in bares)
    p50_1 = 1000.0 / max(b["fps_per_batch"][1] for b in bares)
    cpu1 = float(np.median([b["cpu_ms_per_frame"][1] for b in bares]))
    print(f"\nbare best {best:.2f} frames/s (max over {len(bares)} timings in this run); "
          f"scorer batch-1 p50 {p50_1:.1f} ms (best timing), {cpu1:.1f} ms CPU per frame (median)")
    print(f"{'variant':24s} {'row':12s} {'frames/s':>9s} {'ratio':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'p99/scorer':>10s} {'dropped':>7s}   (medians of {args.repeats} rounds)")
    for name in args.variants:
        for label in args.rows:
            rs = [r for r in rows if r["variant"] == name and (r["phase"] or "max") == label]
            med = {k: float(np.median([r[k] for r in rs])) for k in ("pipeline_fps", "latency_p50_ms",
                                                                      "latency_p99_ms", "dropped")}
            print(f"{name:24s} {label:12s} {med['pipeline_fps']:9.2f} {med['pipeline_fps'] / best:6.2f} "
                  f"{med['latency_p50_ms']:8.1f} {med['latency_p99_ms']:8.1f} {med['latency_p99_ms'] / p50_1:10.2f} "
                  f"{med['dropped']:7.0f}")
    last = [r for r in rows if r["repeat"] == args.repeats - 1]
    for name in args.variants:
        print(f"\n{name} (last round):")
        print(format_stage_table([r for r in last if r["variant"] == name]))
        print(format_calls_and_cpu([r for r in last if r["variant"] == name]))
    if args.json:
        args.json.write_text(json.dumps({"bare": bares, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
