"""`swap_model` and `rollback` on the control endpoint (`run --control`), through a plain ZeroMQ REQ client,
with a triggered line running: each part's answer names the model that scored it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.trigger.client import request, request_trigger
from tests.helpers.runtime import make_bundle
from tests.helpers.trigger import Runtime


@pytest.fixture
def runtime(tmp_path: Path):
    rt = Runtime(tmp_path)
    yield rt
    if rt.thread.is_alive():
        rt.stop()


def test_swap_and_rollback_over_the_control_endpoint(runtime, tmp_path: Path) -> None:
    sha_a = runtime.pipe.model_info["onnx_sha256"]
    b = make_bundle(tmp_path / "b", scale=254.0)
    sha_b = load_manifest(b).onnx_sha256
    bad = shutil.copytree(b, tmp_path / "bad")
    (bad / "manifest.json").write_text(json.dumps({**json.loads((b / "manifest.json").read_text()),
                                                   "onnx_sha256": "0" * 64}))

    before = request_trigger(runtime.control, "P-1", 2000, 5.0)
    swapped = request(runtime.control, {"cmd": "swap_model", "path": str(b)}, 20.0)
    after = request_trigger(runtime.control, "P-2", 2000, 5.0)
    late = request_trigger(runtime.control, "P-late", 1, 5.0)  # answered by the trigger book itself
    refused = request(runtime.control, {"cmd": "swap_model", "path": str(bad)}, 20.0)
    malformed = request(runtime.control, {"cmd": "swap_model", "path": 5}, 5.0)
    extra = request(runtime.control, {"cmd": "rollback", "to": "yesterday"}, 5.0)
    back = request(runtime.control, {"cmd": "rollback"}, 20.0)
    last = request_trigger(runtime.control, "P-3", 2000, 5.0)
    runtime.stop()

    assert [a["model"]["onnx_sha256"] for a in (before, after, last)] == [sha_a, sha_b, sha_a]
    assert all(a["verdict"] == "pass" for a in (before, after, last))
    assert late["error"].startswith("deadline") and late["model"]["onnx_sha256"] == sha_b
    assert swapped["ok"] is True and swapped["cmd"] == "swap_model" and swapped["via"] == "control"
    assert (swapped["old_sha256"], swapped["new_sha256"], swapped["new_path"]) == (sha_a, sha_b, str(b))
    assert refused["ok"] is False and refused["cmd"] == "swap_model" and "has sha256" in refused["error"]
    assert refused["running_sha256"] == sha_b  # kept
    assert malformed["ok"] is False and "expected {\"cmd\": \"swap_model\", \"path\"" in malformed["error"]
    assert extra["ok"] is False and "expected {\"cmd\": \"rollback\"} alone" in extra["error"]
    assert back["ok"] is True and back["action"] == "rollback" and back["new_sha256"] == sha_a
    # the stream: each event before the verdict of the first part the new model scored, naming that frame
    msgs = runtime.sub.msgs
    events = [m.header for m in msgs if m.kind == "status" and m.header.get("event") == "model_swapped"]
    assert [(e["action"], e["first_frame_id"]) for e in events] == [("swap", after["frame_id"]),
                                                                     ("rollback", last["frame_id"])]
    (failed,) = [m.header for m in msgs if m.kind == "status" and m.header.get("event") == "model_swap_failed"]
    assert failed["path"] == str(bad) and failed["via"] == "control"
    order = [m.header.get("part_id") if m.kind == "verdict" else m.header.get("event") for m in msgs
             if m.kind == "verdict" or m.header.get("event", "").startswith("model_swap")]
    assert order == ["P-1", "model_swapped", "P-2", "P-late", "model_swap_failed", "model_swapped", "P-3"]
