"""Reading a format-1 store (mess ≤ 0.1), for ``mess store migrate`` only.

Format 1 is one folder: ``manifest.json`` (build description, one entry per track, failures)
and ``tracks/<sha1(id)[:24]>.npz`` per track (``segments``, ``aggregated``, ``starts``,
``lengths``, ``target__<name>``, and ``meta``, the entry as JSON text). Arrays load with
``allow_pickle=False``; a file name is derived from the id and checked against the manifest,
never followed blindly. ``.lock`` is the one-writer lock that format-1 writers held.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import StoreError
from messai.features.records import TrackEntry, TrackFailure

FORMAT = "mess-feature-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def track_file_name(track_id: str) -> str:
    return hashlib.sha1(track_id.encode("utf-8")).hexdigest()[:24] + ".npz"


class FeatureStoreV1:
    """A format-1 store, read-only (plus its lock, so no old writer runs during a migration)."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = Path(root)
        self._manifest = manifest

    @classmethod
    def at(cls, root: Path | str) -> FeatureStoreV1:
        root = Path(root)
        path = root / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{root}: not a format-1 store (no {MANIFEST})") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: not a format-1 mess feature store manifest")
        return cls(root, manifest)

    @property
    def dataset(self) -> str:
        return self._manifest["dataset"]

    @property
    def model(self) -> dict[str, Any]:
        return dict(self._manifest["model"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._manifest["settings"])

    @property
    def source_root(self) -> Path | None:
        root = (self._manifest.get("source") or {}).get("root")
        return Path(root) if root else None

    @property
    def source_kind(self) -> str | None:
        return (self._manifest.get("source") or {}).get("kind")

    def track_ids(self) -> list[str]:
        return sorted(self._manifest["tracks"])

    def iter_entries(self) -> Iterator[TrackEntry]:
        for track_id in self.track_ids():
            yield TrackEntry.from_dict(track_id, self._manifest["tracks"][track_id])

    def failures(self) -> dict[str, TrackFailure]:
        return {
            t: TrackFailure.from_dict(t, f) for t, f in self._manifest.get("failures", {}).items()
        }

    def read_arrays(self, track_id: str) -> dict[str, np.ndarray]:
        """The arrays of a track file, without its embedded ``meta``."""
        entry = self._manifest["tracks"].get(track_id)
        if entry is None or entry.get("file") != track_file_name(track_id):
            raise StoreError(f"{self.root / MANIFEST}: no valid entry for track {track_id!r}")
        path = self.root / "tracks" / entry["file"]
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files if k != "meta"}
        except Exception as exc:  # OSError, BadZipFile, ValueError ...
            raise StoreError(
                f"{path}: track file of {track_id!r} is missing or damaged ({type(exc).__name__})"
            ) from None

    @contextlib.contextmanager
    def writer(self) -> Iterator[FeatureStoreV1]:
        """Hold the format-1 lock: no format-1 writer changes the store meanwhile."""
        import fcntl

        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"{self.root}: a mess process is writing this format-1 store; "
                    "wait for it to finish and run again"
                ) from None
            yield self
        finally:
            os.close(fd)
