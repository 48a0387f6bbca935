"""Format-1 migration, copying between locations, compaction and verification."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.errors import StoreError
from messai.features import store_admin
from messai.features.store import FeatureStore
from tests.conftest import write_audio, write_checkpoint
from tests.synthetic_store import make_store

RESOURCES = Path(__file__).resolve().parents[1] / "resources" / "format1"
runner = CliRunner()


def install_format1_store(home: Path) -> Path:
    """The format-1 store written by the last format-1 release (see resources/format1)."""
    root = home / "stores" / "legacy" / "local--ckpt-aa2b73a0"
    shutil.copytree(RESOURCES, root, ignore=shutil.ignore_patterns("README.md"))
    return root


def test_format1_store_is_refused_with_the_command_to_run(isolated_env):
    root = install_format1_store(Path(isolated_env))
    with pytest.raises(StoreError, match="format-1 store.*mess store migrate"):
        FeatureStore.open("legacy")
    r = runner.invoke(app, ["tracks", "--dataset", "legacy"])
    assert r.exit_code == 2 and "mess store migrate" in r.output and str(root) in r.output


def test_migration_is_lossless_and_bit_identical_to_a_fresh_extraction(isolated_env, tmp_path):
    from messai.features.store_v1 import FeatureStoreV1

    root = install_format1_store(Path(isolated_env))
    old = FeatureStoreV1.at(root)
    expected = {t: old.read_arrays(t) for t in old.track_ids()}
    entries = {e.track_id: e for e in old.iter_entries()}
    r = runner.invoke(app, ["store", "migrate", "--dataset", "legacy"])
    assert r.exit_code == 0, r.output
    new = FeatureStore.open("legacy")
    assert not (root / "manifest.json").exists() and (root / "tracks.lance").is_dir()
    assert new.track_ids() == sorted(expected) and set(new.failures()) == {"bad"}
    assert new.model == old.model and new.settings == old.settings
    for tid, arrays in expected.items():
        got = new.read_arrays(tid)
        assert set(got) == set(arrays)
        for name, values in arrays.items():
            assert got[name].dtype == values.dtype
            np.testing.assert_array_equal(got[name], values)
        assert new.entry(tid) == entries[tid]
    # the same audio and model, extracted now into format 2: bit-identical windows
    ckpt = write_checkpoint(tmp_path / "ckpt", weights="safetensors")
    audio = tmp_path / "audio"
    write_audio(audio / "a.wav", 6.3, 24000, freq=440, seed=1)
    write_audio(audio / "sub" / "b.wav", 11.0, 44100, freq=660, seed=2, channels=2)
    r = runner.invoke(app, ["extract", str(audio), "-d", "fresh", "--model", str(ckpt), "-q"])
    assert r.exit_code == 0, r.output
    fresh = FeatureStore.open("fresh")
    for tid, arrays in expected.items():
        np.testing.assert_array_equal(fresh.read_arrays(tid)["segments"], arrays["segments"])


def test_copy_round_trip_and_refuses_to_overwrite(isolated_env, tmp_path):
    store = make_store(Path(isolated_env))
    with store.writer():
        store.mark_failed("broken", "broken.wav", "not audio")
    dst = str(tmp_path / "elsewhere" / "syn")
    report = store_admin.copy(store.uri, dst)
    assert report.n_tracks == len(store) and report.n_failures == 1
    copied = FeatureStore.at(dst)
    assert copied.track_ids() == store.track_ids()
    for tid in store.track_ids()[:5]:
        for name, values in store.read_arrays(tid).items():
            np.testing.assert_array_equal(copied.read_arrays(tid)[name], values)
    with pytest.raises(StoreError, match="exists there already"):
        store_admin.copy(store.uri, dst)


def test_interrupted_copy_is_not_a_store_until_finished_and_resumes(
    isolated_env, tmp_path, monkeypatch
):
    store = make_store(Path(isolated_env), n_tracks=30)
    dst = str(tmp_path / "dst")
    monkeypatch.setattr(store_admin, "BATCH_TRACKS", 8)
    calls = {"n": 0}

    def stop_after_two(done, total):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store_admin.copy(store.uri, dst, on_progress=stop_after_two)
    assert not FeatureStore.exists_at(dst)  # windows only: not openable as a store
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore.at(dst)
    report = store_admin.copy(store.uri, dst)
    assert report.n_skipped == 16 and report.n_tracks == 30
    copied = FeatureStore.at(dst)
    assert copied.read_windows()["segments"].shape == store.read_windows()["segments"].shape


def test_compact_merges_fragments_and_keeps_data(isolated_env):
    store = make_store(Path(isolated_env), n_tracks=12)
    for _ in range(3):  # many small commits
        with store.writer():
            store.mark_failed("x", "x.wav", "bad")
        with store.writer():
            store.remove("x")
    before = store.read_windows()["segments"]
    r = runner.invoke(app, ["store", "compact", "--dataset", "syn", "--retention-days", "0"])
    assert r.exit_code == 0, r.output
    after = FeatureStore.open("syn")
    np.testing.assert_array_equal(after.read_windows()["segments"], before)
    assert len(after.open_table("tracks.lance").get_fragments()) == 1


def test_verify_finds_and_repairs_damaged_tracks(isolated_env):
    import lance

    store = make_store(Path(isolated_env), n_tracks=6)
    victim = store.track_ids()[2]
    lance.dataset(str(store.root / "windows.lance")).update(
        {"length": "length + 1"}, where=f"track_id = '{victim}' AND window = 0"
    )
    r = runner.invoke(app, ["store", "verify", "--dataset", "syn", "--format", "json"])
    assert r.exit_code == 1 and victim in r.stdout
    r = runner.invoke(app, ["store", "verify", "--dataset", "syn", "--repair"])
    assert victim not in FeatureStore.open("syn").track_ids()
    r = runner.invoke(app, ["store", "verify", "--dataset", "syn"])
    assert r.exit_code == 0, r.output
