"""What one unauthenticated peer sending many distinct subscriptions costs `edge-somad run`.

Starts `run` as a process on a live MJPEG stream (served here over HTTP at 20 fps, so the line runs
until it is stopped), a legitimate subscriber on `somad/`, then one peer that sends N distinct
subscriptions (`somad/flood0000001`, ...) as fast as ZeroMQ takes them. Prints `run`'s RSS before
the flood, after it (the peer still connected) and after the peer left, the largest gap between
two heartbeats the legitimate subscriber saw, the verdicts it received after the flood, and the
heartbeat's `subscriptions_refused` and `peers_disconnected` (a peer over its inbound byte budget).

    python benchmarks/subscription_flood.py [--subscriptions 1000000] [--model DIR] [--json out.json]

Without --model a tiny test graph is built (the flood's cost does not depend on the model).
tests/test_subscription_flood.py runs the same harness with 50,000 subscriptions.
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import json
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]


class _Mjpeg(http.server.BaseHTTPRequestHandler):
    """multipart/x-mixed-replace JPEG frames at 20 fps: a live camera FFmpeg (inside OpenCV) can open."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        img = np.full((120, 160, 3), 128, np.uint8)
        i = 0
        try:
            while True:
                img[:, :, 0] = 100 + (i % 50)  # frames differ: a frozen stream would be an error verdict
                i += 1
                _, buf = cv2.imencode(".jpg", img)
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(buf)
                                 + buf.tobytes() + b"\r\n")
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


def mjpeg_server() -> tuple[socketserver.ThreadingTCPServer, str]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Mjpeg)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/live.mjpg"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Listener(threading.Thread):
    """The legitimate subscriber: arrival times of heartbeats and verdicts, the newest heartbeat."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"somad/")
        self.sock.connect(endpoint)
        self.beats: list[float] = []
        self.verdicts: list[float] = []
        self.last_beat: dict[str, Any] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(100):
                continue
            parts = self.sock.recv_multipart()
            now = time.monotonic()
            if parts[0].endswith(b"/_heartbeat"):
                self.beats.append(now)
                self.last_beat = json.loads(parts[1])
            elif not parts[0].endswith(b"/_status"):
                self.verdicts.append(now)
        self.sock.close()

    def max_gap(self, since: float) -> float:
        times = [t for t in self.beats if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


def wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def flood(model_dir: Path, n_subscriptions: int, port: int, settle_s: float = 3.0) -> dict[str, Any]:
    """Run the whole experiment; returns the figures (MB, s, counts)."""
    srv, url = mjpeg_server()
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_somad.cli.runtime", "run", "--camera", f"cam0={url}", "--model",
         str(model_dir), "--publish", endpoint, "--log-level", "warning", "--no-health"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listener = Listener(endpoint)
    listener.start()
    try:
        wait(lambda: len(listener.verdicts) >= 10 and len(listener.beats) >= 2, 60, "run's first verdicts")
        time.sleep(1.0)
        rss_before = rss_mb(proc.pid)
        t_start = time.monotonic()
        peer = zmq.Context.instance().socket(zmq.XSUB)
        peer.setsockopt(zmq.LINGER, 0)
        peer.setsockopt(zmq.SNDHWM, 0)  # the flooder keeps all it sends (an XSUB drops above its HWM)
        peer.connect(endpoint)
        for i in range(n_subscriptions):
            peer.send(b"\x01somad/flood%07d" % i)
        t_sent = time.monotonic()
        # run works the subscriptions off (refusing them) or disconnects the peer over its byte budget;
        # done when the refused count stood still for two heartbeats.
        last, still = -1, 0
        while still < 3 and time.monotonic() - t_sent < 120:
            time.sleep(1.0)
            now = listener.last_beat.get("subscriptions_refused", 0)
            still, last = (still + 1 if now == last else 0), now
        t_done = time.monotonic()
        time.sleep(settle_s)
        verdicts_after = sum(1 for t in listener.verdicts if t > t_done)
        subscribers_during = listener.last_beat.get("subscribers")
        rss_flooded = rss_mb(proc.pid)
        peer.close()
        time.sleep(settle_s)
        result = {
            "subscriptions": n_subscriptions, "rss_before_mb": round(rss_before, 1),
            "rss_flooded_mb": round(rss_flooded, 1), "rss_after_peer_left_mb": round(rss_mb(proc.pid), 1),
            "send_s": round(t_sent - t_start, 2), "worked_off_s": round(t_done - t_start, 2),
            "heartbeat_gap_max_s": round(listener.max_gap(t_start), 3),
            "verdicts_during_flood": sum(1 for t in listener.verdicts if t_start < t <= t_done),
            "verdicts_after_flood": verdicts_after,
            "subscriptions_refused": listener.last_beat.get("subscriptions_refused"),
            "peers_disconnected": listener.last_beat.get("peers_disconnected"),
            "subscribers_during_flood": subscribers_during,
            "subscribers_after": listener.last_beat.get("subscribers"),
        }
    finally:
        listener.stop.set()
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        srv.shutdown()
    if proc.returncode != 0:
        raise RuntimeError(f"run exited {proc.returncode}: {err.decode()[-2000:]}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscriptions", type=int, default=1_000_000)
    ap.add_argument("--model", type=Path, default=None, help="model directory [a tiny test graph]")
    ap.add_argument("--port", type=int, default=0, help="publish port [a free one]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.helpers.runtime import free_port, make_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model_dir(Path(tmp) / "model")
        result = flood(model, args.subscriptions, args.port or free_port())
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
