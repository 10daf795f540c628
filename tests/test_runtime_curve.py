"""CURVE on real sockets: key files, allowed / unlisted / plain subscribers, the CLI options."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import pytest
import typer
import zmq
import zmq.auth
from typer.testing import CliRunner

from edge_somad.cli.runtime import keys, run, subscribe
from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging.curve import CurveServer, connect_subscriber, load_client, load_server, make_keys
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import parse_cameras
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import H, W, defect, free_port, grey, make_model_dir, write_video
from tests.test_runtime_pipeline import Collector

REPO = Path(__file__).resolve().parents[1]


def app() -> typer.Typer:
    a = typer.Typer()
    for name, fn in (("run", run), ("subscribe", subscribe), ("keys", keys)):
        a.command(name)(fn)
    return a


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """server + allowed client 'plc' (public key in clients/) + an unlisted client 'intruder'."""
    d = tmp_path / "keys"
    make_keys(d, "server")
    make_keys(d, "plc")
    make_keys(d, "intruder")
    (d / "clients").mkdir()
    (d / "clients" / "plc.key").write_bytes((d / "plc.key").read_bytes())
    return d


def test_keys_command_writes_standard_certificates_and_never_overwrites(tmp_path: Path) -> None:
    res = CliRunner().invoke(app(), ["keys", "--name", "line-pc", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    public, secret = tmp_path / "line-pc.key", tmp_path / "line-pc.key_secret"
    pub_key, none = zmq.auth.load_certificate(public)
    pub_again, sec_key = zmq.auth.load_certificate(secret)
    assert none is None and pub_key == pub_again and len(sec_key) == 40
    assert zmq.curve_public(sec_key) == pub_key  # a real pair
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    before = secret.read_bytes()
    again = CliRunner().invoke(app(), ["keys", "--name", "line-pc", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "never overwritten" in again.output and secret.read_bytes() == before
    bad = CliRunner().invoke(app(), ["keys", "--name", "../up", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "not allowed" in bad.output and not (tmp_path.parent / "up.key").exists()


def test_curve_options_are_all_or_nothing(key_dir: Path, tmp_path: Path) -> None:
    assert load_server(None, None) is None and load_client(None, None) is None
    with pytest.raises(ConfigError, match="both --curve-secret-key"):
        load_server(key_dir / "server.key_secret", None)
    with pytest.raises(ConfigError, match="needs both"):
        load_client(key_dir / "server.key", None)
    with pytest.raises(ConfigError, match="only a public key"):
        load_server(key_dir / "server.key", key_dir / "clients")  # public file given as the secret
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        load_server(key_dir / "server.key_secret", tmp_path / "empty")
    (tmp_path / "junk.key").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a ZeroMQ certificate"):
        load_client(tmp_path / "junk.key", key_dir / "plc.key_secret")
    server = load_server(key_dir / "server.key_secret", key_dir / "clients")
    assert isinstance(server, CurveServer) and len(server.client_keys) == 1


def _wait_for_rejections(pub: Publisher, timeout_s: float = 10.0) -> dict[str, int]:
    """Until the unlisted key was refused by the ZAP handler and the plain peer failed the handshake."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _ = pub.subscribers  # reads the socket monitor
        fails = pub.handshake_failures
        if fails["auth"] >= 1 and fails["protocol"] + fails["other"] >= 1:
            break
        time.sleep(0.02)
    return dict(pub.handshake_failures)


def test_only_listed_keys_receive_verdicts(tmp_path: Path, key_dir: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    n = 12
    video = write_video(tmp_path / "v.avi", [grey(), defect()] * (n // 2))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = load_server(key_dir / "server.key_secret", key_dir / "clients")
    allowed = load_client(key_dir / "server.key", key_dir / "plc.key_secret")
    unlisted = load_client(key_dir / "server.key", key_dir / "intruder.key_secret")
    manifest = load_manifest(model_dir)
    with Publisher(endpoint, curve=server) as pub, OrtScorer(model_dir / "model.onnx", H, W) as scorer:
        good = Collector(endpoint, allowed)
        plain, intruder = connect_subscriber(endpoint, b""), connect_subscriber(endpoint, b"", unlisted)
        assert pub.wait_for_subscribers(1, 10.0)
        fails = _wait_for_rejections(pub)
        assert fails["auth"] >= 1 and fails["protocol"] + fails["other"] >= 1, fails
        good.start()
        final = Pipeline(scorer, manifest, parse_cameras([f"c={video}"]), pub, PipelineConfig()).run()
        good.join(20)
        # Everything was sent before the final status the allowed subscriber has: the others got nothing.
        leaked = [s.poll(200) for s in (plain, intruder)]
    plain.close()
    intruder.close()
    assert [v["frame_id"] for v in good.verdicts()] == list(range(n))
    assert good.msgs[-1].header["event"] == "final" and final["security"] == "curve"
    assert final["subscribers"] == 1 and leaked == [0, 0]


def test_run_and_subscribe_commands_with_curve(tmp_path: Path, key_dir: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", [grey(), defect(), grey()])
    port = free_port()
    run_args = ["run", "--camera", f"c={video}", "--model", str(model_dir), "--publish", f"tcp://127.0.0.1:{port}",
                "--wait-subscribers", "1", "--log-level", "warning",
                "--curve-secret-key", str(key_dir / "server.key_secret"), "--curve-clients", str(key_dir / "clients")]
    publisher = subprocess.Popen([edge_somad_exe(), *run_args], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        res = CliRunner().invoke(app(), [
            "subscribe", "--connect", f"tcp://127.0.0.1:{port}", "--count", "3", "--timeout", "30",
            "--curve-server-key", str(key_dir / "server.key"), "--curve-secret-key", str(key_dir / "plc.key_secret")])
        _, err = publisher.communicate(timeout=30)
    finally:
        publisher.kill()
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["verdict"] for x in lines] == ["pass", "fail", "pass"]
    assert publisher.returncode == 0, err
    half = CliRunner().invoke(app(), ["subscribe", "--curve-server-key", str(key_dir / "server.key"),
                                      "--count", "1", "--timeout", "0.1"])
    assert half.exit_code == 2 and "needs both" in half.output
    half = CliRunner().invoke(app(), [*run_args[:7], "--curve-clients", str(key_dir / "clients")])
    assert half.exit_code == 2 and "--curve-secret-key" in half.output
