"""`edge-somad run --camera aravis:...` end to end: the simulated GigE Vision camera -> verdicts on ZeroMQ."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from edge_somad.cli.runtime import run
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber
from edge_somad.runtime.pipeline.gige import GigECapture
from edge_somad.runtime.pipeline.gige_spec import parse_gige
from edge_somad.runtime.trigger.client import request_trigger
from tests.helpers.aravis import FakeCamera, require_aravis
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import free_port, make_model_dir

REPO = Path(__file__).resolve().parents[1]


def test_run_scores_the_simulated_camera_and_publishes_verdicts(tmp_path: Path, fake_camera: FakeCamera) -> None:
    """Mono8 from the camera is grey to the stand-in model (score = (blue - red) / 255 = 0): passes."""
    model = make_model_dir(tmp_path / "m")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock = connect_subscriber(endpoint, b"")
    proc = subprocess.Popen(
        [edge_somad_exe(), "run", "--camera", "gige1=aravis:127.0.0.1?pixel=Mono8&exposure_us=10000&gain_raw=0",
         "--model", str(model), "--publish", endpoint, "--wait-subscribers", "1", "--max-frames", "6",
         "--backend", "onnxruntime", "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got: list[messages.Received] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not sock.poll(100):
                if proc.poll() is not None and not sock.poll(500):
                    break
                continue
            m = messages.parse_message(sock.recv_multipart())
            got.append(m)
            if m.kind == "status" and m.header.get("event") == "final":
                break
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    err = proc.stderr.read().decode()
    assert rc == 0, err
    verdicts = [m.header for m in got if m.kind == "verdict"]
    assert len(verdicts) == 6, err
    assert {v["camera"] for v in verdicts} == {"gige1"}
    assert {v["verdict"] for v in verdicts} == {"pass"}, verdicts[0]
    assert [v["frame_id"] for v in verdicts] == sorted(v["frame_id"] for v in verdicts)
    events = [m.header for m in got if m.kind == "status" and m.header.get("event") == "camera"]
    assert any(e["camera"] == "gige1" and e["status"] == "running" for e in events), events
    final = got[-1].header
    assert final["event"] == "final" and final["verdicts"]["pass"] == 6


def test_triggered_run_asks_the_camera_for_each_parts_frame(tmp_path: Path, fake_camera: FakeCamera) -> None:
    """run --trigger with trigger=software: each trigger on --control makes the camera take exactly one
    frame, scored and answered with the part id; with no trigger the camera sends nothing."""
    model = make_model_dir(tmp_path / "m")
    endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    sock = connect_subscriber(endpoint, b"")
    proc = subprocess.Popen(
        [edge_somad_exe(), "run", "--camera", "st3=aravis:127.0.0.1?pixel=Mono8&trigger=software",
         "--model", str(model), "--publish", endpoint, "--control", control, "--trigger",
         "--trigger-deadline-ms", "3000", "--backend", "onnxruntime", "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    answers: list[dict] = []

    def heartbeat(after: float) -> dict | None:
        """The first heartbeat published after `after` (time.time()), within the test's deadline."""
        while time.monotonic() < deadline:
            if sock.poll(100):
                m = messages.parse_message(sock.recv_multipart())
                if m.kind == "heartbeat" and m.header["at"] > after:
                    return m.header
        return None

    try:
        deadline = time.monotonic() + 60
        beat = heartbeat(0.0)
        while beat is not None and beat["cameras"]["st3"]["status"] != "running":  # open, waiting for triggers
            beat = heartbeat(beat["at"])
        assert beat is not None and beat["cameras"]["st3"]["frames"] == 0, beat  # nothing without a trigger
        for i in range(3):
            answers.append(request_trigger(control, f"P-{i}", 3000, 10.0))
        quiet_from = time.time()
        time.sleep(0.5)  # a window in which an unasked frame would show in the counts
        beat = heartbeat(quiet_from + 0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        sock.close()
    err = proc.stderr.read().decode()
    assert [(a["part_id"], a["verdict"]) for a in answers] == [(f"P-{i}", "pass") for i in range(3)], (
        [a.get("error") for a in answers], err[-3000:])
    assert len({a["frame_id"] for a in answers}) == 3
    assert beat is not None, err
    assert beat["cameras"]["st3"]["frames"] == 3, beat["cameras"]["st3"]  # one frame per trigger, no other
    assert beat["triggers"]["frames_skipped"] == 0, beat["triggers"]


def test_empty_device_id_opens_the_first_camera_found(fake_camera: FakeCamera) -> None:
    cap = GigECapture(parse_gige("aravis:?pixel=Mono8"))
    try:
        assert cap.camera.get_device_id() == fake_camera.serial
    finally:
        cap.release()


def _run_cli(*args: str) -> Result:
    """`edge-somad run ARGS` in-process (a second command keeps `run` a subcommand, as installed)."""
    app = typer.Typer()
    app.command("run")(run)
    app.command("noop")(lambda: None)
    return CliRunner().invoke(app, ["run", *args])


def test_run_rejects_a_bad_aravis_camera_with_exit_2(tmp_path: Path) -> None:
    """Checked before anything opens: no camera and no Aravis needed for a malformed --camera."""
    res = _run_cli("--camera", "aravis:?exposure_us=10&shutter=2", "--model", str(make_model_dir(tmp_path / "m")))
    assert res.exit_code == 2
    assert "unknown key 'shutter'" in res.output and "exposure_us" in res.output


def test_run_refuses_a_software_triggered_camera_without_trigger_mode(tmp_path: Path) -> None:
    require_aravis()
    res = _run_cli("--camera", "st3=aravis:?trigger=software", "--model", str(make_model_dir(tmp_path / "m")))
    assert res.exit_code == 2
    assert "st3 have trigger=software" in res.output and "--trigger --control" in res.output
