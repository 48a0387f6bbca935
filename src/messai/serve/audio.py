"""A track's source file for listening: found only inside its store's source root, served
with HTTP byte ranges.

The file is never found from the request: the track id is looked up in the store (an id that
is not a stored track is "not found"), and the path is the *stored* source path of that track,
relative to the store's source root. Even that is checked, because a store is data: the path
must be relative, without ``..`` parts, and once every symlink is resolved it must still lie
inside the resolved source root. Anything else is "not found" — the same answer as an unknown
id, so a client learns nothing about the disk.

**Formats.** Files a browser plays natively (WAV, FLAC, MP3, Ogg Vorbis/Opus, AAC/M4A, WebM)
are served as they are. The other formats mess can read (AIFF, WMA, APE, WavPack, Matroska,
CAF, AC-3, DTS, ALAC) are *reported as unplayable* (``playable: false`` in the track's JSON;
the audio route answers 415 with one line) rather than transcoded: a transcode would have to be
done whole before its first byte range could be answered, and would hold one decoded track per
listener in memory. Convert such files once (e.g. ``ffmpeg -i x.aiff x.flac``) to listen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from messai.errors import MessError

#: extension → Content-Type of what browsers play (Chromium, Firefox, Safari all take these)
PLAYABLE = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "m4a": "audio/mp4",
    "m4b": "audio/mp4",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
    "webm": "audio/webm",
}
#: bytes per chunk when streaming a range
CHUNK = 64 * 1024


class AudioNotFound(MessError):
    """No file to serve for this id (unknown id, no source, outside the source root, gone)."""


class AudioUnplayable(MessError):
    """The file exists but browsers cannot play its format (HTTP 415)."""


class RangeNotSatisfiable(MessError):
    """A byte range outside the file (HTTP 416)."""

    def __init__(self, size: int):
        super().__init__(f"range not satisfiable: the file has {size} bytes")
        self.size = size


@dataclass(frozen=True)
class AudioFile:
    path: Path
    size: int
    mtime_ns: int
    content_type: str


def source_path(root: Path | None, source: str) -> Path | None:
    """``root / source`` when it is a file inside ``root`` after resolving symlinks; else None.

    ``source`` must be a relative POSIX path without ``..`` or empty parts."""
    if root is None or not source or "://" in str(root):
        return None
    if "\x00" in source or "\\" in source:
        return None
    rel = PurePosixPath(source)
    if rel.is_absolute() or any(p in ("..", "") for p in rel.parts):
        return None
    try:
        base = Path(root).resolve(strict=True)
        path = (base / Path(*rel.parts)).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def playable_type(path_or_name: str | os.PathLike) -> str | None:
    """The Content-Type a browser plays for this file name, or None."""
    return PLAYABLE.get(Path(path_or_name).suffix.lower().lstrip("."))


def audio_file(store, track_id: str) -> AudioFile:
    """The servable source file of a stored track.

    Raises
    ------
    AudioNotFound
        ``track_id`` is not a stored track, or its file is missing or outside the source root.
    AudioUnplayable
        A format browsers do not play.
    """
    from messai.features.records import nfc

    entry = store.get_entry(nfc(track_id))
    if entry is None:
        raise AudioNotFound(f"no audio for track {track_id!r}")
    path = source_path(store.source_root, entry.source)
    if path is None:
        raise AudioNotFound(f"no audio for track {track_id!r}")
    ctype = playable_type(path)
    if ctype is None:
        raise AudioUnplayable(
            f"track {track_id!r} is {path.suffix or 'without extension'}: not playable in a browser; "
            "convert it (e.g. to FLAC) to listen"
        )
    st = path.stat()
    return AudioFile(path, st.st_size, st.st_mtime_ns, ctype)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(start, end)`` a ``Range`` header asks for, or None to send
    the whole file (no header, another unit, several ranges, or a malformed one: RFC 9110
    lets a server ignore those).

    Raises
    ------
    RangeNotSatisfiable
        A well-formed single range that selects no byte of the file.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # suffix: the last N bytes
        if not last:
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None  # invalid: ignore the header
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, end


def read_chunks(path: Path, start: int, end: int):
    """Bytes ``start..end`` (inclusive) of ``path``, in chunks of :data:`CHUNK`."""
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start + 1
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
