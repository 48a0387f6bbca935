"""Issue 21: what the CLI prints — the summary of a quiet extraction, progress bars that show no
rate before there is data and no blank ETA, tables that fit 80 (and 60) columns, and
``mess config``'s resolved stores location."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from messai.cli import app
from messai.cli.cmd_extract import ExtractProgress, progress_fields
from tests.conftest import write_audio

runner = CliRunner()


def mess(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


# ---------------------------------------------------------------- item 7: extract -q


def test_quiet_extract_prints_the_summary_and_no_progress(tmp_path, tiny_ckpt):
    lib = tmp_path / "lib"
    write_audio(lib / "a.wav", 3.0)
    r = mess("extract", lib, "-d", "q", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, lines  # the summary only: no bar, no plan notice
    assert lines[0].startswith("q: 1 extracted, 0 up to date, 0 failed of 1 tracks")
    again = mess("extract", lib, "-d", "q", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert again.exit_code == 0
    assert [x for x in again.stderr.splitlines() if x.strip()] == [
        again.stderr.strip()
    ] and again.stderr.startswith("q: 0 extracted, 1 up to date")


# ---------------------------------------------------------------- item 11: progress


def test_no_rate_and_no_eta_before_any_file_is_done():
    f = progress_fields(done_files=0, n_files=9, done_seconds=5.0, total_seconds=90, elapsed=0.3)
    assert f["files"] == "0/9 files" and f["speed"] == "" and f["eta"] == ""
    assert f["hours"] == "0.00/0.03 h"
    # a long first file: after RATE_AFTER_SECONDS the windows so far give the rate
    f = progress_fields(done_files=0, n_files=1, done_seconds=60.0, total_seconds=600, elapsed=20)
    assert f["speed"] == "3.00× rt" and f["eta"] == "ETA 0:03:00"


def test_rate_and_eta_once_a_file_is_done():
    f = progress_fields(done_files=1, n_files=4, done_seconds=30.0, total_seconds=120, elapsed=10)
    assert f == {
        "files": "1/4 files",
        "hours": "0.01/0.03 h",
        "speed": "3.00× rt",
        "eta": "ETA 0:00:30",
    }


def test_failed_files_leave_no_question_mark_and_no_blank_eta():
    # every file failed: no audio, no total known
    f = progress_fields(done_files=2, n_files=2, done_seconds=0.0, total_seconds=0.0, elapsed=1)
    assert f == {"files": "2/2 files", "hours": "0.00 h", "speed": "", "eta": "done"}


def _line(bar: ExtractProgress) -> str:
    console = Console(file=io.StringIO(), width=150, color_system=None)
    console.print(bar.progress.make_tasks_table(bar.progress.tasks))
    return console.file.getvalue().strip()


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _plan(n):
    todo = [SimpleNamespace(path=f"/nonexistent/{i}.wav") for i in range(n)]
    return SimpleNamespace(skipped=[], todo=todo)


def test_the_rendered_bar_from_start_to_end_with_failures():
    clock = _Clock()
    console = Console(file=io.StringIO(), width=150, color_system=None)
    bar = ExtractProgress(console=console, clock=clock)
    bar.on_plan(_plan(2))
    try:
        clock.now += 0.2
        bar.on_window(None, 5.0)  # decoded, not yet through the model
        start = _line(bar)
        assert "0/2 files" in start and "× rt" not in start and "ETA" not in start
        clock.now += 2.0
        bar.on_track(SimpleNamespace(ok=False, error="/x/0.wav: not audio"))
        clock.now += 1.0
        bar.on_track(SimpleNamespace(ok=False, error="/x/1.wav: not audio"))
        end = _line(bar)
    finally:
        bar.stop()
    assert "2/2 files" in end and "0.00 h" in end and "?" not in end
    assert end.rstrip().endswith("done"), end  # never a dangling "ETA"
    assert "1.56× rt" in end  # 5 s of audio in 3.2 s


# ---------------------------------------------------------------- items 9 and 13: tables

NAMES = [
    ("Bach/Prelude in C major BWV 846 (organ)", "Bach", "BWV 846", "1722", "organ"),
    ("Bach/Prelude in C major BWV 846 (piano)", "Bach", "BWV 846", "1722", "piano"),
    ("Debussy/Clair de lune (Suite bergamasque)", "Debussy", "L 75", "1905", "piano"),
    ("Satie/Gymnopédie No. 1", "Satie", "Gymnopedie 1", "1888", "guitar"),
    ("Chopin/Nocturne Op. 9 No. 2 in E-flat major", "Chopin", "Op 9/2", "1832", "piano"),
]


@pytest.fixture(scope="module")
def long_names_store(tmp_path_factory, tiny_ckpt):
    """A probed and indexed store whose ids are long and whose labels include a year."""
    base = tmp_path_factory.mktemp("tables")
    lib = base / "lib"
    rows = ["track_id,composer,work,year,instrument"]
    for i, (name, composer, work, year, instrument) in enumerate(NAMES):
        write_audio(lib / f"{name}.wav", 6.0, freq=300 + 50 * i)
        rows.append(f'"{name}",{composer},{work},{year},{instrument}')
    (lib / "metadata.csv").write_text("\n".join(rows) + "\n")
    (base / "config.toml").write_text("")
    env = {"MESS_HOME": str(base / "home"), "MESS_CONFIG": str(base / "config.toml")}
    for args in (
        ("extract", lib, "-d", "tables", "--model", tiny_ckpt, "--device", "cpu", "-q"),
        ("probe", "-d", "tables", "--group-by", "track", "--format", "json"),
        ("index", "-d", "tables"),
    ):
        r = mess(*args, env=env)
        assert r.exit_code == 0, r.output
    return env


TABLE_COMMANDS = {
    "tracks": ("tracks", "-d", "tables"),
    "aspects": ("aspects", "-d", "tables"),
    "datasets": ("datasets",),
    "index": ("index", "-d", "tables"),
    "index-verify": ("index", "-d", "tables", "--verify"),
    "recommend": ("recommend", "-d", "tables", "--track", NAMES[4][0], "-a", "timbral_texture"),
    "probe": ("probe", "-d", "tables", "--group-by", "track", "--no-save"),
    "config": ("config",),
}


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("command", sorted(TABLE_COMMANDS))
def test_every_table_fits_the_terminal_and_keeps_ids_whole(long_names_store, command, width):
    args = TABLE_COMMANDS[command]
    r = mess(*args, env={**long_names_store, "COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines, r.output
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, "\n".join(too_wide)
    if command in ("tracks", "recommend"):
        as_json = mess(*args, "--format", "json", env=long_names_store)
        records = json.loads(as_json.stdout)
        records = records["recommendations"] if command == "recommend" else records
        for rec in records:  # ids whole, on one line; numbers whole
            assert any(rec["track_id"] in line for line in lines), rec["track_id"]
        if command == "recommend":
            for rec in records:
                assert any(f"{rec['similarity']:.4g}" in line for line in lines)
    if command == "aspects":  # 'probe (not validated)': at most two lines, words whole
        assert "probe (not" in r.stdout and "validated)" in r.stdout


def test_config_shows_the_resolved_stores_location(long_names_store):
    r = mess("config", "--format", "json", env=long_names_store)
    data = json.loads(r.stdout)
    expected = str(Path(long_names_store["MESS_HOME"]) / "stores")
    assert data["settings"]["stores"] == expected and data["sources"]["stores"] == "default"
    table = mess("config", env={**long_names_store, "COLUMNS": "120"})
    row = next(line for line in table.stdout.splitlines() if line.startswith("stores "))
    assert expected in row
    elsewhere = mess("config", env={**long_names_store, "MESS_STORES": "s3://bucket/mess"})
    assert "s3://bucket/mess" in elsewhere.stdout


def test_fit_table_keeps_ids_whole_wraps_text_and_drops_from_the_right():
    from messai.cli.common import fit_table

    cols = ["track_id", "seconds", "status", "source", "label_work", "label_year"]
    cells = [["Chopin/Nocturne Op. 9 No. 2", "6", "ok", "/a/long/path/to/x.wav", "Op 9/2", "1832"]]
    wide = fit_table(cols, cells, 200)
    assert [c.width for c in wide.columns] == [27, 7, 6, 21, 6, 4] and not wide.dropped
    narrow = fit_table(cols, cells, 60)  # the path goes first
    assert narrow.dropped == ["source"]
    assert sum(c.width for c in narrow.columns) + 2 * (len(narrow.columns) - 1) <= 60
    assert narrow.columns[0].width == 27  # the id is never narrowed
    tight = fit_table(cols, cells, 44)
    assert tight.dropped == ["source", "year", "work"]
    assert [c.name for c in tight.columns] == ["track_id", "seconds", "status"]


def test_fitted_space_tables_fit_80_and_60_columns(long_names_store):
    env = long_names_store
    for width in (80, 60):
        fit = mess("aspects", "fit", "-d", "tables", "--aspect", "instrument", "--folds", "2",
                   env={**env, "COLUMNS": str(width)})  # fmt: skip
        assert fit.exit_code == 0, fit.output
        listing = mess("aspects", "-d", "tables", env={**env, "COLUMNS": str(width)})
        bench = mess("benchmark", "similarity", "-d", "tables", "--layers", "0", "-k", "2",
                     env={**env, "COLUMNS": str(width)})  # fmt: skip
        for r in (fit, listing, bench):
            assert r.exit_code == 0, r.output
            too_wide = [line for line in r.stdout.splitlines() if len(line) > width]
            assert not too_wide, "\n".join(too_wide)
        assert "instrument" in listing.stdout and "shrinkage_lda" in fit.stdout
