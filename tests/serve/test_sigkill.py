"""Nothing the server does writes a store: killed with SIGKILL while another process extracts
into the store (and while it answers queries), it leaves the store and the indices intact."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from messai.bench.synthetic import clustered_store
from tests.serve.conftest import store_files

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home, port: int) -> subprocess.Popen:
    env = {**os.environ, "MESS_HOME": str(home), "MESS_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "messai", "serve", "-d", "syn", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start: " + proc.stderr.read().decode()[-500:])


def wait_for(answers: list, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while answers.count(200) < n:
        assert time.monotonic() < deadline, answers[-3:]
        time.sleep(0.05)


def hammer(port: int, stop: threading.Event, answers: list) -> None:
    """Queries that make the server load, rebuild (the store changes) and search indices."""
    i = 0
    while not stop.is_set():
        url = f"http://127.0.0.1:{port}/v1/tracks/c{i % 4}%2Ftrack%20{i % 24:03d}/similar?k=5&space=layer"
        if i % 3 == 1:
            url = f"http://127.0.0.1:{port}/v1/tracks?q=track&limit=50"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                answers.append(r.status)
        except OSError as exc:
            answers.append(str(exc))
        i += 1


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from messai.bench.synthetic import synthetic_entry
    from messai.features.records import track_arrays
    from messai.features.store import FeatureStore

    store = FeatureStore.open("syn")
    rng = np.random.default_rng(7)
    go_on = sys.argv[1]
    with store.writer():
        for b in range(8):
            if b == 4:  # half-way: wait until the test has killed the server
                while not os.path.exists(go_on):
                    time.sleep(0.05)
            for j in range(4):
                seg = rng.normal(5.0, 1.0, size=(2, 2, 8)).astype(np.float32)
                arrays = track_arrays(seg, np.arange(2) * 120000, np.full(2, 120000),
                                      {"spectral_centroid": np.ones(2, np.float32)}, store_dtype="float32")
                store.put(synthetic_entry(f"new/{b}-{j}", 2, ("spectral_centroid",), {"work": "new"}), arrays)
            store.commit()
            print("batch", b, flush=True)
    """
)


def test_sigkill_during_extraction_leaves_store_and_indices_intact(isolated_env):
    from messai.features.store import FeatureStore
    from messai.features.store_admin import verify
    from messai.search.cache import build_layer_index, index_dir
    from messai.search.layer_index import LayerIndex

    store = clustered_store(isolated_env, "syn", n_tracks=24, n_layers=2, dim=8)
    build_layer_index(isolated_env, store, 0)
    port = free_port()

    # 1. a server answering queries on its own never changes a byte of the store
    before = store_files(store.root)
    server = start_server(isolated_env, port)
    stop, answers = threading.Event(), []
    t = threading.Thread(target=hammer, args=(port, stop, answers))
    t.start()
    wait_for(answers, 3)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    stop.set()
    t.join()
    assert answers.count(200) >= 3, answers[:5]
    assert store_files(store.root) == before

    # 2. killed while another process extracts into the store: the writer finishes undisturbed
    server = start_server(isolated_env, port)
    env = {**os.environ, "MESS_HOME": str(isolated_env)}
    go_on = isolated_env / "server-killed"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(go_on)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop, answers = threading.Event(), []
    t = threading.Thread(target=hammer, args=(port, stop, answers))
    t.start()
    for b in range(4):  # four batches committed; the writer holds the store and waits
        assert writer.stdout.readline() == f"batch {b}\n"
    wait_for(answers, 3)  # the server answered while the store was being written
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    stop.set()
    t.join()
    go_on.touch()  # the extraction goes on after the kill
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert out.count("batch") == 4  # batches 4..7

    fresh = FeatureStore.open("syn")
    assert len(fresh) == 24 + 32
    report = verify(fresh)
    assert not report.details.get("damaged"), report.to_dict()
    for layer in (0, 1):  # every index the server may have built or rebuilt loads whole
        path = index_dir(isolated_env, fresh, layer, normalize="center", kind="flat")
        if (path / "meta.json").exists():
            LayerIndex.load(path)
    # and a server started afterwards answers from the complete store
    server = start_server(isolated_env, port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/tracks?q=new/&limit=100") as r:
            assert len(json.loads(r.read())["tracks"]) == 32
    finally:
        server.kill()
        server.wait(timeout=10)
