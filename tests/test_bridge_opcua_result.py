"""OPC UA: each result is one atomic value (read at 20 results/s), string NodeIds, stale values after `run` dies."""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_somad.runtime.bridges.opcua import NAMESPACE, result_values
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.publisher import Publisher
from tests.helpers.bridges import connect_opcua, start_bridge
from tests.helpers.runtime import free_port

N = 100
RATE = 20.0  # results per second, as a fast line hands them to a PLC


def _header(i: int) -> dict:
    """Frame i: pass, fail with 1..3 defects, or error, with a score that differs per frame."""
    kind = ("pass", "fail", "pass", "error", "fail")[i % 5]
    box = {"x": 1, "y": 2, "w": 3, "h": 4, "area_px": 12, "max_score": 1.0}
    defects = [box] * (1 + i % 3) if kind == "fail" else []
    score = None if kind == "error" else (0.1 + i / 1000 if kind == "pass" else 0.6 + i / 1000)
    return messages.verdict_header(
        camera="c1", frame_id=i, captured_at=time.time() - 0.01, published_at=time.time(), score=score,
        threshold=0.5, verdict=kind, error="camera fault: black frame" if kind == "error" else None,
        defects=defects, model={"name": "m", "onnx_sha256": "ab"}, heatmap=None, frame_shape=(64, 96), overlay=False)


def _heartbeat(status: str = "running") -> dict:
    return {"schema": messages.HEARTBEAT_SCHEMA, "at": time.time(), "uptime_s": 1.0, "status": status,
            "model": {"name": "m", "onnx_sha256": "ab"},
            "cameras": {"c1": {"status": "running", "fps": RATE, "capture_drops": 0}}}


def _same(got, want) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, datetime):
        got = got if got.tzinfo else got.replace(tzinfo=timezone.utc)
        return abs((got - want).total_seconds()) < 1e-3
    return got == want


def _mismatch(value, by_frame: dict[int, dict]) -> list[str]:
    """Fields of one Result value that differ from the verdict published for its own frame id."""
    want = result_values(by_frame[value.FrameId])
    return [name for name, expected in want.items() if not _same(getattr(value, name), expected)]


async def _client(url: str, publish, stop_publisher, restart_publisher) -> dict:

    notified, read_back, jsons = [], [], []
    reads: list[asyncio.Task] = []
    client = await connect_opcua(url)
    out: dict = {}
    try:
        await client.load_data_type_definitions()  # ResultDataType: the client decodes the structure
        idx = await client.get_namespace_index(NAMESPACE)
        result = client.get_node(f"ns={idx};s=box1.c1.LastResult.Result")
        as_json = client.get_node(f"ns={idx};s=box1.c1.LastResult.ResultJson")
        out["initial"] = (await result.read_data_value(raise_on_bad_status=False)).StatusCode.name

        async def read_now() -> None:  # the documented PLC pattern: on a change, read the result
            read_back.append((await result.read_data_value(raise_on_bad_status=False)).Value.Value)

        class Handler:
            def datachange_notification(self, node, val, data) -> None:
                good = data.monitored_item.Value.StatusCode.is_good()  # later: the same value turning Uncertain
                if node.nodeid == result.nodeid and good and val.ResultId:
                    notified.append(val)
                    reads.append(asyncio.get_running_loop().create_task(read_now()))
                elif node.nodeid == as_json.nodeid and good and val:
                    jsons.append(json.loads(val))

        sub = await client.create_subscription(500, Handler())  # 500 ms publishing interval, as in the field
        await sub.subscribe_data_change([result, as_json], queuesize=2 * N)
        headers = await asyncio.to_thread(publish)
        deadline = time.monotonic() + 20
        while (not notified or notified[-1].FrameId != N - 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.7)  # the ResultJson notifications of the last publishing cycle
        await asyncio.gather(*reads)
        out.update(notified=notified, read_back=read_back, jsons=jsons, headers=headers)
        camera = client.get_node(f"ns={idx};s=box1.c1")
        box = client.get_node(f"ns={idx};s=box1")
        out["names"] = [(await n.read_browse_name()) for n in (box, camera, result)]

        async def state() -> tuple:
            dv = await result.read_data_value(raise_on_bad_status=False)
            fps = await client.get_node(f"ns={idx};s=box1.c1.Fps").read_data_value(raise_on_bad_status=False)
            return (await client.get_node(f"ns={idx};s=box1.SystemState").read_value(),
                    await client.get_node(f"ns={idx};s=box1.c1.CameraStatus").read_value(),
                    dv.StatusCode.name, fps.StatusCode.name, dv.Value.Value.FrameId)

        out["live"] = await state()
        stop_publisher()  # `run` killed: no final status, no more heartbeats
        deadline = time.monotonic() + 10
        while (await state())[0] != "offline" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        out["dead"] = await state()
        await asyncio.to_thread(restart_publisher)  # `run` is back: values are Good again
        deadline = time.monotonic() + 10
        while (await state())[2] != "Good" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        out["back"] = await state()
        out["c2"] = await client.get_node(f"ns={idx};s=box1.c2.LastResult.Result").read_browse_name()
    finally:
        await client.disconnect()
    return out


def test_each_result_is_one_atomic_value_and_goes_uncertain_when_run_dies(tmp_path: Path) -> None:
    pytest.importorskip("asyncua")
    port, opc_port = free_port(), free_port()
    url = f"opc.tcp://127.0.0.1:{opc_port}/edge-somad/"
    pubs = [Publisher(f"tcp://127.0.0.1:{port}", "somad", sndhwm=1000)]
    bridge = start_bridge(["opcua", "--connect", f"tcp://127.0.0.1:{port}", "--endpoint", url, "--box", "box1",
                           "--camera", "c1", "--stale-after", "1.5", "--log-level", "warning"],
                          tmp_path / "bridge.log")

    def publish() -> list[dict]:
        assert pubs[0].wait_for_subscribers(1, 20), (tmp_path / "bridge.log").read_text()
        headers, t0 = [], time.monotonic()
        for i in range(N):
            if i % 20 == 0:
                pubs[0].publish_heartbeat(_heartbeat())
            header = _header(i)
            pubs[0].publish_verdict(header)
            headers.append(header)
            time.sleep(max(0.0, t0 + (i + 1) / RATE - time.monotonic()))  # pacing the line, not a wait for a result
        return headers

    def restart() -> None:
        pubs.append(Publisher(f"tcp://127.0.0.1:{port}", "somad", sndhwm=1000))
        assert pubs[-1].wait_for_subscribers(1, 20)
        pubs[-1].publish_heartbeat(_heartbeat())
        pubs[-1].publish_verdict({**_header(N), "camera": "c2"})

    try:
        got = asyncio.run(_client(url, publish, pubs[0].close, restart))
        assert bridge.poll() is None, (tmp_path / "bridge.log").read_text()
    finally:
        bridge.terminate()
        bridge.wait(10)
        for pub in pubs:
            pub.close()
    by_frame = {h["frame_id"]: h for h in got["headers"]}
    assert got["initial"] == "BadWaitingForInitialData"
    assert [v.FrameId for v in got["notified"]] == list(range(N))  # every result notified, in order
    bad = {v.FrameId: _mismatch(v, by_frame) for v in got["notified"]}
    assert not any(bad.values()), {k: v for k, v in bad.items() if v}
    assert len(got["read_back"]) == N  # read after each notification: maybe a later result, but all its own
    bad = {v.FrameId: _mismatch(v, by_frame) for v in got["read_back"]}
    assert not any(bad.values()), {k: v for k, v in bad.items() if v}
    assert all(v.FrameId >= n.FrameId for v, n in zip(got["read_back"], got["notified"], strict=True))
    assert [j["FrameId"] for j in got["jsons"]] == list(range(N))
    for j in got["jsons"]:
        want = result_values(by_frame[j["FrameId"]])
        assert (j["Verdict"], j["DefectCount"], j["ResultId"]) == (want["Verdict"], want["DefectCount"],
                                                                  want["ResultId"])
    assert {v.Verdict for v in got["notified"]} == {"pass", "fail", "error"}
    assert all(n.NamespaceIndex > 0 for n in got["names"])  # browse names in the bridge's namespace
    assert got["live"] == ("running", "running", "Good", "Good", N - 1)
    assert got["dead"] == ("offline", "offline", "UncertainLastUsableValue", "UncertainLastUsableValue", N - 1)
    assert got["back"][0] == "running" and got["back"][2:] == ("Good", "Good", N - 1)
    assert got["c2"].Name == "Result"

