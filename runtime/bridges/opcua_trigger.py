"""The OPC UA bridge's `Trigger` method: a PLC calls Objects/<box>/Trigger(PartId, DeadlineMs) and gets
that part's verdict back as the method's output arguments.

The call is forwarded to `run --control` (runtime/trigger/client.py) in a worker thread, so the server
keeps serving reads and subscriptions while the part is inspected. Outputs, in order:
    Verdict (String: pass | fail | error), ResultEvaluation (Int32, OPC 40001-101: 1 OK, 2 NotOK,
    3 NotDecidable), Score (Double, NaN without one), ErrorText (String, "" on pass/fail; e.g.
    "deadline: ..." or "duplicate: ..."), PartId (String, echoed), ResultJson (String: the whole answer).
A part id or deadline the runtime refuses, a runtime that does not answer and a duplicate part id all
come back as Verdict "error" (NotDecidable): the PLC rejects the part, it never waits in silence.
Arguments of the wrong type are refused with BadInvalidArgument, as OPC UA servers do. DeadlineMs 0
means the runtime's default (`run --trigger-deadline-ms`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from edge_somad.errors import EdgeSomadError
from edge_somad.runtime.bridges.opcua_model import EVALUATION

log = logging.getLogger(__name__)

INPUTS = (("PartId", "String", "The part's id: 1 to 64 printable characters."),
          ("DeadlineMs", "UInt32", "Answer within this many ms of the call, else error: deadline (0: default)."))
OUTPUTS = (("Verdict", "String", "pass | fail | error"),
           ("ResultEvaluation", "Int32", "1 OK, 2 NotOK, 3 NotDecidable (reject on 2 and 3)"),
           ("Score", "Double", "Anomaly score (NaN when not scored)"),
           ("ErrorText", "String", "Why the verdict is error (deadline, duplicate, ...); empty otherwise"),
           ("PartId", "String", "The part id the verdict is for"),
           ("ResultJson", "String", "The runtime's whole answer as JSON (docs/triggers.md)"))
SLACK_S = 2.0  # wait this much longer than the deadline for the runtime's answer (it answers at the deadline)
DEFAULT_WAIT_S = 5.0  # DeadlineMs 0: the runtime's default deadline is not known here


def outputs_of(answer: dict[str, Any], part_id: str) -> list[tuple[Any, str]]:
    """The method's output values (value, variant type name) for the runtime's answer."""
    verdict = answer.get("verdict") if answer.get("verdict") in EVALUATION else "error"
    score = answer.get("score")
    score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else math.nan
    error = str(answer.get("error") or "")[:1000]
    if verdict == "error" and not error:
        error = "error verdict without a reason"
    return [(verdict, "String"), (EVALUATION[verdict], "Int32"), (score, "Double"), (error, "String"),
            (str(answer.get("part_id") or part_id)[:64], "String"),
            (json.dumps(answer, separators=(",", ":"), allow_nan=False, default=str), "String")]


def ask(control: str, part_id: str, deadline_ms: int, camera: str | None) -> dict[str, Any]:
    """The runtime's answer, or an error answer saying why there is none (never an exception)."""
    from edge_somad.runtime.trigger.client import request_trigger

    wait = deadline_ms / 1000.0 + SLACK_S if deadline_ms else DEFAULT_WAIT_S
    try:
        return request_trigger(control, part_id, deadline_ms or None, wait, camera=camera, source="opcua")
    except EdgeSomadError as exc:  # bad part id, runtime away: still an answer the PLC can act on
        return {"verdict": "error", "error": str(exc), "part_id": part_id, "ok": False}


async def add_trigger_method(model: Any, control: str, camera: str | None) -> Any:
    """Add Objects/<box>/Trigger to the bridge's address space (OpcuaModel after setup)."""
    from asyncua import ua

    def argument(name: str, vtype: str, text: str) -> Any:
        arg = ua.Argument()
        arg.Name, arg.DataType, arg.ValueRank = name, ua.NodeId(getattr(ua.VariantType, vtype).value), -1
        arg.Description = ua.LocalizedText(text)
        return arg

    async def trigger(parent: Any, *args: Any) -> Any:
        if (len(args) != 2 or args[0].VariantType != ua.VariantType.String
                or args[1].VariantType not in (ua.VariantType.UInt32, ua.VariantType.Int32, ua.VariantType.UInt16)
                or not isinstance(args[1].Value, int) or args[1].Value < 0):
            log.warning("Trigger called with %s; expected (String PartId, UInt32 DeadlineMs)",
                        [a.VariantType.name for a in args])
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        part_id, deadline = str(args[0].Value or ""), int(args[1].Value)
        answer = await asyncio.to_thread(ask, control, part_id, deadline, camera)
        return [ua.Variant(v, getattr(ua.VariantType, t)) for v, t in outputs_of(answer, part_id)]

    return await model.root.add_method(model._id("Trigger"), model._name("Trigger"), trigger,
                                       [argument(*a) for a in INPUTS], [argument(*a) for a in OUTPUTS])
