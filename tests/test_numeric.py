"""messai.numeric: the BLAS limiter works from whichever thread enters it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from messai.numeric import single_threaded_blas

threadpoolctl = pytest.importorskip("threadpoolctl")

# a product OpenBLAS splits across threads; its last bits follow the thread count
_A = np.abs(np.random.default_rng(0).standard_normal((235, 1025)))
_B = np.random.default_rng(1).standard_normal((1025, 3)) * 1e3


def _one_thread_product() -> np.ndarray:
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        return _A @ _B


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def _limited_product() -> np.ndarray:
    with single_threaded_blas():
        return _A @ _B


def test_a_second_thread_can_limit_after_the_main_thread_did():
    """threadpoolctl lets only the first thread that set a pthreads OpenBLAS limit set it again;
    the decode thread's proxy targets then ran on every BLAS thread (last bits differed from a
    worker process's)."""
    reference = _one_thread_product()
    assert _limited_product().tobytes() == reference.tobytes()  # the main thread limits first
    assert _in_thread(_limited_product).tobytes() == reference.tobytes()
    assert _limited_product().tobytes() == reference.tobytes()  # and main again after it


def test_overlapping_users_share_one_limit():
    reference = _one_thread_product()
    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with single_threaded_blas():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert entered.wait(10)
        assert _limited_product().tobytes() == reference.tobytes()
        assert (_A @ _B).tobytes() == reference.tobytes()  # still limited: the holder is inside
    finally:
        release.set()
        t.join()
