"""The ``mess`` command: a thin Typer layer over the library. Heavy imports happen inside
commands, so ``mess --help`` and ``mess recommend`` start fast."""

from __future__ import annotations

import sys

import typer

from messai.cli import app_commands  # noqa: F401  (registers the commands)
from messai.cli.common import app, error_line, quiet_closed_stdout


def main() -> None:
    """Entry point: run the app; turn MessError into one line on stderr and an exit status."""
    from messai.errors import MessError

    try:
        app()
    except MessError as exc:
        error_line(str(exc))
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        quiet_closed_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        error_line("interrupted (finished work is kept: run the same command again to resume)")
        sys.exit(130)


__all__ = ["app", "main", "typer"]
