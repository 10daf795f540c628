"""`edge-somad trigger`: ask a running `run --trigger --control ...` to inspect one part, print the verdict.

The work is runtime/trigger/client.request_trigger (what the bridges call too); zmq is imported in the body.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from edge_somad.cli.options import handle_errors
from edge_somad.contracts.exits import EXIT_NOT_MET


@handle_errors
def trigger(
    control: Annotated[str, typer.Option(help="The runtime's control endpoint (`run --control`).")],
    part_id: Annotated[str, typer.Option(help="The part's id (1 to 64 printable characters), e.g. P-1234.")],
    deadline_ms: Annotated[int, typer.Option(help="The answer must be ready this many ms after the trigger "
        "arrived; later it is `error: deadline`.")] = 500,
    camera: Annotated[Optional[str], typer.Option(help="Camera id (needed when `run` has several).")] = None,  # noqa: UP045
    timeout: Annotated[Optional[float], typer.Option(  # noqa: UP045
        help="Seconds to wait for the answer (default: the deadline + 2 s).")] = None,
) -> None:
    """Trigger the inspection of one part and print its verdict as JSON (exit 0: pass, 1: fail or error)."""
    from edge_somad.runtime.trigger.client import request_trigger

    answer = request_trigger(control, part_id, deadline_ms, timeout or deadline_ms / 1000.0 + 2.0, camera=camera,
                             source="cli")
    typer.echo(json.dumps(answer, indent=2, sort_keys=True))
    if answer.get("verdict") != "pass":
        raise typer.Exit(EXIT_NOT_MET)
