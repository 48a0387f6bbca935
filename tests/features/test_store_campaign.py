"""The store fault campaign (issue 22): each test reproduces one fault that lost data or gave
a wrong answer silently, on a local store and, where the fault concerns it, on the suite's S3
server (127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.bench.synthetic import synthetic_entry, synthetic_identity, synthetic_settings
from messai.cli import app
from messai.errors import StoreError
from messai.features import location as loc
from messai.features import store_admin
from messai.features.records import track_arrays
from messai.features.store import FeatureStore

runner = CliRunner()


def mess(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def build_store(base: str, dataset: str, n_tracks: int, *, n_layers=3, dim=8, dtype="float16"):
    """A small store of ``n_tracks`` synthetic tracks (2–3 windows each), committed in three
    batches so each table has several data files."""
    uri = loc.join(base, dataset, "synthetic--model")
    store = FeatureStore.create(
        uri,
        dataset=dataset,
        model=synthetic_identity("model", n_layers=n_layers, dim=dim),
        settings=synthetic_settings(dtype),
    )
    rng = np.random.default_rng(len(dataset) + n_tracks)
    with store.writer():
        for i in range(n_tracks):
            n = 2 + i % 2
            seg = rng.normal(size=(n, n_layers, dim)).astype(np.float32)
            arrays = track_arrays(
                seg, np.arange(n) * 120000, np.full(n, 120000), {}, store_dtype=dtype
            )
            store.put(synthetic_entry(f"t{i:02d}", n), arrays)
            if i % max(1, n_tracks // 3) == 0:
                store.commit()
    return FeatureStore.at(uri)


@pytest.fixture(params=["local", "s3"])
def base(request, isolated_env):
    """Where stores live: the isolated MESS_HOME, or a fresh bucket on the local S3 server."""
    if request.param == "local":
        return str(Path(isolated_env) / "stores")
    return request.getfixturevalue("s3_stores")


def _rewrite_state(store: FeatureStore, edit) -> None:
    path = loc.join(store.uri, "store.json")
    meta = json.loads(loc.read_bytes(path))
    edit(meta)
    loc.write_bytes(path, json.dumps(meta).encode())


# ---------------------------------------------------------------- 22.1
@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["settings"].update(store_dtype="float32"),
        lambda m: m["model"].update(n_layers=5),
        lambda m: m["model"].update(dim=4),
    ],
    ids=["store_dtype", "n_layers", "dim"],
)
def test_an_edited_store_json_never_makes_intact_tracks_damaged(base, edit):
    store = build_store(base, "edited", 6)
    before = {t: store.read_arrays(t) for t in store.track_ids()}
    _rewrite_state(store, edit)
    edited = FeatureStore.at(store.uri)
    report = store_admin.verify(edited, repair=True)
    assert report.details["damaged"] == {} and report.n_tracks == 6
    after = FeatureStore.at(store.uri)
    assert after.track_ids() == sorted(before)
    for t, arrays in before.items():
        np.testing.assert_array_equal(after.read_arrays(t)["segments"], arrays["segments"])
    r = mess("store", "verify", "--at", store.uri, "--repair", "-f", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["details"]["damaged"] == {}


def test_a_repair_that_would_remove_many_tracks_stops_and_says_why(isolated_env):
    store = build_store(str(Path(isolated_env) / "stores"), "many", 9)
    # damage the record of 7 tracks (their digests), leaving the tables readable
    with store.writer():
        store._update_rows({f"t{i:02d}": {"digest": "0" * 32} for i in range(7)})
    store = FeatureStore.at(store.uri)
    r = mess("store", "verify", "--at", store.uri)
    assert r.exit_code == 1 and "t00" in r.output
    r = mess("store", "verify", "--at", store.uri, "--repair")
    assert r.exit_code == 2 and "7 of 9 tracks" in r.output and "--force" in r.output
    assert "Traceback" not in r.output
    assert len(FeatureStore.at(store.uri)) == 9  # nothing removed
    r = mess("store", "verify", "--at", store.uri, "--repair", "--force", "-f", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["details"]["removed"] == [f"t{i:02d}" for i in range(7)]
    assert FeatureStore.at(store.uri).track_ids() == ["t07", "t08"]


# ---------------------------------------------------------------- 22.4
def _data_files(store: FeatureStore, table: str) -> list[str]:
    return [
        loc.join(store.uri, table, "data", f)
        for f in loc.list_files(loc.join(store.uri, table, "data"))
    ]


def _latest_manifest(store: FeatureStore, table: str) -> str:
    versions = store_admin._manifest_versions(loc.join(store.uri, table))
    return loc.join(store.uri, table, "_versions", versions[0][1])


def _truncate(location: str) -> None:
    data = loc.read_bytes(location)
    loc.write_bytes(location, data[: len(data) // 3])


@pytest.mark.parametrize(
    "damage", ["windows data file", "windows manifest", "tracks data file", "tracks manifest"]
)
def test_a_damaged_table_is_repaired_and_extract_can_redo_the_lost_tracks(base, damage):
    store = build_store(base, "broken", 9)
    kept = {t: store.read_arrays(t)["segments"] for t in store.track_ids()}
    table = "windows.lance" if damage.startswith("windows") else "tracks.lance"
    if damage.endswith("data file"):
        loc.remove_file(_data_files(store, table)[0])
    else:
        _truncate(_latest_manifest(store, table))
    report = store_admin.verify(FeatureStore.at(store.uri))
    assert table in report.details["tables"]
    r = mess("store", "verify", "--at", store.uri, "--repair")
    assert r.exit_code == 2 and "--force" in r.output and "Traceback" not in r.output
    r = mess("store", "verify", "--at", store.uri, "--repair", "--force", "-f", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert table in out["details"]["repaired_tables"]
    repaired = FeatureStore.at(store.uri)
    # what is left is whole, and every track left is bit-identical to before
    again = store_admin.verify(repaired)
    assert again.details == {"tables": {}, "damaged": {}}
    for t in repaired.track_ids():
        np.testing.assert_array_equal(repaired.read_arrays(t)["segments"], kept[t])
    assert len(repaired) < 9
    # and the store takes writes again: the lost tracks can be redone
    with repaired.writer():
        for t in sorted(set(kept) - set(repaired.track_ids())):
            n = kept[t].shape[0]
            arrays = track_arrays(
                kept[t].astype(np.float32), np.arange(n) * 120000, np.full(n, 120000), {}
            )
            repaired.put(synthetic_entry(t, n), arrays)
    final = FeatureStore.at(store.uri)
    assert final.track_ids() == sorted(kept)
    assert store_admin.verify(final).details["damaged"] == {}


def test_verify_of_a_store_whose_tracks_table_is_lost_says_so(isolated_env):
    store = build_store(str(Path(isolated_env) / "stores"), "lost", 3)
    for f in _data_files(store, "tracks.lance"):
        loc.remove_file(f)
    for v in store_admin._manifest_versions(loc.join(store.uri, "tracks.lance")):
        _truncate(loc.join(store.uri, "tracks.lance", "_versions", v[1]))
    r = mess("store", "verify", "--at", store.uri)
    assert r.exit_code == 1 and "tracks.lance" in r.output
    r = mess("store", "verify", "--at", store.uri, "--repair", "--force", "-f", "json")
    assert r.exit_code == 0, r.output
    assert "recreated empty" in json.loads(r.stdout)["details"]["repaired_tables"]["tracks.lance"]
    assert len(FeatureStore.at(store.uri)) == 0


# ---------------------------------------------------------------- 22.2 and 22.3
def _writer_run(uri: str, dataset: str, worker: int, errors: list, barrier) -> None:
    """What an extraction does to a new store: create it (or find it), take the writer, set
    the source, store one track."""
    try:
        barrier.wait(10)
        store = FeatureStore.create(
            uri,
            dataset=dataset,
            model=synthetic_identity("model", n_layers=2, dim=4),
            settings=synthetic_settings("float16"),
        )
        with store.writer():
            store.set_source(Path(f"/music/{worker}"), "folder")
            seg = np.full((2, 2, 4), worker, np.float32)
            store.put(
                synthetic_entry(f"w{worker}", 2),
                track_arrays(seg, np.arange(2) * 120000, np.full(2, 120000), {}),
            )
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.parametrize("n_writers", [3])
def test_writers_starting_a_new_store_together_all_finish(base, n_writers):
    import threading

    for attempt in range(3):  # the race is not hit every time; three rounds, three stores
        uri = loc.join(base, f"race{attempt}", "synthetic--model")
        errors: list = []
        barrier = threading.Barrier(n_writers)
        threads = [
            threading.Thread(target=_writer_run, args=(uri, f"race{attempt}", w, errors, barrier))
            for w in range(n_writers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        store = FeatureStore.at(uri)
        assert store.track_ids() == [f"w{w}" for w in range(n_writers)]
        assert store_admin.verify(store).details == {"tables": {}, "damaged": {}}


def test_an_update_config_conflict_is_retried(isolated_env, monkeypatch):
    """The exact error Lance gives a writer whose metadata commit lost to another's."""
    store = build_store(str(Path(isolated_env) / "stores"), "conflict", 1)
    real = type(store.open_table("tracks.lance"))
    calls = []
    original = real.update_schema_metadata

    def flaky(self, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(
                "Commit conflict for version 3: Incompatible transaction: UpdateConfig "
                "conflicts with concurrent transaction UpdateConfig at version 2"
            )
        return original(self, *a, **kw)

    monkeypatch.setattr(real, "update_schema_metadata", flaky)
    with store.writer():
        store.set_source(Path("/elsewhere"), "folder")
    assert len(calls) == 2
    assert FeatureStore.at(store.uri).source_root == Path("/elsewhere")


def test_cleanup_of_an_interrupted_new_store_spares_a_waiting_writer(isolated_env):
    """Run 1 creates a store and is interrupted before storing anything; run 2 waits for its
    lock meanwhile. Run 1's cleanup must leave the store to run 2 (it deleted it under it)."""
    import threading

    from messai.features.pipeline import _remove_if_never_used

    uri = str(Path(isolated_env) / "stores" / "wait" / "synthetic--model")
    first = FeatureStore.create(
        uri,
        dataset="wait",
        model=synthetic_identity("model", n_layers=2, dim=4),
        settings=synthetic_settings("float16"),
    )
    got_lock, waiting, errors = threading.Event(), threading.Event(), []

    def second_run():
        try:
            with FeatureStore.at(uri).writer(on_wait=lambda _: waiting.set()) as w:
                got_lock.set()
                w.put(
                    synthetic_entry("x", 2),
                    track_arrays(
                        np.ones((2, 2, 4), np.float32), np.arange(2), np.full(2, 120000), {}
                    ),
                )
        except BaseException as exc:
            errors.append(exc)

    with first.writer():
        t = threading.Thread(target=second_run)
        t.start()
        assert waiting.wait(10) and not got_lock.is_set()  # it waits
    _remove_if_never_used(first, created=True)  # the interrupted run's cleanup
    t.join(30)
    assert errors == [] and got_lock.is_set()
    assert FeatureStore.at(uri).track_ids() == ["x"]


def test_a_store_removed_while_waiting_is_created_again_by_extract(isolated_env, monkeypatch):
    """The one window left: run 2 found the store, then run 1's cleanup removed it before
    run 2 announced itself. Run 2's writer then refuses cleanly and extract starts over."""
    from messai.features.store import StoreRemovedError

    uri = str(Path(isolated_env) / "stores" / "gone" / "synthetic--model")
    made = FeatureStore.create(
        uri,
        dataset="gone",
        model=synthetic_identity("model", n_layers=2, dim=4),
        settings=synthetic_settings("float16"),
    )
    late = FeatureStore.at(uri)
    assert made.remove_if_unused()
    with pytest.raises(StoreRemovedError), late.writer():
        pass
    assert not Path(uri).exists()  # the refusal created nothing


# ---------------------------------------------------------------- 22.5
def test_an_index_built_during_a_commit_is_never_labelled_fresh(isolated_env, monkeypatch):
    """A reader that opens the store between store.json's renewal and the Lance commit pairs
    the new change id with the old rows, unless the protocol prevents it; hook in there."""
    from messai.search.cache import build_layer_index

    home = Path(isolated_env)
    store = build_store(str(home / "stores"), "fresh", 4)
    assert build_layer_index(home, FeatureStore.at(store.uri), 0).n_tracks == 4
    seen = {}
    real_write = FeatureStore._write

    def write_with_a_reader_in_between(self, name, table, *, mode):
        if "reader" not in seen:  # before the first Lance write of the commit
            reader = FeatureStore.at(self.uri)
            seen["reader"] = (reader.fingerprint(), reader.track_ids())
            seen["index"] = build_layer_index(home, reader, 0)
        return real_write(self, name, table, mode=mode)

    monkeypatch.setattr(FeatureStore, "_write", write_with_a_reader_in_between)
    with store.writer():
        store.put(
            synthetic_entry("new", 2),
            track_arrays(np.ones((2, 3, 8), np.float32), np.arange(2), np.full(2, 120000), {}),
        )
    monkeypatch.setattr(FeatureStore, "_write", real_write)
    after = FeatureStore.at(store.uri)
    fp, ids = seen["reader"]
    assert "new" not in ids  # the reader did run before the commit
    assert fp != after.fingerprint()  # ... so what it read never passes for the new state
    outcome = build_layer_index(home, after, 0)
    assert outcome.action != "up to date" and outcome.n_tracks == 5


def test_a_writer_that_dies_mid_commit_leaves_no_fresh_looking_label(isolated_env, monkeypatch):
    store = build_store(str(Path(isolated_env) / "stores"), "dies", 2)
    before = FeatureStore.at(store.uri).fingerprint()

    def boom(self, *a, **kw):
        raise OSError("disk gone")

    monkeypatch.setattr(FeatureStore, "_merge", boom)
    with pytest.raises(OSError, match="disk gone"), store.writer():
        store.put(
            synthetic_entry("t00", 2),  # an update: windows appended, then the merge fails
            track_arrays(np.ones((2, 3, 8), np.float32), np.arange(2), np.full(2, 120000), {}),
        )
    monkeypatch.undo()
    mid = FeatureStore.at(store.uri)
    assert mid.fingerprint() not in (before, FeatureStore.at(store.uri).fingerprint())
    with mid.writer():  # the next writer clears the dead one's mark
        pass
    after = FeatureStore.at(store.uri)
    assert after.fingerprint() == FeatureStore.at(store.uri).fingerprint() != before


# ---------------------------------------------------------------- 22.6 and 21.13
def test_remove_finds_a_track_typed_in_another_unicode_form(base):
    import unicodedata

    uri = loc.join(base, "cafe", "synthetic--model")
    store = FeatureStore.create(
        uri,
        dataset="cafe",
        model=synthetic_identity("model", n_layers=2, dim=4),
        settings=synthetic_settings("float16"),
    )
    with store.writer():
        for tid in ("Café", "Other"):
            store.put(
                synthetic_entry(tid, 2),
                track_arrays(np.ones((2, 2, 4), np.float32), np.arange(2), np.full(2, 1), {}),
            )
    nfd = unicodedata.normalize("NFD", "Café")
    assert nfd != "Café"
    args = ["remove", "-d", "cafe", "--track", nfd, "-f", "json"]
    if base.startswith("s3://"):  # 21.13: remove takes --stores like every store command
        args += ["--stores", base]
    r = mess(*args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["removed"] == ["Café"]
    assert FeatureStore.at(uri).track_ids() == ["Other"]  # really removed
    # a library caller passing the NFD id to the store itself gets the same
    with FeatureStore.at(uri).writer() as w:
        w.remove(unicodedata.normalize("NFD", "Other"))
    assert FeatureStore.at(uri).track_ids() == []


# ---------------------------------------------------------------- 22.10, 21.2, 22.14 (copy)
def test_a_copy_during_a_write_is_one_consistent_state(isolated_env, monkeypatch):
    """A writer commits between the copy's reads of the two tables: the copy must still be
    whole (before: the tracks of the newer version lacked their windows, exit 0)."""
    stores = Path(isolated_env) / "stores"
    store = build_store(str(stores), "busy", 4)
    import lance

    real_dataset = lance.dataset
    state = {"n": 0}

    def dataset_with_a_commit_in_between(uri, *a, **kw):
        # the copy reads the tracks table, then opens the windows table: in between, replace
        # two tracks and add one (once; the writer's own reads pass through)
        if str(uri).endswith("windows.lance") and "busy/" in str(uri) and state["n"] == 0:
            state["n"] = 1
            with FeatureStore.at(store.uri).writer() as w:
                for tid in ("t00", "t01", "extra"):
                    w.put(
                        synthetic_entry(tid, 3),
                        track_arrays(
                            np.full((3, 3, 8), 7, np.float32), np.arange(3), np.full(3, 1), {}
                        ),
                    )
        return real_dataset(uri, *a, **kw)

    monkeypatch.setattr(lance, "dataset", dataset_with_a_commit_in_between)
    report = store_admin.copy(store.uri, str(tmp_dest := stores / "busycopy" / "m"))
    monkeypatch.undo()
    copied = FeatureStore.at(tmp_dest)
    assert report.n_tracks == len(copied)
    assert store_admin.verify(copied).details == {"tables": {}, "damaged": {}}


def test_a_copy_carries_every_side_file_and_takes_the_name_of_where_it_lives(base, tmp_path):
    store = build_store(base, "mine", 3)
    store.write_side_file("aspect_spaces.json", b'{"spaces": []}')
    store.write_side_file("probe.json", b'{"probe": 1}')
    other_home = tmp_path / "other_home"
    dest = other_home / "stores" / "yours" / store.slug
    r = mess("store", "copy", store.uri, dest, "-f", "json")
    assert r.exit_code == 0, r.output
    copy = FeatureStore.at(dest)
    assert copy.read_side_file("aspect_spaces.json") == b'{"spaces": []}'
    assert copy.read_side_file("probe.json") == b'{"probe": 1}'
    assert copy.dataset == "yours"
    r = mess("datasets", "--stores", other_home / "stores", "-f", "json")
    assert [d["dataset"] for d in json.loads(r.stdout)] == ["yours"]
    r = mess("tracks", "-d", "yours", "--stores", other_home / "stores", "-f", "json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 3
    # the index cache of the copy is its own
    from messai.search.cache import store_cache_dir

    assert store_cache_dir(tmp_path, copy) != store_cache_dir(tmp_path, FeatureStore.at(store.uri))


def test_a_store_moved_by_hand_into_another_dataset_folder_takes_its_name(isolated_env):
    import shutil

    stores = Path(isolated_env) / "stores"
    store = build_store(str(stores), "orig", 2)
    shutil.copytree(store.root, stores / "moved" / store.slug)
    moved = FeatureStore.open("moved")
    assert moved.dataset == "moved" and len(moved) == 2
    r = mess("datasets", "-f", "json")
    assert sorted(d["dataset"] for d in json.loads(r.stdout)) == ["moved", "orig"]


# ---------------------------------------------------------------- 22.11
def test_a_file_name_that_is_not_utf8_is_one_failure_and_the_rest_is_extracted(
    isolated_env, tmp_path, tiny_ckpt
):
    import os
    import shutil

    from tests.conftest import write_audio

    lib = tmp_path / "lib"
    write_audio(lib / "good.wav", 6.0, 24000, freq=220)
    shutil.copy(lib / "good.wav", os.fsencode(str(lib)) + b"/bad\xff.wav")
    for _ in range(2):  # and again on a rerun
        r = mess("extract", lib, "-d", "names", "--model", tiny_ckpt, "-q")
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output and "UnicodeEncodeError" not in r.output
        lines = [x for x in r.output.splitlines() if "bad" in x]
        assert lines == [f"{lib}/bad\\xff.wav: file name is not valid UTF-8; rename the file"]
        assert FeatureStore.open("names").track_ids() == ["good"]


def test_the_store_refuses_an_id_that_is_not_utf8_alone(isolated_env):
    store = build_store(str(Path(isolated_env) / "stores"), "bytes", 1)
    with pytest.raises(StoreError, match=r"bad\\\\xff.*not valid UTF-8"), store.writer():
        store.put(
            synthetic_entry("bad", 2).with_changes(track_id="bad\udcff"),
            track_arrays(np.ones((2, 3, 8), np.float32), np.arange(2), np.full(2, 1), {}),
        )
    assert FeatureStore.at(store.uri).track_ids() == ["t00"]


# ---------------------------------------------------------------- 22.14
def test_a_reader_during_compaction_reads_the_new_version(isolated_env, monkeypatch):
    """Compaction with no retention removes the version a reader has just opened; the
    reader must read the version that replaced it (it was told to delete the store)."""
    store = build_store(str(Path(isolated_env) / "stores"), "compacting", 9)
    expected = {t: store.read_arrays(t)["segments"] for t in store.track_ids()}
    reader = FeatureStore.at(store.uri)
    real_open = FeatureStore.open_table
    state = {"compacted": set()}

    def open_then_compact(self, name, *, version=None):
        ds = real_open(self, name, version=version)
        if self is reader and name not in state["compacted"]:
            state["compacted"].add(name)  # compact right after the reader opened it
            store_admin.compact(FeatureStore.at(store.uri), retention_days=0)
        return ds

    monkeypatch.setattr(FeatureStore, "open_table", open_then_compact)
    got = {t: reader.read_arrays(t)["segments"] for t in reader.track_ids()}
    monkeypatch.undo()
    assert state["compacted"] == {"tracks.lance", "windows.lance"}
    assert sorted(got) == sorted(expected)
    for t in expected:
        np.testing.assert_array_equal(got[t], expected[t])


# ---------------------------------------------------------------- 21.8
def test_verify_and_compact_print_tables_not_python_dicts(isolated_env):
    store = build_store(str(Path(isolated_env) / "stores"), "shown", 6)
    r = mess("store", "verify", "-d", "shown")
    assert r.exit_code == 0, r.output
    assert "{" not in r.output and "damaged" in r.output and "details" not in r.output
    assert r.output.count(store.uri) == 1  # the store once, not as source and destination
    r = mess("store", "compact", "-d", "shown", "--retention-days", "0")
    assert r.exit_code == 0, r.output
    assert "tracks.lance" in r.output and "windows.lance" in r.output and "{'" not in r.output
    r = mess("store", "compact", "-d", "shown", "-f", "json")
    out = json.loads(r.stdout)
    assert set(out["details"]) == {"tracks.lance", "windows.lance"}
    with FeatureStore.at(store.uri).writer() as w:
        w._update_rows({"t01": {"digest": "0" * 32}})
    r = mess("store", "verify", "-d", "shown")
    assert r.exit_code == 1 and "{" not in r.output
    line = next(x for x in r.output.splitlines() if x.lstrip().startswith("t01"))
    assert "does not match its record" in line and store.uri not in line
    r = mess("store", "verify", "-d", "shown", "-f", "tsv")
    assert r.exit_code == 1 and "t01\t" in r.output


def test_an_interrupted_extract_on_a_new_store_spares_the_run_waiting_for_it(
    isolated_env, tmp_path, tiny_ckpt
):
    """The issue's scenario through the pipeline: run 1 creates the store and is interrupted
    (Ctrl-C) while run 2 waits for its lock; run 2 must then write the store."""
    import threading

    from messai.config import load_settings
    from messai.features.pipeline import extract_dataset, store_uri_for
    from tests.conftest import write_audio

    lib = tmp_path / "lib"
    write_audio(lib / "a.wav", 6.0, 24000, freq=220)
    settings = load_settings(model=str(tiny_ckpt))
    result, errors, waiting = {}, [], threading.Event()

    def second_run():
        try:
            with FeatureStore.at(uri).writer(on_wait=lambda _: waiting.set()) as w:
                result["tracks"] = w.track_ids()
                w.put(
                    synthetic_entry("from-run-2", 2),
                    track_arrays(
                        np.ones((2, 3, 32), np.float32), np.arange(2), np.full(2, 120000), {}
                    ),
                )
        except BaseException as exc:
            errors.append(exc)

    def interrupted_engine(checkpoint, settings, tracks, listener):
        t.start()  # run 2 arrives while run 1 holds the lock ...
        assert waiting.wait(20)
        raise KeyboardInterrupt  # ... and run 1 is interrupted before storing anything
        yield  # pragma: no cover

    from messai.models.mert import resolve_checkpoint

    uri = store_uri_for(settings, "waiting", resolve_checkpoint(str(tiny_ckpt)).identity())
    t = threading.Thread(target=second_run)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(lib, dataset="waiting", settings=settings, engine=interrupted_engine)
    t.join(60)
    assert errors == [] and result["tracks"] == []
    assert FeatureStore.at(uri).track_ids() == ["from-run-2"]


def test_a_store_opened_by_its_location_keeps_its_recorded_name(tmp_path):
    store = FeatureStore.create(
        tmp_path / "anywhere" / "store",
        dataset="named",
        model=synthetic_identity("model", n_layers=2, dim=4),
        settings=synthetic_settings("float16"),
    )
    assert store.dataset == FeatureStore.at(store.uri).dataset == "named"


def test_the_damage_message_names_the_way_back_that_works(isolated_env):
    """A track whose digest does not match is not redone by 'mess extract' alone (its window
    count is right): the message must name verify --repair, which does make extract redo it."""
    store = build_store(str(Path(isolated_env) / "stores"), "msg", 2)
    with store.writer():
        store._update_rows({"t00": {"digest": "0" * 32}})
    damaged = FeatureStore.at(store.uri)
    with pytest.raises(StoreError, match=r"mess store verify --repair' removes it"):
        damaged.read_arrays("t00")
    assert "t00" in damaged.window_counts_ok()  # what extract's plan looks at: not redone
    store_admin.verify(damaged, repair=True)
    assert FeatureStore.at(store.uri).track_ids() == ["t01"]  # now extract redoes t00
