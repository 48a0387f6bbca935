"""What a new user hit (issue 14): closed pipes, bad settings, names, 80-column tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from messai.cli import app
from tests.conftest import write_audio
from tests.synthetic_store import make_store

runner = CliRunner()


def mess(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def run_closed_stdout(*args: str) -> subprocess.CompletedProcess:
    """Run ``mess ARGS`` with a stdout whose reader has already gone (``| head -0``)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes anything
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "messai", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    return proc


@pytest.mark.parametrize("fmt", ["ids", "json", "tsv", "table"])
def test_a_closed_stdout_ends_quietly_with_status_0(isolated_env, fmt):
    make_store(isolated_env, "syn", n_tracks=30)
    proc = run_closed_stdout("tracks", "-d", "syn", "-f", fmt)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_mess_config_naming_a_missing_file_is_an_error(isolated_env, monkeypatch):
    monkeypatch.setenv("MESS_CONFIG", str(isolated_env / "nope.toml"))
    r = mess("datasets")
    assert r.exit_code == 2
    assert "nope.toml" in r.output and "does not exist" in r.output


@pytest.mark.parametrize("value", ['"x"', "5"])
def test_datasets_of_the_wrong_type_is_one_line(isolated_env, value):
    (isolated_env / "config.toml").write_text(f"datasets = {value}\n")
    r = mess("datasets")
    assert r.exit_code == 2
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "'datasets' must be tables" in r.output


def test_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("")
    monkeypatch.setenv("MESS_HOME", str(f))
    for args in (["datasets"], ["tracks", "-d", "x"]):
        r = mess(*args)
        assert r.exit_code == 2, r.output
        assert f"{f} is not a folder" in r.output


def test_an_uncreatable_home_is_one_line(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("")
    monkeypatch.setenv("MESS_HOME", str(f / "below"))  # below a file: cannot be created
    r = mess("model", "random", tmp_path / "m", "--preset", "tiny")
    assert r.exit_code == 0
    write_audio(tmp_path / "lib" / "a.wav", 2.0)
    r = mess("extract", tmp_path / "lib", "-d", "x", "--model", tmp_path / "m", "--device", "cpu")
    assert r.exit_code != 0
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "error:" in r.output and "Traceback" not in r.output


def test_indices_path_that_is_a_file_is_one_line(isolated_env):
    make_store(isolated_env, "syn", n_tracks=12)
    (isolated_env / "indices").write_text("")
    r = mess("recommend", "-d", "syn", "--track", "c0/track 000", "--layer", "1")
    assert r.exit_code == 1, r.output
    assert "error:" in r.output and "indices" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("name", ["evil\n", "a/b", ".hidden", ""])
def test_dataset_names_are_matched_whole(name):
    from messai.config import validate_dataset_name
    from messai.errors import ConfigError

    with pytest.raises(ConfigError):
        validate_dataset_name(name)


def test_random_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        r = mess("model", "random", tmp_path / "m", "--preset", "tiny", "--weights-format", "both")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_random_like_offline_points_at_preset(tmp_path):
    r = mess("model", "random", tmp_path / "m", "--like", "m-a-p/MERT-v1-95M")
    assert r.exit_code != 0
    assert "--preset base" in r.output and "--model" not in r.output


@pytest.fixture()
def small_lib(tmp_path, tiny_ckpt):
    import unicodedata

    d = tmp_path / "lib"
    for i, name in enumerate(["a", "b", "c", unicodedata.normalize("NFD", "café")]):
        write_audio(d / f"{name}.wav", 3.0, freq=300 + 90 * i)
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    r = mess("extract", d, "-d", "lib", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 1  # broken.wav
    return d


def test_ids_in_another_normalisation_and_failed_tracks(small_lib):
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café")
    r = mess("recommend", "-d", "lib", "--track", nfd, "--layer", "1", "-f", "ids")
    assert r.exit_code == 0, r.output
    assert unicodedata.normalize("NFC", "café") not in r.stdout.split("\n")  # never the query
    r = mess("recommend", "-d", "lib", "--track", "broken", "--layer", "1")
    assert r.exit_code != 0
    assert "failed to extract" in r.output and "unknown" not in r.output


def test_deleted_audio_shows_missing(small_lib):
    (small_lib / "b.wav").unlink()
    r = mess("tracks", "-d", "lib", "-f", "json")
    status = {row["track_id"]: row["status"] for row in json.loads(r.stdout)}
    assert status["b"] == "missing" and status["a"] == "ok"
    r = mess("recommend", "-d", "lib", "--track", "a", "--layer", "1", "-k", "3")
    assert r.exit_code == 0 and "no audio file any more" in r.stderr and "b" in r.stderr


def test_audio_query_of_a_stored_file_excludes_its_track(small_lib, tiny_ckpt):
    r = mess("recommend", "-d", "lib", "--audio", small_lib / "a.wav", "--layer", "1", "-f", "json")
    assert r.exit_code == 0, r.output
    ids = [x["track_id"] for x in json.loads(r.stdout)["recommendations"]]
    assert "a" not in ids and len(ids) == 3


def test_recommend_with_an_unvalidated_aspect_says_so_once(isolated_env):
    make_store(isolated_env, "syn", n_tracks=12)
    r = mess("recommend", "-d", "syn", "--track", "c0/track 000", "-f", "json")
    assert r.exit_code == 0, r.output
    notes = [x for x in r.stderr.splitlines() if "is not validated" in x]
    assert len(notes) == 1 and "spectral_brightness" in notes[0]
    d = json.loads(r.stdout)
    assert d["validated"] is False and "not validated" in d["caveat"]
    table = mess("recommend", "-d", "syn", "--track", "c0/track 000")
    assert "NOT VALIDATED" in table.stdout and "validated" in table.stdout
    aspects = json.loads(mess("aspects", "-d", "syn", "-f", "json").stdout)
    assert all(a["reason"] for a in aspects if not a["validated"])


def test_validation_failures_name_the_test_that_failed():
    from messai.analysis.results import TargetProbeResult

    res = TargetProbeResult(
        name="t",
        n_outputs=1,
        n_samples=10,
        transform="none",
        r2=[-0.3, 0.8, 0.9],
        r2_std=[0.1] * 3,
        r2_ci_low=[-0.4, 0.7, 0.3],
        r2_ci_high=[0.0, 0.9, 0.95],
        fold_r2=[[0.0]] * 3,
        alpha=[1.0] * 3,
        control_r2=[0.0, 0.0, 0.0],
        random_model_r2=[0.0, 0.2, 0.85],
        selectivity=[0.0] * 3,
        selectivity_baseline="control",
        best_layer=2,
        runner_up_layer=1,
        margin_over_median=0.1,
        fold_wins_over_runner_up=None,
        beats_runner_up=None,
    )
    assert res.validation_failures(1) == [] and res.is_validated(1)
    assert "threshold" in res.validation_failures(0)[0]
    assert any("permuted control" in x for x in res.validation_failures(0))
    assert any("random-model" in x for x in res.validation_failures(2))


def test_a_bit_rotted_flat_index_is_detected_and_never_ranks_inf(isolated_env):
    import numpy as np

    make_store(isolated_env, "syn", n_tracks=30)
    assert mess("index", "-d", "syn", "--layers", "1").exit_code == 0
    (faiss_file,) = (isolated_env / "indices").rglob("index.faiss")
    data = bytearray(faiss_file.read_bytes())
    vec_bytes = 16 * 4  # one vector of the synthetic store (dim 16, float32)
    start = len(data) - 7 * vec_bytes  # inside a stored vector
    data[start : start + 64] = np.full(16, np.inf, dtype=np.float32).tobytes()
    faiss_file.write_bytes(bytes(data))
    v = mess("index", "-d", "syn", "--layers", "1", "--verify")
    assert v.exit_code == 1 and "checksum mismatch" in v.stdout
    r = mess("recommend", "-d", "syn", "--track", "c0/track 000", "--layer", "1", "-f", "json")
    assert r.exit_code == 0, r.output
    assert "checksum mismatch" in r.stderr and "rebuilding" in r.stderr
    sims = [x["similarity"] for x in json.loads(r.stdout)["recommendations"]]
    assert all(np.isfinite(sims)) and max(sims) < 0.9999
    assert mess("index", "-d", "syn", "--layers", "1", "--verify").exit_code == 0


def test_non_finite_similarities_are_never_returned(isolated_env, monkeypatch):
    import numpy as np

    from messai.search.recommend import LayerBasedRecommender

    make_store(isolated_env, "syn", n_tracks=20)
    rec = LayerBasedRecommender("syn", home=isolated_env, on_notice=lambda m: None)
    index = rec.index(1)
    real = index.search_normalized

    def damaged(*args, **kw):  # a vector gone inf in memory: its similarity is inf or NaN
        sims, pos = real(*args, **kw)
        sims = np.array(sims, dtype=np.float32)
        sims[0, 0], sims[0, 1] = np.inf, np.nan
        return sims, pos

    monkeypatch.setattr(index, "search_normalized", damaged)
    result = rec.recommend_by_id("c0/track 000", "spectral_brightness", 5, layer=1)
    assert all(np.isfinite(r.similarity) for r in result.recommendations)
    assert len(result.recommendations) == 3


def test_every_argument_and_option_has_help():
    import typer.main

    root = typer.main.get_command(app)
    missing = []

    def walk(cmd, path):
        for p in cmd.params:
            if p.name in ("help",) or getattr(p, "hidden", False):
                continue
            if not (getattr(p, "help", None) or "").strip():
                missing.append(f"{path} {p.name}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(root, "mess")
    assert missing == []


def test_benchmark_similarity_with_k_at_the_store_size_says_so(isolated_env):
    make_store(isolated_env, "syn", n_tracks=8)
    r = mess("benchmark", "similarity", "-d", "syn", "-k", "10", "--layers", "0", "-f", "json")
    assert r.exit_code == 0, r.output
    assert "meaningless" in r.stderr


def test_too_few_groups_suggests_folds():
    import numpy as np

    from messai.analysis.splits import group_kfold
    from messai.errors import MessError

    with pytest.raises(MessError, match="--folds 4"):
        group_kfold(np.repeat(np.arange(4), 3), 5, seed=0)


def test_heatmap_labels_what_its_right_panel_shows():
    from types import SimpleNamespace

    from messai.plots import selectivity_label

    def res(b):
        return SimpleNamespace(targets={"t": SimpleNamespace(selectivity_baseline=b)})

    assert selectivity_label(res("random_model")) == "R² − random-model R²"
    assert "permuted" in selectivity_label(res("permuted"))


def test_five_files_with_one_id_are_all_named(tmp_path):
    from messai.datasets import scan

    names = ["clip.wav", "clip.flac", "clip.aiff", "clip.ogg", "clip.WAV"]
    for n in names[:4]:
        write_audio(tmp_path / n, 1.0)
    tracks = scan(tmp_path, kind="folder")
    assert not tracks and len(tracks.rejected) == 4
    for line in tracks.rejected:
        assert "(all 4 skipped)" in line
        assert sum(n in line for n in names[:4]) == 4  # itself and the three others


def test_nan_is_reported_where_it_is(tmp_path):
    import numpy as np
    import soundfile as sf

    from messai.errors import AudioError
    from messai.features.decode import stream_mono

    x = np.zeros(24000 * 6, dtype=np.float32)
    x[24000] = np.nan  # at 1.0 s
    sf.write(str(tmp_path / "n.wav"), x, 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"at 1\.00 s"):
        list(stream_mono(tmp_path / "n.wav", 24000))


def test_extraction_benchmark_warms_both_paths_up(tiny_ckpt, monkeypatch):
    from messai.bench.extraction import bench_extraction
    from messai.features.extractor import FeatureExtractor

    runs = []
    real = FeatureExtractor.run

    def counting(self, *a, **kw):
        runs.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(FeatureExtractor, "run", counting)
    bench_extraction(model=str(tiny_ckpt), n_files=1, seconds_per_file=3.0, repeats=1)
    assert len(runs) == 2  # one untimed warm-up, one timed


@pytest.fixture()
def at_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # the console follows COLUMNS (one per value)
    yield


def assert_fits_80(text: str) -> None:
    assert text.strip()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text, text


def test_tables_fit_80_columns_without_cutting_ids_or_numbers(isolated_env, at_80_columns):
    make_store(isolated_env, "syn", n_tracks=12)
    tracks = mess("tracks", "-d", "syn")
    assert_fits_80(tracks.stdout)
    for tid in json.loads(mess("tracks", "-d", "syn", "-f", "json").stdout):
        assert tid["track_id"] in tracks.stdout  # whole, on one line
    assert "seconds" in tracks.stdout and "segments" in tracks.stdout
    datasets = mess("datasets")
    assert_fits_80(datasets.stdout)
    assert "synthetic/model" in datasets.stdout and "4×16 float32" in datasets.stdout
    rec = mess("recommend", "-d", "syn", "--track", "c0/track 000", "--layer", "1")
    assert_fits_80(rec.stdout.split("\n", 1)[1])  # the title line may wrap, the table not
    as_json = json.loads(
        mess(
            "recommend", "-d", "syn", "--track", "c0/track 000", "--layer", "1", "-f", "json"
        ).stdout
    )
    for r in as_json["recommendations"]:
        assert r["track_id"] in rec.stdout and f"{r['similarity']:.4g}" in rec.stdout
    bench = mess("benchmark", "similarity", "-d", "syn", "--layers", "0", "-k", "3")
    assert_fits_80(bench.stdout.split("\n", 1)[1])
    for number in ("cosine", "euclidean", "center"):
        assert number in bench.stdout


def test_probe_table_pages_layers_as_rows_at_80_columns(tmp_path, tiny_ckpt, at_80_columns):
    lib = tmp_path / "lib"
    for i in range(6):
        write_audio(lib / f"t{i}.wav", 6.0, freq=200 + 70 * i, seed=i)
    r = mess("extract", lib, "-d", "p", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    r = mess("probe", "-d", "p", "--folds", "3", "--bootstrap", "20", "--no-save")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    assert "(1/2)" in out and "layer" in out  # paged, layers as rows
    for name in ("spectral_centroid", "chroma_entropy", "zero_crossing_rate"):
        assert name in out  # whole in the summary table


def test_tsv_without_header_for_scripts(isolated_env):
    make_store(isolated_env, "syn", n_tracks=6)
    with_header = mess("tracks", "-d", "syn", "-f", "tsv").stdout.splitlines()
    without = mess("tracks", "-d", "syn", "-f", "tsv", "--no-header").stdout.splitlines()
    assert without == with_header[1:] and with_header[0].startswith("track_id\t")
    for args in (
        ["datasets"],
        ["aspects", "-d", "syn"],
        ["recommend", "-d", "syn", "--track", "c0/track 000", "--layer", "1"],
    ):
        full = mess(*args, "-f", "tsv").stdout.splitlines()
        bare = mess(*args, "-f", "tsv", "--no-header").stdout.splitlines()
        assert bare == full[1:], args


def test_run_summaries_go_to_stderr(tmp_path, tiny_ckpt):
    lib = tmp_path / "lib"
    write_audio(lib / "a.wav", 3.0)
    r = mess("extract", lib, "-d", "s", "--model", tiny_ckpt, "--device", "cpu")
    assert r.exit_code == 0 and r.stdout == "" and "1 extracted" in r.stderr
    r = mess("targets", "-d", "s")
    assert r.exit_code == 0 and r.stdout == "" and "targets computed" in r.stderr


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [(["recomend"], "'recommend'"), (["store", "compcat"], "'compact'")],
)
def test_a_misspelt_command_is_suggested_once(argv, suggestion):
    """click 8.2+ and Typer both said "Did you mean …?"; the line had it twice."""
    proc = subprocess.run(
        [sys.executable, "-m", "messai", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("Did you mean") == 1 and suggestion in proc.stderr
