"""Which stores a server answers for, and the snapshot of each that a request reads.

A :class:`Snapshot` is one state of one store: the store opened once and the library's
recommenders over it (one per ``space`` mode, made on first use), with their loaded indices.
Every request asks :meth:`LiveDataset.snapshot` for the current one. That call is a
*constant-time staleness check*: a handful of ``stat`` calls on the files whose change means
"the answers may differ" —

- ``store.json`` (renewed by every writer commit: new or re-extracted tracks, removals, labels),
- the tracks table's ``_versions`` folder (a Lance commit),
- the side files ``probe.json`` (a new probe: the aspect → layer map) and ``aspect_spaces.json``
  (a refit aspect space),
- each layer's cached index ``meta.json`` for the served kind and normalisation (a rebuilt index).

None of those stats depends on the number of tracks. When the key differs from the snapshot's,
a new snapshot is made and swapped in; requests already running finish on the old one.

**Never half-done.** A writer renews ``store.json`` *before* its Lance commit, and an extraction
commits in batches while it holds the store's ``.lock`` (``FeatureStore.writer``). So while that
lock is held the server keeps answering from the last snapshot made with no writer active, and
makes the new one on the first request after the writer let go. The check is a non-blocking
shared ``flock`` on the lock file, opened read-only, never created; it is only tried when the
key changed. A store seen for the first time while a writer holds it is opened anyway (each
Lance commit is atomic; the results then reflect the commits made so far).

The server never writes a store. It writes only the local index cache under ``MESS_HOME``
(a flat index the library builds on the fly, the track catalogue), as ``mess recommend`` does.

Remote stores (``s3://``) have no ``stat``: their ``store.json`` is read at most once every
:data:`REMOTE_CHECK_SECONDS`, and no lock exists to consult.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from messai.errors import ConfigError, StoreError

log = logging.getLogger("messai.serve")

#: how often a remote store's ``store.json`` is read for the staleness check
REMOTE_CHECK_SECONDS = 2.0
SPACE_MODES = ("auto", "aspect", "layer")


@dataclass(frozen=True)
class ServeConfig:
    """What a server answers for and how.

    Attributes
    ----------
    home : Path
        The data root (index cache).
    stores : str or None
        The stores location (default ``home/stores``).
    datasets : tuple of str
        Served datasets; empty: every store under the stores location (listed per request).
    model : str or None
        Model of every served dataset, when a dataset has stores for several.
    normalize, kind : str
        The indices searched (settings ``normalize`` and ``index_kind``).
    token : str or None
        Bearer token required on ``/v1/*`` (``/v1/health`` exempt).
    cors : tuple of str
        Allowed CORS origins; empty: CORS off.
    """

    home: Path
    stores: str | None = None
    datasets: tuple[str, ...] = ()
    model: str | None = None
    normalize: str = "center"
    kind: str = "flat"
    token: str | None = None
    cors: tuple[str, ...] = ()


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def writer_active(store_root: Path) -> bool:
    """Whether a ``FeatureStore.writer`` holds the local store at ``store_root`` (its ``.lock``
    is flocked). Opens the lock file read-only and never creates it."""
    import fcntl

    try:
        fd = os.open(store_root / ".lock", os.O_RDONLY)
    except OSError:
        return False  # no lock file: no writer ever
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@dataclass
class Snapshot:
    """One state of one store and the recommenders over it."""

    dataset: str
    key: tuple
    config: ServeConfig
    made_at: float = field(default_factory=time.time)
    _recs: dict[str, Any] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _memo: dict[str, Any] = field(default_factory=dict)

    def recommender(self, space: str = "auto"):
        """The library's ``LayerBasedRecommender`` for this state and ``space`` mode."""
        if space not in SPACE_MODES:
            raise ConfigError(f"unknown space {space!r}; choose one of {', '.join(SPACE_MODES)}")
        rec = self._recs.get(space)
        if rec is None:
            with self._lock:
                rec = self._recs.get(space)
                if rec is None:
                    from messai.search.recommend import LayerBasedRecommender

                    rec = LayerBasedRecommender(
                        self.dataset,
                        self.config.model,
                        home=self.config.home,
                        stores=self.config.stores,
                        normalize=self.config.normalize,
                        kind=self.config.kind,
                        on_notice=lambda m: log.info("%s: %s", self.dataset, m),
                        space=space,
                    )
                    self._recs[space] = rec
        return rec

    @property
    def store(self):
        return self.recommender("auto").store

    def memo(self, name: str, make):
        """A value computed once per snapshot (track rows, probe figures)."""
        if name not in self._memo:
            with self._lock:
                if name not in self._memo:
                    self._memo[name] = make()
        return self._memo[name]


class LiveDataset:
    """The current :class:`Snapshot` of one dataset's store, renewed when its files change."""

    def __init__(self, dataset: str, config: ServeConfig):
        self.dataset = dataset
        self.config = config
        self._snap: Snapshot | None = None
        self._lock = threading.Lock()
        self._uri: str | None = None
        self._n_layers = 0
        self._remote_checked = 0.0
        self._remote_key: tuple = ()
        self._watched: list[Path] | None = None

    def _open_store(self):
        from messai.features.store import FeatureStore

        store = FeatureStore.open(
            self.dataset, self.config.model, home=self.config.home, stores=self.config.stores
        )
        self._uri, self._n_layers = store.uri, store.n_layers
        self._watched = self._watch()
        return store

    def key(self) -> tuple:
        """The staleness key: stats of the files whose change changes the answers."""
        from messai.features import location as loc

        if self._uri is None:
            self._open_store()
        assert self._uri is not None
        if self._watched is not None:
            return tuple(_stat(p) for p in self._watched)
        # object storage: read store.json, at most every few seconds
        now = time.monotonic()
        if now - self._remote_checked >= REMOTE_CHECK_SECONDS or not self._remote_key:
            import hashlib

            raw = loc.read_bytes(loc.join(self._uri, "store.json")) or b""
            self._remote_key = ("remote", hashlib.sha256(raw).hexdigest())
            self._remote_checked = now
        return self._remote_key

    def _watch(self) -> list[Path] | None:
        """The local files whose stats make the key (None for object storage)."""
        from messai.features import location as loc
        from messai.search.cache import index_dir

        assert self._uri is not None
        root = loc.local_path(self._uri)
        if root is None:
            return None
        holder = _StoreName(self.dataset, root.name)
        indices = [
            index_dir(
                self.config.home,
                holder,
                layer,
                normalize=self.config.normalize,
                kind=self.config.kind,
            )
            / "meta.json"
            for layer in range(self._n_layers)
        ]
        return [
            root / "store.json",
            root / "tracks.lance" / "_versions",
            root / "probe.json",
            root / "aspect_spaces.json",
            *indices,
        ]

    def snapshot(self) -> Snapshot:
        """The snapshot to answer from (renewed when the store, its probe, its aspect spaces or
        its indices changed, unless a writer holds the store right now)."""
        key = self.key()
        snap = self._snap
        if snap is not None and snap.key == key:
            return snap
        with self._lock:
            snap = self._snap
            key = self.key()
            if snap is not None and snap.key == key:
                return snap
            root = self._local_root()
            if snap is not None and root is not None and writer_active(root):
                return snap  # keep the last complete state until the writer is done
            self._open_store()  # the store may have been rebuilt elsewhere
            key = self.key()
            new = Snapshot(self.dataset, key, self.config)
            if snap is not None:
                log.info(
                    "%s: the store or its indices changed; answering from the new state",
                    self.dataset,
                )
            self._snap = new
            return new

    def _local_root(self) -> Path | None:
        from messai.features import location as loc

        return None if self._uri is None else loc.local_path(self._uri)


@dataclass(frozen=True)
class _StoreName:
    """Enough of a store for ``messai.search.cache.index_dir`` (dataset and slug)."""

    dataset: str
    slug: str


class Registry:
    """The served datasets: those named in the config, or every store found (listed again on
    each call of :meth:`names`, so a dataset extracted while the server runs appears)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self._live: dict[str, LiveDataset] = {}
        self._lock = threading.Lock()
        self._listed: tuple[float, list[str]] = (0.0, [])

    def names(self) -> list[str]:
        if self.config.datasets:
            return list(self.config.datasets)
        from messai.features.store import FeatureStore

        now = time.monotonic()
        if now - self._listed[0] > 1.0:
            stores = FeatureStore.list(home=self.config.home, stores=self.config.stores)
            self._listed = (now, sorted({s.dataset for s in stores}))
        return list(self._listed[1])

    def default(self) -> str:
        names = self.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise StoreError("no feature stores to serve; run 'mess extract PATH --dataset NAME'")
        raise ConfigError(f"give dataset= (served: {', '.join(names)})")

    def get(self, dataset: str | None) -> LiveDataset:
        """The live dataset named ``dataset`` (the only one when None); TrackNotFound-like 404
        errors come from the caller; an unknown name is a DatasetNotServed error."""
        from messai.config import validate_dataset_name

        name = dataset if dataset else self.default()
        with contextlib.suppress(KeyError):
            return self._live[name]
        validate_dataset_name(name)
        if name not in self.names():
            raise DatasetNotServed(
                f"dataset {name!r} is not served here (served: {', '.join(self.names()) or 'none'})"
            )
        with self._lock:
            if name not in self._live:
                self._live[name] = LiveDataset(name, self.config)
            return self._live[name]


class DatasetNotServed(StoreError):
    """A request named a dataset this server does not answer for (HTTP 404)."""
