"""The CLI's one error handler: an EdgeSomadError becomes `error: <message>` and exit code 2.

The exit codes themselves are contracts (edge_somad/contracts/exits.py): the demo returns them too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

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
