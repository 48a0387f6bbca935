"""Faults a store must survive: killed writers, concurrent writers, a creation race, a full
disk. Nothing already stored is ever lost or corrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.errors import StoreError
from messai.features import store_admin
from messai.features.store import FeatureStore
from tests.conftest import write_audio
from tests.synthetic_store import make_store

runner = CliRunner()


def make_library(folder: Path, n: int, seconds: float = 11.0) -> Path:
    for i in range(n):
        write_audio(folder / f"t{i:02d}.wav", seconds, 24000, freq=180 + 35 * i, seed=i)
    return folder


def extract_cmd(lib: Path, dataset: str, ckpt: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "messai",
        "extract",
        str(lib),
        "-d",
        dataset,
        "--model",
        str(ckpt),
        "-q",
    ]


def test_sigkill_at_random_moments_never_corrupts_and_rerun_completes(tmp_path, tiny_ckpt):
    lib = make_library(tmp_path / "lib", 12)
    env = dict(os.environ, MESS_COMMIT_TRACKS="2")
    rng = np.random.default_rng(11)
    seen = []
    for _ in range(3):
        p = subprocess.Popen(extract_cmd(lib, "k", tiny_ckpt), env=env, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(1.5, 5.0)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        stores = FeatureStore.list()
        if stores:  # whatever was committed is whole
            assert store_admin.verify(stores[0]).details["damaged"] == {}
            seen.append(len(stores[0]))
    assert seen == sorted(seen)  # committed tracks are never lost
    done = subprocess.run(
        extract_cmd(lib, "k", tiny_ckpt), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    store = FeatureStore.open("k")
    assert len(store) == 12 and store_admin.verify(store).details["damaged"] == {}
    # equal to an uninterrupted extraction of the same files
    assert (
        runner.invoke(
            app, ["extract", str(lib), "-d", "ref", "--model", str(tiny_ckpt), "-q"]
        ).exit_code
        == 0
    )
    ref = FeatureStore.open("ref")
    for tid in ref.track_ids():
        np.testing.assert_array_equal(
            store.read_arrays(tid)["segments"], ref.read_arrays(tid)["segments"]
        )


def test_two_concurrent_writers_one_waits_both_finish(tmp_path, tiny_ckpt):
    lib = make_library(tmp_path / "lib", 4, seconds=6.0)
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            extract_cmd(lib, "c", tiny_ckpt),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    store = FeatureStore.open("c")
    assert len(store) == 4 and store_admin.verify(store).details["damaged"] == {}


def test_creation_race_loser_never_removes_the_winners_store(
    isolated_env, tmp_path, tiny_ckpt, monkeypatch
):
    """Two runs find no store; both create it; the one that cannot get the lock gives up and
    removes nothing (format 1 deleted the running writer's whole store here)."""
    lib = make_library(tmp_path / "lib", 2, seconds=6.0)
    assert (
        runner.invoke(
            app, ["extract", str(lib), "-d", "r", "--model", str(tiny_ckpt), "-q"]
        ).exit_code
        == 0
    )
    winner = FeatureStore.open("r")
    before = winner.read_windows()["segments"]
    holding, release = threading.Event(), threading.Event()

    def hold():
        with FeatureStore.open("r").writer():
            holding.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    holding.wait(10)
    try:
        with monkeypatch.context() as m:
            m.setattr(FeatureStore, "exists_at", classmethod(lambda cls, uri: False))  # the race
            m.setattr(FeatureStore, "LOCK_WAIT_SECONDS", 0.5)
            r = runner.invoke(
                app, ["extract", str(lib), "-d", "r", "--model", str(tiny_ckpt), "-q"]
            )
        assert r.exit_code == 2 and "another mess process" in r.output
    finally:
        release.set()
        t.join()
    after = FeatureStore.open("r")
    assert after.track_ids() == winner.track_ids()
    np.testing.assert_array_equal(after.read_windows()["segments"], before)


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_is_one_line_and_keeps_committed_tracks(isolated_env, tiny_disk, tmp_path):
    big = make_store(Path(isolated_env), "big", n_tracks=100, dim=128, n_layers=6)
    # copying onto a disk too small: one line naming the store; no half store left
    r = runner.invoke(app, ["store", "copy", big.uri, str(tiny_disk / "copy")])
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "no space left" in line and str(tiny_disk) in line
    assert "Traceback" not in r.output
    assert not FeatureStore.exists_at(tiny_disk / "copy")
    # a fresh store on a full disk: one line, and no empty store left behind
    small = make_store(tiny_disk / "home", "fits", n_tracks=2, dim=8, n_layers=2)
    assert len(small) == 2
    filler = tiny_disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    with pytest.raises(StoreError, match="no space left"):
        make_store(tiny_disk / "home", "nofit", n_tracks=3, dim=8, n_layers=2)
    assert not (tiny_disk / "home" / "stores" / "nofit").exists()  # no empty store left
    filler.unlink()
    assert len(FeatureStore.open("fits", stores=str(tiny_disk / "home" / "stores"))) == 2
