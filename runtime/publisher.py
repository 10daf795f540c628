"""ZeroMQ publisher of verdicts, heartbeats and status. Never blocks the inspection loop.

Isolation: each subscriber has its own queue (pipe) of `sndhwm` messages inside ZeroMQ. The
socket is lossy (no XPUB_NODROP): when one subscriber's queue is full, ZeroMQ drops messages for
that subscriber only, and every other subscriber still gets everything, heartbeats and the final
status included. (With XPUB_NODROP one stalled peer made every send fail, for everyone.)
The queue must also absorb bursts the network carries slower than the loop sends them (the
drain after SIGTERM publishes a whole camera queue at once): 10 lost messages for a subscriber
that kept up; 100 (the default) bounds a stalled peer's cost to 100 messages of memory.
ZeroMQ does not tell the publisher which subscriber lost what, so it is not counted here: every
message carries `seq`, its number on its topic, and each subscriber counts its own gaps; the
heartbeat's `sent` says how many went out per topic.

Subscribers are counted as connected peers (socket monitor: accepted minus disconnected
connections), so one peer sending many subscriptions counts once. With CURVE (see curve.py) the
socket is a CURVE server with its own ZeroMQ context, whose ZAP handler admits listed keys only.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from edge_somad.contracts import defaults
from edge_somad.errors import ConfigError
from edge_somad.runtime import messages
from edge_somad.runtime.curve import CurveServer, apply_server, start_authenticator

log = logging.getLogger(__name__)

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
           zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "other"}


def is_exposed(endpoint: str) -> bool:
    """True for a TCP endpoint reachable from other machines (tcp://*:p, tcp://10.0.0.5:p, ...)."""
    if not endpoint.startswith("tcp://"):
        return False  # ipc:// and inproc:// stay on this machine
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    return host not in _LOCAL_HOSTS


class Publisher:
    def __init__(
        self,
        endpoint: str = defaults.ENDPOINT,
        topic_prefix: str = "somad",
        sndhwm: int = 100,
        curve: CurveServer | None = None,
    ) -> None:
        if not topic_prefix or "/" in topic_prefix:
            raise ConfigError(f"topic prefix {topic_prefix!r}: expected a non-empty name without '/'")
        if sndhwm < 1:
            raise ConfigError(f"sndhwm {sndhwm}; expected >= 1 (0 would queue without limit for a stalled peer)")
        self.endpoint = endpoint
        self.prefix = topic_prefix
        self.curve = curve
        self.sent: dict[str, int] = {}  # messages handed to ZeroMQ per topic name (= next seq)
        self.handshake_failures = {kind: 0 for kind in _FAILED.values()}
        self._peers: set[int] = set()  # file descriptors of connected peers
        self._subscriptions = 0  # subscribe notifications seen (one peer may send many)
        self._lock = threading.Lock()  # sends come from the loop; close may come from elsewhere
        self._closed = False
        # A CURVE publisher owns its context: the ZAP handler is per context, and must not judge
        # (or be replaced by) another socket's authentication in the same process.
        self._own_ctx = curve is not None
        self._ctx = zmq.Context() if self._own_ctx else zmq.Context.instance()
        try:
            self._auth = start_authenticator(self._ctx, curve) if curve is not None else None
        except Exception:
            if self._own_ctx:
                self._ctx.term()
            raise
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)  # per subscriber
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscribe, so wait_for_subscribers sees each peer's
        self._sock.setsockopt(zmq.LINGER, 500)  # on close, give queued verdicts half a second
        if curve is not None:
            apply_server(self._sock, curve)
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | sum(_FAILED))
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._teardown(linger=0)
            raise ConfigError(
                f"cannot bind the publisher to {endpoint!r}: {exc}. Use e.g. tcp://*:5556 and a free port."
            ) from exc
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if curve is None and is_exposed(endpoint):
            log.warning("publishing WITHOUT authentication or encryption on %s: anyone who can reach this port "
                        "reads every verdict, heatmap and overlay image. Lock it down with --curve-secret-key "
                        "and --curve-clients, or bind to 127.0.0.1 (docs/security.md).", endpoint)

    # -- peers -----------------------------------------------------------------------------------
    def _poll_locked(self) -> None:
        while not self._closed:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg[:1] == b"\x01":
                self._subscriptions += 1
        while not self._closed and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            kind, fd = event["event"], event["value"]
            if kind == zmq.EVENT_ACCEPTED:
                self._peers.add(fd)
            elif kind == zmq.EVENT_DISCONNECTED:
                self._peers.discard(fd)
            elif kind in _FAILED:
                self.handshake_failures[_FAILED[kind]] += 1

    @property
    def subscribers(self) -> int:
        """Connected peers (TCP connections), read from the socket monitor. Each counts once."""
        with self._lock:
            self._poll_locked()
            return len(self._peers)

    @property
    def subscriptions_seen(self) -> int:
        """Subscribe notifications received so far (any peer, any topic, repeats included)."""
        with self._lock:
            self._poll_locked()
            return self._subscriptions

    def wait_for_subscribers(self, n: int, timeout_s: float) -> bool:
        """Block until n peers are connected AND n subscriptions arrived (PUB/SUB's 'slow joiner').

        Both, because neither alone is proof: a peer may send many subscriptions, and a peer that
        is connected (or failing CURVE) may not have subscribed. False on timeout.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._poll_locked()
                if min(len(self._peers), self._subscriptions) >= n:
                    return True
            if time.monotonic() >= deadline:
                return False
            zmq.select([self._sock, self._monitor], [], [], 0.05)

    # -- sending -------------------------------------------------------------------------------
    def _send(self, name: str, header: dict[str, Any], payload: list[bytes | memoryview | np.ndarray]) -> int:
        """Send topic + header(+seq) + payload; returns the seq used, or -1 if not sent."""
        with self._lock:
            if self._closed:
                return -1
            seq = self.sent.get(name, 0)
            parts: list[Any] = [messages.topic(self.prefix, name), messages.dumps({**header, "seq": seq}), *payload]
            try:
                # ZeroMQ multipart is atomic; on a lossy XPUB a full subscriber queue never raises.
                for i, part in enumerate(parts):
                    flags = zmq.NOBLOCK | (zmq.SNDMORE if i < len(parts) - 1 else 0)
                    self._sock.send(part, flags=flags, copy=not isinstance(part, np.ndarray))
            except zmq.ZMQError as exc:  # not expected on a lossy XPUB; say so rather than hide it
                log.error("publish on %s/%s failed: %s", self.prefix, name, exc)
                return -1
            self.sent[name] = seq + 1
            return seq

    def publish_verdict(
        self, header: dict, heatmap: bytes | np.ndarray = b"", overlay: bytes | None = None
    ) -> int:
        """Send one verdict on <prefix>/<camera>; returns its seq (-1 only if the publisher is closed)."""
        payload: list = [heatmap] if overlay is None else [heatmap, overlay]
        return self._send(messages.check_camera_id(header["camera"]), header, payload)

    def publish_heartbeat(self, payload: dict) -> int:
        return self._send(messages.HEARTBEAT_TOPIC, payload, [])

    def publish_status(self, payload: dict) -> int:
        return self._send(messages.STATUS_TOPIC, payload, [])

    def _teardown(self, linger: int | None = None) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=linger)
        if self._auth is not None:
            self._auth.stop()
        if self._own_ctx:
            self._ctx.term()  # waits for the linger period of queued verdicts

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._teardown()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
