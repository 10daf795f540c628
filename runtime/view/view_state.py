"""What `edge-somad view` shows, per camera tile, built from received messages (no web code here).

The ZeroMQ threads call `ViewState.apply` with messages already decoded and checked by
runtime/messaging/subscriber.receive; web clients call `ViewState.changes` for what changed since they last
looked. Pictures are rendered lazily, once per new verdict and only when a client asks (a few times
a second), so a 30 fps line does not pay a JPEG encode per frame for a page nobody may be watching.

Each endpoint has a link state the page shows on every tile: `waiting` (nothing yet), `live`,
`stale` (no message for `stale_s`, 3 s: `run` sends a heartbeat every second, so it died, hangs or
the network is gone), `ended` (its final status arrived), `failed` (the receiver thread broke and
is restarting). A new run on an endpoint (its start time `at - uptime_s` moved, or a topic's `seq`
went down) resets that endpoint's counters, so a restart never mixes two runs' numbers.
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
from edge_somad.runtime.health.alarms import AlarmBook
from edge_somad.runtime.messaging import messages

STALE_S = 3.0  # no message for this long: the endpoint is shown stale (heartbeats come every second)
NEW_RUN_S = 2.0  # a heartbeat whose run start (at - uptime_s) moved by more: `run` was restarted
LIVE_WIDTH = 640  # px: the live picture is re-encoded at most this wide
THUMB_WIDTH = 160
STRIP_N = 30  # results in a tile's strip: the last half minute of a 1 part/s line


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
    strip: deque = field(default_factory=deque)  # the last results, oldest first: {id, frame_id, part_id, verdict}
    shift: dict[str, int] = field(default_factory=lambda: {v: 0 for v in messages.VERDICTS})  # since shift start
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
            "strip": list(self.strip), "shift": dict(self.shift),
        }
        if with_image:
            out["image"] = self.image()
        if with_fails:
            out["fails"] = list(self.fails)
        return out


@dataclass
class Link:
    """What the view knows about one endpoint's stream (not its cameras)."""

    last: float | None = None  # time.time() of the newest accepted message
    run_started: float | None = None  # the run's start (heartbeat at - uptime_s)
    runs: int = 0  # runs seen on this endpoint (a restart adds one)
    ended: str | None = None  # the final status's reason, until the next message
    error: str | None = None  # the receiver thread's last failure
    restarts: int = 0  # receiver restarts after a failure
    rejected: int = 0
    missed: int = 0
    seqs: dict[str, int] = field(default_factory=dict)  # newest seq per topic, to see a restart

    def state(self, now: float, stale_s: float, alive: bool) -> str:
        if not alive or (self.error is not None and (self.last is None or now - self.last > stale_s)):
            return "failed"
        if self.last is None:
            return "waiting"
        if self.ended is not None:
            return "ended"
        return "stale" if now - self.last > stale_s else "live"


class ViewState:
    """All tiles, keyed by camera id (prefixed by the endpoint when several runs are watched)."""

    def __init__(self, endpoints: list[str], n_fails: int = 8, stale_s: float = STALE_S,
                 strip_n: int = STRIP_N) -> None:
        self.endpoints = endpoints
        self.n_fails, self.strip_n = n_fails, strip_n
        self.shift_start = time.time()
        self.book = AlarmBook()  # line health as alarms an operator acknowledges (runtime/health/alarms.py)
        self.stale_s = stale_s
        self.tiles: dict[str, Tile] = {}
        self.links = {e: Link() for e in endpoints}
        self.alive: dict[str, Any] = {}  # endpoint -> callable: is its receiver thread running
        self.lock = threading.Lock()

    def receiver_failed(self, endpoint: str, reason: str) -> None:
        with self.lock:
            link = self.links[endpoint]
            link.error, link.restarts = reason[:300], link.restarts + 1

    def counts(self, endpoint: str, rejected: int, missed: int) -> None:
        with self.lock:
            self.links[endpoint].rejected, self.links[endpoint].missed = rejected, missed

    def _run_check(self, endpoint: str, msg: messages.Received) -> None:
        """Start a new run for the endpoint when the message says `run` was restarted."""
        link, h = self.links[endpoint], msg.header
        seq, prev = h.get("seq"), link.seqs.get(msg.topic)
        restarted = isinstance(seq, int) and prev is not None and seq <= prev
        start = None
        if msg.line_snapshot:
            at, up = h.get("at"), h.get("uptime_s")
            if isinstance(at, (int, float)) and isinstance(up, (int, float)):
                start = float(at) - float(up)
                restarted = restarted or (link.run_started is not None and abs(start - link.run_started) > NEW_RUN_S)
        if restarted:
            self._new_run(endpoint, start)
        elif start is not None and link.run_started is None:
            link.run_started, link.runs = start, max(1, link.runs)
        if isinstance(seq, int) and (msg.topic in link.seqs or len(link.seqs) < 1000):
            link.seqs[msg.topic] = seq

    def _new_run(self, endpoint: str, start: float | None) -> None:
        link = self.links[endpoint]
        link.run_started, link.runs, link.ended = start, link.runs + 1, None
        link.seqs = {}
        for tile in self.tiles.values():
            if tile.endpoint == endpoint:
                tile.counts = {v: 0 for v in messages.VERDICTS}
                tile.latencies.clear()
                tile.fails.clear()
                tile.strip.clear()
                tile.last, tile._latest, tile._image = None, None, None
                tile.version += 1
                tile.frame_version += 1
                tile.fails_version += 1

    def _tile(self, endpoint: str, camera: str) -> Tile:
        key = camera if len(self.endpoints) == 1 else f"{endpoint}/{camera}"
        tile = self.tiles.get(key)
        if tile is None:
            tile = self.tiles[key] = Tile(key, camera, endpoint, fails=deque(maxlen=self.n_fails),
                                          strip=deque(maxlen=self.strip_n))
        return tile

    def apply(self, endpoint: str, msg: messages.Received) -> None:
        with self.lock:
            link = self.links[endpoint]
            self._run_check(endpoint, msg)
            link.last, link.ended, link.error = time.time(), None, None
            h = msg.header
            if msg.kind == "status" and h.get("event") == "final":
                link.ended = str(h.get("reason"))[:200]
            if msg.kind == "verdict":
                self._verdict(self._tile(endpoint, h["camera"]), msg)
            elif msg.line_snapshot:
                cams = h.get("cameras")
                for cid, info in (cams.items() if isinstance(cams, dict) else ()):
                    if isinstance(info, dict) and _is_id(cid):
                        tile = self._tile(endpoint, cid)
                        tile.health, tile.camera_status = info.get("health"), info.get("status")
                        tile.fps = info.get("fps")
                        self.book.update(tile.key, tile.health)
                        tile.version += 1
            elif msg.kind == "status" and _is_id(h.get("camera")):
                tile = self._tile(endpoint, h["camera"])
                if h.get("event") == "health" and isinstance(h.get("health"), dict):
                    tile.health = h["health"]
                    self.book.update(tile.key, tile.health)
                elif h.get("event") == "camera":
                    tile.camera_status = h.get("status")
                tile.version += 1

    def _verdict(self, tile: Tile, msg: messages.Received) -> None:
        h = msg.header
        verdict = h["verdict"]
        tile.counts[verdict] += 1
        tile.shift[verdict] += 1
        part = h.get("part_id") if isinstance(h.get("part_id"), str) else None  # a triggered inspection's part
        tile.strip.append({"id": part[:40] if part else f"#{h['frame_id']}", "frame_id": h["frame_id"],
                           "part_id": part[:40] if part else None, "verdict": verdict})
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
            now = time.time()
            links = {e: {"state": link.state(now, self.stale_s, self.alive.get(e, lambda: True)()),
                         "last": link.last, "run_started": link.run_started, "runs": link.runs,
                         "ended": link.ended, "error": link.error, "restarts": link.restarts,
                         "rejected": link.rejected, "missed": link.missed}
                     for e, link in self.links.items()}
            shift = {v: sum(t.shift[v] for t in self.tiles.values()) for v in messages.VERDICTS}
            return {"type": "update", "tiles": out, "total_verdicts": total, "endpoints": links, "now": now,
                    "stale_s": self.stale_s, "shift": {"start": self.shift_start, "counts": shift},
                    "alarms": [a.as_json() for a in self.book.retained()]}

    def reset_shift(self) -> float:
        """A new shift: every tile's shift counters back to 0 (the run's own counts stay)."""
        with self.lock:
            self.shift_start = time.time()
            for tile in self.tiles.values():
                tile.shift = {v: 0 for v in messages.VERDICTS}
                tile.version += 1
            return self.shift_start

    def acknowledge(self, key: str, event_id: bytes, comment: str = "") -> dict[str, Any]:
        """An operator acknowledges the alarm they saw (its event id); raises alarms.AckError otherwise."""
        with self.lock:
            return self.book.acknowledge(key, event_id, comment).as_json()


def _is_id(value: object) -> bool:
    try:
        messages.check_camera_id(value)
    except InputError:
        return False
    return True
