"""The lazy command registry: every module registers in the help order, and a command imports
only its own module."""

import subprocess
import sys

from messai.cli.app_commands import COMMAND_MODULES, MODULE_ORDER


def test_every_command_module_registers_once_in_the_help_order():
    assert sorted(MODULE_ORDER) == sorted(set(COMMAND_MODULES.values()))


def test_index_and_recommend_import_only_their_own_module():
    code = (
        "import sys\nfrom messai.cli.app_commands import register\nregister(sys.argv[1])\n"
        "print(sorted(m for m in sys.modules if m.startswith('messai.cli.cmd_')))"
    )
    for command, own, other in [
        ("index", "cmd_index", "cmd_search"),
        ("recommend", "cmd_search", "cmd_index"),
    ]:
        out = subprocess.run(
            [sys.executable, "-c", code, command], capture_output=True, text=True, check=True
        ).stdout
        assert f"messai.cli.{own}" in out and f"messai.cli.{other}" not in out, out
