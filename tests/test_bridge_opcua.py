"""`edge-somad bridge opcua` as a process, a real `run`, and an asyncua client subscribed to LastResult."""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge_somad.errors import ConfigError
from edge_somad.runtime.bridges.opcua import NAMESPACE, result_values
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber
from tests.helpers.bridges import REPO, connect_opcua, start_bridge
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import defect, free_port, grey, make_model_dir, write_video

N = 50
WATCHED = ("ResultId", "FrameId", "Verdict", "ResultEvaluation", "Score", "ScoreNormalised", "DefectCount",
           "ErrorText", "LatencyMs", "CreationTime")


def _frames() -> list[np.ndarray]:
    """Grey passes and blue patches of varying strength, so scores change from frame to frame."""
    out = []
    for i in range(N):
        img = grey()
        if i % 3:
            img[30:50, 40:64] = (128 + 2 * i, 128, 128 - i)
        out.append(defect() if i % 7 == 5 else img)
    return out


def _collapse(values: list) -> list:
    """What value-change notifications show: consecutive equal values once (NaN equals NaN here)."""
    keyed = [("nan",) if isinstance(v, float) and math.isnan(v) else v for v in values]
    return [k for k, _ in itertools.groupby(keyed)]


def _expected(h: dict) -> dict:
    values = result_values(h)
    return {k: values[k] for k in WATCHED}


def _same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN (as the notifications show it)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


async def _client_run(url: str, start_run) -> tuple[dict[str, list], dict[str, int], list[dict]]:

    got: dict[str, list] = {k: [] for k in WATCHED}
    done = asyncio.Event()

    class Handler:
        def __init__(self, names: dict) -> None:
            self.names = names

        def datachange_notification(self, node, val, data) -> None:
            name = self.names[node.nodeid.to_string()]
            got[name].append(val)
            if name == "ResultId" and val == f"c1/{N - 1}":
                done.set()

    client = await connect_opcua(url)
    try:
        idx = await client.get_namespace_index(NAMESPACE)
        nodes = {k: client.get_node(f"ns={idx};s=box1.c1.LastResult.{k}") for k in WATCHED}
        sub = await client.create_subscription(20, Handler({n.nodeid.to_string(): k for k, n in nodes.items()}))
        await sub.subscribe_data_change(list(nodes.values()), queuesize=N + 10)
        headers = await asyncio.to_thread(start_run)
        await asyncio.wait_for(done.wait(), 30)
        # ResultId is written last: wait (bounded) until every variable's last notification shows the
        # value the server holds now, i.e. the last publish cycle's notifications have all arrived.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            current = {k: await n.read_value() for k, n in nodes.items()}
            if all(got[k] and _same(got[k][-1], current[k]) for k in nodes):
                break
            await asyncio.sleep(0.05)
        counters = {k: await client.get_node(f"ns={idx};s=box1.c1.Counters.{k}").read_value()
                    for k in ("PassCount", "FailCount", "ErrorCount")}
        counters["Drops"] = await client.get_node(f"ns={idx};s=box1.Drops").read_value()
        counters["Model"] = await client.get_node(f"ns={idx};s=box1.Model").read_value()
        counters["HeartbeatAge"] = await client.get_node(f"ns={idx};s=box1.HeartbeatAge").read_value()
        counters["CameraStatus"] = await client.get_node(f"ns={idx};s=box1.c1.CameraStatus").read_value()
    finally:
        await client.disconnect()
    return got, counters, headers


def test_opcua_client_sees_every_verdict_of_a_50_frame_run(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", _frames())
    zmq_ep, opc_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    url = f"opc.tcp://127.0.0.1:{opc_port}/edge-somad/"
    bridge = start_bridge(["opcua", "--connect", zmq_ep, "--endpoint", url, "--box", "box1", "--camera", "c1",
                           "--log-level", "warning"], tmp_path / "bridge.log")
    sock = connect_subscriber(zmq_ep, b"somad/")

    def start_run() -> list[dict]:
        """`run` with the bridge and this test's own ZeroMQ subscriber: the headers to compare with."""
        res = subprocess.Popen(
            [edge_somad_exe(), "run", "--camera", f"c1={video}", "--model",
             str(model_dir), "--publish", zmq_ep, "--wait-subscribers", "2", "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        headers, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            if sock.poll(100):
                m = messages.parse_message(sock.recv_multipart())
                if m.kind == "verdict":
                    headers.append(m.header)
                elif m.kind == "status" and m.header.get("event") == "final":
                    break
        assert res.wait(30) == 0, res.stderr.read()
        return headers

    try:
        got, counters, headers = asyncio.run(_client_run(url, start_run))
        assert bridge.poll() is None, (tmp_path / "bridge.log").read_text()
    finally:
        bridge.terminate()
        bridge.wait(10)
        sock.close()
    assert [h["frame_id"] for h in headers] == list(range(N))
    expected = [_expected(h) for h in headers]
    # The first notification of each item is its state at subscription time: no value yet (BadWaitingForInitialData).
    assert got["ResultId"][0] is None
    assert got["ResultId"][1:] == [f"c1/{i}" for i in range(N)]  # one change per verdict, none lost
    for name in WATCHED:  # every other variable: one notification per change of value, each equal to the header's
        assert _collapse(got[name]) == _collapse([None] + [e[name] for e in expected]), name
    verdicts = [h["verdict"] for h in headers]
    assert {v: verdicts.count(v) for v in ("pass", "fail")} == {"pass": counters["PassCount"],
                                                                "fail": counters["FailCount"]}
    assert counters["FailCount"] > 0 and counters["ErrorCount"] == 0 and counters["Drops"] == 0
    assert counters["Model"] == "standin" and bridge.returncode == 0
    assert 0 <= counters["HeartbeatAge"] < 10 and counters["CameraStatus"] in ("running", "ended")


def test_opcua_bad_options_are_clear_errors(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from edge_somad.cli.bridge import PASSWORD_ENV, app

    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    args = ["opcua", "--box", "b", "--connect", f"tcp://127.0.0.1:{free_port()}"]
    res = CliRunner().invoke(app, [*args, "--certificate", str(tmp_path / "c.der")])
    assert res.exit_code == 2 and "--certificate and --private-key go together" in res.output
    res = CliRunner().invoke(app, [*args, "--username", "plc"])
    assert res.exit_code == 2 and "--username needs a password" in res.output
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    res = CliRunner().invoke(app, [*args, "--username", "plc"])
    assert res.exit_code == 2 and "--allow-plaintext-password" in res.output, res.output
    monkeypatch.delenv(PASSWORD_ENV)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        url = f"opc.tcp://127.0.0.1:{taken.getsockname()[1]}/edge-somad/"
        res = CliRunner().invoke(app, [*args, "--endpoint", url])
    assert res.exit_code == 2 and f"cannot serve OPC UA on {url}" in res.output
    assert "address already in use" in res.output and "Traceback" not in res.output, res.output


async def _serve_and(config, body) -> None:
    """Run an OpcuaBridge in this event loop (no `run` needed: nothing is connected upstream) around body()."""
    from edge_somad.runtime.bridges.opcua import OpcuaBridge

    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(OpcuaBridge(config).run(stop, started))
    await asyncio.wait_for(started.wait(), 20)
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def _read_model(url: str, **client_setup) -> str:
    from asyncua import Client

    client = Client(url, timeout=5)
    if "user" in client_setup:
        client.set_user(client_setup["user"])
        client.set_password(client_setup["password"])
    if "security" in client_setup:
        await client.set_security(*client_setup["security"])
    async with client:
        idx = await client.get_namespace_index(NAMESPACE)
        return await client.get_node(f"ns={idx};s=sec.Model").read_value()


def test_opcua_username_password_refuses_anonymous_and_wrong_passwords() -> None:
    from edge_somad.runtime.bridges.opcua import OpcuaConfig
    from edge_somad.runtime.bridges.source import SourceConfig

    url = f"opc.tcp://127.0.0.1:{free_port()}/edge-somad/"
    source = SourceConfig((f"tcp://127.0.0.1:{free_port()}",))
    with pytest.raises(ConfigError, match="clear text"):  # a password over SecurityPolicy None: not by default
        OpcuaConfig(source, box="sec", endpoint=url, username="plc", password="s3cret")
    config = OpcuaConfig(source, box="sec", endpoint=url, username="plc", password="s3cret",
                         allow_plaintext_password=True)

    async def body() -> None:
        assert await _read_model(url, user="plc", password="s3cret") == ""
        for kwargs in ({}, {"user": "plc", "password": "wrong"}, {"user": "admin", "password": "s3cret"}):
            with pytest.raises(Exception, match="Bad"):  # BadIdentityTokenInvalid / BadUserAccessDenied
                await _read_model(url, **kwargs)

    asyncio.run(_serve_and(config, body))


def test_opcua_basic256sha256_only(tmp_path: Path) -> None:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from edge_somad.runtime.bridges.opcua import OpcuaConfig
    from edge_somad.runtime.bridges.source import SourceConfig

    async def certs() -> None:
        for name, uri, use in (("server", "urn:freeopcua:python:server", ExtendedKeyUsageOID.SERVER_AUTH),
                               ("client", "urn:freeopcua:client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            await setup_self_signed_certificate(tmp_path / f"{name}.pem", tmp_path / f"{name}.der", uri, "localhost",
                                                [use], {"commonName": f"edge-somad test {name}"})

    asyncio.run(certs())
    url = f"opc.tcp://127.0.0.1:{free_port()}/edge-somad/"
    config = OpcuaConfig(SourceConfig((f"tcp://127.0.0.1:{free_port()}",)), box="sec", endpoint=url,
                         certificate=tmp_path / "server.der", private_key=tmp_path / "server.pem")

    async def body() -> None:
        secure = (SecurityPolicyBasic256Sha256, str(tmp_path / "client.der"), str(tmp_path / "client.pem"))
        assert await _read_model(url, security=secure) == ""
        with pytest.raises(Exception):  # noqa: B017 - asyncua raises several types for a refused policy
            await _read_model(url)  # no security: refused

    asyncio.run(_serve_and(config, body))
