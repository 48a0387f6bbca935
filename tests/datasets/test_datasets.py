"""Dataset registry: contract tests over every registered dataset, then each dataset's rules."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import soundfile as sf

from messai import datasets
from messai.datasets import REGISTRY, TrackInfo, TrackList, detect_kind, folder, maestro, smd
from messai.errors import DatasetError
from tests.dataset_fixtures import (
    BUILDERS,
    MAESTRO_HEADER,
    MAESTRO_ROWS,
    make_folder,
    make_maestro,
    make_smd,
    write_csv,
    write_tone,
)

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


# ------------------------------------------------------------------------------------ contract


def test_every_builder_matches_a_registered_dataset():
    assert set(BUILDERS) == set(REGISTRY)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_module_shape(kind):
    mod = datasets.get(kind)
    assert kind == mod.NAME
    assert mod.DESCRIPTION and "\n" not in mod.DESCRIPTION and len(mod.DESCRIPTION) <= 100
    assert isinstance(mod.LABELS, tuple) and all(isinstance(x, str) for x in mod.LABELS)
    params = inspect.signature(mod.scan).parameters
    keyword_only = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert keyword_only == set(mod.OPTIONS)
    assert callable(mod.detect)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_scan_contract(kind, tmp_path):
    expected = BUILDERS[kind](tmp_path)
    tracks = datasets.scan(tmp_path, kind)
    assert isinstance(tracks, TrackList) and isinstance(tracks.warnings, list)
    assert all(isinstance(t, TrackInfo) for t in tracks)
    assert [t.track_id for t in tracks] == sorted(expected)
    assert {t.track_id: t.labels for t in tracks} == expected
    for t in tracks:
        assert datasets.validate_track_id(t.track_id) == t.track_id
        assert t.path.is_file() and t.path.is_absolute() == tmp_path.is_absolute()
        assert sf.info(t.path).frames > 0
        assert all(v for v in t.labels.values()), "unknown labels are left out, not empty"
        if REGISTRY[kind].LABELS:
            assert set(t.labels) <= set(REGISTRY[kind].LABELS)
        assert t.to_dict()["track_id"] == t.track_id
    assert REGISTRY[kind].detect(tmp_path)
    assert detect_kind(tmp_path) == kind
    assert [t.track_id for t in datasets.scan(tmp_path)] == sorted(expected)  # auto-detected


@pytest.mark.parametrize("kind", sorted(k for k in REGISTRY if k != "folder"))
def test_specific_kinds_do_not_claim_plain_folders(kind, tmp_path):
    make_folder(tmp_path)
    assert not REGISTRY[kind].detect(tmp_path)
    assert not REGISTRY[kind].detect(tmp_path / "missing")


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_missing_root_is_a_dataset_error(kind, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.scan(tmp_path / "nope", kind)


def test_imports_stay_light():
    code = "import sys, messai.datasets; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------------ registry


def test_get_unknown_kind_lists_known():
    with pytest.raises(DatasetError, match="unknown dataset kind 'mtg'.*folder, maestro, smd"):
        datasets.get("mtg")


def test_detect_kind_ambiguous_asks_for_kind(tmp_path):
    make_smd(tmp_path)
    write_csv(tmp_path / "maestro-v3.0.0.csv", MAESTRO_HEADER, [])
    with pytest.raises(DatasetError, match="several datasets.*--layout"):
        detect_kind(tmp_path)
    assert len(datasets.scan(tmp_path, "smd")) == 13


def test_detect_kind_defaults_to_folder_and_refuses_files(tmp_path):
    assert detect_kind(tmp_path) == "folder"
    write_tone(tmp_path / "a.wav")
    with pytest.raises(DatasetError, match="not a folder"):
        detect_kind(tmp_path / "a.wav")


def test_options_none_dropped_and_inapplicable_refused(tmp_path):
    make_folder(tmp_path)
    assert len(datasets.scan(tmp_path, "folder", split=None, limit=None)) == 4
    with pytest.raises(DatasetError, match="split do not apply to dataset kind 'folder'"):
        datasets.scan(tmp_path, "folder", split="train")


# -------------------------------------------------------------------------------------- folder


def test_folder_track_id_for_keeps_old_contract(tmp_path):
    assert folder.track_id_for(tmp_path / "a" / "b c.wav", tmp_path) == "a/b c"


def test_folder_without_metadata_has_no_labels(tmp_path):
    write_tone(tmp_path / "x" / "y.flac")
    tracks = folder.scan(tmp_path)
    assert [(t.track_id, t.labels) for t in tracks] == [("x/y", {})]
    assert tracks.warnings == []


def test_folder_unlabelled_tracks_kept_with_warning(tmp_path):
    make_folder(tmp_path)
    tracks = folder.scan(tmp_path)
    assert next(t for t in tracks if t.track_id == "loose take").labels == {}
    skipped, no_row = tracks.warnings
    assert "1 of 4 tracks have no row" in no_row
    # files that are not audio are listed, not dropped silently
    assert skipped.startswith("skipped 2 file(s) that are not audio") and ".mid (1)" in skipped


def test_folder_decomposed_unicode_file_names_match_metadata(tmp_path):
    write_tone(tmp_path / unicodedata.normalize("NFD", "Dvořák Humoreska.wav"))
    write_csv(tmp_path / "metadata.csv", ["track_id", "composer"], [["Dvořák Humoreska", "Dvořák"]])
    [track] = folder.scan(tmp_path)
    assert track.track_id == unicodedata.normalize("NFC", "Dvořák Humoreska")
    assert track.labels == {"composer": "Dvořák"}


def test_folder_same_id_twice_rejects_both_and_keeps_the_rest(tmp_path):
    write_tone(tmp_path / "x.wav")
    write_tone(tmp_path / "x.flac")
    write_tone(tmp_path / "y.wav")
    tracks = folder.scan(tmp_path)
    assert [t.track_id for t in tracks] == ["y"]
    assert len(tracks.rejected) == 2
    assert all("same track id 'x'" in line and "both skipped" in line for line in tracks.rejected)
    assert {line.split(": ")[0] for line in tracks.rejected} == {
        str(tmp_path / "x.wav"),
        str(tmp_path / "x.flac"),
    }


def test_folder_metadata_variants(tmp_path):
    """BOM, ids written with their extension, a reserved 'path' column, a trailing empty row."""
    write_tone(tmp_path / "a" / "one.wav")
    write_tone(tmp_path / "two.ogg")
    write_csv(
        tmp_path / "metadata.csv",
        ["track_id", "work", "path"],
        [["a/one.wav", "W1", "/elsewhere"], ["two", "W2", ""], ["", "", ""]],
        bom=True,
    )
    tracks = folder.scan(tmp_path)
    assert {t.track_id: t.labels for t in tracks} == {
        "a/one": {"work": "W1"},
        "two": {"work": "W2"},
    }
    assert any("column 'path' ignored" in w for w in tracks.warnings)


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (
            ["id", "composer"],
            [["x", "Bach"]],
            r"metadata\.csv: missing column\(s\) track_id \(found: id, composer\)",
        ),
        (
            ["track_id", "composer"],
            [["x", "Bach"], ["ghost", "Liszt"]],
            r"metadata\.csv: line 3: track_id 'ghost' has no audio file",
        ),
        (
            ["track_id", "composer"],
            [["x", "Bach"], ["x", "Bach"]],
            r"metadata\.csv: line 3: duplicate track_id 'x' \(first on line 2\)",
        ),
        (["track_id", "composer"], [[" ", "Bach"]], r"metadata\.csv: line 2: empty track_id"),
        (
            ["track_id", "work", "work"],
            [["x", "a", "b"]],
            r"metadata\.csv: duplicate column\(s\) work",
        ),
        (["track_id"], [["x", "extra"]], r"metadata\.csv: line 2: 2 cells but 1 columns"),
    ],
    ids=[
        "missing-column",
        "missing-audio",
        "duplicate-id",
        "empty-id",
        "duplicate-column",
        "extra-cells",
    ],
)
def test_folder_bad_metadata_messages(tmp_path, header, rows, message):
    write_tone(tmp_path / "x.wav")
    write_csv(tmp_path / "metadata.csv", header, rows)
    with pytest.raises(DatasetError, match=message) as info:
        folder.scan(tmp_path)
    assert "\n" not in str(info.value)


def test_folder_metadata_not_utf8_or_empty(tmp_path):
    write_tone(tmp_path / "x.wav")
    (tmp_path / "metadata.csv").write_bytes("track_id,composer\nx,Dvo\xf8\xe1k\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        folder.scan(tmp_path)
    (tmp_path / "metadata.csv").write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        folder.scan(tmp_path)


# ----------------------------------------------------------------------------------------- smd


def test_smd_parse_name():
    name = smd.parse_name("Beethoven_Op027No1-01_003_20090916-SMD")
    assert (name.base_id, name.labels()["work"], name.movement) == (
        "Beethoven_Op027No1-01",
        "Beethoven_Op027No1",
        "01",
    )
    assert smd.parse_name("Ravel_JeuxDEau_008_20110315-SMD").movement is None
    assert smd.parse_name("Beethoven_Op027No1-01") is None
    assert smd.parse_name("Beethoven_Op027No1-01_003_20090916") is None


def test_smd_shared_ids_get_performer_then_date(tmp_path):
    for name in (
        "Chopin_Op028-01_003_20100611-SMD",
        "Chopin_Op028-01_005_20100611-SMD",
        "Chopin_Op028-01_005_20110315-SMD",
        "Chopin_Op028-04_003_20100611-SMD",
    ):
        write_tone(tmp_path / f"{name}.mp3")
    tracks = smd.scan(tmp_path)
    assert [t.track_id for t in tracks] == [
        "Chopin_Op028-01_003",
        "Chopin_Op028-01_005_20100611",
        "Chopin_Op028-01_005_20110315",
        "Chopin_Op028-04",
    ]
    assert {t.labels["work"] for t in tracks} == {"Chopin_Op028"}


def test_smd_same_recording_twice_is_an_error(tmp_path):
    write_tone(tmp_path / "mp3" / "Mozart_KV265_006_20110315-SMD.mp3")
    write_tone(tmp_path / "wav" / "Mozart_KV265_006_20110315-SMD.wav")
    with pytest.raises(DatasetError, match="same recording as .*Mozart_KV265_006_20110315-SMD"):
        smd.scan(tmp_path)


def test_smd_bad_names_skipped_with_warning(tmp_path):
    make_smd(tmp_path)
    write_tone(tmp_path / "Bach_BWV849-01_001_20090916-SMD (copy).wav")
    tracks = smd.scan(tmp_path)
    assert len(tracks) == 13
    assert (
        len(tracks.warnings) == 1 and "(copy).wav: skipped, not an SMD name" in tracks.warnings[0]
    )


def test_smd_detection_needs_a_majority(tmp_path):
    write_tone(tmp_path / "Bach_BWV849-01_001_20090916-SMD.wav")
    write_tone(tmp_path / "my song.wav")
    write_tone(tmp_path / "other song.wav")
    assert not smd.detect(tmp_path)
    assert detect_kind(tmp_path) == "folder"


def test_smd_no_smd_files_is_an_error(tmp_path):
    write_tone(tmp_path / "song.wav")
    with pytest.raises(DatasetError, match="no SMD audio files"):
        smd.scan(tmp_path)


# ------------------------------------------------------------------------------------- maestro


def test_maestro_split_and_limit(tmp_path):
    make_maestro(tmp_path)
    train = maestro.scan(tmp_path, split="train")
    assert [t.labels["year"] for t in train] == ["2008", "2017", "2018"]  # sorted by track id
    assert {t.labels["split"] for t in train} == {"train"}
    first_two = maestro.scan(tmp_path, limit=2)  # first rows of the CSV, returned in id order
    assert [t.track_id for t in first_two] == [
        "2008/MIDI-Unprocessed_03_R2_2008_01-03_ORIG_MID--AUDIO_03_R2_2008_wav--2",
        "2018/MIDI-Unprocessed_Chamber3_MID--AUDIO_10_R3_2018_wav--1",
    ]
    [test] = datasets.scan(tmp_path, "maestro", split="test", limit=5)
    assert test.labels["composer"] == "Johann Sebastian Bach"
    assert test.labels["work"] == "Prelude and Fugue in A Minor, WTC I, BWV 865"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split": "dev"}, "unknown MAESTRO split 'dev'"),
        ({"limit": 0}, "limit must be"),
        ({"limit": "3"}, "limit must be"),
    ],
)
def test_maestro_bad_options(tmp_path, options, message):
    make_maestro(tmp_path)
    with pytest.raises(DatasetError, match=message):
        maestro.scan(tmp_path, **options)


def test_maestro_missing_audio_skipped_with_warning(tmp_path):
    make_maestro(tmp_path)
    shutil.rmtree(tmp_path / "2018")
    tracks = maestro.scan(tmp_path)
    assert len(tracks) == 4
    assert len(tracks.warnings) == 1
    assert "skipped 1 rows whose audio is missing" in tracks.warnings[0]
    assert "2018/MIDI-Unprocessed_Chamber3" in tracks.warnings[0]
    assert len(maestro.scan(tmp_path, limit=4)) == 4  # limit counts tracks that exist


def test_maestro_no_audio_at_all_is_an_error(tmp_path):
    write_csv(tmp_path / "maestro-v3.0.0.csv", MAESTRO_HEADER, MAESTRO_ROWS)
    with pytest.raises(DatasetError, match="none of the 5 audio files .* MIDI-only download"):
        maestro.scan(tmp_path)


def test_maestro_converted_audio_is_found(tmp_path):
    make_maestro(tmp_path, rows=MAESTRO_ROWS[:1])
    wav = tmp_path / MAESTRO_ROWS[0][5]
    wav.unlink()
    write_tone(wav.with_suffix(".flac"))
    [track] = maestro.scan(tmp_path)
    assert track.path.suffix == ".flac" and track.track_id == MAESTRO_ROWS[0][5][:-4]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (
            MAESTRO_HEADER[:-2],
            [],
            r"maestro-v3\.0\.0\.csv: missing column\(s\) audio_filename, duration",
        ),
        (MAESTRO_HEADER, [MAESTRO_ROWS[0], MAESTRO_ROWS[0]], r"line 3: duplicate audio_filename"),
        (MAESTRO_HEADER, [[*MAESTRO_ROWS[0][:5], "", "1.0"]], r"line 2: empty audio_filename"),
        (MAESTRO_HEADER, [[*MAESTRO_ROWS[0][:5], "../x.wav", "1.0"]], r"line 2: invalid track id"),
    ],
    ids=["missing-columns", "duplicate", "empty-audio", "escaping-path"],
)
def test_maestro_bad_csv_messages(tmp_path, header, rows, message):
    make_maestro(tmp_path, rows=MAESTRO_ROWS[:1])
    write_csv(tmp_path / "maestro-v3.0.0.csv", header, rows)
    with pytest.raises(DatasetError, match=message):
        maestro.scan(tmp_path)


def test_maestro_v2_csv_detected(tmp_path):
    make_maestro(tmp_path)
    (tmp_path / "maestro-v3.0.0.csv").rename(tmp_path / "maestro-v2.0.0.csv")
    assert detect_kind(tmp_path) == "maestro"
    assert len(datasets.scan(tmp_path)) == 5


# ---------------------------------------------------------------------------------------- demo


def test_demo_folder_scans_with_labels():
    tracks = datasets.scan(DEMO)
    assert tracks.warnings == [
        "skipped 2 file(s) that are not audio: .md (1), .py (1); first: README.md"
    ]
    assert len(tracks) >= 12
    for t in tracks:
        assert {"composer", "work", "instrument"} <= set(t.labels), t.track_id
        assert t.track_id == f"{t.labels['instrument']}/{t.labels['work']}"
    assert len({t.labels["work"] for t in tracks}) >= 4
    assert len({t.labels["instrument"] for t in tracks}) >= 3


def test_demo_audio_is_small_24k_mono_and_decodes():
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 8 * 1024 * 1024
    for t in datasets.scan(DEMO):
        audio, sr = sf.read(t.path, dtype="float32", always_2d=True)
        assert sr == 24_000 and audio.shape[1] == 1, t.track_id
        assert 14.0 <= audio.shape[0] / sr <= 26.0
        assert 0.01 < abs(audio).max() <= 1.0
