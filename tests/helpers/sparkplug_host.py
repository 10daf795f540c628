"""An independent Sparkplug B host for the tests: its own protobuf wire decoder, its own rules.

Nothing here imports the bridge's Sparkplug code or any Sparkplug library: the Tahu Payload is
read field by field from the protobuf wire format (varints, 64/32-bit, length-delimited), with
field numbers from Eclipse Tahu's sparkplug_b.proto, so a bridge that encodes wrongly fails here.
`SparkplugHost.check()` applies what a Sparkplug 3.0 host applies: NBIRTH first (seq 0, bdSeq),
then seq + 1 modulo 256 on every node and device message, metrics declared in the births
(name, alias, datatype) and data by declared alias and type, DBIRTH before a device's data,
and an NDEATH that ends the session only when its bdSeq is the session's.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.poll import wait_notified

INT_TYPES = {1: 8, 2: 16, 3: 32, 4: 64, 5: 0, 6: 0, 7: 0, 8: 0, 13: 0}  # signed bit width (0: unsigned)
DOUBLE, BOOLEAN, STRING, INT64, UINT64 = 10, 11, 12, 4, 8


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, i
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of one protobuf message, in wire order."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated field")
        out.append((number, wire, value))
    return out


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if bits and v >= 1 << (bits - 1) else v


def decode_metric(buf: bytes) -> dict[str, Any]:
    m: dict[str, Any] = {"name": None, "alias": None, "datatype": None, "is_null": False, "value": None,
                         "historical": False, "timestamp": None}
    raw = None
    for number, _, v in fields(buf):
        if number == 1:
            m["name"] = v.decode()
        elif number == 2:
            m["alias"] = v
        elif number == 3:
            m["timestamp"] = v
        elif number == 4:
            m["datatype"] = v
        elif number == 5:
            m["historical"] = bool(v)
        elif number == 7:
            m["is_null"] = bool(v)
        elif 10 <= number <= 16:
            raw = (number, v)
    if raw is not None:
        number, v = raw
        if number in (10, 11):
            m["value"] = _signed(v, INT_TYPES.get(m["datatype"], 0))
        elif number == 12:
            m["value"] = struct.unpack("<f", v)[0]
        elif number == 13:
            m["value"] = struct.unpack("<d", v)[0]
        elif number == 14:
            m["value"] = bool(v)
        elif number == 15:
            m["value"] = v.decode()
        else:
            m["value"] = bytes(v)
        m["field"] = number
    return m


def decode_payload(buf: bytes) -> dict[str, Any]:
    p: dict[str, Any] = {"timestamp": None, "seq": None, "metrics": []}
    for number, _, v in fields(buf):
        if number == 1:
            p["timestamp"] = v
        elif number == 2:
            p["metrics"].append(decode_metric(v))
        elif number == 3:
            p["seq"] = v
    return p


def _key(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _ld(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _enc_varint(len(data)) + data


def encode_command(metrics: list[tuple[str | None, int | None, int, Any]], timestamp_ms: int | None = None) -> bytes:
    """An NCMD/DCMD payload: (name, alias, datatype, value) per metric (bool, int, str or float)."""
    out = _key(1, 0) + _enc_varint(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    for name, alias, datatype, value in metrics:
        m = b""
        if name is not None:
            m += _ld(1, name.encode())
        if alias is not None:
            m += _key(2, 0) + _enc_varint(alias)
        m += _key(4, 0) + _enc_varint(datatype)
        if isinstance(value, bool):
            m += _key(14, 0) + _enc_varint(int(value))
        elif isinstance(value, int):
            m += _key(10 if datatype not in (4, 8) else 11, 0) + _enc_varint(value & 0xFFFFFFFFFFFFFFFF)
        elif isinstance(value, str):
            m += _ld(15, value.encode())
        elif isinstance(value, float):
            m += _key(13, 1) + struct.pack("<d", value)
        out += _ld(2, m)
    return out


@dataclass
class Message:
    topic: str
    kind: str
    device: str | None
    payload: dict[str, Any] | None  # None for a STATE or a payload that did not decode
    raw: bytes
    qos: int
    retain: bool


@dataclass
class _Node:
    online: bool = False
    bd_seq: int | None = None
    expect: int = 0
    aliases: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # alias -> (name, device or None)
    node_metrics: dict[str, int] = field(default_factory=dict)
    devices: dict[str, dict[str, int]] = field(default_factory=dict)  # born devices: name -> datatype


class SparkplugHost:
    """A paho subscriber on spBv1.0/# (QoS 1, persistent session) that records and checks everything."""

    def __init__(self, port: int, client_id: str = "spb-host", host_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.host_id = host_id
        self.online = False  # a primary host says online again on every (re)connect, as Sparkplug 3.0 asks
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        if host_id is not None:  # a primary host: its death says offline (retained), as Sparkplug 3.0 asks
            self.client.will_set(f"spBv1.0/STATE/{host_id}", state_payload(False), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        client.subscribe("spBv1.0/#", qos=1)
        if self.host_id is not None and self.online:
            client.publish(f"spBv1.0/STATE/{self.host_id}", state_payload(True), qos=1, retain=True)

    def set_online(self, online: bool) -> None:
        self.online = online
        info = self.client.publish(f"spBv1.0/STATE/{self.host_id}", state_payload(online), qos=1, retain=True)
        info.wait_for_publish(5)

    def _on_message(self, client, userdata, msg) -> None:
        levels = msg.topic.split("/")
        kind = levels[2] if len(levels) > 2 and levels[1] != "STATE" else "STATE"
        try:
            # commands are what the tests send (garbage included): only the node's own messages are decoded
            payload = None if kind in ("STATE", "NCMD", "DCMD") else decode_payload(msg.payload)
        except (ValueError, UnicodeDecodeError, struct.error, TypeError):
            payload = None
        with self.cond:
            self.messages.append(Message(msg.topic, kind, levels[4] if len(levels) > 4 else None, payload,
                                         bytes(msg.payload), msg.qos, bool(msg.retain)))
            self.cond.notify_all()

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=0).wait_for_publish(5)

    def wait_for(self, pred: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        return wait_notified(self.cond, lambda: pred(self.messages), timeout_s)

    def of(self, kind: str, device: str | None = None) -> list[Message]:
        with self.cond:
            return [m for m in self.messages if m.kind == kind and (device is None or m.device == device)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # --- the host's rules --------------------------------------------------------------------------

    def check(self) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
        """Replay what arrived through a host's rules: (violations, data) where data is one
        (device, {metric name: value, "_at": index in self.messages}) per DDATA, names resolved through
        the births' aliases."""
        errors: list[str] = []
        data: list[tuple[str, dict[str, Any]]] = []
        node = _Node()
        with self.cond:
            messages = list(self.messages)
        for i, m in enumerate(messages):
            where = f"#{i} {m.topic}"
            if m.kind in ("STATE", "NCMD", "DCMD"):
                continue
            if m.payload is None:
                errors.append(f"{where}: payload is not a Sparkplug B Payload")
                continue
            if m.retain:
                errors.append(f"{where}: retained (Sparkplug edge messages are not)")
            p = m.payload
            if m.kind == "NDEATH":
                bd = [x["value"] for x in p["metrics"] if x["name"] == "bdSeq"]
                if p["seq"] is not None:
                    errors.append(f"{where}: NDEATH with a seq")
                if not bd or bd[0] is None:
                    errors.append(f"{where}: NDEATH without bdSeq")
                elif node.online and bd[0] == node.bd_seq:
                    node.online = False
                continue
            if m.qos != 0:
                errors.append(f"{where}: QoS {m.qos}; births, data and DDEATH are QoS 0")
            if m.kind == "NBIRTH":
                node = _Node(online=True, expect=0)
                bd = [x for x in p["metrics"] if x["name"] == "bdSeq"]
                if not bd or bd[0]["datatype"] != INT64 or not 0 <= (bd[0]["value"] or 0) <= 255:
                    errors.append(f"{where}: NBIRTH without an Int64 bdSeq in 0..255")
                else:
                    node.bd_seq = bd[0]["value"]
                if not any(x["name"] == "Node Control/Rebirth" and x["datatype"] == BOOLEAN for x in p["metrics"]):
                    errors.append(f"{where}: NBIRTH without Node Control/Rebirth")
                if p["seq"] != 0:
                    errors.append(f"{where}: NBIRTH seq {p['seq']}, expected 0")
                node.node_metrics = self._declare(p, node, None, where, errors)
                node.expect = 1
                continue
            if not node.online:
                errors.append(f"{where}: {m.kind} while the node is not born")
                continue
            if p["seq"] != node.expect:
                errors.append(f"{where}: seq {p['seq']}, expected {node.expect}")
            node.expect = ((p["seq"] if p["seq"] is not None else node.expect) + 1) % 256
            if m.kind == "DBIRTH":
                node.devices[m.device] = self._declare(p, node, m.device, where, errors)
            elif m.kind == "DDEATH":
                node.devices.pop(m.device, None)
            elif m.kind in ("NDATA", "DDATA"):
                declared = node.node_metrics if m.kind == "NDATA" else node.devices.get(m.device)
                if declared is None:
                    errors.append(f"{where}: DDATA before the device's DBIRTH")
                    continue
                values = {}
                for x in p["metrics"]:
                    owner = node.aliases.get(x["alias"], (None, None))
                    name = x["name"] or (owner[0] if owner[1] == m.device else None)
                    if name is None or name not in declared:
                        errors.append(f"{where}: metric {x['name'] or x['alias']} was not declared in the birth")
                    elif x["datatype"] != declared[name]:
                        errors.append(f"{where}: {name} datatype {x['datatype']}, declared {declared[name]}")
                    else:
                        values[name] = None if x["is_null"] else x["value"]
                if m.kind == "DDATA":
                    data.append((m.device, {**values, "_at": i}))  # _at: the message's index in arrival order
        return errors, data

    @staticmethod
    def _declare(p: dict, node: _Node, device: str | None, where: str, errors: list[str]) -> dict[str, int]:
        declared = {}
        for x in p["metrics"]:
            if not x["name"] or x["datatype"] is None:
                errors.append(f"{where}: a birth metric without name or datatype: {x}")
                continue
            declared[x["name"]] = x["datatype"]
            if x["alias"] is not None:
                owner = node.aliases.get(x["alias"])
                if owner is not None and owner != (x["name"], device):  # unique across the node and its devices
                    errors.append(f"{where}: alias {x['alias']} of {x['name']} already names {owner}")
                node.aliases[x["alias"]] = (x["name"], device)
        return declared


def state_payload(online: bool) -> bytes:
    return json.dumps({"online": online, "timestamp": int(time.time() * 1000)}).encode()
