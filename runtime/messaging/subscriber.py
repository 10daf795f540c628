"""Reference PLC/MES bridge: subscribe to verdicts, print JSON lines, append CSV, keep failing images.

This is the shape a site integration copies: everything it needs is in the JSON header; the
heatmap/overlay frames are optional payloads. See docs/messages.md for the schema.

Everything received is network data. A verdict is acted on (printed, logged, saved) only after
`messages.validate_verdict` (strict camera-id rule, topic = camera, integer frame id, known
verdict); anything else is dropped and counted in `rejected`. Saved files are named from those
validated parts only, created exclusively (never overwriting) inside the target folder.
Each subscriber counts its own losses from the per-topic `seq` numbers (`missed`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import zmq

from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import CurveClient, connect_subscriber
from edge_somad.runtime.messaging.intake import DEFAULT_LIMITS, DecodeLimits

log = logging.getLogger(__name__)

CSV_FIELDS = ("frame_id", "camera", "captured_at", "published_at", "latency_ms", "score", "score_normalised",
              "threshold", "verdict", "error", "n_defects", "defects")
MAX_NAME_TRIES = 10_000  # saved files per (camera, frame id, verdict) before refusing to save more
MAX_TOPICS = 10_000  # topics tracked for seq gaps: a hostile publisher must not grow memory forever
SAVE_MAX_MB = 4096  # --save-fails-max-mb: what one subscriber may write into its fails folder
REJECT_LOG_FIRST = 20  # rejected messages logged one by one; after that one line per thousand


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...), +cmd|...),
# also after a leading tab or carriage return: such text gets a leading apostrophe.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell: numbers stay numbers, null is empty, text never starts like a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_row(h: dict[str, Any]) -> dict[str, Any]:
    row = {k: csv_cell(h.get(k)) for k in CSV_FIELDS}
    defects = h.get("defects") if isinstance(h.get("defects"), list) else []
    row["n_defects"] = len(defects)
    row["defects"] = csv_cell(json.dumps(defects, separators=(",", ":")))
    return row


def _write_new(path: Path, data: bytes | np.ndarray) -> None:
    """Create path exclusively (O_EXCL: fails on any existing file or symlink) and write data."""
    with open(path, "xb") as f:
        if isinstance(data, np.ndarray):
            np.save(f, data, allow_pickle=False)
        else:
            f.write(data)


def _reserve_stem(out_dir: Path, base: str, header_json: bytes) -> Path:
    """Create <base>[_<n>].json with the first free n; returns the stem (same folder, no suffix)."""
    for n in range(MAX_NAME_TRIES):
        stem = out_dir / (base if n == 0 else f"{base}_{n}")
        try:
            _write_new(stem.with_name(stem.name + ".json"), header_json)
            return stem
        except FileExistsError:
            continue
    raise InputError(f"{out_dir}: {MAX_NAME_TRIES} files named {base}* already; not saving more")


def save_failure(out_dir: Path, msg: messages.Received) -> list[Path]:
    """Write header JSON + overlay JPEG (if sent) + heatmap (PNG as sent, f16 as .npy) for one verdict.

    `msg` must have passed messages.validate_verdict: the name is <camera>_<frame id>_<verdict>
    from validated parts, plus _<n> when that name is taken (a restarted publisher reuses frame ids).
    """
    h = msg.header
    out_dir = Path(out_dir).resolve()
    base = f"{messages.check_camera_id(h['camera'])}_{int(h['frame_id']):08d}_{h['verdict']}"
    if os.sep in base or (os.altsep and os.altsep in base) or base.startswith("."):
        raise InputError(f"refusing file name {base!r}: not a plain name")  # unreachable after validation
    stem = _reserve_stem(out_dir, base, json.dumps(h, indent=1).encode())
    if stem.parent != out_dir:
        raise InputError(f"refusing to write {stem}: outside {out_dir}")
    paths = [stem.with_name(stem.name + ".json")]
    extra: list[tuple[str, bytes | np.ndarray]] = []
    if msg.overlay:
        extra.append((".jpg", msg.overlay))
    meta = h.get("heatmap")
    if meta and meta["encoding"] == "png":
        extra.append(("_heatmap.png", msg.heatmap))
    elif meta and meta["encoding"] == "f16":
        try:
            extra.append(("_heatmap.npy", messages.decode_heatmap(meta, msg.heatmap)))
        except InputError as exc:
            log.warning("%s: heatmap not saved: %s", paths[0].name, exc)
    for suffix, data in extra:
        path = stem.with_name(stem.name + suffix)
        try:
            _write_new(path, data)
        except FileExistsError:  # a foreign file took the companion name: keep it, never overwrite
            log.warning("%s exists already; not overwritten, this part of %s is not saved", path, paths[0].name)
            continue
        paths.append(path)
    return paths


@dataclass
class SeqCounter:
    """Per-topic gap counting from the publisher's `seq`: what this subscriber missed."""

    last: dict[str, int] = field(default_factory=dict)
    missed: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # rejected since the last good message, per topic

    def reject(self, topic: str) -> None:
        """A message on topic arrived and was rejected: it is counted there, not again as a gap."""
        if topic in self.last:
            self.rejected[topic] = self.rejected.get(topic, 0) + 1

    def see(self, topic: str, header: dict[str, Any]) -> int:
        """Record one message; returns how many messages before it on this topic were lost."""
        seq = header.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            return 0  # a publisher older than seq numbers: nothing to count with
        prev = self.last.get(topic)
        if prev is None and len(self.last) >= MAX_TOPICS:
            return 0
        self.last[topic] = seq
        rejected = self.rejected.pop(topic, 0)
        if prev is None:
            return 0  # joined mid-stream: what was sent before is not ours to count
        if seq <= prev:
            self.restarts += 1  # the publisher restarted (seq starts at 0 again)
            return 0
        gap = max(0, seq - prev - 1 - rejected)  # the rejected ones arrived: not lost
        if gap:
            self.missed[topic] = self.missed.get(topic, 0) + gap
        return gap

    def see_final(self, prefix: str, final: dict[str, Any]) -> None:
        """Losses at the end of a topic are only visible against the final status's `sent` counts."""
        sent = final.get("sent")
        if not isinstance(sent, dict):
            return
        for name, count in sent.items():
            topic = f"{prefix}/{name}"
            if isinstance(count, int) and topic in self.last and count - 1 > self.last[topic]:
                self.missed[topic] = self.missed.get(topic, 0) + count - 1 - self.last[topic]
                self.last[topic] = count - 1

    @property
    def total(self) -> int:
        return sum(self.missed.values())


@dataclass
class SubscribeResult:
    verdicts: int = 0
    rejected: int = 0  # messages dropped as malformed or unsafe (see module docstring)
    not_saved: int = 0  # fail/error verdicts not saved: --save-fails-max-mb reached
    seq: SeqCounter = field(default_factory=SeqCounter)
    final: dict[str, Any] | None = None  # the last final status seen

    @property
    def missed(self) -> int:
        return self.seq.total


class _Sinks:
    """CSV file, stdout lines and saved failures for validated verdicts."""

    def __init__(self, csv_path: Path | None, save_fails: Path | None, out: IO[str], save_errors: bool,
                 save_max_bytes: int = SAVE_MAX_MB << 20) -> None:
        self.out, self.save_fails, self.save_errors = out, save_fails, save_errors
        self.save_left = save_max_bytes  # bytes this process may still write into save_fails
        if save_fails is not None:
            save_fails.mkdir(parents=True, exist_ok=True)
        self.csv_file = self.writer = None
        if csv_path is not None:
            new = not csv_path.exists() or csv_path.stat().st_size == 0
            self.csv_file = open(csv_path, "a", newline="")  # noqa: SIM115 - closed in close()
            self.writer = csv.DictWriter(self.csv_file, fieldnames=CSV_FIELDS)
            if new:
                self.writer.writeheader()

    def verdict(self, msg: messages.Received, result: SubscribeResult) -> None:
        self.out.write(json.dumps({"topic": msg.topic, **msg.header}, allow_nan=False) + "\n")
        self.out.flush()
        if self.writer is not None and self.csv_file is not None:
            self.writer.writerow(_csv_row(msg.header))
            self.csv_file.flush()
        verdict = msg.header["verdict"]
        if self.save_fails is not None and (verdict == "fail" or (self.save_errors and verdict == "error")):
            # An upper estimate of what saving writes (header indented, f16 map as a float32 .npy): each
            # part is already capped by the decode limits, the folder by this budget.
            size = 3 * len(json.dumps(msg.header)) + len(msg.overlay or b"") + 2 * len(msg.heatmap)
            if size > self.save_left:
                result.not_saved += 1
                if result.not_saved == 1 or result.not_saved % 1000 == 0:
                    log.error("%s: --save-fails-max-mb reached; %d fail/error verdict(s) not saved",
                              self.save_fails, result.not_saved)
                return
            self.save_left -= sum(p.stat().st_size for p in save_failure(self.save_fails, msg))

    def close(self) -> None:
        if self.csv_file is not None:
            self.csv_file.close()


def _topic_of(raw: list[bytes]) -> str | None:
    try:
        return bytes(raw[0]).decode() if raw and len(raw[0]) <= 256 else None
    except UnicodeDecodeError:
        return None


def receive(raw: list[bytes], result: SubscribeResult, source: str = "",
            limits: DecodeLimits = DEFAULT_LIMITS) -> messages.Received | None:
    """Decode and check one received message (THE place a verdict is decoded: `subscribe`, `view` and
    the bridges call it). Counts rejections, seq gaps and verdicts in `result`; None when the message was
    rejected. `source` (an endpoint) prefixes the log lines of a bridge that reads several."""
    prefix = f"{source}: " if source else ""
    try:
        msg = messages.parse_message(raw, limits)
        if msg.kind == "unknown":
            raise InputError(f"schema {str(msg.header.get('schema'))[:60]!r} is not an edge-somad message")
        if msg.kind == "verdict":
            messages.validate_verdict(msg)
        reason = None
    except InputError as exc:
        reason = str(exc)
    except Exception as exc:  # any bytes must leave the receiver alive: a decoder bug is logged and counted
        reason = f"decoder failed with {type(exc).__name__}: {str(exc)[:200]}"
    if reason is not None:
        result.rejected += 1
        topic = _topic_of(raw)
        if topic is not None:
            result.seq.reject(topic)
        # Every rejection is counted; the log says the first ones and then one line per thousand, so a
        # flood of garbage cannot fill the disk with log lines.
        if result.rejected <= REJECT_LOG_FIRST or result.rejected % 1000 == 0:
            log.error("%srejected a message (%s); %d rejected so far", prefix, reason[:300], result.rejected)
        return None
    gap = result.seq.see(msg.topic, msg.header)
    if gap:
        log.warning("%s%r: %d message(s) lost before seq %s (this subscriber fell behind or reconnected)",
                    prefix, msg.topic, gap, msg.header.get("seq"))
    if msg.kind == "status" and msg.header.get("event") == "final":
        result.final = msg.header
        result.seq.see_final(msg.topic.rpartition("/")[0], msg.header)
    if msg.kind == "verdict":
        result.verdicts += 1
    return msg


class StreamDecoder:
    """`receive` with its own counters, one per endpoint a bridge reads (bridges/source.StreamSource)."""

    def __init__(self, result: SubscribeResult | None = None, source: str = "",
                 limits: DecodeLimits = DEFAULT_LIMITS) -> None:
        self.result = SubscribeResult() if result is None else result
        self.source = source
        self.limits = limits

    def decode(self, raw: list[bytes]) -> messages.Received | None:
        return receive(raw, self.result, self.source, self.limits)


def _handle(raw: list[bytes], result: SubscribeResult, sinks: _Sinks, limits: DecodeLimits) -> None:
    msg = receive(raw, result, limits=limits)
    if msg is None:
        return
    if msg.kind != "verdict":
        log.info("%r %s", msg.topic, json.dumps(msg.header)[:2000])
        return
    sinks.verdict(msg, result)


def subscribe_loop(
    connect: str,
    topic: str = "somad/",
    csv_path: Path | None = None,
    save_fails: Path | None = None,
    count: int | None = None,
    timeout_s: float | None = None,
    out: IO[str] | None = None,
    save_errors: bool = True,
    curve: CurveClient | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    save_max_mb: float = SAVE_MAX_MB,
) -> SubscribeResult:
    """Receive until `count` verdicts or `timeout_s` seconds without any message."""
    if count is not None and count < 1:
        raise ConfigError(f"--count {count}; expected a number of verdicts >= 1 (leave it out to run until stopped)")
    if timeout_s is not None and not timeout_s > 0:
        raise ConfigError(f"--timeout {timeout_s}; expected seconds > 0 (leave it out to wait forever)")
    if not save_max_mb >= 0:
        raise ConfigError(f"--save-fails-max-mb {save_max_mb}; expected megabytes >= 0")
    sock = connect_subscriber(connect, topic.encode(), curve, max_part_bytes=limits.max_part_bytes)
    # sys.stdout looked up now, not at import: a caller (or a test runner) may have replaced it.
    sinks = _Sinks(csv_path, save_fails, sys.stdout if out is None else out, save_errors, int(save_max_mb * (1 << 20)))
    result = SubscribeResult()
    last = time.monotonic()
    try:
        while count is None or result.verdicts < count:
            wait = 200 if timeout_s is None else max(1, int(min(0.2, timeout_s) * 1000))
            if not sock.poll(wait, zmq.POLLIN):
                if timeout_s is not None and time.monotonic() - last >= timeout_s:
                    break
                continue
            last = time.monotonic()
            _handle(sock.recv_multipart(), result, sinks, limits)
    finally:
        sinks.close()
        sock.close()
    return result
