"""The view never looks alive when it is not: `run` killed -> stale within seconds; `run` started
again -> live, a new run with fresh counters; a receiver that raises -> shown, logged, restarted."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from benchmarks.subscription_flood import mjpeg_server
from edge_somad.runtime.view.view import BackgroundView, ViewConfig
from tests.fuzz_support import FuzzPublisher
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import free_port, make_model_dir

REPO = Path(__file__).resolve().parents[1]


def _state(view: BackgroundView) -> dict:
    with urllib.request.urlopen(view.url + "api/state", timeout=5) as r:
        return json.loads(r.read())


def _until(fn, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    return None


def _run(model: Path, url: str, endpoint: str) -> subprocess.Popen:
    return subprocess.Popen(
        [edge_somad_exe(), "run", "--camera", f"cam0={url}", "--model", str(model),
         "--publish", endpoint, "--log-level", "warning", "--no-health"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_run_shows_stale_and_a_restart_is_a_new_run(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "m")
    srv, url = mjpeg_server()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    procs = []
    try:
        with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0)) as view:
            link = lambda: _state(view)["endpoints"][endpoint]  # noqa: E731
            assert link()["state"] == "waiting"
            procs.append(_run(model, url, endpoint))
            first = _until(lambda: (s := _state(view))["total_verdicts"] >= 20 and link()["runs"] == 1 and s, 60)
            assert first and first["endpoints"][endpoint]["state"] == "live", first and first["endpoints"]
            procs[0].send_signal(signal.SIGKILL)  # dies without a final status
            t_kill = time.monotonic()
            assert _until(lambda: link()["state"] == "stale", 10), link()
            assert time.monotonic() - t_kill < 3.0 + 2.0  # stale_s (3 s) plus a heartbeat period and polling
            before = _state(view)["total_verdicts"]
            procs.append(_run(model, url, endpoint))
            again = _until(lambda: link()["state"] == "live" and link()["runs"] == 2 and _state(view), 60)
            assert again, link()
            # the new run's counters start from zero: never added to the dead run's
            assert _state(view)["tiles"]["cam0"]["total"] < before + 5
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
        srv.shutdown()


def test_a_receiver_that_raises_is_shown_and_restarted(monkeypatch, caplog) -> None:
    from edge_somad.runtime.view import view_state
    from tests.fuzz_support import valid_header, verdict_parts

    real_apply, calls = view_state.ViewState.apply, []

    def apply(self, endpoint, msg):  # the first message makes the receiver thread raise
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated receiver bug")
        real_apply(self, endpoint, msg)

    monkeypatch.setattr(view_state.ViewState, "apply", apply)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = FuzzPublisher(endpoint)
    try:
        with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0, restart_s=0.2)) as view:
            pub.wait_subscribers(1)
            pub.sock.send_multipart(verdict_parts(valid_header(1)))
            failed = _until(lambda: (e := _state(view)["endpoints"][endpoint])["error"] and e, 5)
            assert failed and "simulated receiver bug" in failed["error"] and failed["restarts"] == 1
            pub.wait_subscribers(2)  # the restarted receiver subscribed again
            seen = lambda fid: ((_state(view)["tiles"].get("cam0") or {}).get("last") or {}).get("frame_id", 0) >= fid  # noqa: E731
            pub.deliver_valid(seen)
            link = _state(view)["endpoints"][endpoint]
            assert link["state"] == "live" and link["error"] is None and link["restarts"] == 1
    finally:
        pub.close()
    assert "view receiver for" in caplog.text and "failed; restarting" in caplog.text
