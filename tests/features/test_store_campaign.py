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
