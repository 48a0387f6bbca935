"""What a cached index is built from and where it lives: a store's cache folder and index
folders, the fingerprint of a layer's index, the checked track vectors of a layer, the command
that rebuilds an index, and :class:`LayerSource` (a layer as an index source). Building and
loading are in :mod:`messai.search.cache`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import ConfigError


def store_cache_dir(home: Path, store) -> Path:
    """The local cache folder of a store's indices (and its track catalogue)."""
    return Path(home) / "indices" / store.dataset / store.slug


def index_dir(home: Path, store, layer: int, *, normalize: str, kind: str) -> Path:
    return store_cache_dir(home, store) / f"layer{layer:02d}-{normalize}-{kind}"


def index_fingerprint(
    store, layer: int, *, normalize: str, kind: str, params: dict[str, Any] | None = None
) -> str:
    blob = json.dumps([store.fingerprint(), layer, normalize, kind, params or {}], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def layer_vectors(
    store, layer: int, track_ids: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Track-level vectors ``[n_tracks, dim]`` float32 of one layer (mean of the windows)."""
    if not 0 <= layer < store.n_layers:
        raise ConfigError(
            f"layer {layer} out of range: the store's model has layers 0..{store.n_layers - 1}"
        )
    ids, vectors = store.layer(layer, track_ids=track_ids)
    check_track_vectors(store, layer, ids, vectors)
    return ids, vectors


#: No track vector of a real model comes near this (MERT's are O(1)–O(100); a float16 store
#: cannot even hold more than 65,504): a larger value is a damaged row, e.g. a flipped exponent
#: bit, which would dominate the corpus mean and make every query return the same tracks.
MAX_ABS_VECTOR = 1e6


def check_track_vectors(store, layer: int, ids: list[str], vectors: np.ndarray) -> None:
    """StoreError naming the first track whose vector of ``layer`` is non-finite or beyond
    ±:data:`MAX_ABS_VECTOR` (indexing reads the tracks table without the per-track digest that
    'mess store verify' checks, which would mean reading every window)."""
    from messai.errors import StoreError

    bad = np.zeros(len(vectors), dtype=bool)
    for start in range(0, len(vectors), 16384):  # in blocks: no second copy of a large layer
        block = vectors[start : start + 16384]
        with np.errstate(invalid="ignore"):  # NaN compares False
            bad[start : start + len(block)] = ~(np.abs(block) <= MAX_ABS_VECTOR).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = vectors[i]
        worst = row[~(np.abs(row) <= MAX_ABS_VECTOR)][0]
        more = f" (and {int(bad.sum()) - 1} more)" if bad.sum() > 1 else ""
        raise StoreError(
            f"{store.uri}: track {ids[i]!r} has a damaged layer {layer} vector (value "
            f"{float(worst):.3g}){more}; run 'mess store verify --dataset {store.dataset} "
            "--repair', then 'mess extract' to redo it"
        )


#: index parameter → its ``mess index`` option
PARAM_FLAGS = {
    "M": "--hnsw-m",
    "efConstruction": "--ef-construction",
    "efSearch": "--ef-search",
    "nlist": "--nlist",
    "nprobe": "--nprobe",
    "pq_m": "--pq-m",
    "pq_bits": "--pq-bits",
    "refine": "--refine",
}


def stale_command(
    store, layer: int, *, normalize: str, kind: str, params: dict[str, Any] | None
) -> str:
    """The exact 'mess index' command that rebuilds one index."""
    extra = "".join(f" {PARAM_FLAGS[k]} {v}" for k, v in (params or {}).items() if k in PARAM_FLAGS)
    from shlex import quote

    return (
        f"mess index --dataset {quote(store.dataset)} --model {quote(store.model_id)} --layers {layer} "
        f"--kind {kind} --normalize {normalize}{extra}"
    )


@dataclass(frozen=True)
class LayerSource:
    """What a layer's index is built from: its vectors, their fingerprint, its folder and the
    command that rebuilds it. A fitted aspect space has its own source
    (:class:`messai.search.spaces.FittedSpaceSource`); :func:`build_source_index` and
    :func:`load_source_index` take either."""

    store: Any
    layer: int

    @property
    def what(self) -> str:
        return f"layer {self.layer}"

    def folder(self, home: Path, *, normalize: str, kind: str) -> Path:
        return index_dir(home, self.store, self.layer, normalize=normalize, kind=kind)

    def fingerprint(self, *, normalize: str, kind: str, params: dict[str, Any] | None) -> str:
        return index_fingerprint(
            self.store, self.layer, normalize=normalize, kind=kind, params=params
        )

    def vectors(self, track_ids: list[str], *, kind: str) -> np.ndarray:
        return layer_vectors(self.store, self.layer, track_ids)[1]

    def command(self, *, normalize: str, kind: str, params: dict[str, Any] | None) -> str:
        return stale_command(self.store, self.layer, normalize=normalize, kind=kind, params=params)

    @property
    def meta(self) -> dict[str, Any]:
        return {"layer": self.layer}


def cached_indices(home: Path, store) -> list[tuple[int, str, str]]:
    """``(layer, normalize, kind)`` of every index of ``store`` in the cache."""
    from messai.search.backend import KINDS
    from messai.search.normalise import NORMALIZE_MODES

    folder = index_dir(home, store, 0, normalize="center", kind="flat").parent
    out = []
    for path in sorted(folder.glob("layer*")) if folder.is_dir() else []:
        layer, _, rest = path.name[len("layer") :].partition("-")
        normalize, _, kind = rest.partition("-")
        known = layer.isdigit() and normalize in NORMALIZE_MODES and kind in KINDS
        if known and (path / "meta.json").is_file():
            out.append((int(layer), normalize, kind))
    return out
