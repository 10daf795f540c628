"""`edge-somad bridge opcua`: an OPC UA server (asyncua) a PLC browses and subscribes to.

Address space (namespace NAMESPACE), names after OPC 40100 (Machine Vision) / OPC 40001-101
(Result Transfer) where one fits:

    Objects/<box>/                       SystemState, HeartbeatAge, Model, InternalConfigurationId,
                                         Drops (seq gaps upstream), Rejected
    Objects/<box>/Cameras/<camera>/      CameraStatus, Fps, CaptureDrops
        LastResult/                      ResultId ("camera/frame_id"), FrameId, CreationTime,
                                         PublishedTime, ResultEvaluation, Verdict, Score, Threshold,
                                         ScoreNormalised, DefectCount, ErrorText, LatencyMs
        Counters/                        PassCount, FailCount, ErrorCount

Every variable changes by a plain write, so a client's monitored item gets a data-change
notification per new value (OPC UA reports value changes: an unchanged Threshold does not notify).
Within one verdict ResultId is written last: a PLC that triggers on ResultId reads siblings that
already belong to it. Missing numbers (uncalibrated model, unreadable frame) are NaN.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_somad.errors import ConfigError
from edge_somad.runtime import messages
from edge_somad.runtime.bridge_source import SourceConfig, StreamSource, _valid_camera

log = logging.getLogger(__name__)

NAMESPACE = "urn:edge-somad:bridge"
# OPC 40001-101 ResultEvaluationEnum: 0 Undefined, 1 OK, 2 NotOK, 3 NotDecidable. An error verdict
# is NotDecidable, and a PLC must treat it like NotOK (docs/messages.md).
EVALUATION = {"pass": 1, "fail": 2, "error": 3}
NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a DateTime before the first result
RESULT_FIELDS = (  # browse name, variant type name, default
    ("FrameId", "Int64", 0), ("CreationTime", "DateTime", NEVER), ("PublishedTime", "DateTime", NEVER),
    ("ResultEvaluation", "Int32", 0), ("Verdict", "String", ""), ("Score", "Double", math.nan),
    ("Threshold", "Double", math.nan), ("ScoreNormalised", "Double", math.nan), ("DefectCount", "Int32", 0),
    ("ErrorText", "String", ""), ("LatencyMs", "Double", math.nan), ("ResultId", "String", ""))


@dataclass(frozen=True)
class OpcuaConfig:
    source: SourceConfig
    box: str
    endpoint: str = "opc.tcp://127.0.0.1:4840/edge-somad/"
    username: str | None = None
    password: str | None = None
    certificate: Path | None = None  # with private_key: Basic256Sha256 Sign&Encrypt only
    private_key: Path | None = None
    cameras: tuple[str, ...] = ()  # shown before their first message, so a PLC program can bind at start
    health_interval_s: float = 1.0


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _time(value: Any) -> datetime:
    t = _number(value)
    return datetime.fromtimestamp(t, timezone.utc) if math.isfinite(t) else NEVER


def result_values(h: dict[str, Any]) -> dict[str, Any]:
    """LastResult's variables for one validated verdict header (the ZeroMQ header's values)."""
    defects = h.get("defects") if isinstance(h.get("defects"), list) else []
    return {"FrameId": int(h["frame_id"]), "CreationTime": _time(h.get("captured_at")),
            "PublishedTime": _time(h.get("published_at")), "ResultEvaluation": EVALUATION[h["verdict"]],
            "Verdict": h["verdict"], "Score": _number(h.get("score")), "Threshold": _number(h.get("threshold")),
            "ScoreNormalised": _number(h.get("score_normalised")), "DefectCount": len(defects),
            "ErrorText": str(h.get("error") or "")[:1000], "LatencyMs": _number(h.get("latency_ms")),
            "ResultId": f"{h['camera']}/{h['frame_id']}"}


class _Passwords:
    """asyncua user manager: one user name and password (compared in constant time)."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        import hmac

        from asyncua.crypto.permission_rules import User, UserRole

        if username is not None and password is not None and hmac.compare_digest(
                f"{username}\0{password}".encode(), f"{self.username}\0{self.password}".encode()):
            return User(role=UserRole.User, name=username)
        return None


class OpcuaBridge:
    def __init__(self, config: OpcuaConfig) -> None:
        self.config = config
        self.source = StreamSource(config.source)
        self.vars: dict[tuple[str, ...], tuple[Any, str]] = {}  # (camera | "", [group,] name) -> (Node, variant type)
        self.counts: dict[str, dict[str, int]] = {}

    async def _var(self, parent, key: tuple[str, ...], vtype: str, value: Any):
        """A read-only variable with a stable string NodeId: ns=<NAMESPACE>;s=<box>.<camera>.<group>.<name>."""
        from asyncua import ua

        path = ".".join((self.config.box, *(k for k in key if k)))
        node = await parent.add_variable(ua.NodeId(path, self.idx), key[-1], value,
                                         varianttype=getattr(ua.VariantType, vtype))
        self.vars[key] = (node, vtype)
        return node

    async def _write(self, key: tuple[str, ...], value: Any) -> None:
        from asyncua import ua

        node, vtype = self.vars[key]
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value, getattr(ua.VariantType,
                                                                                                      vtype))))

    async def setup(self):
        from asyncua import Server, ua

        cfg = self.config
        self.server = Server(user_manager=_Passwords(cfg.username, cfg.password or "") if cfg.username else None)
        await self.server.init()
        self.server.set_endpoint(cfg.endpoint)
        self.server.set_server_name(f"edge-somad bridge ({cfg.box})")
        if cfg.certificate is not None:
            await self.server.load_certificate(str(cfg.certificate))
            await self.server.load_private_key(str(cfg.private_key))
            self.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        else:
            self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if cfg.username:
            self.server.set_identity_tokens([ua.UserNameIdentityToken])  # no anonymous sessions
        self.idx = await self.server.register_namespace(NAMESPACE)
        self.box = await self.server.nodes.objects.add_object(self.idx, cfg.box)
        for name, vtype, value in (("SystemState", "String", "unknown"), ("HeartbeatAge", "Double", math.nan),
                                   ("Model", "String", ""), ("InternalConfigurationId", "String", ""),
                                   ("Drops", "Int64", 0), ("Rejected", "Int64", 0)):
            await self._var(self.box, ("", name), vtype, value)
        self.cameras = await self.box.add_folder(self.idx, "Cameras")
        for camera in cfg.cameras:
            await self._camera(camera)

    async def _camera(self, camera: str) -> None:
        if camera in self.counts:
            return
        obj = await self.cameras.add_object(self.idx, camera)
        for name, vtype, value in (("CameraStatus", "String", "unknown"), ("Fps", "Double", math.nan),
                                   ("CaptureDrops", "Int64", 0)):
            await self._var(obj, (camera, name), vtype, value)
        last = await obj.add_object(self.idx, "LastResult")
        for name, vtype, value in RESULT_FIELDS:
            await self._var(last, (camera, "LastResult", name), vtype, value)
        counters = await obj.add_object(self.idx, "Counters")
        for name in ("PassCount", "FailCount", "ErrorCount"):
            await self._var(counters, (camera, "Counters", name), "Int64", 0)
        self.counts[camera] = {"pass": 0, "fail": 0, "error": 0}

    async def on_message(self, msg: messages.Received) -> None:
        h = msg.header
        if msg.kind == "verdict":
            camera = h["camera"]
            await self._camera(camera)
            for name, value in result_values(h).items():  # ResultId last (RESULT_FIELDS order)
                await self._write((camera, "LastResult", name), value)
            self.counts[camera][h["verdict"]] += 1
            name = {"pass": "PassCount", "fail": "FailCount", "error": "ErrorCount"}[h["verdict"]]
            await self._write((camera, "Counters", name), self.counts[camera][h["verdict"]])
        elif msg.kind == "heartbeat" or msg.kind == "status":
            cams = h.get("cameras") if isinstance(h.get("cameras"), dict) else {}
            for camera, state in cams.items():
                if not isinstance(state, dict) or not _valid_camera(camera):
                    continue
                await self._camera(camera)
                await self._write((camera, "CameraStatus"), str(state.get("status"))[:40])
                await self._write((camera, "Fps"), _number(state.get("fps")))
                drops = state.get("capture_drops")
                await self._write((camera, "CaptureDrops"), drops if isinstance(drops, int) else 0)
            if h.get("event") == "camera" and _valid_camera(h.get("camera")):
                await self._camera(h["camera"])
                await self._write((h["camera"], "CameraStatus"), str(h.get("status"))[:40])

    async def health(self) -> None:
        """Box-level variables: refreshed every health_interval_s and after each batch."""
        infos = [i for i in self.source.infos if i.heartbeat_at is not None]
        if infos:
            newest = max(infos, key=lambda i: i.heartbeat_at or 0.0)
            await self._write(("", "HeartbeatAge"), round(time.monotonic() - (newest.heartbeat_at or 0.0), 3))
            await self._write(("", "SystemState"), newest.pipeline_status or "unknown")
        models = [i.model for i in self.source.infos if i.model]
        if models:
            await self._write(("", "Model"), str(models[0].get("name"))[:200])
            await self._write(("", "InternalConfigurationId"), str(models[0].get("onnx_sha256"))[:200])
        await self._write(("", "Drops"), self.source.missed)
        await self._write(("", "Rejected"), self.source.rejected)

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        await self.setup()
        async with self.server:
            log.info("OPC UA server on %s (namespace %s, security %s)", self.config.endpoint, NAMESPACE,
                     "Basic256Sha256" if self.config.certificate else "none")
            if started is not None:
                started.set()
            last_health = 0.0
            try:
                while not stop.is_set():
                    batch, _ = await asyncio.to_thread(self.source.poll, 100)
                    for _, msg in batch:
                        await self.on_message(msg)
                    if batch or time.monotonic() - last_health >= self.config.health_interval_s:
                        await self.health()
                        last_health = time.monotonic()
            finally:
                self.source.close()


def serve(config: OpcuaConfig) -> None:
    """Blocking: serve until SIGTERM/SIGINT."""

    if not log.isEnabledFor(logging.DEBUG):
        # asyncua logs every session at INFO, and logs its own traceback for a port in use before raising
        # it; ours says the same in one line (below), so its server logger speaks only when debugging.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        logging.getLogger("asyncua.server.server").setLevel(logging.CRITICAL)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await OpcuaBridge(config).run(stop)

    try:
        asyncio.run(main())
    except (OSError, ValueError) as exc:  # port taken, address not on this host, unreadable certificate
        raise ConfigError(f"cannot serve OPC UA on {config.endpoint}: {exc}; pick a free port/address with "
                          "--endpoint (and check --certificate/--private-key)") from exc
