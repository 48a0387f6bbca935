"""Recommending in fitted aspect spaces: specificity, routing, --explain and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.analysis.aspect_fit import fit_aspect_space, save_space
from messai.bench.synthetic import planted_store
from messai.cli import app
from messai.search.recommend import LayerBasedRecommender

runner = CliRunner()
QUERY = "a1-b2-r0"


@pytest.fixture()
def planted(isolated_env):
    store = planted_store(Path(isolated_env))
    for factor in ("fa", "fb"):
        save_space(store, fit_aspect_space(store, factor, sources=[f"label:{factor}"], layers=[1]))
    return store


def _rec(isolated_env, **kw):
    return LayerBasedRecommender("planted", home=isolated_env, on_notice=lambda m: None, **kw)


def test_two_aspects_on_one_layer_return_different_lists(planted, isolated_env):
    rec = _rec(isolated_env)
    a = rec.recommend_by_id(QUERY, "fa", 8)
    b = rec.recommend_by_id(QUERY, "fb", 8)
    ids_a = [r.track_id for r in a.recommendations]
    ids_b = [r.track_id for r in b.recommendations]
    assert a.spaces[0]["layers"] == b.spaces[0]["layers"] == [1]
    assert ids_a != ids_b
    # only the query's 3 replicates (same fa and fb) can be in both lists
    assert set(ids_a) & set(ids_b) <= {"a1-b2-r1", "a1-b2-r2", "a1-b2-r3"}
    # each list follows its own factor
    assert all(planted.labels(t)["fa"] == "a1" for t in ids_a[:8])
    assert all(planted.labels(t)["fb"] == "b2" for t in ids_b[:8])
    assert QUERY not in ids_a + ids_b


def test_space_similarity_equals_direct_computation(planted, isolated_env):
    rec = _rec(isolated_env)
    res = rec.recommend_by_id(QUERY, ["fa:2", "fb"], 5)
    from messai.analysis.aspect_fit import load_spaces

    spaces = {n: s for n, (s, _) in load_spaces(planted).items()}
    ids, X = planted.layer(1)
    sims = {}
    for n, s in spaces.items():
        Z = s.transform(X)
        d2 = ((Z - Z[ids.index(QUERY)]) ** 2).sum(1)
        sims[n] = np.exp(-d2 / (2 * s.dim))
    fused = (2 * sims["fa"] + sims["fb"]) / 3
    order = [i for i in np.lexsort((np.arange(len(ids)), -fused)) if ids[i] != QUERY][:5]
    assert [r.track_id for r in res.recommendations] == [ids[i] for i in order]
    np.testing.assert_allclose([r.similarity for r in res.recommendations], fused[order], atol=1e-6)
    np.testing.assert_allclose(
        [r.layer_similarities for r in res.recommendations],
        [[sims["fa"][i], sims["fb"][i]] for i in order],
        atol=1e-6,
    )
    d = res.to_dict()
    assert [s["aspect"] for s in d["space"]] == ["fa", "fb"] and d["weights"] == [2.0, 1.0]


def test_routing(planted, isolated_env):
    from messai.errors import ConfigError

    notes = []
    rec = LayerBasedRecommender("planted", home=isolated_env, on_notice=notes.append)
    layer = rec.recommend_by_id(QUERY, "spectral_brightness", 3)  # no space: whole layer
    assert layer.spaces is None and "space" not in layer.to_dict()
    assert any("no fitted space for spectral_brightness" in n for n in notes)
    with pytest.raises(ConfigError, match="no fitted space"):
        _rec(isolated_env, space="aspect").recommend_by_id(QUERY, "spectral_brightness", 3)
    whole = _rec(isolated_env, space="layer").recommend_by_id(QUERY, "spectral_brightness", 3)
    assert whole.to_dict() == layer.to_dict()
    # --layer with a label aspect: that whole layer, unvalidated (issue 18)
    given = _rec(isolated_env).recommend_by_id(QUERY, "fa", 3, layer=1)
    assert given.spaces is None and given.layers == [1] and not given.validated
    assert "--layer" in given.caveat
    # --space layer with a label aspect: the layer its space was fitted on, unvalidated
    by_space = _rec(isolated_env, space="layer").recommend_by_id(QUERY, "fa", 3)
    assert by_space.spaces is None and by_space.layers == [1]
    assert "label aspect" in by_space.caveat
    assert [r.track_id for r in by_space.recommendations] == [
        r.track_id for r in given.recommendations
    ]
    with pytest.raises(ConfigError, match="aspect 'nope' .unknown aspect.*fitted spaces: fa, fb"):
        _rec(isolated_env, space="layer").recommend_by_id(QUERY, "nope", 3)


def test_explain_equals_recomputation_from_the_store(planted, isolated_env):
    from messai.analysis.aspect_fit import load_spaces
    from messai.search.explain import explain_result

    rec = _rec(isolated_env)
    res = explain_result(rec, rec.recommend_by_id(QUERY, "fa", 4), top_targets=2)
    ids = planted.track_ids()
    # independent path: per-track load() of windows and targets
    loaded = {t: planted.load(t) for t in ids}
    raw = {
        name: np.stack([loaded[t]["targets"][name].mean(0) for t in ids])
        for name in ("spectral_centroid", "rms_db_mean")
    }
    spaces = {n: s for n, (s, _) in load_spaces(planted).items()}
    q = ids.index(QUERY)
    for r in res.recommendations:
        ex = r.explanation
        i = ids.index(r.track_id)
        for n, s in spaces.items():
            zq = s.transform(loaded[QUERY]["aggregated"][1][None])[0]
            zr = s.transform(loaded[r.track_id]["aggregated"][1][None])[0]
            want = np.exp(-((zq - zr) ** 2).sum() / (2 * s.dim))
            assert ex["aspect_similarities"][n] == pytest.approx(want, abs=1e-5)
        assert ex["aspect_similarities"]["fa"] == pytest.approx(r.similarity, abs=1e-5)
        want = sorted(
            ((name, v[i] - v[q], (v[i] - v[q]) / v.std()) for name, v in raw.items()),
            key=lambda x: -abs(x[2]),
        )
        got = ex["target_differences"]
        assert [g["target"] for g in got] == [w[0] for w in want]
        for g, (_, delta, z) in zip(got, want):
            assert g["delta"] == pytest.approx(delta, abs=1e-3)
            assert g["z"] == pytest.approx(z, abs=1e-3)
        assert {g["unit"] for g in got} == {"Hz", "dB"}


def test_cli_fit_list_recommend_explain(isolated_env):
    planted_store(Path(isolated_env))
    r = runner.invoke(
        app,
        [
            "aspects",
            "fit",
            "-d",
            "planted",
            "--aspect",
            "fa",
            "--from",
            "label:fa",
            "--layers",
            "1",
            "-f",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["method"] == "shrinkage_lda" and info["dim"] == 3 and info["layers"] == [1]
    r = runner.invoke(
        app, ["aspects", "fit", "-d", "planted", "--aspect", "spectral_brightness", "-f", "json"]
    )
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["layers"] == [1] and info["evidence"]["layer_scores"]["1"] > 0.8
    r = runner.invoke(app, ["aspects", "-d", "planted", "-f", "json"])
    rows = {row["aspect"]: row for row in json.loads(r.stdout)}
    assert (
        rows["fa"]["space"]["method"] == "shrinkage_lda" and rows["fa"]["space"]["stale"] is False
    )
    assert rows["spectral_brightness"]["space"]["kind"] == "targets"
    r = runner.invoke(
        app,
        [
            "recommend",
            "-d",
            "planted",
            "-t",
            QUERY,
            "-a",
            "fa",
            "--explain",
            "-f",
            "json",
            "-k",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["space"]["aspect"] == "fa" and len(d["recommendations"]) == 3
    ex = d["recommendations"][0]["explain"]
    assert set(ex["aspect_similarities"]) == {"fa", "spectral_brightness"}
    r = runner.invoke(app, ["recommend", "-d", "planted", "-t", QUERY, "-a", "fa", "--explain"])
    assert r.exit_code == 0 and "fa space (3-d, layer 1)" in r.stdout
    r = runner.invoke(
        app, ["recommend", "-d", "planted", "-t", QUERY, "-a", "fa", "--space", "layer"]
    )
    # a label aspect searched as a whole layer: the layer its space was fitted on (issue 18)
    flat = " ".join(r.stdout.split())  # the table's title wraps at the terminal's width
    assert r.exit_code == 0 and "layer 1" in flat and "NOT VALIDATED" in flat
