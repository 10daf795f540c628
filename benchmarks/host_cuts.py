"""The host's work per frame, before and after each cut, timed interleaved in one process.

Cuts measured (docs/results.md, "Speed"):

- drift metrics: the numpy frame metrics and frozen check as they were, against the OpenCV ones
  that replaced them (runtime/health/drift.frame_metrics, runtime/health/health);
- heatmaps: a PNG per verdict, against the default policy (every fail + every 10th pass), at a stated
  fail rate;
- JPEG decode at reduced scale (cv2.IMREAD_REDUCED_COLOR_k, k = 2/4/8 chosen so the decoded frame
  still covers the model input) + the one INTER_AREA resize, against a full decode + resize; and
  what it does to the scores of a model (max relative change, verdict flips), because the fit saw
  full decodes. Measured here, not wired into the runtime (docs/results.md says why).

Frames: the packaged hazelnut sample upscaled to --size (a camera larger than the model input),
stored as JPEG quality 95. Timings are medians of --reps rounds, each round running every variant
once over every frame, so a busy machine slows both sides of a ratio alike.

    python benchmarks/host_cuts.py --model runs/hz224 [--size 1024] [--reps 30] [--fail-rate 0.02] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_somad.contracts.geometry import resize_frame
from edge_somad.contracts.manifest import load_manifest
from edge_somad.data import sample_data_root
from edge_somad.runtime.health import drift
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.scorers.ort_scorer import OrtScorer

PASS_EVERY = 10  # the default of run --heatmap-passes


def numpy_metrics(frame: np.ndarray) -> dict[str, float]:
    """runtime/health/drift.frame_metrics before the cut (numpy, float32 luma)."""
    g = drift.grey(frame)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return {"brightness": float(g.mean()), "contrast": float(g.std()), "sharpness": float(lap.var())}


def numpy_frozen(prev: np.ndarray, cur: np.ndarray) -> float:
    return float(np.abs(prev.astype(np.int16) - cur).mean())


def reduction(src_h: int, src_w: int, dst_h: int, dst_w: int, mode: str) -> int:
    """Largest k in 1/2/4/8 whose reduced frame still covers what the resize keeps at model size."""
    fit = max if mode == "crop" else min
    s = fit(dst_h / src_h, dst_w / src_w) if mode != "stretch" else max(dst_h / src_h, dst_w / src_w)
    return max(k for k in (1, 2, 4, 8) if k * s <= 1.0)


def camera_jpegs(size: int) -> list[bytes]:
    out = []
    for p in sorted((sample_data_root() / "hazelnut_toy" / "test").rglob("*.jpg")):
        img = cv2.resize(cv2.imread(str(p)), (size, size), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode {p}")
        out.append(buf.tobytes())
    return out


def timed_rounds(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median milliseconds per call of each variant, the variants interleaved in every round."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="exported, calibrated model dir")
    ap.add_argument("--size", type=int, default=1024, help="camera frame side (px)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--fail-rate", type=float, default=0.02, help="share of fails for the heatmap policy")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    manifest = load_manifest(args.model)
    pre = manifest.preprocessing
    h, w, mode = pre.height, pre.width, pre.resize
    jpegs = camera_jpegs(args.size)
    raw = [np.frombuffer(b, np.uint8) for b in jpegs]
    k = reduction(args.size, args.size, h, w, mode)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[k]
    full = [resize_frame(cv2.imdecode(b, cv2.IMREAD_COLOR), h, w, mode) for b in raw]
    reduced = [resize_frame(cv2.imdecode(b, flag), h, w, mode) for b in raw]
    n = len(raw)

    with OrtScorer(args.model / manifest.onnx, h, w) as scorer:
        s_full = np.array([scorer.score(f[None]).scores[0] for f in full], np.float64)
        s_red = np.array([scorer.score(f[None]).scores[0] for f in reduced], np.float64)
        amap = scorer.score(full[0][None]).maps[0]
    thr = manifest.threshold
    v = messages  # the heatmap encoder the pipeline uses

    per = {}
    per.update(timed_rounds({
        "decode_full": lambda: [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in raw],
        f"decode_reduced_{k}": lambda: [cv2.imdecode(b, flag) for b in raw],
    }, args.reps))
    big = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in raw]
    small = [cv2.imdecode(b, flag) for b in raw]
    per.update(timed_rounds({
        "resize_from_full": lambda: [resize_frame(f, h, w, mode) for f in big],
        f"resize_from_reduced_{k}": lambda: [resize_frame(f, h, w, mode) for f in small],
        "drift_numpy": lambda: [numpy_metrics(f) for f in full],
        "drift_opencv": lambda: [drift.frame_metrics(f) for f in full],
        "frozen_numpy": lambda: [numpy_frozen(a, b) for a, b in zip(full, full[1:] + full[:1], strict=True)],
        "frozen_opencv": lambda: [cv2.norm(a, b, cv2.NORM_L1) / a.size
                                  for a, b in zip(full, full[1:] + full[:1], strict=True)],
        "heatmap_png": lambda: [v.encode_heatmap(amap, "png", thr) for _ in range(n)],
    }, args.reps))
    ms = {name: t / n for name, t in per.items()}  # per frame
    png_policy = ms["heatmap_png"] * (args.fail_rate + (1 - args.fail_rate) / PASS_EVERY)
    before = ms["decode_full"] + ms["resize_from_full"] + ms["drift_numpy"] + ms["frozen_numpy"] + ms["heatmap_png"]
    after_wired = ms["decode_full"] + ms["resize_from_full"] + ms["drift_opencv"] + ms["frozen_opencv"] + png_policy
    after_all = (ms[f"decode_reduced_{k}"] + ms[f"resize_from_reduced_{k}"] + ms["drift_opencv"]
                 + ms["frozen_opencv"] + png_policy)
    flips = None if thr is None else int(np.sum((s_full > thr) != (s_red > thr)))
    result: dict[str, Any] = {
        "frames": n, "camera": [args.size, args.size], "model_input": [h, w], "reduction": k,
        "ms_per_frame": {k2: round(v2, 4) for k2, v2 in ms.items()},
        "heatmap_policy_ms": round(png_policy, 4), "fail_rate": args.fail_rate,
        "host_ms_before": round(before, 3), "host_ms_after_wired_cuts": round(after_wired, 3),
        "host_ms_after_with_reduced_decode": round(after_all, 3),
        "reduced_decode_scores": {"max_rel_change": float(np.max(np.abs(s_red - s_full) / np.abs(s_full))),
                                  "median_rel_change": float(np.median(np.abs(s_red - s_full) / np.abs(s_full))),
                                  "verdict_flips": flips, "threshold": thr},
    }
    print(f"{n} frames {args.size}x{args.size} JPEG -> {h}x{w} ({mode}); medians of {args.reps} interleaved rounds, "
          "ms per frame:")
    for name, t in ms.items():
        print(f"  {name:24s} {t:8.4f}")
    print(f"  heatmap policy (fails {args.fail_rate:.0%} + every {PASS_EVERY}th pass): {png_policy:.4f}")
    print(f"host per frame (decode, resize, drift, frozen, heatmap): before {before:.3f} ms, "
          f"with the wired cuts {after_wired:.3f} ms, plus reduced decode {after_all:.3f} ms")
    r = result["reduced_decode_scores"]
    print(f"reduced decode (1/{k}) moves scores by {r['median_rel_change']:.2e} median, {r['max_rel_change']:.2e} max "
          f"(relative); verdict flips {flips} of {n}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
