"""FeatureStore: per-window, time-averaged hidden states of every layer, as a Lance dataset.

One store per dataset × model, at ``<stores>/<dataset>/<model-slug>/`` where ``<stores>`` is a
local folder (default ``$MESS_HOME/stores``) or any URI Lance accepts (``s3://bucket/prefix``,
``gs://``, ``az://``). It holds two Lance tables; the layout is documented in
``docs/store-format.md``:

- ``tracks.lance``: one row per track — id, source, size, mtime, content hash, duration,
  windows, labels (JSON), status, the last failure, the extraction id, a digest of the stored
  arrays, and the time-averaged vector of every layer as its own column (``layer_00`` …);
- ``windows.lance``: one row per window — track id, extraction id, window index, start,
  length, one column per layer (float16 by default) and one per proxy target.

The build description (model identity, settings, code version) is the tracks table's schema
metadata. A track's windows belong to it through its extraction id, so windows written by a
run killed before it committed the track are never read (and are removed later).

Writes are buffered and committed in batches (:meth:`FeatureStore.commit`, at least every
``COMMIT_TRACKS`` tracks or ``COMMIT_SECONDS`` seconds while writing): one Lance commit per
table per batch, atomic and versioned; on S3 Lance commits through conditional writes, which
are checked before writing (:func:`messai.features.location.check_conditional_writes`). A
local store also admits one writer at a time (a lock file).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import StoreError, TrackNotFoundError
from messai.features import location as loc
from messai.features.records import (
    AGGREGATED,
    LENGTHS,
    SEGMENTS,
    STARTS,
    TrackEntry,
    TrackFailure,
    nfc,
    target_arrays,
)
from messai.features.store_arrow import (
    METADATA_KEY,
    column_values,
    fixed_list_to_numpy,
    layer_column,
    target_array,
    target_column,
    to_fixed_list,
    tracks_schema,
    windows_schema,
)

FORMAT = "mess-feature-store"
FORMAT_VERSION = 2
TRACKS_TABLE = "tracks.lance"
WINDOWS_TABLE = "windows.lance"
#: a plain-JSON copy of the build description plus change ids, read without Lance (cold paths)
STATE_FILE = "store.json"
_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_V1_MANIFEST = "manifest.json"
#: what store.json adds to the build description: change ids and the pending-commit flag
_STATE_KEYS = ("features_id", "state_id", "pending")
#: a local store's writer lock, and the file every process using the store holds shared
_LOCK_FILE = ".lock"
_USERS_FILE = ".users"


class StoreRemovedError(StoreError):
    """The store was removed (an empty store, by the run that created it) while this process
    waited to write it; creating it again and retrying is safe."""


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


def file_content_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """A digest of a track's stored arrays (names, dtypes, shapes, bytes), checked on read."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stores_location(*, home: Path | str | None = None, stores: str | None = None) -> str:
    """Where stores live: ``stores`` if given, else the ``stores`` setting (``MESS_STORES``),
    else ``<home>/stores``."""
    if stores:
        return loc.normalise(stores)
    from messai.config import resolve_fields  # no pydantic: this is on the cold path

    values = resolve_fields(["home", "stores"], {"home": home})
    return loc.normalise(values.stores or str(Path(values.home).expanduser() / "stores"))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in_list(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(_sql_str(v) for v in values)})"


@dataclass(frozen=True)
class StoreSummary:
    """One line of ``mess datasets``."""

    dataset: str
    model: str
    path: str
    n_tracks: int
    n_failed: int
    n_segments: int
    hours: float
    n_layers: int
    dim: int
    store_dtype: str
    size_bytes: int | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Pending:
    """Changes buffered until the next commit."""

    puts: dict[str, tuple[TrackEntry, dict[str, np.ndarray]]]
    failures: dict[str, TrackFailure]
    removes: set[str]
    stat_updates: dict[str, tuple[int, int]]
    label_updates: dict[str, dict[str, str]]

    @classmethod
    def empty(cls) -> _Pending:
        return cls({}, {}, set(), {}, {})

    def __bool__(self) -> bool:
        return bool(
            self.puts or self.failures or self.removes or self.stat_updates or self.label_updates
        )


class FeatureStore:
    """A feature store. Open existing ones with ``FeatureStore.open(dataset)``.

    Reading: :meth:`track_ids`, :meth:`entry` (a :class:`TrackEntry`), :meth:`load`,
    :meth:`layer` (one layer's track vectors from one column), :meth:`read_windows` (columns of
    every window at once), :meth:`failures`. Writing happens inside :meth:`writer`: :meth:`put`,
    :meth:`mark_failed`, :meth:`remove`, :meth:`refresh_file_stat`, :meth:`set_labels`,
    :meth:`set_source`, :meth:`reconcile_build`, :meth:`replace_targets`; changes are committed
    in batches and when the writer ends.
    """

    #: while writing, changes are committed at least this often (settings commit_tracks and
    #: commit_seconds override them per store object)
    COMMIT_TRACKS = 64
    COMMIT_SECONDS = 10.0
    #: how long a second local writer waits for the first one
    LOCK_WAIT_SECONDS = 600.0

    def __init__(self, uri: str, meta: dict[str, Any]):
        self.uri = uri
        self._meta = meta
        self._pending = _Pending.empty()
        self._writing = False
        self._last_commit = time.monotonic()
        self._rows: dict[str, dict[str, Any]] | None = None  # track id -> row (no vectors)
        self._rows_version = -1  # the tracks table's version those rows were read at
        self._build_checked = False  # the build description was read from the tracks table
        self._pending_label: str | None = None
        self._folder_dataset: str | None = None  # set when found under a stores location

    # ---------------------------------------------------------------- finding stores
    @classmethod
    def list(
        cls, *, home: Path | str | None = None, stores: str | None = None
    ) -> list[FeatureStore]:
        """Every store under the stores location, sorted by dataset then model."""
        base = stores_location(home=home, stores=stores)
        out = []
        from messai.config import _DATASET_NAME

        for dataset in loc.list_dirs(base):
            for slug in loc.list_dirs(loc.join(base, dataset)):
                with contextlib.suppress(StoreError):
                    store = cls.at(loc.join(base, dataset, slug))
                    if _DATASET_NAME.fullmatch(dataset):
                        store._folder_dataset = dataset
                    out.append(store)
        return out

    @classmethod
    def exists_at(cls, uri: str | os.PathLike[str]) -> bool:
        """Whether a store has been created at ``uri``."""
        return loc.exists(loc.join(loc.normalise(uri), TRACKS_TABLE))

    @classmethod
    def at(cls, uri: str | os.PathLike[str]) -> FeatureStore:
        """The store at ``uri`` (a folder or object-storage URI)."""
        uri = loc.normalise(uri)
        tracks = loc.join(uri, TRACKS_TABLE)
        if not loc.exists(tracks):
            if loc.exists(loc.join(uri, _V1_MANIFEST)):
                raise StoreError(
                    f"{uri}: a format-1 store (manifest.json + .npz files); convert it once with "
                    f"'mess store migrate {uri}'"
                )
            raise StoreError(f"{uri}: not a feature store (no {TRACKS_TABLE})")
        return cls(uri, _read_state(uri) or _read_meta(tracks))

    @classmethod
    def open(
        cls,
        dataset: str,
        model: str | None = None,
        *,
        home: Path | str | None = None,
        stores: str | None = None,
    ) -> FeatureStore:
        """The store of ``dataset``; ``model`` (hub id, directory, or slug) may be omitted when
        the dataset has one store."""
        from messai.config import validate_dataset_name

        validate_dataset_name(dataset)
        base = stores_location(home=home, stores=stores)
        folder = loc.join(base, dataset)
        candidates, v1 = [], []
        for slug in loc.list_dirs(folder):
            uri = loc.join(folder, slug)
            if loc.exists(loc.join(uri, TRACKS_TABLE)):
                store = cls.at(uri)
                store._folder_dataset = dataset
                candidates.append(store)
            elif loc.exists(loc.join(uri, _V1_MANIFEST)):
                v1.append(uri)
        if not candidates and v1:
            raise StoreError(
                f"dataset {dataset!r} has a format-1 store ({v1[0]}); convert it once with "
                f"'mess store migrate {v1[0]}'"
            )
        if not candidates:
            raise StoreError(
                f"no feature store for dataset {dataset!r} under {base}; "
                f"run 'mess extract PATH --dataset {dataset}'"
            )
        if model is not None:
            wanted = {str(model)}
            if Path(model).expanduser().exists():
                wanted.add(str(Path(model).expanduser().resolve()))
            matches = [s for s in candidates if s.slug in wanted or s.model_id in wanted]
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
        cls,
        uri: str | os.PathLike[str],
        *,
        dataset: str,
        model: dict[str, Any],
        settings: dict[str, Any],
    ) -> FeatureStore:
        """Create an empty store at ``uri``, or open the one another process just created
        there with the same build (never removing anything of it)."""
        import lance

        uri = loc.normalise(uri)
        if loc.is_remote(uri):
            loc.check_conditional_writes(uri)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "model": model,
            "settings": settings,
            "code_version": _code_version(),
            "created": now_iso(),
            "source": {},
        }
        n_layers, dim = int(model["n_layers"]), int(model["dim"])
        dtype = settings.get("store_dtype", "float16")
        win_schema = windows_schema(n_layers, dim, dtype)
        trk_schema = tracks_schema(n_layers, dim, meta)
        made = _make_folders(loc.local_path(uri))  # the highest folder this call created
        opts = loc.storage_options() if loc.is_remote(uri) else None
        try:
            for name, schema in ((WINDOWS_TABLE, win_schema), (TRACKS_TABLE, trk_schema)):
                table_uri = loc.join(uri, name)
                if _table_opens(table_uri, opts):
                    continue  # another process created it first: use theirs
                try:
                    # version 1 or nothing: no retry, so a creation that lost the race to
                    # another can never land as a later version over the other's data (Lance
                    # rebases write_dataset(mode="create") into an Overwrite on S3)
                    lance.LanceDataset.commit(
                        table_uri,
                        lance.LanceOperation.Overwrite(schema, []),
                        max_retries=0,
                        enable_v2_manifest_paths=True,
                        storage_options=opts,
                    )
                except BaseException as exc:
                    if not lance_failure(exc):
                        raise
                    if not _table_opens(table_uri, opts):
                        raise storage_error(uri, exc) from None
                    # another process created it first: use theirs, remove nothing
            store = cls.at(uri)
            if _read_state(uri) is None:
                store._renew_state(features=True, inputs=True)
        except BaseException:
            if made is not None:  # only folders this call made (never another run's store)
                loc.remove_tree(str(made))
            raise
        return store

    # ---------------------------------------------------------------- properties
    @property
    def root(self) -> Path:
        """The store's folder (local stores only)."""
        path = loc.local_path(self.uri)
        if path is None:
            raise StoreError(f"{self.uri}: an object-storage store has no local folder")
        return path

    @property
    def slug(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def dataset(self) -> str:
        """The dataset's name. A store found under a stores location (:meth:`open`,
        :meth:`list`) is the dataset of the folder it lives in (``<stores>/<dataset>/<model>``),
        so a store copied or moved into another dataset's folder takes that name (and its own
        index cache); a store opened by its location has the name it records."""
        return self._folder_dataset or self._meta["dataset"]

    @property
    def model_id(self) -> str:
        return self._meta["model"]["id"]

    @property
    def model(self) -> dict[str, Any]:
        """The model identity the store was built with (a copy)."""
        return dict(self._meta["model"])

    @property
    def family(self) -> str:
        """The model family that made the store (:mod:`messai.models`; stores without a
        ``family`` in their model identity are MERT's)."""
        return str(self._meta["model"].get("family", "mert"))

    @property
    def settings(self) -> dict[str, Any]:
        """Extraction settings (rate, window, normalisation, dtype, precision; a copy)."""
        return dict(self._meta["settings"])

    @property
    def n_layers(self) -> int:
        return int(self._meta["model"]["n_layers"])

    @property
    def dim(self) -> int:
        return int(self._meta["model"]["dim"])

    @property
    def code_version(self) -> str:
        return str(self._meta.get("code_version", ""))

    @property
    def source_root(self) -> Path | None:
        root = (self._meta.get("source") or {}).get("root")
        return Path(root) if root else None

    @property
    def source_kind(self) -> str | None:
        return (self._meta.get("source") or {}).get("kind")

    @property
    def version(self) -> int:
        """The tracks table's version: it changes with every commit."""
        return int(self._tracks().version)

    # ---------------------------------------------------------------- lance tables
    def _table_uri(self, name: str) -> str:
        return loc.join(self.uri, name)

    def open_table(self, name: str, *, version: int | None = None):
        """One of the store's Lance tables (``tracks.lance`` or ``windows.lance``), at its
        latest version or at ``version``."""
        import lance

        if not self._build_checked:
            self._use_table_build()
        opts = loc.storage_options() if loc.is_remote(self.uri) else None
        try:
            return lance.dataset(self._table_uri(name), version=version, storage_options=opts)
        except BaseException as exc:
            if not lance_failure(exc):
                raise
            raise storage_error(self.uri, exc) from None

    def _use_table_build(self) -> None:
        """Take the build description (model, settings, dimensions) from the tracks table's
        own schema metadata, which is committed with the data: ``store.json`` is only a copy
        for the cold paths, and an edited or stale copy must never change how data is read."""
        self._build_checked = True
        meta = _read_meta(self._table_uri(TRACKS_TABLE))
        keep = {k: self._meta[k] for k in _STATE_KEYS if k in self._meta}
        self._meta = {**meta, **keep}

    def _tracks(self):
        return self.open_table(TRACKS_TABLE)

    def _windows(self):
        return self.open_table(WINDOWS_TABLE)

    def _read(self, table: str, *, columns: list[str], filter: str | None = None):
        """Columns of a table (a pyarrow Table); a damaged or missing file is one StoreError."""
        return self._scan(table, lambda ds: ds.to_table(columns=columns, filter=filter))[1]

    def _scan(self, table: str, read: Callable[[Any], Any]) -> tuple[Any, Any]:
        """``(dataset, read(dataset))`` on the table's latest version. A version that
        compaction removed while it was read (``mess store compact --retention-days 0``)
        is read again at the version that replaced it."""
        for attempt in range(4):
            ds = self.open_table(table)
            try:
                return ds, read(ds)
            except BaseException as exc:
                if not lance_failure(exc):
                    raise
                if attempt < 3 and self._latest_version(table) not in (None, ds.version):
                    continue  # the version went away under this read: read the new one
                raise storage_error(self.uri, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _latest_version(self, table: str) -> int | None:
        try:
            return int(self.open_table(table).version)
        except StoreError:
            return None

    _META_COLUMNS = (
        "track_id",
        "status",
        "extraction_id",
        "source",
        "size",
        "mtime_ns",
        "content_hash",
        "duration_seconds",
        "n_segments",
        "targets",
        "labels",
        "extracted_at",
        "targets_at",
        "failure",
        "failure_source",
        "failed_at",
        "digest",
    )

    def _all_rows(self) -> dict[str, dict[str, Any]]:
        """Every track row without its vectors, by id (read once per store object)."""
        if self._rows is None:
            ds, table = self._scan(
                TRACKS_TABLE, lambda d: d.to_table(columns=list(self._META_COLUMNS))
            )
            self._rows_version = int(ds.version)
            self._rows = {r["track_id"]: r for r in table.to_pylist()}
        return self._rows

    def ok_rows(self) -> dict[str, dict[str, Any]]:
        """Rows (without vectors) of the stored tracks, by id."""
        return {t: r for t, r in self._all_rows().items() if r["status"] == "ok"}

    # ---------------------------------------------------------------- reading
    def track_ids(self) -> list[str]:
        """Ids of the stored tracks, sorted."""
        return sorted(self.ok_rows())

    def __len__(self) -> int:
        return len(self.ok_rows())

    def __contains__(self, track_id: object) -> bool:
        row = self._all_rows().get(nfc(track_id))  # type: ignore[arg-type]
        return row is not None and row["status"] == "ok"

    def entry(self, track_id: str) -> TrackEntry:
        """The record of a stored track; TrackNotFoundError (with the closest ids) if absent."""
        self.require_track(track_id)
        return _entry_of(self._all_rows()[nfc(track_id)])

    def get_entry(self, track_id: str) -> TrackEntry | None:
        row = self._all_rows().get(nfc(track_id))
        return _entry_of(row) if row is not None and row["status"] == "ok" else None

    def iter_entries(self) -> Iterator[TrackEntry]:
        rows = self.ok_rows()
        for track_id in sorted(rows):
            yield _entry_of(rows[track_id])

    def failures(self) -> dict[str, TrackFailure]:
        """Track id → its last failed extraction (stored tracks that failed later included)."""
        return {
            t: TrackFailure(
                t,
                r["failure_source"] or r["source"] or "",
                r["failure"],
                r["failed_at"],
                r["size"] if r["status"] == "failed" else None,  # stored tracks: the entry's
                r["mtime_ns"] if r["status"] == "failed" else None,
            )
            for t, r in self._all_rows().items()
            if r["failure"]
        }

    def labels(self, track_id: str) -> dict[str, str]:
        return json.loads(self._all_rows()[nfc(track_id)]["labels"] or "{}")

    def fingerprint(self, *, probe_inputs: bool = False) -> str:
        """Changes whenever the features change (indices depend on this). With ``probe_inputs``
        it also covers the proxy targets and labels (probe results depend on those too).

        Constant time: the ids in ``store.json``, read before any row (see
        :meth:`_renew_state` for the protocol: ids are marked pending before a commit and
        unmarked after it, so ids paired with rows older than them are never handed out).
        A store without them (written by hand) gets a hash of its rows."""
        key = "state_id" if probe_inputs else "features_id"
        if self._meta.get("pending"):
            # a commit is under way: the rows this object reads may be older than the ids,
            # so nothing built from them may be labelled with the ids (it would look fresh
            # while missing the commit); a label of this object alone is never fresh later
            if self._pending_label is None:
                self._pending_label = "pending-" + uuid.uuid4().hex[:20]
            return f"{self._pending_label}-{key}"
        if self._meta.get(key):
            return str(self._meta[key])
        rows = self.ok_rows()

        def row(t: str, r: dict[str, Any]) -> tuple:
            base = (t, r["content_hash"], r["n_segments"], r["extracted_at"])
            if probe_inputs:
                base += (r["targets_at"], r["labels"])
            return base

        blob = json.dumps(
            [
                self._meta["model"],
                self._meta["settings"],
                sorted(row(t, r) for t, r in rows.items()),
            ],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def track_versions(self, track_ids: Iterable[str]) -> dict[str, str]:
        """Track id → a string that changes whenever that track's features change."""
        rows = self._all_rows()
        return {t: f"{rows[t]['content_hash']}:{rows[t]['extraction_id']}" for t in track_ids}

    def require_track(self, track_id: str) -> None:
        """TrackNotFoundError naming the three closest ids when ``track_id`` is not stored."""
        if track_id not in self:
            row = self._all_rows().get(nfc(track_id))
            if row is not None and row["failure"]:
                raise TrackNotFoundError(
                    f"track {track_id!r} of dataset {self.dataset!r} failed to extract: "
                    f"{row['failure']}"
                )
            raise TrackNotFoundError(
                _unknown_track_message(track_id, self.track_ids(), self.dataset)
            )

    def layer(
        self, layer: int, *, track_ids: list[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """One layer's track vectors, read from its own column.

        Returns
        -------
        ids : list of str
            Track ids, in the order of the rows (sorted, or ``track_ids`` when given).
        vectors : ndarray, shape (n_tracks, dim), float32
        """
        if not 0 <= layer < self.n_layers:
            raise StoreError(
                f"layer {layer} out of range: the store's model has layers 0..{self.n_layers - 1}"
            )
        table = self._read(TRACKS_TABLE, columns=["track_id", "status", layer_column(layer)])
        ids = table.column("track_id").to_pylist()
        ok = np.asarray([s == "ok" for s in table.column("status").to_pylist()], dtype=bool)
        vectors = fixed_list_to_numpy(table.column(layer_column(layer)), self.dim, np.float32)
        pos = {t: i for i, t in enumerate(ids) if ok[i]}
        wanted = track_ids if track_ids is not None else sorted(pos)
        missing = [t for t in wanted if t not in pos]
        if missing:
            self.require_track(missing[0])
        order = np.fromiter((pos[t] for t in wanted), dtype=np.int64, count=len(wanted))
        return list(wanted), np.ascontiguousarray(vectors[order])

    def load(self, track_id: str) -> dict[str, Any]:
        """``segments [n_segments, n_layers, dim]`` float32, ``aggregated [n_layers, dim]``,
        ``targets`` name → array, ``starts``/``lengths`` (samples), ``meta`` (the entry)."""
        data = self.read_arrays(track_id)
        return {
            SEGMENTS: data[SEGMENTS].astype(np.float32),
            AGGREGATED: data[AGGREGATED].astype(np.float32),
            STARTS: data[STARTS],
            LENGTHS: data[LENGTHS],
            "targets": target_arrays(data),
            "meta": {**self.entry(track_id).to_dict(), "track_id": track_id},
        }

    def read_arrays(
        self, track_id: str, names: tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays of a track as stored (segments in the store dtype), checked against what was
        recorded (window count and digest); a mismatch or damaged data is a StoreError."""
        try:
            return self._read_arrays(track_id, names)
        except StoreError:
            if self._rows is None or self._rows_version == self.version:
                raise
            self._rows = None  # another process changed the store since this object read it
            return self._read_arrays(track_id, names)

    def _read_arrays(
        self, track_id: str, names: tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray]:
        self.require_track(track_id)
        track_id = nfc(track_id)
        row = self._all_rows()[track_id]
        if names == (AGGREGATED,):
            table = self._read(
                TRACKS_TABLE,
                columns=[layer_column(i) for i in range(self.n_layers)],
                filter=f"track_id = {_sql_str(track_id)}",
            )
            return {AGGREGATED: self._aggregated_of(table, 0)}
        arrays = self._windows_arrays([row])[track_id]
        tracks = self._read(
            TRACKS_TABLE,
            columns=[layer_column(i) for i in range(self.n_layers)],
            filter=f"track_id = {_sql_str(track_id)}",
        )
        arrays[AGGREGATED] = self._aggregated_of(tracks, 0)
        if arrays_digest(arrays) != row["digest"]:
            raise StoreError(
                f"{self.uri}: stored data of track {track_id!r} does not match its record "
                "(damaged); 'mess store verify --repair' removes it and 'mess extract' redoes it"
            )
        return {k: v for k, v in arrays.items() if names is None or k in names}

    def _aggregated_of(self, table, row: int) -> np.ndarray:
        return np.stack(
            [
                fixed_list_to_numpy(
                    table.column(layer_column(i)).slice(row, 1), self.dim, np.float32
                )[0]
                for i in range(self.n_layers)
            ]
        )

    def _windows_arrays(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
        """The window arrays of ``rows`` (one scan), checked against their window counts."""
        eids = {r["extraction_id"]: r for r in rows}
        table = self._read(
            WINDOWS_TABLE,
            columns=self._window_columns(),
            filter=_in_list("extraction_id", eids),
        )
        return self._split_windows(table, eids)

    def _window_dtype(self):
        """The dtype of the stored windows, as the windows table's schema says."""
        type_ = self._windows().schema.field(layer_column(0)).type.value_type
        return np.dtype(type_.to_pandas_dtype())

    def _window_columns(self) -> list[str]:
        names = set(self._windows().schema.names)
        cols = ["track_id", "extraction_id", "window", "start", "length"]
        cols += [layer_column(i) for i in range(self.n_layers)]
        cols += sorted(n for n in names if n.startswith("target_"))
        return cols

    def _split_windows(
        self, table, eids: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, np.ndarray]]:
        from messai.features.records import target_array_name

        dtype = self._window_dtype()
        eid_col = np.asarray(table.column("extraction_id").to_pylist(), dtype=object)
        window = table.column("window").to_numpy()
        out = {}
        layers = [
            fixed_list_to_numpy(table.column(layer_column(i)), self.dim, dtype)
            for i in range(self.n_layers)
        ]
        starts = table.column("start").to_numpy()
        lengths = table.column("length").to_numpy()
        targets = {
            n[len("target_") :]: table.column(n)
            for n in table.column_names
            if n.startswith("target_")
        }
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(eid_col):
            groups.setdefault(e, []).append(i)
        for eid, row in eids.items():
            idx = np.asarray(groups.get(eid, []), dtype=np.int64)
            idx = idx[np.argsort(window[idx], kind="stable")] if len(idx) else idx
            tid = row["track_id"]
            if len(idx) != row["n_segments"] or not np.array_equal(
                window[idx], np.arange(len(idx))
            ):
                raise StoreError(
                    f"{self.uri}: track {tid!r} has {len(idx)} stored windows, its record says "
                    f"{row['n_segments']} (damaged); 'mess store verify --repair' removes it and "
                    "'mess extract' redoes it"
                )
            arrays = {
                SEGMENTS: np.stack([lay[idx] for lay in layers], axis=1)
                if len(idx)
                else np.zeros((0, self.n_layers, self.dim), dtype),
                STARTS: starts[idx].astype(np.int64),
                LENGTHS: lengths[idx].astype(np.int64),
            }
            for name in row["targets"] or []:
                col = targets.get(name)
                if col is None:
                    continue
                arrays[target_array_name(name)] = column_values(col, idx)
            out[tid] = arrays
        return out

    def read_windows(
        self,
        *,
        layers: bool = True,
        targets: Iterable[str] | None = None,
        track_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        """Every window of the stored tracks in one scan (the probe's input).

        Returns a dict with ``track_ids`` (list, one per track, in order), ``n_segments``
        (int array), ``segments`` ``[n_windows, n_layers, dim]`` in the store dtype (with
        ``layers``) and ``targets`` name → ``[n_windows(, k)]`` float32 (tracks lacking a
        target get NaN). Windows are in track order, then window order.
        """
        rows = self.ok_rows()
        ids = track_ids if track_ids is not None else sorted(rows)
        for t in ids:
            if t not in rows:
                self.require_track(t)
        wanted_targets = list(targets or [])
        cols = ["extraction_id", "window"]
        if layers:
            cols += [layer_column(i) for i in range(self.n_layers)]
        present = set(self._windows().schema.names)
        cols += [target_column(t) for t in wanted_targets if target_column(t) in present]
        table = self._read(WINDOWS_TABLE, columns=cols)
        eid_of = {rows[t]["extraction_id"]: t for t in ids}
        eids = np.asarray(table.column("extraction_id").to_pylist(), dtype=object)
        window = table.column("window").to_numpy()
        keep = np.fromiter((e in eid_of for e in eids), dtype=bool, count=len(eids))
        rank = {e: i for i, e in enumerate(rows[t]["extraction_id"] for t in ids)}
        sel = np.flatnonzero(keep)
        order = sel[
            np.lexsort(
                (
                    window[sel],
                    np.fromiter((rank[e] for e in eids[sel]), dtype=np.int64, count=len(sel)),
                )
            )
        ]
        n_seg = np.asarray([rows[t]["n_segments"] for t in ids], dtype=np.int64)
        if len(order) != int(n_seg.sum()):
            raise StoreError(
                f"{self.uri}: the windows table holds {len(order)} windows for these tracks, "
                f"their records say {int(n_seg.sum())} (damaged); 'mess store verify' names them, "
                "--repair removes them and 'mess extract' redoes them"
            )
        out: dict[str, Any] = {"track_ids": list(ids), "n_segments": n_seg}
        if layers:
            dtype = self._window_dtype()
            seg = np.empty((len(order), self.n_layers, self.dim), dtype=dtype)
            for i in range(self.n_layers):
                seg[:, i] = fixed_list_to_numpy(table.column(layer_column(i)), self.dim, dtype)[
                    order
                ]
            out["segments"] = seg
        values = {}
        for t in wanted_targets:
            if target_column(t) in table.column_names:
                values[t] = column_values(table.column(target_column(t)), order)
        out["targets"] = values
        return out

    def window_counts_ok(self) -> set[str]:
        """Ids of stored tracks whose windows are all there (a cheap scan of two columns)."""
        rows = self.ok_rows()
        table = self._read(WINDOWS_TABLE, columns=["extraction_id"])
        counts: dict[str, int] = {}
        for e in table.column("extraction_id").to_pylist():
            counts[e] = counts.get(e, 0) + 1
        return {t for t, r in rows.items() if counts.get(r["extraction_id"], 0) == r["n_segments"]}

    # ---------------------------------------------------------------- writing
    @contextlib.contextmanager
    def writer(
        self,
        *,
        wait_seconds: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[FeatureStore]:
        """Hold the store for writing; changes are committed in batches and at the end.

        A local store admits one writer at a time: a second one waits for the first (up to
        ``wait_seconds``, default ``LOCK_WAIT_SECONDS``; ``on_wait`` is told once), then gets
        a clear StoreError. On object storage concurrent writers are serialised by Lance's
        conditional commits."""
        local = loc.local_path(self.uri) is not None
        wait = self.LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds
        users_fd = lock_fd = None
        try:
            if local:
                # a shared hold on .users tells a cleanup that this process uses the store,
                # from before it waits for the writer lock until it is done
                import fcntl

                users_fd = self._open_lock_file(_USERS_FILE)
                fcntl.flock(users_fd, fcntl.LOCK_SH)
                lock_fd = self._lock(wait, on_wait)
                self._check_not_removed({_USERS_FILE: users_fd, _LOCK_FILE: lock_fd})
            self._refresh()
            if self._meta.get("pending"):  # a writer died mid-commit: its ids stand for nothing
                self._renew_state(features=True, inputs=True)
            self._collect_garbage()
            self._writing = True
            try:
                yield self
            finally:
                self._writing = False
                self.commit()
        finally:
            for fd in (lock_fd, users_fd):
                if fd is not None:
                    os.close(fd)

    def _open_lock_file(self, name: str) -> int:
        try:
            return os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise StoreRemovedError(
                f"{self.uri}: the store was removed before this process could write it"
            ) from None
        except OSError as exc:
            raise storage_error(self.uri, exc) from None

    def _check_not_removed(self, fds: dict[str, int]) -> None:
        """StoreRemovedError when the store was removed while this process waited (its lock
        files are then no longer the ones in the folder)."""
        for name, fd in fds.items():
            try:
                same = os.stat(self.root / name).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same or not loc.exists(self._table_uri(TRACKS_TABLE)):
                raise StoreRemovedError(
                    f"{self.uri}: the store was removed while this process waited for it"
                )

    def remove_if_unused(self) -> bool:
        """Remove the store if it holds no track and no failure and no other process uses it
        (writing, or waiting to write); True if it was removed. An object-storage store is
        never removed: other writers there hold no lock this could see."""
        import fcntl

        if loc.local_path(self.uri) is None:
            return False
        fds = []
        try:
            for name in (_LOCK_FILE, _USERS_FILE):
                fd = self._open_lock_file(name)
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # another process writes or waits to write
            fresh = FeatureStore.at(self.uri)
            if len(fresh) or fresh.failures():
                return False
            loc.remove_tree(self.uri)
            return True
        finally:
            for fd in fds:
                os.close(fd)

    def _lock(self, wait_seconds: float, on_wait: Callable[[str], None] | None) -> int:
        import fcntl

        fd = self._open_lock_file(_LOCK_FILE)
        deadline, told = time.monotonic() + wait_seconds, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreError(
                        f"{self.uri}: another mess process (pid {holder}) is writing this store; "
                        "wait for it to finish and run again"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for another mess process (pid {holder}) writing {self.uri}")
                told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _refresh(self) -> None:
        meta = _read_meta(self._table_uri(TRACKS_TABLE))
        state = _read_state(self.uri) or {}
        meta.update({k: state[k] for k in _STATE_KEYS if k in state})
        self._meta = meta
        self._build_checked = True
        self._rows = None

    def _renew_state(self, *, features: bool, inputs: bool, pending: bool = False) -> None:
        """Write ``store.json``: the build description and the change ids.

        The protocol that keeps an index from being labelled fresh over rows it lacks: a
        commit that changes the data is preceded by new ids marked ``pending`` and followed
        by the same ids unmarked. A reader reads ``store.json`` before any row, so ids it
        finds unmarked were written after the commit they stand for; ids it finds pending
        are never used as a label (:meth:`fingerprint`). A writer that died in between left
        them pending; the next writer replaces them."""
        meta = {k: v for k, v in self._meta.items() if k != "pending"}
        if features or not meta.get("features_id"):
            meta["features_id"] = uuid.uuid4().hex[:20]
        if features or inputs or not meta.get("state_id"):
            meta["state_id"] = uuid.uuid4().hex[:20]
        if pending:
            meta["pending"] = True
        data = (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
        try:
            loc.write_bytes(loc.join(self.uri, STATE_FILE), data)
        except OSError as exc:
            raise storage_error(self.uri, exc) from None
        self._meta = meta

    def _collect_garbage(self) -> None:
        """Remove windows that no committed track refers to (a killed run's last batch)."""
        live = {r["extraction_id"] for r in self._all_rows().values() if r["status"] == "ok"}
        table = self._read(WINDOWS_TABLE, columns=["extraction_id"])
        dead = set(table.column("extraction_id").to_pylist()) - live
        if dead:
            self._delete(WINDOWS_TABLE, _in_list("extraction_id", sorted(dead)))

    def put(self, entry: TrackEntry, arrays: dict[str, np.ndarray]) -> None:
        """Store one track (committed with the next batch). An entry without ``extracted_at``
        gets the current time."""
        if entry.extracted_at is None:
            entry = entry.with_changes(extracted_at=now_iso())
        if nfc(entry.track_id) != entry.track_id:
            entry = entry.with_changes(track_id=nfc(entry.track_id))
        _check_text(entry.track_id, entry.source)
        self._pending.puts[entry.track_id] = (entry, arrays)
        self._pending.failures.pop(entry.track_id, None)
        self._pending.removes.discard(entry.track_id)
        self._maybe_commit()

    def mark_failed(
        self,
        track_id: str,
        source: str,
        reason: str,
        *,
        size: int | None = None,
        mtime_ns: int | None = None,
        at: str | None = None,
    ) -> None:
        """Record a failed extraction (``size``/``mtime_ns``: the file as it was then; ``at``:
        when the attempt began, ISO 8601, default now)."""
        track_id = nfc(track_id)
        _check_text(track_id, source)
        self._pending.failures[track_id] = TrackFailure(
            track_id, source, reason, at or now_iso(), size, mtime_ns
        )
        self._maybe_commit()

    def forget_failure(self, track_id: str) -> None:
        track_id = nfc(track_id)
        row = self._all_rows().get(track_id)
        if row is not None and row["failure"]:
            if row["status"] == "failed":
                self._pending.removes.add(track_id)
            else:
                self._update_rows(
                    {track_id: {"failure": None, "failure_source": None, "failed_at": None}}
                )

    def remove(self, track_id: str) -> None:
        track_id = nfc(track_id)
        self._pending.puts.pop(track_id, None)
        self._pending.removes.add(track_id)
        self._maybe_commit()

    def refresh_file_stat(self, track_id: str, *, size: int, mtime_ns: int) -> None:
        track_id = nfc(track_id)
        self._pending.stat_updates[track_id] = (size, mtime_ns)

    def set_labels(self, track_id: str, labels: dict[str, str]) -> None:
        track_id = nfc(track_id)
        if json.loads(self._all_rows()[track_id]["labels"] or "{}") != dict(labels):
            self._pending.label_updates[track_id] = dict(labels)

    def set_source(self, root: Path, kind: str) -> None:
        source = {"root": str(root), "kind": kind}
        if self._meta.get("source") != source:
            self._write_meta({**self._meta, "source": source})

    def replace_targets(self, track_id: str, targets: dict[str, np.ndarray]) -> None:
        """Replace a stored track's proxy targets (features and extraction time unchanged)."""
        from messai.features.records import feature_arrays, target_array_name

        arrays = feature_arrays(self.read_arrays(track_id))
        arrays.update(
            {target_array_name(k): np.asarray(v, dtype=np.float32) for k, v in targets.items()}
        )
        entry = self.entry(track_id).with_changes(
            targets=tuple(sorted(targets)), targets_at=now_iso()
        )
        self.put(entry, arrays)

    def reconcile_build(
        self, identity: dict[str, Any], settings: dict[str, Any], *, force: bool
    ) -> None:
        """Refuse to mix models or settings in one store unless ``force``; with ``force``, a
        store built differently is emptied (its tracks are all redone)."""
        old_settings, old_model = self._meta["settings"], self._meta["model"]
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
        if not changed:
            return
        if len(self) and not force:
            raise StoreError(
                f"{self.uri}: store was built with different settings ({'; '.join(changed)}); "
                "re-run with --force to rebuild it, or use another --dataset name"
            )
        import lance

        self._renew_state(features=True, inputs=True, pending=True)
        meta = {**self._meta, "model": identity, "settings": settings}
        meta.pop("pending", None)
        n_layers, dim = int(identity["n_layers"]), int(identity["dim"])
        opts = loc.storage_options() if loc.is_remote(self.uri) else None
        lance.write_dataset(
            windows_schema(n_layers, dim, settings.get("store_dtype", "float16")).empty_table(),
            self._table_uri(WINDOWS_TABLE),
            mode="overwrite",
            storage_options=opts,
        )
        lance.write_dataset(
            tracks_schema(n_layers, dim, meta).empty_table(),
            self._table_uri(TRACKS_TABLE),
            mode="overwrite",
            storage_options=opts,
        )
        self._pending = _Pending.empty()
        self._meta = meta
        self._renew_state(features=True, inputs=True)
        self._refresh()

    def _maybe_commit(self) -> None:
        if not self._writing:
            self.commit()
            return
        n = len(self._pending.puts) + len(self._pending.failures) + len(self._pending.removes)
        if n >= self.COMMIT_TRACKS or time.monotonic() - self._last_commit >= self.COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        """Write the buffered changes: windows first, then the track rows that point at them,
        then the windows they replace are deleted. A crash between steps leaves the store
        consistent (unreferenced windows are never read and are collected later)."""
        pending, self._pending = self._pending, _Pending.empty()
        self._last_commit = time.monotonic()
        if not pending:
            return
        changes_data = bool(pending.puts or pending.removes)
        changes_inputs = bool(pending.label_updates or pending.failures)
        marked = changes_data or changes_inputs  # file stats alone change no result
        if marked:
            self._renew_state(features=changes_data, inputs=changes_inputs, pending=True)
        try:
            self._commit(pending)
        except BaseException:
            # nothing of a failed batch is half-visible; keep it pending for a retry
            self._pending = pending
            raise
        if marked:
            self._renew_state(features=False, inputs=False)  # the same ids, now standing
        self._rows = None

    def _commit(self, p: _Pending) -> None:
        touched = {*p.puts, *p.removes, *p.failures, *p.stat_updates, *p.label_updates}
        rows = self._rows_of(touched)  # only the batch's rows: a commit costs O(batch), not O(N)
        old_eids = [
            rows[t]["extraction_id"]
            for t in [*p.puts, *p.removes]
            if t in rows and rows[t]["extraction_id"]
        ]
        if p.puts:
            eid = {t: uuid.uuid4().hex for t in p.puts}
            win = self._windows_table({t: (eid[t], arrays) for t, (_, arrays) in p.puts.items()})
            self._write(WINDOWS_TABLE, win, mode="append")
            trk = self._tracks_rows([(e, arrays, eid[e.track_id]) for e, arrays in p.puts.values()])
            if any(t in rows for t in p.puts):
                self._merge(trk)
            else:  # all new: a plain append (a merge would scan every track id)
                self._write(TRACKS_TABLE, trk, mode="append")
        new_failed = [
            f for t, f in p.failures.items() if t not in rows or rows[t]["status"] == "failed"
        ]
        stale = {t: f for t, f in p.failures.items() if t in rows and rows[t]["status"] == "ok"}
        if new_failed:
            self._merge(self._failed_rows(new_failed))
        updates: dict[str, dict[str, Any]] = {}
        for t, f in stale.items():
            updates.setdefault(t, {}).update(
                failure=f.reason, failure_source=f.source, failed_at=f.at
            )
        for t, (size, mtime) in p.stat_updates.items():
            if t in rows and t not in p.puts:
                updates.setdefault(t, {}).update(size=size, mtime_ns=mtime)
        for t, labels in p.label_updates.items():
            if t in rows and t not in p.puts:
                updates.setdefault(t, {}).update(
                    labels=json.dumps(labels, ensure_ascii=False, sort_keys=True)
                )
        if updates:
            self._update_rows(updates)
        if p.removes:
            self._delete(TRACKS_TABLE, _in_list("track_id", sorted(p.removes)))
        if old_eids:
            self._delete(WINDOWS_TABLE, _in_list("extraction_id", sorted(set(old_eids))))

    def _rows_of(self, track_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The current rows (without vectors) of ``track_ids`` that exist."""
        ids = sorted(set(track_ids))
        if not ids:
            return {}
        if self._rows is not None:
            return {t: self._rows[t] for t in ids if t in self._rows}
        table = self._read(
            TRACKS_TABLE, columns=list(self._META_COLUMNS), filter=_in_list("track_id", ids)
        )
        return {r["track_id"]: r for r in table.to_pylist()}

    def _update_rows(self, updates: dict[str, dict[str, Any]]) -> None:
        """Update some columns of existing rows (one merge of the changed rows)."""
        import pyarrow as pa

        schema = self._tracks().schema
        table = self._read(TRACKS_TABLE, columns=schema.names, filter=_in_list("track_id", updates))
        d = table.to_pydict()
        for i, t in enumerate(d["track_id"]):
            for k, v in updates[t].items():
                d[k][i] = v
        self._merge(pa.table(d, schema=schema))

    def _retrying(self, operation: Callable[[], Any]) -> Any:
        """Run a Lance commit; a conflict with a concurrent writer's commit is retried on the
        new version (Lance rebases compatible changes itself; this covers the rest)."""
        for attempt in range(8):
            try:
                return operation()
            except BaseException as exc:
                if not lance_failure(exc):
                    raise
                if not _is_conflict(exc) or attempt == 7:
                    raise storage_error(self.uri, exc) from None
                time.sleep(0.05 * 2**attempt)
        return None  # pragma: no cover

    def _write(self, name: str, table, *, mode: str) -> None:
        import lance

        opts = loc.storage_options() if loc.is_remote(self.uri) else None
        self._retrying(
            lambda: lance.write_dataset(
                table, self._table_uri(name), mode=mode, storage_options=opts
            )
        )

    def _merge(self, table) -> None:
        self._retrying(
            lambda: (
                self._tracks()
                .merge_insert("track_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(table)
            )
        )

    def _delete(self, name: str, predicate: str) -> None:
        self._retrying(lambda: self.open_table(name).delete(predicate))

    def _write_meta(self, meta: dict[str, Any]) -> None:
        self._meta = meta
        self._renew_state(features=False, inputs=False)
        meta = {k: v for k, v in self._meta.items() if k not in _STATE_KEYS}
        text = json.dumps(meta, ensure_ascii=False)
        # an UpdateConfig commit: a concurrent writer's (S3) is a conflict to retry, not an end
        self._retrying(
            lambda: self._tracks().update_schema_metadata(
                {METADATA_KEY.decode(): text}, replace=True
            )
        )

    def _windows_table(self, items: dict[str, tuple[str, dict[str, np.ndarray]]]):
        """One table of every window of ``items`` (track id → (extraction id, arrays)):
        columns are built from arrays concatenated over the batch, one conversion each."""
        import pyarrow as pa

        from messai.features.records import target_arrays as targets_of

        schema = self._windows().schema
        tracks = list(items.items())
        counts = [arrays[SEGMENTS].shape[0] for _, (_, arrays) in tracks]
        total = sum(counts)
        cols: dict[str, Any] = {
            "track_id": pa.array(np.repeat([t for t, _ in tracks], counts).tolist(), pa.string()),
            "extraction_id": pa.array(
                np.repeat([e for _, (e, _) in tracks], counts).tolist(), pa.string()
            ),
            "window": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in counts])),
            "start": pa.array(
                np.concatenate([np.asarray(a[STARTS], np.int64) for _, (_, a) in tracks])
            ),
            "length": pa.array(
                np.concatenate([np.asarray(a[LENGTHS], np.int64) for _, (_, a) in tracks])
            ),
        }
        for i in range(self.n_layers):
            layer = np.concatenate([a[SEGMENTS][:, i] for _, (_, a) in tracks])
            cols[layer_column(i)] = to_fixed_list(layer, schema.field(layer_column(i)).type)
        per_track = [targets_of(a) for _, (_, a) in tracks]
        for name in schema.names:
            if not name.startswith("target_"):
                continue
            type_ = schema.field(name).type
            key = name[len("target_") :]
            if not any(key in tv for tv in per_track):
                cols[name] = pa.nulls(total, type_)
                continue
            parts = [target_array(tv.get(key), n, type_) for tv, n in zip(per_track, counts)]
            cols[name] = pa.concat_arrays(parts)
        return pa.table(cols, schema=schema)

    def _tracks_rows(self, items: list[tuple[TrackEntry, dict[str, np.ndarray], str]]):
        import pyarrow as pa

        schema = self._tracks().schema
        d: dict[str, list] = {n: [] for n in schema.names}
        vectors: dict[int, list[np.ndarray]] = {i: [] for i in range(self.n_layers)}
        for entry, arrays, eid in items:
            agg = np.asarray(arrays[AGGREGATED], dtype=np.float32)
            d["track_id"].append(entry.track_id)
            d["status"].append("ok")
            d["extraction_id"].append(eid)
            d["source"].append(entry.source)
            d["size"].append(entry.size)
            d["mtime_ns"].append(entry.mtime_ns)
            d["content_hash"].append(entry.content_hash)
            d["duration_seconds"].append(entry.duration_seconds)
            d["n_segments"].append(entry.n_segments)
            d["targets"].append(list(entry.targets))
            d["labels"].append(json.dumps(entry.labels, ensure_ascii=False, sort_keys=True))
            d["extracted_at"].append(entry.extracted_at)
            d["targets_at"].append(entry.targets_at)
            d["failure"].append(None)
            d["failure_source"].append(None)
            d["failed_at"].append(None)
            d["digest"].append(arrays_digest({**arrays, AGGREGATED: agg}))
            for i in range(self.n_layers):
                vectors[i].append(agg[i])
        cols = {n: v for n, v in d.items() if not n.startswith("layer_")}
        arrays_out = {n: pa.array(v, schema.field(n).type) for n, v in cols.items()}
        for i in range(self.n_layers):
            arrays_out[layer_column(i)] = to_fixed_list(
                np.stack(vectors[i]), schema.field(layer_column(i)).type
            )
        return pa.table(arrays_out, schema=schema)

    def _failed_rows(self, failures: list[TrackFailure]):
        import pyarrow as pa

        schema = self._tracks().schema
        d: dict[str, Any] = {}
        for name in schema.names:
            field = schema.field(name)
            d[name] = pa.nulls(len(failures), field.type)
        d["track_id"] = pa.array([f.track_id for f in failures], pa.string())
        d["status"] = pa.array(["failed"] * len(failures), pa.string())
        d["extraction_id"] = pa.array([""] * len(failures), pa.string())
        d["source"] = pa.array([f.source for f in failures], pa.string())
        d["size"] = pa.array([f.size for f in failures], pa.int64())
        d["mtime_ns"] = pa.array([f.mtime_ns for f in failures], pa.int64())
        d["n_segments"] = pa.array([0] * len(failures), pa.int32())
        d["labels"] = pa.array(["{}"] * len(failures), pa.string())
        d["failure"] = pa.array([f.reason for f in failures], pa.string())
        d["failure_source"] = pa.array([f.source for f in failures], pa.string())
        d["failed_at"] = pa.array([f.at for f in failures], pa.string())
        return pa.table(d, schema=schema)

    # ---------------------------------------------------------------- side files
    _SIDE_FILE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\.json")

    def read_side_file(self, name: str) -> bytes | None:
        """A small file kept with the store (probe results, aspect spaces), or None."""
        if not self._SIDE_FILE.fullmatch(name):
            raise StoreError(f"invalid side-file name {name!r}")
        return loc.read_bytes(loc.join(self.uri, name))

    def write_side_file(self, name: str, data: bytes) -> str:
        """Write a small file with the store, atomically; returns its location."""
        if not self._SIDE_FILE.fullmatch(name):
            raise StoreError(f"invalid side-file name {name!r}")
        target = loc.join(self.uri, name)
        try:
            loc.write_bytes(target, data)
        except OSError as exc:
            raise storage_error(self.uri, exc) from None
        return target

    # ---------------------------------------------------------------- reporting
    def summary(self) -> StoreSummary:
        rows = self.ok_rows()
        return StoreSummary(
            dataset=self.dataset,
            model=self.model_id,
            path=self.uri,
            n_tracks=len(rows),
            n_failed=sum(1 for r in self._all_rows().values() if r["status"] == "failed"),
            n_segments=sum(int(r["n_segments"]) for r in rows.values()),
            hours=sum(float(r["duration_seconds"]) for r in rows.values()) / 3600,
            n_layers=self.n_layers,
            dim=self.dim,
            store_dtype=self._meta["settings"].get("store_dtype", "?"),
            size_bytes=_size_bytes(self.uri),
        )

    def tracks_with_content(self, path: str | os.PathLike) -> set[str]:
        """Stored tracks whose audio has the same content hash as the file at ``path``."""
        digest = file_content_hash(Path(path))
        return {t for t, r in self.ok_rows().items() if r["content_hash"] == digest}

    def missing_sources(self, track_ids: Iterable[str] | None = None) -> set[str]:
        """Stored tracks whose audio file is no longer where extraction found it (a cheap stat
        under the local source root, no hashing; nothing is reported for remote sources)."""
        root = self.source_root
        if root is None or "://" in str(root):
            return set()
        rows = self.ok_rows()
        ids = rows if track_ids is None else [nfc(t) for t in track_ids if nfc(t) in rows]
        return {t for t in ids if rows[t]["source"] and not (root / rows[t]["source"]).exists()}

    def track_rows(self) -> list[dict[str, Any]]:
        """``mess tracks``: one row per stored or failed track; ``missing`` when the stored
        track's audio file is gone (its features stay searchable)."""
        out = []
        missing = self.missing_sources()
        for t, r in self._all_rows().items():
            if r["status"] == "ok":
                row = {
                    "track_id": t,
                    "duration_seconds": round(float(r["duration_seconds"]), 3),
                    "n_segments": int(r["n_segments"]),
                    "status": "ok"
                    if not r["failure"] and t not in missing
                    else "missing"
                    if not r["failure"]
                    else f"stale: kept from an earlier run; last extraction failed: {r['failure']}",
                    "source": r["source"] or "",
                    **{f"label_{k}": v for k, v in json.loads(r["labels"] or "{}").items()},
                }
            else:
                row = {
                    "track_id": t,
                    "duration_seconds": None,
                    "n_segments": 0,
                    "status": f"failed: {r['failure']}",
                    "source": r["failure_source"] or r["source"] or "",
                }
            out.append(row)
        return sorted(out, key=lambda r: r["track_id"])


def _entry_of(row: dict[str, Any]) -> TrackEntry:
    return TrackEntry(
        track_id=row["track_id"],
        source=row["source"] or "",
        size=int(row["size"] or 0),
        mtime_ns=int(row["mtime_ns"] or 0),
        content_hash=row["content_hash"] or "",
        duration_seconds=float(row["duration_seconds"] or 0.0),
        n_segments=int(row["n_segments"] or 0),
        targets=tuple(row["targets"] or ()),
        labels=json.loads(row["labels"] or "{}"),
        extracted_at=row["extracted_at"],
        targets_at=row["targets_at"],
    )


def _read_meta(tracks_uri: str) -> dict[str, Any]:
    import lance

    opts = loc.storage_options() if loc.is_remote(tracks_uri) else None
    try:
        ds = lance.dataset(tracks_uri, storage_options=opts)
        raw = (ds.schema.metadata or {}).get(METADATA_KEY)
    except BaseException as exc:
        if not lance_failure(exc):
            raise
        raise storage_error(tracks_uri.rsplit("/", 1)[0], exc) from None
    if raw is None:
        raise StoreError(f"{tracks_uri}: not a mess feature store (no build description)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise StoreError(f"{tracks_uri}: not a mess feature store")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(
            f"{tracks_uri}: written by a newer mess (format {meta['format_version']}); upgrade mess"
        )
    return meta


def _table_opens(table_uri: str, opts: dict[str, str] | None) -> bool:
    """Whether a Lance table exists (has a readable version) at ``table_uri``."""
    import lance

    if not loc.exists(loc.join(table_uri, "_versions")):
        return False
    try:
        lance.dataset(table_uri, storage_options=opts)
    except BaseException as exc:
        if not lance_failure(exc):
            raise
        return False
    return True


def _make_folders(path: Path | None) -> Path | None:
    """``mkdir -p path``; returns the highest folder it created (None if none, or remote)."""
    if path is None:
        return None
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    for folder in reversed(missing):  # top down
        try:
            folder.mkdir()
            created.append(folder)
        except FileExistsError:  # another process made it: it and what is above are not ours
            created = []
        except OSError as exc:
            raise storage_error(str(path), exc) from None
    return created[0] if created else None


def _read_state(uri: str) -> dict[str, Any] | None:
    """``store.json``, or None when absent or unreadable (then Lance's metadata is used)."""
    raw = loc.read_bytes(loc.join(uri, STATE_FILE))
    if raw is None:
        return None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(
            f"{uri}: written by a newer mess (format {meta['format_version']}); upgrade mess"
        )
    return meta


def _check_text(track_id: str, source: str) -> None:
    """A track id or source that is not valid UTF-8 (a file name in another encoding) would
    fail the whole batch's commit: refuse it alone, naming it."""
    for text in (track_id, source):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise StoreError(f"{shown!r}: not valid UTF-8; a track id must be text") from None


def _is_conflict(exc: BaseException) -> bool:
    """A commit that lost to a concurrent writer's (retry it on the new version)."""
    text = str(exc).lower()
    return any(
        k in text for k in ("conflict", "concurrent transaction", "incompatible transaction")
    )


def lance_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is Lance failing on the storage (an I/O error, a damaged file; Lance's
    Rust panics on some damaged files arrive as ``pyo3_runtime.PanicException``, a
    BaseException), as opposed to an interrupt or a bug."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return False
    return isinstance(exc, (OSError, ValueError, RuntimeError)) or (
        type(exc).__name__ == "PanicException"
    )


def storage_error(uri: str, exc: BaseException) -> StoreError:
    """One line naming the store and what to do, for I/O failures of the storage."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if (isinstance(exc, OSError) and exc.errno == 28) or "No space left" in str(exc):
        return StoreError(
            f"{uri}: no space left on the device; free some space and run again (finished tracks are kept)"
        )
    if "Not found" in text or "not found" in text or isinstance(exc, FileNotFoundError):
        return StoreError(
            f"{uri}: part of the store is missing or damaged ({text[:160]}); "
            f"'mess store verify --at {uri}' tells what is left and --repair saves it "
            "(see docs/store-format.md)"
        )
    if type(exc).__name__ == "PanicException" or "LanceError(IO)" in text:
        return StoreError(
            f"{uri}: a file of the store cannot be read ({text[:160]}); "
            f"'mess store verify --at {uri}' tells what is left and --repair saves it "
            "(see docs/store-format.md)"
        )
    return StoreError(f"{uri}: storage error ({text[:200]})")


def _size_bytes(uri: str) -> int | None:
    path = loc.local_path(uri)
    if path is None:
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _code_version() -> str:
    from messai import __version__

    return __version__


def _unknown_track_message(track_id: str, known: list[str], dataset: str) -> str:
    import difflib

    close = difflib.get_close_matches(track_id, known, n=3, cutoff=0.0)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"unknown track {track_id!r} in dataset {dataset!r}{hint}"
