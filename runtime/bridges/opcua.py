"""`edge-somad bridge opcua`: an OPC UA server (asyncua) a PLC browses and subscribes to.

Address space (namespace NAMESPACE, string NodeIds `<box>.<camera>.<...>`: opcua_model.py),
names after OPC 40100 (Machine Vision) / OPC 40001-101 (Result Transfer) where one fits:

    Objects/<box>/                       SystemState, HeartbeatAge, Model, InternalConfigurationId,
                                         Drops (verdicts missed upstream), Rejected,
                                         Trigger(PartId, DeadlineMs) with --control (opcua_trigger.py)
    Objects/<box>/Cameras/<camera>/      CameraStatus, Fps, CaptureDrops
        LastResult/                      Result (ResultDataType: the whole result, one atomic value),
                                         ResultJson (the same as one JSON string), and for HMIs the
                                         fields one by one (ResultId written last)
        Counters/                        PassCount, FailCount, ErrorCount, MissedCount
        VisionSystem                     OPC 40100's VisionSystemType: state machines, SystemState and
                                         ResultManagement/Results/LastResult in the spec's types (opcua_vision.py)
        Alarms/<check>                   line health as OffNormalAlarmType conditions, events on the
                                         Server object, Acknowledge (opcua_alarms.py)

When an endpoint has sent nothing for `stale_after_s` (its heartbeat comes every second),
SystemState and its cameras' CameraStatus say "offline" (or the final status `run` sent on a
clean stop) and their values turn UncertainLastUsableValue; the next message makes them Good.
Missing numbers (uncalibrated model, unreadable frame) are NaN.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_somad.errors import ConfigError
from edge_somad.runtime.bridges.opcua_alarms import OpcuaAlarms
from edge_somad.runtime.bridges.opcua_model import (  # noqa: F401 - re-exported for callers and tests
    GOOD,
    NAMESPACE,
    RESULT_FIELDS,
    UNCERTAIN,
    OpcuaModel,
    result_values,
)
from edge_somad.runtime.bridges.opcua_vision import VisionSystems, import_machine_vision, quiet
from edge_somad.runtime.bridges.recover import Recovery
from edge_somad.runtime.bridges.source import SourceConfig, StreamSource, _valid_camera
from edge_somad.runtime.messaging import messages

log = logging.getLogger(__name__)


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
    stale_after_s: float = 3.0  # silence (no heartbeat, no verdict) after which values are Uncertain
    allow_plaintext_password: bool = False  # a password over SecurityPolicy None crosses the wire readable
    control: str | None = None  # `run --control` endpoint: adds the Trigger method (opcua_trigger.py)
    trigger_camera: str | None = None  # the camera Trigger inspects (None: the runtime's only camera)

    def __post_init__(self) -> None:
        if self.username is not None and self.certificate is None and not self.allow_plaintext_password:
            raise ConfigError("--username without --certificate/--private-key: with SecurityPolicy None the "
                              "password crosses the network in clear text; give the server a certificate, or "
                              "add --allow-plaintext-password (loopback or an isolated cell network only)")
        if not self.stale_after_s > 0:
            raise ConfigError(f"--stale-after {self.stale_after_s}; expected seconds > 0 (heartbeats come every 1 s)")


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
        # Counted, not replayed: a PLC acts on the part in front of it, so an old result must never
        # become LastResult again. MissedCount/Drops say that results went by unseen.
        self.recovery = Recovery(config.source.endpoints)
        self.counts: dict[str, dict[str, int]] = {}
        self.camera_endpoint: dict[str, int] = {}  # camera -> index of the endpoint that reported it last
        self.seen_at: dict[int, float] = {}  # endpoint index -> time.monotonic() of its last message
        self.final: dict[int, dict[str, Any]] = {}  # endpoint index -> its final status, until it speaks again
        self.stale: dict[str, bool] = {}  # camera -> values marked Uncertain
        self.waiting: dict[int, int | None] = {}  # endpoint -> triggers waiting (None: free-running)

    async def setup(self) -> None:
        from asyncua import Server, ua

        cfg = self.config
        self.server = Server(user_manager=_Passwords(cfg.username, cfg.password or "") if cfg.username else None)
        # ConditionRefresh (clients call it on connect to get the alarms that are already there);
        # the number is the Severity of its RefreshStart/End events.
        self.server.iserver.bind_condition_methods = 100
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
        idx = await self.server.register_namespace(NAMESPACE)
        mv, self.nodeset_s = await import_machine_vision(self.server)  # first: see its docstring
        log.info("OPC 40100 MachineVision NodeSet imported in %.2f s", self.nodeset_s)
        self.model = OpcuaModel(self.server, idx, cfg.box)
        with quiet("asyncua.ua.uatypes"):  # our ResultDataType shares the spec's name (opcua_vision.quiet)
            await self.model.setup()
        self.alarms = OpcuaAlarms(self.server, idx, self.model._id, self._camera_node)
        await self.alarms.setup()
        self.vision = VisionSystems(self.server, idx, mv, self.model._id)
        if cfg.control is not None:
            from edge_somad.runtime.bridges.opcua_trigger import add_trigger_method

            await add_trigger_method(self.model, cfg.control, cfg.trigger_camera)
        for camera in cfg.cameras:
            await self._camera(camera)

    async def _camera(self, camera: str) -> None:
        if camera not in self.counts:
            await self.model.camera(camera)
            await self.vision.camera(camera, self.model.camera_nodes[camera])
            self.counts[camera] = {"pass": 0, "fail": 0, "error": 0}

    async def _camera_node(self, camera: str) -> Any:
        await self._camera(camera)
        return self.model.camera_nodes[camera]

    async def on_message(self, endpoint: int, msg: messages.Received) -> None:
        h, write = msg.header, self.model.write
        self.seen_at[endpoint] = time.monotonic()
        if msg.kind == "verdict":
            camera = h["camera"]
            await self._camera(camera)
            self.camera_endpoint[camera] = endpoint
            self.recovery.see(endpoint, h)
            await write((camera, "Counters", "MissedCount"), self.recovery.missed_by_camera.get(camera, 0))
            await self._fresh(camera)
            await self.model.result(h)
            await self.vision.result(camera, h, self.model.result_class(**result_values(h)))
            self.counts[camera][h["verdict"]] += 1
            name = {"pass": "PassCount", "fail": "FailCount", "error": "ErrorCount"}[h["verdict"]]
            await write((camera, "Counters", name), self.counts[camera][h["verdict"]])
            return
        if msg.kind == "heartbeat":
            self.final.pop(endpoint, None)
            # `run --trigger` says how many triggers wait for a frame: OPC 40100's Ready / SingleExecution
            waiting = h["triggers"].get("waiting") if isinstance(h.get("triggers"), dict) else None
            self.waiting[endpoint] = waiting if isinstance(waiting, int) and not isinstance(waiting, bool) else None
        elif msg.kind == "status" and h.get("event") == "final":
            self.final[endpoint] = h
        cams = h.get("cameras") if isinstance(h.get("cameras"), dict) else {}
        for camera, state in cams.items():
            if not isinstance(state, dict) or not _valid_camera(camera):
                continue
            await self._camera(camera)
            self.camera_endpoint[camera] = endpoint
            await self._fresh(camera)
            await write((camera, "CameraStatus"), str(state.get("status"))[:40])
            await write((camera, "Fps"), _number(state.get("fps")))
            drops = state.get("capture_drops")
            await write((camera, "CaptureDrops"), drops if isinstance(drops, int) and 0 <= drops < 2**63 else 0)
            if "health" in state:
                await self.alarms.update(camera, state["health"])
        if h.get("event") == "camera" and _valid_camera(h.get("camera")):
            await self._camera(h["camera"])
            self.camera_endpoint[h["camera"]] = endpoint
            await write((h["camera"], "CameraStatus"), str(h.get("status"))[:40])
        if h.get("event") == "health" and _valid_camera(h.get("camera")):
            await self._camera(h["camera"])
            await self.alarms.update(h["camera"], h.get("health"))

    async def _fresh(self, camera: str) -> None:
        if self.stale.get(camera):
            self.stale[camera] = False
            await self.model.mark(camera, GOOD)

    def _alive(self, endpoint: int, now: float) -> bool:
        seen = self.seen_at.get(endpoint)
        return seen is not None and now - seen <= self.config.stale_after_s

    async def health(self) -> None:
        """Box-level variables and staleness: every health_interval_s and after each batch."""
        now, write = time.monotonic(), self.model.write
        infos = self.source.infos
        heard = [i for i in range(len(infos)) if i in self.seen_at]
        alive = [i for i in heard if self._alive(i, now)]
        beats = [info.heartbeat_at for info in infos if info.heartbeat_at is not None]
        if beats:
            await write(("", "HeartbeatAge"), round(now - max(beats), 3))
        if alive:
            newest = max(alive, key=lambda i: infos[i].heartbeat_at or 0.0)
            state = self.final[newest].get("status") if newest in self.final else infos[newest].pipeline_status
        elif any(i in self.final for i in heard):  # stopped cleanly: say how, not just "offline"
            state = next(self.final[i].get("status") for i in heard if i in self.final)
        else:
            state = "offline" if heard else "unknown"
        await write(("", "SystemState"), str(state or "unknown")[:40])
        models = [i.model for i in infos if i.model]
        if models:
            await write(("", "Model"), str(models[0].get("name"))[:200])
            await write(("", "InternalConfigurationId"), str(models[0].get("onnx_sha256"))[:200])
        await write(("", "Drops"), self.missed_total())
        await write(("", "Rejected"), self.source.rejected)
        for camera in self.counts:
            endpoint = self.camera_endpoint.get(camera)
            link = ("waiting" if endpoint is None else "ended" if endpoint in self.final
                    else "live" if self._alive(endpoint, now) else "offline")
            waiting = self.waiting.get(endpoint) if endpoint is not None else None
            await self.vision.state(camera, self.model.values[(camera, "CameraStatus")][0], link, waiting)
        for camera, endpoint in self.camera_endpoint.items():
            if not self._alive(endpoint, now) and not self.stale.get(camera):
                self.stale[camera] = True
                final = self.final.get(endpoint, {}).get("cameras")
                ended = final.get(camera) if isinstance(final, dict) else None
                status = ended.get("status") if isinstance(ended, dict) else None
                await write((camera, "CameraStatus"), str(status or "offline")[:40])
                await self.model.mark(camera, UNCERTAIN)

    def missed_total(self) -> int:
        return self.recovery.missed

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
                    for endpoint, msg in batch:
                        await self.on_message(endpoint, msg)
                    if batch or time.monotonic() - last_health >= self.config.health_interval_s:
                        await self.health()
                        last_health = time.monotonic()
            finally:
                self.source.close()


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


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
