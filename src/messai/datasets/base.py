"""What every dataset module returns: tracks with ids, paths and labels."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from messai.errors import DatasetError

#: File extensions mess treats as audio (lower case, without the dot). All decodable by soundfile.
AUDIO_EXTENSIONS = frozenset({"wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "aifc"})

_BAD_ID = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class TrackInfo:
    """One track of a dataset: its id, the audio file, and label columns (composer, work, ...)."""

    track_id: str
    path: Path
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "path": str(self.path), **self.labels}


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
