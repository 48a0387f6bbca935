"""Memory-mapped binary files of the query path, and the checksums that guard them.

The cold ``mess recommend`` reads an index folder and the track catalogue without parsing
anything whose size grows with the catalogue: string columns (track ids, labels, sources) are
:class:`StringColumn` files, opened with a memory map and read only where a query looks.

String column file (little-endian)::

    header   32 bytes: b"MESSSTR1", n (u64), blob bytes (u64), flags (u64: bit 0 = an order
             section follows the offsets; bit 1 = the rows are sorted, so no order is needed)
    offsets  [n + 1] int64: row i is blob[offsets[i]:offsets[i + 1]], UTF-8 (surrogatepass)
    order    [n] int64 (flag bit 0): row numbers sorted by their bytes, for binary search
    blob     the concatenated rows

Checked files: every data file of a folder is recorded with its size, SHA-256 and the stat
signature it had when written (inode, size, mtime, ctime). A reader checks the size always and
the signature in constant time; a file whose signature differs (any write through the file
system changes its ctime, and a copy its inode) is hashed in full before it is used, and its
new signature remembered in ``verified.json`` once it matched. Signatures are trusted only
once their ctime is safely past (``FINE_MARGIN_NS``), so a change in the same clock tick as
the write cannot hide. ``full=True`` (``mess index
--verify``) hashes every file. See ``docs/index-format.md`` for what this does not catch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import SearchIndexError

__all__ = [
    "ListColumn",
    "StringColumn",
    "check_files",
    "record_files",
    "sha256_file",
    "write_strings",
]

MAGIC = b"MESSSTR1"
HEADER_BYTES = 32
_HAS_ORDER, _SORTED = 1, 2
VERIFIED_FILE = "verified.json"


def _encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def write_strings(path: Path, values: Iterable[str], *, lookup: bool = True) -> None:
    """Write ``values`` as a string column at ``path`` (fsynced). With ``lookup`` the file can
    find a row by its value (an order section, unless the rows are already sorted)."""
    raw = [_encode(v) for v in values]
    n = len(raw)
    offsets = np.zeros(n + 1, dtype="<i8")
    if n:
        np.cumsum([len(r) for r in raw], out=offsets[1:])
    flags = 0
    order = None
    if lookup:
        if all(raw[i] < raw[i + 1] for i in range(n - 1)):
            flags |= _SORTED
        else:
            order = np.array(sorted(range(n), key=raw.__getitem__), dtype="<i8")
            flags |= _HAS_ORDER
    header = MAGIC + np.array([n, int(offsets[-1]), flags], dtype="<u8").tobytes()
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(offsets.tobytes())
        if order is not None:
            fh.write(order.tobytes())
        for r in raw:
            fh.write(r)
        fh.flush()
        os.fsync(fh.fileno())


class StringColumn(Sequence[str]):
    """A read-only string column file, memory-mapped: ``column[i]``, ``len``, iteration and
    :meth:`find` (binary search) read only the bytes they need."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            if size < HEADER_BYTES:
                raise ValueError(f"{size} bytes, shorter than the header")
            mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise SearchIndexError(f"{self.path}: unreadable string column ({exc})") from None
        if bytes(mm[:8]) != MAGIC:
            raise SearchIndexError(f"{self.path}: not a mess string column")
        n, blob, flags = (int(v) for v in np.frombuffer(mm, dtype="<u8", count=3, offset=8))
        at = HEADER_BYTES + 8 * (n + 1)
        order_at = at
        if flags & _HAS_ORDER:
            at += 8 * n
        if at + blob != size:
            raise SearchIndexError(
                f"{self.path}: {size} bytes, the header says {at + blob} (truncated or damaged)"
            )
        self._mm = mm
        self._n = n
        self._blob_bytes = blob
        self._offsets = np.frombuffer(mm, dtype="<i8", count=n + 1, offset=HEADER_BYTES)
        self._order = (
            np.frombuffer(mm, dtype="<i8", count=n, offset=order_at) if flags & _HAS_ORDER else None
        )
        self._sorted = bool(flags & _SORTED)
        self._blob = mm[at:]
        # rows are read through a plain buffer: slicing the memmap made a numpy object per row
        # (its Python __array_finalize__ hook was most of a lookup's cost)
        self._view = memoryview(mm)[at:]

    def __len__(self) -> int:
        return self._n

    def raw(self, i: int) -> bytes:
        """Row ``i`` as stored (UTF-8 bytes)."""
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        if not 0 <= start <= end <= self._blob_bytes:
            raise SearchIndexError(f"{self.path}: row {i} points outside the file (damaged)")
        return bytes(self._view[start:end])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"row {i} of {self._n}")
        return _decode(self.raw(i))

    def __iter__(self) -> Iterator[str]:
        blob = bytes(self._blob)  # one read for a full scan
        offsets = self._offsets.tolist()
        for i in range(self._n):
            yield _decode(blob[offsets[i] : offsets[i + 1]])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringColumn, list, tuple)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self.find(value) is not None

    def find(self, value: str) -> int | None:
        """The row holding ``value`` (the first, if several), None when absent; O(log n)."""
        if self._order is None and not self._sorted:
            raise SearchIndexError(f"{self.path}: written without a lookup section")
        try:
            key = _encode(value)
        except (UnicodeError, AttributeError):
            return None
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.raw(self._row(mid)) < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < self._n:
            row = self._row(lo)
            if self.raw(row) == key:
                return row
        return None

    def check_lookup(self) -> None:
        """SearchIndexError unless the rows are unique and the lookup section orders them (a
        full scan, O(n): for ``--verify``)."""
        blob = bytes(self._blob)
        offsets = self._offsets
        if offsets[0] != 0 or offsets[-1] != self._blob_bytes or (np.diff(offsets) < 0).any():
            raise SearchIndexError(f"{self.path}: offsets are damaged")
        bounds = offsets.tolist()
        raw = [blob[bounds[i] : bounds[i + 1]] for i in range(self._n)]
        if self._order is None:
            order = range(self._n)
        else:
            order = self._order.tolist()
            if np.bincount(self._order, minlength=self._n).max(initial=1) != 1 or (
                self._n and not 0 <= min(order) <= max(order) < self._n
            ):
                raise SearchIndexError(f"{self.path}: lookup section is damaged")
        ranked = [raw[i] for i in order]
        if any(ranked[i] >= ranked[i + 1] for i in range(self._n - 1)):
            raise SearchIndexError(f"{self.path}: duplicate values or a damaged lookup section")

    def _row(self, rank: int) -> int:
        if self._order is None:
            return rank
        row = int(self._order[rank])
        if not 0 <= row < self._n:
            raise SearchIndexError(f"{self.path}: lookup section is damaged")
        return row


class ListColumn(list):
    """An in-memory column with :meth:`find` (a dict built on first use): what a fresh index or
    catalogue holds before it is written."""

    _pos: dict[str, int] | None = None

    def find(self, value: str) -> int | None:
        if self._pos is None or len(self._pos) != len(self):
            self._pos = {}
            for i, v in enumerate(self):
                self._pos.setdefault(v, i)
        return self._pos.get(value)


# ---- checked files --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _signature(st: os.stat_result) -> list[int]:
    return [int(st.st_ino), int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns)]


#: A signature is trusted only once its ctime is this far in the past: a change made within the
#: same tick of the file system's clock (≈ 4–10 ms on Linux; 1–2 s on coarse file systems,
#: recognised by whole-second ctimes) could otherwise keep the same ctime ("racy" signatures,
#: the problem git's index has).
FINE_MARGIN_NS, COARSE_MARGIN_NS = 50_000_000, 2_000_000_000


def _margin_ns(ctime_ns: int) -> int:
    return COARSE_MARGIN_NS if ctime_ns % 1_000_000_000 == 0 else FINE_MARGIN_NS


def _settled(sig: list[int]) -> bool:
    """Whether a later change of the file is sure to change this signature."""
    return time.time_ns() - sig[3] >= _margin_ns(sig[3])


def _settle(sigs: Iterable[list[int]]) -> None:
    """Wait (once, usually ≤ 50 ms) until every signature is settled."""
    latest = max((sig[3] + _margin_ns(sig[3]) for sig in sigs), default=0)
    wait = latest - time.time_ns()
    if wait > 0:
        time.sleep(wait / 1e9)


def record_files(
    directory: Path, names: Iterable[str], known: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """``{name: {"size", "sha256", "stat"}}`` of files just written in ``directory``;
    ``known`` gives the SHA-256 of files whose content is already known (hard links). Waits
    until the signatures are settled; a file that changed meanwhile is recorded without one
    (its first reader hashes it)."""
    names = list(names)
    before = {n: _signature((directory / n).stat()) for n in names}
    sums = {n: (known or {}).get(n) or sha256_file(directory / n) for n in names}
    _settle(before.values())
    out = {}
    for name in names:
        path = directory / name
        sig = _signature(path.stat())
        stat: list[int] | None = sig
        if sig != before[name]:  # changed while it was hashed: hash again, trust no signature
            sums[name], stat = sha256_file(path), None
        out[name] = {"size": sig[1], "sha256": sums[name], "stat": stat}
    return out


def _verified(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / VERIFIED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_files(
    directory: Path,
    files: Mapping[str, Any],
    names: Iterable[str] | None = None,
    *,
    full: bool = False,
    rebuild: str = "rebuild it",
) -> dict[str, str]:
    """Check the files ``names`` (default: all) of ``directory`` against their ``files``
    record (see the module docstring); SearchIndexError naming the file when one is missing,
    of another size, or of other content. Returns ``{name: sha256}`` of the files checked."""
    seen = None
    rehashed: dict[str, list] = {}
    out = {}
    for name in names if names is not None else list(files):
        entry = files.get(name)
        path = directory / name
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise SearchIndexError(f"{path}: not recorded in the folder's checksums; {rebuild}")
        try:
            st = path.stat()
        except FileNotFoundError:
            raise SearchIndexError(f"{path}: missing file; {rebuild}") from None
        if st.st_size != entry.get("size"):
            raise SearchIndexError(
                f"{path}: {st.st_size} bytes, expected {entry.get('size')} (truncated or "
                f"replaced); {rebuild}"
            )
        sig = _signature(st)
        if not full:
            if sig == entry.get("stat"):
                out[name] = entry["sha256"]
                continue
            if seen is None:
                seen = _verified(directory)
            if seen.get(name) == [entry["sha256"], *sig]:
                out[name] = entry["sha256"]
                continue
        if sha256_file(path) != entry["sha256"]:
            raise SearchIndexError(
                f"{path}: checksum mismatch (the file is damaged or was changed); {rebuild}"
            )
        out[name] = entry["sha256"]
        unchanged = _signature(path.stat()) == sig  # not changed while it was hashed
        if sig != entry.get("stat") and unchanged and _settled(sig):
            rehashed[name] = [entry["sha256"], *sig]
    if rehashed:  # remember the new signatures: the next reader trusts them in constant time
        _write_verified(directory, rehashed, seen)
    return out


def _write_verified(directory: Path, entries: dict[str, list], seen=None) -> None:
    from messai.files import atomic_write_json

    try:
        atomic_write_json(directory / VERIFIED_FILE, {**(seen or _verified(directory)), **entries})
    except OSError:
        pass  # a read-only folder: the next reader hashes again


def remember_files(directory: Path, sums: Mapping[str, str]) -> None:
    """Record the current stat signatures of files of ``directory`` whose content is known
    to have the SHA-256 ``sums`` (best effort, once they are settled), so a reader trusts
    them without hashing."""
    if not sums:
        return
    try:
        sigs = {name: _signature((directory / name).stat()) for name in sums}
        _settle(sigs.values())
        if any(_signature((directory / n).stat()) != sig for n, sig in sigs.items()):
            return  # changed meanwhile: the next reader hashes
    except OSError:
        return
    _write_verified(directory, {name: [sums[name], *sig] for name, sig in sigs.items()})


def self_checksum(record: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON record's canonical form, without its own ``record_sha256`` field."""
    rest = {k: v for k, v in record.items() if k != "record_sha256"}
    blob = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()
