"""The CLI's exit codes and its one error handler (README, "Exit codes").

0  done.
1  done, but the outcome asked for was not reached (`subscribe --count N` got fewer verdicts, the
   demo's verdicts disagree with the ground truth).
2  not done: an error with a message "what arrived, what was expected, how to fix" (every
   EdgeSomadError, e.g. a missing artifact, a bad option value, no GPU/TensorRT for build-engine or
   --backend tensorrt), or a command line typer could not parse ("Usage: ..." and "No such option").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer

from edge_somad.errors import EdgeSomadError

EXIT_OK = 0
EXIT_NOT_MET = 1
EXIT_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])
HANDLED = "_edge_somad_handles_errors"


def handle_errors(command: F) -> F:
    """Wrap a typer command: an EdgeSomadError becomes `error: <message>` on stderr and exit code 2.

    functools.wraps keeps the signature and annotations typer reads the options from. Anything else
    (a bug) keeps its traceback: hiding it would make it unreportable. Idempotent, so a command
    decorated where it is defined (usable alone, e.g. `python -m edge_somad.runtime.commands`) can
    be registered through it again by cli.py.
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
