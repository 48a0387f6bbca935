"""Catalogue serving: memory-bounded kinds, --where inside the search, --max-per, removals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.errors import ConfigError, SearchIndexError, TrackNotFoundError
from messai.search.backend import KINDS
from messai.search.cache import build_layer_index, load_layer_index
from messai.search.layer_index import LayerIndex
from messai.search.recommend import LayerBasedRecommender
from messai.search.updates import remove_tracks
from tests.search.serving_fixtures import brute_force, labelled_store

runner = CliRunner()

FILTERS = [
    None,
    "composer = 'comp1'",  # a third
    "year >= 1930 AND NOT work IN ('work0', 'work1')",  # ≈ 15 %
    "(composer = 'comp2' OR year < 1855) AND work != 'work3'",
    "year = 1857",  # ≈ 1 %: fewer than k match
]
QUERIES = ["c0/track 000", "c3/track 011", "c5/track 397", "c7/track 799"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("serving")
    store = labelled_store(home)
    for kind in KINDS:
        build_layer_index(home, store, 0, kind=kind)
    return home, store


def _recall(home, store, kind, where, *, k=10):
    rec = LayerBasedRecommender("syn", home=home, kind=kind)
    allowed = None
    if where is not None:
        allowed = {t for t in store.track_ids() if rec.where_scope(where)([t])[0]}
    recalls = []
    for q in QUERIES:
        got = [
            r.track_id
            for r in rec.recommend_by_id(
                q, layer=0, n_recommendations=k, where=where
            ).recommendations
        ]
        truth = brute_force(store, q, 0, k, allowed)
        assert q not in got
        if allowed is not None:
            assert set(got) <= allowed
        assert len(got) == min(k, len(truth))  # k come back whenever k match
        recalls.append(len(set(got) & set(truth)) / max(1, len(truth)))
    return float(np.mean(recalls))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", FILTERS)
def test_where_equals_brute_force_over_matching_tracks(served, kind, where):
    home, store = served
    recall = _recall(home, store, kind, where)
    assert recall == 1.0 if kind == "flat" else recall >= 0.95


@pytest.mark.parametrize("kind", KINDS)
def test_where_through_faiss_selectors(served, kind, monkeypatch):
    """Subsets larger than the exact-scan threshold go through FAISS IDSelectors."""
    monkeypatch.setattr(LayerIndex, "exact_subset_max", 0)
    home, store = served
    for where in FILTERS[1:4]:
        recall = _recall(home, store, kind, where)
        assert recall == 1.0 if kind == "flat" else recall >= 0.95, where


def test_memory_bounded_kinds_keep_codes_and_map_vectors(served):
    home, store = served
    for kind in ("ivfpq", "hnsw-sq8"):
        out = build_layer_index(home, store, 0, kind=kind)
        assert out.action == "up to date"
        assert out.mapped_bytes >= 800 * 16 * 4  # the exact vectors, memory-mapped
        index = load_layer_index(home, store, 0, kind=kind)
        assert isinstance(index.refine_vectors[0], np.memmap)
        assert index.params["refine"] >= 1
    pq = load_layer_index(home, store, 0, kind="ivfpq")
    assert pq.faiss_index.code_size < 16 * 4  # compressed codes, not float32 rows


def test_max_per_limits_each_label_value(served):
    home, _store = served
    rec = LayerBasedRecommender("syn", home=home, kind="hnsw")
    result = rec.recommend_by_id(QUERIES[1], layer=0, n_recommendations=6, max_per=("work", 2))
    works = [r.labels["work"] for r in result.recommendations]
    assert len(works) == 6 and max(works.count(w) for w in set(works)) <= 2
    exact = LayerBasedRecommender("syn", home=home, kind="flat")
    one = exact.recommend_by_id(QUERIES[1], layer=0, n_recommendations=20, max_per=("work", 1))
    assert len(one.recommendations) == 8  # one per work: 8 works
    with pytest.raises(ConfigError, match="unknown label 'wrk'"):
        rec.recommend_by_id(QUERIES[1], layer=0, max_per=("wrk", 1))


def test_fused_aspects_apply_the_filter(served):
    home, store = served
    build_layer_index(home, store, 1, kind="flat")
    rec = LayerBasedRecommender("syn", home=home, kind="flat")
    vectors = {lay: rec.index(lay).vector_of(QUERIES[0]) for lay in (0, 1)}
    rec.layer_for = {"a": 0, "b": 1}.__getitem__  # two layers, no probe
    result = rec.recommend_by_vector(
        vectors,
        ["a", "b"],
        10,
        normalized=True,
        exclude_ids={QUERIES[0]},
        where="composer = 'comp0'",
    )
    assert len(result.recommendations) == 10
    assert {r.labels["composer"] for r in result.recommendations} == {"comp0"}


@pytest.mark.parametrize("kind", KINDS)
def test_removed_tracks_are_never_returned(tmp_path, kind):
    store = labelled_store(tmp_path)
    build_layer_index(tmp_path, store, 0, kind=kind)
    query = "c2/track 002"
    before = LayerBasedRecommender("syn", home=tmp_path, kind=kind).recommend_by_id(
        query, layer=0, n_recommendations=10
    )
    gone = [r.track_id for r in before.recommendations[:5]]
    report = remove_tracks(tmp_path, store, gone)
    assert report.removed == gone
    (row,) = report.indices
    # flat centred indices are rebuilt (exact); others take tombstones
    assert row["action"] == ("built" if kind == "flat" else "updated")
    assert row["n_tracks"] == 795
    rec = LayerBasedRecommender("syn", home=tmp_path, kind=kind)
    for where in (None, "composer IN ('comp0', 'comp1', 'comp2')"):
        got = [
            r.track_id
            for r in rec.recommend_by_id(
                query, layer=0, n_recommendations=10, where=where
            ).recommendations
        ]
        assert not set(got) & set(gone) and len(got) == 10
    with pytest.raises(TrackNotFoundError):
        rec.recommend_by_id(gone[0], layer=0)


def test_tombstones_then_rebuild_past_threshold(tmp_path):
    store = labelled_store(tmp_path)
    build_layer_index(tmp_path, store, 0, kind="hnsw")
    ids = store.track_ids()
    remove_tracks(tmp_path, store, ids[:40])
    index = load_layer_index(tmp_path, store, 0, kind="hnsw")
    assert index.n_removed == 40 and len(index) == 760
    report = remove_tracks(tmp_path, store, ids[40:81])  # 81 > 10 % of 800: rebuilt
    assert report.indices[0]["action"] == "built"
    index = load_layer_index(tmp_path, store, 0, kind="hnsw")
    assert index.n_removed == 0 and index.n_total == 719


def test_unknown_track_removes_nothing(tmp_path):
    store = labelled_store(tmp_path)
    with pytest.raises(TrackNotFoundError, match="nothing was removed"):
        remove_tracks(tmp_path, store, ["c0/track 000", "no such track"])
    assert len(store) == 800


def test_store_changed_behind_the_index_is_never_used_silently(tmp_path):
    store = labelled_store(tmp_path)
    build_layer_index(tmp_path, store, 0, kind="ivfpq")
    with store.writer():
        store.remove("c0/track 000")
    with pytest.raises(SearchIndexError, match="stale.*mess index"):
        LayerBasedRecommender("syn", home=tmp_path, kind="ivfpq").recommend_by_id(
            "c1/track 001", layer=0
        )
    out = build_layer_index(tmp_path, store, 0, kind="ivfpq")
    assert out.action == "updated" and out.n_removed == 1


def test_appending_after_removal_keeps_tombstones(tmp_path):
    store = labelled_store(tmp_path)
    build_layer_index(tmp_path, store, 0, kind="hnsw-sq8")
    remove_tracks(tmp_path, store, ["c0/track 000"])
    folder = build_layer_index(tmp_path, store, 0, kind="hnsw-sq8").path  # up to date
    inode = (folder / "vectors.npy").stat().st_ino
    extra = labelled_store(tmp_path / "other", n_tracks=8)  # 8 new tracks with new ids
    with store.writer():
        for t in extra.track_ids():
            store.put(extra.entry(t).with_changes(track_id=f"new/{t}"), extra.read_arrays(t))
    out = build_layer_index(tmp_path, store, 0, kind="hnsw-sq8")
    assert out.action == "appended" and out.n_tracks == 807 and out.n_removed == 1
    # the 800 earlier rows are hard-linked, not rewritten; the 8 new ones have their own file
    assert (folder / "vectors.npy").stat().st_ino == inode
    assert np.load(folder / "vectors-1.npy").shape == (8, 16)
    index = load_layer_index(tmp_path, store, 0, kind="hnsw-sq8")
    assert [len(c) for c in index.refine_vectors] == [800, 8]
    rec = LayerBasedRecommender("syn", home=tmp_path, kind="hnsw-sq8")
    got = rec.recommend_by_id("new/c0/track 000", layer=0, n_recommendations=5, where="year > 0")
    assert len(got.recommendations) == 5


def test_cli_where_max_per_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MESS_HOME", str(tmp_path))
    labelled_store(tmp_path)
    base = ["recommend", "-d", "syn", "--track", "c0/track 000", "--layer", "0", "-f", "json"]
    r = runner.invoke(app, [*base, "-k", "5", "--where", "composer = 'comp2' AND year < 1900"])
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)["recommendations"]
    assert len(recs) == 5 and all(
        x["labels"]["composer"] == "comp2" and int(x["labels"]["year"]) < 1900 for x in recs
    )
    r = runner.invoke(app, [*base, "-k", "4", "--max-per", "work", "1"])
    assert r.exit_code == 0, r.output
    works = [x["labels"]["work"] for x in json.loads(r.stdout)["recommendations"]]
    assert len(set(works)) == 4
    for where, message in [
        ("composr = 'x'", "unknown column 'composr'"),
        ("composer = ", "expected a 'text' or a number"),
    ]:
        r = runner.invoke(app, [*base, "--where", where])
        assert r.exit_code != 0 and message in r.output, r.output


def test_cli_remove_and_index_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("MESS_HOME", str(tmp_path))
    labelled_store(tmp_path)
    r = runner.invoke(
        app, ["index", "-d", "syn", "--layers", "0", "--kind", "ivfpq", "--pq-m", "4", "-f", "json"]
    )
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert row["memory_mb"] > 0 and row["mapped_mb"] > 0
    r = runner.invoke(app, ["index", "-d", "syn", "--kind", "hnsw", "--pq-m", "4"])
    assert r.exit_code != 0
    r = runner.invoke(
        app,
        ["remove", "-d", "syn", "--track", "-", "-f", "json"],
        input="c0/track 000\nc1/track 001\n",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["removed"] == ["c0/track 000", "c1/track 001"]
    assert out["indices"][0]["action"] == "updated" and out["indices"][0]["n_removed"] == 2
    r = runner.invoke(app, ["remove", "-d", "syn", "--track", "c0/track 000"])
    assert r.exit_code != 0


def test_extract_prune_updates_cached_indices(tmp_path, tiny_ckpt):
    from tests.conftest import write_audio

    lib = tmp_path / "lib"
    for i, freq in enumerate((300, 500, 700, 900)):
        write_audio(lib / f"t{i}.wav", 6.0, 24000, freq=freq)
    extract = ["extract", str(lib), "-d", "p", "--model", tiny_ckpt, "--device", "cpu", "-q"]
    assert runner.invoke(app, extract).exit_code == 0
    r = runner.invoke(app, ["index", "-d", "p", "--layers", "1", "--kind", "hnsw"])
    assert r.exit_code == 0, r.output
    (lib / "t2.wav").unlink()
    r = runner.invoke(app, [*extract, "--prune"])
    # 1 of 4 removed is past the tombstone threshold: rebuilt (a larger store takes tombstones)
    assert r.exit_code == 0 and "layer 1 index built (3 tracks)" in r.output, r.output
    r = runner.invoke(
        app, ["recommend", "-d", "p", "-t", "t0", "--layer", "1", "--kind", "hnsw", "-f", "ids"]
    )
    assert r.exit_code == 0, r.output
    assert sorted(r.stdout.split()) == ["t1", "t3"]
