"""Any folder tree of audio files: one track per file, id = relative path without extension."""

from __future__ import annotations

from pathlib import Path

from messai.datasets.base import AUDIO_EXTENSIONS, TrackInfo, validate_track_id
from messai.errors import DatasetError


def track_id_for(path: Path, root: Path) -> str:
    """``root/a/b c.wav`` -> ``"a/b c"``: relative path, '/' separators, extension dropped."""
    rel = path.relative_to(root).with_suffix("")
    return validate_track_id(rel.as_posix())


def scan(root: Path) -> list[TrackInfo]:
    """Every audio file under ``root`` (recursively, hidden files skipped), sorted by track id.

    Two files that map to the same id (``x.wav`` and ``x.flac``) are a DatasetError naming both.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    seen: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(p.startswith(".") for p in rel_parts):
            continue
        if not path.is_file() or path.suffix.lower().lstrip(".") not in AUDIO_EXTENSIONS:
            continue
        tid = track_id_for(path, root)
        if tid in seen:
            raise DatasetError(f"{path}: same track id {tid!r} as {seen[tid]}; rename one of them")
        seen[tid] = path
    return [TrackInfo(tid, p) for tid, p in sorted(seen.items())]
