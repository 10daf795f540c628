"""OPC 40100 in the OPC UA bridge: the official MachineVision NodeSet's types, fed from a real `run`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from edge_somad.runtime.bridges.opcua import NAMESPACE
from edge_somad.runtime.bridges.opcua_vision import MV_URI, vision_state
from tests.helpers.bridges import connect_opcua, run_against, start_bridge
from tests.helpers.runtime import free_port
from tests.test_bridge_opcua_alarms import run_clip
from tests.test_runtime_health import model_with_reference, parts


class States:
    def __init__(self) -> None:
        self.seen: list = []
        self.events: list = []

    def datachange_notification(self, node, val, data) -> None:
        self.seen.append(val.Text if val is not None else None)

    def event_notification(self, event) -> None:
        self.events.append(event)


def test_vision_system_state_machine_and_results_in_the_spec_types(tmp_path: Path) -> None:
    from asyncua import ua

    model = model_with_reference(tmp_path)
    zmq_ep, opc_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    url = f"opc.tcp://127.0.0.1:{opc_port}/edge-somad/"
    bridge = start_bridge(["opcua", "--connect", zmq_ep, "--endpoint", url, "--box", "box1", "--camera", "c1",
                           "--stale-after", "30", "--log-level", "warning"], tmp_path / "bridge.log")
    clip = parts(12, seed=41) + [np.zeros_like(parts(1, seed=0)[0])] * 3  # 12 parts, then a black camera

    async def scenario() -> dict:
        client = await connect_opcua(url)
        out: dict = {}
        try:
            await client.load_data_type_definitions()
            mv, idx = await client.get_namespace_index(MV_URI), await client.get_namespace_index(NAMESPACE)
            system = client.get_node(f"ns={idx};s=box1.c1.VisionSystem")
            out["system_type"] = await system.read_type_definition()
            machine = await system.get_child(f"{mv}:VisionStateMachine")
            state = await machine.get_child("0:CurrentState")
            out["before"] = (await state.read_value()).Text
            handler = States()
            sub = await client.create_subscription(10, handler)
            await sub.subscribe_data_change(state, queuesize=50)
            await sub.subscribe_events(system, ua.NodeId(1024, mv), queuesize=50)  # ResultReadyEventType
            last = await system.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{idx}:LastResult"])
            out["result_type"] = await last.read_type_definition()
            await asyncio.to_thread(run_clip, model, zmq_ep, clip, tmp_path / "clip.avi")
            deadline = time.monotonic() + 20
            while "Halted" not in handler.seen and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            out["states"] = handler.seen
            deadline = time.monotonic() + 10
            while len(handler.events) < len(clip) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            out["events"] = [(e.ResultId.Id, e.ResultState, e.IsPartial) for e in handler.events]
            out["state_id"] = await (await machine.get_child(["0:CurrentState", "0:Id"])).read_value()
            out["last"] = await last.read_value()
            out["result_state"] = await (await last.get_child(f"{mv}:ResultState")).read_value()
            out["system_state"] = await (await system.get_child(f"{mv}:SystemState")).read_value()
            out["mv"], out["idx"] = mv, idx
            auto = await machine.get_child(f"{mv}:AutomaticModeStateMachine")
            try:  # the type's methods are in the address space, not implemented: a clear refusal
                await auto.call_method(f"{mv}:StartContinuous")
            except ua.UaStatusCodeError as exc:
                out["method"] = type(exc).__name__
        finally:
            await client.disconnect()
        return out

    out = run_against(bridge, tmp_path / "bridge.log", scenario())
    mv = out["mv"]
    assert out["system_type"] == ua.NodeId(1003, mv)  # VisionSystemType of the official NodeSet
    assert out["result_type"] == ua.NodeId(2002, mv)  # ResultType
    assert out["before"] == "Preoperational"
    seen = [s for i, s in enumerate(out["states"]) if i == 0 or s != out["states"][i - 1]]
    # The black frames are error verdicts but the camera still delivers: Operational until run stops.
    assert seen[-2:] == ["Operational", "Halted"] and seen[0] in ("Preoperational", "Operational"), seen
    assert out["state_id"] == ua.NodeId(5029, mv)  # the Halted state of VisionStateMachineType
    last = out["last"]
    assert last.ResultId.Id == "c1/14" and last.IsPartial is False
    assert last.ResultState == 4 and out["result_state"] == 4  # the last frame was black: Failed, not Completed
    own = last.ResultContent[0].Value if isinstance(last.ResultContent[0], ua.Variant) else last.ResultContent[0]
    assert own.Verdict == "error" and own.FrameId == 14 and "black frame" in own.ErrorText
    assert len(last.InternalConfigurationId.Id) == 64  # the model's sha256
    assert last.ProcessingTimes.EndTime >= last.ProcessingTimes.StartTime
    assert out.get("method") == "BadNothingToDo"
    # one ResultReadyEventType per result, from the VisionSystem, with the result's id and state
    assert out["events"] == [(f"c1/{i}", 1 if i < 12 else 4, False) for i in range(15)], out["events"]
    assert out["system_state"].State == 6 and "Halted" in out["system_state"].StateDescription


def test_vision_state_mapping() -> None:
    assert vision_state(None, "waiting")[:2] == ("Preoperational", None)
    assert vision_state("running", "live")[:2] == ("Operational", "ContinuousExecution")
    assert vision_state("starting", "live")[:2] == ("Operational", "Initialized")
    assert vision_state("reconnecting", "live")[0] == "Error" and vision_state("running", "offline")[0] == "Error"
    assert vision_state("running", "ended")[0] == "Halted"
    assert vision_state("running", "live", waiting=0)[:2] == ("Operational", "Ready")  # run --trigger, idle
    assert vision_state("running", "live", waiting=2)[:2] == ("Operational", "SingleExecution")


def test_triggered_inspection_in_the_spec_types(tmp_path: Path) -> None:
    """`run --trigger`: AutomaticModeStateMachine Ready between parts, the part id in the spec's result."""
    from asyncua import ua

    from edge_somad.runtime.trigger.client import request_trigger
    from tests.helpers.trigger import Runtime

    runtime = Runtime(tmp_path / "rt")
    url = f"opc.tcp://127.0.0.1:{free_port()}/edge-somad/"
    bridge = start_bridge(["opcua", "--connect", runtime.publish, "--endpoint", url, "--box", "box1",
                           "--camera", "cam0", "--log-level", "warning"], tmp_path / "bridge.log")

    async def scenario() -> dict:
        client = await connect_opcua(url)
        out: dict = {}
        try:
            await client.load_data_type_definitions()
            mv, idx = await client.get_namespace_index(MV_URI), await client.get_namespace_index(NAMESPACE)
            system = client.get_node(f"ns={idx};s=box1.cam0.VisionSystem")
            auto = await system.get_child([f"{mv}:VisionStateMachine", f"{mv}:AutomaticModeStateMachine",
                                           "0:CurrentState"])
            last = await system.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{idx}:LastResult"])
            answer = await asyncio.to_thread(request_trigger, runtime.control, "P-40100", 2000, 5.0)
            out["answer"] = answer
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                value = await last.read_value()
                out["part"] = value.PartId.Id if getattr(value, "PartId", None) else None
                out["auto"] = (await auto.read_value()).Text
                if out["part"] == "P-40100" and out["auto"] == "Ready":
                    break
                await asyncio.sleep(0.1)
            out["state"] = value.ResultState
            out["own"] = value.ResultContent[0].Value if isinstance(value.ResultContent[0], ua.Variant) \
                else value.ResultContent[0]
        finally:
            await client.disconnect()
        return out

    try:
        out = run_against(bridge, tmp_path / "bridge.log", scenario())
    finally:
        runtime.stop()
    assert out["answer"]["verdict"] == "pass" and out["answer"]["part_id"] == "P-40100"
    assert (out["part"], out["auto"], out["state"]) == ("P-40100", "Ready", 1), out
    assert out["own"].PartId == "P-40100" and out["own"].Verdict == "pass"
