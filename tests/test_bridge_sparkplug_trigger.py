"""DCMD `Trigger` on a camera device: parsed, handed to the trigger path (a stand-in, then a real triggered
runtime's control endpoint), answered in `Trigger Status`, the part's verdict as DDATA with its part id."""

from __future__ import annotations

import threading
from pathlib import Path

from edge_somad.runtime.bridges.mqtt import MqttBridgeConfig
from edge_somad.runtime.bridges.mqtt_link import BrokerConfig
from edge_somad.runtime.bridges.source import SourceConfig
from edge_somad.runtime.bridges.sparkplug import SparkplugBridge, SparkplugOptions
from tests.helpers.bridges import BeatingPublisher, Mosquitto, start_bridge
from tests.helpers.runtime import free_port
from tests.helpers.sparkplug_host import STRING, SparkplugHost, encode_command
from tests.helpers.trigger import Line, Runtime
from tests.test_bridge_sparkplug import GROUP, NODE

UINT32 = 7


def _statuses(host: SparkplugHost, device: str) -> list[str]:
    _, data = host.check()
    return [v["Trigger Status"] for d, v in data if d == device and "Trigger Status" in v]


def test_dcmd_trigger_reaches_the_trigger_path_and_its_answer_comes_back(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    host = SparkplugHost(broker.port)
    zmq_port = free_port()
    run = BeatingPublisher(zmq_port, ("c1", "c2"))
    config = MqttBridgeConfig(broker=BrokerConfig(port=broker.port, client_id="spb-trigger-test"),
                              source=SourceConfig((f"tcp://127.0.0.1:{zmq_port}",)), box=NODE, group=GROUP,
                              queue_file=tmp_path / "q.sqlite", status_interval_s=0.5)
    bridge = SparkplugBridge(config, SparkplugOptions())
    calls: list[tuple[str, str, int | None]] = []

    def trigger(camera: str, part_id: str, deadline_ms: int | None) -> dict:  # stands in for `run --control`
        calls.append((camera, part_id, deadline_ms))
        return {"error": "deadline"} if part_id == "P-late" else {"verdict": "fail", "part_id": part_id}

    bridge.triggers.fn = trigger  # the injection point the CLI fills with the trigger client
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    try:
        assert host.wait_for(lambda m: len(host.of("DBIRTH")) >= 2, 30)
        dcmd = f"spBv1.0/{GROUP}/DCMD/{NODE}/c2"
        host.send(dcmd, encode_command([("Trigger", None, STRING, "P-1234"),
                                        ("Trigger Deadline Ms", None, UINT32, 300)]))
        assert host.wait_for(lambda m: "fail P-1234" in _statuses(host, "c2"), 20), calls
        assert calls == [("c2", "P-1234", 300)]
        assert any(v.get("Trigger") == "P-1234" for d, v in host.check()[1] if d == "c2")  # the write, echoed
        # by alias, as a host that learnt the aliases from the DBIRTH sends it
        birth = host.of("DBIRTH", "c2")[-1].payload
        alias = next(x["alias"] for x in birth["metrics"] if x["name"] == "Trigger")
        host.send(dcmd, encode_command([(None, alias, STRING, "P-late")]))
        assert host.wait_for(lambda m: "error: deadline P-late" in _statuses(host, "c2"), 20), calls
        assert calls[-1] == ("c2", "P-late", None) and len(calls) == 2
        host.send(dcmd, encode_command([("Trigger", None, STRING, "")]))  # refused before the trigger path
        host.send(dcmd, encode_command([("Trigger", None, STRING, "P-9")]))
        assert host.wait_for(lambda m: "fail P-9" in _statuses(host, "c2"), 20)
        assert [c[1] for c in calls] == ["P-1234", "P-late", "P-9"] and bridge.bad_commands == 1
    finally:
        bridge.request_stop()
        thread.join(20)
        run.close()
    try:
        assert not thread.is_alive()
        assert host.wait_for(lambda m: len(host.of("NDEATH")) >= 1, 10)  # a clean stop says goodbye too
        errors, _ = host.check()
        assert errors == [], errors[:10]
    finally:
        host.close()
        broker.stop()


def test_dcmd_trigger_against_a_triggered_runtime(tmp_path: Path) -> None:
    """The real path: DCMD -> bridge -> `run --trigger --control` -> the part's verdict as DDATA."""
    runtime = Runtime(tmp_path / "rt")
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    host = SparkplugHost(broker.port)
    log = tmp_path / "bridge.log"
    bridge = start_bridge(["mqtt", "--sparkplug", "--group", GROUP, "--node", NODE, "--connect", runtime.publish,
                           "--port", str(broker.port), "--queue-file", str(tmp_path / "q.sqlite"),
                           "--control", runtime.control, "--log-level", "info"], log)
    dcmd = f"spBv1.0/{GROUP}/DCMD/{NODE}/cam0"

    def verdict_of(part: str) -> dict | None:
        return next((v for d, v in host.check()[1] if d == "cam0" and v.get("Inspection/Part Id") == part), None)

    try:
        assert host.wait_for(lambda m: len(host.of("DBIRTH", "cam0")) >= 1, 30), log.read_text()
        Line.bad.set()  # a defective part in front of the camera
        host.send(dcmd, encode_command([("Trigger", None, STRING, "P-SPB-1"),
                                        ("Trigger Deadline Ms", None, UINT32, 1000)]))
        assert host.wait_for(lambda m: "fail P-SPB-1" in _statuses(host, "cam0"), 20), log.read_text()[-2000:]
        assert host.wait_for(lambda m: verdict_of("P-SPB-1") is not None, 20)  # the stream's copy, with its id
        v = verdict_of("P-SPB-1")
        assert v["Inspection/Result"] == "fail" and v["Inspection/Trigger Time"] > 0
        Line.bad.clear()
        host.send(dcmd, encode_command([("Trigger", None, STRING, "P-SPB-1")]))  # the same part again
        assert host.wait_for(lambda m: any(s.startswith("error: duplicate") and s.endswith("P-SPB-1")
                                           for s in _statuses(host, "cam0")), 20), _statuses(host, "cam0")
        host.send(dcmd, encode_command([("Trigger", None, STRING, "P-SPB-2"),
                                        ("Trigger Deadline Ms", None, UINT32, 1000)]))
        assert host.wait_for(lambda m: "pass P-SPB-2" in _statuses(host, "cam0"), 20), _statuses(host, "cam0")
    finally:
        bridge.kill()
        runtime.stop()
        host.close()
        broker.stop()
    errors, _ = host.check()
    assert errors == [], errors[:10]
