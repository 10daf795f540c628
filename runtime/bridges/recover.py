"""What a bridge missed upstream, from the stream's own numbering, and asking `run`'s journal for it.

Every verdict carries `run` (the publisher's id) and `seq` (its number on its camera's topic). Per
endpoint and camera the bridge keeps the next seq it expects (the MQTT bridge persists it with its
queue, so a restarted bridge knows where it stopped). A verdict with a larger seq means the ones in
between were missed; a new `run` means its verdicts before this one were missed (seq starts at 0).
With a replay endpoint for that `--connect` (runtime/messaging/replay.py), the missing range is asked for and
what comes back is handed on as `replayed`; what the journal no longer holds, what belongs to an
ended run, or what is not answered within REQUEST_TIMEOUT_S x TRIES is counted as `missed`. So
every verdict of the run is either delivered or counted. Not counted: the unseen tail of a run that
ended while the bridge was away (no later verdict shows the gap; that run's journal is gone).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from edge_somad.errors import InputError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import CurveClient, apply_client
from edge_somad.runtime.messaging.replay import MAX_REQUEST_BYTES, REPLY_SCHEMA, REQUEST_SCHEMA

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 2.0
TRIES = 3
MAX_TRACKED_SEQ = 2**62  # a real stream never gets there; above it, seq + 1 must still fit an SQLite integer
MAX_PENDING = 10_000  # gaps waiting for an answer; beyond that a new gap is counted missed at once
MAX_CAMERAS = 4096  # (endpoint, camera) pairs tracked


@dataclass
class _Gap:
    endpoint: int
    camera: str
    run: str | None
    start: int  # next seq wanted
    stop: int  # first seq not wanted
    tries: int = 0
    sent_at: float = 0.0
    request_id: int = 0


def run_number(run: Any) -> int | None:
    """A run id as the integer kept in the bridge's state (None when it is not one)."""
    if isinstance(run, str) and 0 < len(run) <= 16:
        try:
            return int(run, 16)
        except ValueError:
            return None
    return None


class Recovery:
    """Gap accounting for all endpoints; `replay` holds, per endpoint, its replay endpoint or None."""

    def __init__(self, endpoints: tuple[str, ...], replay: tuple[str | None, ...] = (),
                 curve: CurveClient | None = None, state: dict[str, int] | None = None) -> None:
        self.endpoints = endpoints
        self.replay = replay or (None,) * len(endpoints)
        self.curve = curve
        self.missed = self.replayed = 0
        self.missed_by_camera: dict[str, int] = {}
        self.runs: dict[int, str | None] = {}  # endpoint -> run id now
        self.next: dict[tuple[int, str], int] = {}
        self.joined: set[int] = set()  # endpoints whose run we joined mid-stream: each camera starts where we met it
        self._load(state or {})
        self.gaps: deque[_Gap] = deque()
        self.waiting: dict[int, _Gap] = {}  # request id -> gap asked for
        self._ids = itertools.count(1)
        self._socks: dict[int, Any] = {}

    # --- persisted state (the MQTT bridge's queue meta: integers) ------------------------------

    def _load(self, state: dict[str, int]) -> None:
        for i, ep in enumerate(self.endpoints):
            run = state.get(f"run:{ep}")
            if run is not None:
                self.runs[i] = f"{run:016x}"
            for key, value in state.items():
                if key.startswith(f"next:{ep}|"):
                    self.next[(i, key.split("|", 1)[1])] = value
        self.missed, self.replayed = state.get("missed", 0), state.get("replayed", 0)

    def state(self) -> dict[str, int]:
        out = {"missed": self.missed, "replayed": self.replayed}
        for i, run in self.runs.items():
            if run_number(run) is not None:
                out[f"run:{self.endpoints[i]}"] = run_number(run)
        for (i, camera), value in self.next.items():
            out[f"next:{self.endpoints[i]}|{camera}"] = value
        return out

    # --- live verdicts ---------------------------------------------------------------------------

    def see(self, endpoint: int, header: dict[str, Any]) -> None:
        """One live verdict: note a gap before it, if any."""
        camera, seq, run = header["camera"], header.get("seq"), header.get("run")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_TRACKED_SEQ:
            return  # a publisher without seq numbers (or a hostile one): nothing to count with
        run = run if run_number(run) is not None else None
        if (endpoint, camera) not in self.next and len(self.next) >= MAX_CAMERAS:
            return  # a hostile stream inventing camera ids must not grow the state without bound
        known = endpoint in self.runs
        if not known:
            self.joined.add(endpoint)  # the first run we ever see: what it sent before is not ours to count
        if known and run != self.runs[endpoint]:  # another run: seq started again at 0
            for key in [k for k in self.next if k[0] == endpoint]:
                del self.next[key]
            self.joined.discard(endpoint)
            self._gap(endpoint, camera, run, 0, seq)
        elif (endpoint, camera) in self.next:
            expected = self.next[(endpoint, camera)]
            if seq > expected:
                self._gap(endpoint, camera, run, expected, seq)
            elif seq < expected and run is None:  # no run ids: a smaller seq is a restart
                self._gap(endpoint, camera, run, 0, seq)
            elif seq < expected:
                return  # an old message (a resend): nothing new
        elif endpoint not in self.joined:  # a camera of a run we followed from its start: its first verdicts
            self._gap(endpoint, camera, run, 0, seq)
        self.runs[endpoint] = run
        self.next[(endpoint, camera)] = seq + 1

    def _gap(self, endpoint: int, camera: str, run: str | None, start: int, stop: int) -> None:
        if stop <= start:
            return
        if self.replay[endpoint] is None or run is None or len(self.gaps) + len(self.waiting) >= MAX_PENDING:
            self._lost(camera, stop - start, "no replay endpoint" if self.replay[endpoint] is None else
                       "cannot be asked for" if run is None else "too many gaps waiting")
            return
        self.gaps.append(_Gap(endpoint, camera, run, start, stop))

    def _lost(self, camera: str, n: int, why: str) -> None:
        self.missed += n
        self.missed_by_camera[camera] = self.missed_by_camera.get(camera, 0) + n
        log.warning("%s: %d verdict(s) missed upstream (%s); %d missed in all", camera, n, why, self.missed)

    @property
    def pending(self) -> int:
        return sum(g.stop - g.start for g in (*self.gaps, *self.waiting.values()))

    # --- asking the journal ---------------------------------------------------------------------

    def _sock(self, endpoint: int) -> Any:
        import zmq

        if endpoint not in self._socks:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024 * 1024)
            if self.curve is not None:
                apply_client(sock, self.curve)
            sock.connect(self.replay[endpoint])
            self._socks[endpoint] = sock
        return self._socks[endpoint]

    def pump(self) -> list[tuple[int, messages.Received]]:
        """Send due requests, read replies: the replayed verdicts, validated, oldest first per gap."""
        import zmq

        now = time.monotonic()
        for rid, gap in list(self.waiting.items()):
            if now - gap.sent_at > REQUEST_TIMEOUT_S:
                del self.waiting[rid]
                if gap.tries >= TRIES:
                    self._lost(gap.camera, gap.stop - gap.start, f"replay endpoint {self.replay[gap.endpoint]} "
                               f"did not answer {TRIES} times")
                else:
                    self.gaps.append(gap)
        while self.gaps and len(self.waiting) < 8:
            gap = self.gaps.popleft()
            gap.tries, gap.sent_at, gap.request_id = gap.tries + 1, now, next(self._ids)
            req = {"schema": REQUEST_SCHEMA, "id": gap.request_id, "op": "replay", "camera": gap.camera,
                   "from_seq": gap.start, "to_seq": gap.stop, "run": gap.run}
            self._sock(gap.endpoint).send_multipart([b"", json.dumps(req).encode()[:MAX_REQUEST_BYTES]])
            self.waiting[gap.request_id] = gap
        out: list[tuple[int, messages.Received]] = []
        for endpoint, sock in self._socks.items():
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                out += [(endpoint, m) for m in self._reply(frames)]
        return out

    def _reply(self, frames: list[bytes]) -> list[messages.Received]:
        try:
            head = json.loads(frames[1].decode()) if len(frames) >= 2 and frames[0] == b"" else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            head = None
        if not isinstance(head, dict) or head.get("schema") != REPLY_SCHEMA or head.get("id") not in self.waiting:
            return []  # not ours, or late for a request already given up: its range is counted elsewhere
        gap = self.waiting.pop(head["id"])
        seqs, counts = head.get("seqs"), head.get("parts")
        if head.get("error") and head.get("error") != "closed":
            log.warning("replay endpoint %s: %s", self.replay[gap.endpoint], str(head["error"])[:200])
        if head.get("run") != gap.run or not isinstance(seqs, list) or not isinstance(counts, list):
            self._lost(gap.camera, gap.stop - gap.start, "its run has ended")
            return []
        got, pos = [], 2
        for seq, n in zip(seqs, counts, strict=False):
            n = n if isinstance(n, int) and n > 0 else 0
            msg = self._check(frames[pos:pos + n], gap, seq)
            pos += n
            if msg is None:
                continue
            if seq > gap.start:  # a hole: evicted from the bounded journal (or a record rejected above)
                self._lost(gap.camera, seq - gap.start, "not in run's journal any more (--journal-max-mb)")
            got.append(msg)
            self.replayed += 1
            gap.start = seq + 1
        if gap.start < gap.stop:
            if got:  # more to come (the reply was full): ask again from here
                gap.tries = 0
                self.gaps.appendleft(gap)
            else:
                self._lost(gap.camera, gap.stop - gap.start, "not in run's journal")
        return got

    @staticmethod
    def _check(parts: list[bytes], gap: _Gap, seq: Any) -> messages.Received | None:
        try:
            msg = messages.parse_message(parts)
            if msg.kind != "verdict":
                raise InputError(f"a {msg.kind} message")
            messages.validate_verdict(msg)
        except InputError as exc:
            log.error("replay: rejected a message (%s)", exc)
            return None
        h = msg.header
        if h["camera"] != gap.camera or h.get("run") != gap.run or h.get("seq") != seq or not (
                gap.start <= seq < gap.stop):
            log.error("replay: a message for %s/%s seq %s answered the request for %s seq %d..%d",
                      h["camera"], h.get("run"), h.get("seq"), gap.camera, gap.start, gap.stop - 1)
            return None
        return msg

    def close(self) -> None:
        """Gaps still open are counted as missed: the bridge stops before it could ask."""
        for gap in (*self.gaps, *self.waiting.values()):
            self._lost(gap.camera, gap.stop - gap.start, "bridge stopped before the replay came")
        self.gaps.clear()
        self.waiting.clear()
        for sock in self._socks.values():
            sock.close()
