"""PLC-facing trigger transports against a real triggered runtime: the OPC UA bridge's Trigger method
called by an asyncua client, and the MQTT bridge's command topic on a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from edge_somad.runtime.bridges.opcua import NAMESPACE
from tests.helpers.bridges import Consumer, Mosquitto, connect_opcua, start_bridge
from tests.helpers.poll import wait_until
from tests.helpers.runtime import free_port
from tests.helpers.trigger import Line, Runtime


@pytest.fixture
def runtime(tmp_path: Path):
    rt = Runtime(tmp_path / "rt")
    yield rt
    rt.stop()


async def _call_trigger(url: str) -> dict:
    from asyncua import ua

    client = await connect_opcua(url)
    try:
        idx = await client.get_namespace_index(NAMESPACE)
        box = client.get_node(f"ns={idx};s=box1")
        method = client.get_node(f"ns={idx};s=box1.Trigger")
        names = [a.Name for a in await (await method.get_child("0:OutputArguments")).read_value()]
        out = {"outputs": names}

        async def call(part_id, deadline):
            return await box.call_method(method, ua.Variant(part_id, ua.VariantType.String),
                                         ua.Variant(deadline, ua.VariantType.UInt32))

        Line.bad.set()
        out["fail"] = await call("P-OPC-1", 1000)
        Line.bad.clear()
        out["pass"] = await call("P-OPC-2", 1000)
        out["duplicate"] = await call("P-OPC-1", 1000)
        out["bad_id"] = await call("P\tOPC", 1000)
        out["late"] = await call("P-OPC-3", 1)
        out["default_deadline"] = await call("P-OPC-4", 0)
        try:
            await box.call_method(method, ua.Variant(7, ua.VariantType.Int32), ua.Variant(5, ua.VariantType.UInt32))
            out["wrong_type"] = "accepted"
        except ua.UaStatusCodeError as exc:
            out["wrong_type"] = type(exc).__name__
        part = client.get_node(f"ns={idx};s=box1.cam0.LastResult.PartId")
        for _ in range(100):  # the stream's copy of the last verdict reaches LastResult too
            out["last_part_id"] = await part.read_value()
            if out["last_part_id"] == "P-OPC-4":
                break
            await asyncio.sleep(0.05)
        return out
    finally:
        await client.disconnect()


def test_opcua_trigger_method_returns_the_parts_verdict(runtime, tmp_path: Path):
    url = f"opc.tcp://127.0.0.1:{free_port()}/edge-somad/"
    bridge = start_bridge(["opcua", "--connect", runtime.publish, "--endpoint", url, "--box", "box1",
                           "--camera", "cam0", "--control", runtime.control, "--log-level", "warning"],
                          tmp_path / "bridge.log")
    try:
        out = asyncio.run(_call_trigger(url))
    finally:
        bridge.terminate()
        bridge.wait(10)
    assert out["outputs"] == ["Verdict", "ResultEvaluation", "Score", "ErrorText", "PartId", "ResultJson"]
    verdict, evaluation, score, error, part, whole = out["fail"]
    assert (verdict, evaluation, error, part) == ("fail", 2, "", "P-OPC-1") and score > 0.5
    assert json.loads(whole)["part_id"] == "P-OPC-1" and json.loads(whole)["trigger_ts"] > 0
    verdict, evaluation, score, error, part, _ = out["pass"]
    assert (verdict, evaluation, error, part) == ("pass", 1, "", "P-OPC-2") and score < 0.5
    assert out["duplicate"][:2] == ["error", 3] and out["duplicate"][3].startswith("duplicate")
    assert out["bad_id"][:2] == ["error", 3] and "part_id" in out["bad_id"][3] and math.isnan(out["bad_id"][2])
    assert out["late"][:2] == ["error", 3] and out["late"][3].startswith("deadline")
    assert out["default_deadline"][0] == "pass" and json.loads(out["default_deadline"][5])["deadline_ms"] == 2000
    assert out["wrong_type"] == "BadInvalidArgument"
    assert out["last_part_id"] == "P-OPC-4"


class Mqtt5:
    """A paho MQTT 5 client: publishes commands (optionally with Response Topic and Correlation Data) and
    records what arrives on the topics it subscribed to."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt

        self.got: list[tuple[str, dict, bytes | None]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc", protocol=mqtt.MQTTv5)
        subscribed = []
        self.client.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in topics]
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.append(mid)
        self.client.on_message = lambda c, u, m: self.got.append(
            (m.topic, json.loads(m.payload), getattr(m.properties, "CorrelationData", None)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert wait_until(lambda: len(subscribed) == len(topics), 10.0)

    def command(self, topic: str, payload: bytes, response_topic: str | None = None, correlation: bytes = b"") -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic, props.CorrelationData = response_topic, correlation
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_trigger_command_topic_answers_each_part(runtime, tmp_path: Path):
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    root = "edge-somad/v1/line"
    bridge = start_bridge(["mqtt", "--connect", runtime.publish, "--broker", "127.0.0.1", "--port", str(broker.port),
                           "--box", "box1", "--queue-file", str(tmp_path / "q.sqlite"), "--control", runtime.control,
                           "--log-level", "warning"], tmp_path / "bridge.log")
    plc = Mqtt5(broker.port, [f"{root}/TRIGGER/#", "plc/answers"])
    stream = Consumer(broker.port, topic=f"{root}/#")
    cmd = f"{root}/CMD/box1/trigger"
    try:
        # the bridge subscribes to the command topic on connect, before its birth goes out on that connection
        assert stream.wait_for(lambda msgs: any(t.split("/")[3] == "NBIRTH" for t, _, _ in msgs), 15.0)
        plc.command(cmd, json.dumps({"part_id": "P-MQ-1", "deadline_ms": 1000}).encode(), "plc/answers", b"corr-1")
        assert wait_until(lambda: any(t == "plc/answers" for t, _, _ in plc.got), 10.0), plc.got
        _, answer, corr = next(g for g in plc.got if g[0] == "plc/answers")
        assert corr == b"corr-1" and answer["verdict"] == "pass" and answer["part_id"] == "P-MQ-1"
        assert answer["box"] == "box1" and answer["ok"] is True and answer["trigger_ts"] > 0
        # no response topic: the answer goes to TRIGGER/<box>/<camera>
        Line.bad.set()
        plc.command(cmd, json.dumps({"part_id": "P-MQ-2"}).encode())
        assert wait_until(lambda: any(t == f"{root}/TRIGGER/box1/cam0" for t, _, _ in plc.got), 10.0), plc.got
        Line.bad.clear()
        answer = next(a for t, a, _ in plc.got if t == f"{root}/TRIGGER/box1/cam0")
        assert answer["verdict"] == "fail" and answer["part_id"] == "P-MQ-2" and answer["deadline_ms"] == 2000
        # refused commands are answered too, naming what was wrong
        for bad in (b"{not json", json.dumps({"part_id": "P-MQ-1"}).encode(), json.dumps({"part": "x"}).encode()):
            plc.command(cmd, bad, "plc/answers", b"bad")
        assert wait_until(lambda: sum(1 for _, _, c in plc.got if c == b"bad") == 3, 10.0), plc.got
        errors = sorted(a["error"][:20] for _, a, c in plc.got if c == b"bad")
        assert all(a["verdict"] == "error" for _, a, c in plc.got if c == b"bad")
        assert errors[0].startswith("command b'{not json") and errors[1].startswith("duplicate") \
            and errors[2].startswith("unknown field"), errors
        # the triggered verdicts reach the normal DDATA stream with their part ids
        assert stream.wait_for(lambda msgs: sum(t.split("/")[3] == "DDATA" for t, _, _ in msgs) >= 2, 10.0)
        assert sorted(j["part_id"] for j in stream.json("DDATA")) == ["P-MQ-1", "P-MQ-2"]
    finally:
        plc.close()
        stream.close()
        bridge.terminate()
        bridge.wait(10)
        broker.stop()



@pytest.mark.parametrize(("payload", "words"), [
    (b"", "not UTF-8 JSON"), (b"\xff", "not UTF-8 JSON"), (b"[1]", "JSON list"), (b'"P-1"', "JSON str"),
    (b"[" * 3000, "not UTF-8 JSON"), (b" " * 5000, "5000 bytes"), (b'{"part_id": "P", "cmd": "x"}', "unknown field"),
])
def test_mqtt_commands_that_cannot_be_parsed_are_refused_with_what_arrived(payload, words):
    from edge_somad.errors import InputError
    from edge_somad.runtime.bridges.mqtt_trigger import parse_command

    with pytest.raises(InputError, match=words.replace("[", r"\[")):
        parse_command(payload)


def test_mqtt_command_answers_errors_without_a_runtime():
    """No runtime behind --control: the command is still answered, with the reason (after its wait)."""
    from edge_somad.runtime.bridges.mqtt_trigger import TriggerCommands

    commands = TriggerCommands(f"tcp://127.0.0.1:{free_port()}", lambda kind, cam=None: f"r/{kind}", "box1")
    for payload, words in ((b'{"part_id": "P\\u0007"}', "part_id"), (b'{"part_id": "P-1", "deadline_ms": 1.5}',
                                                                     "deadline_ms 1.5"),
                           (b'{"part_id": "P-1", "deadline_ms": 100}', "no answer")):
        answer = commands.answer(payload)
        assert answer["verdict"] == "error" and words in answer["error"], answer


@pytest.mark.parametrize(("answer", "expected"), [
    ({"verdict": "pass", "score": 0.1, "error": None, "part_id": "P"}, ("pass", 1, 0.1, "")),
    ({"verdict": "fail", "score": 2, "part_id": "P"}, ("fail", 2, 2.0, "")),
    ({"verdict": "error", "score": None, "error": "deadline: x"}, ("error", 3, math.nan, "deadline: x")),
    ({"verdict": "maybe", "score": "high"}, ("error", 3, math.nan, "error verdict without a reason")),
    ({}, ("error", 3, math.nan, "error verdict without a reason")),
])
def test_opcua_outputs_never_show_a_pass_that_was_not_one(answer, expected):
    from edge_somad.runtime.bridges.opcua_trigger import outputs_of

    values = [v for v, _ in outputs_of(answer, "P-req")]
    got = (values[0], values[1], values[2], values[3])
    assert got[:2] == expected[:2] and got[3] == expected[3]
    assert (math.isnan(got[2]) and math.isnan(expected[2])) or got[2] == expected[2]
    assert values[4] == answer.get("part_id", "P-req") and json.loads(values[5]) == answer
