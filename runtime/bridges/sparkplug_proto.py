"""Sparkplug B payloads: Eclipse Tahu's `sparkplug_b.proto`, built with Google's protobuf runtime.

The schema below is the Tahu definition (package `org.eclipse.tahu.protobuf`, proto2) for the part a
Sparkplug 3.0 edge node speaks: Payload {timestamp 1, metrics 2, seq 3, uuid 4, body 5} and
Metric {name 1, alias 2, timestamp 3, datatype 4, is_historical 5, is_transient 6, is_null 7, and the
value oneof int 10, long 11, float 12, double 13, boolean 14, string 15, bytes 16}. Field numbers and
types are Tahu's, so any Tahu-based host decodes what we send; the fields we never send (metadata,
properties, datasets, templates) arrive as unknown fields when a host puts them in a command, and
are ignored. Built as a descriptor at import, in a pool of its own: no protoc step, no generated
file tied to one protobuf release, and no clash with another copy of the Tahu schema in the process.
(pysparkplug, the PyPI library, needs paho-mqtt < 2; the bridge is built on paho-mqtt 2.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge_somad.errors import InputError

# Sparkplug B DataType codes (Tahu `DataType` enum; the spec's section 6.4.16).
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT = 9, 10, 11, 12, 13, 14
UUID, BYTES = 15, 17
TYPE_NAMES = {INT8: "Int8", INT16: "Int16", INT32: "Int32", INT64: "Int64", UINT8: "UInt8", UINT16: "UInt16",
              UINT32: "UInt32", UINT64: "UInt64", FLOAT: "Float", DOUBLE: "Double", BOOLEAN: "Boolean",
              STRING: "String", DATETIME: "DateTime", TEXT: "Text", UUID: "UUID", BYTES: "Bytes"}
# Which oneof field carries each type's value (the spec's table: 8-32 bit ints in int_value, 64 bit
# and DateTime in long_value). Signed values travel as two's complement of the field's width.
_VALUE_FIELD = {INT8: "int_value", INT16: "int_value", INT32: "int_value", UINT8: "int_value",
                UINT16: "int_value", UINT32: "int_value", INT64: "long_value", UINT64: "long_value",
                DATETIME: "long_value", FLOAT: "float_value", DOUBLE: "double_value", BOOLEAN: "boolean_value",
                STRING: "string_value", TEXT: "string_value", UUID: "string_value", BYTES: "bytes_value"}
MAX_COMMAND_BYTES = 64 * 1024  # an NCMD/DCMD is a few metrics: anything larger is not a command


def _build() -> tuple[Any, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="edge_somad_sparkplug_b.proto", package="org.eclipse.tahu.protobuf",
                                            syntax="proto2")
    payload = fd.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    for name, number, kind in (("name", 1, f.TYPE_STRING), ("alias", 2, f.TYPE_UINT64), ("timestamp", 3, f.TYPE_UINT64),
                               ("datatype", 4, f.TYPE_UINT32), ("is_historical", 5, f.TYPE_BOOL),
                               ("is_transient", 6, f.TYPE_BOOL), ("is_null", 7, f.TYPE_BOOL)):
        metric.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    for name, number, kind in (("int_value", 10, f.TYPE_UINT32), ("long_value", 11, f.TYPE_UINT64),
                               ("float_value", 12, f.TYPE_FLOAT), ("double_value", 13, f.TYPE_DOUBLE),
                               ("boolean_value", 14, f.TYPE_BOOL), ("string_value", 15, f.TYPE_STRING),
                               ("bytes_value", 16, f.TYPE_BYTES)):
        metric.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL, oneof_index=0)
    payload.field.add(name="timestamp", number=1, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    payload.field.add(name="metrics", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                      type_name=".org.eclipse.tahu.protobuf.Payload.Metric")
    payload.field.add(name="seq", number=3, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    payload.field.add(name="uuid", number=4, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    payload.field.add(name="body", number=5, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload.Metric")))


_CLASSES: tuple[Any, Any] | None = None


def load() -> Any:
    """The Payload message class (built on first use: `--help` and plain MQTT mode need no protobuf)."""
    global _CLASSES
    if _CLASSES is None:
        try:
            _CLASSES = _build()
        except ImportError as exc:
            from edge_somad.errors import ConfigError

            raise ConfigError("--sparkplug needs the protobuf package: pip install 'edge-somad[bridge]'") from exc
    return _CLASSES[0]


@dataclass(frozen=True)
class Metric:
    """One metric to send: name (births) or alias (data, when aliased), type, value (None = is_null)."""

    datatype: int
    value: Any
    name: str | None = None
    alias: int | None = None
    timestamp_ms: int | None = None
    historical: bool = False


def _set_value(m: Any, datatype: int, value: Any) -> None:
    field = _VALUE_FIELD[datatype]
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        m.is_null = True  # Sparkplug's explicit null: no -1, no NaN standing in for "no value"
        return
    if field == "int_value":
        m.int_value = int(value) & 0xFFFFFFFF
    elif field == "long_value":
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    else:
        setattr(m, field, value)


def encode(metrics: list[Metric], seq: int | None, timestamp_ms: int) -> bytes:
    """A Payload: seq is None only for NDEATH (the spec's one message without seq)."""
    p = load()(timestamp=timestamp_ms)
    if seq is not None:
        p.seq = seq
    for spec in metrics:
        m = p.metrics.add()
        if spec.name is not None:
            m.name = spec.name
        if spec.alias is not None:
            m.alias = spec.alias
        m.timestamp = spec.timestamp_ms if spec.timestamp_ms is not None else timestamp_ms
        m.datatype = spec.datatype
        if spec.historical:
            m.is_historical = True
        _set_value(m, spec.datatype, spec.value)
    return p.SerializeToString()


@dataclass(frozen=True)
class Received:
    """One metric of a command (NCMD/DCMD): name or alias, the datatype it claims, its value."""

    name: str | None
    alias: int | None
    datatype: int | None
    value: Any  # None when is_null or when no value field was set


def decode_command(data: bytes) -> list[Received]:
    """The metrics of an NCMD/DCMD from the network. InputError for anything that is not a Payload."""
    from google.protobuf.message import DecodeError

    if len(data) > MAX_COMMAND_BYTES:
        raise InputError(f"command payload of {len(data)} bytes; expected at most {MAX_COMMAND_BYTES}")
    p = load()()
    try:
        p.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:  # truncated, wrong wire type, bad UTF-8 in a string
        raise InputError(f"command payload ({len(data)} bytes) is not a Sparkplug B Payload: {exc}") from None
    out = []
    for m in p.metrics:
        which = m.WhichOneof("value")
        value = None if which is None or m.is_null else getattr(m, which)
        out.append(Received(m.name if m.HasField("name") else None, m.alias if m.HasField("alias") else None,
                            m.datatype if m.HasField("datatype") else None, value))
    return out
