"""`run --model-watch DIR` and SIGHUP: new model folders are picked up only when complete, through the
real `edge-somad run` process (real ZeroMQ, real ONNX Runtime models)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from edge_somad.contracts.manifest import load_manifest, save_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber
from edge_somad.runtime.pipeline.model_watch import ModelWatch
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import free_port, grey, write_video
from tests.helpers.runtime import make_bundle as bundle

REPO = Path(__file__).resolve().parents[1]


def test_watch_picks_up_a_completed_bundle_and_ignores_a_half_written_one(tmp_path: Path) -> None:
    watched = tmp_path / "incoming"
    watched.mkdir()
    bundle(watched / "already-there")  # the past: present at start, never loaded
    tried: list[Path] = []
    watch = ModelWatch(watched, tried.append)
    half = watched / "half"
    half.mkdir()
    shutil.copy(bundle(tmp_path / "src") / "model.onnx", half / "model.onnx")  # graph copied, manifest not yet
    shutil.copytree(tmp_path / "src", watched / ".copying")  # being copied under a hidden name
    shutil.copytree(tmp_path / "src", watched / "also.part")
    assert watch.scan() == [] and watch.scan() == []
    (watched / ".copying").rename(watched / "new")  # the atomic step: the folder appears complete
    assert watch.scan() == []  # seen once: not yet known to be settled
    assert watch.scan() == [watched / "new"] and watch.scan() == []  # then tried, once
    shutil.copy(tmp_path / "src" / "manifest.json", half / "manifest.json")  # the copy finishes: manifest last
    assert watch.scan() == [] and watch.scan() == [half]
    assert tried == [watched / "new", half]
    m = load_manifest(half)  # the same folder written again (e.g. recalibrated): tried again
    save_manifest(half, dataclasses.replace(m, threshold=0.7))
    assert watch.scan() == [] and watch.scan() == [half]


def test_watch_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--model-watch .*not a folder"):
        ModelWatch(tmp_path / "nope", print)


def _read_until(sock: zmq.Socket, got: list[messages.Received], pred, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(pred(m) for m in got):
            return
        if sock.poll(100):
            got.append(messages.parse_message(sock.recv_multipart()))
    events = [m.header for m in got if m.kind == "status"]
    raise AssertionError(f"not seen within {timeout_s} s; status events: {events}")


def _beat_sha(sha: str):
    return lambda m: m.kind == "heartbeat" and m.header["model"]["onnx_sha256"] == sha


def test_run_swaps_from_the_watched_folder_and_on_sighup(tmp_path: Path) -> None:
    running = bundle(tmp_path / "line-model")
    b, c = bundle(tmp_path / "b", scale=254.0), bundle(tmp_path / "c", scale=250.0)
    sha = {name: load_manifest(d).onnx_sha256 for name, d in (("a", running), ("b", b), ("c", c))}
    watched = tmp_path / "incoming"
    watched.mkdir()
    video = write_video(tmp_path / "v.avi", [grey() + i for i in range(5)])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock = connect_subscriber(endpoint, b"somad/")
    # A live source that never connects keeps the line running between the swaps.
    proc = subprocess.Popen(
        [edge_somad_exe(), "run", "--camera", "live=http://127.0.0.1:1/x", "--camera", f"v={video}",
         "--model", str(running), "--model-watch", str(watched), "--publish", endpoint, "--wait-subscribers", "1",
         "--log-level", "warning"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got: list[messages.Received] = []
    try:
        _read_until(sock, got, lambda m: sum(x.kind == "verdict" for x in got) >= 5)
        assert {m.header["model"]["onnx_sha256"] for m in got if m.kind == "verdict"} == {sha["a"]}
        (watched / "half").mkdir()  # half-written: graph only; must be ignored
        shutil.copy(b / "model.onnx", watched / "half" / "model.onnx")
        shutil.copytree(b, watched / ".b")
        (watched / ".b").rename(watched / "b")
        _read_until(sock, got, _beat_sha(sha["b"]))  # the heartbeat names the model in use at once
        for name in ("model.onnx", "manifest.json", "reference_frame.npz"):  # replaced in place, then SIGHUP
            shutil.copy(c / name, running / name)
        proc.send_signal(signal.SIGHUP)
        _read_until(sock, got, _beat_sha(sha["c"]))
        bad = shutil.copytree(b, watched / ".bad")
        (bad / "manifest.json").write_text(json.dumps({**json.loads((b / "manifest.json").read_text()),
                                                       "onnx_sha256": "0" * 64}))
        bad.rename(watched / "bad")
        _read_until(sock, got, lambda m: m.header.get("event") == "model_swap_failed")
        proc.send_signal(signal.SIGTERM)
        _read_until(sock, got, lambda m: m.header.get("event") == "final")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    events = [m.header for m in got if m.kind == "status" and m.header.get("event", "").startswith("model_swap")]
    assert [(e["event"], e["action"], e["via"]) for e in events] == [
        ("model_swap_failed", "swap", "watch"), ("model_swapped", "swap", "watch"),
        ("model_swapped", "reload", "signal")]  # the swaps wait for a first frame; none came: sent at shutdown
    failed, to_b, to_c = events
    assert failed["path"] == str(watched / "bad") and "has sha256" in failed["reason"]
    assert failed["running_sha256"] == sha["c"]
    assert (to_b["old_sha256"], to_b["new_sha256"], to_b["new_path"]) == (sha["a"], sha["b"], str(watched / "b"))
    assert (to_c["old_sha256"], to_c["new_sha256"], to_c["new_path"]) == (sha["b"], sha["c"], str(running))
    assert to_b["first_frame_id"] is None and to_c["first_frame_id"] is None
    final = next(m.header for m in got if m.header.get("event") == "final")
    assert final["model"]["onnx_sha256"] == sha["c"]
