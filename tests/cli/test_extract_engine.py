"""``mess extract --engine``: the default stays local; ray without the extra is one line; ray is
never imported by ``import messai`` or ``mess --help``."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import write_audio


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=dict(os.environ)
    )


def test_import_and_help_never_import_ray():
    code = (
        "import sys\nimport messai\nsys.argv=['mess','--help']\nfrom messai.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('RAY', 'ray' in sys.modules, file=sys.stderr)"
    )
    p = _run(code)
    assert "RAY False" in p.stderr, p.stderr


def test_engine_ray_without_the_extra_says_what_to_install(tmp_path, tiny_ckpt):
    write_audio(tmp_path / "music" / "a.wav", seconds=1.5)
    code = (  # as if ray were not installed
        "import sys\nsys.modules['ray'] = None\nsys.modules['ray.data'] = None\n"
        "from messai.cli import main\nmain()"
    )
    p = _run(code, "extract", str(tmp_path / "music"), "--engine", "ray", "--model", str(tiny_ckpt))
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: --engine ray needs Ray Data: pip install 'messai[ray]' (or: uv sync --extra ray)"
    ], p.stderr


def test_unknown_engine_is_refused(tmp_path):
    p = _run("from messai.cli import main\nmain()", "extract", str(tmp_path), "--engine", "spark")
    assert p.returncode != 0 and "unknown engine 'spark'" in p.stderr
