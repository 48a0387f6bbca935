"""Reading and writing a layer index directory; the format is in ``docs/index-format.md``.

:func:`write_index_dir` / :func:`save_index` write one, :func:`read_index_dir` reads and
validates one (metadata fields, file sizes, normaliser statistics, FAISS type, metric,
dimension and count) into a :class:`StoredIndex`, from which
:meth:`messai.search.layer_index.LayerIndex.load` builds the index.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from messai.errors import SearchIndexError
from messai.files import fsync_dir, fsync_file, swap_dir_into_place
from messai.search.backend import (
    FAISS_TYPES,
    KINDS,
    REFINED_KINDS,
    apply_search_params,
    load_faiss,
)
from messai.search.normalise import INDEX_MODES, Normalizer

if TYPE_CHECKING:  # pragma: no cover
    from messai.search.layer_index import LayerIndex

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
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
FORMAT_VERSION = 1

INDEX_FILE = "index.faiss"
MEAN_FILE = "mean.npy"
SCALE_FILE = "scale.npy"
META_FILE = "meta.json"
#: memory-bounded kinds: the normalised float32 vectors [n, dim], memory-mapped for re-ranking;
#: rows appended later live in ``vectors-1.npy``, ``vectors-2.npy`` … (earlier files are hard-
#: linked from the index being replaced, never rewritten, so an append costs only the new rows)
VECTORS_FILE = "vectors.npy"
MAX_VECTOR_FILES = 16

#: Data files up to this size are checked against their full checksum on every load (SHA-256,
#: ~1 GB/s with the CPU's SHA instructions: ~17 ms for 16 MiB, a flat index of 5k tracks × 768);
#: larger ones against a checksum of evenly spaced blocks (1 MiB read), and in full by
#: ``mess index --verify``.
FULL_CHECK_BYTES = 16 << 20
SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 256, 4096

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
    "track_ids": list,
}


@dataclass(frozen=True)
class StoredIndex:
    """The validated contents of an index directory.

    Attributes
    ----------
    faiss_index : Any
        The FAISS index ([n, dim] normalised vectors), search parameters applied.
    track_ids : list of str
        n ids, position order.
    normalizer : Normalizer
        Fitted normaliser (mean/scale [dim]).
    kind, params, fingerprint, meta
        As recorded in ``meta.json``.
    vectors : list of np.ndarray or None
        Memory-bounded kinds: read-only memory maps of the vector files, [n, dim] float32 in all.
    """

    faiss_index: Any
    track_ids: list[str]
    normalizer: Normalizer
    kind: str
    params: dict[str, Any]
    fingerprint: str
    meta: dict[str, Any]
    vectors: list[np.ndarray] | None = None


def save_index(index: LayerIndex, directory: str | os.PathLike[str]) -> Path:
    """Write ``index`` to ``directory`` atomically (temp sibling dir, then swapped into place).

    An existing index there is replaced. Returns the directory path.

    Raises
    ------
    SearchIndexError
        ``directory`` exists and is not a directory.
    """
    import shutil
    import tempfile

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, target.parent.stat().st_mode & 0o777)  # mkdtemp makes it 0700
        write_index_dir(index, tmp)
        swap_dir_into_place(tmp, target)
    except NotADirectoryError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SearchIndexError(f"{target}: exists and is not an index directory") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_index_dir(index: LayerIndex, directory: Path) -> None:
    """Write the four index files into the existing, empty ``directory`` and fsync them."""
    faiss = load_faiss()
    faiss.write_index(index.faiss_index, str(directory / INDEX_FILE))
    fsync_file(directory / INDEX_FILE)
    normalizer = index.normalizer
    for name, array in ((MEAN_FILE, normalizer.mean_), (SCALE_FILE, normalizer.scale_)):
        with open(directory / name, "wb") as fh:
            np.save(fh, np.asarray(array, dtype=np.float64), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
    names = [INDEX_FILE, MEAN_FILE, SCALE_FILE]
    if index.kind in REFINED_KINDS:
        names += _write_vector_files(directory, index.refine_vectors, index.dim)
    sizes = {name: (directory / name).stat().st_size for name in names}
    # checksums of the core files; the exact-vector files are memory-mapped (their sizes are
    # checked; hashing them at every load would read them whole)
    core = (INDEX_FILE, MEAN_FILE, SCALE_FILE)
    checksums = {name: file_checksum(directory / name) for name in core}
    samples = {name: file_checksum(directory / name, sample=True) for name in core}
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
        "meta": index.meta,
        "faiss_version": getattr(faiss, "__version__", "unknown"),
        "files": sizes,
        "checksums": checksums,
        "sample_checksums": samples,
        "track_ids": index.track_ids,
    }
    with open(directory / META_FILE, "w", encoding="utf-8") as fh:
        json.dump(record, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(directory)


def _vector_file(i: int) -> str:
    return VECTORS_FILE if i == 0 else f"vectors-{i}.npy"


def _write_vector_files(directory: Path, chunks: list[np.ndarray], dim: int) -> list[str]:
    """One file per chunk: a memory-mapped chunk is hard-linked (its file is never modified),
    others written; past :data:`MAX_VECTOR_FILES` chunks everything is merged into one."""
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
        if not linked:
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


def read_index_dir(directory: str | os.PathLike[str]) -> StoredIndex:
    """Read and validate an index directory written by :func:`save_index`.

    Raises
    ------
    SearchIndexError
        Naming the path and the reason, if anything is missing, truncated, of an unknown format
        version, or inconsistent (vector count vs track ids, dimensions, index type).
    """
    path = Path(directory)
    record = read_meta(path)
    check_file_sizes(path, record)
    check_checksums(path, record, full=False)
    mean = _read_stats(path / MEAN_FILE, record["dim"])
    scale = _read_stats(path / SCALE_FILE, record["dim"])
    index = _read_faiss(path / INDEX_FILE)
    _check_faiss_index(path, index, record)
    normalizer = Normalizer.from_state(
        record["normalize"], mean, scale, record["n_fit"], min_scale=record["min_scale"]
    )
    params = dict(record["params"])
    apply_search_params(index, record["kind"], params)
    vectors = None
    if record["kind"] in REFINED_KINDS:
        vectors = [_read_vectors(path / name, record["dim"]) for name in _vector_names(record)]
        if sum(len(v) for v in vectors) != record["n"]:
            raise SearchIndexError(f"{path}: re-ranking vectors do not hold {record['n']} rows")
    return StoredIndex(
        index,
        record["track_ids"],
        normalizer,
        kind=record["kind"],
        params=params,
        fingerprint=record["fingerprint"],
        meta=record["meta"],
        vectors=vectors,
    )


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
    """The validated ``meta.json`` record of the index directory ``path``."""
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
            f"reads version {FORMAT_VERSION}; rebuild the index"
        )
    for key, kind in META_KEYS.items():
        value = record.get(key)
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is int and isinstance(value, bool)):
            raise SearchIndexError(f"{meta_path}: missing or malformed field {key!r}")
    if record["kind"] not in KINDS or record["normalize"] not in INDEX_MODES:
        raise SearchIndexError(f"{meta_path}: unknown kind or normalisation")
    ids = record["track_ids"]
    if len(ids) != record["n"] or not all(isinstance(t, str) for t in ids):
        raise SearchIndexError(f"{meta_path}: {len(ids)} track ids for n = {record['n']}")
    if len(set(ids)) != len(ids):
        raise SearchIndexError(f"{meta_path}: duplicate track ids")
    return record


def file_checksum(path: Path, *, sample: bool = False) -> str:
    """SHA-256 of a file, or with ``sample`` of ``SAMPLE_BLOCKS`` evenly spaced blocks (and its
    size): constant time however large the file."""
    import hashlib

    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if not sample:
            while block := fh.read(1 << 20):
                digest.update(block)
        else:
            digest.update(size.to_bytes(8, "little"))
            step = max(SAMPLE_BLOCK_BYTES, size // SAMPLE_BLOCKS)
            for offset in range(0, size, step):
                fh.seek(offset)
                digest.update(fh.read(SAMPLE_BLOCK_BYTES))
            fh.seek(max(0, size - SAMPLE_BLOCK_BYTES))
            digest.update(fh.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def check_checksums(path: Path, record: dict[str, Any], *, full: bool) -> None:
    """SearchIndexError when a data file's bytes differ from what was written (bit rot, an
    edited file). Files up to ``FULL_CHECK_BYTES`` are always checked in full; larger ones by
    their sampled checksum unless ``full``."""
    sums, samples = record.get("checksums"), record.get("sample_checksums")
    if not isinstance(sums, dict) or not isinstance(samples, dict):
        raise SearchIndexError(f"{path}: index written without checksums; rebuild it")
    for name in (INDEX_FILE, MEAN_FILE, SCALE_FILE):
        whole = full or record["files"].get(name, 0) <= FULL_CHECK_BYTES
        expected = (sums if whole else samples).get(name)
        if file_checksum(path / name, sample=not whole) != expected:
            raise SearchIndexError(
                f"{path / name}: checksum mismatch (the file is damaged or was changed); "
                "rebuild the index with 'mess index --force'"
            )


def verify_index_dir(directory: str | os.PathLike[str]) -> None:
    """Check every data file of an index directory against its full checksum (and the
    metadata, sizes and FAISS structure); SearchIndexError naming the file otherwise."""
    path = Path(directory)
    record = read_meta(path)
    check_file_sizes(path, record)
    check_checksums(path, record, full=True)
    read_index_dir(path)


def check_file_sizes(path: Path, record: dict[str, Any]) -> None:
    """Raise SearchIndexError if a data file is missing or its size differs from ``record``."""
    names = [INDEX_FILE, MEAN_FILE, SCALE_FILE]
    if record["kind"] in REFINED_KINDS:
        names += _vector_names(record)
    for name in names:
        expected = record["files"].get(name)
        try:
            actual = (path / name).stat().st_size
        except FileNotFoundError:
            raise SearchIndexError(f"{path / name}: missing index file") from None
        if actual != expected:
            raise SearchIndexError(
                f"{path / name}: {actual} bytes, expected {expected} (truncated or replaced)"
            )


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


def _read_faiss(path: Path) -> Any:
    faiss = load_faiss()
    try:
        return faiss.read_index(str(path))
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
    if index.ntotal != len(record["track_ids"]):
        raise SearchIndexError(
            f"{where}: {index.ntotal} vectors for {len(record['track_ids'])} track ids"
        )
