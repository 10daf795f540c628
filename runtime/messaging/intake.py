"""Bounded decoding of what a receiver gets from the network: the limits every receiver applies.

`subscribe`, `view` and both bridges read messages a peer chose. Python's json module recurses
once per nesting level (a 4 kB `[[[[...]]]]` raises RecursionError), turns a 5000-digit number into
a ValueError (CPython's int-from-string limit), accepts NaN/Infinity (and `1e999` as inf), and
holds whatever size arrives. So before json.loads sees a header: its size is checked, its nesting
depth is measured by a vectorised scan (brackets outside strings), and the parser's hooks refuse
long numbers and non-finite values. What is too big for the network layer never reaches Python:
SUB sockets get ZMQ_MAXMSGSIZE (a peer sending a larger frame is disconnected by libzmq).
Every refusal is an InputError naming what arrived and the limit it broke. Limits: docs/security.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_somad.errors import ConfigError, InputError

MIB = 1 << 20


@dataclass(frozen=True)
class DecodeLimits:
    """What one received message may hold. The defaults are far above a real message (docs/security.md)."""

    max_part_bytes: int = 16 * MIB  # any one frame (ZMQ_MAXMSGSIZE): a 4K overlay JPEG is ~2 MB
    max_header_bytes: int = 1 * MIB  # the JSON header: a real verdict's is ~1 kB, a 64-camera heartbeat ~100 kB
    max_topic_bytes: int = 256  # "<prefix>/<camera id>": the id is at most 64 characters
    max_parts: int = 4  # topic, header, heatmap, overlay
    max_depth: int = 32  # JSON nesting: a verdict header nests 3 deep, a heartbeat 6
    max_number_chars: int = 40  # digits of one JSON number: frame ids have 19, a float's repr ~24

    def __post_init__(self) -> None:
        for name in ("max_part_bytes", "max_header_bytes", "max_topic_bytes", "max_depth", "max_number_chars"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"decode limit {name}={getattr(self, name)!r}; expected a positive integer")
        if self.max_parts < 3:
            raise ConfigError(f"decode limit max_parts={self.max_parts}; a verdict has 3 or 4 parts")
        if self.max_header_bytes > self.max_part_bytes:
            raise ConfigError(f"max_header_bytes {self.max_header_bytes} > max_part_bytes {self.max_part_bytes}: "
                              "the header is one part")

    @classmethod
    def with_max_message_mb(cls, mb: float) -> DecodeLimits:
        """The `--max-message-mb` option: the per-part cap; the header cap stays at most 1 MiB."""
        if not isinstance(mb, (int, float)) or not math.isfinite(mb) or mb <= 0 or mb > 2048:
            raise ConfigError(f"--max-message-mb {mb!r}; expected a size in MB in (0, 2048], e.g. 16")
        part = max(1024, int(mb * MIB))
        return cls(max_part_bytes=part, max_header_bytes=min(cls.max_header_bytes, part))


DEFAULT_LIMITS = DecodeLimits()


class _Refused(Exception):
    """Raised inside json's hooks; turned into an InputError by loads_header."""


def nesting_depth(data: bytes) -> int:
    """Deepest nesting of JSON arrays/objects in data, brackets inside strings excluded. Linear, no recursion.

    A quote is a string delimiter unless an odd run of backslashes precedes it; a bracket counts
    when an even number of delimiters comes before it. Malformed input gives some depth too (json
    rejects it afterwards); the point is never to hand json a deep document.
    """
    if data.count(b"[") + data.count(b"{") <= 1:
        return int(b"[" in data or b"{" in data)
    arr = np.frombuffer(data, np.uint8)
    if b"\\" in data:  # escapes: a quote after an odd run of backslashes is text
        idx = np.arange(arr.size, dtype=np.int64)
        last_plain = np.maximum.accumulate(np.where(arr == 92, -1, idx))  # last non-backslash index <= i
        run_before = np.zeros(arr.size, np.int64)  # backslashes right before position i
        run_before[1:] = idx[:-1] - last_plain[:-1]
        keep = _STRUCTURAL[arr] & ((arr != 34) | (run_before % 2 == 0))
    else:
        keep = _STRUCTURAL[arr]
    marks = arr[keep]  # only delimiting quotes and brackets, in order: usually a small array
    quote = marks == 34
    inside = (np.cumsum(quote) - quote) % 2 == 1
    step = ((marks == 91) | (marks == 123)).astype(np.int64) - ((marks == 93) | (marks == 125))
    step[inside] = 0
    return int(np.cumsum(step).max(initial=0))


_STRUCTURAL = np.zeros(256, bool)
_STRUCTURAL[[34, 91, 93, 123, 125]] = True  # " [ ] { }


def _hooks(limits: DecodeLimits) -> dict[str, Any]:
    def parse_int(text: str) -> int:
        if len(text) > limits.max_number_chars:
            raise _Refused(f"an integer of {len(text)} digits; expected at most {limits.max_number_chars}")
        value = int(text)
        if not -(1 << 63) <= value < (1 << 63):  # every field is a 64-bit integer (OPC UA Int64, numpy)
            raise _Refused(f"the integer {text[:24]}... outside the 64-bit range")
        return value

    def parse_float(text: str) -> float:
        if len(text) > limits.max_number_chars:
            raise _Refused(f"a number of {len(text)} characters; expected at most {limits.max_number_chars}")
        value = float(text)
        if not math.isfinite(value):
            raise _Refused(f"the number {text[:24]} overflows to {value}; expected a finite number")
        return value

    def parse_constant(text: str) -> float:
        raise _Refused(f"{text} is not JSON; expected a finite number or null")

    return {"parse_int": parse_int, "parse_float": parse_float, "parse_constant": parse_constant}


def loads_header(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The JSON object in data, or InputError: too big, too deep, not UTF-8 JSON, NaN/inf, long numbers."""
    if len(data) > limits.max_header_bytes:
        raise InputError(f"header of {len(data)} bytes; expected at most {limits.max_header_bytes}")
    depth = nesting_depth(data)
    if depth > limits.max_depth:
        raise InputError(f"header nests {depth} levels deep; expected at most {limits.max_depth}")
    try:
        header = json.loads(data.decode("utf-8"), **_hooks(limits))
    except _Refused as exc:
        raise InputError(f"header holds {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"header is not UTF-8 JSON ({str(exc)[:120]}); expected an edge-somad message") from None
    if not isinstance(header, dict):
        raise InputError(f"header is a JSON {type(header).__name__}; expected an object")
    return header


def check_parts(parts: list[bytes], limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Frame count and sizes, before anything is decoded."""
    if not 2 <= len(parts) <= limits.max_parts:
        raise InputError(f"message has {len(parts)} part(s); expected 2 to {limits.max_parts} "
                         "(topic, JSON header, heatmap, overlay)")
    if len(parts[0]) > limits.max_topic_bytes:
        raise InputError(f"topic of {len(parts[0])} bytes; expected at most {limits.max_topic_bytes}")
    total = sum(len(p) for p in parts)
    biggest = max(len(p) for p in parts)
    if biggest > limits.max_part_bytes:
        raise InputError(f"a part of {biggest} bytes ({total} in all); expected at most {limits.max_part_bytes} "
                         "per part (--max-message-mb)")


def is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: object) -> bool:
    # The parser's hooks already refused NaN/inf; a bool is not a number here.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(text)} characters)"


MAX_DEFECTS = 10_000  # regions in one verdict: far above any useful count, small enough to print
_NUMBER_OR_NULL = ("captured_at", "published_at", "latency_ms", "score", "score_normalised", "threshold")
_DEFECT_INTS = ("x", "y", "w", "h", "area_px")


def check_verdict_fields(h: dict[str, Any], n_parts: int) -> None:
    """The verdict header's documented fields (docs/messages.md), each checked when present.

    schema, camera, frame_id and verdict are checked by messages.validate_verdict (always required);
    the rest may be absent (older publishers, tools) but never of another type. Unknown fields are
    allowed: version 1 may grow optional fields. InputError names the field.
    """
    for name in _NUMBER_OR_NULL:
        if name in h and h[name] is not None and not _is_number(h[name]):
            raise InputError(f"field {name!r} is {_shown(h[name])}; expected a number or null")
    if "error" in h and h["error"] is not None and not isinstance(h["error"], str):
        raise InputError(f"field 'error' is {_shown(h['error'])}; expected a string or null")
    if "model" in h and h["model"] is not None and not isinstance(h["model"], dict):
        raise InputError(f"field 'model' is {_shown(h['model'])}; expected an object or null")
    defects = h.get("defects", [])
    if not isinstance(defects, list) or len(defects) > MAX_DEFECTS:
        raise InputError(f"field 'defects' is {_shown(defects)}; expected a list of at most {MAX_DEFECTS} regions")
    for i, d in enumerate(defects):
        if not isinstance(d, dict) or not all(is_int(d.get(k), 0, 1 << 31) for k in _DEFECT_INTS) or (
                d.get("max_score") is not None and not _is_number(d.get("max_score"))):
            raise InputError(f"field 'defects[{i}]' is {_shown(d)}; expected {{x, y, w, h, area_px: int >= 0, "
                             "max_score: number}")
    shape = h.get("frame_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 2
                                  and all(is_int(v, 1, 1 << 20) for v in shape)):
        raise InputError(f"field 'frame_shape' is {_shown(shape)}; expected [height, width] or null")
    overlay = h.get("overlay")
    if overlay is not None and not isinstance(overlay, bool):
        raise InputError(f"field 'overlay' is {_shown(overlay)}; expected true or false")
    if n_parts and (n_parts not in (3, 4) or (overlay is not None and overlay != (n_parts == 4))):
        raise InputError(f"verdict of {n_parts} parts with 'overlay' {overlay}; expected 3 parts (topic, header, "
                         "heatmap), 4 with an overlay (overlay: true)")
    meta = h.get("heatmap")
    if meta is not None:
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if (not isinstance(meta, dict) or meta.get("encoding") not in ("png", "f16") or not isinstance(shape, list)
                or len(shape) != 2 or not all(is_int(v, 1, 1 << 15) for v in shape)):
            raise InputError(f"field 'heatmap' is {_shown(meta)}; expected {{encoding: png|f16, shape: [H, W]}}")
        vmax = meta.get("vmax")
        if meta["encoding"] == "png" and not (_is_number(vmax) and vmax > 0):
            raise InputError(f"field 'heatmap.vmax' is {_shown(vmax)}; a PNG heatmap needs a number > 0")
