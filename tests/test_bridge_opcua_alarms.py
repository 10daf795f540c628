"""Line health as OPC UA alarms: a real `run` pipeline, the bridge as a process, an asyncua client
subscribed to events on the Server object (as a SCADA/HMI subscribes to alarms)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.bridges.opcua import NAMESPACE
from edge_somad.runtime.health.alarms import AlarmBook, active_checks
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import parse_cameras
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.bridges import connect_opcua, run_against, start_bridge
from tests.helpers.runtime import H, W, free_port, write_video
from tests.test_runtime_health import FAST, model_with_reference, parts


def run_clip(model: Path, endpoint: str, frames: list[np.ndarray], video: Path) -> dict:
    manifest = load_manifest(model)
    with Publisher(endpoint) as pub:
        assert pub.wait_for_subscribers(1, 10.0), "the bridge did not subscribe"
        cameras = parse_cameras([f"c1={write_video(video, frames)}"])
        return Pipeline(OrtScorer(model / manifest.onnx, H, W), manifest, cameras, pub,
                        PipelineConfig(health=FAST)).run()


class Events:
    def __init__(self) -> None:
        self.got: list = []
        self.state: list = []

    def event_notification(self, event) -> None:
        self.got.append(event)

    def datachange_notification(self, node, val, data) -> None:
        self.state.append(val)


async def until(pred, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def fields(ev) -> dict:
    d = ev.get_event_props_as_fields_dict()
    return {k: v.Value for k, v in d.items()}


def test_black_and_frozen_camera_raise_alarms_that_clear_and_acknowledge(tmp_path: Path) -> None:
    from asyncua import ua

    model = model_with_reference(tmp_path)
    zmq_ep, opc_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    url = f"opc.tcp://127.0.0.1:{opc_port}/edge-somad/"
    bridge = start_bridge(["opcua", "--connect", zmq_ep, "--endpoint", url, "--box", "box1", "--camera", "c1",
                           "--log-level", "warning"], tmp_path / "bridge.log")
    good = parts(24, seed=21)
    black = np.zeros_like(good[0])
    frozen = parts(1, seed=22) * 8
    faulty = parts(12, seed=23) + [black] * 6 + parts(14, seed=24) + frozen + parts(14, seed=25)

    async def scenario() -> None:
        client = await connect_opcua(url)
        try:
            idx = await client.get_namespace_index(NAMESPACE)
            handler = Events()
            sub = await client.create_subscription(20, handler)
            await sub.subscribe_events(client.nodes.server, ua.ObjectIds.OffNormalAlarmType)
            await sub.subscribe_data_change(client.get_node(f"ns={idx};s=box1.SystemState"))
            passes = client.get_node(f"ns={idx};s=box1.c1.Counters.PassCount")

            # 1. good parts: no alarm at all, through the run's final status
            final = await asyncio.to_thread(run_clip, model, zmq_ep, good, tmp_path / "good.avi")
            assert final["verdicts"] == {"pass": 24, "fail": 0, "error": 0}
            assert await until(lambda: "ended" in handler.state), handler.state
            assert await passes.read_value() == 24
            assert handler.got == [], [fields(e) for e in handler.got]

            # 2. black frames, recovery, frozen frames, recovery
            handler.state.clear()
            final = await asyncio.to_thread(run_clip, model, zmq_ep, faulty, tmp_path / "faulty.avi")
            assert final["verdicts"]["error"] >= 6 + 6
            assert await until(lambda: "ended" in handler.state), handler.state
            evs = [fields(e) for e in handler.got]
            by_check = {c: [e for e in evs if e["ConditionName"] == c] for c in ("black", "frozen")}
            assert {e["ConditionName"] for e in evs} == {"black", "frozen"}, evs
            for check, seq in by_check.items():
                # fired (active, unacknowledged, retained, high severity), then cleared: still retained
                assert [(e["ActiveState/Id"], e["AckedState/Id"], e["Retain"]) for e in seq] == [
                    (True, False, True), (False, False, True)], (check, seq)
                assert seq[0]["Severity"] == 800 and seq[0]["SourceName"] == "c1"
                assert check in seq[0]["Message"].Text and "back to normal" in seq[1]["Message"].Text
                assert seq[0]["NodeId"] == ua.NodeId(f"box1.c1.Alarms.{check}", idx)  # ConditionId
            assert "black frame" in by_check["black"][0]["Message"].Text

            # 3. acknowledge the black alarm with the EventId of its last event, as a client does
            cond = client.get_node(f"ns={idx};s=box1.c1.Alarms.black")
            ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
            stale = by_check["black"][0]["EventId"]
            with pytest.raises(ua.UaStatusCodeError, match="BadEventIdUnknown"):
                await cond.call_method(ack, ua.Variant(stale, ua.VariantType.ByteString), ua.LocalizedText("old"))
            n = len(handler.got)
            await cond.call_method(ack, ua.Variant(by_check["black"][-1]["EventId"], ua.VariantType.ByteString),
                                   ua.LocalizedText("lamp replaced"))
            assert await until(lambda: len(handler.got) > n)
            acked = fields(handler.got[-1])
            assert (acked["ConditionName"], acked["AckedState/Id"], acked["ActiveState/Id"], acked["Retain"]) == (
                "black", True, False, False)
            assert acked["Comment"].Text == "lamp replaced"
            assert await client.get_node(f"ns={idx};s=box1.c1.Alarms.black.AckedState.Id").read_value() is True
            with pytest.raises(ua.UaStatusCodeError, match="BadConditionBranchAlreadyAcked"):
                await cond.call_method(ack, ua.Variant(acked["EventId"], ua.VariantType.ByteString),
                                       ua.LocalizedText("again"))

            # 4. ConditionRefresh (what a client calls on connect): the retained condition again, the
            #    acknowledged and cleared one not
            n = len(handler.got)
            await client.nodes.server.call_method(ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                                                  ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
            assert await until(lambda: len(handler.got) > n)
            refreshed = [fields(e) for e in handler.got[n:]]
            assert [(e["ConditionName"], e["Retain"]) for e in refreshed] == [("frozen", True)], refreshed
        finally:
            await client.disconnect()

    run_against(bridge, tmp_path / "bridge.log", scenario())


def test_alarm_book_from_health_blocks() -> None:
    black = {"state": "alarm", "reasons": ["camera fault: black frame (mean luma 0.0 < 16, std 0.0)",
                                           "input drift warn: brightness 5.1 std below the fit images"]}
    assert active_checks(black) == {"black": ("alarm", black["reasons"][0]),
                                    "input_drift": ("warn", black["reasons"][1])}
    assert active_checks({"state": "ok", "reasons": []}) == {}
    assert active_checks({"reasons": "not a list"}) == {} and active_checks(None) == {}
    book = AlarmBook()
    fired = book.update("c1", black, now=1.0)
    assert sorted(a.check for a in fired) == ["black", "input_drift"] and all(a.retain and not a.acked for a in fired)
    assert book.update("c1", black, now=2.0) == []  # nothing new: no event
    book.acknowledge("c1/input_drift", book.alarms["c1/input_drift"].event_id)
    worse = {"state": "alarm", "reasons": ["camera fault: black frame (x)",
                                           "input drift alarm: brightness 9 std below the fit images"]}
    escalated = book.update("c1", worse, now=3.0)
    assert [(a.check, a.level, a.acked) for a in escalated] == [("input_drift", "alarm", False)]
    cleared = book.update("c1", {"state": "ok", "reasons": []}, now=4.0)
    assert sorted(a.check for a in cleared) == ["black", "input_drift"] and all(a.retain for a in cleared)
    book.acknowledge("c1/black", None, "seen")
    assert [a.check for a in book.retained()] == ["input_drift"]
