"""The README's offline recipe, run as written (issue 21 item 14): the test reads the fenced
block after ``<!-- readme-test: offline -->`` in README.md, so the document cannot drift from
what works.

The lines run through bash in a folder laid out like a fresh clone (``data/demo``), offline,
with ``uv run mess`` going to this interpreter's ``python -m messai`` (a ``uv`` on PATH that
accepts only ``uv run mess …``; the environment is the one under test). By default the demo
is cut to 12 of its 24 tracks (every work, on two instruments) and ``--preset base`` becomes
``--preset tiny`` (seconds instead of minutes); ``-m slow`` runs the block exactly as written on
the whole demo.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-test: offline -->"


def readme_recipe(readme: Path = ROOT / "README.md") -> list[str]:
    """The command lines of the fenced block after the marker (comments and blanks dropped)."""
    text = readme.read_text(encoding="utf-8")
    assert MARKER in text, f"README.md lost its {MARKER} block"
    block = re.search(r"```bash\n(.*?)\n```", text[text.index(MARKER) :], re.S)
    assert block, "no ```bash block after the marker"
    lines = [line.split(" #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _fresh_clone(tmp: Path, *, subset: bool) -> Path:
    """A folder with the clone's files the recipe reads (data/demo), whole or cut to two
    instruments of every work."""
    clone = tmp / "clone"
    demo = clone / "data" / "demo"
    if not subset:
        shutil.copytree(ROOT / "data" / "demo", demo)
        return clone
    keep = ("piano", "guitar")
    with open(ROOT / "data" / "demo" / "metadata.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["instrument"] in keep]
    for r in rows:
        src = next((ROOT / "data" / "demo").glob(r["track_id"] + ".*"))
        dst = demo / src.relative_to(ROOT / "data" / "demo")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    with open(demo / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return clone


def _uv_shim(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "uv"
    shim.write_text(
        "#!/bin/sh\n"
        '[ "$1" = run ] && [ "$2" = mess ] || { echo "uv shim: only uv run mess" >&2; exit 97; }\n'
        "shift 2\n"
        f'exec {sys.executable} -m messai "$@"\n'
    )
    shim.chmod(0o755)
    return folder


def _weights_sha256(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert files, f"no weights in {folder}"
    h = hashlib.sha256()
    for p in files:
        h.update(p.read_bytes())
    return h.hexdigest()


def run_recipe(tmp_path: Path, isolated_env: Path, *, exact: bool) -> tuple[Path, list[str]]:
    clone = _fresh_clone(tmp_path, subset=not exact)
    env = {
        **os.environ,
        "PATH": f"{_uv_shim(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "100",
    }
    env.pop("UV", None)
    outputs = []
    for line in readme_recipe():
        command = line if exact else line.replace("--preset base", "--preset tiny")
        r = subprocess.run(
            ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, f"README line failed: {command}\n{r.stdout}\n{r.stderr}"
        outputs.append(r.stdout)
    return clone, outputs


def _check(clone: Path, outputs: list[str]) -> None:
    lines = readme_recipe()
    models = clone / ".models"
    # the twin made --like the model is another network: its weights differ (issue 21 item 1;
    # fixed on the model20 branch of issue 21: this assertion fails until it is merged)
    assert _weights_sha256(models / "mert-base") != _weights_sha256(models / "mert-twin")
    recommend = next(o for c, o in zip(lines, outputs, strict=True) if "recommend" in c)
    assert "piano/bach_bwv846_prelude" not in recommend.split("\n", 2)[-1]  # not itself
    assert "guitar/" in recommend or "piano/" in recommend


def test_readme_offline_recipe_runs_as_written(tmp_path, isolated_env):
    lines = readme_recipe()
    assert any("--preset base" in line for line in lines)  # what the fast run substitutes
    assert all(line.startswith("uv run mess ") for line in lines)
    clone, outputs = run_recipe(tmp_path, isolated_env, exact=False)
    _check(clone, outputs)
    stores = json.loads(
        subprocess.run(
            [sys.executable, "-m", "messai", "datasets", "-f", "json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert {s["dataset"]: s["n_tracks"] for s in stores} == {"demo": 12, "demo-random": 12}


@pytest.mark.slow
def test_readme_offline_recipe_exactly(tmp_path, isolated_env):
    clone, outputs = run_recipe(tmp_path, isolated_env, exact=True)
    _check(clone, outputs)
