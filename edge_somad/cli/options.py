"""What the commands share: the one error handler (an EdgeSomadError becomes `error: <message>` and
exit code 2), the options several commands take, and their logging set-up.

The exit codes themselves are contracts (edge_somad/contracts/exits.py): the demo returns them too.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer

from edge_somad.contracts.exits import EXIT_ERROR
from edge_somad.errors import EdgeSomadError

F = TypeVar("F", bound=Callable[..., object])
HANDLED = "_edge_somad_handles_errors"


def handle_errors(command: F) -> F:
    """Wrap a typer command: an EdgeSomadError becomes `error: <message>` on stderr and exit code 2.

    functools.wraps keeps the signature and annotations typer reads the options from. Anything else
    (a bug) keeps its traceback: hiding it would make it unreportable. Idempotent, so a command
    decorated where it is defined (usable alone, e.g. `python -m edge_somad.cli.runtime`) can
    be registered through it again by edge_somad/cli/__init__.py.
    """
    if getattr(command, HANDLED, False):
        return command

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except EdgeSomadError as exc:
            typer.secho(f"error: {exc}", err=True, fg="red")
            raise typer.Exit(EXIT_ERROR) from exc

    setattr(wrapper, HANDLED, True)
    return wrapper  # type: ignore[return-value]


OptFile = Optional[Path]  # noqa: UP045 - typer reads the annotation at runtime
CurveServerKey = Annotated[OptFile, typer.Option(
    help="CURVE: the publisher's public key file (NAME.key from `edge-somad keys`).")]
CurveClientSecret = Annotated[OptFile, typer.Option(
    help="CURVE: this subscriber's own secret key file (NAME.key_secret); its NAME.key must be in the "
    "publisher's --curve-clients folder.")]
LogLevel = Annotated[str, typer.Option(help="debug | info | warning | error")]
MaxMessageMb = Annotated[float, typer.Option(
    help="Largest message part accepted from the network, in MB (ZMQ_MAXMSGSIZE; headers stay <= 1 MB). "
    "docs/security.md.")]


def setup_logging(level: str) -> None:
    """Log lines on stderr at LEVEL (the --log-level of run, subscribe, view and the bridges)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
