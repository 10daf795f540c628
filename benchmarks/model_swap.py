"""What does swapping the model cost a running line? A paced replay at --fps through the real pipeline
(ZeroMQ, ONNX Runtime), a swap to a second copy of the model after --swap-at seconds, and the verdict
latency (capture -> publish) before, during and after the load, with the frames lost (none expected).

The second copy differs only in the graph's doc string (another sha256, the same maths), so the split
is visible in the verdicts' `model.onnx_sha256`. Needs the [fit] extra for `onnx` (to write that copy).
    python benchmarks/model_swap.py --model models/bottle --images DATA/bottle/test/good [--fps 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge_somad.contracts.manifest import load_manifest, save_manifest, sha256_file
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.model_slot import LiveModel, probe_score, warm_up
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.backends import open_scorer
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.runtime.scorers.reference_frame import write_reference


def bundles(model: Path, out: Path) -> tuple[Path, Path]:
    """Two runtime folders: the model (with a reference frame) and a copy whose graph bytes differ."""
    import onnx

    a, b = out / "a", out / "b"
    for d in (a, b):
        d.mkdir()
        shutil.copy(model / "manifest.json", d)
    m = load_manifest(model)
    shutil.copy(model / m.onnx, a)
    graph = onnx.load(str(model / m.onnx))
    graph.doc_string = "second copy for benchmarks/model_swap.py"
    onnx.save(graph, str(b / m.onnx))
    save_manifest(b, dataclasses.replace(m, onnx_sha256=sha256_file(b / m.onnx)))
    for d in (a, b):
        md = load_manifest(d)
        with OrtScorer(d / md.onnx, md.preprocessing.height, md.preprocessing.width) as scorer:
            save_manifest(d, write_reference(d, md, scorer))
    return a, b


def video(images: Path, path: Path, n: int) -> Path:
    files = sorted(images.glob("*.png"))[:n]
    first = cv2.imread(str(files[0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (first.shape[1], first.shape[0]))
    for f in files:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return path


def pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 1),
            "p99": round(float(np.percentile(values, 99)), 1), "max": round(max(values), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--swap-at", type=float, default=4.0)
    ap.add_argument("--backend", default="onnxruntime")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = bundles(args.model, Path(tmp))
        clip = video(args.images, Path(tmp) / "line.avi", 20)
        m = load_manifest(a)
        scorer = open_scorer(a, args.backend, "fp32", manifest=m)
        warm_up(scorer, m, a)
        live = LiveModel(scorer, m, "fp32", a, "checked at start", probe_score(scorer, m))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        got: list[dict] = []
        timing: dict = {}
        with Publisher(endpoint) as pub:
            sub = connect_subscriber(endpoint, b"somad/", None)
            pub.wait_for_subscribers(1, 5.0)
            spec = SourceSpec("file", str(clip), loop=True, fps=args.fps)
            pipe = Pipeline(scorer, m, [("cam0", spec)], pub, PipelineConfig(queue_size=64, heatmap="none"),
                            live=live)

            def read() -> None:
                while True:
                    if sub.poll(200):
                        msg = messages.parse_message(sub.recv_multipart())
                        got.append(msg.header | {"_kind": msg.kind})
                        if msg.kind == "status" and msg.header.get("event") == "final":
                            return

            def drive() -> None:
                time.sleep(args.swap_at)
                timing["t0"] = time.time()
                timing["event"] = pipe.slot.swap_model(b)
                timing["t1"] = time.time()
                time.sleep(max(0.0, args.seconds - args.swap_at - (timing["t1"] - timing["t0"])))
                pipe.stop("benchmark done")

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            threading.Thread(target=drive, daemon=True).start()
            final = pipe.run()
            reader.join(10)
            sub.close()
            pipe.slot.close()
        verdicts = [h for h in got if h["_kind"] == "verdict"]
        ids = [v["frame_id"] for v in verdicts]
        t0, t1 = timing["t0"], timing["t1"]
        lat = {"before": [v["latency_ms"] for v in verdicts if v["captured_at"] < t0],
               "during": [v["latency_ms"] for v in verdicts if t0 <= v["captured_at"] < t1],
               "after": [v["latency_ms"] for v in verdicts if v["captured_at"] >= t1]}
        shas = [v["model"]["onnx_sha256"] for v in verdicts]
        k = shas.index(timing["event"]["new_sha256"]) if timing["event"]["ok"] else None
        print(json.dumps({
            "model": str(args.model), "fps": args.fps, "ok": timing["event"]["ok"],
            "load_s": timing["event"].get("load_s"), "swap_call_s": round(t1 - t0, 3),
            "self_check": timing["event"].get("self_check") or timing["event"].get("reason"),
            "verdicts": len(ids), "frame_ids_contiguous": ids == list(range(ids[0], ids[0] + len(ids))),
            "split_clean": k is not None and len(set(shas[:k])) == 1 and len(set(shas[k:])) == 1,
            "queue_drops": pipe.cameras[0].queue.drops, "missed_ticks": pipe.cameras[0].missed_ticks,
            "errors": final["verdicts"]["error"], "latency_ms": {k2: pct(v) for k2, v in lat.items()},
        }, indent=1))


if __name__ == "__main__":
    main()
