"""--backend lancedb: indices on the store's own tracks table, same answers as brute force."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.errors import SearchIndexError
from messai.search.lancedb_backend import LANCEDB_KINDS, build_lancedb_index
from messai.search.recommend import LayerBasedRecommender
from messai.search.updates import remove_tracks
from tests.search.serving_fixtures import brute_force, labelled_store

pytest.importorskip("lancedb")
runner = CliRunner()

FILTERS = [
    None,
    "composer = 'comp1'",
    "year >= 1930 AND NOT work IN ('work0', 'work1')",
    "year = 1857",
]
QUERIES = ["c0/track 000", "c3/track 011", "c5/track 397", "c7/track 799"]


@pytest.mark.parametrize("kind", list(LANCEDB_KINDS))
def test_where_equals_brute_force(tmp_path, kind):
    store = labelled_store(tmp_path)
    out = build_lancedb_index(store, 0, kind=kind)
    assert out["n_tracks"] == 800 and out["kind"] == kind
    rec = LayerBasedRecommender("syn", home=tmp_path, backend="lancedb")
    for where in FILTERS:
        allowed = None
        if where is not None:
            allowed = {t for t in store.track_ids() if rec._scope(where)([t])[0]}
        recalls = []
        for q in QUERIES:
            result = rec.recommend_by_id(q, layer=0, n_recommendations=10, where=where)
            got = [r.track_id for r in result.recommendations]
            truth = brute_force(store, q, 0, 10, allowed)
            assert q not in got and len(got) == len(truth)
            if allowed is not None:
                assert set(got) <= allowed
            recalls.append(len(set(got) & set(truth)) / len(truth))
        recall = float(np.mean(recalls))
        assert recall == 1.0 if kind == "flat" else recall >= 0.95, where


def test_same_json_as_faiss(tmp_path, monkeypatch):
    monkeypatch.setenv("MESS_HOME", str(tmp_path))
    labelled_store(tmp_path)
    r = runner.invoke(
        app,
        [
            "index",
            "-d",
            "syn",
            "--layers",
            "0",
            "--backend",
            "lancedb",
            "--kind",
            "flat",
            "-f",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    args = [
        "recommend",
        "-d",
        "syn",
        "-t",
        "c1/track 001",
        "--layer",
        "0",
        "-k",
        "6",
        "-f",
        "json",
        "--where",
        "composer != 'comp0'",
        "--max-per",
        "work",
        "2",
    ]
    faiss = json.loads(runner.invoke(app, args).stdout)
    lance = json.loads(runner.invoke(app, [*args, "--backend", "lancedb"]).stdout)
    assert [r["track_id"] for r in lance["recommendations"]] == [
        r["track_id"] for r in faiss["recommendations"]
    ]
    for a, b in zip(lance["recommendations"], faiss["recommendations"]):
        assert a.keys() == b.keys() and abs(a["similarity"] - b["similarity"]) < 1e-5


def test_removed_and_added_tracks_are_served_live(tmp_path):
    store = labelled_store(tmp_path)
    build_lancedb_index(store, 0, kind="ivfpq")
    rec = LayerBasedRecommender("syn", home=tmp_path, backend="lancedb")
    query = "c2/track 002"
    gone = [
        r.track_id for r in rec.recommend_by_id(query, layer=0, n_recommendations=5).recommendations
    ]
    remove_tracks(tmp_path, store, gone)
    notes = []
    rec = LayerBasedRecommender("syn", home=tmp_path, backend="lancedb", on_notice=notes.append)
    got = [
        r.track_id
        for r in rec.recommend_by_id(query, layer=0, n_recommendations=10).recommendations
    ]
    assert len(got) == 10 and not set(got) & set(gone)
    assert any("store changed" in n for n in notes)  # never silently: says what to refresh


def test_missing_index_says_what_to_run(tmp_path):
    labelled_store(tmp_path)
    rec = LayerBasedRecommender("syn", home=tmp_path, backend="lancedb")
    with pytest.raises(SearchIndexError, match="mess index .*--backend lancedb"):
        rec.recommend_by_id("c0/track 000", layer=0)


def test_store_stays_readable_by_the_store_after_indexing(tmp_path):
    store = labelled_store(tmp_path)
    build_lancedb_index(store, 1, kind="hnsw-sq8")
    from messai.features.store import FeatureStore

    again = FeatureStore.at(store.uri)
    assert len(again) == 800 and again.layer(1)[1].shape == (800, 16)


def test_default_path_never_imports_lancedb(tmp_path):
    code = "import messai.cli, messai.search.recommend, sys; print('lancedb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
