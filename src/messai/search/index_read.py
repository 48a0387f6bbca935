"""Reading and verifying a layer index directory (format: :mod:`messai.search.index_format`).

:func:`read_index_dir` reads and validates one in constant time (metadata fields and checksum,
file sizes and stat signatures against their recorded SHA-256, normaliser statistics, FAISS
type, metric, dimension and count; the ids and a flat index memory-mapped) into a
:class:`~messai.search.index_format.StoredIndex`; :func:`verify_index_dir` checks every byte
(``mess index --verify``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import SearchIndexError
from messai.search import mapped
from messai.search.backend import FAISS_TYPES, KINDS, REFINED_KINDS, apply_search_params, load_faiss
from messai.search.index_format import (
    _KNOWN_SUMS,
    FORMAT,
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILE,
    MEAN_FILE,
    META_FILE,
    META_KEYS,
    SCALE_FILE,
    TOMBSTONES_FILE,
    VECTORS_FILE,
    VERSIONS_FILE,
    StoredIndex,
    _vector_file,
)
from messai.search.normalise import INDEX_MODES, Normalizer


def _rebuild_hint(path: Path) -> str:
    return f"rebuild it with 'mess index --force' (the index at {path.name})"


def data_files(record: dict[str, Any]) -> list[str]:
    """The files a query reads (all recorded files but the versions, read when updating)."""
    names = [INDEX_FILE, MEAN_FILE, SCALE_FILE, IDS_FILE]
    if TOMBSTONES_FILE in record["files"]:
        names.append(TOMBSTONES_FILE)
    if record["kind"] in REFINED_KINDS:
        names += _vector_names(record)
    return names


def read_index_dir(directory: str | os.PathLike[str], *, mmap: bool = True) -> StoredIndex:
    """Read and validate an index directory written by :func:`save_index`.

    Constant time in the number of tracks: the metadata (its own checksum included), the data
    files' sizes and stat signatures (a changed file is hashed in full first: see
    :mod:`messai.search.mapped`), the statistics, and the FAISS index's type, metric,
    dimension and count. A flat index is memory-mapped (``mmap``), the track ids always.

    Raises
    ------
    SearchIndexError
        Naming the path and the reason, if anything is missing, truncated, changed, of an
        unknown format version, or inconsistent (vector count vs track ids, dimensions, type).
    """
    path = Path(directory)
    record = read_meta(path)
    sums = mapped.check_files(
        path, record["files"], data_files(record), rebuild=_rebuild_hint(path)
    )
    mean = _read_stats(path / MEAN_FILE, record["dim"])
    scale = _read_stats(path / SCALE_FILE, record["dim"])
    is_mapped = mmap and record["kind"] == "flat"
    index = _read_faiss(path / INDEX_FILE, mapped=is_mapped)
    _check_faiss_index(path, index, record)
    ids = mapped.StringColumn(path / IDS_FILE)
    if len(ids) != record["n"]:
        raise SearchIndexError(f"{path / IDS_FILE}: {len(ids)} track ids for n = {record['n']}")
    normalizer = Normalizer.from_state(
        record["normalize"], mean, scale, record["n_fit"], min_scale=record["min_scale"]
    )
    params = dict(record["params"])
    apply_search_params(index, record["kind"], params)
    meta = dict(record["meta"])
    if TOMBSTONES_FILE in record["files"]:
        meta["tombstones"] = _read_tombstones(path / TOMBSTONES_FILE, record["n"])
    if VERSIONS_FILE in record["files"]:
        meta["versions"] = LazyVersions(path, record["files"])
    vectors = None
    if record["kind"] in REFINED_KINDS:
        vectors = []
        for name in _vector_names(record):
            array = _read_vectors(path / name, record["dim"])
            st = (path / name).stat()
            _KNOWN_SUMS[(st.st_ino, st.st_size, st.st_mtime_ns)] = sums[name]
            vectors.append(array)
        if sum(len(v) for v in vectors) != record["n"]:
            raise SearchIndexError(f"{path}: re-ranking vectors do not hold {record['n']} rows")
    return StoredIndex(
        index,
        ids,
        normalizer,
        kind=record["kind"],
        params=params,
        fingerprint=record["fingerprint"],
        meta=meta,
        vectors=vectors,
        mapped=is_mapped,
    )


class LazyVersions(Mapping):
    """``meta["versions"]`` of a stored index: read (and checked) on first use only, so a
    query never parses it."""

    def __init__(self, path: Path, files: dict[str, Any]):
        self._path, self._files = path, files
        self._data: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._data is None:
            mapped.check_files(
                self._path, self._files, [VERSIONS_FILE], rebuild=_rebuild_hint(self._path)
            )
            where = self._path / VERSIONS_FILE
            try:
                data = json.loads(where.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SearchIndexError(f"{where}: unreadable ({exc})") from None
            if not isinstance(data, dict):
                raise SearchIndexError(f"{where}: not a mapping of track versions")
            self._data = data
        return self._data

    def __getitem__(self, key: str) -> str:
        return self._load()[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def _read_tombstones(path: Path, n: int) -> list[int]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{path}: unreadable tombstones ({exc})") from None
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise SearchIndexError(f"{path}: expected [removed] integers, got {array.dtype}")
    if len(array) and (array.min() < 0 or array.max() >= n):
        raise SearchIndexError(f"{path}: a removed position outside 0..{n - 1}")
    return array.astype(np.int64).tolist()


def _vector_names(record: dict[str, Any]) -> list[str]:
    names, i = [], 0
    while _vector_file(i) in record["files"]:
        names.append(_vector_file(i))
        i += 1
    return names or [VECTORS_FILE]


def _read_vectors(path: Path, dim: int) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{path}: unreadable re-ranking vectors ({exc})") from None
    if array.ndim != 2 or array.shape[1] != dim or array.dtype != np.float32:
        raise SearchIndexError(
            f"{path}: expected [rows, {dim}] float32, got {array.dtype} {array.shape}"
        )
    return array


def read_meta(path: Path) -> dict[str, Any]:
    """The validated ``meta.json`` record of the index directory ``path`` (its own checksum
    included: an edited meta.json is an error)."""
    meta_path = path / META_FILE
    try:
        with open(meta_path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise SearchIndexError(f"{path}: no index here ({META_FILE} is missing)") from None
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{meta_path}: unreadable index metadata ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SearchIndexError(f"{meta_path}: not a mess layer index")
    if record.get("format_version") != FORMAT_VERSION:
        raise SearchIndexError(
            f"{meta_path}: index format version {record.get('format_version')!r}, this mess "
            f"reads version {FORMAT_VERSION}; {_rebuild_hint(path)}"
        )
    for key, kind in META_KEYS.items():
        value = record.get(key)
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is int and isinstance(value, bool)):
            raise SearchIndexError(f"{meta_path}: missing or malformed field {key!r}")
    if record["kind"] not in KINDS or record["normalize"] not in INDEX_MODES:
        raise SearchIndexError(f"{meta_path}: unknown kind or normalisation")
    if record["record_sha256"] != mapped.self_checksum(record):
        raise SearchIndexError(
            f"{meta_path}: checksum mismatch (the metadata was changed); {_rebuild_hint(path)}"
        )
    return record


def verify_index_dir(directory: str | os.PathLike[str]) -> None:
    """Check every file of an index directory against its full checksum (and the metadata,
    sizes, FAISS structure, ids and tombstones); SearchIndexError naming the file otherwise."""
    path = Path(directory)
    record = read_meta(path)
    mapped.check_files(path, record["files"], full=True, rebuild=_rebuild_hint(path))
    stored = read_index_dir(path, mmap=False)
    stored.track_ids.check_lookup()  # unique ids, ordered lookup (O(n), no search per id)
    versions = stored.meta.get("versions")
    if versions is not None:
        len(versions)  # reads and checks versions.json


def _read_stats(path: Path, dim: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{path}: unreadable normaliser statistics ({exc})") from None
    if array.shape != (dim,) or not np.issubdtype(array.dtype, np.floating):
        raise SearchIndexError(f"{path}: expected [{dim}] floats, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise SearchIndexError(f"{path}: normaliser statistics contain NaN or inf")
    return array


def _read_faiss(path: Path, *, mapped: bool = False) -> Any:
    faiss = load_faiss()
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
    except (RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SearchIndexError(f"{path}: unreadable FAISS index ({reason})") from None


def _check_faiss_index(path: Path, index: Any, record: dict[str, Any]) -> None:
    faiss = load_faiss()
    where = path / INDEX_FILE
    expected_type = FAISS_TYPES[record["kind"]]
    if type(index).__name__ != expected_type:
        raise SearchIndexError(
            f"{where}: holds a {type(index).__name__}, metadata says {record['kind']} "
            f"({expected_type})"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise SearchIndexError(f"{where}: metric is not inner product")
    if index.d != record["dim"]:
        raise SearchIndexError(f"{where}: dimension {index.d}, metadata says {record['dim']}")
    if index.ntotal != record["n"]:
        raise SearchIndexError(f"{where}: {index.ntotal} vectors for n = {record['n']}")
