"""The ``mess`` command: a thin Typer layer over the library. Heavy imports happen inside
commands, and only the invoked command's module is loaded, so ``mess --help`` and
``mess recommend`` start fast. ``messai.cli.app`` is the whole app (every command registered)."""

from __future__ import annotations

import sys
from typing import Any

import typer

from messai.cli import common
from messai.cli.app_commands import register
from messai.cli.common import error_line, quiet_closed_stdout


def main() -> None:
    """Entry point: run the app; turn MessError into one line on stderr and an exit status."""
    from messai.errors import MessError

    args = sys.argv[1:]
    register(next((a for a in args if not a.startswith("-")), None))
    try:
        common.app()
    except MessError as exc:
        error_line(str(exc))
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        quiet_closed_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        error_line("interrupted (finished work is kept: run the same command again to resume)")
        sys.exit(130)


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, for tests and embedding
        register()
        return common.app
    raise AttributeError(name)


__all__ = ["app", "main", "typer"]
