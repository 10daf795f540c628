"""`bridge mqtt --sparkplug` on a real Mosquitto, read by an independent Sparkplug host (tests/helpers).

The host decodes the protobuf wire format itself and applies a host's rules: births before data,
metrics declared (name, alias, datatype), seq continuity through 255 -> 0, bdSeq of NBIRTH and NDEATH.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import pytest

from edge_somad.errors import ConfigError
from edge_somad.runtime.bridges.mqtt import MqttBridge, MqttBridgeConfig
from edge_somad.runtime.bridges.mqtt_link import BrokerConfig
from edge_somad.runtime.bridges.queue import Item
from edge_somad.runtime.bridges.source import SourceConfig
from edge_somad.runtime.bridges.sparkplug import SparkplugBridge
from edge_somad.runtime.messaging import messages
from tests.helpers.bridges import BeatingPublisher, Mosquitto, start_bridge
from tests.helpers.runtime import free_port
from tests.helpers.sparkplug_host import BOOLEAN, SparkplugHost, encode_command

GROUP, NODE = "hall2", "line7"
N = 600  # verdicts over two cameras: with births, health and node data, the seq wraps at least twice


def spb_args(zmq_port: int, mqtt_port: int, tmp: Path, *extra: str) -> list[str]:
    return ["mqtt", "--sparkplug", "--group", GROUP, "--node", NODE, "--connect", f"tcp://127.0.0.1:{zmq_port}",
            "--port", str(mqtt_port), "--queue-file", str(tmp / "spb.sqlite"), "--status-interval", "0.5",
            "--log-level", "info", *extra]


class SpbLine:
    """A Mosquitto broker, the independent Sparkplug host, `run` stood in by a BeatingPublisher, and a
    `bridge mqtt --sparkplug` process between them (`start_bridge` again for a new session). A context
    manager: the bridge (if still running), the publisher, the host and the broker are stopped on exit;
    what the host recorded stays readable after it."""

    def __init__(self, tmp: Path, cameras: tuple[str, ...], *bridge_args: str, host_id: str | None = None,
                 host_online: bool | None = None, broker_conf: str | None = None) -> None:
        self.tmp, self.bridge_args = tmp, bridge_args
        self.broker = Mosquitto(tmp / "broker") if broker_conf is None else Mosquitto(tmp / "broker", extra=broker_conf)
        self.broker.start()
        self.host = SparkplugHost(self.broker.port, host_id=host_id)
        if host_online is not None:  # retained: the bridge learns it as soon as it subscribes
            self.host.set_online(host_online)
        self.zmq_port, self.log = free_port(), tmp / "bridge.log"
        self.run = BeatingPublisher(self.zmq_port, cameras)
        self.bridge = self.start_bridge()

    def start_bridge(self) -> subprocess.Popen:
        self.bridge = start_bridge(spb_args(self.zmq_port, self.broker.port, self.tmp, *self.bridge_args), self.log)
        return self.bridge

    def __enter__(self) -> SpbLine:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bridge.poll() is None:
            self.bridge.kill()
        self.run.close()
        self.host.close()
        self.broker.stop()


def header(i: int, sha: str = "ab" * 32) -> dict:
    camera = ("c1", "c2")[i % 2]
    verdict = "fail" if i % 7 == 3 else "pass"
    h = messages.verdict_header(
        camera=camera, frame_id=i // 2, captured_at=time.time(), published_at=time.time(),
        score=0.9 if verdict == "fail" else 0.1 + i / 1e4, threshold=0.5, verdict=verdict, error=None, defects=[],
        model={"name": "standin", "onnx_sha256": sha}, heatmap=None, frame_shape=(64, 96), overlay=False)
    if i % 5 == 0:
        h["part_id"] = f"P-{i}"
    return h


def verdicts(data: list[tuple[str, dict]]) -> dict[tuple[str, int], dict]:
    return {(d, v["Inspection/Verdict Seq"]): v for d, v in data if "Inspection/Verdict Seq" in v}


def births(host: SparkplugHost, kind: str = "NBIRTH") -> list[dict]:
    return [m.payload for m in host.of(kind)]


def bd_seq(payload: dict) -> int:
    return next(x["value"] for x in payload["metrics"] if x["name"] == "bdSeq")


def test_births_data_seq_wrap_rebirth_model_swap_and_death_on_sigkill(tmp_path: Path) -> None:
    with SpbLine(tmp_path, ("c1", "c2")) as line:
        host, run, log, bridge = line.host, line.run, line.log, line.bridge
        assert host.wait_for(lambda m: len(host.of("DBIRTH")) >= 2, 30), log.read_text()
        assert run.pub.wait_for_subscribers(1, 10)
        sent = {}
        for i in range(N):
            h = header(i)
            run.pub.publish_verdict(h)
            sent[(h["camera"], h["frame_id"])] = h
            if i % 50 == 49:
                time.sleep(0.05)  # a line's pace, not a wait for anything
        assert host.wait_for(lambda m: len(verdicts(host.check()[1])) == N, 60), log.read_text()[-3000:]
        errors, data = host.check()
        assert errors == [], errors[:10]
        got = verdicts(data)
        seqs = [m.payload["seq"] for m in host.messages if m.kind not in ("NDEATH", "STATE", "NCMD", "DCMD")]
        assert sum(1 for a, b in itertools.pairwise(seqs) if (a, b) == (255, 0)) >= 2, "the seq wrapped twice"
        # every verdict, its fields as metrics, in the order of the stream per camera
        for (camera, vseq), v in got.items():
            h = sent[(camera, v["Inspection/Frame Id"])]
            assert vseq == h["frame_id"]  # the bridge's per-camera count: here one per frame
            assert v["Inspection/Result"] == h["verdict"]
            assert abs(v["Inspection/Score"] - h["score"]) < 1e-12 and v["Inspection/Threshold"] == 0.5
            assert v["Inspection/Model Sha256"] == "ab" * 32 and v["Inspection/Reason"] == ""
            assert v["Inspection/Part Id"] == h.get("part_id")  # null when the verdict has none
            assert v["Inspection/Latency Ms"] == h["latency_ms"]
        first_birth = births(host)[0]
        assert host.of("NBIRTH")[0].qos == 0 and not host.of("NBIRTH")[0].retain

        # NCMD Node Control/Rebirth: fresh births, seq 0, the same bdSeq (same MQTT session)
        n_births = len(births(host))
        host.send(f"spBv1.0/{GROUP}/NCMD/{NODE}", encode_command([("Node Control/Rebirth", None, BOOLEAN, True)]))
        assert host.wait_for(lambda m: len(births(host)) > n_births and len(host.of("DBIRTH")) >= 4, 20)
        assert births(host)[-1]["seq"] == 0 and bd_seq(births(host)[-1]) == bd_seq(first_birth)

        # a model swapped in `run`: births again, naming the new model
        new = "cd" * 32
        n_births = len(births(host))
        run.pub.publish_status({"schema": messages.STATUS_SCHEMA, "event": "model_swapped", "ok": True,
                                "old_sha256": "ab" * 32, "new_sha256": new, "at": time.time(),
                                "model": {"name": "standin-2", "onnx_sha256": new}})
        assert host.wait_for(lambda m: len(births(host)) > n_births, 20), log.read_text()[-2000:]
        # the event alone (the heartbeats still name the old model) brings births naming the new one
        assert host.wait_for(lambda m: any(x["name"] == "Model/Sha256" and x["value"] == new
                                           for p in births(host, "DBIRTH") for x in p["metrics"]), 10)
        run.sha = new  # then `run`'s heartbeats name it too
        run.pub.publish_verdict(header(N, sha=new))
        assert host.wait_for(lambda m: verdicts(host.check()[1]).get(("c1", N // 2)), 20)
        assert verdicts(host.check()[1])[("c1", N // 2)]["Inspection/Model Sha256"] == new

        bridge.kill()  # SIGKILL: the broker delivers the will, an NDEATH with the session's bdSeq
        bridge.wait(10)
        assert host.wait_for(lambda m: len(host.of("NDEATH")) >= 1, 30)
        death = host.of("NDEATH")[0]
        assert bd_seq(death.payload) == bd_seq(births(host)[-1]) and death.payload["seq"] is None
        assert death.qos == 1 and not death.retain
        errors, _ = host.check()
        assert errors == [], errors[:10]

        line.start_bridge()  # the next session: bdSeq + 1
        assert host.wait_for(lambda m: bd_seq(births(host)[-1]) == (bd_seq(first_birth) + 1) % 256, 30)


def test_a_queue_file_serves_one_mode_only(tmp_path: Path) -> None:
    """Plain items cannot be sent as Sparkplug metrics, nor the other way: refused while any is queued."""
    config = MqttBridgeConfig(broker=BrokerConfig(), source=SourceConfig((f"tcp://127.0.0.1:{free_port()}",)),
                              box="b1", queue_file=tmp_path / "q.sqlite")
    plain = MqttBridge(config)
    plain.queue.put_many([Item("pass", "t", b"{}")])
    plain.source.close()
    plain.queue.close()
    with pytest.raises(ConfigError, match="plain MQTT bridge"):
        SparkplugBridge(config)
    spb = MqttBridge(config)  # the plain bridge may go on with it
    spb.queue.delete([r.id for r in spb.queue.peek(0, 10)])
    spb.source.close()
    spb.queue.close()
    spb = SparkplugBridge(config)  # empty: the Sparkplug bridge takes it over
    spb.queue.put_many([Item("pass", "c1", b"{}")])
    spb.source.close()
    spb.queue.close()
    with pytest.raises(ConfigError, match="Sparkplug bridge"):
        MqttBridge(config)
