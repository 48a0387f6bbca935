"""`mess benchmark similarity`, the similarity statistics, and `mess demo`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.bench.similarity import aspect_fidelity, retrieval_scores, similarity_matrix
from messai.cli import app
from tests.synthetic_store import make_store

runner = CliRunner()


def test_retrieval_scores_by_hand():
    # 4 items, labels a a b b; rankings chosen by hand
    order = np.array([[2, 1, 3], [0, 2, 3], [3, 0, 1], [0, 1, 2]])
    labels = np.array(["a", "a", "b", "b"], dtype=object)
    s = retrieval_scores(order, labels, 1)
    assert s["precision_at_k"] == pytest.approx((0 + 1 + 1 + 0) / 4)
    # AP: q0 relevant at rank 2 → 1/2; q1 rank 1 → 1; q2 rank 1 → 1; q3 rank 3 → 1/3
    assert s["map"] == pytest.approx((0.5 + 1 + 1 + 1 / 3) / 4)
    assert s["mrr"] == pytest.approx((0.5 + 1 + 1 + 1 / 3) / 4)


def test_fidelity_is_below_one_when_neighbours_share_the_value():
    v = np.array([0.0, 0.1, 5.0, 5.1])
    order = np.array([[1, 2, 3], [0, 2, 3], [3, 0, 1], [2, 0, 1]])
    r = aspect_fidelity(order, {"t": v}, 1)["t"]
    pairs = np.abs(v[:, None] - v[None, :])[np.triu_indices(4, 1)].mean()
    assert r == pytest.approx(0.1 / pairs)


def test_similarity_matrix_metrics():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(similarity_matrix(X, "dot"), X @ X.T)
    np.testing.assert_allclose(similarity_matrix(X, "cosine")[0, 2], 3 / 5)
    np.testing.assert_allclose(similarity_matrix(X, "euclidean")[0, 1], -np.sqrt(5))


def test_benchmark_similarity_shows_offset_problem_and_centering(isolated_env, tmp_path):
    make_store(Path(isolated_env), n_tracks=40, offset=20.0)
    png = tmp_path / "sim.png"
    r = runner.invoke(
        app,
        [
            "benchmark",
            "similarity",
            "-d",
            "syn",
            "--label",
            "work",
            "-k",
            "5",
            "-f",
            "json",
            "--plot",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n_tracks"] == 40 and d["k"] == 5 and len(d["results"]) == 4 * 3 * 3
    get = {(x["layer"], x["metric"], x["normalize"]): x for x in d["results"]}
    raw, cen = get[(0, "cosine", "none")], get[(0, "cosine", "center")]
    assert raw["mean_similarity"] > 0.9 and raw["frac_above_0_9"] > 0.9  # the prototype's problem
    assert abs(cen["mean_similarity"]) < 0.1  # centring removes it
    assert cen["precision_at_k"] > 0.9  # clusters are the works
    assert {"spectral_brightness"} <= set(cen["aspect_fidelity"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = runner.invoke(app, ["benchmark", "similarity", "-d", "syn", "--layers", "0"])
    assert table.exit_code == 0 and "cosine" in table.stdout


def test_demo_runs_end_to_end(tiny_ckpt, tmp_path):
    from messai.demo import find_demo_folder

    demo = find_demo_folder()
    assert (demo / "metadata.csv").is_file()
    r = runner.invoke(app, ["demo", "--model", str(tiny_ckpt), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["extraction"]["n_extracted"] == 24 and not d["extraction"]["failures"]
    # the random-weights twin ran as the probe's second control
    assert all(
        row["random_model_r2"] is not None for row in d["probe_summary"] if row["r2"] is not None
    )
    names = {
        s["dataset"] for s in json.loads(runner.invoke(app, ["datasets", "-f", "json"]).stdout)
    }
    assert "demo" in names and len(names) == 2
    assert (names - {"demo"}).pop().startswith("demo-random-")  # one control store per twin
    assert len(d["comparison"]) == len(d["probe_summary"])  # trained vs twin, per target
    assert {x["aspect"] for x in d["aspects"]} >= {"spectral_brightness", "dynamics"}
    recs = d["recommendations"]["recommendations"]
    assert len(recs) == 5 and all(x["track_id"] != "piano/bach_bwv846_prelude" for x in recs)
    assert {"composer", "work", "instrument"} <= set(recs[0]["labels"])
    # the probe ran with 'mess probe' defaults, and says so; reasons for "not validated"
    assert d["probe_settings"]["folds"] == 5 and d["probe_settings"]["n_bootstrap"] == 1000
    assert d["probe_settings"]["group_by"] == "work"
    for row in d["probe_summary"]:
        assert isinstance(row["validated"], bool) and "margin_over_median" not in row
        assert row["validated"] or row["why_not"]
    assert isinstance(d["recommendations"]["validated"], bool)
    if not d["recommendations"]["validated"]:
        assert d["recommendations"]["caveat"]
    table = runner.invoke(
        app, ["demo", "--model", str(tiny_ckpt), "--device", "cpu", "--no-random-control"]
    )
    assert table.exit_code == 0 and "1000 bootstrap resamples" in table.stdout


def test_demo_with_a_random_checkpoint_has_a_twin_that_differs(tmp_path):
    """Issue 21.1: the offline recipe (a random checkpoint as the model) must show a random
    control that differs from the model, and validate nothing."""
    ckpt = tmp_path / "rand"
    assert runner.invoke(app, ["model", "random", str(ckpt), "--preset", "tiny"]).exit_code == 0
    r = runner.invoke(app, ["demo", "--model", str(ckpt), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert "random-weight checkpoint" in r.stderr and "nothing should validate" in r.stderr
    d = json.loads(r.stdout)
    assert len(d["comparison"]) == 12 and not any(x["validated"] for x in d["comparison"])
    assert any(x["gain"] not in (None, 0.0) for x in d["comparison"])  # not the model itself
    names = {
        s["dataset"] for s in json.loads(runner.invoke(app, ["datasets", "-f", "json"]).stdout)
    }
    assert "demo" in names and len(names) == 2


def test_demo_offline_default_model_says_what_to_do(isolated_env, monkeypatch):
    """The hint is a command to copy: run as this one was (uv run or not), and the model goes
    under the data root, not the home folder (issue 21 item 14)."""
    folder = isolated_env / "models" / "mert-random"
    monkeypatch.setenv("UV", "/usr/bin/uv")  # started by 'uv run'
    r = runner.invoke(app, ["demo", "--device", "cpu"])
    assert r.exit_code == 2
    assert "not in the Hugging Face cache" in r.output
    assert (
        f"uv run mess model random {folder} --preset base && uv run mess demo --model {folder}"
        in " ".join(r.output.split())
    )
    monkeypatch.delenv("UV")
    r = runner.invoke(app, ["demo", "--device", "cpu"])
    assert f"mess model random {folder} --preset base" in " ".join(r.output.split())
    assert "uv run" not in r.output


def test_speed_benchmarks_run_at_small_sizes(tiny_ckpt):
    """Structure only: speed targets are measured by `mess benchmark speed`, never asserted here."""
    from messai.bench.extraction import bench_extraction
    from messai.bench.speed import bench_cold_start, bench_probe, bench_queries

    ext = bench_extraction(model=str(tiny_ckpt), n_files=1, seconds_per_file=3.0, repeats=1)
    assert ext["n_windows"] == 1 and ext["pipeline_over_bare"] > 0 and ext["audio_seconds"] == 3.0
    q = bench_queries(n_flat=300, n_hnsw=1000, dim=16, n_queries=20)
    assert q["flat"]["n"] == 300 and 0 <= q["hnsw"]["recall_at_10"] <= 1 and q["hnsw"]["p50_ms"] > 0
    p = bench_probe(n_samples=200, n_layers=2, dim=8, n_groups=20, folds=3)
    assert p["n_outputs"] == 41 and p["seconds"] > 0
    c = bench_cold_start(n_tracks=20, runs=1)
    assert c["ratio"] > 0 and c["n_tracks"] == 20


def test_extract_benchmark_demo_null_model_and_precisions(tiny_ckpt, isolated_env):
    """Structure only: real-music mode, the null model, two precisions with fidelity."""
    r = runner.invoke(
        app,
        [
            "benchmark",
            "extract",
            "--demo",
            "--files",
            "2",
            "--repeats",
            "1",
            "--model",
            str(tiny_ckpt),
            "--device",
            "cpu",
            "--precision",
            "float32,int8",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert out["audio"].startswith("demo") and out["n_files"] == 2
    assert [run["precision"] for run in out["runs"]] == ["float32", "int8"]
    fid = out["runs"][1]["fidelity_vs_float32"]
    assert (
        len(fid["cosine_min_per_layer"]) == 3 and "approximate" in out["runs"][1]["precision_label"]
    )
    assert out["decode_per_worker"]["windows_per_cpu_second"] > 0
    assert out["fastest_passing"]["precision"] in ("float32", "int8")
    r = runner.invoke(
        app,
        [
            "benchmark",
            "extract",
            "--demo",
            "--files",
            "1",
            "--repeats",
            "1",
            "--null-model",
            "--model",
            str(tiny_ckpt),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert out["model"].startswith("null") and out["pipeline_cpu_ms_per_window"] > 0


def test_fidelity_and_the_fastest_passing_precision():
    from messai.bench.extraction import fastest_passing, fidelity

    rng = np.random.default_rng(0)
    ref = {f"t{i}": rng.standard_normal((3, 2, 16)).astype(np.float32) for i in range(14)}
    same = fidelity(ref, {k: v.copy() for k, v in ref.items()})
    assert same["cosine_min"] == pytest.approx(1.0) and same["top10_overlap_min"] == 1.0
    assert same["passes"]
    # layer 1 replaced by noise: its cosine and neighbour lists break, layer 0's do not
    noisy = {k: v.copy() for k, v in ref.items()}
    for v in noisy.values():
        v[:, 1] = rng.standard_normal(v[:, 1].shape)
    f = fidelity(ref, noisy)
    assert f["cosine_min_per_layer"][0] == pytest.approx(1.0) and f["cosine_min_per_layer"][1] < 0.9
    assert f["top10_overlap_per_layer"][0] == 1.0 and f["top10_overlap_per_layer"][1] < 0.9
    assert not f["passes"]

    runs = [
        {"precision": "float32", "pipeline_x_realtime": 8.0},
        {"precision": "int8", "pipeline_x_realtime": 16.0, "fidelity_vs_float32": {"passes": True}},
        {"precision": "x", "pipeline_x_realtime": 30.0, "fidelity_vs_float32": {"passes": False}},
    ]
    best = fastest_passing(runs)
    assert best["precision"] == "int8" and best["speedup_vs_float32"] == 2.0
    assert fastest_passing(runs[:1] + runs[2:])["precision"] == "float32"
