"""``mess serve`` on the command line: refusals in one line, the missing extra, a cold start
that never imports the web stack."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from messai.cli import app

runner = CliRunner()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_non_loopback_without_token_is_refused(host, monkeypatch):
    monkeypatch.delenv("MESS_TOKEN", raising=False)
    r = runner.invoke(app, ["serve", "--host", host])
    assert r.exit_code == 2
    assert f"refusing to serve on {host} without a token" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_loopback_names():
    from messai.serve.app import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("")


def test_without_the_extra_one_line_says_what_to_install():
    code = (
        "import sys\nsys.modules['fastapi'] = None\nsys.modules['uvicorn'] = None\n"
        "import importlib.util\n_real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n in ('fastapi', 'uvicorn') else _real(n, *a)\n"
        "sys.argv = ['mess', 'serve']\nfrom messai.cli import main\nmain()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'messai[serve]'" in lines[0], p.stderr


WEB = {"fastapi", "uvicorn", "starlette", "httpx", "anyio"}


def _modules(argv: list[str]) -> set[str]:
    code = (
        f"import sys\nsys.argv = {argv!r}\nfrom messai.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sys.modules), file=sys.stderr)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    line = next(x for x in p.stderr.splitlines() if x.startswith("MODULES"))
    return set(line.split()[1:])


def test_help_and_cold_recommend_never_import_the_web_stack(home):
    assert runner.invoke(app, ["index", "-d", "lib", "--layers", "0"]).exit_code == 0
    for argv in (
        ["mess", "--help"],
        ["mess", "serve", "--help"],
        ["mess", "recommend", "-d", "lib", "--track", "a/t1", "-f", "json"],
    ):
        mods = _modules(argv)
        assert not {m.split(".")[0] for m in mods} & WEB, (argv, WEB & mods)


def test_a_dataset_without_a_store_fails_at_start(isolated_env):
    r = runner.invoke(app, ["serve", "--dataset", "nothing"])
    assert r.exit_code == 2
    assert "no feature store for dataset 'nothing'" in r.output
    assert len(r.output.strip().splitlines()) == 1
