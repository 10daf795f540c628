"""Reference PLC/MES bridge: subscribe to verdicts, print JSON lines, append CSV, keep failing images.

This is the shape a site integration copies: everything it needs is in the JSON header; the
heatmap/overlay frames are optional payloads. See docs/messages.md for the schema.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import zmq

from edge_somad.runtime import messages

log = logging.getLogger(__name__)

CSV_FIELDS = ("frame_id", "camera", "captured_at", "published_at", "latency_ms", "score", "score_normalised",
              "threshold", "verdict", "error", "n_defects", "defects")


def _csv_row(h: dict[str, Any]) -> dict[str, Any]:
    row = {k: h.get(k) for k in CSV_FIELDS}
    row["n_defects"] = len(h.get("defects") or [])
    row["defects"] = json.dumps(h.get("defects") or [], separators=(",", ":"))
    return row


def save_failure(out_dir: Path, msg: messages.Received) -> list[Path]:
    """Write header JSON + overlay JPEG (if sent) + heatmap (PNG as sent, f16 as .npy) for one verdict."""
    h = msg.header
    stem = out_dir / f"{h['camera']}_{int(h['frame_id']):08d}_{h['verdict']}"
    paths = [stem.with_suffix(".json")]
    paths[0].write_text(json.dumps(h, indent=1))
    if msg.overlay:
        paths.append(stem.with_suffix(".jpg"))
        paths[-1].write_bytes(msg.overlay)
    meta = h.get("heatmap")
    if meta and meta["encoding"] == "png":
        paths.append(stem.with_name(stem.name + "_heatmap.png"))
        paths[-1].write_bytes(msg.heatmap)
    elif meta and meta["encoding"] == "f16":
        paths.append(stem.with_name(stem.name + "_heatmap.npy"))
        np.save(paths[-1], messages.decode_heatmap(meta, msg.heatmap), allow_pickle=False)
    return paths


def subscribe_loop(
    connect: str,
    topic: str = "somad/",
    csv_path: Path | None = None,
    save_fails: Path | None = None,
    count: int | None = None,
    timeout_s: float | None = None,
    out: IO[str] = sys.stdout,
    save_errors: bool = True,
) -> int:
    """Receive until `count` verdicts or `timeout_s` seconds without any message. Returns verdicts seen."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    sock.connect(connect)
    if save_fails is not None:
        save_fails.mkdir(parents=True, exist_ok=True)
    csv_file = writer = None
    if csv_path is not None:
        new = not csv_path.exists() or csv_path.stat().st_size == 0
        csv_file = open(csv_path, "a", newline="")  # noqa: SIM115 - closed in finally
        writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
    seen = 0
    last = time.monotonic()
    try:
        while count is None or seen < count:
            wait = 200 if timeout_s is None else max(1, int(min(0.2, timeout_s) * 1000))
            if not sock.poll(wait, zmq.POLLIN):
                if timeout_s is not None and time.monotonic() - last >= timeout_s:
                    break
                continue
            last = time.monotonic()
            msg = messages.parse_message(sock.recv_multipart())
            if msg.kind != "verdict":
                log.info("%s %s", msg.topic, json.dumps(msg.header))
                continue
            seen += 1
            out.write(json.dumps({"topic": msg.topic, **msg.header}) + "\n")
            out.flush()
            if writer is not None and csv_file is not None:
                writer.writerow(_csv_row(msg.header))
                csv_file.flush()
            failing = msg.header["verdict"] == "fail" or (save_errors and msg.header["verdict"] == "error")
            if save_fails is not None and failing:
                save_failure(save_fails, msg)
    finally:
        if csv_file is not None:
            csv_file.close()
        sock.close()
    return seen

