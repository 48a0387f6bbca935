"""Any folder tree of audio files: one track per file, id = relative path without extension.

An optional ``metadata.csv`` at the root labels the tracks. It needs a ``track_id`` column (the
relative path without extension, '/'-separated, e.g. ``piano/bach_bwv846_prelude``; the path
with an audio extension is accepted too) and may have any other columns (composer, work, performer,
instrument ...): each becomes a label. Rules:

- an empty cell means "unknown": that label is left out for the track;
- a track with no row is kept, with no labels (the scan's ``warnings`` say how many);
- a row whose track id matches no audio file, a duplicate track id, an empty track id or a
  missing ``track_id`` column is a DatasetError naming the file, the line and the id;
- a column named ``path`` is ignored (with a warning): that name is reserved.
"""

from __future__ import annotations

from pathlib import Path

from messai.datasets.base import (
    TrackInfo,
    TrackList,
    check_root,
    is_audio,
    iter_audio_files,
    normalize_text,
    read_csv,
    skipped_files_note,
    validate_track_id,
)
from messai.errors import DatasetError

NAME = "folder"
DESCRIPTION = "Any folder of audio files; optional metadata.csv (track_id + label columns)."
#: Label columns come from metadata.csv, whatever they are: none are fixed.
LABELS: tuple[str, ...] = ()
#: Keyword options scan() accepts.
OPTIONS: tuple[str, ...] = ()
#: Name of the optional label file at the dataset root.
METADATA_FILE = "metadata.csv"
_RESERVED = ("track_id", "path")


def detect(root: Path) -> bool:
    """Every folder is a ``folder`` dataset: it is the fallback when nothing else matches."""
    return Path(root).is_dir()


def track_id_for(path: Path, root: Path) -> str:
    """``root/a/b c.wav`` -> ``"a/b c"``: relative path, '/' separators, extension dropped."""
    rel = path.relative_to(root).with_suffix("")
    return validate_track_id(normalize_text(rel.as_posix()))


def scan(root: Path) -> TrackList:
    """Every audio file under ``root`` (recursively, hidden files skipped), sorted by track id,
    labelled from ``root/metadata.csv`` when there is one.

    Two files that map to the same id (``x.wav`` and ``x.flac``) are both rejected (which one is
    meant cannot be guessed), as is a file whose name cannot be a track id; the rest is scanned.
    """
    root = check_root(root)
    seen: dict[str, Path] = {}
    clashes: dict[str, list[Path]] = {}
    rejected: list[str] = []
    other: list[Path] = []
    for path in iter_audio_files(root, other=other):
        try:
            tid = track_id_for(path, root)
        except DatasetError as exc:
            rejected.append(f"{path}: {exc}")
            continue
        if tid in seen or tid in clashes:
            clashes.setdefault(tid, [seen.pop(tid)] if tid in seen else []).append(path)
            continue
        seen[tid] = path
    for tid, paths in clashes.items():
        for path in paths:
            others = ", ".join(p.name for p in paths if p != path)
            rejected.append(
                f"{path}: same track id {tid!r} as {others}; rename all but one "
                f"({'both' if len(paths) == 2 else f'all {len(paths)}'} skipped)"
            )
    warnings: list[str] = []
    note = skipped_files_note(root, other, ignore=(METADATA_FILE,))
    if note:
        warnings.append(note)
    # rows naming a rejected (clashing) id are fine: the id exists, the track is just skipped
    labels = _read_metadata(
        root / METADATA_FILE, {**{t: ps[0] for t, ps in clashes.items()}, **seen}, warnings
    )
    if labels is not None:
        unlabelled = [tid for tid in seen if tid not in labels]
        if unlabelled:
            warnings.append(
                f"{root / METADATA_FILE}: {len(unlabelled)} of {len(seen)} tracks have no row "
                f"and no labels (first: {sorted(unlabelled)[0]})"
            )
    tracks = [TrackInfo(tid, p, dict((labels or {}).get(tid, {}))) for tid, p in seen.items()]
    return TrackList(sorted(tracks, key=lambda t: t.track_id), warnings=warnings, rejected=rejected)


def _read_metadata(
    path: Path, tracks: dict[str, Path], warnings: list[str]
) -> dict[str, dict[str, str]] | None:
    """Labels by track id from ``path``; None when there is no such file."""
    if not path.is_file():
        return None
    table = read_csv(path, required=["track_id"])
    if "path" in table.columns:
        warnings.append(f"{path}: column 'path' ignored (reserved name)")
    label_columns = [c for c in table.columns if c not in _RESERVED]
    labels: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for line, row in table.rows:
        raw = row.get("track_id", "")
        if not raw:
            raise DatasetError(f"{path}: line {line}: empty track_id")
        tid = _resolve_id(raw, tracks)
        if tid is None:
            raise DatasetError(
                f"{path}: line {line}: track_id {raw!r} has no audio file under {path.parent} "
                f"(expected e.g. {path.parent / raw}.wav)"
            )
        if tid in labels:
            raise DatasetError(
                f"{path}: line {line}: duplicate track_id {raw!r} (first on line {first_line[tid]})"
            )
        first_line[tid] = line
        labels[tid] = {c: row[c] for c in label_columns if row.get(c)}
    return labels


def _resolve_id(raw: str, tracks: dict[str, Path]) -> str | None:
    """The track id a metadata cell names: the id itself, or the relative path with extension."""
    tid = raw.replace("\\", "/").strip("/")
    if tid.startswith("./"):
        tid = tid[2:]
    if tid in tracks:
        return tid
    if is_audio(Path(tid)):  # "a/b.wav" names track "a/b" (whatever its actual extension)
        no_ext = Path(tid).with_suffix("").as_posix()
        if no_ext in tracks:
            return no_ext
    return None
