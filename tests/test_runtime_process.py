"""The runtime as a process: commands, exit codes, SIGTERM, and no torch anywhere."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge_somad.cli.runtime import run, subscribe
from edge_somad.contracts.manifest import load_manifest, save_manifest, sha256_file
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import build_onnx, defect, free_port, grey, make_model_dir, write_video

REPO = Path(__file__).resolve().parents[1]


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("run")(run)
    a.command("subscribe")(subscribe)
    return a


def test_run_command_exit_codes(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", [grey(), defect()] * 3)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    base = ["run", "--camera", str(video), "--model", str(d), "--publish", endpoint]
    ok = CliRunner().invoke(app(), [*base, "--max-frames", "4", "--heatmap", "f16", "--overlay",
                                    "--queue-size", "3", "--topic-prefix", "line7", "--log-level", "warning"])
    assert ok.exit_code == 0, ok.output
    assert "max frames (4)" in ok.output and "'pass': 2, 'fail': 2" in ok.output
    bad = CliRunner().invoke(app(), [*base, "--backend", "tensorrt"])
    assert bad.exit_code == 2 and "tensorrt" in bad.output
    bad = CliRunner().invoke(app(), [*base, "--precision", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output
    bad = CliRunner().invoke(app(), [*base, "--heatmap", "jpeg"])
    assert bad.exit_code == 2 and "--heatmap 'jpeg'" in bad.output
    build_onnx(d / "model.onnx", height=32)  # graph replaced after export: manifest mismatch
    bad = CliRunner().invoke(app(), base)
    assert bad.exit_code == 2 and "sha256" in bad.output
    bad = CliRunner().invoke(app(), ["run", "--camera", str(tmp_path / "nope"), "--model", str(d)])
    assert bad.exit_code == 2 and "neither a camera index" in bad.output


def test_subscribe_command_times_out_with_exit_1() -> None:
    t0 = time.monotonic()
    res = CliRunner().invoke(app(), ["subscribe", "--connect", f"tcp://127.0.0.1:{free_port()}",
                                     "--count", "1", "--timeout", "0.3"])
    assert res.exit_code == 1 and "received 0 of 1" in res.output
    assert time.monotonic() - t0 < 5


def test_sigterm_scores_queue_publishes_final_status_exit_0(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", [defect()] * 5)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock = connect_subscriber(endpoint, b"somad/")
    # A live source that never connects keeps the pipeline running until it is told to stop.
    proc = subprocess.Popen(
        [edge_somad_exe(), "run", "--camera", "live=http://127.0.0.1:1/x",
         "--camera", f"v={video}", "--model", str(d), "--publish", endpoint, "--wait-subscribers", "1",
         "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got: list[messages.Received] = []
        deadline = time.monotonic() + 30
        sent = False
        while time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            m = messages.parse_message(sock.recv_multipart())
            got.append(m)
            verdicts = [g for g in got if g.kind == "verdict"]
            if not sent and len(verdicts) == 5 and any(
                    g.header.get("status") == "unavailable" for g in got if g.kind == "status"):
                proc.send_signal(signal.SIGTERM)
                sent = True
            if m.kind == "status" and m.header.get("event") == "final":
                break
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    err = proc.stderr.read().decode()
    assert sent, err
    assert rc == 0, err
    final = got[-1].header
    assert (final["event"], final["reason"], final["status"]) == ("final", "signal SIGTERM", "stopped")
    assert final["verdicts"]["fail"] == 5
    assert final["cameras"]["live"]["status"] in ("unavailable", "stopped")


def test_runtime_imports_no_torch(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", [grey(), defect()])
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import edge_somad.runtime.scorers.backends, edge_somad.runtime.pipeline.camera, edge_somad.cli.runtime
        import edge_somad.runtime.pipeline.defects, edge_somad.runtime.messaging.messages
        import edge_somad.runtime.scorers.ort_scorer, edge_somad.bench.pipeline
        import edge_somad.runtime.messaging.publisher, edge_somad.runtime.messaging.subscriber
        import edge_somad.cli.bridge, edge_somad.runtime.bridges.mqtt, edge_somad.runtime.bridges.opcua
        import edge_somad.runtime.health.drift, edge_somad.runtime.health.health, edge_somad.runtime.view.view_state
        from edge_somad.runtime.pipeline.launch import run_pipeline
        from edge_somad.runtime.pipeline.pipeline import PipelineConfig
        final = run_pipeline(Path({str(d)!r}), [{str(video)!r}], publish="tcp://127.0.0.1:{free_port()}",
                             config=PipelineConfig(overlay=True), handle_signals=False)
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print(json.dumps(final["verdicts"]))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"pass": 1, "fail": 1, "error": 0}


def test_corrupt_graph_with_matching_sha256_is_a_clear_error(tmp_path: Path) -> None:
    """A truncated model.onnx whose sha256 the manifest vouches for: what, where, how to rebuild; no traceback."""
    d = make_model_dir(tmp_path / "m")
    onnx_path = d / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 2])
    save_manifest(d, dataclasses.replace(load_manifest(d, verify_onnx=False), onnx_sha256=sha256_file(onnx_path)))
    video = write_video(tmp_path / "v.avi", [grey()])
    res = subprocess.run(
        [edge_somad_exe(), "run", "--camera", str(video), "--model", str(d),
         "--publish", f"tcp://127.0.0.1:{free_port()}", "--backend", "onnxruntime"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"{onnx_path}" in res.stderr and "cannot be loaded by ONNX Runtime" in res.stderr
    assert f"edge-somad export --model {d}" in res.stderr


def test_graph_that_loads_but_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    from edge_somad.errors import ArtifactError
    from edge_somad.runtime.pipeline.model_slot import warm_up

    class Broken:  # what ONNX Runtime does with a graph whose kernels fail: its own exception type
        def score(self, frames):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code\nmore")

    d = make_model_dir(tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"failed on a blank 64x96 frame \(RuntimeError: .*RUNTIME_EXCEPTION.*"
                                            r"edge-somad export --model"):
        warm_up(Broken(), load_manifest(d), d)
