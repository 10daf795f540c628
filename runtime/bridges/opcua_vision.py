"""OPC 40100 (OPC UA for Machine Vision) in the OPC UA bridge: the companion spec's own types.

The bridge imports the official MachineVision NodeSet (runtime/bridges/nodesets/, OPC Foundation,
MIT licence; 0.8 s at start on this machine) and gives every camera a `VisionSystem` object of
`VisionSystemType` (`Objects/<box>/Cameras/<camera>/VisionSystem`), so a PLC or a Machine Vision
client finds what it expects under the spec's browse names and types:

- `VisionStateMachine` (VisionStateMachineType): CurrentState and CurrentState.Id follow the
  camera: Preoperational before `run` spoke, Operational while it runs (with
  `AutomaticModeStateMachine` in ContinuousExecution while the camera delivers, Initialized while it
  starts; under `run --trigger` Ready while no trigger waits, SingleExecution while one does),
  Error while the camera is unavailable, reconnecting or stalled, or `run` went silent, Halted once
  `run` stopped (final status). The Id is the NodeId of the state in the type.
- `SystemState` (SystemStateDescriptionDataType, SEMI E10): PRD running, SBY starting, UDT error,
  NST stopped; StateDescription says why.
- `ResultManagement/Results/LastResult` (a ResultType variable, ResultDataType value): every verdict as
  the spec's result: ResultId `<camera>/<frame_id>`, IsPartial false, IsSimulated false, ResultState
  1 Completed (pass and fail: the part was judged) or 4 Failed (error verdict: no judgement, a PLC
  rejects the part), CreationTime = capture, ProcessingTimes start = capture and end = publish
  with ProcessingDuration = latency, InternalConfigurationId = the model's ONNX sha256, PartId the
  part id when a triggered inspection named one, and ResultContent = [the bridge's own
  ResultDataType value] (pass/fail evaluation, score, threshold; opcua_model.py), so the verdict
  itself travels in the same atomic value. The variable's components (ResultId, ResultState, ...)
  follow for clients that read fields.
- a `ResultReadyEventType` event per result, from the VisionSystem and from the Server object.

Methods of the types (StartSingleJob, GetResultById, Halt, ...) exist in the address space because
the type defines them, but are not implemented: calls answer BadNothingToDo (docs/bridges.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

MV_URI = "http://opcfoundation.org/UA/MachineVision"
NODESET = "Opc.Ua.MachineVision.NodeSet2.xml"
# NodeIds in the MachineVision namespace (its NodeSet's numbering, stable across servers)
VISION_SYSTEM_TYPE, RESULT_TYPE, RESULT_DATA_TYPE, RESULT_READY_EVENT = 1003, 2002, 3006, 1024
STATES = {"Preoperational": 5028, "Halted": 5029, "Error": 5030, "Operational": 5031}
AUTO_STATES = {"Initialized": 5056, "Ready": 5057, "SingleExecution": 5058, "ContinuousExecution": 5059}
BINARY_ID_BASE, ID_SUBTYPES = 3019, (3002, 3008, 3013)  # RecipeIdExternal, ConfigurationId, RecipeIdInternal
CLASSES = {"Result": RESULT_DATA_TYPE, "ResultId": 3021, "PartId": 3004, "RecipeIdInternal": 3013,
           "ConfigurationId": 3008, "JobId": 3016, "ProcessingTimes": 3005, "SystemStateDescription": 3024}
COMPLETED, FAILED = 1, 4  # ResultStateDataType (OPC 40100-1, 12.19)
SYSTEM_STATE = {"Operational": 1, "Halted": 6, "Error": 5, "Preoperational": 2}  # PRD, NST, UDT, SBY
_TROUBLED = ("unavailable", "reconnecting", "stalled")


def nodeset_path() -> Any:
    return resources.files("edge_somad.runtime.bridges").joinpath("nodesets", NODESET)


async def import_machine_vision(server: Any) -> tuple[int, float]:
    """Import the NodeSet into `server`; returns (namespace index, seconds it took).

    Call it before creating the bridge's own ResultDataType: the importer finds the structure of a
    value in the NodeSet by its name (ua.ResultDataType), which must then still be the spec's."""
    t0 = time.perf_counter()
    with resources.as_file(nodeset_path()) as path:
        await server.import_xml(str(path))
    idx = await server.get_namespace_index(MV_URI)
    await _complete_id_types(server, idx)
    with quiet("asyncua.ua.uatypes"):  # the importer bound ua.ConfigurationIdDataType etc. to their base
        await server.load_data_type_definitions()
    return idx, time.perf_counter() - t0


async def _complete_id_types(server: Any, mv: int) -> None:
    """Give the id structures (RecipeIdExternal/Internal, ConfigurationId) their fields.

    In this NodeSet they are subtypes of BinaryIdBaseDataType with an EMPTY DataTypeDefinition,
    whereas OPC 10000-3 wants a subtype's definition to list every field, inherited ones included.
    A generic client (asyncua's, for one) then cannot decode a ResultDataType that holds them.
    Each gets the base's fields under its own encoding, as the NodeSet's own encodings expect."""
    from asyncua import ua

    base = await server.get_node(ua.NodeId(BINARY_ID_BASE, mv)).read_data_type_definition()
    for type_id in ID_SUBTYPES:
        node = server.get_node(ua.NodeId(type_id, mv))
        encoding = None
        for ref in await node.get_references(ua.ObjectIds.HasEncoding):
            if (await server.get_node(ref.NodeId).read_browse_name()).Name == "Default Binary":
                encoding = ref.NodeId
        definition = ua.StructureDefinition(DefaultEncodingId=encoding, BaseDataType=ua.NodeId(BINARY_ID_BASE, mv),
                                            StructureType=base.StructureType, Fields=list(base.Fields))
        await node.write_attribute(ua.AttributeIds.DataTypeDefinition, ua.DataValue(ua.Variant(definition)))


@contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Silence one asyncua logger below ERROR for an expected warning:
    - `asyncua.ua.uatypes`: the bridge's ResultDataType has the same name as the spec's; asyncua keeps
      both by NodeId and warns that ua.ResultDataType names only the first;
    - `asyncua.common.copy_node_util`: instantiating ResultType, a VariableType, finds no AccessLevel
      and Historizing attributes to copy (a VariableType has none) and warns about each."""
    log_ = logging.getLogger(logger)
    level = log_.level
    log_.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log_.setLevel(level)


def vision_state(camera_status: str | None, link: str, waiting: int | None = None) -> tuple[str, str | None, str]:
    """(VisionStateMachine state, AutomaticModeStateMachine state or None, why) for one camera.
    `link`: `waiting` (nothing from `run` yet), `live`, `offline` (silent past --stale-after), `ended`;
    `waiting`: triggers waiting for a frame under `run --trigger` (None: free-running)."""
    if link == "waiting":
        return "Preoperational", None, "waiting for run"
    if link == "ended":
        return "Halted", None, f"run stopped (camera {camera_status or 'unknown'})"
    if link == "offline":
        return "Error", None, "run is silent (no heartbeat)"
    if camera_status in _TROUBLED:
        return "Error", None, f"camera {camera_status}"
    if camera_status in ("ended", "stopped"):
        return "Halted", None, f"camera {camera_status}"
    if camera_status == "running" and waiting is not None:  # triggered inspection: a job per part
        return ("Operational", "SingleExecution", f"{waiting} trigger(s) waiting") if waiting > 0 else (
            "Operational", "Ready", "waiting for a trigger")
    if camera_status == "running":
        return "Operational", "ContinuousExecution", "inspecting"
    return "Operational", "Initialized", f"camera {camera_status or 'starting'}"


class VisionSystems:
    """One VisionSystemType instance per camera, fed by the bridge."""

    def __init__(self, server: Any, idx: int, mv: int, node_id: Any) -> None:
        from asyncua import ua

        self.server, self.idx, self.mv, self._node_id = server, idx, mv, node_id
        # The spec's structures by NodeId: some names (ResultDataType, the id types) are bound to other classes.
        self.cls = {name: ua.extension_objects_by_datatype[ua.NodeId(i, mv)] for name, i in CLASSES.items()}
        self.nodes: dict[tuple[str, str], Any] = {}  # (camera, path) -> node
        self.current: dict[str, tuple[str, str | None, str]] = {}
        self.events: dict[str, Any] = {}  # camera -> its ResultReadyEventType event object

    async def camera(self, camera: str, parent: Any) -> None:
        from asyncua import ua
        from asyncua.common.instantiate_util import instantiate

        mv = self.mv
        system = await parent.add_object(self._node_id(camera, "VisionSystem"),
                                         ua.QualifiedName("VisionSystem", self.idx),
                                         objecttype=ua.NodeId(VISION_SYSTEM_TYPE, mv))
        machine = await system.get_child(f"{mv}:VisionStateMachine")
        auto = await machine.get_child(f"{mv}:AutomaticModeStateMachine")
        results = await system.get_child([f"{mv}:ResultManagement", f"{mv}:Results"])
        with quiet("asyncua.common.copy_node_util"):
            last = (await instantiate(results, self.server.get_node(ua.NodeId(RESULT_TYPE, mv)),
                                      nodeid=self._node_id(camera, "VisionSystem", "ResultManagement", "Results",
                                                           "LastResult"),
                                      bname=ua.QualifiedName("LastResult", self.idx)))[0]
        self.nodes[(camera, "state")] = await machine.get_child("0:CurrentState")
        self.nodes[(camera, "state.id")] = await machine.get_child(["0:CurrentState", "0:Id"])
        self.nodes[(camera, "auto")] = await auto.get_child("0:CurrentState")
        self.nodes[(camera, "auto.id")] = await auto.get_child(["0:CurrentState", "0:Id"])
        self.nodes[(camera, "systemstate")] = await system.get_child(f"{mv}:SystemState")
        self.nodes[(camera, "result")] = last
        self.nodes[(camera, "system")] = system
        gen = await self.server.get_event_generator(ua.NodeId(RESULT_READY_EVENT, mv), system)
        self.events[camera] = gen.event
        for name in ("ResultId", "ResultState", "IsPartial", "IsSimulated", "CreationTime", "ProcessingTimes",
                     "InternalConfigurationId", "PartId", "ResultContent"):
            self.nodes[(camera, f"result.{name}")] = await last.get_child(f"{mv}:{name}")
        await self.state(camera, None, "waiting")

    async def _write(self, node: Any, value: Any, vtype: Any = None) -> None:
        from asyncua import ua

        variant = ua.Variant(value) if vtype is None else ua.Variant(value, vtype)
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(variant))

    async def state(self, camera: str, camera_status: str | None, link: str, waiting: int | None = None) -> None:
        """Write the state machines and SystemState when the camera's state changed."""
        from asyncua import ua

        now = vision_state(camera_status, link, waiting)
        if (camera, "state") not in self.nodes or self.current.get(camera) == now:
            return
        self.current[camera] = now
        state, auto, why = now
        n = self.nodes
        await self._write(n[(camera, "state")], ua.LocalizedText(state), ua.VariantType.LocalizedText)
        await self._write(n[(camera, "state.id")], ua.NodeId(STATES[state], self.mv), ua.VariantType.NodeId)
        auto_text = ua.LocalizedText(auto) if auto else ua.LocalizedText()
        auto_id = ua.NodeId(AUTO_STATES[auto], self.mv) if auto else ua.NodeId()
        await self._write(n[(camera, "auto")], auto_text, ua.VariantType.LocalizedText)
        await self._write(n[(camera, "auto.id")], auto_id, ua.VariantType.NodeId)
        desc = self.cls["SystemStateDescription"](State=ua.SystemStateDataType(SYSTEM_STATE[state]),
                                                 StateDescription=f"{state}: {why}"[:200])
        await self._write(n[(camera, "systemstate")], desc)

    def result_value(self, h: dict[str, Any], own: Any) -> Any:
        """The spec's ResultDataType for one verdict header; `own` is the bridge's ResultDataType value."""
        from asyncua import ua

        model = h.get("model") if isinstance(h.get("model"), dict) else {}
        sha = model.get("onnx_sha256")
        part = h.get("part_id")
        latency = h.get("latency_ms")
        c = self.cls
        return c["Result"](
            ResultId=c["ResultId"](Id=f"{h['camera']}/{h['frame_id']}"),
            IsPartial=False, IsSimulated=False,
            ResultState=COMPLETED if h["verdict"] in ("pass", "fail") else FAILED,
            PartId=c["PartId"](Id=part[:200]) if isinstance(part, str) and part else None,
            InternalRecipeId=c["RecipeIdInternal"](Id=str(model.get("name") or "")[:200]),
            InternalConfigurationId=c["ConfigurationId"](Id=str(sha or "")[:200]),
            JobId=c["JobId"](Id=str(h.get("run") or "")[:200]),
            CreationTime=_time(h.get("captured_at")),
            ProcessingTimes=c["ProcessingTimes"](
                StartTime=_time(h.get("captured_at")), EndTime=_time(h.get("published_at")),
                ProcessingDuration=float(latency) if _finite(latency) else None),
            ResultContent=[ua.Variant(own)])

    async def result(self, camera: str, h: dict[str, Any], own: Any) -> None:
        """LastResult (one atomic value), then its components."""
        from asyncua import ua

        if (camera, "result") not in self.nodes:
            return
        value = self.result_value(h, own)
        n = self.nodes
        await self._write(n[(camera, "result")], value)
        for name, vtype in (("ResultState", ua.VariantType.Int32), ("IsPartial", ua.VariantType.Boolean),
                            ("IsSimulated", ua.VariantType.Boolean), ("CreationTime", ua.VariantType.DateTime),
                            ("ProcessingTimes", None), ("InternalConfigurationId", None), ("PartId", None),
                            ("ResultId", None)):
            field = getattr(value, name)
            if field is not None:
                await self._write(n[(camera, f"result.{name}")], field, vtype)
        await self._result_ready(camera, h, value)

    async def _result_ready(self, camera: str, h: dict[str, Any], value: Any) -> None:
        """ResultReadyEventType, as the spec asks of a new result: from the camera's VisionSystem and
        from the Server object (where most clients subscribe to events)."""
        import uuid

        from asyncua import ua

        ev, vt = self.events[camera], ua.VariantType
        for name, vtype in (("ResultId", vt.ExtensionObject), ("IsPartial", vt.Boolean), ("IsSimulated", vt.Boolean),
                            ("ResultState", vt.Int32), ("PartId", vt.ExtensionObject),
                            ("InternalRecipeId", vt.ExtensionObject), ("InternalConfigurationId", vt.ExtensionObject),
                            ("JobId", vt.ExtensionObject), ("CreationTime", vt.DateTime),
                            ("ProcessingTimes", vt.ExtensionObject)):
            field = getattr(value, name)
            if field is None:  # optional and absent: not in the event
                ev.data_types.pop(name, None)
                ev.__dict__.pop(name, None)
            else:
                ev.add_property(name, field, vtype)
        for name in ("ExternalConfigurationId", "ExternalRecipeId", "MeasId", "ProductId", "ResultContent"):
            ev.data_types.pop(name, None)
            ev.__dict__.pop(name, None)
        ev.Message = ua.LocalizedText(f"{camera}: result {value.ResultId.Id} {h['verdict']}")
        ev.Severity = 100
        ev.Time = ev.ReceiveTime = _time(h.get("published_at"))
        ev.EventId = ua.Variant(uuid.uuid4().bytes, ua.VariantType.ByteString)
        service = self.server.iserver.isession.subscription_service
        for emitter in (self.nodes[(camera, "system")].nodeid, ua.NodeId(ua.ObjectIds.Server)):
            ev.emitting_node = emitter
            await service.trigger_event(ev)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _time(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), timezone.utc) if _finite(value) else datetime(1970, 1, 1,
                                                                                             tzinfo=timezone.utc)
