"""What `edge-somad view` shows, per camera tile, built from received messages (no web code here).

The ZeroMQ threads call `ViewState.apply` with messages already decoded and checked by
runtime/subscriber.receive; web clients call `ViewState.changes` for what changed since they last
looked. Pictures are rendered lazily, once per new verdict and only when a client asks (a few times
a second), so a 30 fps line does not pay a JPEG encode per frame for a page nobody may be watching.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge_somad.errors import InputError
from edge_somad.runtime import messages

LIVE_WIDTH = 640  # px: the live picture is re-encoded at most this wide
THUMB_WIDTH = 160


def _jpeg_url(img: np.ndarray, width: int) -> str:
    if img.shape[1] > width:
        img = cv2.resize(img, (width, max(1, round(img.shape[0] * width / img.shape[1]))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def picture(msg: messages.Received, width: int) -> str | None:
    """The verdict's overlay JPEG (frame + heat + defect boxes, `run --overlay`), else its heatmap in
    colour (model space: no boxes, they are in frame pixels), as a data URL; None when neither came."""
    img = None
    if msg.overlay:
        img = cv2.imdecode(np.frombuffer(msg.overlay, np.uint8), cv2.IMREAD_COLOR)
    if img is None and msg.header.get("heatmap"):
        try:
            amap = messages.decode_heatmap(msg.header["heatmap"], msg.heatmap)
        except (InputError, ValueError, TypeError):
            amap = None
        threshold = msg.header.get("threshold")
        if amap is not None and isinstance(threshold, (int, float)) and threshold > 0:
            img = cv2.applyColorMap(messages.normalise_map(amap, float(threshold)), cv2.COLORMAP_JET)
    return None if img is None else _jpeg_url(img, width)


@dataclass
class Tile:
    key: str
    camera: str
    endpoint: str
    counts: dict[str, int] = field(default_factory=lambda: {v: 0 for v in messages.VERDICTS})
    latencies: deque = field(default_factory=lambda: deque(maxlen=200))
    last: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    camera_status: str | None = None
    fps: float | None = None
    fails: deque = field(default_factory=deque)
    version: int = 0  # anything changed
    frame_version: int = 0  # a new verdict (so a new picture)
    fails_version: int = 0
    _latest: messages.Received | None = None
    _image: str | None = None
    _image_version: int = -1

    def image(self) -> str | None:
        if self._latest is not None and self._image_version != self.frame_version:
            self._image, self._image_version = picture(self._latest, LIVE_WIDTH), self.frame_version
        return self._image

    def to_json(self, with_image: bool, with_fails: bool) -> dict[str, Any]:
        total = sum(self.counts.values())
        lat = np.asarray(self.latencies, np.float64)
        out: dict[str, Any] = {
            "key": self.key, "camera": self.camera, "endpoint": self.endpoint, "version": self.version,
            "counts": dict(self.counts), "total": total,
            "fail_rate": self.counts["fail"] / total if total else None,
            "latency_ms": {"last": float(lat[-1]), "mean": float(lat.mean()), "p95": float(np.percentile(lat, 95))}
            if lat.size else None,
            "last": self.last, "health": self.health, "camera_status": self.camera_status, "fps": self.fps,
        }
        if with_image:
            out["image"] = self.image()
        if with_fails:
            out["fails"] = list(self.fails)
        return out


class ViewState:
    """All tiles, keyed by camera id (prefixed by the endpoint when several runs are watched)."""

    def __init__(self, endpoints: list[str], n_fails: int = 8) -> None:
        self.endpoints = endpoints
        self.n_fails = n_fails
        self.tiles: dict[str, Tile] = {}
        self.last_message: dict[str, float] = {}
        self.lock = threading.Lock()

    def _tile(self, endpoint: str, camera: str) -> Tile:
        key = camera if len(self.endpoints) == 1 else f"{endpoint}/{camera}"
        tile = self.tiles.get(key)
        if tile is None:
            tile = self.tiles[key] = Tile(key, camera, endpoint, fails=deque(maxlen=self.n_fails))
        return tile

    def apply(self, endpoint: str, msg: messages.Received) -> None:
        with self.lock:
            self.last_message[endpoint] = time.time()
            h = msg.header
            if msg.kind == "verdict":
                self._verdict(self._tile(endpoint, h["camera"]), msg)
            elif msg.kind == "heartbeat" or (msg.kind == "status" and h.get("event") == "final"):
                cams = h.get("cameras")
                for cid, info in (cams.items() if isinstance(cams, dict) else ()):
                    if isinstance(info, dict) and _is_id(cid):
                        tile = self._tile(endpoint, cid)
                        tile.health, tile.camera_status = info.get("health"), info.get("status")
                        tile.fps = info.get("fps")
                        tile.version += 1
            elif msg.kind == "status" and _is_id(h.get("camera")):
                tile = self._tile(endpoint, h["camera"])
                if h.get("event") == "health" and isinstance(h.get("health"), dict):
                    tile.health = h["health"]
                elif h.get("event") == "camera":
                    tile.camera_status = h.get("status")
                tile.version += 1

    def _verdict(self, tile: Tile, msg: messages.Received) -> None:
        h = msg.header
        verdict = h["verdict"]
        tile.counts[verdict] += 1
        if isinstance(h.get("latency_ms"), (int, float)):
            tile.latencies.append(float(h["latency_ms"]))
        defects = h.get("defects") if isinstance(h.get("defects"), list) else []
        tile.last = {"frame_id": h["frame_id"], "verdict": verdict, "score": h.get("score"),
                     "score_normalised": h.get("score_normalised"), "error": h.get("error"),
                     "defects": len(defects), "captured_at": h.get("captured_at")}
        tile.version += 1
        # A pass sent without a picture (run --heatmap-passes) keeps the last one on screen.
        if verdict != "pass" or msg.overlay or h.get("heatmap"):
            tile._latest = msg
            tile.frame_version += 1
        if verdict == "fail":
            tile.fails.appendleft({"frame_id": h["frame_id"], "score_normalised": h.get("score_normalised"),
                                   "at": h.get("captured_at"), "image": picture(msg, THUMB_WIDTH)})
            tile.fails_version += 1

    def changes(self, seen: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
        """Tiles changed since `seen` (key -> (version, image version, fails version)), updated in place."""
        with self.lock:
            out = {}
            for key, tile in self.tiles.items():
                version, image_v, fails_v = seen.get(key, (-1, -1, -1))
                if tile.version == version:
                    continue
                out[key] = tile.to_json(with_image=tile.frame_version != image_v,
                                        with_fails=tile.fails_version != fails_v)
                seen[key] = (tile.version, tile.frame_version, tile.fails_version)
            total = sum(sum(t.counts.values()) for t in self.tiles.values())
            return {"type": "update", "tiles": out, "total_verdicts": total,
                    "endpoints": {e: self.last_message.get(e) for e in self.endpoints}, "now": time.time()}


def _is_id(value: object) -> bool:
    try:
        messages.check_camera_id(value)
    except InputError:
        return False
    return True
