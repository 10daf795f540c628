"""What the Sparkplug edge node declares: its node metrics, each camera's device metrics, their values.

Names use Sparkplug's '/' folders (Ignition shows them as tag folders). Aliases are unique across the
whole edge node, as the spec requires: node metrics 1..99, device number k (in order of first sight
in this process) 1000*k + index. Every metric a data message carries is declared in the birth with
its name, alias and datatype; data messages carry the alias only. docs/sparkplug.md lists them.
"""

from __future__ import annotations

import math
from typing import Any

from edge_somad.runtime.bridges import sparkplug_proto as pb

BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
TRIGGER = "Trigger"  # DCMD: the part id to inspect now (String)
TRIGGER_DEADLINE = "Trigger Deadline Ms"  # DCMD, optional beside TRIGGER: the PLC's deadline

NODE_METRICS: tuple[tuple[str, int], ...] = (
    (BD_SEQ, pb.INT64),
    (REBIRTH, pb.BOOLEAN),
    ("Node Info/Software", pb.STRING),
    ("Node Info/Verdict Schema", pb.STRING),
    ("Pipeline/Status", pb.STRING),
    ("Bridge/Queued", pb.UINT64),
    ("Bridge/Overflow", pb.UINT64),
    ("Bridge/Missed Upstream", pb.UINT64),
    ("Bridge/Replayed", pb.UINT64),
    ("Bridge/Rejected", pb.UINT64),
    ("Bridge/Bad Commands", pb.UINT64),
)
# Node metrics sent in NDATA when they change (the others are fixed for a session).
NODE_COUNTERS = tuple(name for name, _ in NODE_METRICS if name.startswith(("Bridge/", "Pipeline/")))

VERDICT_METRICS: tuple[tuple[str, int], ...] = (
    ("Inspection/Result", pb.STRING),  # pass | fail | error (treat error as a reject)
    ("Inspection/Score", pb.DOUBLE),
    ("Inspection/Threshold", pb.DOUBLE),
    ("Inspection/Score Normalised", pb.DOUBLE),
    ("Inspection/Reason", pb.STRING),  # why an error (empty otherwise)
    ("Inspection/Frame Id", pb.UINT64),
    ("Inspection/Part Id", pb.STRING),  # only on a triggered inspection's verdict
    ("Inspection/Trigger Time", pb.DATETIME),
    ("Inspection/Model Sha256", pb.STRING),
    ("Inspection/Latency Ms", pb.DOUBLE),
    ("Inspection/Defect Count", pb.UINT32),
    ("Inspection/Captured At", pb.DATETIME),
    ("Inspection/Verdict Seq", pb.UINT64),  # per camera from 0, kept across bridge restarts: dedupe by it
)
HEALTH_METRICS: tuple[tuple[str, int], ...] = (
    ("Camera/Status", pb.STRING),
    ("Health/State", pb.STRING),  # ok | warn | alarm
    ("Health/Reasons", pb.STRING),
    ("Health/Camera Fault", pb.STRING),
    ("Health/Black Frame", pb.BOOLEAN),
    ("Health/Saturated Frame", pb.BOOLEAN),
    ("Health/Frozen Stream", pb.BOOLEAN),
    ("Health/Resolution Changed", pb.BOOLEAN),
    ("Health/Resolution", pb.STRING),
    ("Health/Input Drift", pb.STRING),
    ("Health/Score Drift", pb.STRING),
    ("Health/Fail Rate", pb.STRING),
    ("Health/Compression", pb.STRING),
)
DEVICE_INFO_METRICS: tuple[tuple[str, int], ...] = (
    ("Model/Name", pb.STRING),
    ("Model/Sha256", pb.STRING),
    (TRIGGER, pb.STRING),
    (TRIGGER_DEADLINE, pb.UINT32),
    ("Trigger Status", pb.STRING),  # the answer to the last Trigger DCMD: ok, error: deadline, duplicate, ...
)
DEVICE_METRICS = VERDICT_METRICS + HEALTH_METRICS + DEVICE_INFO_METRICS
NODE_TYPES = dict(NODE_METRICS)
DEVICE_TYPES = dict(DEVICE_METRICS)
NODE_ALIAS = {name: i + 1 for i, (name, _) in enumerate(NODE_METRICS)}
DEVICE_INDEX = {name: i for i, (name, _) in enumerate(DEVICE_METRICS)}


def device_alias(slot: int, name: str) -> int:
    return 1000 * (slot + 1) + DEVICE_INDEX[name]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def to_ms(seconds: Any) -> int | None:
    s = _num(seconds)
    return None if s is None or not 0 <= s < 1e11 else round(s * 1000)


def _uint(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None


def verdict_values(h: dict[str, Any], verdict_seq: int) -> dict[str, Any]:
    """A validated verdict header (messages.validate_verdict) as device metric values (None: null)."""
    model = h.get("model") if isinstance(h.get("model"), dict) else {}
    part = h.get("part_id")
    return {
        "Inspection/Result": h["verdict"],
        "Inspection/Score": _num(h.get("score")),
        "Inspection/Threshold": _num(h.get("threshold")),
        "Inspection/Score Normalised": _num(h.get("score_normalised")),
        "Inspection/Reason": str(h.get("error") or "")[:1000],
        "Inspection/Frame Id": _uint(h.get("frame_id")),
        "Inspection/Part Id": part[:200] if isinstance(part, str) else None,
        "Inspection/Trigger Time": to_ms(h.get("trigger_ts")),
        "Inspection/Model Sha256": str(model.get("onnx_sha256") or "")[:128],
        "Inspection/Latency Ms": _num(h.get("latency_ms")),
        "Inspection/Defect Count": len(h["defects"]) if isinstance(h.get("defects"), list) else None,
        "Inspection/Captured At": to_ms(h.get("captured_at")),
        "Inspection/Verdict Seq": verdict_seq,
    }


def _state(block: Any) -> str:
    state = block.get("state") if isinstance(block, dict) else None
    return state if state in ("ok", "warn", "alarm") else "unknown"


def health_values(status: str | None, health: dict[str, Any] | None) -> dict[str, Any]:
    """A camera's status and its heartbeat `health` block (docs/messages.md) as device metric values."""
    h = health if isinstance(health, dict) else {}
    fault = h.get("fault") if isinstance(h.get("fault"), str) else ""
    reasons = h.get("reasons") if isinstance(h.get("reasons"), list) else []
    resolution = h.get("resolution")
    res_ok = isinstance(resolution, list) and len(resolution) == 2 and all(_uint(v) is not None for v in resolution)
    return {
        "Camera/Status": (status or "unknown")[:40],
        "Health/State": _state(h) if h.get("enabled", True) else "ok",
        "Health/Reasons": "; ".join(str(r) for r in reasons[:20])[:2000],
        "Health/Camera Fault": fault[:500],
        "Health/Black Frame": fault.startswith("black"),
        "Health/Saturated Frame": fault.startswith("saturated"),
        "Health/Frozen Stream": fault.startswith("frozen"),
        "Health/Resolution Changed": any(str(r).startswith("resolution changed") for r in reasons),
        "Health/Resolution": f"{resolution[1]}x{resolution[0]}" if res_ok else None,
        "Health/Input Drift": _state(h.get("input_drift")),
        "Health/Score Drift": _state(h.get("score_drift")),
        "Health/Fail Rate": _state(h.get("fail_rate")),
        "Health/Compression": _state(h.get("compression")),
    }


def model_values(model: dict[str, Any] | None) -> dict[str, Any]:
    m = model if isinstance(model, dict) else {}
    return {"Model/Name": str(m.get("name") or "")[:200], "Model/Sha256": str(m.get("onnx_sha256") or "")[:128]}


def node_metrics(values: dict[str, Any], birth: bool) -> list[pb.Metric]:
    """Node metrics: name + alias in NBIRTH (all of them), alias only in NDATA (those given)."""
    names = [n for n, _ in NODE_METRICS] if birth else list(values)
    return [pb.Metric(NODE_TYPES[n], values.get(n), name=n if birth else None, alias=NODE_ALIAS[n]) for n in names]


def device_metrics(slot: int, values: dict[str, Any], birth: bool, timestamp_ms: int | None = None,
                   historical: bool = False) -> list[pb.Metric]:
    """Device metrics: every declared one in DBIRTH (null where unknown), the given ones by alias in DDATA."""
    names = [n for n, _ in DEVICE_METRICS] if birth else list(values)
    return [pb.Metric(DEVICE_TYPES[n], values.get(n), name=n if birth else None, alias=device_alias(slot, n),
                      timestamp_ms=timestamp_ms, historical=historical) for n in names]
