"""What every dataset module returns: tracks with ids, paths and labels; shared helpers."""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from messai.errors import DatasetError

#: File extensions mess treats as audio (lower case, without the dot). All decodable by soundfile.
#: Read by libsndfile (the fast path) ...
SNDFILE_EXTENSIONS = frozenset({"wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "aifc"})
#: ... and by FFmpeg through PyAV (iTunes AAC/ALAC, WMA, APE, WavPack, Matroska/WebM audio ...)
FFMPEG_EXTENSIONS = frozenset(
    {"m4a", "m4b", "mp4", "aac", "alac", "wma", "ape", "wv", "mka", "webm", "caf", "ac3", "dts"}
)
AUDIO_EXTENSIONS = SNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS

_BAD_ID = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class TrackInfo:
    """One track of a dataset: its id, the audio file, and label columns (composer, work, ...).

    ``labels`` holds only known values: a label that is unknown for this track is absent (never an
    empty string), so ``track.labels.get("work")`` is ``None`` for "no work label".
    """

    track_id: str
    path: Path
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "path": str(self.path), **self.labels}


class TrackList(list):
    """The result of a scan: a ``list[TrackInfo]`` sorted by track id, plus ``warnings`` and
    ``rejected``.

    ``warnings`` are one-line messages about things the scan skipped or could not use (a file name
    that does not parse, rows of a CSV whose audio is missing ...). ``rejected`` are audio files
    that cannot become tracks, as ``path: reason`` lines (two files with one id, an unusable
    name): extraction reports them as failed files. The library never prints either.
    """

    def __init__(
        self,
        tracks: Iterable[TrackInfo] = (),
        *,
        warnings: Iterable[str] = (),
        rejected: Iterable[str] = (),
    ) -> None:
        super().__init__(tracks)
        self.warnings: list[str] = list(warnings)
        self.rejected: list[str] = list(rejected)


def validate_track_id(track_id: str) -> str:
    """Return ``track_id`` if it is safe to use as a key; raise DatasetError otherwise.

    Ids are relative, '/'-separated, with no empty, '.' or '..' parts and no control characters
    or backslashes. They are never used as file names directly (the store hashes them), but a
    track id that could escape a folder is refused everywhere all the same.
    """
    if not track_id or len(track_id) > 1024:
        raise DatasetError(f"invalid track id {track_id!r}: empty or longer than 1024 characters")
    if _BAD_ID.search(track_id) or track_id.startswith("/"):
        raise DatasetError(f"invalid track id {track_id!r}: absolute or has control characters")
    if any(part in ("", ".", "..") for part in track_id.split("/")):
        raise DatasetError(f"invalid track id {track_id!r}: empty, '.' or '..' path component")
    return track_id


def normalize_text(text: str) -> str:
    """Unicode NFC and surrounding whitespace stripped: ids typed in a CSV match file names
    that a file system (macOS) stores decomposed."""
    return unicodedata.normalize("NFC", text).strip()


def is_audio(path: Path) -> bool:
    """True when ``path``'s extension is one of :data:`AUDIO_EXTENSIONS` (any case)."""
    return path.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS


def check_root(root: Path) -> Path:
    """``root`` as a Path; DatasetError when it is not an existing folder."""
    root = Path(root)
    if not root.is_dir():
        reason = "does not exist" if not root.exists() else "is not a folder"
        raise DatasetError(f"{root}: {reason}")
    return root


def iter_audio_files(root: Path, *, other: list[Path] | None = None) -> Iterator[Path]:
    """Audio files under ``root``, recursively, in a deterministic (sorted) order.

    Hidden files and folders (name starting with '.') are skipped, and so is everything below a
    hidden folder. Symbolic links to files are followed; links to folders are not descended.
    Files that are not audio by their extension are appended to ``other`` when given.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.startswith(".") or not path.is_file():
                continue
            if is_audio(path):
                yield path
            elif other is not None:
                other.append(path)


def skipped_files_note(
    root: Path, files: list[Path], *, ignore: tuple[str, ...] = ()
) -> str | None:
    """One summary line for the files a scan skipped as not audio (by extension), or None."""
    files = [f for f in files if f.name not in ignore]
    if not files:
        return None
    counts: dict[str, int] = {}
    for f in files:
        ext = f.suffix.lower() or "(no extension)"
        counts[ext] = counts.get(ext, 0) + 1
    kinds = ", ".join(f"{e} ({n})" for e, n in sorted(counts.items(), key=lambda x: -x[1])[:6])
    return (
        f"skipped {len(files)} file(s) that are not audio: {kinds}; "
        f"first: {files[0].relative_to(root).as_posix()}"
    )


@dataclass(frozen=True)
class CsvTable:
    """A CSV file read whole: header names and rows, each with the line it starts on."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]


def read_csv(path: Path, *, required: Iterable[str] = ()) -> CsvTable:
    """Read a UTF-8 CSV (a byte-order mark is fine) with a header row.

    Header names and cells are NFC-normalised and stripped. Raises DatasetError naming the file
    for: unreadable or non-UTF-8 files, malformed CSV, an empty file, duplicate column names, and
    ``required`` columns that are missing.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: empty file, expected a header row")
            columns = [normalize_text(c) for c in header]
            dupes = sorted({c for c in columns if c and columns.count(c) > 1})
            if dupes:
                raise DatasetError(f"{path}: duplicate column(s) {', '.join(dupes)}")
            missing = [c for c in required if c not in columns]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {', '.join(missing)} "
                    f"(found: {', '.join(c for c in columns if c) or 'none'})"
                )
            rows = []
            line = reader.line_num + 1
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    if len(cells) > len(columns):
                        raise DatasetError(
                            f"{path}: line {line}: {len(cells)} cells but {len(columns)} columns"
                        )
                    values = {c: normalize_text(v) for c, v in zip(columns, cells) if c}
                    rows.append((line, values))
                line = reader.line_num + 1
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from exc
    return CsvTable(path=path, columns=[c for c in columns if c], rows=rows)
