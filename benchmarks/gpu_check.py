"""The torch-CUDA scorer on an exported model's maths: parity with the CPU ONNX Runtime scores, p50/p99.

Two steps, two machines (docs/gpu.md):

    # 1. here, on the CPU machine (the project's .venv): pack model + reference scores + backbone code
    .venv/bin/python benchmarks/gpu_check.py prepare --model MODEL_DIR --out runs/gpu_bundle
    # 2. there, on the GPU machine (its system python3 with torch+CUDA; nothing installed, no network),
    #    the working tree copied and runs/gpu_bundle carried along:
    bash benchmarks/gpu_check.sh runs/gpu_bundle
    # dry run of step 2 on this CPU (torch CPU, few iterations):
    .venv/bin/python benchmarks/gpu_check.py run --bundle runs/gpu_bundle --device cpu --iters 5

`run` imports only torch, numpy and edge_somad's own folder (no runtime package, no onnxruntime,
no OpenCV), builds SomadNet from the bundle exactly as the torch backend does (model.load_torch_model),
and scores the bundle's frames in these modes:

    fp32      float32, TF32 off: must match ONNX Runtime's CPU scores (tolerances in TOLERANCES)
    tf32      float32 with TF32 convolutions and matmuls (torch's cuDNN default)
    fp16      backbone under float16 autocast, distance tail in float32: what the fp16 graph does
    fp16-all  everything under float16 autocast: informative only (why the tail stays float32)

Timing is per call with CUDA synchronised, after warm-up: "e2e" from a host uint8 batch to host
numpy map+score (what TorchScorer does), "device" with the batch already on the GPU. fp32 and
fp16 are also timed as CUDA graphs (launch overhead removed). onnxruntime's CUDA provider is
verified and timed when that build is present; TensorRT is only noted (not built here).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the GPU machine has no install of ours: edge_somad/ from the tree
    sys.path.insert(0, str(REPO))

# Relative tolerances against ONNX Runtime CPU: image scores relative to each score, maps relative
# to the reference maps' largest |value|. fp32's matches the CPU torch<->ORT parity tests; tf32 and
# fp16's scores match the fp16 graph's parity test (tests/test_fp16.py). Their maps get 2e-2: the map
# figure is the single worst pixel of every map, and on an H200 (torch 2.11, CUDA 13) it measured
# 1.02e-2 (fp16) and 1.04e-2 (tf32) while the scores stayed within 1.7e-3 with no verdict flipped.
# None: reported, not judged.
TOLERANCES: dict[str, tuple[float, float] | None] = {
    "fp32": (1e-3, 1e-3), "tf32": (1e-2, 2e-2), "fp16": (1e-2, 2e-2), "fp16-all": None,
}
GRAPH_MODES = ("fp32", "fp16")
BATCHES = (1, 8)


def compare(scores: Any, maps: Any, ref_scores: Any, ref_maps: Any, threshold: float) -> dict[str, Any]:
    """Largest differences of a mode's output against a reference (numpy arrays), and verdict flips."""
    import numpy as np

    s, rs = np.asarray(scores, np.float64), np.asarray(ref_scores, np.float64)
    m, rm = np.asarray(maps, np.float64), np.asarray(ref_maps, np.float64)
    out = {
        "score_abs": float(np.max(np.abs(s - rs))),
        "score_rel": float(np.max(np.abs(s - rs) / np.maximum(np.abs(rs), 1e-12))),
        "map_abs": float(np.max(np.abs(m - rm))),
        "map_rel": float(np.max(np.abs(m - rm)) / max(float(np.max(np.abs(rm))), 1e-12)),
        "finite": bool(np.isfinite(s).all() and np.isfinite(m).all()),
        "verdict_flips": None,
    }
    if np.isfinite(threshold):
        out["verdict_flips"] = int(np.sum((s > threshold) != (rs > threshold)))
    return out


def within(mode: str, diff: dict[str, Any]) -> bool | None:
    tol = TOLERANCES[mode]
    if tol is None:
        return None
    return diff["finite"] and diff["score_rel"] <= tol[0] and diff["map_rel"] <= tol[1]


def make_forward(net: Any, mode: str, device: Any) -> Callable[[Any], tuple[Any, Any]]:
    """frames uint8 tensor on device -> (map, score) float32, in one of TOLERANCES' modes."""
    import torch

    tf32 = mode == "tf32"
    # no weight-cast cache: the forward is also captured as a CUDA graph, which must redo the casts
    half = torch.autocast(device.type, dtype=torch.float16, cache_enabled=False)

    def forward(x: Any) -> tuple[Any, Any]:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        if mode == "fp16":
            with half:
                feats = net.features(x)
            return net.score_features(feats.float())  # the float32 tail, as export/fp16.py keeps it
        if mode == "fp16-all":
            with half:
                amap, score = net(x)
            return amap.float(), score.float()
        return net(x)

    return forward


def time_calls(fn: Callable[[], object], sync: Callable[[], None], iters: int, warmup: int,
               budget_s: float) -> dict[str, Any]:
    """Per-call milliseconds (synchronised) after warm-up: p50, p99, calls timed."""
    import numpy as np

    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)), "n": len(times)}


def environment(device: str) -> dict[str, Any]:
    import platform

    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    for name in ("onnxruntime", "onnx", "cv2", "tensorrt"):
        spec = importlib.util.find_spec(name)
        env[name] = None if spec is None else _version(name)
    if env["onnxruntime"]:
        import onnxruntime as ort

        env["ort_providers"] = ort.get_available_providers()
    return env


def _version(module: str) -> str:
    from importlib import metadata

    for dist in {"cv2": ("opencv-python-headless", "opencv-python")}.get(module, (module,)):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    return "present"


def _graph_forward(forward: Callable[[Any], tuple[Any, Any]], x: Any) -> tuple[Callable[[], None], Any, Any]:
    """Capture forward(x) as a CUDA graph: (replay, static input, static outputs)."""
    import torch

    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm cuDNN/cuBLAS workspaces outside the capture
            forward(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = forward(static_x)
    return graph.replay, static_x, outs


def run(bundle: Path, device: str, iters: int, warmup: int, budget_s: float,
        modes: tuple[str, ...] = tuple(TOLERANCES), batches: tuple[int, ...] = BATCHES) -> dict[str, Any]:
    import numpy as np
    import torch

    from benchmarks.gpu_bundle import BUNDLE_INFO_NAME, REFERENCE_NAME  # only names; imports no runtime

    sys.path.insert(0, str(bundle / "vendor"))
    from edge_somad.model import load_torch_model

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device} but torch {torch.__version__} sees no CUDA GPU")
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    result: dict[str, Any] = {"env": environment(device), "bundle": json.loads((bundle / BUNDLE_INFO_NAME).read_text())}
    ref = np.load(bundle / REFERENCE_NAME, allow_pickle=False)
    frames, threshold = ref["frames"], float(ref["threshold"])
    net = load_torch_model(bundle / "model").to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    parity, timing = {}, []
    with torch.inference_mode():
        x_all = torch.from_numpy(frames).to(dev)
        for mode in modes:
            forward = make_forward(net, mode, dev)
            amap, score = forward(x_all)
            got_s, got_m = score.cpu().numpy(), amap.cpu().numpy()
            vs_ort = compare(got_s, got_m, ref["ort_scores"], ref["ort_maps"], threshold)
            vs_torch = compare(got_s, got_m, ref["torch_cpu_scores"], ref["torch_cpu_maps"], threshold)
            parity[mode] = {"vs_ort": vs_ort, "vs_torch_cpu": vs_torch, "tolerance": TOLERANCES[mode],
                            "pass": within(mode, vs_ort)}
            for b in batches:
                host = np.ascontiguousarray(frames[np.arange(b) % len(frames)])
                x = torch.from_numpy(host).to(dev)

                def e2e(host: Any = host, forward: Any = forward) -> None:
                    m, s = forward(torch.from_numpy(host).to(dev))
                    m.cpu(), s.cpu()

                row = {"mode": mode, "batch": b, "how": "eager",
                       "e2e": time_calls(e2e, sync, iters, warmup, budget_s),
                       "device": time_calls(lambda x=x, forward=forward: forward(x), sync, iters, warmup, budget_s)}
                timing.append(row)
                if dev.type == "cuda" and mode in GRAPH_MODES:
                    timing.append(_graph_row(forward, host, x, mode, b, sync, iters, warmup, budget_s))
    result["parity"], result["timing"] = parity, timing
    result["onnxruntime_cuda"] = _ort_cuda(bundle, frames, ref, threshold, iters, warmup, budget_s, batches)
    return result


def _graph_row(forward: Any, host: Any, x: Any, mode: str, b: int, sync: Any, iters: int, warmup: int,
               budget_s: float) -> dict[str, Any]:
    import torch

    try:
        replay, static_x, (m, s) = _graph_forward(forward, x)
    except RuntimeError as exc:  # reported in the table; the eager rows still stand
        return {"mode": mode, "batch": b, "how": "cuda-graph", "error": str(exc).splitlines()[0][:200]}
    src = torch.from_numpy(host)

    def e2e() -> None:
        static_x.copy_(src)
        replay()
        m.cpu(), s.cpu()

    return {"mode": mode, "batch": b, "how": "cuda-graph", "e2e": time_calls(e2e, sync, iters, warmup, budget_s),
            "device": time_calls(replay, sync, iters, warmup, budget_s)}


def _ort_cuda(bundle: Path, frames: Any, ref: Any, threshold: float, iters: int, warmup: int,
              budget_s: float, batches: tuple[int, ...]) -> dict[str, Any]:
    """The exported graph itself on onnxruntime's CUDA provider, when that build is installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return {"skipped": "onnxruntime is not installed"}
    import onnxruntime as ort

    from edge_somad.contracts.names import INPUT_NAME, OUTPUT_NAMES

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (CPU build)"}
    onnx = bundle / "model" / "model.onnx"
    if not onnx.is_file():
        return {"skipped": "the bundle holds no model.onnx (see bundle.json)"}
    sess = ort.InferenceSession(str(onnx), providers=["CUDAExecutionProvider"])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        return {"skipped": f"CUDA provider failed to load; session runs on {sess.get_providers()}"}
    maps, scores = zip(*(sess.run(list(OUTPUT_NAMES), {INPUT_NAME: frames[i:i + 1]}) for i in range(len(frames))),
                       strict=True)
    import numpy as np

    out: dict[str, Any] = {"vs_ort_cpu": compare(np.concatenate(scores), np.concatenate(maps), ref["ort_scores"],
                                                 ref["ort_maps"], threshold)}
    out["pass"] = within("fp32", out["vs_ort_cpu"])
    for b in batches:
        x = np.ascontiguousarray(frames[np.arange(b) % len(frames)])
        out[f"batch{b}"] = time_calls(lambda x=x: sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x}), lambda: None,
                                      iters, warmup, budget_s)
    return out


def format_report(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = ["environment: " + ", ".join(f"{k}={v}" for k, v in env.items()),
             f"model: {result['bundle']['backbone']} {result['bundle']['method']} input {result['bundle']['input']}",
             "", "parity against ONNX Runtime CPU (and torch CPU):",
             f"{'mode':9} {'score rel':>10} {'map rel':>10} {'tol s/map':>12} {'flips':>6} {'vs torch':>10}  result"]
    for mode, p in result["parity"].items():
        o, tol = p["vs_ort"], p["tolerance"]
        verdict = {True: "ok", False: "FAIL", None: "informative"}[p["pass"]]
        tol_s = "-" if tol is None else f"{tol[0]:.0e}/{tol[1]:.0e}"
        lines.append(f"{mode:9} {o['score_rel']:10.2e} {o['map_rel']:10.2e} {tol_s:>12} {o['verdict_flips']!s:>6} "
                     f"{p['vs_torch_cpu']['score_rel']:10.2e}  {verdict}{'' if o['finite'] else ' (non-finite)'}")
    lines += ["", "latency, ms per call (synchronised; e2e = host uint8 in -> host map+score out):",
              f"{'mode':9} {'how':10} {'batch':>5} {'e2e p50':>8} {'e2e p99':>8} {'dev p50':>8} {'dev p99':>8} "
              f"{'img/s':>8}"]
    for r in result["timing"]:
        if "error" in r:
            lines.append(f"{r['mode']:9} {r['how']:10} {r['batch']:5d}  failed: {r['error']}")
            continue
        e, d = r["e2e"], r["device"]
        lines.append(f"{r['mode']:9} {r['how']:10} {r['batch']:5d} {e['p50']:8.2f} {e['p99']:8.2f} {d['p50']:8.2f} "
                     f"{d['p99']:8.2f} {1e3 * r['batch'] / e['p50']:8.1f}")
    oc = result["onnxruntime_cuda"]
    if "skipped" in oc:
        lines.append(f"\nonnxruntime CUDA: skipped ({oc['skipped']})")
    else:
        lines.append(f"\nonnxruntime CUDA: score rel {oc['vs_ort_cpu']['score_rel']:.2e}, "
                     f"{'ok' if oc['pass'] else 'FAIL'}; " + ", ".join(
                         f"batch {b} p50 {oc[f'batch{b}']['p50']:.2f} / p99 {oc[f'batch{b}']['p99']:.2f} ms"
                         for b in BATCHES if f"batch{b}" in oc))
    trt = env.get("tensorrt")
    lines.append(f"tensorrt: {trt} (present; not built by this check)" if trt else "tensorrt: not installed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="CPU machine: write the bundle (model, reference scores, backbone code)")
    p.add_argument("--model", type=Path, required=True, help="an exported model dir (model.onnx + manifest.json)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_bundle"))
    p.add_argument("--images", type=Path, default=None, help="folder of photos (default: the model's test set)")
    p.add_argument("--no-onnx", action="store_true", help="leave model.onnx out (for ORT-CUDA only)")
    r = sub.add_parser("run", help="GPU machine (or --device cpu as a dry run): parity and latency")
    r.add_argument("--bundle", type=Path, default=Path("runs/gpu_bundle"))
    r.add_argument("--device", default="cuda")
    r.add_argument("--iters", type=int, default=200, help="timed calls per row at most")
    r.add_argument("--warmup", type=int, default=20)
    r.add_argument("--budget-s", type=float, default=4.0, help="seconds per timed row at most")
    r.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    r.add_argument("--modes", nargs="+", choices=tuple(TOLERANCES), default=list(TOLERANCES))
    r.add_argument("--batches", nargs="+", type=int, default=list(BATCHES), help="batch sizes to time (<= 8)")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        from benchmarks.gpu_bundle import prepare

        info = prepare(args.model, args.out, args.images, with_onnx=not args.no_onnx)
        print(json.dumps(info, indent=1))
        print(f"bundle written: {args.out} ({info['bytes'] / 2**20:.1f} MiB)")
        return 0
    if not all(1 <= b <= 8 for b in args.batches):
        ap.error(f"--batches {args.batches}: the bundle holds 8 frames; give sizes from 1 to 8")
    result = run(args.bundle, args.device, args.iters, args.warmup, args.budget_s, tuple(args.modes),
                 tuple(args.batches))
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    failed = [m for m, p in result["parity"].items() if p["pass"] is False]
    if result["onnxruntime_cuda"].get("pass") is False:
        failed.append("onnxruntime-cuda")
    if failed:
        print(f"parity outside tolerance: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
