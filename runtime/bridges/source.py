"""The ZeroMQ side of both bridges: read one or more `run` endpoints, decode, track what each box is.

Decoding and validation are the reference subscriber's (`subscriber.receive`), one StreamDecoder
per endpoint so each endpoint's `seq` gaps are counted on their own. On top of that, StreamInfo
keeps what a bridge announces about the stream (model, cameras, threshold, health), learnt from
heartbeats, status events and verdicts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import CurveClient, connect_subscriber
from edge_somad.runtime.messaging.intake import DEFAULT_LIMITS, DecodeLimits
from edge_somad.runtime.messaging.subscriber import StreamDecoder

# A bridge must never be the reason a verdict is lost upstream: its SUB sockets buffer this many
# messages (ZeroMQ's default, 1000, is under one minute of a 20 fps line with a slow broker link).
SOURCE_RCVHWM = 100_000


@dataclass(frozen=True)
class SourceConfig:
    endpoints: tuple[str, ...]
    topic: str = "somad/"
    curve: CurveClient | None = None  # one key set for every endpoint (run one bridge per key set)
    limits: DecodeLimits = DEFAULT_LIMITS  # what one message may hold (runtime/messaging/intake.py)


@dataclass
class StreamInfo:
    """What one endpoint has told us so far (None until its first heartbeat / verdict)."""

    endpoint: str
    model: dict[str, Any] | None = None
    threshold: float | None = None
    cameras: dict[str, str] = field(default_factory=dict)  # camera id -> status
    heartbeat_at: float | None = None  # time.monotonic() of the last heartbeat
    pipeline_status: str | None = None
    model_swaps: int = 0  # `model_swapped` events seen: each one means a new birth, whatever else changed
    health: dict[str, dict[str, Any]] = field(default_factory=dict)  # camera id -> its newest health block

    @property
    def known(self) -> bool:
        """True once a heartbeat or verdict said what this endpoint's `run` has (model, cameras)."""
        return self.model is not None or bool(self.cameras)

    def identity(self) -> tuple:
        """What a birth message announces: a change here means a new birth."""
        model = self.model or {}
        return (model.get("name"), model.get("onnx_sha256"), self.threshold, tuple(sorted(self.cameras)),
                self.model_swaps)

    def as_birth(self) -> dict[str, Any]:
        model = self.model or {}
        return {"endpoint": self.endpoint, "known": self.known, "threshold": self.threshold,
                "cameras": sorted(self.cameras),
                "model": {k: model.get(k) for k in ("name", "onnx_sha256", "backend", "precision", "device")}
                if self.model else None}


class StreamSource:
    """SUB sockets on every endpoint; `poll` returns the validated messages that arrived."""

    def __init__(self, config: SourceConfig) -> None:
        import zmq

        self.config = config
        if not config.endpoints:
            raise ConfigError("no --connect endpoint; expected at least one, e.g. tcp://line-pc:5556")
        self.sockets = []
        for ep in config.endpoints:
            try:
                self.sockets.append(connect_subscriber(ep, config.topic.encode(), config.curve, rcvhwm=SOURCE_RCVHWM,
                                                       max_part_bytes=config.limits.max_part_bytes))
            except ConfigError:
                self.close()
                raise
        self.decoders = [StreamDecoder(source=ep, limits=config.limits) for ep in config.endpoints]
        self.infos = [StreamInfo(ep) for ep in config.endpoints]
        self.poller = zmq.Poller()
        for sock in self.sockets:
            self.poller.register(sock, zmq.POLLIN)

    def poll(self, timeout_ms: int, max_batch: int = 1000) -> tuple[list[tuple[int, messages.Received]], bool]:
        """(endpoint index, message) pairs in arrival order, and whether a birth-relevant fact changed."""
        import zmq

        out: list[tuple[int, messages.Received]] = []
        before = [info.identity() for info in self.infos]
        ready = dict(self.poller.poll(timeout_ms))
        while ready and len(out) < max_batch:
            for i, sock in enumerate(self.sockets):
                if sock not in ready:
                    continue
                try:
                    raw = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    ready.pop(sock)
                    continue
                msg = self.decoders[i].decode(raw)
                if msg is not None:
                    self._learn(self.infos[i], msg)
                    out.append((i, msg))
        return out, before != [info.identity() for info in self.infos]

    @staticmethod
    def _learn(info: StreamInfo, msg: messages.Received) -> None:
        h = msg.header
        if msg.kind == "verdict":
            info.cameras.setdefault(h["camera"], "running")
            if isinstance(h.get("threshold"), (int, float)) and not isinstance(h.get("threshold"), bool):
                info.threshold = float(h["threshold"])
            if isinstance(h.get("model"), dict) and info.model is None:
                info.model = h["model"]
        elif msg.line_snapshot:
            info.heartbeat_at = time.monotonic()
            info.pipeline_status = str(h.get("status"))[:40]
            if isinstance(h.get("model"), dict):
                info.model = h["model"]
            cams = h.get("cameras")
            if isinstance(cams, dict):  # the current run's cameras: those of an earlier run are gone
                valid = {cam: state for cam, state in list(cams.items())[:1000]
                         if _valid_camera(cam) and isinstance(state, dict)}
                info.cameras = {cam: str(state.get("status"))[:40] for cam, state in valid.items()}
                info.health = {cam: state["health"] for cam, state in valid.items()
                               if isinstance(state.get("health"), dict)}
        elif msg.kind == "status" and h.get("event") == "camera" and _valid_camera(h.get("camera")):
            info.cameras[h["camera"]] = str(h.get("status"))[:40]
        elif msg.kind == "status" and h.get("event") == "health" and _valid_camera(h.get("camera")) \
                and isinstance(h.get("health"), dict):
            info.health = {**info.health, h["camera"]: h["health"]}  # a new dict: readers on another thread
        elif msg.kind == "status" and h.get("event") == "model_swapped":  # run put a new model in (docs/messages.md)
            info.model_swaps += 1
            if isinstance(h.get("model"), dict):
                info.model = h["model"]
            else:  # an event naming only the new sha256: the next heartbeat brings the rest
                new = h.get("new_sha256", h.get("new"))
                if _is_sha(new):
                    info.model = {**(info.model or {}), "onnx_sha256": new}
            threshold = h.get("threshold")  # the new model's: verdicts would teach it only with the next part
            if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold):
                info.threshold = float(threshold)

    @property
    def rejected(self) -> int:
        return sum(d.result.rejected for d in self.decoders)

    @property
    def missed(self) -> int:
        """Messages lost between `run` and this bridge (seq gaps upstream of the bridge)."""
        return sum(d.result.missed for d in self.decoders)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _is_sha(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _valid_camera(camera: object) -> bool:
    try:
        messages.check_camera_id(camera)
    except InputError:  # a hostile id is ignored here, as a verdict carrying it is rejected
        return False
    return True
