"""Per-layer FAISS indices of a feature store, cached under the data root.

``$MESS_HOME/indices/<dataset>/<model-slug>/layer<NN>-<normalize>-<kind>/`` holds one
``LayerIndex``. Each records the store fingerprint it was built from; an index whose fingerprint
differs from the store's is *stale* and never used silently: a flat one is rebuilt (cheap, exact),
others raise with the command to run. Re-indexing after tracks were added or removed updates
the index in place when the other tracks are unchanged and the changes are few: additions are
appended (FAISS ``add``), removals become tombstones (never returned; dropped by the rebuild that
happens once they pass :data:`TOMBSTONE_MAX_FRACTION`); otherwise it rebuilds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messai.errors import SearchIndexError
from messai.search.index_sources import (  # noqa: F401 - re-exported: they were defined here
    MAX_ABS_VECTOR,
    LayerSource,
    cached_indices,
    check_track_vectors,
    index_dir,
    index_fingerprint,
    layer_vectors,
    stale_command,
    store_cache_dir,
)

#: Append instead of rebuilding when the new tracks are at most this fraction of the indexed ones.
INCREMENTAL_MAX_FRACTION = 0.1
#: Rebuild instead of adding tombstones once removed tracks would pass this fraction of the index.
TOMBSTONE_MAX_FRACTION = 0.1


def _versions(store, ids: list[str]) -> dict[str, str]:
    return store.track_versions(ids)


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One builder per index at a time (parallel 'mess recommend' processes may all find it stale)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class IndexOutcome:
    layer: int
    path: Path
    action: str  # "built", "appended", "updated" (tracks removed), "up to date"
    n_tracks: int
    seconds: float = 0.0
    memory_bytes: int = 0  # the FAISS structure, held in RAM when loaded
    mapped_bytes: int = 0  # ivfpq/hnsw-sq8 re-ranking vectors: on disk, paged in on demand
    n_removed: int = 0  # tombstones until the next rebuild
    space: str | None = None  # a fitted aspect space's index (then layer is its first layer)

    def to_dict(self) -> dict[str, Any]:
        return {
            **({} if self.space is None else {"space": self.space}),
            "layer": self.layer,
            "path": str(self.path),
            "action": self.action,
            "n_tracks": self.n_tracks,
            "seconds": round(self.seconds, 4),
            "memory_mb": round(self.memory_bytes / 2**20, 2),
            "mapped_mb": round(self.mapped_bytes / 2**20, 2),
            "n_removed": self.n_removed,
        }


def _outcome(source, path: Path, action: str, index) -> IndexOutcome:
    from messai.search.index_io import INDEX_FILE, VECTORS_FILE

    def size(name: str) -> int:
        try:
            return (path / name).stat().st_size
        except FileNotFoundError:
            return 0

    return IndexOutcome(
        int(source.meta["layer"]),
        path,
        action,
        len(index),
        memory_bytes=size(INDEX_FILE),
        mapped_bytes=size(VECTORS_FILE),
        n_removed=index.n_removed,
        space=source.meta.get("space"),
    )


def build_layer_index(
    home: Path,
    store,
    layer: int,
    *,
    normalize: str = "center",
    kind: str = "flat",
    params: dict[str, Any] | None = None,
    force: bool = False,
) -> IndexOutcome:
    """Build (or bring up to date) the index of one layer and save it atomically."""
    return build_source_index(
        home, LayerSource(store, layer), normalize=normalize, kind=kind, params=params, force=force
    )


def build_source_index(
    home: Path,
    source,
    *,
    normalize: str = "center",
    kind: str = "flat",
    params: dict[str, Any] | None = None,
    force: bool = False,
) -> IndexOutcome:
    """Build (or bring up to date) the index of any source (a layer, a fitted aspect space)."""
    import time

    t0 = time.perf_counter()
    path = source.folder(home, normalize=normalize, kind=kind)
    with _build_lock(path):
        out = _build_locked(
            path, source, normalize=normalize, kind=kind, params=params, force=force
        )
    out.seconds = time.perf_counter() - t0
    return out


def _build_locked(
    path: Path,
    source,
    *,
    normalize: str,
    kind: str,
    params: dict[str, Any] | None,
    force: bool,
) -> IndexOutcome:
    from messai.search.layer_index import LayerIndex, build_index

    store = source.store
    ids = store.track_ids()
    if not ids:
        raise SearchIndexError(f"dataset {store.dataset!r} has no tracks to index")
    old = None
    if (path / "meta.json").is_file():
        try:
            old = LayerIndex.load(path)
        except SearchIndexError:
            old = None
    if params is None and old is not None:  # keep the parameters it was built with
        params = old.meta.get("params_requested") or None
    if force:
        old = None
    fp = source.fingerprint(normalize=normalize, kind=kind, params=params)
    if old is not None and old.fingerprint == fp:
        return _outcome(source, path, "up to date", old)
    versions = _versions(store, ids)
    meta = {
        "dataset": store.dataset,
        "model": store.model_id,
        **source.meta,
        "versions": versions,
        "params_requested": params or {},
    }
    # Appending keeps the old corpus statistics, so an exact flat index is only appended to when it
    # has none (l2, or none for an aspect space); flat center/zscore indices are cheap to rebuild
    # and then equal a fresh build.
    if (
        old is not None
        and old.meta.get("params_requested") == (params or {})
        and {k: old.meta.get(k) for k in source.meta} == source.meta
        and (kind != "flat" or normalize in ("l2", "none"))
    ):
        before = old.meta.get("versions", {})
        new_ids = [t for t in ids if t not in before]
        gone = [t for t in before if t not in versions]
        unchanged = all(versions[t] == v for t, v in before.items() if t in versions)
        back = set(new_ids) & set(old.track_ids)  # removed earlier, stored again: rebuild
        few = len(new_ids) <= INCREMENTAL_MAX_FRACTION * len(before)
        few_removed = old.n_removed + len(gone) <= TOMBSTONE_MAX_FRACTION * old.n_total
        if unchanged and not back and (new_ids or gone) and few and few_removed:
            old.remove(gone, fingerprint=fp)
            if new_ids:
                old.add(source.vectors(new_ids, kind=kind), new_ids, fingerprint=fp)
            old.meta.update(meta)
            _save(old, path)
            return _outcome(source, path, "updated" if gone else "appended", old)
    index = build_index(
        source.vectors(ids, kind=kind),
        ids,
        kind=kind,
        normalize=normalize,
        params=params,
        fingerprint=fp,
        meta=meta,
    )
    _save(index, path)
    return _outcome(source, path, "built", index)


def _save(index, path: Path) -> None:
    try:
        index.save(path)
    except OSError as exc:
        raise SearchIndexError(f"{path}: cannot write the index ({exc.strerror or exc})") from None


def load_layer_index(
    home: Path,
    store,
    layer: int,
    *,
    normalize: str = "center",
    kind: str = "flat",
    on_notice: Callable[[str], None] | None = None,
):
    """The up-to-date index of one layer (see :func:`load_source_index`)."""
    return load_source_index(
        home, LayerSource(store, layer), normalize=normalize, kind=kind, on_notice=on_notice
    )


def load_source_index(
    home: Path,
    source,
    *,
    normalize: str = "center",
    kind: str = "flat",
    on_notice: Callable[[str], None] | None = None,
):
    """The up-to-date index of a source (a layer, a fitted aspect space): loaded from the cache;
    a missing or stale flat index is (re)built on the fly with a notice; a missing or stale
    approximate one is an error naming the command that builds it."""
    from messai.search.layer_index import LayerIndex

    path = source.folder(home, normalize=normalize, kind=kind)
    index = _load_if_fresh(path, source, normalize=normalize, kind=kind, on_notice=on_notice)
    if index is not None:
        return index
    with _build_lock(path):  # another process may have rebuilt it meanwhile
        index = _load_if_fresh(path, source, normalize=normalize, kind=kind, on_notice=None)
        if index is None:
            _build_locked(path, source, normalize=normalize, kind=kind, params=None, force=True)
            index = LayerIndex.load(path)
    return index


def _load_if_fresh(path: Path, source, *, normalize: str, kind: str, on_notice):
    """The cached index if it is up to date; None when a flat one must be (re)built (with a
    notice); SearchIndexError when an approximate one is missing or stale."""
    from messai.search.layer_index import LayerIndex

    store = source.store
    index = None
    if (path / "meta.json").is_file():
        try:
            index = LayerIndex.load(path)
        except SearchIndexError as exc:
            if kind != "flat":
                raise
            if on_notice:
                on_notice(f"note: {exc}; rebuilding")
    params = index.meta.get("params_requested") if index is not None else None
    command = source.command(normalize=normalize, kind=kind, params=params)
    if index is not None:
        if index.fingerprint == source.fingerprint(normalize=normalize, kind=kind, params=params):
            return index
        if kind != "flat":
            raise SearchIndexError(
                f"the {kind} index of {source.what} of {store.dataset!r} is stale (the store "
                f"or the space changed); run: {command}"
            )
        if on_notice:
            on_notice(
                f"note: the {source.what} index of {store.dataset!r} was stale (the store or "
                "the space changed); rebuilding it"
            )
    elif kind != "flat":
        raise SearchIndexError(
            f"no {kind} index for {source.what} of {store.dataset!r}; run: {command}"
        )
    elif on_notice:
        on_notice(
            f"note: building the {source.what} index of {store.dataset!r} ({len(store)} tracks)"
        )
    return None
