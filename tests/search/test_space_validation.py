"""Honest validation of fitted spaces, checksummed aspect_spaces.json, space indices through
'mess index --space', and the aspect options of 'mess recommend' (issues 18, 21, 22)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.analysis.aspect_fit import fit_aspect_space, load_spaces, save_space
from messai.bench.synthetic import planted_store
from messai.cli import app
from messai.errors import ConfigError
from messai.search.recommend import LayerBasedRecommender

runner = CliRunner()
QUERY = "a1-b2-r0"


def mess(*args: str, **kw):
    return runner.invoke(app, list(args), **kw)


@pytest.fixture()
def noisy(isolated_env):
    """The planted store with a label of pure noise; spaces: fa (real), noise (label noise),
    spectral_brightness on the noise layer 0 (target noise)."""
    store = planted_store(Path(isolated_env))
    rng = np.random.default_rng(7)
    with store.writer():
        for t in store.track_ids():
            store.set_labels(t, {**store.labels(t), "noise": f"n{rng.integers(0, 4)}"})
    save_space(store, fit_aspect_space(store, "fa", sources=["label:fa"], layers=[1]))
    save_space(store, fit_aspect_space(store, "noise", sources=["label:noise"], layers=[1]))
    save_space(store, fit_aspect_space(store, "spectral_brightness", layers=[0]))
    return store


def test_spaces_fitted_on_noise_are_not_validated(noisy, isolated_env):
    spaces = {n: s for n, (s, _) in load_spaces(noisy).items()}
    assert spaces["fa"].evidence["validation"]["validated"] is True
    for name in ("noise", "spectral_brightness"):
        v = spaces[name].evidence["validation"]
        assert v["validated"] is False and v["failures"]
        assert v["ci_low"] < v["threshold"]
    rec = LayerBasedRecommender("planted", home=isolated_env, on_notice=lambda m: None)
    good = rec.recommend_by_id(QUERY, "fa", 3).to_dict()
    assert good["validated"] is True and good["caveat"] is None
    for name, what in (("noise", "cv_accuracy"), ("spectral_brightness", "cv_r2")):
        d = rec.recommend_by_id(QUERY, name, 3).to_dict()
        assert d["validated"] is False and f"{name} space is not validated" in d["caveat"]
        assert what in d["caveat"]
    # fused with a validated space: still not validated
    assert rec.recommend_by_id(QUERY, ["fa", "noise"], 3).to_dict()["validated"] is False
    # table and 'mess aspects' say so too
    r = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "noise")
    assert r.exit_code == 0 and "NOT VALIDATED" in r.stdout
    rows = {
        x["aspect"]: x for x in json.loads(mess("aspects", "-d", "planted", "-f", "json").stdout)
    }
    assert rows["fa"]["space"]["validated"] is True
    assert rows["noise"]["space"]["validated"] is False
    assert "cv_accuracy" in rows["noise"]["space"]["caveat"]
    assert rows["spectral_brightness"]["space"]["validated"] is False


def test_a_space_no_better_than_its_random_weights_control_is_not_validated(isolated_env):
    home = Path(isolated_env)
    store = planted_store(home)
    planted_store(home, "control")  # the same features: the control does as well
    space = fit_aspect_space(store, "fa", sources=["label:fa"], layers=[1], control_store="control")
    v = space.evidence["validation"]
    assert v["control"] == pytest.approx(1.0) and v["control_store"] == "control"
    assert v["validated"] is False and "random-weights control" in v["failures"][0]
    alone = fit_aspect_space(store, "fa", sources=["label:fa"], layers=[1], control_store="")
    assert alone.evidence["validation"]["validated"] is True


def test_an_edited_spaces_file_is_refused_and_reported(noisy, isolated_env):
    side = next(Path(isolated_env).rglob("aspect_spaces.json"))
    assert mess("index", "-d", "planted").exit_code == 0
    assert mess("index", "-d", "planted", "--verify").exit_code == 0
    saved = json.loads(side.read_text())
    saved["spaces"]["fa"]["components"][0][0] += 0.5  # a hand edit
    side.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="'fa' was edited after it was fitted"):
        load_spaces(noisy)
    r = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "fa")
    assert r.exit_code == 2 and "edited after it was fitted" in r.stderr
    v = mess("index", "-d", "planted", "--verify", "-f", "json")
    assert v.exit_code == 1
    rows = {x.get("space"): x for x in json.loads(v.stdout)}
    assert (
        rows["fa"]["status"].startswith("damaged: was edited") and rows["noise"]["status"] == "ok"
    )


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_mess_index_builds_space_indices_and_a_refit_makes_them_stale(isolated_env, kind):
    store = planted_store(Path(isolated_env))
    save_space(store, fit_aspect_space(store, "fa", sources=["label:fa"], layers=[1]))
    r = mess("index", "-d", "planted", "--space", "fa", "--kind", kind, "-f", "json")
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert row["space"] == "fa" and row["action"] == "built" and row["n_tracks"] == 64
    again = json.loads(
        mess("index", "-d", "planted", "--space", "all", "--kind", kind, "-f", "json").stdout
    )
    assert again[0]["action"] == "up to date"
    v = mess("index", "-d", "planted", "--space", "fa", "--kind", kind, "--verify", "-f", "json")
    assert v.exit_code == 0 and any(x["status"] == "index: ok" for x in json.loads(v.stdout))
    # a refit (other folds) changes the space: its index is stale
    save_space(store, fit_aspect_space(store, "fa", sources=["label:fa"], layers=[1], folds=3))
    r = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "fa", "--kind", kind)
    if kind == "flat":
        assert r.exit_code == 0 and "was stale" in r.stderr
    else:
        assert r.exit_code != 0 and "is stale" in r.stderr and "--space fa --kind hnsw" in r.stderr
        assert mess("index", "-d", "planted", "--space", "fa", "--kind", kind).exit_code == 0
        assert (
            mess("recommend", "-d", "planted", "-t", QUERY, "-a", "fa", "--kind", kind).exit_code
            == 0
        )
    bad = mess("index", "-d", "planted", "--space", "fa", "--backend", "lancedb")
    assert bad.exit_code == 2 and "whole layers only" in bad.stderr


def test_every_fit_suggestion_is_a_command_that_works(isolated_env):
    """issue 21 item 6: the suggested 'mess aspects fit' runs as printed."""
    store = planted_store(Path(isolated_env))
    del store
    for aspect in ("spectral_brightness", "fa", "brightness"):
        r = mess(
            "recommend",
            "-d",
            "planted",
            "-t",
            QUERY,
            "-a",
            "spectral_brightness",
            "-a",
            aspect,
            "--space",
            "aspect",
        )
        if aspect == "spectral_brightness":
            assert "given twice" in r.stderr
            r = mess("recommend", "-d", "planted", "-t", QUERY, "-a", aspect, "--space", "aspect")
        assert r.exit_code == 2
        line = r.stderr.strip().splitlines()[-1]
        if aspect == "brightness":  # neither built in nor a label: says what is missing
            assert "neither a built-in aspect" in line and "--from target:NAME" in line
            continue
        command = line.split("fit one: ", 1)[1].strip()
        args = shlex.split(command)
        assert args[:3] == ["mess", "aspects", "fit"]
        fit = mess(*args[1:])
        assert fit.exit_code == 0, (command, fit.output)
        again = mess("recommend", "-d", "planted", "-t", QUERY, "-a", aspect, "--space", "aspect")
        assert again.exit_code == 0, again.output


def test_an_unknown_aspect_is_one_line_without_a_suggestion_that_fails(isolated_env):
    """issue 21 item 6: 'mess recommend -a brightness' printed 'fit one: … --aspect brightness'
    (which fails) before its error."""
    planted_store(Path(isolated_env))
    r = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "brightness")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown aspect" in lines[0] and "fit one" not in lines[0]


def test_aspects_in_one_comma_separated_option(isolated_env):
    """issue 21 item 12: -a a:0.7,b:0.3 equals -a a:0.7 -a b:0.3."""
    planted_store(Path(isolated_env))
    one = mess(
        "recommend",
        "-d",
        "planted",
        "-t",
        QUERY,
        "-a",
        "spectral_brightness:0.7,timbral_texture:0.3",
        "-f",
        "json",
    )
    two = mess(
        "recommend",
        "-d",
        "planted",
        "-t",
        QUERY,
        "-a",
        "spectral_brightness:0.7",
        "-a",
        "timbral_texture:0.3",
        "-f",
        "json",
    )
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout) == json.loads(two.stdout)
    assert json.loads(one.stdout)["weights"] == [0.7, 0.3]
    bad = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "spectral_brightness:x")
    assert bad.exit_code == 2 and "expected a number after ':'" in bad.stderr
    empty = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "spectral_brightness,")
    assert empty.exit_code == 2 and "empty entry" in empty.stderr


def test_labels_named_like_result_fields_never_overwrite_them(isolated_env):
    """issue 22 item 7: labels are nested in JSON; in tables a clashing label is label.NAME."""
    store = planted_store(Path(isolated_env))
    with store.writer():
        for t in store.track_ids():
            store.set_labels(
                t, {**store.labels(t), "similarity": "high", "rank": "first", "track_id": "x"}
            )
    r = mess("recommend", "-d", "planted", "-t", QUERY, "--layer", "1", "-f", "json", "-k", "3")
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)["recommendations"]
    assert [x["rank"] for x in recs] == [1, 2, 3]
    assert all(isinstance(x["similarity"], float) and x["track_id"] != "x" for x in recs)
    assert recs[0]["labels"]["similarity"] == "high" and recs[0]["labels"]["fa"].startswith("a")
    tsv = mess("recommend", "-d", "planted", "-t", QUERY, "--layer", "1", "-f", "tsv", "-k", "3")
    header, first = tsv.stdout.splitlines()[:2]
    cols = dict(zip(header.split("\t"), first.split("\t")))
    assert cols["rank"] == "1" and cols["label.rank"] == "first" and cols["label.track_id"] == "x"
    assert cols["track_id"] == recs[0]["track_id"]


def test_options_that_cannot_apply_to_a_space_are_errors(isolated_env):
    store = planted_store(Path(isolated_env))
    save_space(store, fit_aspect_space(store, "fa", sources=["label:fa"], layers=[1]))
    r = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "fa", "--normalize", "zscore")
    assert r.exit_code == 2 and "--normalize applies to whole layers" in r.stderr
    r = mess("recommend", "-d", "planted", "-t", QUERY, "-a", "fa", "--backend", "lancedb")
    assert r.exit_code == 2 and "whole layers only" in r.stderr
    r = mess(
        "recommend", "-d", "planted", "-t", QUERY, "-a", "fa", "--layer", "1", "--space", "aspect"
    )
    assert r.exit_code == 2 and "cannot be used with --space aspect" in r.stderr
    ok = mess(
        "recommend",
        "-d",
        "planted",
        "-t",
        QUERY,
        "-a",
        "fa",
        "--normalize",
        "zscore",
        "--space",
        "layer",
    )
    assert ok.exit_code == 0, ok.output
