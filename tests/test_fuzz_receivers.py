"""Fuzz: thousands of random and structure-aware broken messages over a real PUB to every receiver
(`edge-somad subscribe` as a process, the view's receiver, the MQTT bridge with mosquitto, the OPC UA
bridge); each must stay alive, count them as rejected, and still deliver the next valid verdict."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fuzz_support import NESTED_REPRO, FuzzPublisher, fuzz_messages
from tests.helpers.bridges import Consumer, Mosquitto, start_bridge
from tests.helpers.runtime import free_port

N_FUZZ = 2000
MARK = 1_000_000  # frame ids of the valid verdicts sent after the fuzz


def _entry_point() -> list[str]:
    exe = Path(sys.executable).with_name("edge-somad")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("edge-somad")
    if found is None:
        pytest.skip("the edge-somad entry point is not installed (pip install -e .)")
    return [found]


def test_subscribe_process_survives_fuzz_and_the_nested_json_repro(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = FuzzPublisher(endpoint)
    csv, fails = tmp_path / "v.csv", tmp_path / "fails"
    # --timeout 3: after the last valid verdict it ends by itself and prints its counts
    proc = subprocess.Popen([*_entry_point(), "subscribe", "--connect", endpoint, "--csv", str(csv),
                             "--save-fails", str(fails), "--timeout", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    errors: list[str] = []  # stderr read as it comes: a full pipe would block the subscriber's logging

    def read() -> None:
        for line in proc.stdout:
            lines.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    try:
        pub.wait_subscribers(1)
        t0 = time.monotonic()
        pub.send_all([NESTED_REPRO])  # the named case alone first: it used to end the process at once
        pub.deliver_valid(lambda fid: any(x.get("frame_id", 0) >= MARK for x in lines))
        pub.send_all(fuzz_messages(N_FUZZ, seed=1))
        lines.clear()
        pub.deliver_valid(lambda fid: any(x.get("frame_id", 0) >= MARK for x in lines))
        assert proc.poll() is None, "".join(errors)[-3000:]
        assert time.monotonic() - t0 < 20
        assert proc.wait(10) == 0, "".join(errors)[-3000:]  # it ends 3 s after the last message
        time.sleep(0.2)
        err = "".join(errors)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    summary = [x for x in err.splitlines() if "verdicts," in x]
    assert summary and "rejected" in summary[-1], err[-2000:]
    rejected = int(summary[-1].split(", ")[2].split()[0])
    assert rejected >= N_FUZZ // 2, summary  # most fuzz messages are rejected (some are valid by chance)
    assert "Traceback" not in err and "RecursionError" not in err
    assert all(x["verdict"] in ("pass", "fail", "error") for x in lines)
    assert not fails.exists() or all(p.stat().st_size < (4 << 20) for p in fails.iterdir())


def test_view_receiver_survives_fuzz(tmp_path: Path) -> None:
    from edge_somad.runtime.view.view import BackgroundView, ViewConfig

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = FuzzPublisher(endpoint)

    def state() -> dict:
        with urllib.request.urlopen(view.url + "api/state", timeout=5) as r:
            return json.loads(r.read())

    def marked(_fid: int) -> bool:
        last = (state()["tiles"].get("cam0") or {}).get("last") or {}
        return last.get("frame_id", 0) >= MARK

    try:
        with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0)) as view:
            pub.wait_subscribers(1)
            pub.send_all(fuzz_messages(N_FUZZ, seed=2))
            pub.deliver_valid(marked)
            s = state()
            link = s["endpoints"][endpoint]
            assert link["state"] == "live" and link["error"] is None and link["restarts"] == 0, link
            assert link["rejected"] >= N_FUZZ // 2
    finally:
        pub.close()


def test_mqtt_bridge_survives_fuzz(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = FuzzPublisher(endpoint)
    consumer = Consumer(broker.port, client_id="fuzz-consumer")
    bridge = start_bridge(["mqtt", "--connect", endpoint, "--broker", "127.0.0.1", "--port", str(broker.port),
                           "--box", "fuzzbox", "--queue-file", str(tmp_path / "q.sqlite"), "--log-level", "warning"],
                          tmp_path / "bridge.log")

    def marked(_fid: int) -> bool:
        return any(d.get("frame_id", 0) >= MARK for d in consumer.json("DDATA"))

    try:
        pub.wait_subscribers(1)
        pub.send_all(fuzz_messages(N_FUZZ, seed=3))
        pub.deliver_valid(marked)
        assert bridge.poll() is None, (tmp_path / "bridge.log").read_text()[-3000:]
        status = lambda: [s for s in consumer.json("NSTATUS") if s["upstream"]["rejected"] >= N_FUZZ // 2]  # noqa: E731
        assert consumer.wait_for(lambda _m: bool(status()), 15), consumer.json("NSTATUS")[-1:]
        # only valid verdicts reached the broker, each as strict JSON
        assert all(d["verdict"] in ("pass", "fail", "error") for d in consumer.json("DDATA"))
    finally:
        bridge.terminate()
        bridge.wait(15)
        consumer.close()
        broker.stop()
        pub.close()
    assert "Traceback" not in (tmp_path / "bridge.log").read_text()


def test_opcua_bridge_survives_fuzz() -> None:
    pytest.importorskip("asyncua")
    from asyncua import Client

    from edge_somad.runtime.bridges.opcua import NAMESPACE, OpcuaBridge, OpcuaConfig
    from edge_somad.runtime.bridges.source import SourceConfig

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    url = f"opc.tcp://127.0.0.1:{free_port()}/edge-somad/"
    pub = FuzzPublisher(endpoint)
    config = OpcuaConfig(source=SourceConfig((endpoint,)), box="fz", endpoint=url, cameras=("cam0",))

    async def main() -> tuple[str, int]:
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(OpcuaBridge(config).run(stop, started))
        await asyncio.wait_for(started.wait(), 20)
        try:
            await asyncio.to_thread(pub.wait_subscribers, 1)
            await asyncio.to_thread(pub.send_all, fuzz_messages(N_FUZZ, seed=4))
            async with Client(url, timeout=5) as client:
                idx = await client.get_namespace_index(NAMESPACE)
                rid = client.get_node(f"ns={idx};s=fz.cam0.LastResult.ResultId")
                loop = asyncio.get_running_loop()
                latest: list[str] = [""]

                async def poll() -> None:
                    while True:
                        value = await rid.read_data_value(raise_on_bad_status=False)  # Bad: no result yet
                        latest[0] = value.Value.Value or ""
                        await asyncio.sleep(0.05)

                poller = asyncio.create_task(poll())
                seen = lambda _fid: latest[0].startswith("cam0/") and int(latest[0][5:]) >= MARK  # noqa: E731
                await loop.run_in_executor(None, pub.deliver_valid, seen)
                poller.cancel()
                rejected = await client.get_node(f"ns={idx};s=fz.Rejected").read_value()
            assert not task.done(), task
            return latest[0], rejected
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    try:
        result_id, rejected = asyncio.run(main())
    finally:
        pub.close()
    assert int(result_id.split("/")[1]) >= MARK and rejected >= N_FUZZ // 2
