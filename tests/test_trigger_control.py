"""The control endpoint (runtime/trigger/control.py) and its client, over real ZeroMQ sockets on 127.0.0.1:
dispatch, replies from other threads, and hostile requests each answered with an error naming what arrived
while the server keeps answering."""

from __future__ import annotations

import json
import random
import threading

import pytest
import zmq

from edge_somad.errors import ConfigError, ControlTimeoutError, InputError
from edge_somad.runtime.trigger.client import request, request_trigger
from edge_somad.runtime.trigger.control import MAX_FRAME_BYTES, MAX_REQUEST_BYTES, ControlServer
from tests.helpers.poll import wait_until
from tests.helpers.runtime import free_port


@pytest.fixture
def server():
    srv = ControlServer(f"tcp://127.0.0.1:{free_port()}")
    srv.register("echo", lambda req: {"ok": True, "got": req.body})
    srv.start()
    yield srv
    srv.close()


def raw_exchange(endpoint: str, frames: list[bytes], timeout_ms: int = 3000) -> dict | None:
    """Send raw frames from a DEALER (so any framing can be sent); the JSON answer or None."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        if not sock.poll(timeout_ms):
            return None
        parts = sock.recv_multipart()
        assert parts[0] == b"", parts
        return json.loads(parts[-1])
    finally:
        sock.close()


def test_plain_req_client_gets_its_answer(server):
    assert request(server.bound_endpoint, {"cmd": "echo", "x": 1}, 5.0) == {"ok": True, "got": {"cmd": "echo", "x": 1}}
    ping = request(server.bound_endpoint, {"cmd": "ping"}, 5.0)
    assert ping["ok"] is True and ping["commands"] == ["echo", "ping"]


def test_deferred_replies_from_other_threads_do_not_block_other_clients(server):
    """A handler that answers later (a trigger waits for its frame) leaves the endpoint free for others."""
    held = []
    server.register("later", lambda req: held.append(req))
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(request(server.bound_endpoint, {"cmd": "later"}, 10.0)))
    t.start()
    assert wait_until(lambda: held, 5.0), "the deferred handler was never called"
    assert request(server.bound_endpoint, {"cmd": "echo"}, 5.0)["ok"] is True  # not stuck behind `later`
    answering = threading.Thread(target=held[0].reply, args=({"ok": True, "late": 1},))
    answering.start()
    answering.join(5)
    t.join(5)
    assert out == {"ok": True, "late": 1}
    assert held[0].reply({"again": True}) is False  # exactly one answer per request


BAD = [  # (frames after the DEALER's empty delimiter, words the error must contain)
    ([b"{not json"], ["not JSON", "{not json"]),
    ([b"\xff\xfe\x00"], ["not UTF-8"]),
    ([b"[1, 2]"], ["JSON list", "expected an object"]),
    ([b'"trigger"'], ["JSON str"]),
    ([b"{}"], ["'cmd'", "None"]),
    ([b'{"cmd": 7}'], ["'cmd' is 7"]),
    ([b'{"cmd": "launch_missiles"}'], ["unknown cmd 'launch_missiles'", "echo", "ping"]),
    ([b"[" * 3000 + b"]" * 2000], ["request of 5000 bytes", str(MAX_REQUEST_BYTES)]),
    ([b"[" * 4000], ["not JSON"]),  # deeper than the parser recurses, within the size limit
    ([b" " * (MAX_REQUEST_BYTES + 1)], [f"request of {MAX_REQUEST_BYTES + 1} bytes"]),
    ([b"{}", b"", b"{}", b"{}"], ["expected one JSON frame"]),
]


@pytest.mark.parametrize(("frames", "words"), BAD)
def test_bad_requests_get_an_error_naming_what_arrived(server, frames, words):
    answer = raw_exchange(server.bound_endpoint, [b"", *frames])
    assert answer is not None, "no answer to a bad request"
    assert answer["ok"] is False and answer["verdict"] == "error"
    for w in words:
        assert w in answer["error"], (w, answer["error"])
    assert request(server.bound_endpoint, {"cmd": "echo"}, 5.0)["ok"] is True  # still serving


def test_huge_frames_and_random_bytes_do_not_stop_the_server(server):
    rnd = random.Random(7)
    assert raw_exchange(server.bound_endpoint, [b"", b"x" * (MAX_FRAME_BYTES * 4)], timeout_ms=500) is None
    for i in range(200):
        frames = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 64))) for _ in range(rnd.randrange(1, 4))]
        raw_exchange(server.bound_endpoint, frames, timeout_ms=20 if i % 10 else 500)
    assert request(server.bound_endpoint, {"cmd": "echo", "i": 1}, 5.0)["got"]["i"] == 1
    assert server.counts["errors"] > 0


def test_handler_exceptions_are_answered_not_fatal(server):
    server.register("typed", lambda req: (_ for _ in ()).throw(InputError("part_id 'x' is not allowed")))
    server.register("bug", lambda req: 1 / 0)
    typed = request(server.bound_endpoint, {"cmd": "typed"}, 5.0)
    assert typed["error"] == "part_id 'x' is not allowed" and typed["cmd"] == "typed"
    bug = request(server.bound_endpoint, {"cmd": "bug"}, 5.0)
    assert "ZeroDivisionError" in bug["error"] and bug["ok"] is False
    assert request(server.bound_endpoint, {"cmd": "echo"}, 5.0)["ok"] is True


def test_client_timeout_is_a_typed_error_and_leaves_nothing_behind():
    port = free_port()
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # accepts, never answers
    silent.bind(f"tcp://127.0.0.1:{port}")
    try:
        with pytest.raises(ControlTimeoutError, match=r"within 0.2 s"):
            request_trigger(f"tcp://127.0.0.1:{port}", "P-1", 100, 0.2)
    finally:
        silent.close(linger=0)


@pytest.mark.parametrize(("part_id", "deadline"), [("", 100), ("P\n1", 100), ("x" * 65, 100), (" P-1", 100),
                                                    (7, 100), ("P-1", 0), ("P-1", True), ("P-1", 1.5)])
def test_client_refuses_bad_arguments_before_sending(part_id, deadline):
    with pytest.raises(InputError):
        request_trigger("tcp://127.0.0.1:1", part_id, deadline, 1.0)


def test_register_checks_names_and_bind_errors_are_clear(server):
    with pytest.raises(ConfigError, match="lower-case"):
        server.register("Bad Name", lambda req: None)
    with pytest.raises(ConfigError, match="cannot bind the control endpoint"):
        ControlServer(server.bound_endpoint)
