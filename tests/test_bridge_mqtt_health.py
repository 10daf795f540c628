"""Line health on MQTT: a real `run` pipeline, the bridge as a process, Mosquitto, a consumer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers.bridges import ROOT, Consumer, Mosquitto, start_bridge, verdict_count
from tests.helpers.runtime import free_port
from tests.test_bridge_opcua_alarms import run_clip
from tests.test_runtime_health import model_with_reference, parts


def test_black_camera_alarm_events_and_retained_health(tmp_path: Path) -> None:
    model = model_with_reference(tmp_path)
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    consumer = Consumer(broker.port, client_id="scada")
    zmq_port = free_port()
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    log = tmp_path / "bridge.log"
    bridge = start_bridge(["mqtt", "--connect", endpoint, "--port", str(broker.port), "--box", "box3",
                           "--queue-file", str(tmp_path / "q.sqlite"), "--log-level", "info"], log)
    health_topic = f"{ROOT}/line/DHEALTH/box3/c1"

    def retained_health() -> list[dict]:
        return [json.loads(p) for t, p, _ in consumer.messages if t == health_topic]

    try:
        # good parts: verdicts and a retained `ok` health, no alarm event
        final = run_clip(model, endpoint, parts(24, seed=31), tmp_path / "good.avi")
        assert final["verdicts"]["pass"] == 24
        assert consumer.wait_for(lambda m: verdict_count("DDATA")(m) == 24 and retained_health(), 20), log.read_text()
        assert retained_health()[-1]["state"] == "ok" and retained_health()[-1]["alarms"] == []
        assert verdict_count("DALARM")(consumer.messages) == 0

        # black frames then good ones: the alarm fires, then clears (still unacknowledged: retained)
        black = [np.zeros_like(parts(1, seed=0)[0])] * 6
        run_clip(model, endpoint, parts(10, seed=32) + black + parts(14, seed=33), tmp_path / "black.avi")
        assert consumer.wait_for(lambda m: verdict_count("DALARM")(m) >= 2 and verdict_count("DDATA")(m) == 54,
                                 20), log.read_text()
        alarms = consumer.json("DALARM")
        assert [(a["check"], a["active"], a["acked"], a["retain"]) for a in alarms] == [
            ("black", True, False, True), ("black", False, False, True)], alarms
        assert alarms[0]["camera"] == "c1" and alarms[0]["severity"] == 800 and "black frame" in alarms[0]["message"]
        states = [h["state"] for h in retained_health()]
        assert "alarm" in states and states[-1] == "ok", states
        fired = next(h for h in retained_health() if h["state"] == "alarm")
        assert [a["check"] for a in fired["alarms"]] == ["black"] and fired["alarms"][0]["active"]
        # the alarm event is queued with the verdicts, among the black frames' error verdicts: verdicts
        # already handed to run's publishing thread (two batches at most) may still precede it
        order = [(t.split("/")[3], json.loads(p)) for t, p, _ in consumer.messages if "/DDATA/" in t or "/DALARM/" in t]
        at = next(i for i, (k, _) in enumerate(order) if k == "DALARM")
        near = [o for k, o in order[max(0, at - 3):at + 4] if k == "DDATA"]
        assert any(o["verdict"] == "error" for o in near), near
    finally:
        bridge.terminate()
        bridge.wait(20)
        consumer.close()
        broker.stop()
    broker.start()  # a consumer joining later (the broker restarted meanwhile) reads the retained state at once
    joiner = Consumer(broker.port, client_id="late", topic=health_topic)
    try:
        assert joiner.wait_for(lambda m: len(m) >= 1, 10)
        _topic, payload, retain = joiner.messages[0]
        assert retain and json.loads(payload)["camera"] == "c1"
    finally:
        joiner.close()
        broker.stop()
