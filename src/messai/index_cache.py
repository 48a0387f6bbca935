"""Per-layer FAISS indices of a feature store, cached under the data root.

``$MESS_HOME/indices/<dataset>/<model-slug>/layer<NN>-<normalize>-<kind>/`` holds one
``LayerIndex``. Each records the store fingerprint it was built from; an index whose fingerprint
differs from the store's is *stale* and never used silently: a flat one is rebuilt (cheap, exact),
others raise with the command to run. Re-indexing after tracks were added appends them when the
old tracks are unchanged and the additions are few (FAISS ``add``); otherwise it rebuilds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import ConfigError, SearchIndexError

#: Append instead of rebuilding when the new tracks are at most this fraction of the indexed ones.
INCREMENTAL_MAX_FRACTION = 0.1


def index_dir(home: Path, store, layer: int, *, normalize: str, kind: str) -> Path:
    return Path(home) / "indices" / store.dataset / store.root.name / f"layer{layer:02d}-{normalize}-{kind}"


def index_fingerprint(store, layer: int, *, normalize: str, kind: str, params: dict[str, Any] | None = None) -> str:
    blob = json.dumps([store.fingerprint(), layer, normalize, kind, params or {}], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _versions(store, ids: list[str]) -> dict[str, str]:
    return {t: f"{store.entries[t]['content_hash']}:{store.entries[t].get('extracted_at')}" for t in ids}


def layer_vectors(store, layer: int, track_ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Track-level vectors ``[n_tracks, dim]`` float32 of one layer (mean of the windows)."""
    ids = track_ids if track_ids is not None else store.track_ids()
    if not 0 <= layer < store.n_layers:
        raise ConfigError(f"layer {layer} out of range: the store's model has layers 0..{store.n_layers - 1}")
    out = np.empty((len(ids), store.dim), dtype=np.float32)
    for i, tid in enumerate(ids):
        with np.load(store._track_path(tid), allow_pickle=False) as z:
            out[i] = z["aggregated"][layer]
    return ids, out


@dataclass
class IndexOutcome:
    layer: int
    path: Path
    action: str  # "built", "appended", "up to date"
    n_tracks: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "path": str(self.path), "action": self.action, "n_tracks": self.n_tracks, "seconds": round(self.seconds, 4)}


def build_layer_index(home: Path, store, layer: int, *, normalize: str = "center", kind: str = "flat",
                      params: dict[str, Any] | None = None, force: bool = False) -> IndexOutcome:  # fmt: skip
    """Build (or bring up to date) the index of one layer and save it atomically."""
    import time

    from messai.index import LayerIndex, build_index

    t0 = time.perf_counter()
    path = index_dir(home, store, layer, normalize=normalize, kind=kind)
    fp = index_fingerprint(store, layer, normalize=normalize, kind=kind, params=params)
    ids = store.track_ids()
    if not ids:
        raise SearchIndexError(f"dataset {store.dataset!r} has no tracks to index")
    old = None
    if not force and (path / "meta.json").is_file():
        try:
            old = LayerIndex.load(path)
        except SearchIndexError:
            old = None
    if old is not None and old.fingerprint == fp:
        return IndexOutcome(layer, path, "up to date", len(old), time.perf_counter() - t0)
    meta = {"dataset": store.dataset, "model": store.model_id, "layer": layer, "versions": _versions(store, ids)}
    if old is not None and old.meta.get("params_requested") == (params or {}):
        before = old.meta.get("versions", {})
        new_ids = [t for t in ids if t not in before]
        unchanged = all(_versions(store, [t]).get(t) == v for t, v in before.items() if t in store) and set(before) <= set(ids)
        if unchanged and new_ids and len(new_ids) <= INCREMENTAL_MAX_FRACTION * len(before):
            _, vecs = layer_vectors(store, layer, new_ids)
            old.add(vecs, new_ids, fingerprint=fp)
            old.meta.update(meta, params_requested=params or {})
            old.save(path)
            return IndexOutcome(layer, path, "appended", len(old), time.perf_counter() - t0)
    _, vecs = layer_vectors(store, layer, ids)
    index = build_index(vecs, ids, kind=kind, normalize=normalize, params=params, fingerprint=fp,
                        meta={**meta, "params_requested": params or {}})  # fmt: skip
    index.save(path)
    return IndexOutcome(layer, path, "built", len(index), time.perf_counter() - t0)


def load_layer_index(home: Path, store, layer: int, *, normalize: str = "center", kind: str = "flat",
                     on_notice: Callable[[str], None] | None = None):  # fmt: skip
    """The up-to-date index of one layer: loaded from the cache; a missing or stale flat index is
    (re)built on the fly with a notice; a missing or stale hnsw/ivf index is an error."""
    from messai.index import LayerIndex

    path = index_dir(home, store, layer, normalize=normalize, kind=kind)
    index = None
    if (path / "meta.json").is_file():
        try:
            index = LayerIndex.load(path)
        except SearchIndexError as exc:
            if kind != "flat":
                raise
            if on_notice:
                on_notice(f"note: {exc}; rebuilding")
    command = f"mess index --dataset {store.dataset} --layers {layer} --kind {kind} --normalize {normalize}"
    if index is not None:
        params = index.meta.get("params_requested") or {}
        if index.fingerprint == index_fingerprint(store, layer, normalize=normalize, kind=kind, params=params):
            return index
        if kind != "flat":
            raise SearchIndexError(f"the {kind} index of layer {layer} of {store.dataset!r} is stale (the store changed); run: {command}")
        if on_notice:
            on_notice(f"note: layer {layer} index of {store.dataset!r} was stale (the store changed); rebuilt it")
    elif kind != "flat":
        raise SearchIndexError(f"no {kind} index for layer {layer} of {store.dataset!r}; run: {command}")
    elif on_notice:
        on_notice(f"note: built the layer {layer} index of {store.dataset!r} ({len(store)} tracks)")
    build_layer_index(home, store, layer, normalize=normalize, kind=kind, force=True)
    return LayerIndex.load(path)
