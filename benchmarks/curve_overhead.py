"""What does CURVE cost on the verdict stream? Same messages, one real SUB on 127.0.0.1, with and without.

Each message is what `run` sends with default options: topic, a verdict header, a 224x224 PNG heatmap
(and with --overlay, a 640x480 JPEG overlay). The publisher's queue is made deep enough that nothing
is dropped, so the time is the time to encrypt, send, receive and decrypt every message.
    python benchmarks/curve_overhead.py [--messages 3000] [--overlay] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber, load_client, load_server, make_keys
from edge_somad.runtime.messaging.publisher import Publisher


def payload(overlay: bool) -> tuple[dict, bytes, bytes | None]:
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
    amap = 10 * np.exp(-((yy - 80) ** 2 + (xx - 120) ** 2) / 800) + np.random.default_rng(0).random((224, 224))
    _, heat = messages.encode_heatmap(amap.astype(np.float32), "png", threshold=8.0)
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    jpg = cv2.imencode(".jpg", cv2.GaussianBlur(frame, (9, 9), 3))[1].tobytes() if overlay else None
    header = messages.verdict_header(camera="cam0", frame_id=0, captured_at=time.time(), published_at=time.time(),
                                     score=9.1, threshold=8.0, verdict="fail", error=None, defects=[], model={},
                                     heatmap={"encoding": "png", "shape": [224, 224]}, frame_shape=(480, 640),
                                     overlay=jpg is not None)
    return header, bytes(heat), jpg


def one_run(n: int, overlay: bool, curve_dir: Path | None) -> dict:
    server = client = None
    if curve_dir is not None:
        server = load_server(curve_dir / "server.key_secret", curve_dir / "clients")
        client = load_client(curve_dir / "server.key", curve_dir / "sub.key_secret")
    header, heat, jpg = payload(overlay)
    got = []
    with Publisher("tcp://127.0.0.1:*", "bench", sndhwm=n + 10, curve=server) as pub:
        sub = connect_subscriber(pub.bound_endpoint, b"bench/", client, rcvhwm=0)
        assert pub.wait_for_subscribers(1, 10.0)

        def rx() -> None:
            while len(got) < n and sub.poll(10_000):
                got.append(len(sub.recv_multipart()))

        t = threading.Thread(target=rx)
        t.start()
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish_verdict({**header, "frame_id": i}, heat, jpg)
        t.join()
        elapsed = time.perf_counter() - t0
        sub.close()
    size = len(messages.dumps(header)) + len(heat) + (len(jpg) if jpg else 0)
    return {"curve": curve_dir is not None, "received": len(got), "msg_bytes": size,
            "msgs_per_s": round(n / elapsed), "us_per_msg": round(1e6 * elapsed / n, 1),
            "MB_per_s": round(n * size / elapsed / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--overlay", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        make_keys(keys, "server")
        make_keys(keys, "sub")
        (keys / "clients").mkdir()
        (keys / "clients" / "sub.key").write_bytes((keys / "sub.key").read_bytes())
        for _ in range(args.repeats):
            for curve_dir in (None, keys):
                print(json.dumps(one_run(args.messages, args.overlay, curve_dir)))


if __name__ == "__main__":
    main()
