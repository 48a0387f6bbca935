"""Audio sources of a cluster run: a local folder, or an object-storage prefix.

The dataset scanners and the extraction planner work on local paths. An ``s3://`` / ``gs://``
prefix is listed once into a local stand-in tree: every audio object becomes an empty sparse
file of the object's size and modification time (so the planner's size/mtime check works
unchanged), and the small non-audio files the layouts read (``metadata.csv``, MAESTRO's CSV/JSON)
are downloaded. Workers read the audio itself from the object store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from messai.errors import MessError
from messai.features import location

#: non-audio files up to this size are copied into the stand-in tree (layout metadata)
SIDE_FILE_LIMIT = 16 << 20


@contextlib.contextmanager
def listed_source(source: str | os.PathLike[str]) -> Iterator[tuple[Path, str | None]]:
    """``(local root, source URI or None)``: the folder itself for a local source; for a
    remote prefix, a temporary stand-in tree (removed on exit) and the prefix."""
    text = str(source)
    if not location.is_remote(text):
        yield Path(text).expanduser(), None
        return
    uri = text.rstrip("/")
    root = Path(tempfile.mkdtemp(prefix="mess-source-")) / (uri.rsplit("/", 1)[-1] or "source")
    try:
        mirror_listing(uri, root)
        yield root, uri
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


def mirror_listing(uri: str, root: Path) -> int:
    """List ``uri`` recursively into ``root`` (see the module docstring); returns the number
    of audio objects."""
    import pyarrow.fs as pafs

    from messai.datasets import AUDIO_EXTENSIONS

    fs, base = location.filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise MessError(f"{uri}: cannot list ({exc})") from None
    n_audio = 0
    root.mkdir(parents=True, exist_ok=True)
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) :].lstrip("/")
        if not rel or ".." in Path(rel).parts:
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(rel).suffix.lower().lstrip(".") in AUDIO_EXTENSIONS:
            with open(dest, "wb") as f:
                f.truncate(info.size)  # sparse: no bytes written
            n_audio += 1
        elif info.size <= SIDE_FILE_LIMIT:
            with fs.open_input_stream(info.path) as src:
                dest.write_bytes(src.read())
        else:
            continue
        mtime = info.mtime_ns or 0
        os.utime(dest, ns=(mtime, mtime))
    return n_audio


def object_stat(uri: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of one object, as :func:`mirror_listing` records them."""
    import pyarrow.fs as pafs

    fs, path = location.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    return int(info.size), int(info.mtime_ns or 0)


def read_object(uri: str, dest: Path) -> None:
    """Copy one object to the local file ``dest``."""
    fs, path = location.filesystem(uri)
    with fs.open_input_stream(path) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 22):
            out.write(chunk)
