"""Edge cases: settings changes with --force, files changing or breaking, failing forwards,
damaged stores, pruning, and recommend's argument checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.errors import StoreError
from messai.features.store import FeatureStore
from tests.conftest import write_audio
from tests.synthetic_store import make_store

runner = CliRunner()


def mess(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def lib(tmp_path):
    d = tmp_path / "lib"
    write_audio(d / "a.wav", 11.0, 24000, freq=300)
    write_audio(d / "b.wav", 6.0, 44100, freq=500)
    return d


def test_force_with_new_settings_is_recorded(lib, tiny_ckpt):
    assert (
        mess("extract", lib, "-d", "x", "--model", tiny_ckpt, "--device", "cpu", "-q").exit_code
        == 0
    )
    r = mess(
        "extract",
        lib,
        "-d",
        "x",
        "--model",
        tiny_ckpt,
        "--device",
        "cpu",
        "-q",
        "--hop-seconds",
        "2.5",
        "--force",
    )
    assert r.exit_code == 0, r.output
    store = FeatureStore.open("x")
    assert store.settings["hop_seconds"] == 2.5
    assert store.entry("a").n_segments == len(store.load("a")["segments"]) == 4
    r = mess(
        "extract", lib, "-d", "x", "--model", tiny_ckpt, "--device", "cpu", "--hop-seconds", "2.5"
    )
    assert r.exit_code == 0 and "2 up to date" in r.output


def test_file_changing_while_read_fails_and_is_redone(lib, tiny_ckpt, monkeypatch):
    import messai.features.workers as ex  # the decoding code (thread and worker processes)

    real = ex.stream_mono

    def rewriting(path, rate, **kw):
        for i, block in enumerate(real(path, rate, **kw)):
            if i == 0 and Path(path).name == "a.wav":
                write_audio(Path(path), 12.0, 24000, freq=700)  # someone copies a new version in
            yield block

    with monkeypatch.context() as m:
        m.setattr(ex, "stream_mono", rewriting)
        r = mess("extract", lib, "-d", "c", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 1 and "a.wav: changed while it was being read" in r.output
    assert FeatureStore.open("c").track_ids() == ["b"]
    r = mess("extract", lib, "-d", "c", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 0 and FeatureStore.open("c").entry("a").n_segments == 3


def test_a_failing_forward_fails_only_its_track(lib, tiny_ckpt, monkeypatch):
    import messai.models.mert as mert

    real = mert.pooled_hidden_states

    def flaky(loaded, windows, **kw):
        if windows.shape[1] == 24000:  # a.wav's 1-s tail
            raise RuntimeError("boom")
        return real(loaded, windows, **kw)

    monkeypatch.setattr(mert, "pooled_hidden_states", flaky)
    write_audio(lib / "b.wav", 7.0, 44100, freq=500)  # its tail is 2 s: only a.wav's window breaks
    r = mess(
        "extract",
        lib,
        "-d",
        "f",
        "--model",
        tiny_ckpt,
        "--device",
        "cpu",
        "-q",
        "--batch-size",
        "2",
    )
    assert r.exit_code == 1
    assert "a.wav: model forward failed (RuntimeError: boom)" in r.output
    assert FeatureStore.open("f").track_ids() == ["b"]


def test_windows_shorter_than_receptive_field_are_refused(lib, tiny_ckpt):
    r = mess(
        "extract", lib, "-d", "w", "--model", tiny_ckpt, "--device", "cpu", "--min-seconds", "0.005"
    )
    assert r.exit_code == 2 and "receptive field" in r.output


def test_truncated_wav_and_clashing_ids_are_reported_per_file(tmp_path, tiny_ckpt):
    d = tmp_path / "in"
    write_audio(d / "good.wav", 2.0, 24000)
    write_audio(d / "cut.wav", 8.0, 24000)
    raw = (d / "cut.wav").read_bytes()
    (d / "cut.wav").write_bytes(raw[: len(raw) // 2])
    write_audio(d / "twin.wav", 2.0, 24000)
    write_audio(d / "twin.flac", 2.0, 24000)
    r = mess("extract", d, "-d", "t", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 1
    assert f"{d / 'cut.wav'}: truncated: the data chunk declares" in r.output
    assert (
        f"{d / 'twin.wav'}: same track id 'twin'" in r.output
        and f"{d / 'twin.flac'}: same track id 'twin'" in r.output
    )
    assert FeatureStore.open("t").track_ids() == ["good"]


def test_failure_reason_with_colon_in_name(tmp_path, tiny_ckpt):
    d = tmp_path / "in"
    write_audio(d / "ok.wav", 2.0, 24000)
    (d / "Track 1: Intro.wav").write_bytes(b"")
    assert (
        mess("extract", d, "-d", "n", "--model", tiny_ckpt, "--device", "cpu", "-q").exit_code == 1
    )
    row = next(r for r in FeatureStore.open("n").track_rows() if r["track_id"] == "Track 1: Intro")
    assert row["status"] == "failed: empty file"


def test_missing_or_damaged_store_data(lib, tiny_ckpt):
    import lance

    assert (
        mess("extract", lib, "-d", "m", "--model", tiny_ckpt, "--device", "cpu", "-q").exit_code
        == 0
    )
    store = FeatureStore.open("m")
    before = store.load("b")["segments"]
    # windows of one track lost (its record says 2): detected, and redone by extract
    lance.dataset(str(store.root / "windows.lance")).delete("track_id = 'a'")
    with pytest.raises(StoreError, match="stored windows.*damaged"):
        FeatureStore.open("m").load("a")
    r = mess("extract", lib, "-d", "m", "--model", tiny_ckpt, "--device", "cpu")
    assert r.exit_code == 0 and "1 extracted, 1 up to date" in r.output
    assert FeatureStore.open("m").load("a")["segments"].shape[0] == store.entry("a").n_segments
    np.testing.assert_array_equal(FeatureStore.open("m").load("b")["segments"], before)
    # a window's values changed behind mess's back: the digest catches it on read
    windows = lance.dataset(str(store.root / "windows.lance"))
    windows.update({"start": "start + 1"}, where="track_id = 'b' AND window = 0")
    with pytest.raises(StoreError, match="does not match its record"):
        FeatureStore.open("m").load("b")
    # a damaged data file: one line naming the store, never a traceback
    for f in (store.root / "windows.lance" / "data").glob("*.lance"):
        f.write_bytes(b"garbage")
    r = mess("extract", lib, "-d", "m", "--model", tiny_ckpt, "--device", "cpu")
    last = r.output.strip().splitlines()[-1]
    assert r.exit_code == 2 and last.startswith("error: ") and str(store.root) in last
    assert "Traceback" not in r.output


def test_removed_audio_is_reported_then_pruned(lib, tiny_ckpt):
    assert (
        mess("extract", lib, "-d", "p", "--model", tiny_ckpt, "--device", "cpu", "-q").exit_code
        == 0
    )
    (lib / "b.wav").unlink()
    r = mess("extract", lib, "-d", "p", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert (
        r.exit_code == 0
        and "1 stored track(s) have no audio file" in r.output
        and "--prune" in r.output
    )
    assert FeatureStore.open("p").track_ids() == ["a", "b"]
    r = mess("extract", lib, "-d", "p", "--model", tiny_ckpt, "--device", "cpu", "-q", "--prune")
    assert r.exit_code == 0 and FeatureStore.open("p").track_ids() == ["a"]


def test_a_track_that_breaks_later_keeps_its_features_marked_stale(lib, tiny_ckpt):
    assert (
        mess("extract", lib, "-d", "s", "--model", tiny_ckpt, "--device", "cpu", "-q").exit_code
        == 0
    )
    (lib / "b.wav").write_bytes(b"RIFF junk")
    assert (
        mess("extract", lib, "-d", "s", "--model", tiny_ckpt, "--device", "cpu", "-q").exit_code
        == 1
    )
    rows = {r["track_id"]: r for r in FeatureStore.open("s").track_rows()}
    assert rows["b"]["status"].startswith("stale:") and rows["b"]["n_segments"] == 2


def test_audio_query_refuses_changed_weights(lib, tiny_ckpt, tmp_path):
    from messai.models.mert import write_random_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    assert mess("extract", lib, "-d", "q", "--model", ck, "--device", "cpu", "-q").exit_code == 0
    other = write_random_checkpoint(tmp_path / "other", like=ck, seed=9, weights_format="bin")
    shutil.copy(other / "pytorch_model.bin", ck / "pytorch_model.bin")
    r = mess("recommend", "-d", "q", "--audio", lib / "a.wav", "--layer", "1", "--device", "cpu")
    assert r.exit_code == 2 and "weights_sha256" in r.output


def test_recommend_argument_checks(isolated_env):
    make_store(Path(isolated_env))
    d = json.loads(
        mess(
            "recommend", "-d", "syn", "--track", "c0/track 000", "-k", "100000", "-f", "json"
        ).stdout
    )
    assert len(d["recommendations"]) == 39
    r = mess("recommend", "-d", "syn", "--track", "c0/track 000", "--aspect", "foo", "--layer", "1")
    assert r.exit_code == 2 and "unknown aspect 'foo'" in r.output
    r = mess("recommend", "-d", "syn", "--track", "c0/track 000", "--layer", "9")
    assert r.exit_code == 2 and "out of range" in r.output
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "messai",
            "recommend",
            "-d",
            "syn",
            "--track",
            "-",
            "--aspect",
            "foo",
        ],
        input="c0/track 000\nc0/track 004\n",
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert p.returncode == 2 and p.stderr.count("error:") == 1 and p.stdout == ""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "messai",
            "recommend",
            "-d",
            "syn",
            "--track",
            "-",
            "-f",
            "tsv",
            "-k",
            "2",
        ],
        input="c0/track 000\n\nc1/track 001\n",
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines[0].startswith("query\trank\ttrack_id") and len(lines) == 5
    assert sum(line.startswith("query\t") for line in lines) == 1


def test_probe_results_go_stale_when_targets_are_recomputed(lib, tiny_ckpt, tmp_path):
    for i in range(3):
        write_audio(lib / f"more{i}.wav", 5.5, 24000, freq=120 * (i + 2), seed=i)
    assert (
        mess("extract", lib, "-d", "g", "--model", tiny_ckpt, "--device", "cpu", "-q").exit_code
        == 0
    )
    assert (
        mess("probe", "-d", "g", "--folds", "3", "--bootstrap", "10", "-f", "json").exit_code == 0
    )
    r = mess("aspects", "-d", "g", "-f", "json")
    assert not any(row["stale"] for row in json.loads(r.stdout))
    assert mess("targets", "-d", "g", "-q").exit_code == 0
    r = mess("aspects", "-d", "g", "-f", "json")
    assert all(row["stale"] for row in json.loads(r.stdout) if row["source"].startswith("probe"))
    assert "re-run 'mess probe" in r.stderr
