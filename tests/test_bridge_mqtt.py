"""`edge-somad bridge mqtt` against a real Mosquitto and a real `run`: outage, overflow, birth and death."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge_somad.errors import ConfigError
from edge_somad.runtime.bridges.queue import DiskQueue, Item
from tests.helpers.bridges import REPO, Consumer, Mosquitto, start_bridge, verdict_count
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import defect, free_port, grey, make_model_dir, write_video

N = 2000


def _bridge_args(zmq_port: int, mqtt_port: int, box: str, tmp: Path) -> list[str]:
    return ["mqtt", "--connect", f"tcp://127.0.0.1:{zmq_port}", "--port", str(mqtt_port), "--box", box,
            "--queue-file", str(tmp / f"{box}.sqlite"), "--status-interval", "0.5", "--log-level", "info"]


def test_2000_verdicts_arrive_through_a_broker_outage(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    # passes of different grey levels: a frame identical to the one before never passes (frozen camera)
    frames = [defect() if i % 10 == 3 else np.full_like(grey(), 100 + i % 50) for i in range(N)]
    video = write_video(tmp_path / "line.avi", frames)
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    consumer = Consumer(broker.port)
    zmq_port = free_port()
    bridge = start_bridge(_bridge_args(zmq_port, broker.port, "box1", tmp_path), tmp_path / "bridge.log")
    run = None
    try:
        assert consumer.wait_for(lambda m: verdict_count("NSTATUS")(m) >= 1, 20), (tmp_path / "bridge.log").read_text()
        run = subprocess.Popen(
            [edge_somad_exe(), "run", "--camera", f"c1={video}", "--model",
             str(model_dir), "--publish", f"tcp://127.0.0.1:{zmq_port}", "--wait-subscribers", "1",
             "--log-level", "warning"],  # run's default --send-queue: the bridge must keep up by itself
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert consumer.wait_for(lambda m: verdict_count()(m) >= 300, 40), (tmp_path / "bridge.log").read_text()
        # Mid-stream: `run` keeps scoring, the bridge keeps storing. SIGTERM, so the broker saves its own
        # persistence (the consumer's session and what it had accepted for it): what a broker acknowledged
        # and then lost in a crash is beyond any client's reach.
        broker.stop()
        at_stop = verdict_count()(consumer.messages)
        time.sleep(5)  # the outage itself (a duration the scenario asks for, not a synchronisation)
        broker.start()

        def complete(_: list) -> bool:
            return {v["mqtt_seq"] for v in consumer.json("DDATA")} == set(range(N))

        assert consumer.wait_for(complete, 60), (tmp_path / "bridge.log").read_text()[-3000:]
        assert run.wait(30) == 0, run.stderr.read()
        bridge.send_signal(signal.SIGTERM)
        assert consumer.wait_for(lambda m: any(json.loads(p).get("reason") == "shutdown" for t, p, _ in m
                                               if "/NDEATH/" in t), 20)
        assert bridge.wait(20) == 0
    finally:
        for proc in (run, bridge):
            if proc is not None and proc.poll() is None:
                proc.kill()
        consumer.close()
        broker.stop()
    verdicts = consumer.json("DDATA")
    seqs = [v["mqtt_seq"] for v in verdicts]
    duplicates = len(seqs) - len(set(seqs))  # QoS 1 after a lost connection: consumers dedupe by (camera, seq)
    print(f"{len(seqs)} verdict messages, {duplicates} duplicates, {at_stop} before the outage")
    assert set(seqs) == set(range(N)) and duplicates <= 400  # at most one window resent per reconnect
    first = list(dict.fromkeys(seqs))
    assert first == sorted(first), "first deliveries are in order"
    by_seq = {v["mqtt_seq"]: v for v in verdicts}
    assert [by_seq[i]["frame_id"] for i in range(N)] == list(range(N))  # the ZeroMQ header, unchanged
    assert [by_seq[i]["verdict"] for i in range(N)] == ["fail" if i % 10 == 3 else "pass" for i in range(N)]
    assert {v["camera"] for v in verdicts} == {"c1"} and {v["box"] for v in verdicts} == {"box1"}
    assert all(v["schema"] == "edge-somad/verdict/1" and v["threshold"] == 0.5 for v in verdicts)
    status = consumer.json("NSTATUS")[-1]
    assert status["overflow"] == {} and status["upstream"] == {"missed": 0, "replayed": 0, "pending": 0, "rejected": 0}
    assert status["queued"] == 0 and status["stored"] == N
    births = consumer.json("NBIRTH")
    assert len({b["bdSeq"] for b in births}) >= 2, "the reconnect after the outage republished birth"
    assert all(b["cameras"] == ["c1"] and b["complete"] for b in births), births  # never an empty birth
    last = births[-1]
    assert last["cameras"] == ["c1"] and last["streams"][0]["threshold"] == 0.5
    assert last["streams"][0]["model"]["name"] == "standin" and len(last["streams"][0]["model"]["onnx_sha256"]) == 64
    assert last["verdict_schema"] == "edge-somad/verdict/1"


def test_unreachable_broker_is_a_warning_and_verdicts_wait(tmp_path: Path) -> None:
    bridge = subprocess.Popen(
        [edge_somad_exe(), "bridge",
         *_bridge_args(free_port(), free_port(), "box3", tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        err = ""
        assert bridge.stderr is not None
        while time.monotonic() < deadline and "retrying" not in err:
            err += bridge.stderr.readline()
        bridge.send_signal(signal.SIGTERM)
        _, rest = bridge.communicate(timeout=20)
    finally:
        if bridge.poll() is None:
            bridge.kill()
    err += rest
    assert "retrying in" in err and "verdicts kept in" in err and "Traceback" not in err, err
    assert bridge.returncode == 0, err


def test_full_queue_drops_heatmaps_then_passes_never_errors_first(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q.sqlite", max_items=3)
    assert q.put_many([Item("pass", "t", b"p1"), Item("heatmap", "t", b"h1"), Item("error", "t", b"e1")]) == {}
    assert q.put_many([Item("fail", "t", b"f1")]) == {"heatmap": 1}
    assert q.put_many([Item("error", "t", b"e2")]) == {"pass": 1}
    assert q.put_many([Item("pass", "t", b"p2")]) == {"pass": 1}  # nothing of rank <= pass is left: the newcomer
    assert q.put_many([Item("error", "t", b"e3")]) == {"fail": 1}
    assert [s.payload for s in q.peek(0, 10)] == [b"e1", b"e2", b"e3"]  # insertion order kept
    counts = collections.Counter(q.meta_items("overflow:"))
    assert counts == {"heatmap": 1, "pass": 2, "fail": 1}
    q.delete([s.id for s in q.peek(0, 2)])
    q.close()
    again = DiskQueue(tmp_path / "q.sqlite", max_items=3)  # survives a restart: items and counters
    assert [s.payload for s in again.peek(0, 10)] == [b"e3"] and again.size == 1
    assert again.meta_items("overflow:")["pass"] == 2
    with pytest.raises(ConfigError, match="in use by another bridge"):
        DiskQueue(tmp_path / "q.sqlite", max_items=3)
    again.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot be used"):
        DiskQueue(tmp_path / "file" / "q.sqlite", max_items=3)


def test_non_finite_numbers_become_null_for_mqtt_consumers() -> None:
    from edge_somad.runtime.bridges.mqtt import _dumps, _finite

    header = json.loads('{"score": NaN, "latency_ms": Infinity, "defects": [{"max_score": -Infinity}], "n": 1}')
    assert json.loads(_dumps(_finite(header))) == {"score": None, "latency_ms": None,
                                                  "defects": [{"max_score": None}], "n": 1}


def test_password_broker_mqtt311_and_heatmap_topic(tmp_path: Path) -> None:
    import os

    import numpy as np

    from edge_somad.runtime.messaging import messages
    from edge_somad.runtime.messaging.publisher import Publisher

    pw_file = tmp_path / "passwd"
    broker = Mosquitto(tmp_path / "broker", extra=f"allow_anonymous false\npassword_file {pw_file}\n")  # or skip
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw_file), "bridge", "s3cret"], check=True, capture_output=True)
    broker.start()
    consumer = Consumer(broker.port, client_id="auth-consumer", auth=("bridge", "s3cret"))
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", "somad", sndhwm=1000)
    args = [*_bridge_args(int(pub.bound_endpoint.rsplit(":", 1)[1]), broker.port, "box4", tmp_path),
            "--username", "bridge", "--mqtt-version", "3.1.1", "--heatmaps", "--heatmap-max-bytes", "1000"]
    wrong = subprocess.Popen([edge_somad_exe(), "bridge", *args], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "EDGE_SOMAD_BRIDGE_PASSWORD": "wrong"})
    try:
        err = ""
        assert wrong.stderr is not None
        while "retrying" not in err and wrong.poll() is None:
            err += wrong.stderr.readline()
        wrong.send_signal(signal.SIGTERM)
        err += wrong.communicate(timeout=20)[1]
        assert "refused the connection" in err and "Traceback" not in err, err
        bridge = subprocess.Popen([edge_somad_exe(), "bridge", *args], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "bridge.log", "wb"),  # noqa: SIM115
                                  env={**os.environ, "EDGE_SOMAD_BRIDGE_PASSWORD": "s3cret"})
        assert consumer.wait_for(lambda m: verdict_count("NSTATUS")(m) >= 1, 20), (tmp_path / "bridge.log").read_text()
        assert pub.wait_for_subscribers(1, 10)
        flat, noisy = np.full((64, 96), 0.2, np.float32), np.random.default_rng(0).random((64, 96)).astype(np.float32)
        for i in range(10):
            meta, png = messages.encode_heatmap(flat if i % 2 == 0 else noisy, "png", 0.5)
            header = messages.verdict_header(
                camera="cam7", frame_id=i, captured_at=time.time(), published_at=time.time(), score=0.2,
                threshold=0.5, verdict="pass", error=None, defects=[], model={"name": "m", "onnx_sha256": "ab"},
                heatmap=meta, frame_shape=(64, 96), overlay=False)
            pub.publish_verdict(header, png)
        assert consumer.wait_for(lambda m: verdict_count()(m) >= 10 and verdict_count("DHEAT")(m) >= 5, 20)
        assert consumer.wait_for(lambda m: any(json.loads(p)["heatmaps_too_big"] == 5 for t, p, _ in m
                                               if "/NSTATUS/" in t), 10)
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(20) == 0
    finally:
        for proc in (wrong, locals().get("bridge")):
            if proc is not None and proc.poll() is None:
                proc.kill()
        consumer.close()
        pub.close()
        broker.stop()
    heat = [(t, p) for t, p, _ in consumer.messages if "/DHEAT/" in t]
    assert [t.rsplit("/", 1)[1] for t, _ in heat] == ["0", "2", "4", "6", "8"]  # topic carries the mqtt_seq
    assert all(p.startswith(b"\x89PNG") and len(p) <= 1000 for _, p in heat)
    assert [v["frame_id"] for v in consumer.json("DDATA")] == list(range(10))


def test_bad_bridge_options_are_clear_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edge_somad.cli.bridge import app

    base = ["mqtt", "--queue-file", str(tmp_path / "q.sqlite"), "--box", "b1"]
    cases = [(["--connect", "line-pc:5556"], "expected a ZeroMQ endpoint such as tcp://line-pc:5556"),
             (["--port", "70000"], "--port 70000; expected 1..65535"),
             (["--group", "a/b"], "--group: camera id 'a/b' is not allowed"),
             (["--ca-file", str(tmp_path / "none.pem"), "--tls"], "does not exist"),
             (["--queue-max", "0"], "--queue-max 0; expected at least 1")]
    for extra, message in cases:
        res = CliRunner().invoke(app, [*base, *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    res = CliRunner().invoke(app, [*base, "--tls", "--ca-file", str(tmp_path / "bad.pem"), "--port", str(free_port()),
                                   "--connect", f"tcp://127.0.0.1:{free_port()}"])
    assert res.exit_code == 2 and "TLS set-up failed" in res.output, res.output


def test_bridge_reads_a_curve_stream_with_its_keys(tmp_path: Path) -> None:
    from edge_somad.runtime.messaging import messages
    from edge_somad.runtime.messaging.curve import load_server, make_keys
    from edge_somad.runtime.messaging.publisher import Publisher

    keys = tmp_path / "keys"
    make_keys(keys, "server")
    make_keys(keys, "bridge")
    (keys / "clients").mkdir()
    (keys / "clients" / "bridge.key").write_bytes((keys / "bridge.key").read_bytes())
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    consumer = Consumer(broker.port, client_id="curve-consumer")
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", "somad", curve=load_server(keys / "server.key_secret",
                                                                                 keys / "clients"))
    args = [*_bridge_args(int(pub.bound_endpoint.rsplit(":", 1)[1]), broker.port, "box5", tmp_path),
            "--curve-server-key", str(keys / "server.key"), "--curve-secret-key", str(keys / "bridge.key_secret")]
    bridge = start_bridge(args, tmp_path / "bridge.log")
    try:
        assert pub.wait_for_subscribers(1, 20), (tmp_path / "bridge.log").read_text()
        for i in range(5):
            pub.publish_verdict(messages.verdict_header(
                camera="cam1", frame_id=i, captured_at=time.time(), published_at=time.time(), score=0.9,
                threshold=0.5, verdict="fail", error=None, defects=[], model={}, heatmap=None, frame_shape=None,
                overlay=False))
        assert consumer.wait_for(lambda m: verdict_count()(m) >= 5, 20), (tmp_path / "bridge.log").read_text()
    finally:
        bridge.kill()
        consumer.close()
        pub.close()
        broker.stop()
    assert [v["frame_id"] for v in consumer.json("DDATA")] == list(range(5))


def test_verdicts_stored_before_a_sigkill_are_delivered_after_restart(tmp_path: Path) -> None:
    import sqlite3

    from edge_somad.runtime.messaging import messages
    from edge_somad.runtime.messaging.publisher import Publisher

    broker = Mosquitto(tmp_path / "broker")  # not started yet: the bridge can only store
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", "somad", sndhwm=1000)
    args = _bridge_args(int(pub.bound_endpoint.rsplit(":", 1)[1]), broker.port, "box6", tmp_path)
    bridge = start_bridge(args, tmp_path / "bridge.log")
    consumer = None
    try:
        assert pub.wait_for_subscribers(1, 20)
        for i in range(300):
            pub.publish_verdict(messages.verdict_header(
                camera="cam2", frame_id=i, captured_at=time.time(), published_at=time.time(), score=0.1,
                threshold=0.5, verdict="pass", error=None, defects=[], model={}, heatmap=None, frame_shape=None,
                overlay=False))
        db = sqlite3.connect(tmp_path / "box6.sqlite")
        deadline = time.monotonic() + 20
        while db.execute("SELECT COUNT(*) FROM q").fetchone()[0] < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.execute("SELECT COUNT(*) FROM q").fetchone()[0] == 300
        db.close()
        bridge.kill()
        bridge.wait(10)
        broker.start()
        consumer = Consumer(broker.port, client_id="after-kill")
        bridge = start_bridge(args, tmp_path / "bridge.log")
        assert consumer.wait_for(lambda m: verdict_count()(m) >= 300, 30), (tmp_path / "bridge.log").read_text()
    finally:
        if bridge.poll() is None:
            bridge.kill()
        if consumer is not None:
            consumer.close()
        pub.close()
        broker.stop()
    assert [v["mqtt_seq"] for v in consumer.json("DDATA")] == list(range(300))
    assert [v["frame_id"] for v in consumer.json("DDATA")] == list(range(300))


def test_hostile_messages_are_rejected_counted_and_never_published(tmp_path: Path) -> None:
    import zmq

    from edge_somad.runtime.messaging import messages

    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    consumer = Consumer(broker.port, client_id="hostile-watch")
    xpub = zmq.Context.instance().socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    bridge = start_bridge(_bridge_args(port, broker.port, "box7", tmp_path), tmp_path / "bridge.log")
    try:
        assert xpub.poll(20_000), "the bridge subscribed"
        xpub.recv()
        good = messages.verdict_header(camera="cam3", frame_id=0, captured_at=1.0, published_at=2.0, score=0.1,
                                       threshold=0.5, verdict="pass", error=None, defects=[], model={},
                                       heatmap=None, frame_shape=None, overlay=False)
        bad = [[b"somad/../x", messages.dumps({**good, "camera": "../x"}), b""],  # hostile camera id
               [b"somad/cam3", b"\xff not json", b""],
               [b"somad/cam3", messages.dumps({**good, "verdict": "maybe"}), b""]]
        for parts in [*bad, [b"somad/cam3", messages.dumps(good), b""]]:
            xpub.send_multipart(parts)
        assert consumer.wait_for(lambda m: verdict_count()(m) >= 1 and any(
            json.loads(p)["upstream"]["rejected"] == 3 for t, p, _ in m if "/NSTATUS/" in t), 20)
    finally:
        bridge.kill()
        consumer.close()
        xpub.close()
        broker.stop()
    assert [t for t, _, _ in consumer.messages if "/DDATA/" in t] == ["edge-somad/v1/line/DDATA/box7/cam3"]


def test_tls_broker_with_its_ca(tmp_path: Path) -> None:
    from edge_somad.runtime.messaging import messages
    from edge_somad.runtime.messaging.publisher import Publisher
    from tests.helpers.bridges import make_tls_files

    ca, cert, key = make_tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker",
                       extra=f"allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    broker.start()
    consumer = Consumer(broker.port, client_id="tls-consumer", ca_file=ca)
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", "somad", sndhwm=1000)
    zmq_port = int(pub.bound_endpoint.rsplit(":", 1)[1])
    bridge = start_bridge([*_bridge_args(zmq_port, broker.port, "box8", tmp_path), "--tls", "--ca-file", str(ca)],
                          tmp_path / "bridge.log")
    untrusted = start_bridge([*_bridge_args(zmq_port, broker.port, "box9", tmp_path), "--tls"],  # system CAs only
                             tmp_path / "untrusted.log")
    try:
        assert pub.wait_for_subscribers(2, 20)
        pub.publish_verdict(messages.verdict_header(
            camera="cam4", frame_id=0, captured_at=1.0, published_at=2.0, score=0.1, threshold=0.5, verdict="pass",
            error=None, defects=[], model={}, heatmap=None, frame_shape=None, overlay=False))
        assert consumer.wait_for(lambda m: verdict_count()(m) >= 1, 20), (tmp_path / "bridge.log").read_text()
        deadline = time.monotonic() + 20
        while "retrying" not in (tmp_path / "untrusted.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for proc in (bridge, untrusted):
            proc.kill()
        consumer.close()
        pub.close()
        broker.stop()
    log = (tmp_path / "untrusted.log").read_text()
    assert "certificate verify failed" in log and "Traceback" not in log, log
    assert not any("/box9/" in t for t, _, _ in consumer.messages)  # never published to an unverified broker
