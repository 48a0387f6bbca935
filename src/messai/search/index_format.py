"""The layer index directory format (``docs/index-format.md``): its version, file names,
``meta.json`` fields, and :class:`StoredIndex`, what reading one gives. Written by
:mod:`messai.search.index_io`, read and verified by :mod:`messai.search.index_read`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.search.normalise import Normalizer

FORMAT = "mess-layer-index"
#: 2: track ids in a memory-mapped string column (ids.str), versions and tombstones in their
#: own files, every file under a checksum; 1 (ids in meta.json) is rebuilt
FORMAT_VERSION = 2

INDEX_FILE = "index.faiss"
MEAN_FILE = "mean.npy"
SCALE_FILE = "scale.npy"
META_FILE = "meta.json"
#: the track ids in position order, a :class:`messai.search.mapped.StringColumn` with lookup
IDS_FILE = "ids.str"
#: removed positions (int64), present when the index has tombstones
TOMBSTONES_FILE = "tombstones.npy"
#: ``meta["versions"]`` (track id → version, read when the index is brought up to date only)
VERSIONS_FILE = "versions.json"
#: memory-bounded kinds: the normalised float32 vectors [n, dim], memory-mapped for re-ranking;
#: rows appended later live in ``vectors-1.npy``, ``vectors-2.npy`` … (earlier files are hard-
#: linked from the index being replaced, never rewritten, so an append costs only the new rows)
VECTORS_FILE = "vectors.npy"
MAX_VECTOR_FILES = 16

#: meta.json fields and their JSON types
META_KEYS = {
    "format": str,
    "format_version": int,
    "kind": str,
    "normalize": str,
    "min_scale": float,
    "params": dict,
    "dim": int,
    "n": int,
    "n_fit": int,
    "fingerprint": str,
    "meta": dict,
    "files": dict,
    "record_sha256": str,
}

#: SHA-256 of vector files this process verified, by (inode, size, mtime): an append hard-links
#: them into the new index without hashing them again
_KNOWN_SUMS: dict[tuple[int, int, int], str] = {}


@dataclass(frozen=True)
class StoredIndex:
    """The validated contents of an index directory.

    Attributes
    ----------
    faiss_index : Any
        The FAISS index ([n, dim] normalised vectors), search parameters applied; a flat one
        reads its vectors from a memory map of ``index.faiss`` (``mapped``).
    track_ids : StringColumn
        n ids, position order, memory-mapped (``find`` looks one up in O(log n)).
    normalizer : Normalizer
        Fitted normaliser (mean/scale [dim]).
    kind, params, fingerprint, meta
        As recorded in ``meta.json``; ``meta["tombstones"]`` (a list) and ``meta["versions"]``
        (a mapping read on first use) come from their own files.
    vectors : list of np.ndarray or None
        Memory-bounded kinds: read-only memory maps of the vector files, [n, dim] float32 in all.
    mapped : bool
        Whether ``faiss_index`` is a read-only memory map (copied before anything is added).
    """

    faiss_index: Any
    track_ids: Any
    normalizer: Normalizer
    kind: str
    params: dict[str, Any]
    fingerprint: str
    meta: dict[str, Any]
    vectors: list[np.ndarray] | None = None
    mapped: bool = False


def _vector_file(i: int) -> str:
    return VECTORS_FILE if i == 0 else f"vectors-{i}.npy"
