"""Helpers for the bridge tests: a real Mosquitto on 127.0.0.1, an MQTT consumer, bridge processes."""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.cli import edge_somad_exe
from tests.helpers.poll import wait_notified
from tests.helpers.requires import missing_component
from tests.helpers.runtime import free_port

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
ROOT = "edge-somad/v1"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        missing_component("mosquitto", "scripts/setup.sh installs the Debian package `mosquitto` when run as "
                          "root; elsewhere: apt-get install mosquitto")
    return found


class Mosquitto:
    """`mosquitto -c CONF` on 127.0.0.1:PORT; persistence on so a stopped broker keeps its sessions."""

    def __init__(self, tmp: Path, extra: str = "allow_anonymous true\n") -> None:
        self.binary = mosquitto_binary()
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        self.conf = tmp / "mosquitto.conf"
        # max_queued_messages 0: no cap on what the broker queues for an offline persistent consumer.
        # user: as root, mosquitto would switch to user `mosquitto`, who cannot read pytest's 0700 temp folders
        # (persistence file, log, password file); as any other user the option is ignored.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{extra}user {getpass.getuser()}\npersistence true\n"
                             f"persistence_location {tmp}/\nmax_queued_messages 0\nmax_inflight_messages 0\n"
                             f"log_dest file {tmp}/mosquitto.log\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file (sessions, queues)
            self.proc.wait(10)


class Consumer:
    """A paho subscriber with a persistent session (clean_session=False), reconnecting on its own."""

    def __init__(self, port: int, client_id: str = "test-consumer", topic: str = f"{ROOT}/#",
                 auth: tuple[str, str] | None = None, ca_file: Path | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retain)
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        if auth is not None:
            self.client.username_pw_set(*auth)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.topic = topic
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list[tuple[str, bytes, bool]]], bool], timeout_s: float) -> bool:
        return wait_notified(self.cond, lambda: pred(self.messages), timeout_s)

    def json(self, kind: str) -> list[dict]:
        with self.cond:
            return [json.loads(p) for t, p, _ in self.messages if t.split("/")[3] == kind]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_bridge(args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([edge_somad_exe(), "bridge", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=log)


def run_against(bridge: subprocess.Popen, log_path: Path, scenario: Coroutine[Any, Any, T]) -> T:
    """Run an asyncio client scenario against a started bridge; the bridge must still be running after
    it (else its log is the failure message), and is stopped either way."""
    try:
        out = asyncio.run(scenario)
        assert bridge.poll() is None, log_path.read_text()
        return out
    finally:
        bridge.terminate()
        bridge.wait(10)


def verdict_count(kind: str = "DDATA") -> Callable[[list[tuple[str, bytes, bool]]], int]:
    return lambda msgs: sum(1 for t, _, _ in msgs if t.split("/")[3] == kind)


def make_tls_files(out: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool, san: list | None = None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("edge-somad test CA", ca_key, "edge-somad test CA", ca_key, True)
    server = cert("localhost", server_key, "edge-somad test CA", ca_key, False,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


def heartbeat(cameras: tuple[str, ...], status: str = "running", sha: str = "ab" * 32,
              health: dict[str, dict] | None = None) -> dict:
    """A heartbeat as `run` sends it, with the fields the bridges read (`health`: camera -> its block)."""
    from edge_somad.runtime.messaging import messages

    return {"schema": messages.HEARTBEAT_SCHEMA, "at": time.time(), "uptime_s": 1.0, "status": status,
            "model": {"name": "standin", "onnx_sha256": sha, "backend": "onnxruntime", "precision": "fp32",
                      "device": "cpu"},
            "cameras": {c: {"status": "running", "fps": 10.0, "capture_drops": 0,
                            **({"health": health[c]} if health and c in health else {})} for c in cameras}}


class BeatingPublisher:
    """A real Publisher on PORT that sends a heartbeat every 0.2 s for `cameras`, like a `run` between parts."""

    def __init__(self, port: int, cameras: tuple[str, ...], **publisher_options) -> None:
        import zmq

        from edge_somad.errors import ConfigError
        from edge_somad.runtime.messaging.publisher import Publisher

        # A restart in the same process: the previous publisher's socket closes asynchronously on the
        # shared ZeroMQ context, so its port can still be held for a moment. Retry the bind, bounded.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                self.pub = Publisher(f"tcp://127.0.0.1:{port}", "somad", sndhwm=1000, **publisher_options)
                break
            except ConfigError as exc:  # the publisher names the bind failure; its cause is the ZMQError
                cause = exc.__cause__
                in_use = isinstance(cause, zmq.ZMQError) and cause.errno == zmq.EADDRINUSE
                if not in_use or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.cameras = cameras
        self.sha = "ab" * 32  # the model the heartbeats name (a test swapping models changes it)
        self.health: dict[str, dict] = {}  # camera -> the health block its heartbeats carry
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(0.2):
            self.pub.publish_heartbeat(heartbeat(self.cameras, sha=self.sha, health=dict(self.health)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pub.close()


async def connect_opcua(url: str, tries: int = 100):  # -> asyncua.Client
    """An asyncua client connected to the bridge at `url`, retried while the bridge process starts."""
    import asyncio

    from asyncua import Client

    client = Client(url, timeout=10)
    for _ in range(tries):
        try:
            await client.connect()
            return client
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"no OPC UA server at {url}")
