"""`mess benchmark aspects` on a store with planted, crossing factors."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.bench.aspect_metrics import retrieval, triplet_accuracy
from messai.bench.aspects import crossing_label, evaluate_aspects, label_columns
from messai.bench.synthetic import planted_store
from messai.cli import app

runner = CliRunner()


def test_triplet_accuracy_and_retrieval_by_hand():
    # 4 points on a line at 0, 1, 10, 11
    x = np.array([0.0, 1.0, 10.0, 11.0])
    D = np.abs(x[:, None] - x[None])
    assert triplet_accuracy(D, ["a", "a", "b", "b"]) == 1.0
    # a b a b: of 8 triplets only (0; 10, 11) and (11; 1, 0) have the positive closer
    assert triplet_accuracy(D, ["a", "b", "a", "b"]) == pytest.approx(2 / 8)
    r = retrieval(D, ["a", "a", "b", "b"], 1)
    assert (
        r["precision_at_k"] == 1.0 and r["map"] == 1.0 and r["chance_at_k"] == pytest.approx(1 / 3)
    )


def test_crossing_labels_choose_the_split(isolated_env):
    store = planted_store(Path(isolated_env))
    labels = label_columns(store, store.track_ids())
    assert set(labels) == {"fa", "fb", "rep"}
    assert crossing_label(labels, "fa", ["fa", "fb"]) == "fb"


def test_spaces_separate_what_the_layer_mixes(isolated_env):
    store = planted_store(Path(isolated_env))
    report = evaluate_aspects(
        store, labels=["fa", "fb"], aspects=["spectral_brightness", "dynamics"]
    )
    by = {a["aspect"]: a for a in report["aspects"]}
    assert by["fa"]["split_by"] == "fb" and by["fb"]["split_by"] == "fa"
    for name in ("fa", "fb"):
        reps = by[name]["representations"]
        assert reps["space"]["own_triplet_accuracy"] >= 0.9  # fitted on half the tracks
        assert reps["space"]["off_triplet_accuracy"] <= 0.6
        assert reps["layer"]["own_triplet_accuracy"] < 0.8
        assert set(reps) == {"layer", "space", "descriptors"}
    bright = by["spectral_brightness"]["representations"]
    assert bright["space"]["own_fidelity"] > 0.8 > bright["layer"]["own_fidelity"]
    assert bright["descriptors"]["own_fidelity"] == pytest.approx(1.0)
    pair = next(p for p in report["specificity"] if {p["a"], p["b"]} == {"fa", "fb"})
    assert pair["layer_jaccard"] == 1.0 and pair["space_jaccard"] < 0.5


def test_cli_json_table_and_plot(isolated_env, tmp_path):
    planted_store(Path(isolated_env))
    planted_store(Path(isolated_env), "planted-random", seed=1)
    args = ["benchmark", "aspects", "-d", "planted", "--labels", "fa", "--aspects", "dynamics"]
    r = runner.invoke(app, [*args, "--control-store", "planted-random", "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["control"] == "planted-random" and d["layer"] == 1
    assert set(d["aspects"][0]["representations"]) == {
        "layer",
        "space",
        "descriptors",
        "random_layer",
        "random_space",
    }
    plot = tmp_path / "aspects.png"
    r = runner.invoke(app, [*args, "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    assert "triplet_own" in r.stdout and plot.stat().st_size > 0
