"""MQTT births and deaths: never an empty birth, bdSeq per session established, the current run's cameras."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers.bridges import BeatingPublisher, Consumer, Mosquitto, start_bridge, verdict_count
from tests.helpers.runtime import free_port


def _args(zmq_port: int, mqtt_port: int, tmp: Path) -> list[str]:
    return ["mqtt", "--connect", f"tcp://127.0.0.1:{zmq_port}", "--port", str(mqtt_port), "--box", "box2",
            "--queue-file", str(tmp / "box2.sqlite"), "--status-interval", "0.5", "--log-level", "info"]


def test_births_say_what_the_node_has_and_count_sessions(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    consumer = Consumer(broker.port, client_id="watcher")
    zmq_port = free_port()
    args = _args(zmq_port, broker.port, tmp_path)
    bridge = start_bridge(args, tmp_path / "bridge.log")
    run = None
    log = tmp_path / "bridge.log"
    try:
        # No stream yet: the bridge is connected (its status is on the broker) but announces no birth.
        assert consumer.wait_for(lambda m: verdict_count("NSTATUS")(m) >= 2, 20), log.read_text()
        assert verdict_count("NBIRTH")(consumer.messages) == 0
        run = BeatingPublisher(zmq_port, ("c1", "c2"))  # the first heartbeat says what the node has
        assert consumer.wait_for(lambda m: verdict_count("NBIRTH")(m) >= 1, 20), log.read_text()
        first = consumer.json("NBIRTH")[0]
        assert first["cameras"] == ["c1", "c2"] and first["complete"]
        assert first["streams"][0]["model"]["name"] == "standin"

        bridge.kill()  # SIGKILL: the broker publishes the last will, with the birth's bdSeq
        bridge.wait(10)
        assert consumer.wait_for(lambda m: verdict_count("NDEATH")(m) >= 1, 30)
        death = consumer.json("NDEATH")[0]
        assert death["bdSeq"] == first["bdSeq"] and death["reason"] == "connection lost (last will)"

        broker.stop()  # the bridge comes back while the broker is away: several refused connects
        bridge = start_bridge(args, log)
        deadline = time.monotonic() + 20
        while log.read_text().count("retrying in") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.read_text().count("retrying in") >= 3, log.read_text()
        broker.start()
        # (a reconnecting consumer gets the retained birth again: look for a newer one)
        assert consumer.wait_for(lambda m: consumer.json("NBIRTH")[-1]["bdSeq"] != first["bdSeq"], 30), log.read_text()
        second = consumer.json("NBIRTH")[-1]
        assert second["bdSeq"] == first["bdSeq"] + 1  # one session more, however many attempts it took

        run.close()  # `run` restarted with another camera set: the birth follows the current run
        run = BeatingPublisher(zmq_port, ("c3",))
        assert consumer.wait_for(lambda m: consumer.json("NBIRTH")[-1]["cameras"] == ["c3"], 20), log.read_text()
        assert consumer.json("NBIRTH")[-1]["bdSeq"] == second["bdSeq"]  # same session, a new birth
        late = Consumer(broker.port, client_id="late-joiner")  # retained birth and death for whoever comes later
        try:
            assert late.wait_for(lambda m: verdict_count("NBIRTH")(m) >= 1 and verdict_count("NDEATH")(m) >= 1, 10)
            assert late.json("NBIRTH")[-1]["cameras"] == ["c3"]
            assert late.json("NBIRTH")[-1]["bdSeq"] > late.json("NDEATH")[-1]["bdSeq"]  # online
            assert all(r for t, _, r in late.messages if "/NBIRTH/" in t or "/NDEATH/" in t)
        finally:
            late.close()
    finally:
        if bridge.poll() is None:
            bridge.kill()
        if run is not None:
            run.close()
        consumer.close()
        broker.stop()
    births = consumer.json("NBIRTH")
    assert all(b["cameras"] and b["streams"][0]["model"] for b in births), births  # never empty
