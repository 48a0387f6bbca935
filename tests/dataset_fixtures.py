"""Miniature copies of real dataset layouts: tiny generated audio under the real file names.

Each ``make_*`` builder writes a tree under ``root`` and returns the scan it expects:
``{track_id: labels}``. Used by tests/test_datasets.py (no conftest: plain helpers).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 8_000

_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


def write_tone(path: Path, *, seconds: float = 0.5, freq: float = 440.0) -> Path:
    """A short sine at 8 kHz, in the format the extension names (wav, flac, ogg, mp3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    fmt, subtype = _FORMATS[path.suffix.lower()]
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), SAMPLE_RATE, format=fmt, subtype=subtype)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], *, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------- folder


def make_folder(root: Path) -> dict[str, dict[str, str]]:
    """Nested folders, unicode names with spaces, hidden and non-audio files, a metadata.csv
    that labels some tracks (one with an empty cell) and leaves one unlabelled."""
    write_tone(root / "piano" / "bach_bwv846_prelude.wav")
    write_tone(root / "piano" / "Dvořák – Humoresque Nr 7.flac")
    write_tone(root / "strings" / "late 19th c" / "Fauré Élégie op 24.ogg")
    write_tone(root / "loose take.WAV")
    write_tone(root / ".hidden.wav")
    write_tone(root / ".cache" / "ignored.wav")
    write_tone(root / "piano" / "._bach_bwv846_prelude.wav")  # macOS resource fork
    (root / "notes.txt").write_text("not audio")
    (root / "piano" / "bach_bwv846_prelude.mid").write_bytes(b"MThd")
    write_csv(
        root / "metadata.csv",
        ["track_id", "composer", "work", "instrument"],
        [
            ["piano/bach_bwv846_prelude", "Bach", "BWV 846", "piano"],
            ["piano/Dvořák – Humoresque Nr 7", "Dvořák", "Op. 101 No. 7", "piano"],
            ["strings/late 19th c/Fauré Élégie op 24", "Fauré", "", "cello"],
        ],
    )
    return {
        "loose take": {},
        "piano/bach_bwv846_prelude": {"composer": "Bach", "work": "BWV 846", "instrument": "piano"},
        "piano/Dvořák – Humoresque Nr 7": {
            "composer": "Dvořák",
            "work": "Op. 101 No. 7",
            "instrument": "piano",
        },
        "strings/late 19th c/Fauré Élégie op 24": {"composer": "Fauré", "instrument": "cello"},
    }


# ------------------------------------------------------------------------------------------- smd

#: Real SMD recordings (Composer_Work-Movement_Performer_Date-SMD), some without a movement.
SMD_NAMES = (
    "Bach_BWV849-01_001_20090916-SMD",
    "Bach_BWV849-02_001_20090916-SMD",
    "Beethoven_Op027No1-01_003_20090916-SMD",
    "Beethoven_Op027No1-02_003_20090916-SMD",
    "Brahms_Op005-01_002_20110315-SMD",
    "Chopin_Op028-01_003_20100611-SMD",
    "Chopin_Op028-15_006_20100611-SMD",
    "Haydn_Hob017No4_003_20110315-SMD",
    "Liszt_AnnesDePelerinage-LectureDante_002_20110315-SMD",
    "Mozart_KV265_006_20110315-SMD",
    "Rachmaninoff_Op036-03_003_20110315-SMD",
    "Ravel_JeuxDEau_008_20110315-SMD",
    "Skryabin_Op008No08_003_20110315-SMD",
)


def make_smd(root: Path) -> dict[str, dict[str, str]]:
    """The official MP3 layout (flat, MIDI beside) with some files converted to WAV in a subfolder."""
    for i, name in enumerate(SMD_NAMES):
        ext = ".mp3" if i % 3 else ".wav"
        folder = root / "SMD-MIDI-Audio-Piano-Music" / ("wav_44100" if ext == ".wav" else "mp3")
        write_tone(folder / f"{name}{ext}", freq=220.0 + 20 * i)
        (root / "midi" / f"{name}.mid").parent.mkdir(parents=True, exist_ok=True)
        (root / "midi" / f"{name}.mid").write_bytes(b"MThd")
    write_tone(root / ".DS_Store.wav")  # hidden: never looked at
    return {
        "Bach_BWV849-01": _smd("Bach", "Bach_BWV849", "01", "001", "20090916"),
        "Bach_BWV849-02": _smd("Bach", "Bach_BWV849", "02", "001", "20090916"),
        "Beethoven_Op027No1-01": _smd("Beethoven", "Beethoven_Op027No1", "01", "003", "20090916"),
        "Beethoven_Op027No1-02": _smd("Beethoven", "Beethoven_Op027No1", "02", "003", "20090916"),
        "Brahms_Op005-01": _smd("Brahms", "Brahms_Op005", "01", "002", "20110315"),
        "Chopin_Op028-01": _smd("Chopin", "Chopin_Op028", "01", "003", "20100611"),
        "Chopin_Op028-15": _smd("Chopin", "Chopin_Op028", "15", "006", "20100611"),
        "Haydn_Hob017No4": _smd("Haydn", "Haydn_Hob017No4", None, "003", "20110315"),
        "Liszt_AnnesDePelerinage-LectureDante": _smd(
            "Liszt", "Liszt_AnnesDePelerinage-LectureDante", None, "002", "20110315"
        ),
        "Mozart_KV265": _smd("Mozart", "Mozart_KV265", None, "006", "20110315"),
        "Rachmaninoff_Op036-03": _smd(
            "Rachmaninoff", "Rachmaninoff_Op036", "03", "003", "20110315"
        ),
        "Ravel_JeuxDEau": _smd("Ravel", "Ravel_JeuxDEau", None, "008", "20110315"),
        "Skryabin_Op008No08": _smd("Skryabin", "Skryabin_Op008No08", None, "003", "20110315"),
    }


def _smd(composer: str, work: str, movement: str | None, performer: str, date: str) -> dict:
    labels = {
        "composer": composer,
        "work": work,
        "movement": movement,
        "performer": performer,
        "date": date,
    }
    return {k: v for k, v in labels.items() if v}


# --------------------------------------------------------------------------------------- maestro

MAESTRO_HEADER = [
    "canonical_composer",
    "canonical_title",
    "split",
    "year",
    "midi_filename",
    "audio_filename",
    "duration",
]

#: Real MAESTRO v3 rows (durations as in the CSV; the audio here is 0.5 s of sine).
MAESTRO_ROWS = [
    [
        "Alban Berg",
        "Sonata Op. 1",
        "train",
        "2018",
        "2018/MIDI-Unprocessed_Chamber3_MID--AUDIO_10_R3_2018_wav--1.midi",
        "2018/MIDI-Unprocessed_Chamber3_MID--AUDIO_10_R3_2018_wav--1.wav",
        "698.661160312",
    ],
    [
        "Alban Berg",
        "Sonata Op. 1",
        "train",
        "2008",
        "2008/MIDI-Unprocessed_03_R2_2008_01-03_ORIG_MID--AUDIO_03_R2_2008_wav--2.midi",
        "2008/MIDI-Unprocessed_03_R2_2008_01-03_ORIG_MID--AUDIO_03_R2_2008_wav--2.wav",
        "759.518471768",
    ],
    [
        "Frédéric Chopin",
        "Ballade No. 1 in G Minor, Op. 23",
        "validation",
        "2009",
        "2009/MIDI-Unprocessed_07_R1_2009_01-02_ORIG_MID--AUDIO_07_R1_2009_07_R1_2009_01_WAV.midi",
        "2009/MIDI-Unprocessed_07_R1_2009_01-02_ORIG_MID--AUDIO_07_R1_2009_07_R1_2009_01_WAV.wav",
        "571.4",
    ],
    [
        "Johann Sebastian Bach",
        "Prelude and Fugue in A Minor, WTC I, BWV 865",
        "test",
        "2004",
        "2004/MIDI-Unprocessed_SMF_02_R1_2004_01-05_ORIG_MID--AUDIO_02_R1_2004_05_Track05_wav.midi",
        "2004/MIDI-Unprocessed_SMF_02_R1_2004_01-05_ORIG_MID--AUDIO_02_R1_2004_05_Track05_wav.wav",
        "338.1",
    ],
    [
        "Franz Schubert",
        "Sonata in A Major, D. 959",
        "train",
        "2017",
        "2017/MIDI-Unprocessed_066_PIANO066_MID--AUDIO-split_07-07-17_Piano-e_3-02_wav--3.midi",
        "2017/MIDI-Unprocessed_066_PIANO066_MID--AUDIO-split_07-07-17_Piano-e_3-02_wav--3.wav",
        "464.649433728",
    ],
]


def make_maestro(root: Path, *, rows: list[list[str]] | None = None) -> dict[str, dict[str, str]]:
    """``maestro-v3.0.0.csv`` plus year folders with audio (and MIDI) for every row."""
    rows = MAESTRO_ROWS if rows is None else rows
    write_csv(root / "maestro-v3.0.0.csv", MAESTRO_HEADER, rows)
    (root / "LICENSE").write_text("CC BY-NC-SA 4.0")
    expected = {}
    for composer, title, split, year, midi, audio, duration in rows:
        write_tone(root / audio)
        (root / midi).write_bytes(b"MThd")
        expected[audio.removesuffix(".wav")] = {
            "composer": composer,
            "title": title,
            "work": title,
            "split": split,
            "year": year,
            "duration": duration,
        }
    return expected


#: kind -> builder, for the contract tests.
BUILDERS = {"folder": make_folder, "smd": make_smd, "maestro": make_maestro}
