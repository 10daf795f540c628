"""Hostile messages for the receivers' fuzz tests: random bytes and valid messages with one thing broken.

`fuzz_messages` is deterministic for a seed. NESTED_REPRO is the message that used to kill
`subscribe` (RecursionError) and freeze `view`; it always comes first.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import zmq

from edge_somad.runtime.messaging import messages

NESTED_REPRO = [b"somad/cam0", b"[" * 2000 + b"]" * 2000, b""]
WRONG_VALUES: list[object] = [None, True, "x", "=1+1", -1, 2**70, 1.5, [], {}, "a" * 5000, [[[[1]]]],
                              {"encoding": "png"}, "\x00", "../../etc/passwd"]
FIELDS = ["schema", "camera", "frame_id", "verdict", "seq", "captured_at", "published_at", "latency_ms", "score",
          "score_normalised", "threshold", "error", "defects", "model", "heatmap", "frame_shape", "overlay"]


def valid_header(frame_id: int, camera: str = "cam0", seq: int | None = None, **extra: object) -> dict:
    h = messages.verdict_header(
        camera=camera, frame_id=frame_id, captured_at=time.time(), published_at=time.time(), score=0.2,
        threshold=0.5, verdict="pass", error=None, defects=[{"x": 1, "y": 2, "w": 3, "h": 4, "area_px": 12,
                                                              "max_score": 0.7}],
        model={"name": "fuzz"}, heatmap=None, frame_shape=(4, 4), overlay=False)
    h["seq"] = frame_id if seq is None else seq
    h.update(extra)
    return h


def verdict_parts(h: dict, topic: bytes | None = None) -> list[bytes]:
    return [topic or f"somad/{h['camera']}".encode(), json.dumps(h).encode(), b""]


def _mutations(rnd: random.Random, i: int) -> list[bytes]:
    h = valid_header(10_000 + i)
    body = json.dumps(h).encode()
    kind = rnd.randrange(12)
    if kind == 0:  # one field of a valid header broken
        h[rnd.choice(FIELDS)] = rnd.choice(WRONG_VALUES)
        return verdict_parts(h)
    if kind == 1:  # deep nesting inside a field
        d = rnd.randint(33, 5000)
        return [b"somad/cam0", body.replace(b'"model":', b'"model":' + b"[" * d + b"1" + b"]" * d + b',"m2":'), b""]
    if kind == 2:  # huge integers and floats, as literals
        lit = rnd.choice([b"9" * rnd.randint(41, 20_000), b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity",
                          b"9223372036854775808"])
        return [b"somad/cam0", body.replace(b'"score":0.2', b'"score":' + lit).replace(b'"frame_id":', b'"x":'
                if rnd.random() < 0.2 else b'"frame_id":'), b""]
    if kind == 3:  # wrong frame count
        n = rnd.choice([1, 2, 5, 6])
        return ([b"somad/cam0", body, b"", b"", b"", b""])[:n]
    if kind == 4:  # overlay flag disagrees with the parts
        h["overlay"] = True
        return verdict_parts(h)
    if kind == 5:  # truncated or bit-flipped JSON
        b = bytearray(body[: rnd.randrange(len(body))])
        for _ in range(rnd.randint(0, 3)):
            if b:
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        return [b"somad/cam0", bytes(b), b""]
    if kind == 6:  # random bytes, random part count
        return [rnd.randbytes(rnd.randint(0, 300)) for _ in range(rnd.randint(1, 5))]
    if kind == 7:  # topics: mismatch, not UTF-8, long, reserved
        return [rnd.choice([b"somad/cam1", b"somad/\xff\xfe", b"somad/" + b"c" * 300, b"somad/_status", b"x"]), body,
                b""]
    if kind == 8:  # heartbeats and status with garbage inside
        beat = {"schema": rnd.choice([messages.HEARTBEAT_SCHEMA, messages.STATUS_SCHEMA]), "event": rnd.choice(
            ["final", "camera", "health", None]), "camera": rnd.choice(["cam0", "../x", 5]),
                "status": rnd.choice(WRONG_VALUES), "health": rnd.choice(WRONG_VALUES),
                "cameras": rnd.choice([{"cam0": {"status": rnd.choice(WRONG_VALUES), "fps": rnd.choice(WRONG_VALUES),
                                                 "capture_drops": rnd.choice(WRONG_VALUES),
                                                 "health": rnd.choice(WRONG_VALUES)}}, [], "x", {"../e": {}}]),
                "at": rnd.choice(WRONG_VALUES), "uptime_s": rnd.choice(WRONG_VALUES), "seq": rnd.randint(0, 5),
                "model": rnd.choice(WRONG_VALUES)}
        return [rnd.choice([b"somad/_heartbeat", b"somad/_status"]), json.dumps(beat).encode()]
    if kind == 9:  # heatmap metadata and payload that disagree
        h["heatmap"] = {"encoding": rnd.choice(["png", "f16"]), "shape": [rnd.randint(1, 64), rnd.randint(1, 64)],
                        "dtype": "float16", "vmax": rnd.choice([1.0, None, -1])}
        return [b"somad/cam0", json.dumps(h).encode(), rnd.randbytes(rnd.randint(0, 500))]
    if kind == 10:  # a big header (over 1 MiB)
        h["error"] = "e" * (1 << 20)
        return verdict_parts(h)
    h["defects"] = [{"x": rnd.choice(WRONG_VALUES)}] * rnd.randint(1, 3)
    return verdict_parts(h)


def fuzz_messages(n: int, seed: int = 0) -> list[list[bytes]]:
    rnd = random.Random(seed)
    return [NESTED_REPRO] + [_mutations(rnd, i) for i in range(n)]


class FuzzPublisher:
    """A PUB the receivers connect to (an XPUB, to see their subscriptions arrive)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(endpoint)
        self.subscribers = 0

    def wait_subscribers(self, n: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.subscribers < n:
            assert time.monotonic() < deadline, f"{self.subscribers} of {n} receivers subscribed"
            if self.sock.poll(100) and self.sock.recv()[:1] == b"\x01":
                self.subscribers += 1

    def send_all(self, msgs: list[list[bytes]]) -> None:
        for i, parts in enumerate(msgs):
            self.sock.send_multipart(parts)
            if i % 50 == 49:
                time.sleep(0.01)  # a receiver's queue (1000 messages) is not the thing under test

    def deliver_valid(self, seen: Callable[[int], bool], timeout_s: float = 20.0, camera: str = "cam0") -> int:
        """Send valid verdicts (frame ids 1_000_000, ...) until `seen(frame_id)` is true; returns that id."""
        deadline = time.monotonic() + timeout_s
        frame_id = 1_000_000
        while time.monotonic() < deadline:
            self.sock.send_multipart(verdict_parts(valid_header(frame_id, camera)))
            t_next = time.monotonic() + 0.2
            while time.monotonic() < t_next:
                if seen(frame_id):
                    return frame_id
                time.sleep(0.02)
            frame_id += 1
        raise AssertionError("no valid verdict got through after the fuzz messages")

    def close(self) -> None:
        self.sock.close()
