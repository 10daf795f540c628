"""Wire format of the verdict stream (see docs/messages.md, which documents every field).

A verdict is a ZeroMQ multipart message:
  1. topic  b"<prefix>/<camera-id>"
  2. header JSON (utf-8), schema VERDICT_SCHEMA
  3. heatmap bytes (PNG or raw float16), or an empty frame when header["heatmap"] is null
  4. optional JPEG overlay for operators (only when header["overlay"] is true)
Heartbeats go on b"<prefix>/_heartbeat", camera events and the final status on b"<prefix>/_status".
Kept free of zmq so a bridge can decode messages it received any way it likes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_somad.errors import InputError
from edge_somad.runtime.messaging.intake import (
    DEFAULT_LIMITS,
    DecodeLimits,
    check_parts,
    check_verdict_fields,
    loads_header,
)
from edge_somad.runtime.messaging.intake import is_int as _is_int
from edge_somad.runtime.messaging.verdict import VERDICTS, Verdict

VERDICT_SCHEMA = "edge-somad/verdict/1"
HEARTBEAT_SCHEMA = "edge-somad/heartbeat/1"
STATUS_SCHEMA = "edge-somad/status/1"
HEARTBEAT_TOPIC = "_heartbeat"
STATUS_TOPIC = "_status"
HEATMAP_ENCODINGS = ("png", "f16", "none")
# PNG heatmaps carry map / threshold clipped to [0, PNG_RANGE] and scaled to 0..255, so 127.5 is the
# threshold and 255 means "twice the threshold or more", whatever the model's raw units are.
PNG_RANGE = 2.0
# Camera ids become topic names and file names on the subscriber's disk, and the subscriber gets
# them from the network: one strict rule, checked where ids are configured AND where messages are
# received. Starts with a letter or digit (so never "_heartbeat"/"_status", never "-opt" or "."),
# then letters, digits, "_" and "-": no dots (Path.with_suffix would cut "a.b"), no separators.
CAMERA_ID_RULE = "1 to 64 characters: a letter or digit, then letters, digits, '_' or '-'"
_CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_FRAME_ID = 2**63 - 1


def check_camera_id(camera: object) -> str:
    """Return camera if it obeys CAMERA_ID_RULE; InputError (with a printable excerpt) otherwise."""
    if not isinstance(camera, str) or _CAMERA_ID.fullmatch(camera) is None:
        shown = repr(camera)
        shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
        raise InputError(f"camera id {shown} is not allowed; expected {CAMERA_ID_RULE}")
    return camera


def topic(prefix: str, name: str) -> bytes:
    return f"{prefix}/{name}".encode()


def dumps(payload: dict[str, Any]) -> bytes:
    # allow_nan=False: a NaN would make the line invalid JSON for most bridges; callers put None.
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def encode_heatmap(
    anomaly_map: np.ndarray, encoding: str, threshold: float | None
) -> tuple[dict | None, bytes | np.ndarray]:
    """Encode a (H, W) float map -> (header["heatmap"] metadata, payload); (None, b"") if none.

    The payload is a numpy buffer so the publisher can hand it to ZeroMQ without a copy. For a map
    of unknown origin; the pipeline encodes its Verdict's (already checked) with heatmap_of.
    """
    if not np.isfinite(anomaly_map).all():
        _check_encoding(encoding)
        return None, b""
    normalised = None if threshold is None or threshold <= 0 else anomaly_map / threshold
    return _encode(anomaly_map, normalised, encoding, threshold)


def heatmap_of(verdict: Verdict, encoding: str) -> tuple[dict | None, bytes | np.ndarray]:
    """The heatmap part of a verdict message: its map (finite by construction), or none."""
    if verdict.anomaly_map is None:
        _check_encoding(encoding)
        return None, b""
    return _encode(verdict.anomaly_map, verdict.normalised_map, encoding, verdict.threshold)


def _check_encoding(encoding: str) -> None:
    if encoding not in HEATMAP_ENCODINGS:
        raise InputError(f"heatmap encoding {encoding!r} is unknown; expected one of {HEATMAP_ENCODINGS}")


def _encode(anomaly_map: np.ndarray, normalised: np.ndarray | None, encoding: str,
            threshold: float | None) -> tuple[dict | None, bytes | np.ndarray]:
    _check_encoding(encoding)
    if encoding == "none":
        return None, b""
    shape = [int(anomaly_map.shape[0]), int(anomaly_map.shape[1])]
    if encoding == "f16":
        data = np.ascontiguousarray(anomaly_map, dtype="<f2")
        return {"encoding": "f16", "shape": shape, "dtype": "float16", "vmax": None}, data
    if normalised is None or threshold is None:
        # Without a threshold there is no scale to normalise by, and guessing one (e.g. the map's own
        # max) would make a good part look as alarming as a bad one.
        return None, b""
    png = to_uint8(normalised)
    # Level 1: the map is smooth, so fast compression is within ~10% of the best size at 1/4 the time.
    ok, buf = cv2.imencode(".png", png, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise InputError(f"could not PNG-encode a heatmap of shape {png.shape}")
    return {"encoding": "png", "shape": shape, "dtype": "uint8", "vmax": PNG_RANGE * threshold}, buf


def normalise_map(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 map: 0 = 0, 127/128 = threshold, 255 = PNG_RANGE * threshold or more."""
    return to_uint8(anomaly_map / threshold)


def to_uint8(normalised: np.ndarray) -> np.ndarray:
    """A map in threshold units (1.0 = threshold) as the PNG heatmap's uint8 levels."""
    return np.round(np.clip(normalised, 0.0, PNG_RANGE) * (255.0 / PNG_RANGE)).astype(np.uint8)


def decode_heatmap(meta: dict | None, payload: bytes) -> np.ndarray | None:
    """Inverse of encode_heatmap: float32 map in raw units (PNG: quantised, clipped at vmax)."""
    if meta is None:
        return None
    h, w = meta["shape"]
    if meta["encoding"] == "f16":
        if len(payload) != 2 * h * w:
            raise InputError(f"f16 heatmap of {len(payload)} bytes; header shape {[h, w]} needs {2 * h * w}")
        return np.frombuffer(payload, dtype="<f2").reshape(h, w).astype(np.float32)
    if meta["encoding"] == "png":
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None or img.shape != (h, w):
            got = None if img is None else img.shape
            raise InputError(f"PNG heatmap decodes to {got}; header says {(h, w)}")
        return img.astype(np.float32) * (float(meta["vmax"]) / 255.0)
    raise InputError(f"heatmap encoding {meta['encoding']!r} is unknown; expected png or f16")


@dataclass(frozen=True)
class Received:
    """One decoded message as a bridge sees it."""

    topic: str
    header: dict[str, Any]
    heatmap: bytes
    overlay: bytes | None
    n_parts: int = 0  # frames the message came in (0: built here, not received)

    @property
    def kind(self) -> str:
        schema = self.header.get("schema", "")
        return {VERDICT_SCHEMA: "verdict", HEARTBEAT_SCHEMA: "heartbeat", STATUS_SCHEMA: "status"}.get(
            schema, "unknown")

    @property
    def line_snapshot(self) -> bool:
        """A heartbeat or `run`'s final status: both carry the whole line's state (status, model, and
        every camera with its health), which a consumer takes as the current picture."""
        return self.kind == "heartbeat" or (self.kind == "status" and self.header.get("event") == "final")


def parse_message(parts: list[bytes], limits: DecodeLimits = DEFAULT_LIMITS) -> Received:
    """Decode a multipart message received on a SUB socket, within `limits` (runtime/messaging/intake.py).

    InputError if it is not ours at all or breaks a limit; never anything else for any bytes.
    """
    check_parts(parts, limits)
    try:
        topic_name = bytes(parts[0]).decode()
    except UnicodeDecodeError:
        raise InputError(f"topic {bytes(parts[0])[:40]!r} is not UTF-8; expected <prefix>/<name>") from None
    header = loads_header(bytes(parts[1]), limits)
    heatmap = bytes(parts[2]) if len(parts) > 2 else b""
    overlay = bytes(parts[3]) if len(parts) > 3 else None
    return Received(topic_name, header, heatmap, overlay, len(parts))


def validate_verdict(msg: Received) -> None:
    """Check a received verdict before anything acts on it or names a file after it.

    The publisher is trusted only as far as the network is: a peer can send anything. InputError
    names the field that was wrong; the caller drops the message and counts it.
    """
    h = msg.header
    camera = check_camera_id(h.get("camera"))
    prefix, _, name = msg.topic.rpartition("/")
    if not prefix or name != camera:
        raise InputError(f"topic {msg.topic[:80]!r} does not end in the header's camera id {camera!r}")
    if not _is_int(h.get("frame_id"), 0, MAX_FRAME_ID):
        raise InputError(f"field 'frame_id' is {str(h.get('frame_id'))[:40]!r}; expected an integer 0..2**63-1")
    if h.get("verdict") not in VERDICTS:
        raise InputError(f"field 'verdict' is {str(h.get('verdict'))[:40]!r}; expected one of {VERDICTS}")
    if "seq" in h and not _is_int(h["seq"], 0, MAX_FRAME_ID):
        raise InputError(f"field 'seq' is {str(h['seq'])[:40]!r}; expected an integer >= 0")
    check_verdict_fields(h, msg.n_parts)


def verdict_header(
    *,
    camera: str,
    frame_id: int,
    captured_at: float,
    published_at: float,
    score: float | None,
    threshold: float | None,
    verdict: str,
    error: str | None,
    defects: list[dict[str, Any]],
    model: dict[str, Any],
    heatmap: dict | None,
    frame_shape: tuple[int, int] | None,
    overlay: bool,
) -> dict[str, Any]:
    """The header of a verdict from loose values (bridges, tools, tests); the pipeline uses header_of."""
    finite = score is not None and bool(np.isfinite(score))
    return header_of(Verdict(verdict, error, float(score) if finite else None, threshold), camera=camera,
                     frame_id=frame_id, captured_at=captured_at, published_at=published_at, defects=defects,
                     model=model, heatmap=heatmap, frame_shape=frame_shape, overlay=overlay)


def header_of(
    v: Verdict,
    *,
    camera: str,
    frame_id: int,
    captured_at: float,
    published_at: float,
    defects: list[dict[str, Any]],
    model: dict[str, Any],
    heatmap: dict | None,
    frame_shape: tuple[int, int] | None,
    overlay: bool,
) -> dict[str, Any]:
    """The JSON header (docs/messages.md) of a Verdict; `overlay` says whether a 4th part follows."""
    return {
        "schema": VERDICT_SCHEMA,
        "frame_id": int(frame_id),
        "camera": camera,
        "captured_at": captured_at,
        "published_at": published_at,
        "latency_ms": round((published_at - captured_at) * 1000.0, 3),
        "score": v.score,
        "score_normalised": v.score_normalised,
        "threshold": v.threshold,
        "verdict": v.verdict,
        "error": v.error,
        "defects": defects,
        "model": model,
        "heatmap": heatmap,
        "frame_shape": list(frame_shape) if frame_shape else None,
        "overlay": overlay,
    }
