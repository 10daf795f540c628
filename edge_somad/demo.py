"""The main job, end to end on the bundled Hazelnut Toy sample (offline, CPU).

fit -> export (ONNX + manifest) -> calibrate (held-out good images) -> evaluate (ONNX Runtime)
-> a video of the test parts played as a camera -> run -> verdicts over ZeroMQ, received by the
reference subscriber (the PLC/MES bridge) and checked against the ground truth.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from edge_somad.contracts import defaults
from edge_somad.contracts.exits import EXIT_NOT_MET, EXIT_OK
from edge_somad.data import SAMPLE_CATEGORY, resolve_category


def demo_keys(folder: Path) -> tuple[Any, Any]:
    """Server and bridge key pairs under folder (made once), the bridge's public key in folder/clients."""
    from edge_somad.runtime.messaging.curve import load_client, load_server, make_keys

    for name in ("server", "bridge"):
        if not (folder / f"{name}.key_secret").is_file():
            make_keys(folder, name)
    (folder / "clients").mkdir(exist_ok=True)
    shutil.copyfile(folder / "bridge.key", folder / "clients" / "bridge.key")
    return (load_server(folder / "server.key_secret", folder / "clients"),
            load_client(folder / "server.key", folder / "bridge.key_secret"))


def run_demo(out: Path, publish: str, curve: bool = False) -> int:
    from edge_somad.bench.scorers import write_video
    from edge_somad.evaluate import format_table
    from edge_somad.runtime.messaging.subscriber import subscribe_loop
    from edge_somad.runtime.pipeline.launch import run_pipeline
    from edge_somad.runtime.pipeline.pipeline import PipelineConfig
    from edge_somad.workflows import evaluate_from_cli, export_from_cli

    cat = resolve_category(SAMPLE_CATEGORY)
    print(f"[1/4] fit + export + calibrate on {cat.root} -> {out}", file=sys.stderr)
    manifest = export_from_cli(SAMPLE_CATEGORY, out, cat.root.parent, None, defaults.ENGINE_PRECISION,
                               defaults.TARGET_FRR)
    print(f"      threshold {manifest.threshold:.3f}, onnx {manifest.onnx_sha256[:12]}", file=sys.stderr)
    print("[2/4] evaluate the exported graph (ONNX Runtime, CPU)", file=sys.stderr)
    report = evaluate_from_cli(out, SAMPLE_CATEGORY, cat.root.parent, "onnxruntime", "fp32", None, None)
    print(format_table(report), file=sys.stderr)
    samples = list(cat.test)
    # The camera's own resolution: resizing to another aspect ratio would fake a camera change.
    video = write_video([s.path for s in samples], out / "line.avi", None, fps=5.0)
    print(f"[3/4] streaming {video} ({len(samples)} frames) as camera 'line1' to {publish}", file=sys.stderr)
    connect = publish.replace("*", "127.0.0.1")
    server, client = demo_keys(out / "keys") if curve else (None, None)
    if curve:
        print(f"      CURVE on: keys in {out / 'keys'}", file=sys.stderr)
    received = io.StringIO()
    sub = threading.Thread(
        target=subscribe_loop, args=(connect, "somad/", out / "verdicts.csv", out / "fails", len(samples), 60.0),
        kwargs={"out": received, "curve": client}, daemon=True,
    )
    sub.start()
    final = run_pipeline(out, [f"line1={video}"], backend="onnxruntime", publish=publish,
                         config=PipelineConfig(max_frames=len(samples)), wait_subscribers=1, curve=server)
    sub.join(timeout=70)
    verdicts = [json.loads(line) for line in received.getvalue().splitlines() if line.strip()]
    return _summarise(verdicts, [s.label for s in samples], final)


def _summarise(verdicts: list[dict], labels: list[int], final: dict) -> int:
    print("[4/4] verdicts received by the subscriber:", file=sys.stderr)
    ok = 0
    for v in verdicts:
        truth = "defect" if labels[v["frame_id"] % len(labels)] else "good"
        good_call = (v["verdict"] == "fail") == (truth == "defect") and v["verdict"] != "error"
        ok += good_call
        print(f"  frame {v['frame_id']:>3} {v['camera']:<6} {v['verdict']:<5} score {v['score_normalised'] or 0:5.2f}"
              f"x threshold  truth {truth:<6} {'ok' if good_call else 'WRONG'}", file=sys.stderr)
    print(f"{len(verdicts)} verdicts, {ok} match the ground truth; pipeline: {final.get('verdicts')}",
          file=sys.stderr)
    # The demo's promise is every part judged right: a missing or a wrong verdict is the outcome not reached.
    return EXIT_OK if len(verdicts) == len(labels) and ok == len(labels) else EXIT_NOT_MET
