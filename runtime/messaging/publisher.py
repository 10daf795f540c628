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

Subscribers are counted as peers that completed the ZeroMQ handshake (socket monitor), so one
peer sending many subscriptions counts once and a raw TCP connection that never speaks ZMTP not at
all. With CURVE (see curve.py) the socket is a CURVE server with its own ZeroMQ context, whose ZAP
handler admits listed keys only.

What a peer may cost is bounded: the socket is XPUB_MANUAL, so libzmq stores a subscription only
when this code applies it, and it applies only subscriptions that can match a topic it publishes
(a prefix of `<prefix>/<camera>`, `<prefix>/_heartbeat`, `<prefix>/_status`). Any other
subscription could never deliver a message; it is dropped and counted. The queue of subscription
messages is read in bounded slices on every send and heartbeat, so a flood neither grows memory
nor stalls the line; inbound frames are capped at MAX_INBOUND_BYTES (a peer sending more is
disconnected) and a connection that does not finish its handshake within HANDSHAKE_S is closed.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading
import time
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from edge_somad.contracts import defaults
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import CurveServer, apply_server, start_authenticator
from edge_somad.runtime.messaging.journal import Journal, new_run_id

log = logging.getLogger(__name__)

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
MAX_INBOUND_BYTES = 4096  # a subscription is a topic prefix: <prefix>/<64-character id> fits many times
HANDSHAKE_S = 5.0  # ZMTP (and CURVE) handshake deadline for a new connection
INBOUND_HWM = 16  # messages buffered per peer towards us: a subscriber sends a handful
DRAIN_PERIOD_S = 0.005  # between subscription slices: a new subscriber is served within milliseconds
# With nothing to work off, the wait doubles up to this: a thread waking 200 times a second for nothing
# takes ~2 % of a core and preempts the scorer's threads on a small box (bench --cameras: the
# "publisher upkeep" CPU). A subscription or peer event brings it back to DRAIN_PERIOD_S, and every
# send works subscriptions off too, so a new subscriber waits at most this long on an idle line.
DRAIN_IDLE_S = 0.05
DRAIN_SLICE = 1000  # subscription messages handled per send/heartbeat: bounded work under a flood
MAX_OPEN_PREFIXES = 4096  # distinct subscriptions kept when the camera set is not known in advance
PEER_INBOUND_BYTES = 1 << 20  # what one connection may send us (~40k subscriptions); then it is disconnected
TOTAL_INBOUND_BYTES = 16 << 20  # all connections together: the biggest senders go first beyond this
PEER_CHECK_S = 0.25
_TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received (u64) in Linux's struct tcp_info (kernel >= 4.1)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
           zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "other"}


def drain_period(previous: float, handled: int) -> float:
    """The upkeep thread's next wait: DRAIN_PERIOD_S after work, doubling (to DRAIN_IDLE_S) while idle."""
    return DRAIN_PERIOD_S if handled else min(previous * 2.0, DRAIN_IDLE_S)


class SubscriptionFilter:
    """Which subscriptions the XPUB applies: those that can match a topic this publisher sends.

    With the camera ids known (`run` knows them at start) the set of useful subscriptions is every
    prefix of every topic: small and fixed. Without them (tools, tests), a prefix of `<prefix>/`
    followed by name characters is accepted, up to MAX_OPEN_PREFIXES distinct strings in all.
    """

    def __init__(self, prefix: str, names: list[str] | None) -> None:
        self.base = f"{prefix}/".encode()
        self.fixed: frozenset[bytes] | None = None
        if names is not None:
            topics = [self.base + n.encode() for n in (*names, messages.HEARTBEAT_TOPIC, messages.STATUS_TOPIC)]
            self.fixed = frozenset(t[:i] for t in topics for i in range(len(t) + 1))
        self.open: set[bytes] = set()

    def allows(self, sub: bytes) -> bool:
        if self.fixed is not None:
            return sub in self.fixed
        if sub in self.open or self.base.startswith(sub):
            return True
        rest = sub[len(self.base):]
        if (not sub.startswith(self.base) or len(rest) > 64 or not set(rest.decode("ascii", "replace")) <= _NAME_CHARS
                or len(self.open) >= MAX_OPEN_PREFIXES):
            return False
        self.open.add(sub)
        return True


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
        cameras: list[str] | None = None,
        journal: Journal | None = None,
    ) -> None:
        """`cameras`: the ids verdicts will be published for; subscriptions that match none of them
        (nor the heartbeat/status topics) are dropped. None: any camera-id-like name (capped).
        `journal`: where each verdict is also kept, for replay to subscribers that missed it (journal.py)."""
        if not topic_prefix or "/" in topic_prefix:
            raise ConfigError(f"topic prefix {topic_prefix!r}: expected a non-empty name without '/'")
        if sndhwm < 1:
            raise ConfigError(f"sndhwm {sndhwm}; expected >= 1 (0 would queue without limit for a stalled peer)")
        self.endpoint = endpoint
        self.prefix = topic_prefix
        self.curve = curve
        self.journal = journal
        # Names this process's stream: a subscriber seeing another `run` knows `seq` started again.
        self.run_id = journal.run_id if journal is not None else new_run_id()
        self.sent: dict[str, int] = {}  # messages handed to ZeroMQ per topic name (= next seq)
        self.handshake_failures = {kind: 0 for kind in _FAILED.values()}
        self._peers: set[int] = set()  # file descriptors of accepted TCP connections (handshake or not)
        self._handshakes = 0  # handshakes completed minus disconnects of such peers (see _poll_locked)
        self._subscriptions = 0  # subscriptions applied (one peer may send many)
        self.subscriptions_refused = 0  # subscriptions that could match no topic here: dropped
        self.peers_disconnected = 0  # connections closed for sending more than their byte budget
        self._filter = SubscriptionFilter(topic_prefix, cameras)
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
        self._sock.setsockopt(zmq.XPUB_MANUAL, 1)  # libzmq keeps only the subscriptions _poll_locked applies
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)
        # libzmq moves a peer's whole inbound pipe into an unbounded queue whenever it looks; a small
        # pipe keeps that queue small and lets TCP push back on a flooding peer instead.
        self._sock.setsockopt(zmq.RCVHWM, INBOUND_HWM)
        self._sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_S * 1000))
        self._sock.setsockopt(zmq.LINGER, 500)  # on close, give queued verdicts half a second
        if curve is not None:
            apply_server(self._sock, curve)
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | sum(_FAILED))
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._teardown(linger=0)
            raise ConfigError(
                f"cannot bind the publisher to {endpoint!r}: {exc}. Use e.g. tcp://*:5556 and a free port."
            ) from exc
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        port = self.bound_endpoint.rpartition(":")[2]
        self._port = int(port) if port.isdigit() else -1
        self._drain_stop = threading.Event()
        self._drainer = threading.Thread(target=self._drain, name="publisher-peers", daemon=True)
        self._drainer.start()
        if curve is None and is_exposed(endpoint):
            log.warning("publishing WITHOUT authentication or encryption on %s: anyone who can reach this port "
                        "reads every verdict, heatmap and overlay image. Lock it down with --curve-secret-key "
                        "and --curve-clients, or bind to 127.0.0.1 (docs/security.md).", endpoint)

    # -- peers -----------------------------------------------------------------------------------
    def _drain(self) -> None:
        """Work off subscriptions between sends: a slice every DRAIN_PERIOD_S, under the socket's lock."""
        next_check, period = 0.0, DRAIN_PERIOD_S
        while not self._drain_stop.wait(period):
            with self._lock:
                period = drain_period(period, self._poll_locked())
                if time.monotonic() >= next_check and not self._closed:
                    next_check = time.monotonic() + PEER_CHECK_S
                    self._enforce_budgets_locked()

    def _enforce_budgets_locked(self) -> None:
        """Disconnect peers that sent more than their share (libzmq keeps every subscription a peer sends
        for as long as it is connected, whatever this code applies). Linux: TCP_INFO byte counters."""
        if not sys.platform.startswith("linux") or not self.endpoint.startswith("tcp://"):
            return
        sent: list[tuple[int, int, socket.socket]] = []
        try:
            for fd in list(self._peers):
                try:
                    dup = os.dup(fd)
                except OSError:
                    continue
                try:
                    sock = socket.socket(fileno=dup)
                except OSError:  # not a socket (any more): the descriptor was closed and reused
                    os.close(dup)
                    continue
                try:  # the fd may have been closed and reused: only a connection to OUR port is a peer
                    if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != self._port:
                        sock.close()
                        continue
                    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
                except OSError:
                    sock.close()
                    continue
                sent.append((struct.unpack_from("<Q", info, _TCPI_BYTES_RECEIVED)[0], fd, sock))
            sent.sort(reverse=True)
            total = sum(n for n, _, _ in sent)
            for n, fd, sock in sent:
                if n <= PEER_INBOUND_BYTES and total <= TOTAL_INBOUND_BYTES:
                    break
                # shutdown on our duplicate: libzmq sees the connection end and frees that peer's state.
                sock.shutdown(socket.SHUT_RDWR)
                total -= n
                self.peers_disconnected += 1
                log.warning("disconnected a subscriber (fd %d) that sent %d bytes (budget %d per connection, %d in "
                            "all): subscriptions that match no topic here are not worth memory", fd, n,
                            PEER_INBOUND_BYTES, TOTAL_INBOUND_BYTES)
        finally:
            for _, _, sock in sent:
                sock.close()

    def _poll_locked(self, limit: int = DRAIN_SLICE) -> int:
        """Work off up to `limit` subscription messages and the pending peer events; returns how many."""
        handled = 0
        for _ in range(limit):  # bounded: a flood is worked off over several calls, never in one stall
            if self._closed:
                return handled
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            # XPUB_MANUAL: a (un)subscription takes effect only when set here, for the peer it came from.
            if msg[:1] in (b"\x01", b"\x00") and self._filter.allows(msg[1:]):
                self._sock.setsockopt(zmq.SUBSCRIBE if msg[:1] == b"\x01" else zmq.UNSUBSCRIBE, msg[1:])
                self._subscriptions += msg[:1] == b"\x01"
            elif msg[:1] == b"\x01":
                self.subscriptions_refused += 1
        while not self._closed and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            handled += 1
            kind, fd = event["event"], event["value"]
            # libzmq names no peer in HANDSHAKE_SUCCEEDED; every peer that leaves before finishing its
            # handshake reports a HANDSHAKE_FAILED_* first. So completed = succeeded - (left - failed).
            if kind == zmq.EVENT_ACCEPTED:
                self._peers.add(fd)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshakes += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                self._peers.discard(fd)
                self._handshakes -= 1
            elif kind in _FAILED:
                self.handshake_failures[_FAILED[kind]] += 1
                self._handshakes += 1  # its DISCONNECTED follows and takes this back
        return handled

    def _connected_locked(self) -> int:
        return max(0, min(self._handshakes, len(self._peers)))

    @property
    def subscribers(self) -> int:
        """Peers that completed the ZeroMQ handshake, read from the socket monitor. Each counts once."""
        with self._lock:
            self._poll_locked()
            return self._connected_locked()

    @property
    def subscriptions_seen(self) -> int:
        """Subscriptions applied so far (any peer, repeats included; refused ones not)."""
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
                if min(self._connected_locked(), self._subscriptions) >= n:
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
            self._poll_locked()  # subscriptions are worked off here too, a slice at a time
            seq = self.sent.get(name, 0)
            parts: list[Any] = [messages.topic(self.prefix, name),
                                messages.dumps({**header, "run": self.run_id, "seq": seq}), *payload]
            try:
                # ZeroMQ multipart is atomic; on a lossy XPUB a full subscriber queue never raises.
                for i, part in enumerate(parts):
                    flags = zmq.NOBLOCK | (zmq.SNDMORE if i < len(parts) - 1 else 0)
                    self._sock.send(part, flags=flags, copy=not isinstance(part, np.ndarray))
            except zmq.ZMQError as exc:  # not expected on a lossy XPUB; say so rather than hide it
                log.error("publish on %s/%s failed: %s", self.prefix, name, exc)
                return -1
            self.sent[name] = seq + 1
            if self.journal is not None and name not in (messages.HEARTBEAT_TOPIC, messages.STATUS_TOPIC):
                self.journal.append(name, seq, parts)  # before the next send: replay never lags the wire
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
        self._drain_stop.set()
        if self._drainer is not threading.current_thread():
            self._drainer.join(5.0)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._teardown()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
