"""FeatureStore: per-segment, time-averaged hidden states of every layer, on disk.

Layout, one store per dataset × model under ``$MESS_HOME/stores/<dataset>/<model-slug>/``::

    manifest.json        what the store was built from, and one entry per track
    tracks/<h>.npz       one file per track (h = hash of the track id, never the id itself):
                         segments [n_segments, n_layers, dim] (float16 by default),
                         aggregated [n_layers, dim] float32 (mean over segments),
                         starts / lengths [n_segments] (samples at the model rate),
                         target__<name> [n_segments] or [n_segments, k], meta (JSON text)
    .lock                held (flock) by the one process writing the store

Every file is written to a temporary name in the same folder, fsynced and renamed into place,
so a reader or a killed writer never sees half a file; the manifest is rewritten after each
track, so a run killed at any moment loses at most the tracks in flight. Nothing is unpickled:
arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import StoreError, TrackNotFoundError
from messai.features.records import (
    AGGREGATED,
    LENGTHS,
    SEGMENTS,
    STARTS,
    TrackEntry,
    TrackFailure,
    feature_arrays,
    target_array_name,
    target_arrays,
)
from messai.files import atomic_write_bytes, atomic_write_json

FORMAT = "mess-feature-store"
FORMAT_VERSION = 1
_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_META_ARRAY = "meta"  # JSON text embedded in every track file: id, build stamp, entry


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def model_slug(identity: dict[str, Any]) -> str:
    """Folder name for a model: ``m-a-p--MERT-v1-95M``, or ``local--<dir>-<hash>`` for directories."""
    mid = str(identity["id"])
    if identity.get("revision") == "local":
        name = _SLUG_BAD.sub("_", Path(mid).name)[:40] or "model"
        return f"local--{name}-{hashlib.sha1(mid.encode()).hexdigest()[:8]}"
    slug = _SLUG_BAD.sub("_", mid.replace("/", "--"))
    rev = identity.get("requested_revision")
    return f"{slug}@{_SLUG_BAD.sub('_', rev)}" if rev else slug


def track_file_name(track_id: str) -> str:
    return hashlib.sha1(track_id.encode("utf-8")).hexdigest()[:24] + ".npz"


def file_content_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class StoreSummary:
    """One line of ``mess datasets``."""

    dataset: str
    model: str
    path: Path
    n_tracks: int
    n_failed: int
    n_segments: int
    hours: float
    n_layers: int
    dim: int
    store_dtype: str
    size_bytes: int

    def to_dict(self) -> dict:
        d = self.__dict__.copy()
        d["path"] = str(self.path)
        return d


class FeatureStoreV1:
    """A feature store on disk. Open existing ones with ``FeatureStore.open(dataset)``.

    Reading: :meth:`track_ids`, :meth:`entry` (a :class:`TrackEntry`), :meth:`load`,
    :meth:`read_arrays`, :meth:`failures`. Writing happens inside :meth:`writer` (the lock):
    :meth:`put`, :meth:`mark_failed`, :meth:`remove`, :meth:`refresh_file_stat`,
    :meth:`set_labels`, :meth:`set_source`, :meth:`reconcile_build`, :meth:`replace_targets`.
    """

    #: while writing, the manifest is rewritten at most this often (and when the writer ends);
    #: track files written in between are adopted from their embedded metadata after a crash.
    MANIFEST_INTERVAL_SECONDS = 1.0

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = Path(root)
        self._manifest = manifest
        self._dirty = False
        self._saved_at = 0.0
        self._writing = False  # inside writer(): manifest saves may be batched

    # ---------------------------------------------------------------- finding stores
    @staticmethod
    def _home(home: Path | str | None) -> Path:
        if home is not None:
            return Path(home)
        from messai.config import load_settings

        return load_settings().home

    @classmethod
    def list(cls, *, home: Path | str | None = None) -> list[FeatureStoreV1]:
        """Every store under the data root, sorted by dataset then model."""
        base = cls._home(home) / "stores"
        stores = []
        for manifest in sorted(base.glob("*/*/manifest.json")):
            with contextlib.suppress(StoreError):
                stores.append(cls.at(manifest.parent))
        return stores

    @classmethod
    def exists_at(cls, root: Path | str) -> bool:
        """Whether a store has been created at ``root``."""
        return (Path(root) / "manifest.json").is_file()

    @classmethod
    def at(cls, root: Path | str) -> FeatureStoreV1:
        root = Path(root)
        path = root / "manifest.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{root}: not a feature store (no manifest.json)") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{path}: not a mess feature store manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"{path}: written by a newer mess (format {manifest['format_version']}); upgrade mess"
            )
        return cls(root, manifest)

    @classmethod
    def open(
        cls, dataset: str, model: str | None = None, *, home: Path | str | None = None
    ) -> FeatureStoreV1:
        """The store of ``dataset``; ``model`` (hub id, directory, or slug) may be omitted when
        the dataset has one store."""
        from messai.config import validate_dataset_name

        validate_dataset_name(dataset)
        folder = cls._home(home) / "stores" / dataset
        candidates = [cls.at(m.parent) for m in sorted(folder.glob("*/manifest.json"))]
        if not candidates:
            raise StoreError(
                f"no feature store for dataset {dataset!r} under {folder.parent}; run 'mess extract PATH --dataset {dataset}'"
            )
        if model is not None:
            wanted = {
                str(model),
                str(Path(model).expanduser().resolve())
                if Path(model).expanduser().exists()
                else str(model),
            }
            matches = [s for s in candidates if s.root.name in wanted or s.model_id in wanted]
            if not matches:
                have = ", ".join(s.model_id for s in candidates)
                raise StoreError(
                    f"dataset {dataset!r} has no store for model {model!r} (it has: {have})"
                )
            return matches[0]
        if len(candidates) > 1:
            have = ", ".join(s.model_id for s in candidates)
            raise StoreError(
                f"dataset {dataset!r} has stores for several models ({have}); pass --model"
            )
        return candidates[0]

    @classmethod
    def create(
        cls, root: Path, *, dataset: str, model: dict[str, Any], settings: dict[str, Any]
    ) -> FeatureStoreV1:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "model": model,
            "settings": settings,
            "code_version": _code_version(),
            "created": now_iso(),
            "updated": now_iso(),
            "source": {},
            "tracks": {},
            "failures": {},
        }
        store = cls(root, manifest)
        (root / "tracks").mkdir(parents=True, exist_ok=True)
        store.save_manifest()
        return store

    # ---------------------------------------------------------------- properties
    @property
    def dataset(self) -> str:
        return self._manifest["dataset"]

    @property
    def model_id(self) -> str:
        return self._manifest["model"]["id"]

    @property
    def model(self) -> dict[str, Any]:
        """The model identity the store was built with (a copy)."""
        return dict(self._manifest["model"])

    @property
    def settings(self) -> dict[str, Any]:
        """Extraction settings (rate, window, normalisation, dtype, precision; a copy)."""
        return dict(self._manifest["settings"])

    @property
    def n_layers(self) -> int:
        return int(self._manifest["model"]["n_layers"])

    @property
    def dim(self) -> int:
        return int(self._manifest["model"]["dim"])

    @property
    def code_version(self) -> str:
        """Version of mess that created the store."""
        return str(self._manifest.get("code_version", ""))

    @property
    def source_root(self) -> Path | None:
        """The folder the audio was extracted from (None for stores written without one)."""
        root = (self._manifest.get("source") or {}).get("root")
        return Path(root) if root else None

    @property
    def source_kind(self) -> str | None:
        return (self._manifest.get("source") or {}).get("kind")

    @property
    def _entries(self) -> dict[str, dict[str, Any]]:
        return self._manifest["tracks"]

    @property
    def _failures(self) -> dict[str, dict[str, Any]]:
        return self._manifest.setdefault("failures", {})

    def track_ids(self) -> list[str]:
        """Ids of the stored tracks, sorted."""
        return sorted(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._entries

    def entry(self, track_id: str) -> TrackEntry:
        """The record of a stored track; TrackNotFoundError (with the closest ids) if absent."""
        self.require_track(track_id)
        return TrackEntry.from_dict(track_id, self._entries[track_id])

    def get_entry(self, track_id: str) -> TrackEntry | None:
        """The record of a stored track, or None."""
        d = self._entries.get(track_id)
        return None if d is None else TrackEntry.from_dict(track_id, d)

    def iter_entries(self) -> Iterator[TrackEntry]:
        """Every stored track's record, in id order."""
        for track_id in self.track_ids():
            yield TrackEntry.from_dict(track_id, self._entries[track_id])

    def failures(self) -> dict[str, TrackFailure]:
        """Track id → its last failed extraction (stored tracks that failed later included)."""
        return {t: TrackFailure.from_dict(t, f) for t, f in self._failures.items()}

    def labels(self, track_id: str) -> dict[str, str]:
        return dict(self._entries[track_id].get("labels") or {})

    def fingerprint(self, *, probe_inputs: bool = False) -> str:
        """Changes whenever the features change (indices depend on this). With ``probe_inputs``
        it also covers the proxy targets and labels (probe results depend on those too)."""

        def row(t: str, e: dict[str, Any]) -> tuple:
            base = (t, e["content_hash"], e["n_segments"], e.get("extracted_at"))
            if probe_inputs:
                base += (e.get("targets_at"), json.dumps(e.get("labels") or {}, sort_keys=True))
            return base

        blob = json.dumps(
            [
                self._manifest["model"],
                self._manifest["settings"],
                sorted(row(t, e) for t, e in self._entries.items()),
            ],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def track_versions(self, track_ids: Iterable[str]) -> dict[str, str]:
        """Track id → a string that changes whenever that track's features change."""
        return {
            t: f"{self._entries[t]['content_hash']}:{self._entries[t].get('extracted_at')}"
            for t in track_ids
        }

    # ---------------------------------------------------------------- reading
    def require_track(self, track_id: str) -> None:
        """TrackNotFoundError naming the three closest ids when ``track_id`` is not stored."""
        if track_id not in self._entries:
            raise TrackNotFoundError(
                _unknown_track_message(track_id, self.track_ids(), self.dataset)
            )

    def track_file(self, track_id: str) -> Path:
        """The file holding a track's arrays (format 1: one ``.npz`` per track)."""
        self.require_track(track_id)
        entry = self._entries[track_id]
        name = entry["file"]
        if name != track_file_name(track_id):  # never follow a path taken from the manifest blindly
            raise StoreError(
                f"{self.root / 'manifest.json'}: entry of {track_id!r} points at an unexpected file"
            )
        return self.root / "tracks" / name

    def load(self, track_id: str) -> dict[str, Any]:
        """``segments [n_segments, n_layers, dim]`` float32, ``aggregated [n_layers, dim]``,
        ``targets`` name → array, ``starts``/``lengths`` (samples), ``meta`` (manifest entry)."""
        data = self.read_arrays(track_id)
        out = {
            SEGMENTS: data[SEGMENTS].astype(np.float32),
            AGGREGATED: data[AGGREGATED].astype(np.float32),
            STARTS: data[STARTS],
            LENGTHS: data[LENGTHS],
            "targets": target_arrays(data),
            "meta": {**self._entries[track_id], "track_id": track_id},
        }
        return out

    def read_arrays(
        self, track_id: str, names: tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays of a track (all, or ``names``); a missing or damaged file is a StoreError."""
        path = self.track_file(track_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in (names or z.files) if k != _META_ARRAY}
        except Exception as exc:  # OSError, BadZipFile, KeyError, ValueError, EOFError ...
            raise StoreError(
                f"{path}: track file of {track_id!r} is missing or damaged ({type(exc).__name__}); "
                "run 'mess extract' on the dataset again to redo it"
            ) from None

    def load_aggregated(self, track_id: str) -> np.ndarray:
        """Just the track vector ``[n_layers, dim]`` float32 (mean of the windows)."""
        return self.read_arrays(track_id, (AGGREGATED,))[AGGREGATED].astype(np.float32)

    def has_track_file(self, track_id: str) -> bool:
        """Whether the track's file is there and ends like a complete zip (a cheap check: the
        end-of-central-directory record that np.savez writes last)."""
        entry = self._entries.get(track_id)
        if not entry or entry.get("file") != track_file_name(track_id):
            return False
        try:
            with open(self.root / "tracks" / entry["file"], "rb") as f:
                f.seek(-22, os.SEEK_END)
                return f.read(4) == b"PK\x05\x06"
        except OSError:
            return False

    # ---------------------------------------------------------------- writing
    @contextlib.contextmanager
    def writer(self) -> Iterator[FeatureStoreV1]:
        """Hold the store's lock for the duration; a second writer gets a clear StoreError.
        Leaving the block commits every change made inside it."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise StoreError(
                    f"{self.root}: another mess process (pid {holder}) is writing this store; "
                    "wait for it to finish and run again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            # re-read: another writer may have finished between our open and our lock
            with contextlib.suppress(StoreError):
                self._manifest = FeatureStoreV1.at(self.root)._manifest
            # with the lock held, temporary files can only be leftovers of a killed writer
            for tmp in [
                *self.root.glob(".manifest.json.*.tmp"),
                *(self.root / "tracks").glob(".*.tmp"),
            ]:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            self._writing = True
            try:
                yield self
            finally:
                self._writing = False
                if self._dirty:
                    self.save_manifest()
        finally:
            os.close(fd)

    def save_manifest(self) -> None:
        """Commit every change so far (the writer does this at least once a second)."""
        import time

        self._manifest["updated"] = now_iso()
        atomic_write_json(self.root / "manifest.json", self._manifest)
        self._dirty = False
        self._saved_at = time.monotonic()

    def _maybe_save(self) -> None:
        import time

        self._dirty = True
        if not self._writing or time.monotonic() - self._saved_at >= self.MANIFEST_INTERVAL_SECONDS:
            self.save_manifest()

    def build_stamp(self) -> str:
        """Hash of the model and settings: embedded in every track file, so an orphaned file is
        adopted only by a store built the same way."""
        blob = json.dumps([self._manifest["model"], self._manifest["settings"]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def put(self, entry: TrackEntry, arrays: dict[str, np.ndarray]) -> None:
        """Store one track atomically: the array file (with its entry embedded) first, then the
        manifest that lists it (rewritten at most once a second while writing). An entry
        without ``extracted_at`` gets the current time."""
        track_id = entry.track_id
        name = track_file_name(track_id)
        full = {
            "extracted_at": entry.extracted_at or now_iso(),
            **{k: v for k, v in entry.to_dict().items() if k != "extracted_at"},
            "file": name,
        }
        meta = json.dumps(
            {"track_id": track_id, "build_stamp": self.build_stamp(), "entry": full},
            ensure_ascii=False,
        )
        atomic_savez(self.root / "tracks" / name, {**arrays, _META_ARRAY: np.array(meta)})
        self._entries[track_id] = full
        self._failures.pop(track_id, None)
        self._maybe_save()

    def replace_targets(self, track_id: str, targets: dict[str, np.ndarray]) -> None:
        """Replace a stored track's proxy targets (features and extraction time unchanged)."""
        arrays = feature_arrays(self.read_arrays(track_id))
        arrays.update(
            {target_array_name(k): np.asarray(v, dtype=np.float32) for k, v in targets.items()}
        )
        entry = self.entry(track_id).with_changes(
            targets=tuple(sorted(targets)), targets_at=now_iso()
        )
        self.put(entry, arrays)

    def refresh_file_stat(self, track_id: str, *, size: int, mtime_ns: int) -> None:
        """Record a new size/mtime for a track whose content is unchanged (a touched file)."""
        self._entries[track_id].update(size=size, mtime_ns=mtime_ns)
        self._dirty = True

    def set_labels(self, track_id: str, labels: dict[str, str]) -> None:
        """Replace a track's labels (metadata.csv may have changed)."""
        self._entries[track_id]["labels"] = dict(labels)
        self._dirty = True

    def set_source(self, root: Path, kind: str) -> None:
        """Record the folder (and its layout) the audio comes from."""
        self._manifest["source"] = {"root": str(root), "kind": kind}
        self._dirty = True

    def reconcile_build(
        self, identity: dict[str, Any], settings: dict[str, Any], *, force: bool
    ) -> None:
        """Under the lock: refuse to mix models or settings in one store unless ``force``;
        with ``force``, a store built differently is emptied (its tracks are all redone)."""
        old_settings = self._manifest["settings"]
        old_model = self._manifest["model"]
        changed = [
            f"{k}: {old_settings.get(k)} → {v}"
            for k, v in settings.items()
            if old_settings.get(k) != v
        ]
        changed += [
            f"model {k}: {old_model.get(k)} → {v}"
            for k, v in identity.items()
            if old_model.get(k) != v
        ]
        if changed and self._entries:
            if not force:
                raise StoreError(
                    f"{self.root}: store was built with different settings ({'; '.join(changed)}); "
                    "re-run with --force to rebuild it, or use another --dataset name"
                )
            self._entries.clear()
        if changed:
            self._manifest["failures"] = {}
        self._manifest["model"] = identity
        self._manifest["settings"] = settings
        self._dirty = True

    def is_empty(self) -> bool:
        """No track stored and no failure recorded."""
        return not self._entries and not self._failures

    def adopt_orphans(self) -> list[str]:
        """List track files that a killed writer finished but never put in the manifest, when
        they were built with this store's model and settings. Returns the adopted ids."""
        listed = {e["file"] for e in self._entries.values()}
        stamp, adopted = self.build_stamp(), []
        for path in sorted((self.root / "tracks").glob("*.npz")):
            if path.name in listed:
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z[_META_ARRAY])) if _META_ARRAY in z.files else None
            except Exception:  # a damaged leftover is simply not adopted
                meta = None
            if not meta or meta.get("build_stamp") != stamp:
                continue
            tid = meta.get("track_id")
            if not isinstance(tid, str) or track_file_name(tid) != path.name:
                continue
            self._entries[tid] = meta["entry"]
            adopted.append(tid)
        if adopted:
            self.save_manifest()
        return adopted

    def mark_failed(self, track_id: str, source: str, reason: str) -> None:
        self._failures[track_id] = {"source": source, "reason": reason, "at": now_iso()}
        self._maybe_save()

    def forget_failure(self, track_id: str) -> None:
        """Drop the record of a failed extraction (its file is gone)."""
        if self._failures.pop(track_id, None) is not None:
            self._dirty = True

    def remove(self, track_id: str) -> None:
        entry = self._entries.pop(track_id, None)
        self.save_manifest()
        if entry:
            with contextlib.suppress(OSError):
                (self.root / "tracks" / track_file_name(track_id)).unlink()

    def summary(self) -> StoreSummary:
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        entries = self._entries.values()
        return StoreSummary(
            dataset=self.dataset,
            model=self.model_id,
            path=self.root,
            n_tracks=len(self._entries),
            n_failed=len(set(self._failures) - set(self._entries)),
            n_segments=sum(int(e["n_segments"]) for e in entries),
            hours=sum(float(e["duration_seconds"]) for e in entries) / 3600,
            n_layers=self.n_layers,
            dim=self.dim,
            store_dtype=self._manifest["settings"].get("store_dtype", "?"),
            size_bytes=size,
        )

    def track_rows(self) -> list[dict[str, Any]]:
        """``mess tracks``: one row per stored or failed track."""
        failures = self._failures
        rows = [
            {
                "track_id": t,
                "duration_seconds": round(float(e["duration_seconds"]), 3),
                "n_segments": int(e["n_segments"]),
                "status": "ok"
                if t not in failures
                else f"stale: kept from an earlier run; last extraction failed: {failures[t]['reason']}",
                "source": e.get("source", ""),
                **{f"label_{k}": v for k, v in (e.get("labels") or {}).items()},
            }
            for t, e in self._entries.items()
        ]
        for t, f in failures.items():
            if t not in self._entries:
                rows.append(
                    {
                        "track_id": t,
                        "duration_seconds": None,
                        "n_segments": 0,
                        "status": f"failed: {f['reason']}",
                        "source": f.get("source", ""),
                    }
                )
        return sorted(rows, key=lambda r: r["track_id"])


def _code_version() -> str:
    from messai import __version__

    return __version__


def _unknown_track_message(track_id: str, known: list[str], dataset: str) -> str:
    import difflib

    close = difflib.get_close_matches(track_id, known, n=3, cutoff=0.0)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"unknown track {track_id!r} in dataset {dataset!r}{hint}"
