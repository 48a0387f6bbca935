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
            allowed = {t for t in store.track_ids() if rec.where_scope(where)([t])[0]}
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


@pytest.fixture()
def s3_stores(monkeypatch):
    """A local S3 server (moto) and MESS_STORES pointing at a bucket on it."""
    import socket

    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "MESS_STORES": "s3://mess/stores",
    }.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mess")
    yield "s3://mess/stores"
    server.stop()


def test_store_on_s3(s3_stores, tmp_path):
    from messai.bench.synthetic import clustered, synthetic_identity, synthetic_settings
    from messai.features.records import TrackEntry, track_arrays
    from messai.features.store import FeatureStore

    store = FeatureStore.create(
        f"{s3_stores}/syn/synthetic--model",
        dataset="syn",
        model=synthetic_identity("model", n_layers=1, dim=16) | {"config_hash": "syn"},
        settings=synthetic_settings("float32"),
    )
    X = clustered(300, 16, n_clusters=5)
    with store.writer():
        for i in range(300):
            arrays = track_arrays(
                X[i][None, None], np.zeros(1), np.full(1, 120000), {}, store_dtype="float32"
            )
            entry = TrackEntry(
                track_id=f"t{i:03d}",
                source=f"t{i:03d}.wav",
                size=1,
                mtime_ns=1,
                content_hash=f"h{i}",
                duration_seconds=5.0,
                n_segments=1,
                targets=(),
                labels={"g": f"g{i % 3}"},
            )
            store.put(entry, arrays)
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
            "ivf",
            "-f",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["path"].startswith("s3://mess/stores/syn/")
    args = ["recommend", "-d", "syn", "-t", "t000", "--layer", "0", "-k", "5", "-f", "json"]
    r = runner.invoke(app, [*args, "--backend", "lancedb", "--where", "g = 'g1'"])
    assert r.exit_code == 0, r.output
    got = [x["track_id"] for x in json.loads(r.stdout)["recommendations"]]
    store = FeatureStore.at(store.uri)
    allowed = {t for t in store.track_ids() if store.labels(t)["g"] == "g1"}
    assert got == brute_force(store, "t000", 0, 5, allowed)
