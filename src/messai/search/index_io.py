"""Reading and writing a layer index directory; the format is in ``docs/index-format.md``.

:func:`write_index_dir` / :func:`save_index` write one, :func:`read_index_dir` reads and
validates one in constant time (metadata fields and checksum, file sizes and stat signatures
against their recorded SHA-256, normaliser statistics, FAISS type, metric, dimension and
count; the ids and a flat index memory-mapped) into a :class:`StoredIndex`, from which
:meth:`messai.search.layer_index.LayerIndex.load` builds the index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from messai.errors import SearchIndexError
from messai.files import fsync_dir, fsync_file, swap_dir_into_place
from messai.search import mapped
from messai.search.backend import (
    FAISS_TYPES,
    KINDS,
    REFINED_KINDS,
    apply_search_params,
    load_faiss,
)
from messai.search.normalise import INDEX_MODES, Normalizer


class LayerIndex(Protocol):
    """What this module reads of an index to write it (:class:`messai.search.layer_index.
    LayerIndex`, named structurally so the two modules do not import each other)."""

    dim: int
    faiss_index: Any
    fingerprint: Any
    kind: str
    meta: dict[str, Any]
    n_fit: int
    n_total: int
    normalize: str
    normalizer: Any
    params: dict[str, Any]
    refine_vectors: Any
    track_ids: Any


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "IDS_FILE",
    "INDEX_FILE",
    "MEAN_FILE",
    "META_FILE",
    "SCALE_FILE",
    "StoredIndex",
    "read_index_dir",
    "save_index",
    "verify_index_dir",
    "write_index_dir",
]

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


def save_index(index: LayerIndex, directory: str | os.PathLike[str]) -> Path:
    """Write ``index`` to ``directory`` atomically (temp sibling dir, then swapped into place).

    An existing index there is replaced; on any failure (a full disk included) nothing is left
    behind and the old index is untouched. Returns the directory path.

    Raises
    ------
    SearchIndexError
        ``directory`` exists and is not a directory.
    OSError
        The files could not be written (e.g. ``ENOSPC``): one line, from Python's own I/O.
    """
    import shutil
    import tempfile

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, target.parent.stat().st_mode & 0o777)  # mkdtemp makes it 0700
        linked = write_index_dir(index, tmp)
        swap_dir_into_place(tmp, target)
    except NotADirectoryError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SearchIndexError(f"{target}: exists and is not an index directory") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # removing the replaced folder changed the link count (so the ctime) of the vector files
    # shared with it: remember their new signatures, so the next load need not hash them
    mapped.remember_files(target, linked)
    return target


def write_faiss(index: Any, path: Path) -> None:
    """``faiss.write_index`` through Python's file I/O (so a full disk is an ``OSError`` with
    its errno, not a C++ assertion), fsynced."""
    faiss = load_faiss()
    with open(path, "wb") as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
        fh.flush()
        os.fsync(fh.fileno())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def write_index_dir(index: LayerIndex, directory: Path) -> dict[str, str]:
    """Write the index files into the existing, empty ``directory`` and fsync them. Returns
    ``{name: sha256}`` of the files hard-linked from the index being replaced."""
    faiss = load_faiss()
    write_faiss(index.faiss_index, directory / INDEX_FILE)
    normalizer = index.normalizer
    _write_npy(directory / MEAN_FILE, np.asarray(normalizer.mean_, dtype=np.float64))
    _write_npy(directory / SCALE_FILE, np.asarray(normalizer.scale_, dtype=np.float64))
    mapped.write_strings(directory / IDS_FILE, index.track_ids, lookup=True)
    names = [INDEX_FILE, MEAN_FILE, SCALE_FILE, IDS_FILE]
    meta = dict(index.meta)
    tombstones = meta.pop("tombstones", None)
    if tombstones is not None:
        _write_npy(directory / TOMBSTONES_FILE, np.asarray(tombstones, dtype=np.int64))
        names.append(TOMBSTONES_FILE)
    versions = meta.pop("versions", None)
    if versions is not None:
        with open(directory / VERSIONS_FILE, "w", encoding="utf-8") as fh:
            json.dump(dict(versions), fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        names.append(VERSIONS_FILE)
    known: dict[str, str] = {}
    if index.kind in REFINED_KINDS:
        names += _write_vector_files(directory, index.refine_vectors, index.dim, known)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": index.kind,
        "normalize": index.normalize,
        "min_scale": normalizer.min_scale,
        "params": index.params,
        "dim": index.dim,
        "n": index.n_total,
        "n_fit": index.n_fit,
        "fingerprint": index.fingerprint,
        "meta": meta,
        "faiss_version": getattr(faiss, "__version__", "unknown"),
        "files": mapped.record_files(directory, names, known),
    }
    record["record_sha256"] = mapped.self_checksum(record)
    with open(directory / META_FILE, "w", encoding="utf-8") as fh:
        json.dump(record, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(directory)
    return known


def _vector_file(i: int) -> str:
    return VECTORS_FILE if i == 0 else f"vectors-{i}.npy"


def _write_vector_files(
    directory: Path, chunks: list[np.ndarray], dim: int, known: dict[str, str]
) -> list[str]:
    """One file per chunk: a memory-mapped chunk is hard-linked (its file is never modified),
    others written; past :data:`MAX_VECTOR_FILES` chunks everything is merged into one.
    ``known`` receives the checksums of linked files this process has verified."""
    if len(chunks) > MAX_VECTOR_FILES:
        _write_vectors(directory / VECTORS_FILE, chunks, dim)
        return [VECTORS_FILE]
    names = []
    for i, chunk in enumerate(chunks):
        name = _vector_file(i)
        source = getattr(chunk, "filename", None)
        linked = False
        if isinstance(chunk, np.memmap) and source:
            try:
                os.link(source, directory / name)
                linked = True
            except OSError:  # another file system, or links unsupported: copy
                linked = False
        if linked:
            st = (directory / name).stat()
            sha = _KNOWN_SUMS.get((st.st_ino, st.st_size, st.st_mtime_ns))
            if sha is not None:
                known[name] = sha
        else:
            _write_vectors(directory / name, [chunk], dim)
        names.append(name)
    return names


def _write_vectors(path: Path, chunks: list[np.ndarray], dim: int) -> None:
    """Stream the vector chunks into one ``.npy`` file (never all in memory at once)."""
    n = sum(len(c) for c in chunks)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    start = 0
    for chunk in chunks:
        for i in range(0, len(chunk), 65536):
            block = np.asarray(chunk[i : i + 65536], dtype=np.float32)
            out[start : start + len(block)] = block
            start += len(block)
    out.flush()
    del out
    fsync_file(path)


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
