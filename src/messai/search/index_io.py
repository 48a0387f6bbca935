"""Writing a layer index directory; the format is in ``docs/index-format.md``
(:mod:`messai.search.index_format`).

:func:`write_index_dir` / :func:`save_index` write one; :func:`read_index_dir` (re-exported
from :mod:`messai.search.index_read`) reads and validates one in constant time into a
:class:`StoredIndex`, from which :meth:`messai.search.layer_index.LayerIndex.load` builds the
index, and :func:`verify_index_dir` checks every byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from messai.errors import SearchIndexError
from messai.files import fsync_dir, fsync_file, swap_dir_into_place
from messai.search import mapped
from messai.search.backend import REFINED_KINDS, load_faiss
from messai.search.index_format import (  # noqa: F401 - re-exported: they were defined here
    _KNOWN_SUMS,
    FORMAT,
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILE,
    MAX_VECTOR_FILES,
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
from messai.search.index_read import (  # noqa: F401 - re-exported: they were defined here
    LazyVersions,
    data_files,
    read_index_dir,
    read_meta,
    verify_index_dir,
)


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
