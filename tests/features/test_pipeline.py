"""`mess extract` end to end: numbers against an independent forward, resumability, bad input,
locking, crash safety."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from messai.cli import app
from messai.errors import MessError
from messai.features.store import FeatureStore
from tests.conftest import tone, write_audio
from tests.reference_forward import reference_hidden_states

runner = CliRunner()


def mess(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def reference_windows(path: Path, *, segment=5.0, hop=5.0, minimum=1.0, rate=24000):
    """Independent windowing: whole-file decode, channel mean, one resample call, plain loop."""
    import torchaudio.functional as AF

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(data.mean(axis=1))
    if sr != rate:
        x = AF.resample(x, sr, rate)
    x = x.numpy()
    seg, hp, mn = round(segment * rate), round(hop * rate), round(minimum * rate)
    out, start = [], 0
    while start + seg <= len(x):
        out.append(x[start : start + seg])
        start += hp
    if len(x) - start >= mn and start < len(x):
        out.append(x[start:])
    return [(w - w.mean()) / np.sqrt(w.var() + 1e-7) for w in out]


@pytest.fixture()
def music_dir(tmp_path):
    d = tmp_path / "music"
    write_audio(d / "a.wav", 11.3, 44100, freq=330)  # 2 full windows + 1.3 s tail
    write_audio(d / "sub" / "b.flac", 5.0, 22050, freq=550, channels=2)  # exactly one window
    return d


def test_store_matches_independent_forward(music_dir, tiny_ckpt):
    r = mess(
        "extract",
        music_dir,
        "--dataset",
        "x",
        "--model",
        tiny_ckpt,
        "--device",
        "cpu",
        "--store-dtype",
        "float32",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    store = FeatureStore.open("x")
    assert store.track_ids() == ["a", "sub/b"]
    for tid, fname in [("a", "a.wav"), ("sub/b", "sub/b.flac")]:
        got = store.load(tid)
        wins = reference_windows(music_dir / fname)
        assert got["segments"].shape == (len(wins), 3, 32)
        for i, w in enumerate(wins):
            ref = reference_hidden_states(tiny_ckpt, torch.from_numpy(w[None].astype(np.float32)))
            ref = np.stack([s[0].mean(0).numpy() for s in ref])
            np.testing.assert_allclose(
                got["segments"][i], ref, atol=1e-4, rtol=0, err_msg=f"{tid} window {i}"
            )
        np.testing.assert_allclose(got["aggregated"], got["segments"].mean(0), atol=1e-6)
    assert list(store.load("a")["lengths"]) == [120000, 120000, round(1.3 * 24000)]
    model = store.model
    assert model["config_hash"] and model["revision"] == "local" and model["weights_sha256"]
    assert store.settings == {
        "sample_rate": 24000,
        "segment_seconds": 5.0,
        "hop_seconds": 5.0,
        "min_seconds": 1.0,
        "do_normalize": True,
        "store_dtype": "float32",
        "precision": "float32",
    }
    entry = store.entry("a")
    assert (
        entry.content_hash and entry.n_segments == 3 and abs(entry.duration_seconds - 11.3) < 1e-3
    )
    assert store.code_version


def test_python_api_matches_store(music_dir, tiny_ckpt):
    from messai import FeatureExtractor

    fx = FeatureExtractor(model=str(tiny_ckpt), device="cpu")
    out = fx.extract(music_dir / "a.wav", keep_raw=True)
    assert out["segments"].shape == (3, 3, 32) and out["aggregated"].shape == (3, 32)
    assert out["raw"].shape == (2, 3, 374, 32)  # full windows only: 5 s → 374 frames
    np.testing.assert_allclose(out["raw"].mean(2), out["segments"][:2], atol=1e-5)
    assert out["segments"].dtype == np.float32


def test_rerun_does_no_model_work_and_changed_file_is_redone(music_dir, tiny_ckpt, monkeypatch):
    args = [
        "extract",
        music_dir,
        "--dataset",
        "x",
        "--model",
        tiny_ckpt,
        "--device",
        "cpu",
        "--quiet",
    ]
    assert mess(*args).exit_code == 0
    before = {e.track_id: e for e in FeatureStore.open("x").iter_entries()}

    import messai.models.mert as mert

    def boom(*a, **k):
        raise AssertionError("model loaded on an up-to-date re-run")

    with monkeypatch.context() as m:
        m.setattr(mert, "load_mert", boom)
        r = runner.invoke(app, [str(a) for a in args[:-1]])
        assert r.exit_code == 0 and "2 up to date" in r.output
        # touching a file without changing its content: still no model work
        os.utime(music_dir / "a.wav", None)
        assert mess(*args).exit_code == 0
    # a changed file is re-extracted, the other one is not
    write_audio(music_dir / "a.wav", 6.0, 44100, freq=800)
    r = runner.invoke(app, [str(a) for a in args[:-1]])
    assert r.exit_code == 0 and "1 extracted, 1 up to date" in r.output
    after = {e.track_id: e for e in FeatureStore.open("x").iter_entries()}
    assert after["a"].content_hash != before["a"].content_hash and after["a"].n_segments == 2
    assert after["sub/b"].extracted_at == before["sub/b"].extracted_at
    r = runner.invoke(app, [str(a) for a in args[:-1]] + ["--force"])
    assert "2 extracted" in r.output


def test_bad_input_is_reported_and_skipped(tmp_path, tiny_ckpt):
    d = tmp_path / "in"
    write_audio(d / "good.wav", 3.0, 24000)
    (d / "empty.wav").write_bytes(b"")
    (d / "text.flac").write_text("hello, not audio\n" * 20)
    (d / "fake.mp3").write_bytes(b"\x00" * 4000)
    write_audio(d / "short.wav", 0.4, 24000)
    nan = tone(3.0, 24000)
    nan[30000] = np.nan
    sf.write(str(d / "nan.wav"), nan, 24000, subtype="FLOAT")
    write_audio(d / "trunc.flac", 6.0, 44100, freq=300)
    raw = (d / "trunc.flac").read_bytes()
    (d / "trunc.flac").write_bytes(raw[: len(raw) // 2])
    sf.write(str(d / "silent.wav"), np.zeros((48000, 2), np.float32), 24000)
    sf.write(str(d / "six channels.wav"), tone(2.5, 48000, channels=6), 48000)
    write_audio(d / "odd rate ünïcödé.wav", 2.5, 11025)
    write_audio(d / "coprime.wav", 2.0, 44101)
    r = runner.invoke(
        app,
        ["extract", str(d), "--dataset", "bad", "--model", str(tiny_ckpt), "--device", "cpu", "-q"],
    )
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    for name in ["empty.wav", "text.flac", "fake.mp3", "short.wav", "nan.wav", "trunc.flac"]:
        hits = [ln for ln in lines if ln.startswith(str(d / name) + ": ")]
        assert len(hits) == 1, (name, r.output)
    store = FeatureStore.open("bad")
    ok = {"good", "silent", "six channels", "odd rate ünïcödé", "coprime"}
    assert set(store.track_ids()) == ok
    for tid in ok:
        data = store.load(tid)
        assert np.isfinite(data["segments"]).all(), tid
        assert all(np.isfinite(v).all() for v in data["targets"].values()), tid
    assert store.entry("coprime").n_segments == 1
    failed = {row["track_id"] for row in store.track_rows() if row["status"] != "ok"}
    assert failed == {"empty", "text", "fake", "short", "nan", "trunc"}


def test_second_writer_waits_then_gets_a_clear_message(music_dir, tiny_ckpt, monkeypatch):
    assert (
        mess(
            "extract", music_dir, "--dataset", "x", "--model", tiny_ckpt, "--device", "cpu", "-q"
        ).exit_code
        == 0
    )
    monkeypatch.setattr(FeatureStore, "LOCK_WAIT_SECONDS", 1.0)  # the default waits 10 minutes
    store = FeatureStore.open("x")
    with store.writer():
        r = runner.invoke(
            app,
            [
                "extract",
                str(music_dir),
                "--dataset",
                "x",
                "--model",
                str(tiny_ckpt),
                "--force",
                "-q",
            ],
        )
    assert r.exit_code == 2
    assert "waiting for another mess process" in r.output  # told while it waited
    assert r.output.strip().splitlines()[-1].startswith("error: ")
    assert "another mess process" in r.output.strip().splitlines()[-1]
    assert FeatureStore.open("x").track_ids() == ["a", "sub/b"]


def _mess_proc(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "messai", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_sigkill_mid_run_then_resume_completes(tmp_path, tiny_ckpt):
    d = tmp_path / "many"
    for i in range(8):
        write_audio(d / f"t{i}.wav", 12.0, 24000, freq=200 + 50 * i)
    p = _mess_proc(
        "extract",
        d,
        "--dataset",
        "k",
        "--model",
        tiny_ckpt,
        "--device",
        "cpu",
        "-q",
        "--batch-size",
        "1",
        env={"MESS_COMMIT_TRACKS": "1"},  # commit every track, so a kill finds some committed
    )
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        with contextlib.suppress(MessError):  # no store yet
            if len(FeatureStore.open("k").track_ids()) >= 2:
                break
        time.sleep(0.1)
    assert p.poll() is None, "the extraction finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    store = FeatureStore.open("k")
    n_before = len(store.track_ids())
    assert 2 <= n_before <= 8
    for tid in store.track_ids():  # everything listed is complete and loadable
        assert store.load(tid)["segments"].shape[0] == 3
    r = mess("extract", d, "--dataset", "k", "--model", tiny_ckpt, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert len(FeatureStore.open("k").track_ids()) == 8


def test_concurrent_extracts_never_corrupt(music_dir, tiny_ckpt):
    procs = [
        _mess_proc(
            "extract", music_dir, "--dataset", "c", "--model", tiny_ckpt, "--device", "cpu", "-q"
        )
        for _ in range(2)
    ]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for rc, err in results:
        if rc == 2:
            assert "another mess process" in err
    store = FeatureStore.open("c")
    assert store.track_ids() == ["a", "sub/b"]
    for tid in store.track_ids():
        assert np.isfinite(store.load(tid)["segments"]).all()


def test_incompatible_settings_need_force(music_dir, tiny_ckpt):
    assert (
        mess(
            "extract", music_dir, "--dataset", "x", "--model", tiny_ckpt, "--device", "cpu", "-q"
        ).exit_code
        == 0
    )
    r = runner.invoke(
        app,
        [
            "extract",
            str(music_dir),
            "--dataset",
            "x",
            "--model",
            str(tiny_ckpt),
            "--segment-seconds",
            "3",
            "-q",
        ],
    )
    assert r.exit_code == 2 and "--force" in r.output and "segment_seconds" in r.output


def test_tracks_and_datasets_listing(music_dir, tiny_ckpt):
    assert (
        mess(
            "extract", music_dir, "--dataset", "x", "--model", tiny_ckpt, "--device", "cpu", "-q"
        ).exit_code
        == 0
    )
    rows = json.loads(mess("tracks", "--dataset", "x", "--format", "json").stdout)
    assert [r["track_id"] for r in rows] == ["a", "sub/b"]
    assert rows[0]["n_segments"] == 3 and rows[0]["status"] == "ok"
    tsv = mess("tracks", "--dataset", "x", "--format", "tsv").stdout.splitlines()
    assert tsv[0].split("\t")[:4] == ["track_id", "duration_seconds", "n_segments", "status"]
    assert mess("tracks", "--dataset", "x", "--format", "ids").stdout.split() == ["a", "sub/b"]
    ds = json.loads(mess("datasets", "--format", "json").stdout)
    assert ds[0]["dataset"] == "x" and ds[0]["n_tracks"] == 2 and ds[0]["n_layers"] == 3


def test_float16_store_is_compact(music_dir, tiny_ckpt):
    assert (
        mess(
            "extract", music_dir, "--dataset", "h", "--model", tiny_ckpt, "--device", "cpu", "-q"
        ).exit_code
        == 0
    )
    store = FeatureStore.open("h")
    arrays = store.read_arrays(store.track_ids()[0])
    assert arrays["segments"].dtype == np.float16
    assert arrays["aggregated"].dtype == np.float32
    import lance

    windows = lance.dataset(str(store.root / "windows.lance"))
    assert str(windows.schema.field("layer_00").type.value_type) == "halffloat"


def test_unsupported_device_is_an_error(music_dir, tiny_ckpt):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = runner.invoke(
        app, ["extract", str(music_dir), "--model", str(tiny_ckpt), "--device", "cuda"]
    )
    assert r.exit_code == 2 and "no CUDA device" in r.output
    r = runner.invoke(
        app,
        [
            "extract",
            str(music_dir),
            "--model",
            str(tiny_ckpt),
            "--device",
            "cpu",
            "--precision",
            "float16",
        ],
    )
    assert r.exit_code == 2 and "float16" in r.output


def test_default_dataset_name_and_configured_dataset(tmp_path, tiny_ckpt):
    d = tmp_path / "My Music!"
    write_audio(d / "x.wav", 2.0, 24000)
    r = mess("extract", d, "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 0 and FeatureStore.open("My_Music").track_ids() == ["x"]
    with open(os.environ["MESS_CONFIG"], "w") as f:
        f.write(f'[datasets.mine]\npath = "{d}"\nkind = "folder"\n')
    r = mess("extract", "--dataset", "mine", "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 0 and FeatureStore.open("mine").track_ids() == ["x"]
    r = runner.invoke(app, ["extract", "--dataset", "unknown"])
    assert r.exit_code == 2 and "not configured" in r.output


def test_smd_tree_gets_ids_and_labels_and_probes_by_work(tmp_path, tiny_ckpt):
    d = tmp_path / "SMD"
    names = [
        "Bach_BWV849-01_001_20090916-SMD",
        "Bach_BWV849-02_001_20090916-SMD",
        "Chopin_Op028-01_003_20100611-SMD",
        "Chopin_Op028-04_003_20100611-SMD",
        "Ravel_JeuxDEau_008_20110315-SMD",
        "Mozart_KV265_006_20110315-SMD",
        "Brahms_Op005-01_002_20110315-SMD",
    ]
    for i, n in enumerate(names):
        write_audio(d / f"{n}.wav", 2.2, 22050, freq=200 + 60 * i, seed=i)
    r = mess("extract", d, "--model", tiny_ckpt, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    store = FeatureStore.open("SMD")
    assert store.source_kind == "smd"
    assert "Bach_BWV849-01" in store.track_ids() and "Ravel_JeuxDEau" in store.track_ids()
    assert store.labels("Chopin_Op028-04") == {
        "composer": "Chopin",
        "work": "Chopin_Op028",
        "movement": "04",
        "performer": "003",
        "date": "20100611",
    }
    r = runner.invoke(
        app,
        [
            "probe",
            "--dataset",
            "SMD",
            "--group-by",
            "work",
            "--folds",
            "3",
            "--bootstrap",
            "20",
            "-f",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_groups"] == 5


def test_windows_of_an_uncommitted_batch_are_never_read_and_are_collected(music_dir, tiny_ckpt):
    """A run killed after writing a batch's windows but before committing its tracks leaves
    windows no track points at: readers ignore them and the next writer removes them."""
    import lance

    args = ["extract", music_dir, "--dataset", "o", "--model", tiny_ckpt, "--device", "cpu", "-q"]
    assert mess(*args).exit_code == 0
    store = FeatureStore.open("o")
    before = store.load("a")["segments"]
    windows = lance.dataset(str(store.root / "windows.lance"))
    n_rows = windows.count_rows()
    orphan = windows.to_table(filter="track_id = 'a'").to_pydict()
    orphan["extraction_id"] = ["f" * 32] * len(orphan["extraction_id"])
    lance.write_dataset(
        pa.table(orphan, schema=windows.schema), str(store.root / "windows.lance"), mode="append"
    )
    np.testing.assert_array_equal(FeatureStore.open("o").load("a")["segments"], before)
    assert FeatureStore.open("o").read_windows()["segments"].shape[0] == n_rows
    r = mess(*args)
    assert r.exit_code == 0
    assert lance.dataset(str(store.root / "windows.lance")).count_rows() == n_rows


def test_maestro_tree_with_split_and_limit(tmp_path, tiny_ckpt):
    from tests.dataset_fixtures import make_maestro

    d = tmp_path / "maestro-v3.0.0"
    expected = make_maestro(d)
    for tid in expected:  # the fixture's tones are shorter than a window: make them 1.5 s
        write_audio(d / f"{tid}.wav", 1.5, 44100)
    train = sorted(t for t, lab in expected.items() if lab["split"] == "train")
    r = mess(
        "extract",
        d,
        "--dataset",
        "m",
        "--split",
        "train",
        "--limit",
        "1",
        "--model",
        tiny_ckpt,
        "--device",
        "cpu",
        "-q",
    )
    assert r.exit_code == 0, r.output
    store = FeatureStore.open("m")
    assert store.source_kind == "maestro"
    assert len(store.track_ids()) == 1 and store.track_ids()[0] in train
    labels = store.labels(store.track_ids()[0])
    assert labels["split"] == "train" and labels["work"] == labels["title"]


def test_layout_flag_and_deprecated_kind_alias(tmp_path, tiny_ckpt):
    """--layout names the dataset layout; --kind still works for one release, with a notice."""
    d = tmp_path / "plain"
    write_audio(d / "Bach_BWV849-01_001_20090916-SMD.wav", 2.2, 22050)
    r = mess("extract", d, "-d", "as-folder", "--layout", "folder", "--model", tiny_ckpt, "-q")
    assert r.exit_code == 0, r.output
    assert FeatureStore.open("as-folder").source_kind == "folder"
    assert FeatureStore.open("as-folder").track_ids() == ["Bach_BWV849-01_001_20090916-SMD"]
    r = mess("extract", d, "-d", "as-smd", "--kind", "smd", "--model", tiny_ckpt, "-q")
    assert r.exit_code == 0, r.output
    assert "--kind' is deprecated; use --layout" in r.stderr
    assert FeatureStore.open("as-smd").source_kind == "smd"
    assert FeatureStore.open("as-smd").track_ids() == ["Bach_BWV849-01"]
    r = mess("extract", d, "-d", "bad", "--layout", "nope", "--model", tiny_ckpt, "-q")
    assert r.exit_code != 0 and "nope" in r.output
