"""The files of the query path: memory-mapped string columns, the index and catalogue formats,
their checksums (tampering is detected, also with the mtime put back), old folders, full disks,
damaged store vectors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.bench.synthetic import clustered
from messai.cli import app
from messai.errors import SearchIndexError, StoreError
from messai.search import index_io, mapped
from messai.search.catalogue import TrackCatalogue
from messai.search.layer_index import LayerIndex, build_index
from messai.search.mapped import ListColumn, StringColumn, write_strings
from tests.synthetic_store import make_store

runner = CliRunner()


def ids_for(n: int) -> list[str]:
    return [f"t{i:05d}" for i in range(n)]


def _flip(path: Path, offset: int, *, keep_mtime: bool = False) -> None:
    """Flip one byte in place; ``keep_mtime`` puts the modification time back (as a careful
    editor or a restored backup would)."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x21]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# --------------------------------------------------------------------------------------------
# string columns


@pytest.mark.parametrize("lookup", [True, False])
def test_string_column_round_trip_and_lookup(tmp_path, lookup):
    values = ["b", "a", "", "Café", "caf\u00e9 2", "z" * 300, "\udcff bad bytes", "ä/ö", "a "]
    write_strings(tmp_path / "c.str", values, lookup=lookup)
    col = StringColumn(tmp_path / "c.str")
    assert len(col) == len(values) and list(col) == values and col == values
    assert [col[i] for i in range(len(values))] == values and col[-1] == values[-1]
    assert col[2:4] == values[2:4]
    if lookup:
        for i, v in enumerate(values):
            assert col.find(v) == i and v in col
        assert col.find("absent") is None and col.find("a  ") is None and "zz" not in col
    else:
        with pytest.raises(SearchIndexError):
            col.find("a")


def test_sorted_column_needs_no_order_section(tmp_path):
    values = sorted(f"t{i:04d}" for i in range(500))
    write_strings(tmp_path / "s.str", values)
    write_strings(tmp_path / "u.str", values[::-1])
    assert (tmp_path / "u.str").stat().st_size - (tmp_path / "s.str").stat().st_size == 8 * 500
    col = StringColumn(tmp_path / "s.str")
    assert all(col.find(v) == i for i, v in enumerate(values))
    assert col.find("t0500") is None and col.find("") is None


def test_truncated_column_is_an_error(tmp_path):
    write_strings(tmp_path / "c.str", ["one", "two"])
    os.truncate(tmp_path / "c.str", (tmp_path / "c.str").stat().st_size - 1)
    with pytest.raises(SearchIndexError, match="c.str"):
        StringColumn(tmp_path / "c.str")


def test_list_column_find():
    col = ListColumn(["x", "y", "x"])
    assert col.find("y") == 1 and col.find("x") == 0 and col.find("q") is None


# --------------------------------------------------------------------------------------------
# index folders


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq", "hnsw-sq8"])
def test_loaded_index_answers_like_the_built_one(tmp_path, kind):
    n = 1500
    X = clustered(n, 32, seed=3)
    ids = [f"id {i * 7919 % n:05d}" for i in range(n)]  # not sorted: the lookup uses an order
    built = build_index(X, ids, kind=kind, fingerprint="fp", meta={"versions": {"a": "1"}})
    built.save(tmp_path / "idx")
    loaded = LayerIndex.load(tmp_path / "idx")
    assert isinstance(loaded.track_ids, StringColumn) and loaded.track_ids == ids
    assert loaded.meta["versions"] == {"a": "1"}
    for a, b in zip(built.search(X[:30], 10), loaded.search(X[:30], 10)):
        np.testing.assert_array_equal(a, b)
    for t in ids[::97]:
        assert loaded.position(t) == ids.index(t)
        assert built.search_track(t, 5)[1] == loaded.search_track(t, 5)[1]
    assert "absent" not in loaded


def test_flat_index_is_memory_mapped_and_can_still_grow(tmp_path):
    X = clustered(400, 16)
    build_index(X[:300], ids_for(300), normalize="l2").save(tmp_path / "idx")
    loaded = LayerIndex.load(tmp_path / "idx")
    assert loaded._mapped  # FAISS reads index.faiss through a memory map
    fresh = build_index(X, ids_for(400), normalize="l2")
    loaded.add(X[300:], ids_for(400)[300:])  # FAISS would abort on a mapped index: copied first
    for a, b in zip(fresh.search(X[:20], 8), loaded.search(X[:20], 8)):
        np.testing.assert_array_equal(a, b)
    loaded.save(tmp_path / "idx")
    again = LayerIndex.load(tmp_path / "idx")
    assert again.track_ids == ids_for(400)


def test_tombstones_and_versions_live_in_their_own_files(tmp_path):
    X = clustered(200, 8)
    index = build_index(X, ids_for(200), kind="hnsw", meta={"versions": {"t00001": "v"}})
    index.remove(["t00003", "t00150"])
    index.save(tmp_path / "idx")
    record = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert "versions" not in record["meta"] and "tombstones" not in record["meta"]
    assert "track_ids" not in record  # nothing in meta.json grows with the catalogue
    loaded = LayerIndex.load(tmp_path / "idx")
    assert loaded.meta["tombstones"] == [3, 150] and len(loaded) == 198
    assert "t00003" not in loaded and dict(loaded.meta["versions"]) == {"t00001": "v"}


def test_query_never_reads_the_versions(tmp_path, monkeypatch):
    build_index(clustered(100, 8), ids_for(100), meta={"versions": {"x": "1"}}).save(tmp_path / "i")
    (tmp_path / "i" / "versions.json").write_text("garbage")  # damaged, but a query never reads it
    loaded = LayerIndex.load(tmp_path / "i")
    assert len(loaded.search_track("t00001", 3)[1]) == 3
    with pytest.raises(SearchIndexError, match="versions.json"):
        dict(loaded.meta["versions"])  # an update does, and refuses it


TAMPER = {
    "flat index.faiss": ("flat", "index.faiss", 100),
    "ivfpq vectors.npy": ("ivfpq", "vectors.npy", 4000),
    "hnsw-sq8 vectors.npy": ("hnsw-sq8", "vectors.npy", 4000),
    "ids.str": ("flat", "ids.str", -3),
    "mean.npy": ("flat", "mean.npy", -2),
    "hnsw index.faiss": ("hnsw", "index.faiss", -100),
}


@pytest.mark.parametrize("keep_mtime", [False, True])
@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_file_is_detected_by_load_and_verify(tmp_path, case, keep_mtime):
    kind, name, offset = TAMPER[case]
    build_index(clustered(800, 16), ids_for(800), kind=kind).save(tmp_path / "idx")
    path = tmp_path / "idx" / name
    _flip(path, offset % path.stat().st_size, keep_mtime=keep_mtime)
    with pytest.raises(SearchIndexError, match="checksum mismatch") as info:
        LayerIndex.load(tmp_path / "idx")
    assert name in str(info.value)
    with pytest.raises(SearchIndexError, match=name):
        index_io.verify_index_dir(tmp_path / "idx")


def test_swapped_ids_are_detected(tmp_path):
    build_index(clustered(50, 8), ids_for(50)).save(tmp_path / "idx")
    path = tmp_path / "idx" / "ids.str"
    raw = path.read_bytes()
    raw = raw.replace(b"t00001t00002", b"t00002t00001")  # same size, two ids swapped
    path.write_bytes(raw)
    with pytest.raises(SearchIndexError, match="ids.str: checksum mismatch"):
        LayerIndex.load(tmp_path / "idx")


def test_changed_signature_hashes_once_then_trusts(tmp_path, monkeypatch):
    build_index(clustered(700, 8), ids_for(700), kind="ivfpq").save(tmp_path / "idx")
    shutil.copytree(tmp_path / "idx", tmp_path / "copy")  # new inodes: every file is hashed
    calls = []
    real = mapped.sha256_file
    monkeypatch.setattr(mapped, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    LayerIndex.load(tmp_path / "copy")  # at once: the copies' ctimes are too fresh to trust
    assert "index.faiss" in calls and not (tmp_path / "copy" / mapped.VERIFIED_FILE).exists()
    time.sleep(mapped.FINE_MARGIN_NS / 1e9)
    calls.clear()
    LayerIndex.load(tmp_path / "copy")
    assert {"index.faiss", "ids.str", "vectors.npy"} <= set(calls)
    assert (tmp_path / "copy" / mapped.VERIFIED_FILE).is_file()
    calls.clear()
    LayerIndex.load(tmp_path / "copy")
    LayerIndex.load(tmp_path / "idx")
    assert calls == []  # constant time: stat signatures only


def test_old_format_is_refused_with_the_rebuild_command(tmp_path):
    build_index(clustered(60, 8), ids_for(60)).save(tmp_path / "idx")
    (tmp_path / "idx" / "meta.json").write_text(
        json.dumps({"format": "mess-layer-index", "format_version": 1, "track_ids": ["a"]})
    )
    with pytest.raises(SearchIndexError, match="version 1.*mess index --force"):
        LayerIndex.load(tmp_path / "idx")


def test_full_disk_leaves_the_old_index_and_no_temp_folder(tmp_path, monkeypatch):
    X = clustered(100, 8)
    build_index(X, ids_for(100), fingerprint="old").save(tmp_path / "idx")

    def full(index, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_io, "write_faiss", full)
    with pytest.raises(OSError, match="No space left"):
        build_index(X, ids_for(100), fingerprint="new").save(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert LayerIndex.load(tmp_path / "idx").fingerprint == "old"


def test_ivfpq_on_a_small_store_says_what_to_use():
    with pytest.raises(SearchIndexError) as info:
        build_index(clustered(500, 16), ids_for(500), kind="ivfpq")
    message = str(info.value)
    assert "--kind ivfpq" in message and "500" in message and "624" in message
    assert "--kind flat" in message and "--kind hnsw-sq8" in message and "\n" not in message


# --------------------------------------------------------------------------------------------
# through the store: catalogue, commands


@pytest.fixture()
def store(isolated_env):
    return make_store(Path(isolated_env))


def _recommend(*args: str):
    return runner.invoke(app, ["recommend", "-d", "syn", "--layer", "1", "-k", "5", *args])


def _label(row: dict, name: str):
    """A label of a recommendation row (top level, or nested under "labels")."""
    return row.get("labels", row)[name]


def _cache(home: Path) -> Path:
    return home / "indices" / "syn" / "synthetic--model"


def test_catalogue_is_mapped_and_answers_like_the_store(store, isolated_env):
    r = _recommend("--track", "c1/track 005", "--format", "json")
    assert r.exit_code == 0, r.output
    folder = _cache(isolated_env) / "catalogue"
    assert sorted(p.name for p in folder.iterdir()) == [
        "failures.json",
        "ids.str",
        "labels.str",
        "manifest.json",
        "sources.str",
    ]
    cat = TrackCatalogue.open(folder)
    assert cat.track_ids() == store.track_ids() and len(cat) == len(store)
    for t in store.track_ids():
        assert cat.labels(t) == store.labels(t)
    assert cat.label_rows() == {t: store.labels(t) for t in store.track_ids()}
    d = json.loads(r.stdout)
    rows = d["recommendations"]
    assert rows and all(_label(x, "work") == store.labels(x["track_id"])["work"] for x in rows)


def test_edited_catalogue_is_rebuilt_not_believed(store, isolated_env):
    assert _recommend("--track", "c1/track 005").exit_code == 0
    labels = _cache(isolated_env) / "catalogue" / "labels.str"
    raw = labels.read_bytes()
    labels.write_bytes(raw.replace(b"work1", b"work9"))  # same size, other labels
    r = _recommend("--track", "c1/track 005", "--format", "json", "--where", "work = 'work9'")
    assert r.exit_code == 0, r.output
    assert "labels.str: checksum mismatch" in r.stderr and "rebuilding" in r.stderr
    assert json.loads(r.stdout)["recommendations"] == []  # no track is in work9
    r = _recommend("--track", "c1/track 005", "--format", "json", "--where", "work = 'work1'")
    assert {_label(x, "work") for x in json.loads(r.stdout)["recommendations"]} == {"work1"}


def test_old_catalogue_json_and_old_index_are_replaced(store, isolated_env):
    assert _recommend("--track", "c1/track 005", "--format", "ids").exit_code == 0
    cache = _cache(isolated_env)
    index = next(p for p in cache.iterdir() if p.name.startswith("layer01"))
    record = json.loads((index / "meta.json").read_text())
    record.update(format_version=1, track_ids=["wrong"] * record["n"])  # as an old mess wrote it
    (index / "meta.json").write_text(json.dumps(record))
    shutil.rmtree(cache / "catalogue")  # the cache as the previous version left it
    (cache / "catalogue.json").write_text(json.dumps({"track_ids": ["wrong"], "labels": [{}]}))
    r = _recommend("--track", "c1/track 005", "--format", "ids")
    assert r.exit_code == 0, r.output
    assert "version 1" in r.stderr and "rebuilding" in r.stderr
    assert "wrong" not in r.stdout and len(r.stdout.splitlines()) == 5
    assert not (cache / "catalogue.json").exists()
    hnsw = runner.invoke(app, ["index", "-d", "syn", "--layers", "1", "--kind", "hnsw"])
    assert hnsw.exit_code == 0, hnsw.output
    folder = next(p for p in cache.iterdir() if p.name.endswith("-hnsw"))
    record = json.loads((folder / "meta.json").read_text())
    record["format_version"] = 1
    (folder / "meta.json").write_text(json.dumps(record))
    r = _recommend("--track", "c1/track 005", "--kind", "hnsw")
    assert r.exit_code != 0 and "mess index --force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_verify_covers_every_file_a_query_reads(store, isolated_env):
    for kind in ("flat", "hnsw-sq8"):
        r = runner.invoke(app, ["index", "-d", "syn", "--layers", "1", "--kind", kind])
        assert r.exit_code == 0, r.output
    assert _recommend("--track", "c1/track 005").exit_code == 0  # builds the catalogue
    ok = runner.invoke(
        app, ["index", "-d", "syn", "--layers", "1", "--kind", "hnsw-sq8", "--verify"]
    )
    assert ok.exit_code == 0, ok.output
    cache = _cache(isolated_env)
    folder = next(p for p in cache.iterdir() if p.name.endswith("-hnsw-sq8"))
    _flip(folder / "vectors.npy", 200, keep_mtime=True)
    bad = runner.invoke(
        app, ["index", "-d", "syn", "--layers", "1", "--kind", "hnsw-sq8", "--verify"]
    )
    assert bad.exit_code == 1 and "vectors.npy" in bad.stdout
    r = _recommend("--track", "c1/track 005", "--kind", "hnsw-sq8")
    assert r.exit_code != 0 and "checksum mismatch" in r.stderr
    _flip(cache / "catalogue" / "sources.str", 60)
    cat = runner.invoke(app, ["index", "-d", "syn", "--layers", "1", "--verify"])
    assert cat.exit_code == 1 and "sources.str" in cat.stdout


def test_damaged_store_vector_is_refused_by_name(store, isolated_env, monkeypatch):
    from messai.features.store import FeatureStore
    from messai.search.cache import build_layer_index

    real = FeatureStore.layer

    def flipped(self, layer, *, track_ids=None):
        ids, X = real(self, layer, track_ids=track_ids)
        X[ids.index("c2/track 006"), 3] = np.float32(3.3e38)  # one flipped exponent bit
        return ids, X

    monkeypatch.setattr(FeatureStore, "layer", flipped)
    with pytest.raises(StoreError) as info:
        build_layer_index(isolated_env, store, 1, force=True)
    message = str(info.value)
    assert "'c2/track 006'" in message and "3.3e+38" in message and "mess store verify" in message
    r = runner.invoke(app, ["index", "-d", "syn", "--layers", "1", "--force"])
    assert r.exit_code != 0 and "c2/track 006" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_full_disk_during_index_is_one_line(store, isolated_env, monkeypatch):
    def full(index, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_io, "write_faiss", full)
    for args in (
        ["index", "-d", "syn", "--layers", "1"],
        ["recommend", "-d", "syn", "--layer", "1", "--track", "c1/track 005"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code != 0
        assert "No space left on device" in r.stderr and len(r.stderr.strip().splitlines()) <= 2
        assert "Traceback" not in r.stderr
    cache = _cache(isolated_env)
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]  # no temp folders


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/proc/filesystems").is_file(), reason="root")
def test_full_tmpfs_during_index(isolated_env, tmp_path):
    """A real full file system (a 1 MiB tmpfs) under MESS_HOME's index cache."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        make_store(Path(isolated_env), n_tracks=200, dim=64)  # a flat index of ~50 KiB
        (small / "filler").write_bytes(b"\0" * ((1 << 20) - (24 << 10)))  # 24 KiB left
        (Path(isolated_env) / "indices").symlink_to(small)
        r = runner.invoke(app, ["index", "-d", "syn", "--layers", "1"])
        assert r.exit_code != 0 and "No space left on device" in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        leftovers = [p for p in small.rglob("*") if ".tmp-" in p.name]
        assert leftovers == []
    finally:
        subprocess.run(["umount", str(small)])


def test_append_hard_links_vectors_without_hashing_them_again(tmp_path, monkeypatch):
    X = clustered(760, 8)
    build_index(X[:700], ids_for(700), kind="ivfpq").save(tmp_path / "idx")
    index = LayerIndex.load(tmp_path / "idx")
    index.add(X[700:], ids_for(760)[700:])
    index.save(tmp_path / "idx")  # vectors.npy hard-linked, vectors-1.npy written
    assert (tmp_path / "idx" / "vectors.npy").stat().st_nlink == 1  # the old folder is gone
    calls = []
    real = mapped.sha256_file
    monkeypatch.setattr(mapped, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    loaded = LayerIndex.load(tmp_path / "idx")
    assert calls == [] and loaded.track_ids == ids_for(760)
    _, fresh_ids = loaded.search_track("t00750", 5)
    assert fresh_ids[0] != "t00750" and len(fresh_ids) == 5
    index_io.verify_index_dir(tmp_path / "idx")  # and every byte is what was recorded


def test_check_lookup_finds_duplicates_and_a_bad_order(tmp_path):
    write_strings(tmp_path / "ok.str", ["b", "a", "c"])
    StringColumn(tmp_path / "ok.str").check_lookup()
    write_strings(tmp_path / "dup.str", ["b", "a", "b"])
    with pytest.raises(SearchIndexError, match="duplicate"):
        StringColumn(tmp_path / "dup.str").check_lookup()
    path = tmp_path / "ok.str"
    raw = bytearray(path.read_bytes())
    order_at = 32 + 8 * 4  # header, 4 offsets
    raw[order_at : order_at + 16] = raw[order_at + 8 : order_at + 16] + raw[order_at : order_at + 8]
    path.write_bytes(bytes(raw))
    with pytest.raises(SearchIndexError, match="lookup"):
        StringColumn(path).check_lookup()


def test_a_change_right_after_writing_is_still_caught(tmp_path):
    """A byte flipped within the same tick of the file system's clock as the write keeps the
    ctime: the signature is recorded only once it is settled, so the flip is still seen."""
    X = clustered(100, 8)
    build_index(X, ids_for(100)).save(tmp_path / "idx")
    for _ in range(3):
        _flip(tmp_path / "idx" / "index.faiss", 300, keep_mtime=True)
        with pytest.raises(SearchIndexError, match="checksum mismatch"):
            LayerIndex.load(tmp_path / "idx")
        _flip(tmp_path / "idx" / "index.faiss", 300, keep_mtime=True)  # back as written
        LayerIndex.load(tmp_path / "idx")
