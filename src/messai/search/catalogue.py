"""The track catalogue of a store (ids, labels, sources), cached beside its indices.

``mess recommend`` needs, besides an index, which tracks exist and their labels. Reading them
from the store means importing pyarrow and Lance (about half a second) and scanning the tracks
table; the catalogue keeps them in the local index cache, in the folder ``catalogue/``, keyed by
the store's ``fingerprint(probe_inputs=True)`` (which changes with every change of features or
labels, in constant time). A stale, missing or damaged catalogue is rebuilt from the store.

Nothing in it is parsed whole on a query: the ids, the labels (one JSON object a track) and the
sources are memory-mapped string columns (:mod:`messai.search.mapped`); a track is found by a
binary search of the sorted ids, and only the rows a query returns are decoded. ``--where``,
``--max-per`` and ``--exclude-same`` read every label row (:meth:`TrackCatalogue.label_rows`),
only when given.

Folder::

    ids.str        the stored track ids, sorted (a string column with lookup)
    labels.str     row i: the labels of track i, a JSON object
    sources.str    row i: its audio file, relative to the dataset root ("" if unknown)
    failures.json  {track id: reason} of tracks that failed to extract (read on a miss only)
    manifest.json  format, format_version, dataset, state, n, files (size, SHA-256 and stat
                   signature of each file above), record_sha256 (of the manifest itself)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from messai.errors import SearchIndexError, TrackNotFoundError
from messai.search.mapped import (
    ListColumn,
    StringColumn,
    check_files,
    record_files,
    self_checksum,
    write_strings,
)

FOLDER = "catalogue"
FORMAT, FORMAT_VERSION = "mess-track-catalogue", 1
MANIFEST = "manifest.json"
IDS, LABELS, SOURCES, FAILURES = "ids.str", "labels.str", "sources.str", "failures.json"
#: the JSON file of earlier versions (parsed whole on every start): removed when seen
LEGACY_FILE = "catalogue.json"


class TrackCatalogue:
    """Track ids and labels of a store at one state; the queries the recommender makes.

    Built in memory from lists (``track_ids`` sorted or not), or opened from a catalogue folder
    with :meth:`open` (memory-mapped).
    """

    def __init__(
        self,
        dataset: str,
        state: str,
        track_ids: Sequence[str],
        labels: Sequence[dict] | Sequence[str],
        sources: Sequence[str] | None = None,
        failures: dict[str, str] | Callable[[], dict[str, str]] | None = None,
    ):
        self.dataset = dataset
        self.state = state
        self._ids = track_ids if hasattr(track_ids, "find") else ListColumn(track_ids)
        self._labels = labels  # dicts, or JSON text per row (a StringColumn)
        self._sources = sources if sources is not None else [""] * len(track_ids)
        self._failures = failures or {}

    # ---- building and opening ---------------------------------------------------------------

    @classmethod
    def for_store(
        cls, folder: Path, store, *, on_notice: Callable[[str], None] | None = None
    ) -> TrackCatalogue:
        """The cached catalogue in ``folder`` when it matches the store's state, else one read
        from the store (and cached). A damaged cache is rebuilt (with a notice)."""
        state = store.fingerprint(probe_inputs=True)
        where = Path(folder) / FOLDER
        if (where / MANIFEST).is_file():
            try:
                cached = cls.open(where)
            except SearchIndexError as exc:
                if on_notice:
                    on_notice(f"note: {exc}; rebuilding the track catalogue")
            else:
                if cached.state == state and cached.dataset == store.dataset:
                    return cached
        entries = list(store.iter_entries())
        entries.sort(key=lambda e: e.track_id.encode("utf-8", "surrogatepass"))
        ids = [e.track_id for e in entries]
        labels = [e.labels for e in entries]
        sources = [e.source or "" for e in entries]
        stored = set(ids)
        failures = {t: f.reason for t, f in store.failures().items() if t not in stored}
        catalogue = cls(store.dataset, state, ids, labels, sources, failures)
        try:
            catalogue.save(where)
            legacy = Path(folder) / LEGACY_FILE
            if legacy.exists():
                legacy.unlink()
        except OSError:
            pass  # a read-only or full cache only costs speed (nothing half-written stays)
        return catalogue

    def save(self, where: Path) -> None:
        """Write the catalogue folder ``where`` atomically (temporary sibling, swapped in)."""
        import shutil
        import tempfile

        from messai.files import fsync_dir, swap_dir_into_place

        where = Path(where)
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.tmp-", dir=where.parent))
        try:
            os.chmod(tmp, where.parent.stat().st_mode & 0o777)
            write_strings(tmp / IDS, self._ids, lookup=True)
            write_strings(tmp / LABELS, (self._label_text(i) for i in range(len(self))))
            write_strings(tmp / SOURCES, (str(s) for s in self._sources))
            with open(tmp / FAILURES, "w", encoding="utf-8") as fh:
                json.dump(self._failure_map(), fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            record = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "dataset": self.dataset,
                "state": self.state,
                "n": len(self),
                "files": record_files(tmp, [IDS, LABELS, SOURCES, FAILURES]),
            }
            record["record_sha256"] = self_checksum(record)
            with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(tmp)
            swap_dir_into_place(tmp, where)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def open(cls, where: Path, *, full: bool = False) -> TrackCatalogue:
        """The catalogue folder ``where``, memory-mapped and checked (constant time; every
        byte with ``full``). SearchIndexError naming the file when it is damaged."""
        where = Path(where)
        record = _read_manifest(where)
        files = record["files"]
        check_files(where, files, [IDS, LABELS, SOURCES], full=full, rebuild=_HINT)
        ids, labels, sources = (StringColumn(where / n) for n in (IDS, LABELS, SOURCES))
        if not len(ids) == len(labels) == len(sources) == record["n"]:
            raise SearchIndexError(f"{where}: its columns do not hold {record['n']} rows each")

        def failures() -> dict[str, str]:
            check_files(where, files, [FAILURES], full=full, rebuild=_HINT)
            try:
                data = json.loads((where / FAILURES).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SearchIndexError(f"{where / FAILURES}: unreadable ({exc})") from None
            return data if isinstance(data, dict) else {}

        catalogue = cls(record["dataset"], record["state"], ids, labels, sources, failures)
        if full:
            catalogue._failure_map()
            catalogue.label_rows()
        return catalogue

    # ---- queries ----------------------------------------------------------------------------

    def track_ids(self) -> list[str]:
        """Stored track ids, sorted (reads them all)."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, track_id: object) -> bool:
        return isinstance(track_id, str) and self._ids.find(track_id) is not None

    def labels(self, track_id: str) -> dict[str, Any]:
        """The labels of one track (one row decoded)."""
        self.require_track(track_id)
        return self._labels_at(self._ids.find(track_id))

    def label_rows(self) -> dict[str, dict[str, Any]]:
        """Every track's labels, track id → dict (a full scan: for filters only)."""
        rows = self._labels
        if isinstance(rows, StringColumn):
            decoded = [_parse_labels(text, rows.path) for text in rows]
        else:
            decoded = [dict(r) for r in rows]
        return dict(zip(self._ids, decoded))

    def _labels_at(self, i: int) -> dict[str, Any]:
        row = self._labels[i]
        if isinstance(row, str):
            return _parse_labels(row, getattr(self._labels, "path", "catalogue"))
        return dict(row)

    def _label_text(self, i: int) -> str:
        row = self._labels[i]
        text = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False, sort_keys=True)
        return text

    def _failure_map(self) -> dict[str, str]:
        if callable(self._failures):
            self._failures = self._failures()
        return self._failures

    def missing_sources(self, root: Path | None, track_ids) -> set[str]:
        """Of ``track_ids``, those whose audio file is gone from ``root`` (a cheap stat each)."""
        if root is None or "://" in str(root):
            return set()
        out = set()
        for t in track_ids:
            i = self._ids.find(t)
            source = self._sources[i] if i is not None else ""
            if source and not (root / source).exists():
                out.add(t)
        return out

    def require_track(self, track_id: str) -> None:
        """TrackNotFoundError naming the three closest ids when ``track_id`` is absent."""
        if track_id in self:
            return
        import difflib

        failures = self._failure_map()
        if track_id in failures:
            raise TrackNotFoundError(
                f"track {track_id!r} of dataset {self.dataset!r} failed to extract: "
                f"{failures[track_id]}"
            )
        close = difflib.get_close_matches(track_id, list(self._ids), n=3, cutoff=0.0)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise TrackNotFoundError(f"unknown track {track_id!r} in dataset {self.dataset!r}{hint}")


_HINT = "it is rebuilt from the store on the next query"


def _parse_labels(text: str, where: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise SearchIndexError(f"{where}: a label row is not JSON (damaged)") from None
    if not isinstance(value, dict):
        raise SearchIndexError(f"{where}: a label row is not a JSON object (damaged)")
    return value


def _read_manifest(where: Path) -> dict[str, Any]:
    path = where / MANIFEST
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchIndexError(f"{where}: no track catalogue here") from None
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SearchIndexError(f"{path}: not a mess track catalogue")
    if record.get("format_version") != FORMAT_VERSION:
        raise SearchIndexError(f"{path}: catalogue version {record.get('format_version')!r}")
    types = {"dataset": str, "state": str, "n": int, "files": dict, "record_sha256": str}
    for key, kind in types.items():
        if not isinstance(record.get(key), kind):
            raise SearchIndexError(f"{path}: missing or malformed field {key!r}")
    if record["record_sha256"] != self_checksum(record):
        raise SearchIndexError(f"{path}: checksum mismatch (the manifest was changed)")
    return record


def verify_catalogue(folder: Path) -> None:
    """Check every byte of the cached catalogue of a store's cache ``folder`` (SearchIndexError
    naming the file); a missing catalogue is not an error (it is built on the next query)."""
    where = Path(folder) / FOLDER
    if (where / MANIFEST).is_file():
        TrackCatalogue.open(where, full=True)
