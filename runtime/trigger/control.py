"""`run --control ENDPOINT`: a ZeroMQ ROUTER answering JSON commands through a dispatch table.

A plain REQ client sends one frame, a JSON object `{"cmd": NAME, ...}`, and gets one JSON object
back. ROUTER (not REP) so many requests can be outstanding at once: a trigger is answered when its
frame was scored, and other clients must not wait behind it. A DEALER client sends [b"", JSON] as
REQ does.

Commands are registered by name (`register(name, handler)`): the runtime registers `trigger`; other
features add theirs (`swap_model`, `rollback`, ...). A handler gets a ControlRequest and either
returns the reply (a dict, sent at once) or returns None and calls `request.reply(dict)` later,
from any thread (exactly once). A handler that raises an EdgeSomadError is answered with its
message; any other exception with its type and message (and logged): the server keeps going.

Everything that arrives is untrusted: a request over MAX_REQUEST_BYTES, not UTF-8 JSON, not an
object, without a string `cmd`, or naming an unknown command is answered with an error naming
what arrived and what was expected; a message over MAX_FRAME_BYTES is refused by libzmq itself
(the peer is disconnected, no reply). Every error reply is
`{"ok": false, "verdict": "error", "error": TEXT, "cmd": NAME or null}`: `verdict` is there so a
PLC reading only that field rejects the part whatever went wrong.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from edge_somad.errors import ConfigError, EdgeSomadError
from edge_somad.runtime.messaging.publisher import is_exposed
from edge_somad.runtime.trigger.request import shown

log = logging.getLogger(__name__)

CONTROL_SCHEMA = "edge-somad/control/1"
MAX_REQUEST_BYTES = 4096  # a trigger is ~100 bytes; a model path fits many times
MAX_FRAME_BYTES = 64 * 1024  # bigger messages: libzmq drops the peer (answering would mean reading them)
MAX_FRAMES = 8  # envelope + delimiter + body; more is not a REQ or DEALER client
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")

Handler = Callable[["ControlRequest"], "dict[str, Any] | None"]


def error_reply(text: str, cmd: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"schema": CONTROL_SCHEMA, "ok": False, "verdict": "error", "error": text, "cmd": cmd, **extra}


class ControlRequest:
    """One request: its JSON object, when it arrived, and the way back to the client."""

    def __init__(self, server: ControlServer, envelope: list[bytes], body: dict[str, Any],
                 received: tuple[float, float]) -> None:
        self.body, self.cmd = body, str(body["cmd"])
        self.received_at, self.received_mono = received  # time.time(), time.monotonic() at receipt
        self._server, self._envelope = server, envelope
        self._lock = threading.Lock()
        self.answered = False

    def reply(self, payload: dict[str, Any]) -> bool:
        """Send the answer (thread-safe). Only the first call sends; later ones return False."""
        with self._lock:
            if self.answered:
                return False
            self.answered = True
        self._server._queue_reply(self._envelope, payload)
        return True


class ControlServer:
    """The ROUTER socket, its thread and the dispatch table. close() answers nothing more."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "errors": 0}
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self._sock.setsockopt(zmq.LINGER, 500)  # answers already queued still go out on close
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a client that left: its answer is dropped, not raised
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise ConfigError(f"cannot bind the control endpoint to {endpoint!r}: {exc}. Use e.g. "
                              "--control tcp://127.0.0.1:5560 with a free port.") from exc
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if is_exposed(endpoint):
            log.warning("control endpoint %s is reachable from the network and has no authentication: anyone "
                        "who reaches it can trigger inspections (and swap models). Bind it to 127.0.0.1 and let "
                        "the bridges forward to it.", endpoint)
        self._replies: deque[tuple[list[bytes], bytes]] = deque()
        self._wake_r, self._wake_w = os.pipe()  # other threads' replies wake the socket's thread
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self.register("ping", lambda req: {"schema": CONTROL_SCHEMA, "ok": True, "cmd": "ping",
                                           "commands": self.commands()})

    def register(self, name: str, handler: Handler) -> None:
        """Add (or replace) the handler of command `name` (lower-case letters, digits, '_'). Thread-safe."""
        if not name or len(name) > 32 or not set(name) <= _NAME_CHARS:
            raise ConfigError(f"command name {name!r}; expected 1 to 32 lower-case letters, digits or '_'")
        with self._lock:
            self._handlers[name] = handler

    def commands(self) -> list[str]:
        with self._lock:
            return sorted(self._handlers)

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    # -- the socket's thread -------------------------------------------------------------------
    def _queue_reply(self, envelope: list[bytes], payload: dict[str, Any]) -> None:
        try:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str).encode()
        except ValueError as exc:  # NaN/inf: strict JSON for every client, and an answer all the same
            log.error("control answer not JSON-encodable (%s): %s", exc, shown(payload, 200))
            data = json.dumps(error_reply(f"internal error: the answer was not valid JSON ({exc})")).encode()
        self._replies.append((envelope, data))
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already: the thread is awake
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(100))
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
            self._send_replies()
            if self._sock in events:
                for _ in range(100):  # bounded: replies are sent between slices of a flood
                    try:
                        parts = self._sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(parts, (time.time(), time.monotonic()))
                    self._send_replies()
        self._send_replies()

    def _send_replies(self) -> None:
        while self._replies:
            envelope, data = self._replies.popleft()
            try:
                self._sock.send_multipart([*envelope, data], zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the peer's queue is full or it left: nothing else to do
                log.warning("control reply not sent: %s", exc)

    def _handle(self, parts: list[bytes], received: tuple[float, float]) -> None:
        self.counts["requests"] += 1
        # ROUTER: [identity, (more routing frames,) b"", body] from REQ/DEALER-with-delimiter.
        if len(parts) < 3 or len(parts) > MAX_FRAMES or parts[-2] != b"":
            self.counts["errors"] += 1
            log.warning("control: a message of %d frame(s) that is not [routing, b'', request]; dropped", len(parts))
            if len(parts) >= 2 and len(parts) <= MAX_FRAMES:  # answer a DEALER that forgot the delimiter
                self._queue_reply([parts[0], b""], error_reply(
                    f"a message of {len(parts) - 1} frame(s); expected one JSON frame from a REQ socket "
                    "(a DEALER sends an empty frame first)"))
            return
        envelope, raw = parts[:-1], parts[-1]
        body, why = _decode(raw)
        if body is None:
            self.counts["errors"] += 1
            self._queue_reply(envelope, error_reply(why))
            return
        with self._lock:
            handler = self._handlers.get(body["cmd"])
        if handler is None:
            self.counts["errors"] += 1
            self._queue_reply(envelope, error_reply(f"unknown cmd {shown(body['cmd'])}; expected one of "
                                                    f"{self.commands()}", None))
            return
        req = ControlRequest(self, envelope, body, received)
        try:
            answer = handler(req)
        except EdgeSomadError as exc:
            self.counts["errors"] += 1
            req.reply(error_reply(str(exc), req.cmd))
            return
        except Exception as exc:  # a handler's bug must not take the endpoint (and the line's triggers) down
            self.counts["errors"] += 1
            log.exception("control command %r failed", req.cmd)
            req.reply(error_reply(f"internal error in {req.cmd}: {type(exc).__name__}: {exc}", req.cmd))
            return
        if answer is not None:
            req.reply(answer)

    def close(self) -> None:
        """Stop the thread after sending the replies already queued."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(request object, "") or (None, what was wrong)."""
    if len(raw) > MAX_REQUEST_BYTES:
        return None, f"request of {len(raw)} bytes; expected a JSON object of at most {MAX_REQUEST_BYTES} bytes"
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, f"request {shown(raw[:40])} is not UTF-8; expected a JSON object such as {{\"cmd\": \"ping\"}}"
    except (ValueError, RecursionError) as exc:  # 4 KiB of '[' nests deeper than the parser recurses
        return None, f"request {shown(raw[:40])} is not JSON ({exc}); expected an object such as {{\"cmd\": \"ping\"}}"
    if not isinstance(body, dict):
        return None, f"request is a JSON {type(body).__name__}; expected an object such as {{\"cmd\": \"ping\"}}"
    if not isinstance(body.get("cmd"), str):
        return None, f"field 'cmd' is {shown(body.get('cmd'))}; expected a command name string, e.g. \"trigger\""
    return body, ""
