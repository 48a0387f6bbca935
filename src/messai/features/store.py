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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import StoreError, TrackNotFoundError
from messai.files import atomic_write_bytes, atomic_write_json

FORMAT = "mess-feature-store"
FORMAT_VERSION = 1
_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")


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


class FeatureStore:
    """A feature store on disk. Open existing ones with ``FeatureStore.open(dataset)``."""

    #: while writing, the manifest is rewritten at most this often (and when the writer ends);
    #: track files written in between are adopted from their embedded metadata after a crash.
    MANIFEST_INTERVAL_SECONDS = 1.0

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = Path(root)
        self.manifest = manifest
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
    def list(cls, *, home: Path | str | None = None) -> list[FeatureStore]:
        """Every store under the data root, sorted by dataset then model."""
        base = cls._home(home) / "stores"
        stores = []
        for manifest in sorted(base.glob("*/*/manifest.json")):
            with contextlib.suppress(StoreError):
                stores.append(cls.at(manifest.parent))
        return stores

    @classmethod
    def at(cls, root: Path | str) -> FeatureStore:
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
    ) -> FeatureStore:
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
    ) -> FeatureStore:
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
        return self.manifest["dataset"]

    @property
    def model_id(self) -> str:
        return self.manifest["model"]["id"]

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    @property
    def n_layers(self) -> int:
        return int(self.manifest["model"]["n_layers"])

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dim"])

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return self.manifest["tracks"]

    def track_ids(self) -> list[str]:
        """Ids of the stored tracks, sorted."""
        return sorted(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self.entries

    def labels(self, track_id: str) -> dict[str, str]:
        return dict(self.entries[track_id].get("labels") or {})

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
                self.manifest["model"],
                self.manifest["settings"],
                sorted(row(t, e) for t, e in self.entries.items()),
            ],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    # ---------------------------------------------------------------- reading
    def require_track(self, track_id: str) -> None:
        """TrackNotFoundError naming the three closest ids when ``track_id`` is not stored."""
        if track_id not in self.entries:
            raise TrackNotFoundError(
                _unknown_track_message(track_id, self.track_ids(), self.dataset)
            )

    def _track_path(self, track_id: str) -> Path:
        self.require_track(track_id)
        entry = self.entries[track_id]
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
            "segments": data["segments"].astype(np.float32),
            "aggregated": data["aggregated"].astype(np.float32),
            "starts": data["starts"],
            "lengths": data["lengths"],
            "targets": {
                k[len("target__") :]: v for k, v in data.items() if k.startswith("target__")
            },
            "meta": {**self.entries[track_id], "track_id": track_id},
        }
        return out

    def read_arrays(
        self, track_id: str, names: tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays of a track file (all, or ``names``); a missing or damaged file is a StoreError."""
        path = self._track_path(track_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in (names or z.files)}
        except Exception as exc:  # OSError, BadZipFile, KeyError, ValueError, EOFError ...
            raise StoreError(
                f"{path}: track file of {track_id!r} is missing or damaged ({type(exc).__name__}); "
                "run 'mess extract' on the dataset again to redo it"
            ) from None

    def load_aggregated(self, track_id: str) -> np.ndarray:
        """Just the track vector ``[n_layers, dim]`` float32 (mean of the windows)."""
        return self.read_arrays(track_id, ("aggregated",))["aggregated"].astype(np.float32)

    def has_track_file(self, track_id: str) -> bool:
        """Whether the track's file is there and ends like a complete zip (a cheap check: the
        end-of-central-directory record that np.savez writes last)."""
        entry = self.entries.get(track_id)
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
    def writer(self) -> Iterator[FeatureStore]:
        """Hold the store's lock for the duration; a second writer gets a clear StoreError."""
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
                self.manifest = FeatureStore.at(self.root).manifest
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
        import time

        self.manifest["updated"] = now_iso()
        atomic_write_json(self.root / "manifest.json", self.manifest)
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
        blob = json.dumps([self.manifest["model"], self.manifest["settings"]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def put(self, track_id: str, arrays: dict[str, np.ndarray], entry: dict[str, Any]) -> None:
        """Store one track atomically: the array file (with its manifest entry embedded) first,
        then the manifest that lists it (rewritten at most once a second while writing)."""
        name = track_file_name(track_id)
        full = {
            "extracted_at": now_iso(),
            **entry,
            "file": name,
        }  # callers may keep an extraction time
        meta = json.dumps(
            {"track_id": track_id, "build_stamp": self.build_stamp(), "entry": full},
            ensure_ascii=False,
        )
        atomic_savez(self.root / "tracks" / name, {**arrays, "meta": np.array(meta)})
        self.entries[track_id] = full
        self.manifest["failures"].pop(track_id, None)
        self._maybe_save()

    def adopt_orphans(self) -> list[str]:
        """List track files that a killed writer finished but never put in the manifest, when
        they were built with this store's model and settings. Returns the adopted ids."""
        listed = {e["file"] for e in self.entries.values()}
        stamp, adopted = self.build_stamp(), []
        for path in sorted((self.root / "tracks").glob("*.npz")):
            if path.name in listed:
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"])) if "meta" in z.files else None
            except Exception:  # a damaged leftover is simply not adopted
                meta = None
            if not meta or meta.get("build_stamp") != stamp:
                continue
            tid = meta.get("track_id")
            if not isinstance(tid, str) or track_file_name(tid) != path.name:
                continue
            self.entries[tid] = meta["entry"]
            adopted.append(tid)
        if adopted:
            self.save_manifest()
        return adopted

    def mark_failed(self, track_id: str, source: str, reason: str) -> None:
        self.manifest["failures"][track_id] = {"source": source, "reason": reason, "at": now_iso()}
        self._maybe_save()

    def remove(self, track_id: str) -> None:
        entry = self.entries.pop(track_id, None)
        self.save_manifest()
        if entry:
            with contextlib.suppress(OSError):
                (self.root / "tracks" / track_file_name(track_id)).unlink()

    def summary(self) -> StoreSummary:
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return StoreSummary(
            dataset=self.dataset,
            model=self.model_id,
            path=self.root,
            n_tracks=len(self.entries),
            n_failed=len(set(self.manifest.get("failures", {})) - set(self.entries)),
            n_segments=sum(int(e["n_segments"]) for e in self.entries.values()),
            hours=sum(float(e["duration_seconds"]) for e in self.entries.values()) / 3600,
            n_layers=self.n_layers,
            dim=self.dim,
            store_dtype=self.settings.get("store_dtype", "?"),
            size_bytes=size,
        )

    def track_rows(self) -> list[dict[str, Any]]:
        """``mess tracks``: one row per stored or failed track."""
        failures = self.manifest.get("failures", {})
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
            for t, e in self.entries.items()
        ]
        for t, f in self.manifest.get("failures", {}).items():
            if t not in self.entries:
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
