"""Runs that are scripted (issue 14): failed files are not retried unless asked, exit 1 only
for this run's failures, one file, a clean stop on SIGINT/SIGTERM, the store's own model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.features.listener import ExtractionListener
from messai.features.store import FeatureStore
from tests.conftest import write_audio

runner = CliRunner()


def mess(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def lib_with_bad(tmp_path):
    d = tmp_path / "lib"
    write_audio(d / "a.wav", 6.0)
    write_audio(d / "b.wav", 6.0, freq=500)
    (d / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return d


def test_unchanged_failures_are_listed_not_retried_and_do_not_fail_the_run(lib_with_bad, tiny_ckpt):
    args = ("extract", lib_with_bad, "-d", "x", "--model", tiny_ckpt, "--device", "cpu")
    first = mess(*args, "--json")
    assert first.exit_code == 1  # a failure of this run
    report = json.loads(first.stdout)
    assert [f["path"] for f in report["failures"]] == [str(lib_with_bad / "bad.wav")]
    assert report["failures"][0]["reason"]
    again = mess(*args, "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["failures"] == []
    assert [f["path"] for f in report["failed_earlier"]] == [str(lib_with_bad / "bad.wav")]
    assert "failed earlier (unchanged" in again.stderr
    assert "nothing to do" in again.stderr
    retried = mess(*args, "--retry-failed")
    assert retried.exit_code == 1 and "bad.wav" in retried.stderr
    time.sleep(1.1)  # the failure time has one-second resolution
    (lib_with_bad / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk!")  # changed: retried
    assert mess(*args).exit_code == 1


def test_extract_one_file(lib_with_bad, tiny_ckpt):
    r = mess(
        "extract", lib_with_bad / "b.wav", "-d", "one", "--model", tiny_ckpt, "--device", "cpu"
    )
    assert r.exit_code == 0, r.output
    assert FeatureStore.open("one").track_ids() == ["b"]
    r = mess("extract", lib_with_bad / "nope.txt", "-d", "one", "--model", tiny_ckpt)
    assert r.exit_code != 0 and "does not exist" in r.output


def test_extract_without_model_uses_the_store_of_the_dataset(lib_with_bad, tiny_ckpt):
    (lib_with_bad / "bad.wav").unlink()
    r = mess("extract", lib_with_bad, "-d", "x", "--model", tiny_ckpt, "--device", "cpu")
    assert r.exit_code == 0, r.output
    write_audio(lib_with_bad / "c.wav", 3.0, freq=700)
    r = mess("extract", lib_with_bad, "-d", "x", "--device", "cpu")  # offline: no hub model
    assert r.exit_code == 0, r.output
    assert "c" in FeatureStore.open("x").track_ids()


def test_a_stop_request_commits_what_is_done(tmp_path, tiny_ckpt):
    from messai.config import load_settings
    from messai.features.pipeline import extract_dataset

    d = tmp_path / "lib"
    for i in range(4):
        write_audio(d / f"t{i}.wav", 6.0, freq=300 + 50 * i)
    stop = threading.Event()

    class StopAfterFirst(ExtractionListener):
        def on_track(self, result):
            stop.set()

    report = extract_dataset(
        d,
        dataset="s",
        settings=load_settings(model=str(tiny_ckpt), device="cpu"),
        listener=StopAfterFirst(),
        stop=stop,
    )
    assert report.interrupted and report.n_extracted == 1 and report.n_left == 3
    assert FeatureStore.open("s").track_ids() == ["t0"]
    again = extract_dataset(
        d, dataset="s", settings=load_settings(model=str(tiny_ckpt), device="cpu")
    )
    assert not again.interrupted and again.n_extracted == 3 and again.n_skipped == 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_on_a_base_shaped_model_stops_cleanly(tmp_path, isolated_env, sig):
    """A real signal to a real `mess extract` with a 95M-shaped random model."""
    ckpt = tmp_path / "base"
    assert mess("model", "random", ckpt, "--preset", "base").exit_code == 0
    d = tmp_path / "lib"
    n = 6
    for i in range(n):
        write_audio(d / f"t{i}.wav", 10.0, freq=200 + 60 * i)
    cmd = [sys.executable, "-m", "messai", "extract", str(d), "-d", "c", "--model", str(ckpt)]
    cmd += ["--device", "cpu", "--batch-size", "1"]
    env = dict(os.environ, TORCH_NUM_THREADS="2")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    stores = isolated_env / "stores" / "c"
    while time.monotonic() < deadline and not stores.exists():
        time.sleep(0.2)
    time.sleep(8.0)  # the model is loaded and windows are in flight
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "terminate called" not in err and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("interrupted: ")]
    assert len(line) == 1, err
    saved, left = (int(w) for w in line[0].split() if w.isdigit())
    assert saved + left == n and line[0].endswith("re-run to continue")
    store = FeatureStore.open("c")
    assert len(store) == saved
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(FeatureStore.open("c")) == n


def test_a_stored_file_that_became_unreadable_fails_once_then_is_failed_earlier(
    lib_with_bad, tiny_ckpt
):
    """Issue 21 item 3: a track stored before its file became unreadable failed again on every
    run (exit 1 each time); it fails once, then is listed as failed earlier until it changes."""
    args = ("extract", lib_with_bad, "-d", "x", "--model", tiny_ckpt, "--device", "cpu")
    mess(*args)  # a.wav and b.wav stored
    a = lib_with_bad / "a.wav"
    good = a.read_bytes()
    a.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # unreadable from now on
    broke = mess(*args, "--json")
    assert broke.exit_code == 1, broke.output
    assert [f["path"] for f in json.loads(broke.stdout)["failures"]] == [str(a)]
    for _ in range(2):
        again = mess(*args, "--json")
        assert again.exit_code == 0, again.output
        report = json.loads(again.stdout)
        assert report["failures"] == [] and report["n_extracted"] == 0
        assert str(a) in [f["path"] for f in report["failed_earlier"]]
        assert "failed earlier (unchanged" in again.stderr
    rows = {r["track_id"]: r for r in FeatureStore.open("x").track_rows()}
    assert rows["a"]["status"].startswith("stale")
    a.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk, changed")  # changed since: retried
    assert mess(*args).exit_code == 1
    a.write_bytes(good)  # the stored content again (a new mtime): up to date, no longer stale
    back = mess(*args, "--json")
    assert back.exit_code == 0, back.output
    report = json.loads(back.stdout)
    assert report["n_extracted"] == 0 and str(a) not in str(report["failed_earlier"])
    rows = {r["track_id"]: r for r in FeatureStore.open("x").track_rows()}
    assert rows["a"]["status"] == "ok"
