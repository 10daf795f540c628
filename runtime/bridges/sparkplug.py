"""`edge-somad bridge mqtt --sparkplug`: the MQTT bridge as a Sparkplug B 3.0 edge node.

Same reader, same disk queue as the plain bridge (mqtt.py): every verdict is stored before it is
sent and removed only once the broker has it. What changes is the session on the broker:

- topics `spBv1.0/<group>/<NBIRTH|NDEATH|NDATA|NCMD>/<node>` and `.../<DBIRTH|DDEATH|DDATA|DCMD>/<node>/<camera>`,
  Tahu protobuf payloads (sparkplug_proto.py), each camera a device (sparkplug_metrics.py);
- the NDEATH will (QoS 1, not retained) carries `bdSeq`, 0..255, one more per MQTT session, and the
  session's NBIRTH carries the same; NBIRTH has seq 0, every later message of the node and its
  devices the next seq, 255 wrapping to 0; NDEATH has none;
- births, data and device deaths are QoS 0, not retained, as the spec asks. So the broker sends no
  PUBACK for a verdict: a QoS 1 message on the bridge's own status topic (outside spBv1.0) follows
  them on the same connection, and its PUBACK says the broker has read everything before it (a
  broker handles one connection's packets in order). Only then do verdicts leave the queue. After a
  lost connection the unconfirmed ones are sent again, after the new births: at least once, dedupe
  by (node, camera, `Inspection/Verdict Seq`);
- NCMD `Node Control/Rebirth` -> fresh births; DCMD `Trigger` -> `run`'s trigger path
  (sparkplug_commands.py); `--primary-host`: no birth until its STATE says online, and on offline an
  NDEATH, a new session, births when it is back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from edge_somad.errors import InputError
from edge_somad.runtime.bridges import sparkplug_commands as cmd
from edge_somad.runtime.bridges import sparkplug_metrics as sm
from edge_somad.runtime.bridges import sparkplug_proto as pb
from edge_somad.runtime.bridges.mqtt import MqttBridge, MqttBridgeConfig, _dumps
from edge_somad.runtime.bridges.mqtt_link import MqttLink, Will
from edge_somad.runtime.bridges.queue import Item, Stored
from edge_somad.runtime.messaging import messages

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
LOST = frozenset({"unavailable", "reconnecting", "ended", "stopped"})  # a camera in these is a dead device
STALE_S = 5.0  # no heartbeat from a `run` for this long: its cameras are dead devices
FENCE_EVERY_S = 0.05  # how often unconfirmed verdicts are followed by a QoS 1 "fence"
NODE_DATA_EVERY_S = 1.0


@dataclass(frozen=True)
class SparkplugOptions:
    primary_host: str | None = None
    trigger_timeout_s: float = 5.0


@dataclass
class _Session:
    born: bool = False
    rebirth: bool = False
    devices: set[str] = field(default_factory=set)  # cameras with a DBIRTH in this session
    live: set[str] = field(default_factory=set)  # cameras alive at the last look (for DDEATH on a change)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # camera -> health/model values sent
    node_sent: dict[str, Any] = field(default_factory=dict)
    node_at: float = 0.0
    unconfirmed: list[int] = field(default_factory=list)  # queue ids sent, not yet covered by a fence's PUBACK
    fences: dict[int, int] = field(default_factory=dict)  # fence mid -> last queue id it covers
    fenced: int = 0
    fence_at: float = 0.0
    status_at: float = 0.0
    cursor: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class _HealthAsMetrics:
    """In place of the plain bridge's DHEALTH/DALARM topics (mqtt_health.py): in Sparkplug mode line health
    travels as each device's `Health/` metrics (DBIRTH, DDATA), so the reader queues no JSON alarm events."""

    def observe(self, msg: messages.Received) -> list[Item]:
        return []


class SparkplugBridge(MqttBridge):
    SPARKPLUG = True

    def __init__(self, config: MqttBridgeConfig, options: SparkplugOptions = SparkplugOptions()) -> None:
        pb.load()  # protobuf missing: say so now, not at the first birth
        super().__init__(config)
        self.options = options
        self.spb_bd = self.queue.get_meta("spb:bdseq", 255)  # the last session's; the first one is 0
        self.slots: dict[str, int] = {}  # camera -> device number (aliases), for the life of the process
        self.last_verdict: dict[str, dict[str, Any]] = {}
        self.trigger_state: dict[str, str] = {}
        self.bad_commands = 0
        self._seq = 0
        self.commands = None  # the plain bridge's JSON command topic: Sparkplug's is the DCMD below
        self.health = _HealthAsMetrics()  # type: ignore[assignment]
        # The DCMD Trigger path: `run --control` (config.control), or whatever a caller sets in .fn
        self.triggers = cmd.Triggers(cmd.control_trigger(config.control, options.trigger_timeout_s))

    def topic_spb(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.config.group}/{kind}/{self.config.box}"
        return base if device is None else f"{base}/{device}"

    # --- reader thread: a verdict as device metric values, stored in the queue ----------------

    def _items(self, msg: messages.Received, replayed: bool = False) -> tuple[list[Item], dict[str, int]]:
        h = msg.header
        camera = h["camera"]
        seq = self.seqs.get(camera, 0)
        self.seqs[camera] = seq + 1
        body = {"v": sm.verdict_values(h, seq), "ts": sm.to_ms(h.get("captured_at")), "r": replayed}
        return [Item(h["verdict"], camera, _dumps(body))], {f"seq:{camera}": seq + 1}

    # --- what is known about the cameras now ---------------------------------------------------

    def _cameras(self) -> dict[str, tuple[str, dict | None, dict | None, bool]]:
        """camera -> (status, health block, model, alive), from every stream's newest facts."""
        now, out = time.monotonic(), {}
        for info in self.source.infos:
            stale = info.heartbeat_at is not None and now - info.heartbeat_at > STALE_S
            health = dict(info.health)
            for cam, status in dict(info.cameras).items():
                out[cam] = ("offline" if stale else status, health.get(cam), info.model,
                            not stale and status not in LOST)
        return out

    def _node_values(self) -> dict[str, Any]:
        statuses = sorted({str(i.pipeline_status) for i in self.source.infos if i.pipeline_status})
        return {"Pipeline/Status": ",".join(statuses) or "unknown", "Bridge/Queued": self.queue.size,
                "Bridge/Overflow": sum(self.counters.overflow.values()), "Bridge/Missed Upstream": self.recovery.missed,
                "Bridge/Replayed": self.recovery.replayed, "Bridge/Rejected": self.source.rejected,
                "Bridge/Bad Commands": self.bad_commands}

    def _device_values(self, camera: str, known: dict) -> dict[str, Any]:
        status, health, model, _ = known.get(camera, (None, None, None, False))
        return {**sm.health_values(status, health), **sm.model_values(model)}

    # --- sending: every message but NDEATH takes the next seq ----------------------------------

    def _send(self, link: MqttLink, kind: str, metrics: list[pb.Metric], device: str | None = None) -> bool:
        seq, self._seq = self._seq, (self._seq + 1) % 256
        return link.publish(self.topic_spb(kind, device), pb.encode(metrics, seq, _now_ms()), qos=0) is not None

    def ndeath(self, bd_seq: int) -> bytes:
        return pb.encode([pb.Metric(pb.INT64, bd_seq, name=sm.BD_SEQ)], None, _now_ms())

    def _births(self, link: MqttLink, s: _Session) -> None:
        from edge_somad._version import __version__

        self._seq = 0  # NBIRTH is seq 0
        s.devices.clear()
        node = self._node_values()
        values = {sm.BD_SEQ: self.spb_bd, sm.REBIRTH: False, "Node Info/Software": f"edge-somad {__version__}",
                  "Node Info/Verdict Schema": messages.VERDICT_SCHEMA, **node}
        self._send(link, "NBIRTH", sm.node_metrics(values, birth=True))
        s.node_sent, s.node_at, s.born = node, time.monotonic(), True
        known = self._cameras()
        s.live = {c for c, k in known.items() if k[3]}
        for camera in sorted(s.live):
            self._dbirth(link, s, camera, known)
        log.info("births sent: bdSeq %d, devices %s", self.spb_bd, sorted(s.devices))

    def _dbirth(self, link: MqttLink, s: _Session, camera: str, known: dict) -> None:
        slot = self.slots.setdefault(camera, len(self.slots))
        values = self._device_values(camera, known)
        birth = {**self.last_verdict.get(camera, {}), **values, sm.TRIGGER: "",
                 "Trigger Status": self.trigger_state.get(camera, "")}
        self._send(link, "DBIRTH", sm.device_metrics(slot, birth, birth=True), camera)
        s.devices.add(camera)
        s.sent[camera] = values

    def _devices(self, link: MqttLink, s: _Session) -> None:
        """DBIRTH for a camera that appeared, DDEATH for one lost, DDATA for changed health or model."""
        known = self._cameras()
        live = {c for c, k in known.items() if k[3]}
        for camera in sorted(live - s.devices):
            self._dbirth(link, s, camera, known)
        for camera in sorted((s.live - live) & s.devices):
            self._send(link, "DDEATH", [], camera)
            s.devices.discard(camera)
        s.live = live
        while self.triggers.done:
            camera, part_id, status = self.triggers.done.popleft()
            self.trigger_state[camera] = status
            if camera in s.devices:  # the written `Trigger` value too: a host shows its tag write as done
                self._send(link, "DDATA", sm.device_metrics(self.slots[camera], {
                    sm.TRIGGER: part_id, "Trigger Status": status}, birth=False), camera)
        for camera in sorted(s.devices & set(known)):
            values = self._device_values(camera, known)
            changed = {k: v for k, v in values.items() if s.sent.get(camera, {}).get(k) != v}
            if changed:
                self._send(link, "DDATA", sm.device_metrics(self.slots[camera], changed, birth=False), camera)
                s.sent[camera] = values

    def _node_data(self, link: MqttLink, s: _Session) -> None:
        if time.monotonic() - s.node_at < NODE_DATA_EVERY_S:
            return
        values = self._node_values()
        changed = {k: v for k, v in values.items() if s.node_sent.get(k) != v}
        if changed:
            self._send(link, "NDATA", sm.node_metrics(changed, birth=False))
        s.node_sent, s.node_at = values, time.monotonic()

    def _ddata(self, link: MqttLink, s: _Session, row: Stored) -> bool:
        camera = row.topic
        try:
            body = json.loads(row.payload)
            values, ts, historical = body["v"], body["ts"], bool(body["r"])
            unknown = set(values) - set(sm.DEVICE_TYPES)
            if unknown:
                raise ValueError(f"metrics {sorted(unknown)[:3]} are not declared")
        except (ValueError, KeyError, TypeError) as exc:  # a queue file written by another build
            log.error("queue item %d for %s cannot be sent as Sparkplug (%s): dropped", row.id, camera, exc)
            return True
        if camera not in s.devices:  # backlog of a camera not (or no longer) alive: its birth first
            self._dbirth(link, s, camera, self._cameras())
        ok = self._send(link, "DDATA", sm.device_metrics(self.slots[camera], values, birth=False, timestamp_ms=ts,
                                                         historical=historical), camera)
        if ok:
            self.last_verdict[camera] = values
        return ok

    # --- commands from the network ------------------------------------------------------------

    def _command(self, topic: str, payload: bytes, s: _Session) -> None:
        levels = topic.split("/")
        try:
            if len(levels) == 4 and levels[2] == "NCMD":
                s.rebirth = cmd.wants_rebirth(payload) or s.rebirth
                log.info("NCMD %s: rebirth", sm.REBIRTH)
            elif len(levels) == 5 and levels[2] == "DCMD":
                req = cmd.parse_trigger(levels[4], payload, self.slots.get(levels[4]))
                log.info("DCMD Trigger %s on %s (deadline %s ms)", req.part_id, req.camera, req.deadline_ms)
                self.triggers.start(req)
            else:
                raise InputError(f"a message on {topic[:120]!r}; expected NCMD or DCMD of this node")
        except InputError as exc:
            self.bad_commands += 1
            log.warning("ignored a command on %s: %s (%d ignored in all)", topic[:120], exc, self.bad_commands)

    def _host_state(self, payload: bytes, last_ts: list[int]) -> bool | None:
        """The primary host's STATE: online or not, or None for a stale or malformed message."""
        try:
            online, ts = cmd.parse_state(payload)
        except InputError as exc:
            self.bad_commands += 1
            log.warning("ignored a STATE message: %s", exc)
            return None
        if ts < last_ts[0]:  # older than one already seen (the spec says: ignore it)
            return None
        last_ts[0] = ts
        return online

    # --- one session on the broker ---------------------------------------------------------------

    def _session(self, link: MqttLink) -> str:
        """Until the link drops ("lost"), we stopped ("stopped") or the primary host went offline."""
        cfg, host = self.config, self.options.primary_host
        topics = [(f"{NAMESPACE}/{cfg.group}/NCMD/{cfg.box}", 0), (f"{NAMESPACE}/{cfg.group}/DCMD/{cfg.box}/+", 0)]
        if host is not None:
            topics.append((f"{NAMESPACE}/STATE/{host}", 1))
        if not link.subscribe(topics):  # commands must reach us before any birth invites them
            link.error = link.error or "no SUBACK within 5 s"
            return "lost"
        s, online, last_ts, connected_at = _Session(), host is None, [0], time.monotonic()
        while link.up:
            while link.inbox:
                topic, payload = link.inbox.popleft()
                if host is not None and topic == f"{NAMESPACE}/STATE/{host}":
                    state = self._host_state(payload, last_ts)
                    if state is False and s.born:
                        return "host offline"
                    if state is False:
                        log.info("primary host %s is offline: no births until its STATE says online", host)
                    online = state if state is not None else online
                else:
                    self._command(topic, payload, s)
            done = []
            while link.acked:
                last = s.fences.pop(link.acked.popleft(), None)
                while last is not None and s.unconfirmed and s.unconfirmed[0] <= last:
                    done.append(s.unconfirmed.pop(0))
            self.queue.delete(done)
            self.counters.delivered += len(done)
            reading = self._reader is not None and self._reader.is_alive()
            drained = not s.unconfirmed and self.queue.size == 0 and not reading
            if self.stop.is_set() and (drained or time.monotonic() > self._drain_until or not s.born):
                return "stopped"
            if not online or (not s.born and not self._may_be_born(connected_at)):
                self.queue.wait(0.05)
                continue
            if not s.born or s.rebirth or self.birth_dirty.is_set():
                self.birth_dirty.clear()
                s.rebirth = False
                self._births(link, s)
            self._devices(link, s)
            self._node_data(link, s)
            room = cfg.broker.window - len(s.unconfirmed)
            rows = self.queue.peek(s.cursor, room) if room > 0 else []
            for row in rows:
                if not self._ddata(link, s, row):
                    break
                s.unconfirmed.append(row.id)
                s.cursor = row.id
            now = time.monotonic()
            fence = s.unconfirmed and s.unconfirmed[-1] > s.fenced and now - s.fence_at >= FENCE_EVERY_S
            if fence or now - s.status_at >= cfg.status_interval_s:
                mid = link.publish(cfg.topic("NSTATUS"), _dumps(self.status()), retain=True)
                if mid is not None and s.unconfirmed:
                    s.fences[mid] = s.fenced = s.unconfirmed[-1]
                s.fence_at = s.status_at = now
            if not rows:
                self.queue.wait(0.02 if s.unconfirmed else 0.05)
        self.counters.resent += len(s.unconfirmed)  # still queued: the next session sends them again
        return "lost"

    # --- hooks of MqttBridge.run's connection loop ----------------------------------------------

    client_id_hint = "--group/--node (client id)"

    def _next_bd_seq(self) -> int:
        return (self.spb_bd + 1) % 256  # Sparkplug's bdSeq is 0-255

    def _new_link(self, bd_seq: int) -> MqttLink:
        return MqttLink(self.config.broker, Will(self.topic_spb("NDEATH"), self.ndeath(bd_seq), retain=False))

    def _accept_session(self, bd_seq: int) -> None:
        self.spb_bd = bd_seq
        self.queue.set_meta("spb:bdseq", bd_seq)

    def _connected_as(self) -> str:
        return f" as Sparkplug node {self.config.group}/{self.config.box}"

    def _session_over(self, link: MqttLink, why: str) -> bool:
        if why == "host offline":
            log.warning("primary host %s is offline: NDEATH, then a new session that waits for it",
                        self.options.primary_host)
            self._goodbye(link)
            return False
        return super()._session_over(link, why)

    def _goodbye(self, link: MqttLink) -> None:
        """A clean end of a session: the NDEATH ourselves (QoS 1, waited for), then DISCONNECT."""
        link.wait_acked(link.publish(self.topic_spb("NDEATH"), self.ndeath(self.spb_bd), qos=1), 2.0)
