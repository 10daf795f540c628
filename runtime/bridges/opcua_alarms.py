"""Line health as OPC UA alarms: one OffNormalAlarmType condition per camera and health check.

The states come from runtime/health/alarms.AlarmBook (fed by `run`'s health blocks). Each change
is an event of type OffNormalAlarmType (a subtype of AlarmConditionType) emitted through the
Server object (i=2253), where OPC UA clients subscribe to events, with the condition fields a
client reads: ConditionId (the condition's NodeId), ConditionName (the check), SourceNode and
SourceName (the camera), ActiveState, AckedState, Retain, Severity, Message, Comment.

A condition's node, `Objects/<box>/Cameras/<camera>/Alarms/<check>`, is created the first time its
check fires (instantiating the full type costs ~0.2 s: a good line never pays it) and its
variables follow every change, so a client may also read or watch them.

Acknowledge is the standard method (AcknowledgeableConditionType.Acknowledge, i=9111, or the
instance's own Acknowledge) called on the condition with the EventId of the event being
acknowledged and a comment: AckedState turns true and a new event says so; a stale EventId is
BadEventIdUnknown, a second acknowledge BadConditionBranchAlreadyAcked. ConditionRefresh on the
Server object re-sends every retained condition (asyncua keeps them).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from edge_somad.runtime.health.alarms import AckError, Alarm, AlarmBook

log = logging.getLogger(__name__)

_ACK_CODES = {"unknown": "BadNodeIdUnknown", "event_id": "BadEventIdUnknown", "acked": "BadConditionBranchAlreadyAcked"}


class OpcuaAlarms:
    """Conditions of one bridge: `update(camera, health)` on every health block, ack by method call."""

    def __init__(self, server: Any, idx: int, node_id: Any, camera_node: Any) -> None:
        # node_id(*parts) -> NodeId in the bridge's namespace; camera_node(camera) -> the camera's Node
        self.server, self.idx, self._node_id, self._camera_node = server, idx, node_id, camera_node
        self.book = AlarmBook()
        self.generators: dict[str, Any] = {}  # alarm key -> EventGenerator (its event object is the condition)
        self.nodes: dict[str, Any] = {}  # alarm key -> condition Node
        self.by_node: dict[Any, str] = {}  # condition NodeId -> alarm key
        self.folders: dict[str, Any] = {}  # camera -> Alarms folder

    async def setup(self) -> None:
        from asyncua import ua

        # Acknowledge on the type: clients call it with ObjectId = the condition, as Part 9 says.
        self.server.link_method(self.server.get_node(ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)),
                                self._acknowledge)

    async def update(self, camera: str, health: Any) -> list[Alarm]:
        changed = self.book.update(camera, health)
        for alarm in changed:
            await self._emit(alarm)
        return changed

    async def _condition(self, alarm: Alarm) -> Any:
        from asyncua import ua

        gen = self.generators.get(alarm.key)
        if gen is not None:
            return gen
        folder = self.folders.get(alarm.camera)
        if folder is None:
            parent = await self._camera_node(alarm.camera)
            folder = self.folders[alarm.camera] = await parent.add_folder(
                self._node_id(alarm.camera, "Alarms"), ua.QualifiedName("Alarms", self.idx))
        node = await folder.add_object(self._node_id(alarm.camera, "Alarms", alarm.check),
                                       ua.QualifiedName(alarm.check, self.idx),
                                       objecttype=ua.NodeId(ua.ObjectIds.OffNormalAlarmType))
        ack = await node.get_child("0:Acknowledge")
        self.server.link_method(ack, self._acknowledge)
        gen = await self.server.get_event_generator(ua.ObjectIds.OffNormalAlarmType, ua.ObjectIds.Server)
        camera_node = await self._camera_node(alarm.camera)
        ev = gen.event
        ev.NodeId = node.nodeid  # ConditionId
        ev.SourceNode, ev.SourceName = camera_node.nodeid, alarm.camera
        ev.ConditionName, ev.ConditionClassName = alarm.check, ua.LocalizedText("Line health")
        ev.ConditionClassId = ua.NodeId(ua.ObjectIds.ProcessConditionClassType)
        ev.BranchId = ua.NodeId()
        ev.EnabledState = ua.LocalizedText("Enabled")
        setattr(ev, "EnabledState/Id", True)
        ev.Quality = ua.StatusCode(ua.StatusCodes.Good)
        ev.InputNode, ev.SuppressedOrShelved = ua.NodeId(), False
        self.generators[alarm.key], self.nodes[alarm.key] = gen, node
        self.by_node[node.nodeid] = alarm.key
        return gen

    async def _emit(self, alarm: Alarm) -> None:
        from asyncua import ua

        gen = await self._condition(alarm)
        ev = gen.event
        at = datetime.fromtimestamp(alarm.changed, timezone.utc)
        ev.LastSeverity = ev.Severity or alarm.severity
        ev.Severity = alarm.severity
        ev.Retain = alarm.retain
        ev.ActiveState = ua.LocalizedText("Active" if alarm.active else "Inactive")
        setattr(ev, "ActiveState/Id", alarm.active)
        ev.AckedState = ua.LocalizedText("Acknowledged" if alarm.acked else "Unacknowledged")
        setattr(ev, "AckedState/Id", alarm.acked)
        ev.Comment = ua.LocalizedText(alarm.comment)
        ev.Message = ua.LocalizedText(f"{alarm.camera}: {alarm.message}"
                                      if alarm.active else f"{alarm.camera}: {alarm.check} back to normal")
        # trigger() draws its own random EventId; ours must be the book's, which Acknowledge checks.
        ev.Time = ev.ReceiveTime = at
        ev.EventId = ua.Variant(alarm.event_id, ua.VariantType.ByteString)
        await self.server.iserver.isession.subscription_service.trigger_event(ev)
        await self._write_node(alarm, ev)

    async def _write_node(self, alarm: Alarm, ev: Any) -> None:
        """The condition's own variables, for clients that read or watch them instead of events."""
        from asyncua import ua

        node = self.nodes[alarm.key]
        values = {("ActiveState",): (ev.ActiveState, ua.VariantType.LocalizedText),
                  ("ActiveState", "Id"): (alarm.active, ua.VariantType.Boolean),
                  ("AckedState",): (ev.AckedState, ua.VariantType.LocalizedText),
                  ("AckedState", "Id"): (alarm.acked, ua.VariantType.Boolean),
                  ("EnabledState",): (ua.LocalizedText("Enabled"), ua.VariantType.LocalizedText),
                  ("EnabledState", "Id"): (True, ua.VariantType.Boolean),
                  ("Retain",): (alarm.retain, ua.VariantType.Boolean),
                  ("Severity",): (alarm.severity, ua.VariantType.UInt16),
                  ("Message",): (ev.Message, ua.VariantType.LocalizedText),
                  ("Comment",): (ev.Comment, ua.VariantType.LocalizedText),
                  ("EventId",): (alarm.event_id, ua.VariantType.ByteString),
                  ("ConditionName",): (alarm.check, ua.VariantType.String),
                  ("SourceName",): (alarm.camera, ua.VariantType.String),
                  ("Time",): (ev.Time, ua.VariantType.DateTime)}
        for path, (value, vtype) in values.items():
            try:
                child = await node.get_child([f"0:{p}" for p in path])
            except ua.UaStatusCodeError:  # optional child not instantiated: nothing to keep current
                continue
            await self.server.write_attribute_value(child.nodeid, ua.DataValue(ua.Variant(value, vtype)))

    async def _acknowledge(self, parent: Any, *args: Any) -> Any:
        """Acknowledge(EventId ByteString, Comment LocalizedText) on condition `parent`."""
        from asyncua import ua

        key = self.by_node.get(parent)
        event_id = args[0].Value if args and isinstance(args[0], ua.Variant) else None
        comment = args[1].Value if len(args) > 1 and isinstance(args[1], ua.Variant) else None
        if key is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        if not isinstance(event_id, (bytes, bytearray)):
            return ua.StatusCode(ua.StatusCodes.BadEventIdUnknown)
        text = comment.Text if isinstance(comment, ua.LocalizedText) else str(comment or "")
        try:
            alarm = self.book.acknowledge(key, bytes(event_id), text or "")
        except AckError as exc:
            log.info("OPC UA acknowledge refused: %s", exc)
            return ua.StatusCode(getattr(ua.StatusCodes, _ACK_CODES[exc.code]))
        log.info("alarm %s acknowledged over OPC UA (%s)", key, alarm.comment)
        await self._emit(alarm)
        return []
