"""The OPC UA bridge's address space: stable string NodeIds, its own namespace, one atomic result.

Every node (objects and variables) has a string NodeId in the bridge's namespace built from the
box and camera ids, `ns=<NAMESPACE>;s=<box>.<camera>.<...>`, so it does not depend on the order in
which cameras appear; browse names are in the same namespace.

A result is published twice, atomically each time: `Result`, one value of the structure type
`ResultDataType` (fields after OPC 40100's result: every field of one verdict in one DataValue), and
`ResultJson`, the same fields as one JSON string for clients that cannot decode structures. The
sibling variables of `LastResult` are kept for HMIs; a PLC must not assemble a result from them,
since a later result may overwrite some of them between two reads.

Values carry status codes: BadWaitingForInitialData before the first result, Good while `run`
speaks, UncertainLastUsableValue once its heartbeat is older than the stale limit (the value is
the last one received; `run` was killed or the network is down).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

NAMESPACE = "urn:edge-somad:bridge"
RESULT_TYPE = "ResultDataType"
# OPC 40001-101 ResultEvaluationEnum: 0 Undefined, 1 OK, 2 NotOK, 3 NotDecidable. An error verdict
# is NotDecidable, and a PLC must treat it like NotOK (docs/bridges.md).
EVALUATION = {"pass": 1, "fail": 2, "error": 3}
NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a DateTime before the first result
RESULT_FIELDS = (  # browse name, variant type name, default; ResultId last (see OpcuaModel.result)
    ("Camera", "String", ""), ("FrameId", "Int64", 0), ("CreationTime", "DateTime", NEVER),
    ("PublishedTime", "DateTime", NEVER), ("ResultEvaluation", "Int32", 0), ("Verdict", "String", ""),
    ("Score", "Double", math.nan), ("Threshold", "Double", math.nan), ("ScoreNormalised", "Double", math.nan),
    ("DefectCount", "Int32", 0), ("ErrorText", "String", ""), ("LatencyMs", "Double", math.nan),
    ("PartId", "String", ""), ("ResultId", "String", ""))
# Per-camera values that describe the line's present state: Uncertain once `run` is silent.
LIVE_CAMERA_VARS = ("Fps", "CaptureDrops")
GOOD, UNCERTAIN, WAITING = "Good", "UncertainLastUsableValue", "BadWaitingForInitialData"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _time(value: Any) -> datetime:
    t = _number(value)
    return datetime.fromtimestamp(t, timezone.utc) if math.isfinite(t) else NEVER


def result_values(h: dict[str, Any]) -> dict[str, Any]:
    """The result's fields for one validated verdict header (the ZeroMQ header's values)."""
    defects = h.get("defects") if isinstance(h.get("defects"), list) else []
    return {"Camera": h["camera"], "FrameId": int(h["frame_id"]), "CreationTime": _time(h.get("captured_at")),
            "PublishedTime": _time(h.get("published_at")), "ResultEvaluation": EVALUATION[h["verdict"]],
            "Verdict": h["verdict"], "Score": _number(h.get("score")), "Threshold": _number(h.get("threshold")),
            "ScoreNormalised": _number(h.get("score_normalised")), "DefectCount": len(defects),
            "ErrorText": str(h.get("error") or "")[:1000], "LatencyMs": _number(h.get("latency_ms")),
            "PartId": str(h.get("part_id") or "")[:64],  # triggered inspection; "" for free-running frames
            "ResultId": f"{h['camera']}/{h['frame_id']}"}


def result_json(values: dict[str, Any]) -> str:
    """ResultJson: the same fields, times as Unix seconds, NaN as null (strict JSON)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, datetime):
            value = None if value == NEVER else value.timestamp()
        elif isinstance(value, float) and not math.isfinite(value):
            value = None
        out[name] = value
    return json.dumps(out, separators=(",", ":"), allow_nan=False)


class OpcuaModel:
    """Creates the nodes under Objects/<box> and writes values with status codes (asyncua Server)."""

    def __init__(self, server: Any, idx: int, box: str) -> None:
        self.server, self.idx, self.box = server, idx, box
        self.vars: dict[tuple[str, ...], tuple[Any, str]] = {}  # (camera | "", [group,] name) -> (node, vtype)
        self.values: dict[tuple[str, ...], tuple[Any, str]] = {}  # key -> (last value, status name)
        self.cameras: set[str] = set()
        self.camera_nodes: dict[str, Any] = {}  # camera -> its object node
        self.result_class: Any = None

    def _id(self, *parts: str) -> Any:
        from asyncua import ua

        return ua.NodeId(".".join((self.box, *(p for p in parts if p))), self.idx)

    def _name(self, name: str) -> Any:
        from asyncua import ua

        return ua.QualifiedName(name, self.idx)

    async def setup(self) -> None:
        from asyncua import ua
        from asyncua.common.structures104 import new_struct, new_struct_field

        fields = [new_struct_field(name, getattr(ua.VariantType, vtype)) for name, vtype, _ in RESULT_FIELDS]
        self.result_type, _ = await new_struct(self.server, ua.NodeId(RESULT_TYPE, self.idx),
                                               ua.QualifiedName(RESULT_TYPE, self.idx), fields)
        await self.server.load_data_type_definitions()
        # By NodeId, not ua.<name>: OPC 40100's ResultDataType (opcua_vision.py) has the same name.
        self.result_class = ua.extension_objects_by_datatype[self.result_type.nodeid]
        self.root = await self.server.nodes.objects.add_object(self._id(), self._name(self.box))
        for name, vtype, value in (("SystemState", "String", "unknown"), ("HeartbeatAge", "Double", math.nan),
                                   ("Model", "String", ""), ("InternalConfigurationId", "String", ""),
                                   ("Drops", "Int64", 0), ("Rejected", "Int64", 0)):
            await self._var(self.root, ("", name), vtype, value)
        self.folder = await self.root.add_folder(self._id("Cameras"), self._name("Cameras"))

    async def _var(self, parent: Any, key: tuple[str, ...], vtype: str, value: Any, status: str = GOOD) -> None:
        from asyncua import ua

        node = await parent.add_variable(self._id(*key), self._name(key[-1]), value,
                                         varianttype=getattr(ua.VariantType, vtype))
        self.vars[key] = (node, vtype)
        self.values[key] = (value, GOOD)
        if status != GOOD:
            await self.write(key, value, status)

    async def camera(self, camera: str) -> None:
        """The nodes of one camera (once): Objects/<box>/Cameras/<camera>/..."""
        if camera in self.cameras:
            return
        self.cameras.add(camera)
        obj = self.camera_nodes[camera] = await self.folder.add_object(self._id(camera), self._name(camera))
        for name, vtype, value in (("CameraStatus", "String", "unknown"), ("Fps", "Double", math.nan),
                                   ("CaptureDrops", "Int64", 0)):
            await self._var(obj, (camera, name), vtype, value)
        last = await obj.add_object(self._id(camera, "LastResult"), self._name("LastResult"))
        empty = {name: value for name, _, value in RESULT_FIELDS}
        node = await last.add_variable(self._id(camera, "LastResult", "Result"), self._name("Result"),
                                       self.result_class(**empty), datatype=self.result_type.nodeid)
        self.vars[(camera, "LastResult", "Result")] = (node, "ExtensionObject")
        self.values[(camera, "LastResult", "Result")] = (self.result_class(**empty), GOOD)
        await self.write((camera, "LastResult", "Result"), self.result_class(**empty), WAITING)
        await self._var(last, (camera, "LastResult", "ResultJson"), "String", "", WAITING)
        for name, vtype, value in RESULT_FIELDS:
            await self._var(last, (camera, "LastResult", name), vtype, value, WAITING)
        counters = await obj.add_object(self._id(camera, "Counters"), self._name("Counters"))
        for name in ("PassCount", "FailCount", "ErrorCount", "MissedCount"):
            await self._var(counters, (camera, "Counters", name), "Int64", 0)

    async def write(self, key: tuple[str, ...], value: Any, status: str = GOOD) -> None:
        from asyncua import ua

        node, vtype = self.vars[key]
        variant = ua.Variant(value) if vtype == "ExtensionObject" else ua.Variant(value, getattr(ua.VariantType,
                                                                                                 vtype))
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(
            variant, ua.StatusCode(getattr(ua.StatusCodes, status))))
        self.values[key] = (value, status)

    async def result(self, h: dict[str, Any]) -> None:
        """One verdict: Result and ResultJson (each one atomic value), then the siblings, ResultId last."""
        camera = h["camera"]
        values = result_values(h)
        await self.write((camera, "LastResult", "Result"), self.result_class(**values))
        await self.write((camera, "LastResult", "ResultJson"), result_json(values))
        for name, value in values.items():
            await self.write((camera, "LastResult", name), value)

    async def mark(self, camera: str, status: str) -> None:
        """Rewrite a camera's live values and last result with `status` (values unchanged), where it differs."""
        keys = [(camera, name) for name in LIVE_CAMERA_VARS]
        keys += [(camera, "LastResult", name) for name in ("Result", "ResultJson", *(f for f, _, _ in RESULT_FIELDS))]
        for key in keys:
            value, was = self.values[key]
            if was != status and was != WAITING:  # never received stays "waiting", not "last usable"
                await self.write(key, value, status)
