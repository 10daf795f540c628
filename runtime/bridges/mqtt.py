"""`edge-somad bridge mqtt`: verdicts from `run` endpoints to an MQTT broker, Sparkplug-style, no protobuf.

Two threads. The reader takes validated messages from ZeroMQ (source.py), numbers each
verdict per camera (`mqtt_seq`, persisted) and stores it in the disk queue (queue.py). The
sender (the caller's thread) owns the broker connection: on connect it publishes the retained
birth (with the death as Last Will), then the queue in order, QoS 1, at most `window` in flight;
an item leaves the queue only when the broker acknowledged it. On a lost connection it reconnects
with backoff and resends everything unacknowledged, so a consumer may see a verdict twice (dedupe
by camera + mqtt_seq) but never misses one the queue kept. Topics and payloads: docs/bridges.md.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_somad.errors import ConfigError
from edge_somad.runtime.bridges.mqtt_health import HealthTopics
from edge_somad.runtime.bridges.mqtt_link import BrokerConfig, MqttLink, Will
from edge_somad.runtime.bridges.queue import DiskQueue, Item
from edge_somad.runtime.bridges.recover import Recovery
from edge_somad.runtime.bridges.source import SourceConfig, StreamSource
from edge_somad.runtime.messaging import messages

log = logging.getLogger(__name__)

BIRTH_SCHEMA = "edge-somad/mqtt-birth/1"
DEATH_SCHEMA = "edge-somad/mqtt-death/1"
STATUS_SCHEMA = "edge-somad/mqtt-status/1"
BIRTH_WAIT_S = 5.0  # connected with verdicts queued but no stream known yet: birth (incomplete) after this
REFUSALS_BEFORE_EXIT = 3  # refused connects in a row (bad credentials, invalid topic, ...) before giving up
_FORBIDDEN_IN_LEVEL = ("#", "+", "\x00")


def check_topic_root(root: str) -> str:
    """--topic-root as MQTT topic levels: non-empty, no wildcard (# +), no NUL, not a $SYS-like name."""
    levels = root.split("/")
    bad = [lv for lv in levels if not lv or any(c in lv for c in _FORBIDDEN_IN_LEVEL)]
    if bad or root.startswith("$") or len(root.encode()) > 1024:
        shown = repr(root) if len(root) <= 80 else f"{root[:60]!r}... ({len(root)} characters)"
        raise ConfigError(f"--topic-root {shown}: expected topic levels separated by '/', each non-empty and "
                          "without '#', '+' or NUL, not starting with '$', at most 1024 bytes "
                          "(e.g. edge-somad/v1); a broker refuses a will topic with a wildcard")
    return root


@dataclass(frozen=True)
class MqttBridgeConfig:
    broker: BrokerConfig
    source: SourceConfig
    box: str  # edge node id: one per `run` box (camera-id rule: it is a topic level)
    group: str = "line"
    root: str = "edge-somad/v1"
    queue_file: Path = Path("mqtt-queue.sqlite")
    queue_max: int = 100_000  # ~ 1.4 h of a 20 fps line while the broker is away
    heatmaps: bool = False
    heatmap_max_bytes: int = 256 * 1024
    status_interval_s: float = 10.0
    drain_timeout_s: float = 5.0  # on stop: time to deliver what is queued before the death message
    replay: tuple[str, ...] = ()  # per --connect, in order: its `run --replay` endpoint (empty: count only)
    control: str | None = None  # `run --control` endpoint: answer trigger commands (mqtt_trigger.py)

    def __post_init__(self) -> None:
        check_topic_root(self.root)
        if self.replay and len(self.replay) != len(self.source.endpoints):
            raise ConfigError(f"{len(self.replay)} --replay endpoint(s) for {len(self.source.endpoints)} --connect; "
                              "expected one per --connect, in the same order")

    def topic(self, kind: str, camera: str | None = None) -> str:
        base = f"{self.root}/{self.group}/{kind}/{self.box}"
        return base if camera is None else f"{base}/{camera}"


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _finite(value: Any) -> Any:
    """NaN/inf (Python's json reads them from the network) become null: MQTT consumers get strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@dataclass
class Counters:
    stored: int = 0
    delivered: int = 0  # acknowledged by the broker (QoS 1), resends included once
    resent: int = 0  # items published again after a lost connection (possible duplicates downstream)
    heatmaps_too_big: int = 0
    not_png: int = 0
    connects: int = 0
    left: int = 0  # still queued on disk at exit
    overflow: dict[str, int] = field(default_factory=dict)


class MqttBridge:
    SPARKPLUG = False  # what the queue's items are: JSON verdicts (plain) or Sparkplug metric values

    def __init__(self, config: MqttBridgeConfig) -> None:
        self.config = config
        self.queue = DiskQueue(config.queue_file, config.queue_max)
        self._claim_queue()
        self.seqs = self.queue.meta_items("seq:")  # per camera: the next mqtt_seq, continued across restarts
        self.counters = Counters(overflow=self.queue.meta_items("overflow:"))
        try:
            self.source = StreamSource(config.source)
            self.recovery = Recovery(config.source.endpoints, config.replay, config.source.curve,
                                     state=self.queue.meta_items("up:"))
        except BaseException:
            self.queue.close()  # releases the queue's lock: a caller may try again in this process
            raise
        self.health = HealthTopics(config.box, config.topic)
        self.stop = threading.Event()
        self.birth_dirty = threading.Event()
        self.bd_seq = self.queue.get_meta("bdseq")
        self._reader: threading.Thread | None = None
        self._source_error: BaseException | None = None
        self._drain_until = 0.0
        self.commands = None
        if config.control is not None:
            from edge_somad.runtime.bridges.mqtt_trigger import TriggerCommands

            self.commands = TriggerCommands(config.control, config.topic, config.box)

    def _claim_queue(self) -> None:
        """One queue file holds one mode's items: a plain verdict cannot be sent as Sparkplug, nor back."""
        was = bool(self.queue.get_meta("sparkplug"))
        if was != self.SPARKPLUG and self.queue.size:
            self.queue.close()
            modes = ("plain MQTT", "Sparkplug")
            raise ConfigError(f"queue file {self.config.queue_file} holds {self.queue.size} items of the "
                              f"{modes[was]} bridge; this is the {modes[self.SPARKPLUG]} bridge. Give it another "
                              f"--queue-file, or run the {modes[was]} bridge until its queue is delivered")
        self.queue.set_meta("sparkplug", int(self.SPARKPLUG))

    # --- reader thread: ZeroMQ -> disk queue ---------------------------------------------------

    def _items(self, msg: messages.Received, replayed: bool = False) -> tuple[list[Item], dict[str, int]]:
        h = msg.header
        camera = h["camera"]
        seq = self.seqs.get(camera, 0)
        self.seqs[camera] = seq + 1
        late = {"replayed": True} if replayed else {}  # recovered from run's journal, after later verdicts
        payload = _dumps(_finite({**h, "box": self.config.box, "mqtt_seq": seq, **late}))
        items = [Item(h["verdict"], self.config.topic("DDATA", camera), payload)]
        meta = h.get("heatmap")
        if self.config.heatmaps and meta is not None:
            if meta.get("encoding") != "png":
                self.counters.not_png += 1  # f16 maps are for machines on the ZeroMQ side
            elif len(msg.heatmap) > self.config.heatmap_max_bytes:
                self.counters.heatmaps_too_big += 1
            else:
                items.append(Item("heatmap", f"{self.config.topic('DHEAT', camera)}/{seq}", msg.heatmap))
        return items, {f"seq:{camera}": seq + 1}

    def _read(self) -> None:
        stop_reading_at = None
        try:
            while True:
                if self.stop.is_set():
                    # Stopping: still store what ZeroMQ already holds (up to 0.5 s of it), then end.
                    stop_reading_at = stop_reading_at or time.monotonic() + 0.5
                batch, changed = self.source.poll(0 if stop_reading_at else 50 if self.recovery.waiting else 200)
                if changed:
                    self.birth_dirty.set()  # set before the verdicts are stored: birth goes out first
                items: list[Item] = []
                meta: dict[str, int] = {}
                for i, msg in batch:
                    if msg.kind == "verdict":
                        self.recovery.see(i, msg.header)
                        more, seqs = self._items(msg)
                        items += more
                        meta.update(seqs)
                    else:  # heartbeats and status events: line health (alarm events, retained state)
                        items += self.health.observe(msg)
                for _, msg in self.recovery.pump():
                    more, seqs = self._items(msg, replayed=True)
                    items += more
                    meta.update(seqs)
                ending = stop_reading_at is not None and (not batch or time.monotonic() > stop_reading_at)
                if ending:
                    self.recovery.close()  # gaps still open are counted now, and kept with the rest
                meta.update({f"up:{k}": v for k, v in self.recovery.state().items()})
                if items or batch or ending:
                    dropped = self.queue.put_many(items, meta)
                    self.counters.stored += sum(1 for i in items if i.kind in ("pass", "fail", "error"))
                    if dropped:
                        for kind, n in dropped.items():
                            self.counters.overflow[kind] = self.counters.overflow.get(kind, 0) + n
                        log.warning("queue full (%d items, --queue-max): dropped %s; totals %s",
                                    self.queue.size, dropped, self.counters.overflow)
                if ending:
                    break
        except sqlite3.Error as exc:  # disk full, file removed or locked by another bridge
            self._source_error = ConfigError(f"queue file {self.config.queue_file}: {exc}; verdicts can no longer "
                                             "be stored (free disk space, or give each bridge its own --queue-file)")
            self.stop.set()
        except BaseException as exc:  # surfaced by run(): a dead reader must not look like a quiet line
            self._source_error = exc
            self.stop.set()

    # --- birth / death / status ----------------------------------------------------------------

    def birth(self) -> bytes:
        streams = [info.as_birth() for info in self.source.infos]
        return _dumps({"schema": BIRTH_SCHEMA, "box": self.config.box, "group": self.config.group,
                       "bdSeq": self.bd_seq, "at": time.time(), "verdict_schema": messages.VERDICT_SCHEMA,
                       "complete": all(s["known"] for s in streams),
                       "cameras": sorted({c for s in streams for c in s["cameras"]}), "streams": streams,
                       "heatmaps": self.config.heatmaps, "queue_max": self.config.queue_max})

    def _may_be_born(self, connected_at: float) -> bool:
        """Birth once a stream said what it has; or, with verdicts waiting (from before a restart), after
        BIRTH_WAIT_S even if none has (the birth then says `complete: false`): never an empty birth first."""
        if any(info.known for info in self.source.infos):
            return True
        return self.queue.size > 0 and time.monotonic() - connected_at >= BIRTH_WAIT_S

    def death(self, reason: str, bd_seq: int | None = None) -> bytes:
        return _dumps({"schema": DEATH_SCHEMA, "box": self.config.box,
                       "bdSeq": self.bd_seq if bd_seq is None else bd_seq, "reason": reason})

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {"schema": STATUS_SCHEMA, "box": self.config.box, "bdSeq": self.bd_seq, "at": time.time(),
                "queued": self.queue.size, "queue_max": self.config.queue_max, "stored": c.stored,
                "delivered": c.delivered, "resent": c.resent, "overflow": dict(c.overflow),
                "heatmaps_too_big": c.heatmaps_too_big, "heatmaps_not_png": c.not_png,
                "upstream": {"missed": self.recovery.missed, "replayed": self.recovery.replayed,
                             "pending": self.recovery.pending, "rejected": self.source.rejected}}

    # --- sender: disk queue -> broker ----------------------------------------------------------

    def _session(self, link: MqttLink) -> str:
        """Publish birth, then the queue, until the link drops ("lost") or we were stopped ("stopped", drained)."""
        cfg = self.config
        inflight: dict[int, int] = {}  # mid -> queue id
        cursor, last_status, status_key = 0, 0.0, None
        born, connected_at = False, time.monotonic()
        while link.up:
            done = []
            while link.acked:
                qid = inflight.pop(link.acked.popleft(), None)
                if qid is not None:
                    done.append(qid)
            self.queue.delete(done)
            self.counters.delivered += len(done)
            if (born and self.birth_dirty.is_set()) or (not born and self._may_be_born(connected_at)):
                self.birth_dirty.clear()
                was_born = born
                born = link.publish(cfg.topic("NBIRTH"), self.birth(), retain=True) is not None
                if born and not was_born:  # a new connection: every camera's retained health again
                    for topic, payload in self.health.everything():
                        link.publish(topic, payload, retain=True)
            if born:
                for topic, payload in self.health.take_dirty():
                    link.publish(topic, payload, retain=True)
            key = (tuple(sorted(self.counters.overflow.items())), self.recovery.missed, self.recovery.replayed,
                   self.source.rejected)
            if time.monotonic() - last_status >= cfg.status_interval_s or key != status_key:
                link.publish(cfg.topic("NSTATUS"), _dumps(self.status()), retain=True)
                last_status, status_key = time.monotonic(), key
            reading = self._reader is not None and self._reader.is_alive()
            drained = not inflight and self.queue.size == 0 and not reading
            if self.stop.is_set() and (drained or time.monotonic() > self._drain_until or not born):
                return "stopped"
            if not born:  # no verdict before the birth that says whose it is
                self.queue.wait(0.05)
                continue
            room = cfg.broker.window - len(inflight)
            rows = self.queue.peek(cursor, room) if room > 0 else []
            for row in rows:
                mid = link.publish(row.topic, row.payload)
                if mid is None:
                    break
                inflight[mid] = row.id
                cursor = row.id
            if not rows:
                self.queue.wait(0.05 if inflight or self.stop.is_set() else 0.2)
        self.counters.resent += len(inflight)  # still queued: the next connection publishes them again
        return "lost"

    # --- the connection loop; the Sparkplug bridge changes these hooks, not the loop -----------

    # what a refused client id points at, in the error after REFUSALS_BEFORE_EXIT refusals
    client_id_hint = "--box/--group (client id) and --topic-root"

    def _next_bd_seq(self) -> int:
        return self.bd_seq + 1

    def _new_link(self, bd_seq: int) -> MqttLink:
        cfg = self.config
        return MqttLink(cfg.broker, Will(cfg.topic("NDEATH"), self.death("connection lost (last will)", bd_seq)),
                        commands=(self.commands.topic, self.commands.on_message) if self.commands else None)

    def _accept_session(self, bd_seq: int) -> None:
        """The broker took the session: its bdSeq is ours now (and survives a restart of the bridge)."""
        self.bd_seq = bd_seq
        self.queue.set_meta("bdseq", bd_seq)

    def _connected_as(self) -> str:
        return ""

    def _session_over(self, link: MqttLink, why: str) -> bool:
        """After a session: True ends run() (stopped, the link still up for the goodbye); False reconnects."""
        if why == "stopped" and link.up:
            return True
        cfg = self.config
        log.warning("MQTT broker %s:%d: %s; verdicts are kept on disk until it is back",
                    cfg.broker.host, cfg.broker.port, link.error)
        return False

    def _goodbye(self, link: MqttLink) -> None:
        """A clean end: the death ourselves (retained, waited for), since DISCONNECT suppresses the will."""
        link.wait_acked(link.publish(self.config.topic("NDEATH"), self.death("shutdown"), retain=True), 2.0)

    def run(self) -> Counters:
        """Until request_stop() (SIGTERM/SIGINT in the CLI); then deliver what it can and publish death."""
        cfg = self.config
        self._reader = threading.Thread(target=self._read, name="bridge-zmq", daemon=True)
        self._reader.start()
        backoff, link, refusals = 0.5, None, 0
        try:
            while not self.stop.is_set():
                # bdSeq counts sessions: the will carries the next number, kept only once the broker accepted it
                bd_seq = self._next_bd_seq()
                link = self._new_link(bd_seq)
                if not link.connect(timeout_s=5.0):
                    refusals = refusals + 1 if link.refused else 0
                    if refusals >= REFUSALS_BEFORE_EXIT:  # retrying forever would only pile up verdicts
                        raise ConfigError(
                            f"MQTT broker {cfg.broker.host}:{cfg.broker.port}: {link.error}, {refusals} times in a "
                            f"row; check --username/--password-file, {self.client_id_hint}. "
                            f"{self.queue.size} verdicts kept in {cfg.queue_file} for the next start")
                    log.warning("MQTT broker %s:%d: %s; %d verdicts kept in %s, retrying in %.1f s",
                                cfg.broker.host, cfg.broker.port, link.error, self.queue.size, cfg.queue_file, backoff)
                    link = None
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)  # a plant broker is back within seconds of a restart
                    continue
                backoff = 0.5
                self._accept_session(bd_seq)
                self.counters.connects += 1
                log.info("connected to MQTT broker %s:%d%s (bdSeq %d, %d queued)", cfg.broker.host, cfg.broker.port,
                         self._connected_as(), bd_seq, self.queue.size)
                if self._session_over(link, self._session(link)):
                    break  # stopped and drained (or out of drain time): say goodbye below
                link.close()
                link = None
        finally:
            self.stop.set()
            if self._reader.is_alive():
                self._reader.join(2.0)
            if link is not None and link.up:
                link.publish(cfg.topic("NSTATUS"), _dumps(self.status()), retain=True)
                self._goodbye(link)
            if link is not None:
                link.close()
            self.source.close()
            self.counters.left = self.queue.size
            self.queue.close()
        if self._source_error is not None:
            raise self._source_error
        return self.counters

    def request_stop(self) -> None:
        """Stop reading; the sender delivers the queue for up to drain_timeout_s, then publishes death."""
        self._drain_until = time.monotonic() + self.config.drain_timeout_s
        self.stop.set()
