"""INT8 on another x86-64 CPU: the same graphs scored natively and on an emulated CPU without VNNI.

ONNX Runtime picks its int8 kernels by CPUID. Without VNNI (AVX2, AVX-512 without VNNI) its u8 x s8
kernel adds two products into a saturating int16 (VPMADDUBSW); with VNNI it does not. This script
runs each graph natively and under `qemu-x86_64 -cpu <CPU>` (user-mode emulation; QEMU >= 7.2 has
AVX2 but no AVX-512 in TCG), checks first that the emulated CPU really takes the saturating path,
then compares scores and maps of a few test images. A check, not a timed test (qemu is ~50x slower):

    apt-get install -y qemu-user
    python benchmarks/int8_cpu_check.py --model models/bottle --data-root DATA --category bottle \\
        [--cpu Haswell] [--images 6] [--graph other.int8.onnx ...]

Graphs default to the manifest's model.onnx (fp32: float kernels differ only in rounding) and
model.int8.onnx. Exit status 1 when an int8 graph moves more than --tol of the fp32 score range.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PAIR = 255 * 127  # one u8 x s8 product at full range; two of them overflow int16


def probe() -> str:
    """'exact' or 'saturating': does this CPU's ORT u8 x s8 GEMM clip pair sums at int16?"""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 32
    inits = [numpy_helper.from_array(np.full((k, 4), 127, np.int8), "w"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"), numpy_helper.from_array(np.array(0, np.int8), "wz")]
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w", "xz", "wz"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [16, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [16, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = int(sess.run(None, {"x": np.full((16, k), 255, np.uint8)})[0][0, 0])
    return "exact" if got == PAIR * k else f"saturating ({got} instead of {PAIR * k})"


def child(frames_path: Path, out_path: Path, graphs: list[str]) -> None:
    """Score frames with each graph on this (maybe emulated) CPU; write scores and maps."""
    import onnxruntime as ort

    frames = np.load(frames_path)
    out: dict[str, np.ndarray] = {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the same reduction order natively and emulated
    for i, graph in enumerate(graphs):
        sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        runs = [sess.run(["anomaly_map", "score"], {"frames": frames[j:j + 1]}) for j in range(len(frames))]
        out[f"map{i}"] = np.concatenate([r[0] for r in runs])
        out[f"score{i}"] = np.concatenate([r[1] for r in runs])
    out["probe"] = np.array(probe())
    np.savez(out_path, **out)


def test_frames(data_root: Path, category: str, n: int, model_dir: Path) -> tuple[np.ndarray, list[str]]:
    from edge_somad.contracts.geometry import batch_frames
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.data import load_category, read_image

    pre = load_manifest(model_dir).preprocessing
    test = load_category(data_root, category).test
    pick = np.unique(np.linspace(0, len(test) - 1, n).round().astype(int))
    names = [f"{test[i].defect_type}/{Path(test[i].path).name}" for i in pick]
    frames = batch_frames([read_image(test[i].path) for i in pick], pre.height, pre.width, pre.resize, pre.pad_value)
    return frames, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--cpu", default="Haswell", help="qemu -cpu model (qemu-x86_64 -cpu help)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--graph", type=Path, action="append", default=[], help="more graphs to compare")
    ap.add_argument("--tol", type=float, default=1e-3, help="int8 score change limit, fraction of fp32 range")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--graphs", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.graphs)
        return
    if args.model is None or args.data_root is None:
        ap.error("--model and --data-root are required")
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("qemu-x86_64 not found: apt-get install -y qemu-user")
    from edge_somad.contracts.manifest import load_manifest

    manifest = load_manifest(args.model)
    graphs = [args.model / manifest.onnx]
    if manifest.int8_onnx:
        graphs.append(args.model / manifest.int8_onnx)
    graphs += args.graph
    frames, names = test_frames(args.data_root, args.category, args.images, args.model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "frames.npy", frames)
        base = [sys.executable, str(Path(__file__).resolve()), "--child", str(Path(tmp) / "frames.npy")]
        for where, prefix in (("native", []), (f"qemu -cpu {args.cpu}", [qemu, "-cpu", args.cpu])):
            out = Path(tmp) / f"{len(results)}.npz"
            cmd = prefix + base + [str(out), "--graphs", *map(str, graphs)]
            # qemu warns about every CPUID feature TCG lacks; keep only real errors.
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{where} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
            results[where] = dict(np.load(out))
    native, emulated = results.values()
    print(f"images: {len(names)} ({', '.join(names)})")
    print(f"u8 x s8 kernel: native {native['probe']}; qemu -cpu {args.cpu}: {emulated['probe']}")
    if str(emulated["probe"]) == "exact":
        sys.exit(f"qemu -cpu {args.cpu} does not take the saturating path: nothing is tested. Pick a CPU without VNNI.")
    span = float(np.ptp(native["score0"])) or 1.0
    rows, worst = [], 0.0
    print(f"{'graph':<40} {'max |score diff|':>16} {'/ fp32 range':>12} {'max |map diff|':>14}")
    for i, graph in enumerate(graphs):
        ds = float(np.abs(native[f"score{i}"] - emulated[f"score{i}"]).max())
        dm = float(np.abs(native[f"map{i}"] - emulated[f"map{i}"]).max())
        rows.append({"graph": str(graph), "max_score_diff": ds, "rel_fp32_range": ds / span, "max_map_diff": dm,
                     "scores_native": native[f"score{i}"].tolist(), "scores_emulated": emulated[f"score{i}"].tolist()})
        print(f"{graph.name:<40} {ds:>16.6f} {ds / span:>12.2e} {dm:>14.6f}")
        if i > 0:
            worst = max(worst, ds / span)
    if args.json:
        args.json.write_text(json.dumps({"cpu": args.cpu, "images": names, "probe_native": str(native["probe"]),
                                         "probe_emulated": str(emulated["probe"]), "graphs": rows}, indent=1))
    if worst > args.tol:
        print(f"FAIL: an int8 graph's scores move {worst:.2e} of the fp32 score range between CPUs (limit {args.tol})")
        sys.exit(1)
    print(f"OK: int8 scores agree across CPUs within {args.tol} of the fp32 score range")


if __name__ == "__main__":
    main()
