"""Which module registers which command: ``mess recommend`` imports (and has Typer build) only
its own module, so the cold start does not grow with the number of commands."""

from __future__ import annotations

import importlib

#: command name → the module that registers it on the app
COMMAND_MODULES = {
    "aspects": "cmd_aspects",
    "benchmark": "cmd_benchmark",
    "config": "cmd_config",
    "datasets": "cmd_stores",
    "demo": "cmd_demo",
    "extract": "cmd_extract",
    "index": "cmd_index",
    "model": "cmd_model",
    "probe": "cmd_probe",
    "recommend": "cmd_search",
    "remove": "cmd_remove",
    "serve": "cmd_serve",
    "store": "cmd_store",
    "targets": "cmd_probe",
    "tracks": "cmd_stores",
}

#: the order the modules register in when all are needed: the order of ``mess --help``
#: (``index`` just before ``recommend``, as when both lived in one module)
MODULE_ORDER = (
    "cmd_aspects",
    "cmd_benchmark",
    "cmd_config",
    "cmd_demo",
    "cmd_extract",
    "cmd_model",
    "cmd_probe",
    "cmd_remove",
    "cmd_index",
    "cmd_search",
    "cmd_serve",
    "cmd_store",
    "cmd_stores",
)


def register(command: str | None = None) -> None:
    """Import the module of ``command`` so it registers itself on the app; every module when
    ``command`` is None or unknown (help, suggestions for a misspelt command)."""
    module = COMMAND_MODULES.get(command or "")
    names = [module] if module else MODULE_ORDER
    for name in names:
        importlib.import_module(f"messai.cli.{name}")
