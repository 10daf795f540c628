"""How many verdicts per second does `edge-somad bridge mqtt` carry from ZeroMQ to an MQTT consumer?

Real parts on 127.0.0.1: a ZeroMQ publisher in this process sending `run`'s verdict messages (header +
64x96 PNG heatmap) as fast as it can, the bridge as its own process (the CLI), a Mosquitto broker and
a paho QoS 1 consumer in this process. Every verdict is stored in the bridge's SQLite queue, published
with QoS 1 and deleted on PUBACK, so the rate is the store-and-forward path end to end.
Scenarios: live (broker up), drain (broker down while the verdicts arrive; rate measured from the first
delivery after it is back to the last) and live with --heatmaps (one PNG message per verdict too); with
--sparkplug, live and drain of `bridge mqtt --sparkplug` (protobuf DDATA at QoS 0, each confirmed by a
QoS 1 fence before it leaves the queue).
    python benchmarks/bridge_throughput.py [--verdicts 5000] [--sparkplug]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.publisher import Publisher

ROOT = "edge-somad/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        if binary is None:
            sys.exit("mosquitto not found: apt-get install mosquitto (scripts/setup.sh does it as root)")
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        # queue_qos0_messages: Sparkplug data is QoS 0; the consumer's persistent session keeps it over a restart
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                             "queue_qos0_messages true\n")
        self.cmd = [binary, "-c", str(self.conf)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class Consumer:
    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.times: list[float] = []
        self.births = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-consumer",
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"{ROOT}/#", 1), ("spBv1.0/#", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        levels = msg.topic.split("/")
        kind = levels[2] if levels[0] == "spBv1.0" else levels[3]
        if kind == "DDATA":
            self.times.append(time.perf_counter())
        elif kind == "NBIRTH":
            self.births += 1

    def wait(self, pred, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not pred():
            raise SystemExit(f"timed out: {len(self.times)} verdicts received")


def headers(n: int) -> tuple[list[dict], bytes]:
    amap = np.random.default_rng(0).random((64, 96)).astype(np.float32)
    meta, png = messages.encode_heatmap(amap, "png", threshold=0.5)
    out = [messages.verdict_header(camera="cam0", frame_id=i, captured_at=time.time(), published_at=time.time(),
                                   score=0.3, threshold=0.5, verdict="pass" if i % 10 else "fail", error=None,
                                   defects=[], model={"name": "bench", "onnx_sha256": "0" * 64}, heatmap=meta,
                                   frame_shape=(480, 640), overlay=False) for i in range(n)]
    return out, bytes(png)


def scenario(name: str, n: int, tmp: Path, heatmaps: bool = False, outage: bool = False,
             sparkplug: bool = False) -> dict:
    broker = Broker(tmp)
    broker.start()
    consumer = Consumer(broker.port)
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", "somad", sndhwm=n + 100)
    cmd = [sys.executable, "-m", "edge_somad.cli.bridge", "mqtt", "--connect", pub.bound_endpoint,
           "--port", str(broker.port), "--box", "bench", "--queue-file", str(tmp / "queue.sqlite"),
           "--log-level", "warning", *(["--heatmaps"] if heatmaps else []), *(["--sparkplug"] if sparkplug else [])]
    bridge = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pub.wait_for_subscribers(1, 10.0)
        # no birth before the stream said what it has: one heartbeat, as `run` sends every second
        pub.publish_heartbeat({"schema": messages.HEARTBEAT_SCHEMA, "at": time.time(), "status": "running",
                               "model": {"name": "bench", "onnx_sha256": "0" * 64},
                               "cameras": {"cam0": {"status": "running"}}})
        consumer.wait(lambda: consumer.births >= 1, 30)
        hs, png = headers(n)
        if outage:
            broker.stop()
        t0 = time.perf_counter()
        for h in hs:
            pub.publish_verdict(h, png)
        if outage:
            db = sqlite3.connect(tmp / "queue.sqlite")  # WAL: reading beside the bridge is fine
            while db.execute("SELECT COUNT(*) FROM q").fetchone()[0] < n:
                time.sleep(0.01)
            db.close()
            broker.start()
            consumer.wait(lambda: len(consumer.times) >= 1)
            t0 = consumer.times[0]
        consumer.wait(lambda: len(consumer.times) >= n)
        elapsed = consumer.times[n - 1] - t0
    finally:
        bridge.terminate()
        bridge.wait(20)
        consumer.client.loop_stop()
        pub.close()
        broker.stop()
    return {"scenario": name, "verdicts": n, "seconds": elapsed, "per_s": n / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verdicts", type=int, default=5000)
    ap.add_argument("--sparkplug", action="store_true", help="the --sparkplug bridge's scenarios instead")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        plan = (("live", {}), ("drain after outage", {"outage": True}), ("live + heatmaps", {"heatmaps": True}))
        if args.sparkplug:
            plan = (("sparkplug live", {"sparkplug": True}),
                    ("sparkplug drain", {"sparkplug": True, "outage": True}))
        for name, kw in plan:
            sub = Path(d) / name.replace(" ", "_")
            sub.mkdir()
            rows.append(scenario(name, args.verdicts, sub, **kw))
    print(f"{'scenario':<20} {'verdicts':>9} {'seconds':>8} {'verdicts/s':>11}")
    for r in rows:
        print(f"{r['scenario']:<20} {r['verdicts']:>9} {r['seconds']:>8.2f} {r['per_s']:>11.0f}")


if __name__ == "__main__":
    main()
