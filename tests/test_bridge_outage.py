"""Verdicts published while a bridge is down: recovered from `run`'s journal, or counted as missed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge_somad.runtime.bridges.recover import Recovery
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.journal import JournalConfig
from edge_somad.runtime.pipeline.launch import _journal
from tests.helpers.bridges import BeatingPublisher, Consumer, Mosquitto, start_bridge
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import free_port

N = 1200  # verdicts, two cameras, at RATE: the outage falls in the middle
RATE = 100.0
KILL_AT, BACK_AT = 200, 700  # verdict index: the bridges are away for (BACK_AT - KILL_AT) / RATE = 5 s


def _header(i: int) -> dict:
    camera = ("c1", "c2")[i % 2]
    verdict = "fail" if i % 7 == 3 else "pass"
    return messages.verdict_header(
        camera=camera, frame_id=i // 2, captured_at=time.time(), published_at=time.time(),
        score=0.9 if verdict == "fail" else 0.1 + i / 1e4, threshold=0.5, verdict=verdict, error=None, defects=[],
        model={"name": "standin", "onnx_sha256": "ab" * 32}, heatmap=None, frame_shape=(64, 96), overlay=False)


def _args(box: str, zmq_port: int, mqtt_port: int, tmp: Path) -> list[str]:
    return ["mqtt", "--connect", f"tcp://127.0.0.1:{zmq_port}", "--port", str(mqtt_port), "--box", box,
            "--queue-file", str(tmp / f"{box}.sqlite"), "--status-interval", "0.5", "--log-level", "info"]


def _delivered(consumer: Consumer, box: str) -> dict[tuple[str, int], dict]:
    return {(v["camera"], v["frame_id"]): v for v in consumer.json("DDATA") if v["box"] == box}


def _status(consumer: Consumer, box: str) -> dict:
    with consumer.cond:
        rows = [json.loads(p) for t, p, _ in consumer.messages if t.endswith(f"/NSTATUS/{box}")]
    return rows[-1] if rows else {"upstream": {"missed": 0, "pending": 0}}


def test_bridge_killed_for_5_s_every_verdict_is_on_the_broker_or_counted(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    consumer = Consumer(broker.port, client_id="outage-watch")
    zmq_port, replay = free_port(), f"tcp://127.0.0.1:{free_port()}"
    args = {"rec": [*_args("rec", zmq_port, broker.port, tmp_path), "--replay", replay],  # asks the journal
            "cnt": _args("cnt", zmq_port, broker.port, tmp_path)}  # counts only
    logs = {box: tmp_path / f"{box}.log" for box in args}
    bridges = {box: start_bridge(a, logs[box]) for box, a in args.items()}
    headers: dict[tuple[str, int], dict] = {}
    with _journal(JournalConfig(tmp_path / "journal", 4 << 20), replay, None) as journal:
        run = BeatingPublisher(zmq_port, ("c1", "c2"), journal=journal)  # `run`'s publisher, journal and replay
        try:
            assert run.pub.wait_for_subscribers(2, 20), [p.read_text() for p in logs.values()]
            t0 = time.monotonic()
            for i in range(N):
                if i == KILL_AT:
                    for proc in bridges.values():
                        proc.kill()  # SIGKILL: what ZeroMQ had buffered for them is lost with them
                if i == BACK_AT:
                    bridges = {box: start_bridge(a, logs[box]) for box, a in args.items()}
                h = _header(i)
                run.pub.publish_verdict(h)
                headers[(h["camera"], h["frame_id"])] = h
                time.sleep(max(0.0, t0 + (i + 1) / RATE - time.monotonic()))  # the line's pace, not a wait
            assert consumer.wait_for(lambda m: len(_delivered(consumer, "rec")) == N, 60), \
                logs["rec"].read_text()[-3000:]

            def counted(_: list) -> bool:
                up = _status(consumer, "cnt")["upstream"]
                return len(_delivered(consumer, "cnt")) + up["missed"] == N and up["pending"] == 0

            assert consumer.wait_for(counted, 30), (_status(consumer, "cnt"), logs["cnt"].read_text()[-3000:])
            assert consumer.wait_for(lambda m: _status(consumer, "rec")["upstream"]["pending"] == 0, 10)
        finally:
            for proc in bridges.values():
                proc.kill()
            run.close()
            consumer.close()
            broker.stop()
    rec, cnt = _delivered(consumer, "rec"), _delivered(consumer, "cnt")
    up_rec, up_cnt = _status(consumer, "rec")["upstream"], _status(consumer, "cnt")["upstream"]
    print(f"with replay: {up_rec}; counting only: {up_cnt}, {len(cnt)} delivered")
    assert set(rec) == set(headers) and up_rec["missed"] == 0  # every verdict on the broker
    replayed = [v for v in rec.values() if v.get("replayed")]
    assert up_rec["replayed"] >= len(replayed) > 0.8 * (BACK_AT - KILL_AT)  # the outage came from the journal
    for v in rec.values():  # replayed or live: the header published for that frame, unchanged
        h = headers[(v["camera"], v["frame_id"])]
        assert (v["verdict"], v["score"], v["run"]) == (h["verdict"], h["score"], journal.run_id)
    assert set(cnt) <= set(headers) and len(cnt) + up_cnt["missed"] == N
    assert up_cnt["missed"] >= 0.8 * (BACK_AT - KILL_AT) and up_cnt["replayed"] == 0  # counted, not hidden


def test_what_the_bounded_journal_dropped_is_counted_missed(tmp_path: Path) -> None:
    """A journal of 256 kB keeps the newest verdicts only: a bridge asking for older ones counts them."""
    replay = f"tcp://127.0.0.1:{free_port()}"
    with _journal(JournalConfig(tmp_path / "j", 256 * 1024), replay, None) as journal:
        run = BeatingPublisher(free_port(), ("c1",), journal=journal)
        try:
            for i in range(3000):
                run.pub.publish_verdict({**_header(2 * i), "error": "x" * 100})
            files = list((tmp_path / "j").glob("*.sjr"))
            assert sum(f.stat().st_size for f in files) <= 256 * 1024 and journal.evicted > 0
            rec = Recovery(("tcp://run",), (replay,))
            first = {**_header(0), "run": journal.run_id, "seq": 0}
            rec.see(0, first)
            rec.see(0, {**first, "seq": 2999})  # the bridge was away for 2998 verdicts
            got, deadline = [], time.monotonic() + 20
            while rec.pending and time.monotonic() < deadline:
                got += rec.pump()
                time.sleep(0.01)
            rec.close()
        finally:
            run.close()
    seqs = [m.header["seq"] for _, m in got]
    assert seqs == list(range(journal.evicted, 2999))  # what the journal still held, in order, each once
    assert rec.missed == journal.evicted - 1 and rec.replayed == len(seqs) > 0  # seq 0 came live
    assert rec.missed + rec.replayed == 2998


def test_run_keeps_its_verdicts_in_the_journal_and_replay_needs_it(tmp_path: Path) -> None:
    import subprocess

    import typer
    from typer.testing import CliRunner

    from edge_somad.cli.runtime import run as run_command
    from edge_somad.runtime.messaging.curve import connect_subscriber
    from edge_somad.runtime.messaging.journal import read_segment
    from tests.helpers.bridges import REPO
    from tests.helpers.runtime import free_port_pair, grey, make_model_dir, write_video

    app = typer.Typer()
    app.command()(run_command)
    res = CliRunner().invoke(app, ["--camera", "x", "--model", str(tmp_path), "--replay", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "--replay needs --journal" in res.output, res.output
    model_dir = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", [grey() for _ in range(30)])
    port = free_port_pair()
    sock = connect_subscriber(f"tcp://127.0.0.1:{port}", b"somad/c1")
    proc = subprocess.run(
        [edge_somad_exe(), "run", "--camera", f"c1={video}", "--model",
         str(model_dir), "--publish", f"tcp://127.0.0.1:{port}", "--journal", str(tmp_path / "journal"),
         "--journal-max-mb", "1", "--wait-subscribers", "1", "--log-level", "info"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    sock.close()
    assert proc.returncode == 0, proc.stderr
    assert f"replay on tcp://127.0.0.1:{port + 1}" in proc.stderr, proc.stderr  # beside the publisher
    records = [r for segment in sorted((tmp_path / "journal").glob("*.sjr")) for r in read_segment(segment)]
    headers = [json.loads(parts[1]) for parts in records]
    assert [(h["camera"], h["frame_id"], h["seq"]) for h in headers] == [("c1", i, i) for i in range(30)]
    assert len({h["run"] for h in headers}) == 1


def test_replay_endpoint_answers_hostile_requests_with_errors_and_keeps_serving(tmp_path: Path) -> None:
    import zmq

    from edge_somad.runtime.messaging.replay import REQUEST_SCHEMA

    replay = f"tcp://127.0.0.1:{free_port()}"
    with _journal(JournalConfig(tmp_path / "j", 1 << 20), replay, None) as journal:
        run = BeatingPublisher(free_port(), ("c1",), journal=journal)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(replay)
        try:
            for i in range(10):
                run.pub.publish_verdict(_header(2 * i))
            hostile = [b"[" * 2000 + b"]" * 2000, b"\xff", b'{"schema": "x"}', json.dumps(
                {"schema": REQUEST_SCHEMA, "op": "replay", "camera": "../etc", "from_seq": 0}).encode(), json.dumps(
                {"schema": REQUEST_SCHEMA, "op": "replay", "camera": "c1", "from_seq": -1}).encode(), json.dumps(
                {"schema": REQUEST_SCHEMA, "op": "replay", "camera": "c1", "from_seq": 10**30}).encode()]
            for body in hostile:
                sock.send_multipart([b"", body])
                assert sock.poll(5000)
                reply = sock.recv_multipart()
                assert len(reply) == 2 and "error" in json.loads(reply[1]), reply
            sock.send_multipart([b"", json.dumps({"schema": REQUEST_SCHEMA, "id": 3, "op": "replay", "camera": "c1",
                                                  "from_seq": 4, "to_seq": 7, "run": journal.run_id}).encode()])
            assert sock.poll(5000)
            reply = sock.recv_multipart()
        finally:
            sock.close()
            run.close()
    head = json.loads(reply[1])
    assert head["seqs"] == [4, 5, 6] and head["parts"] == [3, 3, 3] and head["oldest"] == 0 and head["next"] == 10
    assert [json.loads(reply[2 + 3 * k + 1])["frame_id"] for k in range(3)] == [4, 5, 6]


def test_gaps_are_counted_from_run_and_seq_and_survive_a_bridge_restart() -> None:
    rec = Recovery(("tcp://run",))  # no replay endpoint: counted only

    def see(camera: str, seq: int, run: str = "00000000000000aa") -> int:
        rec.see(0, {"camera": camera, "seq": seq, "run": run})
        return rec.missed

    assert see("c1", 500) == 0 and see("c2", 499) == 0  # joined mid-run: the start point, nothing missed
    assert see("c1", 501) == 0 and see("c1", 504) == 2  # 502, 503
    assert see("c1", 504) == 2  # the same message again (a resend) is not a gap
    assert see("c1", 7, "00000000000000bb") == 9  # a new run: its seq 0..6 went by
    assert see("c2", 4, "00000000000000bb") == 13  # and its other camera's 0..3
    assert rec.missed_by_camera == {"c1": 9, "c2": 4}
    again = Recovery(("tcp://run",), state=rec.state())  # a restarted bridge continues where it stopped
    again.see(0, {"camera": "c1", "seq": 10, "run": "00000000000000bb"})
    assert again.missed == 15


def test_replay_endpoint_speaks_curve_only_to_listed_keys(tmp_path: Path) -> None:
    import zmq

    from edge_somad.runtime.messaging.curve import apply_client, load_client, load_server, make_keys
    from edge_somad.runtime.messaging.replay import REQUEST_SCHEMA

    keys = tmp_path / "keys"
    for name in ("server", "bridge", "stranger"):
        make_keys(keys, name)
    (keys / "clients").mkdir()
    (keys / "clients" / "bridge.key").write_bytes((keys / "bridge.key").read_bytes())
    server = load_server(keys / "server.key_secret", keys / "clients")
    replay = f"tcp://127.0.0.1:{free_port()}"
    request = json.dumps({"schema": REQUEST_SCHEMA, "op": "info"}).encode()
    answers = {}
    with _journal(JournalConfig(tmp_path / "j", 1 << 20), replay, server):
        for name in ("bridge", "stranger"):
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            apply_client(sock, load_client(keys / "server.key", keys / f"{name}.key_secret"))
            sock.connect(replay)
            sock.send_multipart([b"", request])
            answers[name] = json.loads(sock.recv_multipart()[1]) if sock.poll(3000) else None
            sock.close()
    assert answers["bridge"] is not None and answers["bridge"]["cameras"] == {}
    assert answers["stranger"] is None  # its handshake is refused: no answer at all
