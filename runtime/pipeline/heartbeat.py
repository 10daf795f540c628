"""The heartbeat's and the final status's body: the line's counters, latency, batches, sockets, cameras."""

from __future__ import annotations

import time
from typing import Any


def line_status(pipe: Any, schema: str) -> dict[str, Any]:
    """`pipe`: the runtime.pipeline.pipeline.Pipeline (not imported: it imports this module)."""
    with pipe._lock:
        health = {c.id: pipe.health.snapshot(c.id) for c in pipe.cameras}
        latency = pipe.stats.latency()
    return {
        "schema": schema, "at": time.time(), "uptime_s": round(time.monotonic() - pipe._started, 3),
        "status": pipe.status, "model": pipe.model_info,
        "frames_scored": pipe.stats.frames_scored, "published": pipe.stats.published,
        "errors": pipe.stats.verdicts["error"], "verdicts": dict(pipe.stats.verdicts),
        "latency_ms": latency, **({"triggers": pipe.triggers.snapshot()} if pipe.triggers is not None else {}),
        "batches": {"max_batch": pipe.max_batch, "max_seen": pipe.stats.max_batch_seen,
                    "calls": pipe.stats.score_calls,
                    "mean": round(pipe.stats.frames_scored / max(1, pipe.stats.score_calls), 3)},
        # Per-subscriber losses are invisible to a publisher (ZeroMQ drops per peer, silently):
        # `sent` per topic lets each subscriber compare with the `seq` numbers it received.
        "sent": dict(pipe.pub.sent), "subscribers": pipe.pub.subscribers,
        "security": "curve" if pipe.pub.curve is not None else "none",
        "handshake_failures": dict(pipe.pub.handshake_failures),
        "subscriptions_refused": pipe.pub.subscriptions_refused, "peers_disconnected": pipe.pub.peers_disconnected,
        "cameras": {c.id: {"status": pipe.watch.status(c), "fps": round(c.fps(), 2), "frames": c.frames,
                           "capture_drops": c.drops, "read_errors": c.read_errors, "queued": len(c.queue),
                           "health": health[c.id]}
                    for c in pipe.cameras},
    }

