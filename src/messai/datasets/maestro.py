"""MAESTRO (v3.0.0; v2 has the same CSV): piano performances listed in ``maestro-v3.0.0.csv``.

The root holds the CSV (columns canonical_composer, canonical_title, split, year, midi_filename,
audio_filename, duration) and the year folders it points into (``2004/MIDI-Unprocessed_...wav``).

Track id: ``audio_filename`` without its extension (``2004/MIDI-Unprocessed_..._wav``). When the
listed file is missing but the same path with another audio extension exists (a FLAC or MP3
conversion), that file is used. Labels: composer, title, work (= title, so ``--group-by work``
works), split, year, duration (seconds, as written in the CSV).

Options: ``split`` ("train", "validation" or "test") keeps that split only; ``limit`` keeps the
first N tracks in CSV order after filtering and after skipping missing audio. The result is
sorted by track id, like every scan.

Rows whose audio file is missing are skipped, with one summary line in the scan's ``warnings``:
a partial download (or a subset copied for a quick run) still scans. When *no* listed audio
exists (the MIDI-only download, or a wrong folder) it is a DatasetError. Missing columns,
duplicate audio_filename rows and empty audio_filename cells are DatasetErrors naming the line.
"""

from __future__ import annotations

import re
from pathlib import Path

from messai.datasets.base import (
    AUDIO_EXTENSIONS,
    TrackInfo,
    TrackList,
    check_root,
    read_csv,
    validate_track_id,
)
from messai.errors import DatasetError

NAME = "maestro"
DESCRIPTION = "MAESTRO v3 piano performances listed in maestro-v3.0.0.csv (year folders)."
LABELS: tuple[str, ...] = ("composer", "title", "work", "split", "year", "duration")
OPTIONS: tuple[str, ...] = ("split", "limit")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
COLUMNS: tuple[str, ...] = (
    "canonical_composer",
    "canonical_title",
    "split",
    "year",
    "midi_filename",
    "audio_filename",
    "duration",
)
_CSV = re.compile(r"^maestro-v(\d+)(?:\.(\d+))?(?:\.(\d+))?\.csv$")


def find_csv(root: Path) -> Path | None:
    """The MAESTRO CSV at ``root`` (``maestro-v3.0.0.csv``; the newest version if several)."""
    found = []
    for path in Path(root).glob("maestro-v*.csv"):
        m = _CSV.match(path.name)
        if m and path.is_file():
            found.append((tuple(int(g or 0) for g in m.groups()), path))
    return max(found)[1] if found else None


def detect(root: Path) -> bool:
    """True when ``root`` holds a ``maestro-v*.csv``."""
    return Path(root).is_dir() and find_csv(root) is not None


def scan(root: Path, *, split: str | None = None, limit: int | None = None) -> TrackList:
    """MAESTRO tracks under ``root`` whose audio exists, optionally one split / the first N."""
    root = check_root(root)
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown MAESTRO split {split!r}; use one of {', '.join(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive whole number, got {limit!r}")
    csv_path = find_csv(root)
    if csv_path is None:
        raise DatasetError(f"{root}: no maestro-v3.0.0.csv here; point at the MAESTRO folder")
    table = read_csv(csv_path, required=COLUMNS)
    tracks: list[TrackInfo] = []
    missing: list[str] = []
    listed = 0
    first_line: dict[str, int] = {}
    for line, row in table.rows:
        audio = row.get("audio_filename", "").replace("\\", "/")
        if not audio:
            raise DatasetError(f"{csv_path}: line {line}: empty audio_filename")
        try:
            tid = validate_track_id(Path(audio).with_suffix("").as_posix())
        except DatasetError as exc:
            raise DatasetError(f"{csv_path}: line {line}: {exc}") from None
        if tid in first_line:
            raise DatasetError(
                f"{csv_path}: line {line}: duplicate audio_filename {audio!r} "
                f"(first on line {first_line[tid]})"
            )
        first_line[tid] = line
        if split is not None and row.get("split") != split:
            continue
        listed += 1
        if limit is not None and len(tracks) >= limit:
            continue
        path = _find_audio(root / audio)
        if path is None:
            missing.append(audio)
            continue
        tracks.append(TrackInfo(tid, path, _labels(row)))
    if not tracks:
        what = f"split {split!r}" if split else "the CSV"
        if listed == 0:
            raise DatasetError(f"{csv_path}: no rows in {what}")
        raise DatasetError(
            f"{root}: none of the {listed} audio files listed in {what} exist (first: "
            f"{missing[0]}); is this the MIDI-only download, or the wrong folder?"
        )
    warnings = []
    if missing:
        warnings.append(
            f"{csv_path}: skipped {len(missing)} rows whose audio is missing under {root} "
            f"(first: {missing[0]})"
        )
    return TrackList(sorted(tracks, key=lambda t: t.track_id), warnings=warnings)


def _labels(row: dict[str, str]) -> dict[str, str]:
    labels = {
        "composer": row.get("canonical_composer", ""),
        "title": row.get("canonical_title", ""),
        "work": row.get("canonical_title", ""),
        "split": row.get("split", ""),
        "year": row.get("year", ""),
        "duration": row.get("duration", ""),
    }
    return {k: v for k, v in labels.items() if v}


def _find_audio(path: Path) -> Path | None:
    """``path`` if it exists, else the same path with another audio extension, else None."""
    if path.is_file():
        return path
    for ext in sorted(AUDIO_EXTENSIONS):
        alt = path.with_suffix("." + ext)
        if alt.is_file():
            return alt
    return None
