"""Settings layering and `mess config`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.config import resolve_settings
from messai.errors import ConfigError

runner = CliRunner()


def _write_config(text: str) -> None:
    with open(os.environ["MESS_CONFIG"], "w") as f:
        f.write(text)


def test_layers_defaults_file_env_flags(monkeypatch):
    s, src = resolve_settings({})
    assert s.segment_seconds == 5.0 and src["segment_seconds"] == "default"
    _write_config('segment_seconds = 4.0\nbatch_size = 3\nmodel = "from-file"\n')
    s, src = resolve_settings({})
    assert s.segment_seconds == 4.0 and src["segment_seconds"].startswith("config file")
    monkeypatch.setenv("MESS_BATCH_SIZE", "7")
    monkeypatch.setenv("MESS_MODEL", "from-env")
    s, src = resolve_settings({"model": "from-flag", "batch_size": None})
    assert s.batch_size == 7 and src["batch_size"] == "env MESS_BATCH_SIZE"
    assert s.model == "from-flag" and src["model"] == "flag"
    assert s.segment_seconds == 4.0


def test_mess_home_moves_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MESS_HOME", str(tmp_path / "elsewhere"))
    s, _ = resolve_settings({})
    assert s.stores_dir == tmp_path / "elsewhere" / "stores"


def test_unknown_key_is_named():
    _write_config("segment_secs = 4\n")
    with pytest.raises(ConfigError, match="unknown key 'segment_secs'"):
        resolve_settings({})


def test_invalid_value_names_field_and_source(monkeypatch):
    monkeypatch.setenv("MESS_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="device.*env MESS_DEVICE"):
        resolve_settings({})


@pytest.mark.parametrize(
    "text,field,reason",
    [
        ("batch_size = true", "batch_size", "expected a number, got true"),
        ("commit_tracks = false", "commit_tracks", "expected a number, got false"),
        ("r2_threshold = nan", "r2_threshold", "finite number"),
        ("segment_seconds = inf", "segment_seconds", "finite number"),
        ("commit_seconds = nan", "commit_seconds", "finite number"),
    ],
)
def test_booleans_and_non_finite_numbers_are_refused(text, field, reason):
    """TOML true is not 1 and nan is not a threshold: one line naming the field and file."""
    from messai.config import resolve_fields

    _write_config(text + "\n")
    with pytest.raises(ConfigError, match=rf"invalid setting {field} \(from config file.*{reason}"):
        resolve_settings({})
    with pytest.raises(ConfigError, match=rf"invalid setting {field} \(from config file"):
        resolve_fields([field])  # the light path of the fast commands too
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and field in r.output


def test_numbers_from_the_environment_still_parse(monkeypatch):
    monkeypatch.setenv("MESS_BATCH_SIZE", "8")
    monkeypatch.setenv("MESS_R2_THRESHOLD", "0.25")
    s, _ = resolve_settings({})
    assert s.batch_size == 8 and s.r2_threshold == 0.25
    monkeypatch.setenv("MESS_R2_THRESHOLD", "nan")
    with pytest.raises(ConfigError, match="r2_threshold.*env MESS_R2_THRESHOLD"):
        resolve_settings({})


def test_datasets_table():
    _write_config('[datasets.smd]\npath = "/data/smd"\nkind = "smd"\n')
    s, _ = resolve_settings({})
    assert str(s.datasets["smd"].path) == "/data/smd" and s.datasets["smd"].kind == "smd"
    _write_config('[datasets.smd]\npth = "/x"\n')
    with pytest.raises(ConfigError, match="unknown key 'pth' in \\[datasets.smd\\]"):
        resolve_settings({})


def test_mess_config_json_reports_sources(monkeypatch):
    monkeypatch.setenv("MESS_SEGMENT_SECONDS", "3")
    r = runner.invoke(app, ["config", "--format", "json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["settings"]["segment_seconds"] == 3.0
    assert d["sources"]["segment_seconds"] == "env MESS_SEGMENT_SECONDS"
    assert d["sources"]["model"] == "default" and d["settings"]["model"] == "m-a-p/MERT-v1-95M"


def test_bad_config_is_one_line_error_from_cli():
    _write_config("nonsense = 1\n")
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 2 and "unknown key 'nonsense'" in r.output


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout
    return set(out.split())


HEAVY = {"torch", "transformers", "sklearn", "librosa", "torchaudio", "scipy", "torchcrepe"}


def test_import_messai_is_light():
    assert not HEAVY & _modules_after("import messai")


def test_help_is_light():
    mods = _modules_after(
        "import sys; sys.argv=['mess','--help']\nfrom messai.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert not HEAVY & mods
