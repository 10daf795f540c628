"""The replay endpoint beside `run`'s publisher: "send me camera C's verdicts from seq N" (ZeroMQ ROUTER).

A subscriber that saw a gap in a camera's `seq` (it was restarted, reconnected, or fell behind)
asks here for what it missed, from the journal (runtime/messaging/journal.py). It is bound like the
publisher (loopback unless told otherwise; a warning when exposed without CURVE) and, when the
stream uses CURVE, it is a CURVE server admitting the same client keys.

Protocol (a DEALER sends [b"", request JSON]; the reply is [b"", reply JSON, *message parts]):
    {"schema": REQUEST_SCHEMA, "id": 7, "op": "info"}
        -> {"schema": REPLY_SCHEMA, "id": 7, "run": R, "cameras": {C: {"oldest": o, "next": n}}, "error": null}
    {"schema": REQUEST_SCHEMA, "id": 8, "op": "replay", "camera": C, "from_seq": a, "to_seq": b, "run": R}
        -> {..., "camera": C, "oldest": o, "next": n, "parts": [k1, k2, ...], "seqs": [a, a+1, ...]}
           followed by the messages' parts (k1 parts of the first message, ...), as published.
A request for another run (R differs) gets no messages: those verdicts are gone with their run.
Requests are at most MAX_REQUEST_BYTES; a reply holds at most MAX_RECORDS messages / MAX_REPLY_BYTES
(ask again from the next seq). Anything else is answered {"error": ...} or dropped, and counted.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import CurveServer, apply_server, start_authenticator
from edge_somad.runtime.messaging.journal import Journal

log = logging.getLogger(__name__)

REQUEST_SCHEMA = "edge-somad/replay-request/1"
REPLY_SCHEMA = "edge-somad/replay/1"
MAX_REQUEST_BYTES = 4096
MAX_RECORDS = 500
MAX_REPLY_BYTES = 8 * 1024 * 1024
MAX_SEQ = 2**63 - 1


def replay_endpoint_for(publish: str) -> str:
    """The default replay endpoint: the publisher's host, port + 1 (tcp://127.0.0.1:5556 -> :5557)."""
    head, _, port = publish.rpartition(":")
    if not publish.startswith("tcp://") or not port.isdigit() or not 0 < int(port) < 65535:
        raise ConfigError(f"--replay is needed with --journal when --publish is {publish!r} (no tcp port to "
                          "add one to); give e.g. --replay tcp://127.0.0.1:5557")
    return f"{head}:{int(port) + 1}"


def _seq(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQ:
        raise InputError(f"field {name!r} is {str(value)[:40]!r}; expected an integer 0..2**63-1")
    return value


def parse_request(frame: bytes) -> dict[str, Any]:
    """A request, checked field by field; InputError names what is wrong."""
    try:
        req = json.loads(frame.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"request is not UTF-8 JSON ({type(exc).__name__}); expected {REQUEST_SCHEMA}") from None
    if not isinstance(req, dict) or req.get("schema") != REQUEST_SCHEMA:
        raise InputError(f"request is not an object with schema {REQUEST_SCHEMA!r}")
    if req.get("op") not in ("info", "replay"):
        raise InputError(f"field 'op' is {str(req.get('op'))[:40]!r}; expected 'info' or 'replay'")
    out = {"op": req["op"], "id": _seq(req.get("id", 0), "id")}
    if req["op"] == "replay":
        out["camera"] = messages.check_camera_id(req.get("camera"))
        out["from_seq"] = _seq(req.get("from_seq"), "from_seq")
        out["to_seq"] = None if req.get("to_seq") is None else _seq(req.get("to_seq"), "to_seq")
        run = req.get("run")
        if run is not None and (not isinstance(run, str) or len(run) > 64):
            raise InputError(f"field 'run' is {str(run)[:40]!r}; expected the run id string or null")
        out["run"] = run
    return out


class ReplayServer:
    """A thread answering replay requests from the journal, until close()."""

    def __init__(self, endpoint: str, journal: Journal, curve: CurveServer | None = None) -> None:
        import zmq

        from edge_somad.runtime.messaging.publisher import is_exposed

        self.journal, self.endpoint = journal, endpoint
        self.requests = self.refused = 0
        self._ctx = zmq.Context()
        self._auth = start_authenticator(self._ctx, curve) if curve is not None else None
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)  # a longer frame disconnects its sender
        self._sock.setsockopt(zmq.SNDHWM, 4)  # replies queued per peer: a peer that does not read gets no more
        if curve is not None:
            apply_server(self._sock, curve)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._teardown()
            raise ConfigError(f"cannot bind the replay endpoint to {endpoint!r}: {exc}; give a free port with "
                              "--replay") from exc
        self.bound_endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if curve is None and is_exposed(endpoint):
            log.warning("replay endpoint %s WITHOUT authentication: anyone who can reach it reads the journal; "
                        "use CURVE (--curve-secret-key/--curve-clients) or a loopback address", endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="replay", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import zmq

        while not self._stop.is_set():
            if not self._sock.poll(200):
                continue
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            reply = self.answer(frames[2:] if len(frames) == 3 and frames[1] == b"" else None)
            if reply is None:
                self.refused += 1
                continue
            try:
                self._sock.send_multipart([frames[0], b"", *reply], zmq.NOBLOCK)
            except zmq.ZMQError:  # the peer left or does not read its replies: its loss
                self.refused += 1

    def answer(self, frames: list[bytes] | None) -> list[bytes] | None:
        """Reply frames for one request (None: not even worth an error reply)."""
        if frames is None or len(frames) != 1:
            return None
        self.requests += 1
        try:
            req = parse_request(frames[0])
        except InputError as exc:
            self.refused += 1
            return [messages.dumps({"schema": REPLY_SCHEMA, "error": str(exc)[:300]})]
        j = self.journal
        head: dict[str, Any] = {"schema": REPLY_SCHEMA, "id": req["id"], "op": req["op"], "run": j.run_id,
                                "error": j.error}
        if req["op"] == "info":
            head["cameras"] = {c: {"oldest": o, "next": n} for c, (o, n) in j.cameras().items()}
            return [messages.dumps(head)]
        records: list[tuple[int, list[bytes]]] = []
        if req["run"] in (None, j.run_id):
            got = j.read(req["camera"], req["from_seq"], req["to_seq"], MAX_RECORDS, MAX_REPLY_BYTES)
            records, head["oldest"], head["next"] = got.records, got.oldest, got.next_seq
        else:
            head["oldest"], head["next"] = None, None
        head.update(camera=req["camera"], seqs=[s for s, _ in records], parts=[len(p) for _, p in records])
        return [messages.dumps(head), *(part for _, parts in records for part in parts)]

    def _teardown(self) -> None:
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._teardown()
