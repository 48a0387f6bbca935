"""Safe writes: every file mess writes goes through here.

A file is written to a temporary name in its own folder, fsynced, given the mode any other file
would get (0666 minus the umask; ``mkstemp`` alone would make it 0600) and renamed into place,
then the folder is fsynced. A reader or a killed writer never sees half a file. A directory
(an index) is built beside its target and swapped in with :func:`swap_dir_into_place`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the mode a new file gets: 0666 minus the umask, like any other file
FILE_MODE = 0o666 & ~_umask()


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 1) -> None:
    """``obj`` as UTF-8 JSON (non-ASCII kept), written atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def swap_dir_into_place(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing any previous one.

    A folder cannot be renamed over a non-empty one, so an old one is first renamed aside and
    removed afterwards. A crash between the two renames leaves nothing at ``target`` (a reader
    fails cleanly), never a half-written folder.

    Raises
    ------
    NotADirectoryError
        ``target`` exists and is not a folder.
    """
    old: Path | None = None
    if target.exists():
        if not target.is_dir():
            raise NotADirectoryError(f"{target}: exists and is not a folder")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
