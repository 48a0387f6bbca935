"""Keep the C heap from handing large freed blocks back to the kernel on every window.

The proxy targets of one 5-s window allocate and free a dozen arrays of 1-4 MB (frames, the
spectrum, its magnitude, …). glibc serves blocks that large with a fresh ``mmap`` or trims
them off the heap top as soon as they are freed, so the next window touches brand-new pages:
about 1,850 page faults per window, which doubled the targets' CPU cost on this machine
(measured: 9.0 → 4.2 ms per window of the demo). :func:`keep_freed_memory` raises glibc's mmap
and trim thresholds once per process, so those blocks are reused instead; the heap then keeps
its peak size (a few tens of MB for decoding) until the process ends.

A no-op (returning False) where the C library has no ``mallopt`` (macOS, musl's stub).
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit: blocks up to this come from the heap
TRIM_THRESHOLD = 256 * 2**20  # free memory kept at the heap top before it is returned


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds (once per process); True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - no dynamic libc / no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
