"""Triggered inspection end to end: a real Pipeline with a live (fake-driver) camera, the control endpoint
on 127.0.0.1, a plain ZeroMQ REQ client, and a SUB on the verdict stream."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_somad.errors import ControlTimeoutError
from edge_somad.runtime.trigger.client import request_trigger
from tests.helpers.cli import edge_somad_exe
from tests.helpers.poll import wait_until
from tests.helpers.trigger import Line, Runtime


@pytest.fixture
def runtime(tmp_path: Path):
    rt = Runtime(tmp_path)
    yield rt
    if rt.thread.is_alive():
        rt.stop()


def test_plain_req_client_gets_the_parts_verdict_from_the_first_frame_after_the_trigger(runtime):
    sock = zmq.Context.instance().socket(zmq.REQ)  # what a PLC-side script would write: no edge-somad import
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(runtime.control)
    sent = time.time()
    sock.send(json.dumps({"cmd": "trigger", "part_id": "P-1234", "deadline_ms": 1000}).encode())
    assert sock.poll(5000), "no answer"
    answer = json.loads(sock.recv())
    sock.close()
    assert answer["ok"] is True and answer["verdict"] == "pass" and answer["part_id"] == "P-1234"
    assert answer["camera"] == "cam0" and answer["model"]["onnx_sha256"] == runtime.pipe.manifest.onnx_sha256
    assert sent <= answer["trigger_ts"] <= answer["captured_at"] <= answer["published_at"]
    # the frame used is the first one delivered after the trigger; the one before it came before the trigger
    fid = answer["frame_id"]
    assert Line.delivered[fid - 1] < answer["trigger_ts"] <= answer["captured_at"], "not the first frame after"
    assert answer["trigger_latency_ms"] < 1000
    final = runtime.stop()
    verdicts = runtime.sub.verdicts()
    assert [(v["part_id"], v["frame_id"], v["verdict"]) for v in verdicts] == [("P-1234", fid, "pass")]
    assert final["triggers"]["answered"] == 1 and final["triggers"]["frames_skipped"] > 0


def test_fail_deadline_duplicate_and_order_over_the_client(runtime):
    Line.bad.set()
    bad = request_trigger(runtime.control, "P-bad", 1000, 5.0)
    Line.bad.clear()
    assert bad["verdict"] == "fail" and bad["ok"] is True and bad["defects"], bad
    dup = request_trigger(runtime.control, "P-bad", 1000, 5.0)
    assert dup["duplicate"] is True and dup["first"]["verdict"] == "fail" and dup["verdict"] == "error"
    late = request_trigger(runtime.control, "P-late", 1, 5.0)  # 1 ms: no 50 frames/s camera makes that
    assert late["verdict"] == "error" and late["error"].startswith("deadline") and late["ok"] is False
    good = [request_trigger(runtime.control, f"P-{i}", 1000, 5.0) for i in range(5)]
    assert [g["verdict"] for g in good] == ["pass"] * 5
    ids = [g["frame_id"] for g in good]
    assert ids == sorted(ids) and len(set(ids)) == 5
    final = runtime.stop()
    published = [(v["part_id"], v["verdict"]) for v in runtime.sub.verdicts()]
    assert published[0] == ("P-bad", "fail") and ("P-late", "error") in published and len(published) == 7
    assert final["triggers"]["duplicate"] == 1 and final["triggers"]["deadline"] == 1


def test_concurrent_triggers_from_several_clients_are_all_answered(runtime):
    out: dict[str, dict] = {}

    def one(i: int) -> None:
        out[f"P-{i}"] = request_trigger(runtime.control, f"P-{i}", 3000, 10.0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(out) == [f"P-{i}" for i in range(8)]
    assert all(a["verdict"] == "pass" and a["part_id"] == p for p, a in out.items())
    assert len({a["frame_id"] for a in out.values()}) == 8  # one frame per part


class SlowToClose(Line):
    """Its driver takes until `released` to close: the runtime stays in `stopping` meanwhile."""

    released = threading.Event()

    def release(self) -> None:
        SlowToClose.released.wait(5.0)


def test_triggers_while_shutting_down_get_an_explicit_error(tmp_path: Path):
    SlowToClose.released.clear()
    rt = Runtime(tmp_path, opener=SlowToClose)
    rt.pipe.stop("signal SIGTERM")
    assert wait_until(lambda: rt.pipe.status == "stopping", 5.0)
    answer = request_trigger(rt.control, "P-late-shift", 1000, 5.0)
    assert answer["verdict"] == "error" and answer["ok"] is False
    assert answer["error"] == "not scored: shutdown (signal SIGTERM)" and answer["part_id"] == "P-late-shift"
    SlowToClose.released.set()
    rt.thread.join(20)
    with pytest.raises(ControlTimeoutError, match="no answer"):  # gone: the client says so, it does not hang
        request_trigger(rt.control, "P-after", 100, 0.3)
    rt.stop()


def test_free_running_mode_is_unchanged_and_refuses_triggers(tmp_path: Path):
    rt = Runtime(tmp_path, triggered=False)
    answer = request_trigger(rt.control, "P-1", 500, 5.0)
    assert answer["ok"] is False and "free-running" in answer["error"]
    assert wait_until(lambda: len(rt.sub.verdicts()) >= 10, 10.0)
    final = rt.stop()
    verdicts = rt.sub.verdicts()
    assert all("part_id" not in v for v in verdicts) and "triggers" not in final
    ids = [v["frame_id"] for v in verdicts]
    assert ids == list(range(len(ids)))  # every frame scored and published, none skipped
    assert np.all(np.diff([v["captured_at"] for v in verdicts]) > 0)


def test_trigger_command_prints_the_verdict_and_exits_by_it(runtime, tmp_path: Path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([edge_somad_exe(), *args], capture_output=True, text=True, timeout=60)

    good = cli("trigger", "--control", runtime.control, "--part-id", "P-CLI-1", "--deadline-ms", "1000")
    assert good.returncode == 0, good.stderr
    answer = json.loads(good.stdout)
    assert answer["verdict"] == "pass" and answer["part_id"] == "P-CLI-1" and answer["trigger_source"] == "cli"
    again = cli("trigger", "--control", runtime.control, "--part-id", "P-CLI-1")
    assert again.returncode == 1 and json.loads(again.stdout)["duplicate"] is True  # a reject
    bad = cli("trigger", "--control", runtime.control, "--part-id", "P\x01")
    assert bad.returncode == 2 and "error: part_id" in bad.stderr
    model = tmp_path / "m"  # the Runtime fixture's model
    no_control = cli("run", "--model", str(model), "--camera", "0", "--trigger")
    assert no_control.returncode == 2 and "--trigger needs --control" in no_control.stderr
