"""ZeroMQ publisher of verdicts, heartbeats and status. Never blocks the inspection loop.

The socket is an XPUB (a PUB that also hears subscriptions) so a demo or test can wait for its
subscribers before the first frame, and the heartbeat can say how many are listening.
XPUB_NODROP makes a full subscriber queue visible as zmq.Again instead of a silent drop: with
NOBLOCK the send returns at once and the message is counted in `drops`. The price: while one
subscriber is stalled past its high-water mark, messages are dropped for every subscriber
(documented in docs/messages.md; put a zmq proxy in front of slow consumers).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import zmq

from edge_somad.errors import ConfigError
from edge_somad.runtime import messages

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self,
        endpoint: str = "tcp://*:5556",
        topic_prefix: str = "somad",
        sndhwm: int = 10,
        count_drops: bool = True,
        context: zmq.Context | None = None,
    ) -> None:
        if not topic_prefix or "/" in topic_prefix:
            raise ConfigError(f"topic prefix {topic_prefix!r}: expected a non-empty name without '/'")
        self.endpoint = endpoint
        self.prefix = topic_prefix
        self.sent = 0
        self.drops = 0
        self.subscribers = 0
        self._lock = threading.Lock()  # sends come from the loop; close may come from elsewhere
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscribe, not only the first per topic
        self._sock.setsockopt(zmq.XPUB_NODROP, 1 if count_drops else 0)
        self._sock.setsockopt(zmq.LINGER, 500)  # on close, give queued verdicts half a second
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise ConfigError(
                f"cannot bind the publisher to {endpoint!r}: {exc}. Use e.g. tcp://*:5556 and a free port."
            ) from exc
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._closed = False

    # -- subscriptions -------------------------------------------------------------------------
    def poll_subscriptions(self) -> int:
        """Read pending (un)subscribe notifications; returns the current subscription count."""
        with self._lock:
            while not self._closed:
                try:
                    msg = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg[:1] == b"\x01":
                    self.subscribers += 1
                elif msg[:1] == b"\x00":
                    self.subscribers = max(0, self.subscribers - 1)
        return self.subscribers

    def wait_for_subscribers(self, n: int, timeout_s: float) -> bool:
        """Block until n subscriptions arrived (PUB/SUB's 'slow joiner'); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.poll_subscriptions() < n:
            if time.monotonic() >= deadline:
                return False
            self._sock.poll(50, zmq.POLLIN)
        return True

    # -- sending -------------------------------------------------------------------------------
    def _send(self, parts: list[bytes | memoryview | np.ndarray]) -> bool:
        with self._lock:
            if self._closed:
                return False
            try:
                # ZeroMQ multipart is atomic: if the first part is accepted the rest are too.
                for i, part in enumerate(parts):
                    flags = zmq.NOBLOCK | (zmq.SNDMORE if i < len(parts) - 1 else 0)
                    self._sock.send(part, flags=flags, copy=not isinstance(part, np.ndarray))
            except zmq.Again:
                self.drops += 1
                return False
            self.sent += 1
            return True

    def publish_verdict(
        self, header: dict, heatmap: bytes | np.ndarray = b"", overlay: bytes | None = None
    ) -> bool:
        """Send one verdict; False (and drops += 1) if a subscriber queue is full."""
        parts: list = [messages.topic(self.prefix, header["camera"]), messages.dumps(header), heatmap]
        if overlay is not None:
            parts.append(overlay)
        return self._send(parts)

    def publish_heartbeat(self, payload: dict) -> bool:
        return self._send([messages.topic(self.prefix, messages.HEARTBEAT_TOPIC), messages.dumps(payload)])

    def publish_status(self, payload: dict) -> bool:
        return self._send([messages.topic(self.prefix, messages.STATUS_TOPIC), messages.dumps(payload)])

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._sock.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
