"""Live data: a new extraction, a refit aspect space and a rebuilt index are answered from on the
next request, without a restart; a store being written is not read until its writer is done."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.bench.synthetic import clustered_store, synthetic_entry
from messai.cli import app
from messai.features.records import track_arrays
from tests.serve.conftest import make_client

runner = CliRunner()


@pytest.fixture
def syn(isolated_env):
    return clustered_store(isolated_env, "syn", n_tracks=24, n_layers=2, dim=8)


def add_track(store, tid: str, seed: int = 1) -> None:
    seg = np.random.default_rng(seed).normal(5.0, 1.0, size=(2, 2, 8)).astype(np.float32)
    targets = {"spectral_centroid": np.array([900.0, 1100.0], dtype=np.float32)}
    arrays = track_arrays(
        seg, np.arange(2) * 120000, np.full(2, 120000), targets, store_dtype="float32"
    )
    store.put(synthetic_entry(tid, 2, ("spectral_centroid",), {"work": "new"}), arrays)


def n_tracks(c) -> int:
    return c.get("/v1/tracks", params={"limit": 1}).json()["n_tracks"]


def test_a_new_extraction_is_answered_from_on_the_next_request(syn, isolated_env):
    with make_client(isolated_env) as c:
        assert n_tracks(c) == 24
        with syn.writer():
            add_track(syn, "new/one")
        assert n_tracks(c) == 25
        r = c.get("/v1/tracks/new%2Fone/similar", params={"k": 3})
        assert r.status_code == 200 and len(r.json()["recommendations"]) == 3
        ids = [
            x["track_id"]
            for x in c.get("/v1/tracks/c0%2Ftrack%20000/similar", params={"k": 24}).json()[
                "recommendations"
            ]
        ]
        assert "new/one" in ids


def test_a_store_being_written_is_not_read_until_the_writer_is_done(syn, isolated_env):
    with make_client(isolated_env) as c:
        before = c.get("/v1/tracks/c1%2Ftrack%20001/similar", params={"k": 23}).json()
        with syn.writer():
            add_track(syn, "new/a", 1)
            syn.commit()  # one batch committed, the extraction goes on
            assert n_tracks(c) == 24  # still the last complete state
            mid = c.get("/v1/tracks/c1%2Ftrack%20001/similar", params={"k": 23}).json()
            assert mid["recommendations"] == before["recommendations"]
            add_track(syn, "new/b", 2)
        assert n_tracks(c) == 26


def test_a_refit_space_and_a_rebuilt_index_are_picked_up(syn, isolated_env):
    from messai.analysis.aspect_fit import fit_aspect_space, save_space

    with make_client(isolated_env) as c:
        live = c.app.state.registry.get("syn")
        d = c.get("/v1/tracks/c0%2Ftrack%20000/similar").json()
        assert "space" not in d  # no fitted space yet: the whole layer
        save_space(syn, fit_aspect_space(syn, "spectral_brightness", layers=[1], folds=3))
        d = c.get("/v1/tracks/c0%2Ftrack%20000/similar").json()
        assert d["space"]["aspect"] == "spectral_brightness" and d["space"]["layers"] == [1]
        a = c.get("/v1/aspects").json()
        assert [s["aspect"] for s in a["spaces"]] == ["spectral_brightness"]
        first = live.snapshot()
        assert live.snapshot() is first  # nothing changed: the same state
        r = runner.invoke(app, ["index", "-d", "syn", "--layers", "0", "--force"])
        assert r.exit_code == 0, r.output
        c.get("/v1/tracks", params={"limit": 1})
        assert live.snapshot() is not first


def test_the_staleness_check_never_reads_the_store(syn, isolated_env, monkeypatch):
    from messai.features.store import FeatureStore

    with make_client(isolated_env) as c:
        assert n_tracks(c) == 24
        live = c.app.state.registry.get("syn")

        def forbidden(*a, **kw):
            raise AssertionError("the staleness check read a table")

        monkeypatch.setattr(FeatureStore, "open_table", forbidden)
        monkeypatch.setattr(FeatureStore, "_all_rows", forbidden)
        key = live.key()
        assert live.key() == key and live.snapshot().key == key
        assert n_tracks(c) == 24  # answered from the loaded state


def test_track_search_matches_label_values_and_pages(syn, isolated_env):
    want = [t for t in syn.track_ids() if syn.labels(t)["work"] == "work1"]
    with make_client(isolated_env) as c:
        got, cursor = [], None
        while True:
            params = {"q": "WORK1", "limit": 2, **({"cursor": cursor} if cursor else {})}
            d = c.get("/v1/tracks", params=params).json()
            got += [t["track_id"] for t in d["tracks"]]
            assert all(t["labels"]["work"] == "work1" for t in d["tracks"])
            cursor = d["next_cursor"]
            if cursor is None:
                break
        assert got == want and len(want) == 6
        assert (
            c.get("/v1/tracks", params={"q": "track 00"}).json()["tracks"][0]["track_id"]
            == "c0/track 000"
        )
        assert c.get("/v1/tracks", params={"q": "k0\nc"}).json()["tracks"] == []  # never spans two
