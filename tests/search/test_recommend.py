"""`mess index` / `mess recommend` and LayerBasedRecommender on stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.features.records import TrackEntry, track_arrays
from messai.features.store import FeatureStore
from tests.synthetic_store import make_store

runner = CliRunner()


@pytest.fixture()
def store(isolated_env):
    return make_store(Path(isolated_env))


def brute_force(store, query, layer, k, *, center=False):
    ids = store.track_ids()
    X = np.stack([store.load(t)["aggregated"][layer] for t in ids]).astype(np.float64)
    if center:
        X = X - X.mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sims = X @ X[ids.index(query)]
    order = [i for i in np.argsort(-sims, kind="stable") if ids[i] != query][:k]
    return [ids[i] for i in order], sims[order]


@pytest.mark.parametrize("normalize,center", [("l2", False), ("center", True)])
def test_json_equals_brute_force_cosine(store, normalize, center):
    q = "c1/track 005"
    for layer in (0, 2):
        r = runner.invoke(
            app,
            [
                "recommend",
                "-d",
                "syn",
                "--track",
                q,
                "--layer",
                str(layer),
                "--normalize",
                normalize,
                "-k",
                "7",
                "--format",
                "json",
            ],
        )
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        ids, sims = brute_force(store, q, layer, 7, center=center)
        assert [x["track_id"] for x in d["recommendations"]] == ids
        np.testing.assert_allclose([x["similarity"] for x in d["recommendations"]], sims, atol=1e-5)
        assert (
            d["query"] == {"track_id": q, "dataset": "syn"}
            and d["layer"] == layer
            and d["normalize"] == normalize
        )
        assert [x["rank"] for x in d["recommendations"]] == list(range(1, 8))
        assert d["recommendations"][0]["labels"]["work"].startswith("work")


def test_stdout_is_clean_and_notices_go_to_stderr(store):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "messai",
            "recommend",
            "-d",
            "syn",
            "--track",
            "c0/track 000",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert p.returncode == 0, p.stderr
    json.loads(p.stdout)  # nothing but the result on stdout
    assert "building the layer 0 index" in p.stderr


def test_pipeline_from_tracks_ids(store):
    ids = subprocess.run(
        [sys.executable, "-m", "messai", "tracks", "-d", "syn", "--format", "ids"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout
    p = subprocess.run(
        [sys.executable, "-m", "messai", "recommend", "-d", "syn", "--track", "-", "-k", "3"],
        input=ids.splitlines()[0] + "\nno such track\n" + ids.splitlines()[1] + "\n",
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["query"]["track_id"] for x in lines] == ids.splitlines()[:2]
    assert all(len(x["recommendations"]) == 3 for x in lines)
    assert (
        p.returncode == 1 and "unknown track 'no such track'" in p.stderr and "closest:" in p.stderr
    )


def test_unknown_track_and_aspect_are_one_line(store):
    r = runner.invoke(app, ["recommend", "-d", "syn", "--track", "c1/track 00"])
    assert (
        r.exit_code == 2
        and "closest: " in r.output
        and "c1/track 001" in r.output
        and len(r.output.strip().splitlines()) == 1
    )
    r = runner.invoke(
        app, ["recommend", "-d", "syn", "--track", "c1/track 001", "--aspect", "loudness"]
    )
    assert (
        r.exit_code == 2
        and "available: acoustic_structure, spectral_brightness, timbral_texture" in r.output
    )


def test_exclude_same_work(store):
    r = runner.invoke(
        app,
        [
            "recommend",
            "-d",
            "syn",
            "--track",
            "c1/track 001",
            "--exclude-same",
            "work",
            "-k",
            "10",
            "-f",
            "json",
        ],
    )
    d = json.loads(r.stdout)
    assert (
        all(x["labels"]["work"] != "work1" for x in d["recommendations"])
        and len(d["recommendations"]) == 10
    )
    r = runner.invoke(
        app, ["recommend", "-d", "syn", "--track", "c1/track 001", "--exclude-same", "genre"]
    )
    assert r.exit_code == 2 and "no 'genre' label" in r.output


def test_fusion_is_weighted_mean_of_layer_cosines(store):
    from messai.search.recommend import LayerBasedRecommender

    rec = LayerBasedRecommender("syn", normalize="l2")
    q = "c2/track 002"
    d = rec.recommend(
        q, ["spectral_brightness", "timbral_texture:0.5"], 5
    )  # layers 0 and 1 (defaults)
    assert d["layer"] == [0, 1] and d["weights"] == [1.0, 0.5]
    ids = store.track_ids()
    sims = []
    for layer in (0, 1):
        X = np.stack([store.load(t)["aggregated"][layer] for t in ids]).astype(np.float64)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        sims.append(X @ X[ids.index(q)])
    fused = (sims[0] + 0.5 * sims[1]) / 1.5
    best = [ids[i] for i in np.argsort(-fused) if ids[i] != q][:5]
    assert [x["track_id"] for x in d["recommendations"]] == best
    np.testing.assert_allclose(
        [x["similarity"] for x in d["recommendations"]],
        sorted(fused[[ids.index(b) for b in best]], reverse=True),
        atol=1e-5,
    )


def test_stale_index_is_rebuilt_with_notice_or_refused(store, isolated_env):
    assert runner.invoke(app, ["index", "-d", "syn", "--layers", "0"]).exit_code == 0
    assert (
        runner.invoke(app, ["index", "-d", "syn", "--layers", "0", "--kind", "hnsw"]).exit_code == 0
    )
    # the store changes: one track re-extracted
    make_store(Path(isolated_env), "other")
    data = store.load("c0/track 000")
    entry = store.entry("c0/track 000").with_changes(content_hash="changed")
    arrays = {
        "segments": data["segments"] + 1,
        "aggregated": data["aggregated"] + 1,
        "starts": data["starts"],
        "lengths": data["lengths"],
    }
    FeatureStore.open("syn").put(entry, arrays)
    r = runner.invoke(
        app, ["recommend", "-d", "syn", "--track", "c0/track 004", "--layer", "0", "-f", "json"]
    )
    assert r.exit_code == 0 and "stale" in r.stderr
    r = runner.invoke(
        app, ["recommend", "-d", "syn", "--track", "c0/track 004", "--layer", "0", "--kind", "hnsw"]
    )
    assert (
        r.exit_code == 2
        and "stale" in r.output
        and "mess index --dataset syn --model synthetic/model --layers 0 --kind hnsw --normalize center"
        in r.output
    )


def test_index_is_incremental_when_tracks_are_added(store, isolated_env):
    out = json.loads(
        runner.invoke(
            app, ["index", "-d", "syn", "--layers", "1", "--normalize", "l2", "-f", "json"]
        ).stdout
    )
    assert out[0]["action"] == "built"
    again = json.loads(
        runner.invoke(
            app, ["index", "-d", "syn", "--layers", "1", "--normalize", "l2", "-f", "json"]
        ).stdout
    )
    assert again[0]["action"] == "up to date"
    s = FeatureStore.open("syn")
    seg = np.ones((2, 4, 16), np.float32)
    s.put(
        TrackEntry("new/one", "new/one.wav", 1, 1, "n1", 10.0, 2),
        track_arrays(seg, np.zeros(2), np.zeros(2), {}, store_dtype="float32"),
    )
    out = json.loads(
        runner.invoke(
            app, ["index", "-d", "syn", "--layers", "1", "--normalize", "l2", "-f", "json"]
        ).stdout
    )
    assert out[0]["action"] == "appended" and out[0]["n_tracks"] == 41
    d = json.loads(
        runner.invoke(
            app,
            [
                "recommend",
                "-d",
                "syn",
                "--track",
                "new/one",
                "--layer",
                "1",
                "--normalize",
                "l2",
                "-f",
                "json",
                "-k",
                "40",
            ],
        ).stdout
    )
    ids, _sims = brute_force(FeatureStore.open("syn"), "new/one", 1, 40)
    assert [x["track_id"] for x in d["recommendations"]] == ids


def test_python_api(store):
    from messai import LayerBasedRecommender

    rec = LayerBasedRecommender(dataset="syn")
    out = rec.recommend(
        reference_track="c3/track 003", aspect="spectral_brightness", n_recommendations=5
    )
    assert len(out["recommendations"]) == 5 and out["layer"] == 0
    assert {"track_id", "similarity"} <= set(out["recommendations"][0])
    assert "spectral_brightness" in rec.get_available_aspects()


def test_recommend_never_imports_torch(store):
    """The cold path: with the index built, a recommend reads the index cache and never imports
    torch, transformers, sklearn, scipy, pyarrow or lance."""
    assert runner.invoke(app, ["index", "-d", "syn", "--layers", "0"]).exit_code == 0
    assert runner.invoke(app, ["recommend", "-d", "syn", "--track", "c0/track 000"]).exit_code == 0
    code = (
        "import sys\nsys.argv=['mess','recommend','-d','syn','--track','c0/track 000','-f','json']\n"
        "from messai.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch','transformers','sklearn','librosa','torchaudio','scipy','pyarrow',"
        "'lance','ray','lancedb'} & set(sys.modules)\n"
        "print('HEAVY', sorted(heavy), file=sys.stderr)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    assert "HEAVY []" in p.stderr, p.stderr
    assert json.loads(p.stdout)["recommendations"]


def test_audio_query_excludes_its_own_file_and_finds_a_copy(tmp_path, tiny_ckpt):
    from tests.conftest import write_audio

    d = tmp_path / "lib"
    for i in range(5):
        write_audio(d / f"t{i}.wav", 5.5, 24000, freq=150 * (i + 1), seed=i)
    assert (
        runner.invoke(
            app,
            ["extract", str(d), "-d", "lib", "--model", str(tiny_ckpt), "--device", "cpu", "-q"],
        ).exit_code
        == 0
    )
    r = runner.invoke(
        app,
        [
            "recommend",
            "-d",
            "lib",
            "--audio",
            str(d / "t3.wav"),
            "--layer",
            "2",
            "-f",
            "json",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)["recommendations"]
    assert "t3" not in [x["track_id"] for x in recs]  # the query's own file is excluded
    import soundfile as sf

    samples, rate = sf.read(str(d / "t3.wav"), dtype="int16")
    sf.write(str(tmp_path / "t3-copy.flac"), samples, rate)  # same audio, other bytes
    r = runner.invoke(
        app,
        [
            "recommend",
            "-d",
            "lib",
            "--audio",
            str(tmp_path / "t3-copy.flac"),
            "--layer",
            "2",
            "-f",
            "json",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)["recommendations"]
    assert recs[0]["track_id"] == "t3" and recs[0]["similarity"] > 0.9999
