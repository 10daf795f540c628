"""Receivers' limits and what a peer may cost `run`: the decoder's named refusals, counting each
rejection once, CSV cells, subscribe's option errors, the view's stale/new-run state, --topic-root,
raw TCP connections not counted, and a 50,000-subscription flood against a `run` process."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import time
from pathlib import Path

import pytest
import zmq
from typer.testing import CliRunner

from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.messaging import intake, messages
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.subscriber import SubscribeResult, _csv_row, receive
from tests.fuzz_support import NESTED_REPRO, valid_header, verdict_parts
from tests.helpers.runtime import free_port, make_model_dir


@pytest.mark.parametrize(("parts", "reason"), [
    (NESTED_REPRO, "nests 2000 levels"),
    ([b"somad/cam0", b'{"a":' + b"9" * 5000 + b"}", b""], "5000 digits"),
    ([b"somad/cam0", json.dumps(valid_header(1)).replace('"score": 0.2', '"score": NaN').encode(), b""], "NaN"),
    ([b"somad/cam0", json.dumps(valid_header(1)).replace('"score": 0.2', '"score": 1e999').encode(), b""],
     "overflows"),
    (verdict_parts(valid_header(1, score="=1+1")), "field 'score'"),
    (verdict_parts(valid_header(1, defects=[{"x": "a"}])), "field 'defects[0]'"),
    (verdict_parts(valid_header(1, overlay=True)), "3 parts"),
    (verdict_parts(valid_header(1, error="e" * (2 << 20))), "header of"),
    ([b"somad/cam0"] * 6, "6 part(s)"),
])
def test_decoder_refuses_with_a_named_reason(parts: list[bytes], reason: str) -> None:
    with pytest.raises(InputError, match=re.escape(reason)):
        msg = messages.parse_message(parts)
        messages.validate_verdict(msg)
    result = SubscribeResult()
    assert receive(parts, result) is None and result.rejected == 1
    assert receive(verdict_parts(valid_header(2)), result) is not None  # and the next one is fine


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert intake.nesting_depth(b'{"a": "[[[[\\"[[", "b": [[1]]}') == 3
    assert intake.nesting_depth(b'["\\\\", [[]]]') == 3
    assert intake.nesting_depth(b"[" * 2000) == 2000


def test_a_rejected_message_is_counted_once_not_also_as_missed() -> None:
    result = SubscribeResult()
    assert receive(verdict_parts(valid_header(1, seq=33)), result)
    assert receive(verdict_parts(valid_header(2, seq=34, score="bad")), result) is None
    assert receive(verdict_parts(valid_header(3, seq=35)), result)
    assert (result.rejected, result.missed) == (1, 0)
    assert receive(verdict_parts(valid_header(4, seq=38)), result)  # 36 and 37 never arrived
    assert (result.rejected, result.missed) == (1, 2)


def test_csv_numbers_stay_numbers_and_formulas_are_neutralised() -> None:
    h = valid_header(7, verdict="error", error='=HYPERLINK("http://x","y")', score=None)
    for text in ("+cmd", "-1+1", "@SUM(A1)", "\tx", "\rx"):
        assert _csv_row({**h, "error": text})["error"] == "'" + text
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_csv_row(h)))
    writer.writerow(_csv_row(h))
    row = next(csv.reader(io.StringIO(buf.getvalue())))
    assert row[0] == "7" and row[5] == "" and row[7] == "0.5"  # frame_id, score (null), threshold
    assert row[9].startswith("'=HYPERLINK") and row[11] == '[{"x":1,"y":2,"w":3,"h":4,"area_px":12,"max_score":0.7}]'


def test_save_fails_budget_caps_the_folder(tmp_path: Path) -> None:
    from edge_somad.runtime.messaging.subscriber import _Sinks

    result, fails = SubscribeResult(), tmp_path / "fails"
    sinks = _Sinks(None, fails, io.StringIO(), True, save_max_bytes=12_000)
    for i in range(5):
        parts = [*verdict_parts(valid_header(i, verdict="fail", overlay=True)), b"\xff\xd8" + b"j" * 3000]
        sinks.verdict(messages.parse_message(parts), result)
    written = sum(p.stat().st_size for p in fails.iterdir())
    assert 0 < written <= 12_000 and result.not_saved >= 1
    assert len(list(fails.glob("*.jpg"))) == 5 - result.not_saved


def test_subscribe_option_errors_exit_2() -> None:
    from edge_somad.cli import app

    res = CliRunner().invoke(app, ["view", "--connect", "nope"])
    assert res.exit_code == 2 and "error: --connect 'nope'" in res.output, res.output
    for args, text in ((["--connect", "nope"], "--connect 'nope'"), (["--count", "-1"], "--count -1"),
                       (["--timeout", "0"], "--timeout 0"), (["--max-message-mb", "0"], "--max-message-mb")):
        res = CliRunner().invoke(app, ["subscribe", *args])
        assert res.exit_code == 2 and "error:" in res.output and text in res.output, res.output
        assert "Traceback" not in res.output


def test_topic_root_levels_are_checked() -> None:
    from edge_somad.runtime.bridges.mqtt import check_topic_root

    assert check_topic_root("plant/edge-somad/v1") == "plant/edge-somad/v1"
    for bad in ("a/#", "a/+/b", "a//b", "", "$SYS/x", "a\x00b"):
        with pytest.raises(ConfigError, match="--topic-root"):
            check_topic_root(bad)
    from edge_somad.cli.bridge import app

    res = CliRunner().invoke(app, ["mqtt", "--topic-root", "a/#", "--box", "b"])
    assert res.exit_code == 2 and "--topic-root 'a/#'" in res.output


def test_mqtt_bridge_gives_up_on_a_broker_that_refuses_it(tmp_path: Path) -> None:
    from tests.helpers.bridges import Mosquitto, start_bridge

    pw = tmp_path / "pw"
    pw.write_text("")
    broker = Mosquitto(tmp_path / "b", extra=f"allow_anonymous false\npassword_file {pw}\n")
    broker.start()
    try:
        bridge = start_bridge(["mqtt", "--connect", f"tcp://127.0.0.1:{free_port()}", "--port", str(broker.port),
                               "--box", "refused", "--queue-file", str(tmp_path / "q.sqlite")], tmp_path / "log")
        assert bridge.wait(30) == 2
    finally:
        broker.stop()
    log = (tmp_path / "log").read_text()
    assert "error:" in log and "refused the connection" in log and "3 times in a row" in log, log[-2000:]


def test_view_shows_stale_and_resets_counters_on_a_new_run() -> None:
    from edge_somad.runtime.view.view_state import ViewState

    state = ViewState(["tcp://a:1"], stale_s=0.3)
    beat = lambda at, up, seq: messages.Received(  # noqa: E731
        "somad/_heartbeat", {"schema": messages.HEARTBEAT_SCHEMA, "at": at, "uptime_s": up, "seq": seq}, b"", None)
    state.apply("tcp://a:1", beat(1000.0, 10.0, 10))
    for i in range(3):
        state.apply("tcp://a:1", messages.parse_message(verdict_parts(valid_header(i, seq=i))))
    first = state.changes({})
    assert first["endpoints"]["tcp://a:1"]["state"] == "live" and first["total_verdicts"] == 3
    time.sleep(0.4)
    assert state.changes({})["endpoints"]["tcp://a:1"]["state"] == "stale"  # run died: no heartbeat
    state.apply("tcp://a:1", beat(1100.0, 1.0, 0))  # a new run: started 91 s later, seq from 0
    now = state.changes({})
    assert now["endpoints"]["tcp://a:1"]["state"] == "live" and now["endpoints"]["tcp://a:1"]["runs"] == 2
    assert now["total_verdicts"] == 0 and now["tiles"]["cam0"]["counts"] == {"pass": 0, "fail": 0, "error": 0}
    state.apply("tcp://a:1", beat(1100.0, 2.0, 1))  # the same run's next heartbeat: no new run
    assert state.changes({})["endpoints"]["tcp://a:1"]["runs"] == 2


def _wait(cond, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_raw_tcp_connections_are_not_subscribers_and_foreign_topics_are_refused() -> None:
    port = free_port()
    with Publisher(f"tcp://127.0.0.1:{port}", cameras=["cam0"]) as pub:
        raw = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for t in (b"somad/cam0", b"somad/x1", b"other/", b"somad/"):
            sub.setsockopt(zmq.SUBSCRIBE, t)
        sub.connect(f"tcp://127.0.0.1:{port}")
        assert _wait(lambda: pub.subscriptions_seen == 2 and pub.subscriptions_refused == 2)
        time.sleep(0.3)
        assert pub.subscribers == 1  # 50 raw sockets never completed a ZeroMQ handshake
        assert pub.peers_disconnected == 0  # a normal subscriber stays far below its byte budget
        for s in raw:
            s.close()
        assert _wait(lambda: pub.handshake_failures["other"] == 50) and pub.subscribers == 1
        sub.close()
        assert _wait(lambda: pub.subscribers == 0)


def test_a_peer_over_its_byte_budget_is_disconnected() -> None:
    port = free_port()
    with Publisher(f"tcp://127.0.0.1:{port}", cameras=["cam0"]) as pub:
        good = zmq.Context.instance().socket(zmq.SUB)
        good.setsockopt(zmq.LINGER, 0)
        good.setsockopt(zmq.SUBSCRIBE, b"somad/")
        good.connect(f"tcp://127.0.0.1:{port}")
        flood = zmq.Context.instance().socket(zmq.XSUB)
        flood.setsockopt(zmq.LINGER, 0)
        flood.setsockopt(zmq.SNDHWM, 0)
        flood.connect(f"tcp://127.0.0.1:{port}")
        for i in range(120_000):  # ~2.4 MB of subscriptions: over the 1 MiB budget
            flood.send(b"\x01somad/f%07d" % i)
        assert _wait(lambda: pub.peers_disconnected >= 1, 20)
        got = []
        assert _wait(lambda: (pub.publish_heartbeat({"schema": messages.HEARTBEAT_SCHEMA}) >= 0
                              and good.poll(50) and got.append(good.recv_multipart()) is None), 5)
        assert got and got[0][0] == b"somad/_heartbeat"  # the well-behaved peer still receives
        flood.close()
        good.close()


def test_subscription_flood_keeps_run_within_bounds(tmp_path: Path) -> None:
    from benchmarks.subscription_flood import flood

    result = flood(make_model_dir(tmp_path / "m"), 50_000, free_port(), settle_s=2.0)
    print(json.dumps(result))
    assert result["rss_flooded_mb"] - result["rss_before_mb"] < 40, result
    assert result["heartbeat_gap_max_s"] < 2.5, result
    assert result["verdicts_after_flood"] >= 10 and result["verdicts_during_flood"] >= 10, result
    assert result["subscriptions_refused"] > 0 and result["subscribers_after"] == 1, result
