"""Small numeric helpers shared by every stage: JSON-safe values and a BLAS thread limiter."""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterator
from typing import Any


def json_safe(obj: Any, *, ndigits: int | None = None) -> Any:
    """``obj`` with NaN and ±inf as ``None`` (JSON has no such numbers), numpy scalars and
    arrays as Python values, tuples as lists; floats rounded to ``ndigits`` when given."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return {k: json_safe(v, ndigits=ndigits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, ndigits=ndigits) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (int, float)):  # numpy array or scalar
        return json_safe(obj.tolist(), ndigits=ndigits)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return round(obj, ndigits) if ndigits is not None else obj
    return obj


def finite_or_none(value: Any, *, ndigits: int | None = None) -> float | None:
    """One number: ``None`` for None, NaN or ±inf, else a float (rounded to ``ndigits``)."""
    if value is None:
        return None
    x = float(value)
    if not math.isfinite(x):
        return None
    return round(x, ndigits) if ndigits is not None else x


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries of numpy and scipy (found once: scanning
    the loaded libraries costs milliseconds), or None without threadpoolctl."""
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover
        return None
    with contextlib.suppress(ImportError):
        import scipy.linalg.lapack  # noqa: F401  (load scipy's OpenBLAS so it is limited too)
    return threadpoolctl.ThreadpoolController().select(user_api="blas")


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None  # the active threadpoolctl limiter while _blas_users > 0


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit the BLAS/LAPACK libraries of numpy and scipy to one thread inside the block.

    The matrix products in the proxy targets and the probe are small or already parallelised
    over layers: multi-threaded OpenBLAS gains little there, and on a busy 2-core machine its
    spinning worker threads made the work 2-10x slower (measured: targets 48 → 25 ms per 5-s
    window; a 768² ``eigh`` 5-10x). torch's own threads are not touched. Reference-counted and
    thread-safe: concurrent users share one limiter and the original setting is restored once,
    when the last one leaves. A no-op without threadpoolctl.
    """
    global _blas_users, _blas_limiter
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _take_openblas_control()
            _blas_limiter = controller.limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _take_openblas_control()  # the last user may not be the thread that limited
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def _take_openblas_control() -> None:
    """Let the calling thread set OpenBLAS's (process-wide) thread count.

    threadpoolctl lets only the first thread that ever set a pthreads OpenBLAS's limit change
    it again; from any other thread the call silently does nothing (threadpoolctl 3.5+). So a
    limit the main thread once set and restored left the decode thread's proxy targets on two
    BLAS threads, and their last bits differed from a worker process's (one thread). Every
    limit in mess goes through :func:`single_threaded_blas`, under its lock, so taking the
    control over is safe here."""
    import threadpoolctl

    clear = getattr(
        getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None
    )
    if clear is not None:
        clear(force=True)
