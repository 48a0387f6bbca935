"""A small real store for the server tests: generated audio extracted with the tiny random
checkpoint (so the store has a source root, labels-free ids with '/', and real targets),
probed once; built once per session and shared read-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")


def build_library(root: Path) -> Path:
    from tests.conftest import write_audio

    lib = root / "lib"
    for i in range(10):
        sub = "a" if i % 2 else "b"
        write_audio(lib / sub / f"t{i}.wav", 5.5 + (i % 3), 24000, freq=110 * (i + 1), seed=i)
    return lib


@pytest.fixture(scope="session")
def served_home(tmp_path_factory, tiny_ckpt) -> Path:
    """MESS_HOME holding dataset 'lib' (10 tracks, ids 'a/t1' ...) with probe results saved."""
    from typer.testing import CliRunner

    from messai.cli import app

    home = tmp_path_factory.mktemp("serve_home")
    (home / "config.toml").write_text("")
    lib = build_library(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MESS_HOME", str(home))
        mp.setenv("MESS_CONFIG", str(home / "config.toml"))
        runner = CliRunner()
        r = runner.invoke(
            app,
            ["extract", str(lib), "-d", "lib", "--model", str(tiny_ckpt), "--device", "cpu", "-q"],
        )
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["probe", "-d", "lib", "--folds", "3", "--bootstrap", "0"])
        assert r.exit_code == 0, r.output
    return home


@pytest.fixture
def home(served_home, monkeypatch) -> Path:
    monkeypatch.setenv("MESS_HOME", str(served_home))
    monkeypatch.setenv("MESS_CONFIG", str(served_home / "config.toml"))
    return served_home


def make_client(home: Path, **config):
    from fastapi.testclient import TestClient

    from messai.serve.app import create_app
    from messai.serve.live import ServeConfig

    return TestClient(create_app(ServeConfig(home=home, **config)), raise_server_exceptions=False)


@pytest.fixture
def client(home):
    with make_client(home) as c:
        yield c


def store_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path → (size, mtime_ns)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a thread, for real HTTP clients."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def chromium_path() -> str | None:
    """Debian's Chromium binary (the launcher script's target), or None."""
    import shutil

    for p in ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser"):
        if Path(p).is_file() and os.access(p, os.X_OK):
            return p
    return shutil.which("chromium") or shutil.which("chromium-browser")
