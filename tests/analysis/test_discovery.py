"""`mess probe`, `mess aspects`, `mess targets` on a real (tiny) store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.features.records import feature_arrays
from messai.features.store import FeatureStore
from tests.conftest import write_audio

runner = CliRunner()


@pytest.fixture()
def small_store(tmp_path, tiny_ckpt):
    d = tmp_path / "lib"
    for i in range(8):
        write_audio(d / f"w{i % 4}" / f"t{i}.wav", 6.5, 24000, freq=110 * (1 + i), seed=i)
    r = runner.invoke(
        app,
        ["extract", str(d), "--dataset", "lib", "--model", str(tiny_ckpt), "--device", "cpu", "-q"],
    )
    assert r.exit_code == 0, r.output
    return d


def test_probe_json_plot_and_aspects(small_store, tmp_path):
    png = tmp_path / "heat.png"
    r = runner.invoke(
        app,
        [
            "probe",
            "--dataset",
            "lib",
            "--folds",
            "4",
            "--bootstrap",
            "50",
            "--format",
            "json",
            "--plot",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n_groups"] == 8 and d["n_layers"] == 3 and d["folds"] == 4
    cent = d["targets"]["spectral_centroid"]
    assert len(cent["r2"]) == len(cent["r2_std"]) == len(cent["control_r2"]) == 3
    assert cent["best_layer"] in (0, 1, 2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store = FeatureStore.open("lib")
    saved = json.loads((store.root / "probe.json").read_text())
    assert saved["results"]["targets"]["spectral_centroid"]["r2"] == cent["r2"]
    rows = json.loads(
        runner.invoke(app, ["aspects", "--dataset", "lib", "--format", "json"]).stdout
    )
    bright = next(r for r in rows if r["aspect"] == "spectral_brightness")
    assert bright["source"].startswith("probe") and bright["target"] in (
        "spectral_centroid",
        "spectral_rolloff",
    )
    best = d["targets"][bright["target"]]
    assert (
        bright["layer"] == int(np.nanargmax([np.nan if v is None else v for v in best["r2"]]))
        or not bright["validated"]
    )
    table = runner.invoke(app, ["probe", "--dataset", "lib", "--folds", "4", "--bootstrap", "20"])
    assert table.exit_code == 0 and "spectral_centroid" in table.stdout


def test_aspects_without_probe_are_prototype_defaults_labelled_unvalidated(small_store):
    rows = json.loads(
        runner.invoke(app, ["aspects", "--dataset", "lib", "--format", "json"]).stdout
    )
    by = {r["aspect"]: r for r in rows}
    assert by["spectral_brightness"]["layer"] == 0 and by["timbral_texture"]["layer"] == 1
    assert by["acoustic_structure"]["layer"] == 2
    assert all("unvalidated" in r["source"] and not r["validated"] for r in rows)


def test_group_by_missing_label_is_clear(small_store):
    r = runner.invoke(app, ["probe", "--dataset", "lib", "--group-by", "work"])
    assert r.exit_code == 2 and "no 'work' label" in r.output


def test_targets_recomputed_from_audio(small_store):
    store = FeatureStore.open("lib")
    before = store.load("w0/t0")["targets"]["spectral_centroid"].copy()
    with store.writer():  # as if extracted before targets existed
        for entry in store.iter_entries():
            arrays = feature_arrays(store.read_arrays(entry.track_id))
            store.put(entry.with_changes(targets=()), arrays)
    assert "spectral_centroid" not in FeatureStore.open("lib").load("w0/t0")["targets"]
    r = runner.invoke(app, ["probe", "--dataset", "lib", "--folds", "3"])
    assert r.exit_code == 2 and "mess targets" in r.output
    r = runner.invoke(app, ["targets", "--dataset", "lib"])
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(
        FeatureStore.open("lib").load("w0/t0")["targets"]["spectral_centroid"], before, rtol=1e-6
    )


def test_random_model_control_store(small_store, tmp_path):
    from messai.models.mert import write_random_checkpoint

    rand = write_random_checkpoint(
        tmp_path / "rand", like=FeatureStore.open("lib").model_id, seed=3
    )
    r = runner.invoke(
        app,
        [
            "extract",
            str(small_store),
            "--dataset",
            "lib-rand",
            "--model",
            str(rand),
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "probe",
            "--dataset",
            "lib",
            "--control-store",
            "lib-rand",
            "--folds",
            "4",
            "--bootstrap",
            "20",
            "-f",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["random_model"] is True
    cent = d["targets"]["spectral_centroid"]
    assert len(cent["random_model_r2"]) == 3 and cent["selectivity_baseline"] == "random_model"
    expected = [a - b for a, b in zip(cent["r2"], cent["random_model_r2"])]
    np.testing.assert_allclose(cent["selectivity"], expected, atol=1e-9)
    r = runner.invoke(app, ["probe", "--dataset", "lib", "--control-store", "nope"])
    assert r.exit_code == 2 and "nope" in r.output


def test_a_control_made_by_the_model_itself_is_refused(small_store, tmp_path, tiny_ckpt):
    """Issue 21.1: a 'random twin' with the model's weights gave random_model_r2 == r2 silently."""
    import shutil

    copy = tmp_path / "same-weights"  # another folder, the same weights
    shutil.copytree(tiny_ckpt, copy)
    for name, model in (("lib-self", tiny_ckpt), ("lib-copy", copy)):
        r = runner.invoke(
            app,
            ["extract", str(small_store), "-d", name, "--model", str(model), "--device", "cpu"],
        )
        assert r.exit_code == 0, r.output
        for cmd in (
            ["probe", "--dataset", "lib", "--folds", "3", "--bootstrap", "10"],
            ["benchmark", "aspects", "-d", "lib", "--aspects", "spectral_brightness"],
        ):
            r = runner.invoke(app, [*cmd, "--control-store", name])
            assert r.exit_code == 2, r.output
            assert "same model weights" in r.output and "no random-weight control" in r.output


def test_a_control_with_the_models_windows_is_refused():
    """Identities that differ but stored windows that are equal: still no control."""
    from types import SimpleNamespace

    from messai.analysis.discovery import check_control
    from messai.errors import ConfigError

    def store(name, sha):
        return SimpleNamespace(
            dataset=name, model_id=name, model={"id": name, "weights_sha256": sha}
        )

    feats = np.random.default_rng(0).normal(size=(6, 2, 4)).astype(np.float16)
    check_control(store("a", "1"), store("b", "2"), feats, feats + np.float16(1))
    with pytest.raises(ConfigError, match="same features"):
        check_control(store("a", "1"), store("b", "2"), feats, feats.copy())
    with pytest.raises(ConfigError, match="same model weights"):
        check_control(store("a", "1"), store("b", "1"))
