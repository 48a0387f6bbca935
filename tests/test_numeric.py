"""messai.numeric: the BLAS limiter works from whichever thread enters it."""

from __future__ import annotations

import threading

import pytest

from messai.numeric import single_threaded_blas

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_a_second_thread_can_limit_after_the_main_thread_did():
    """threadpoolctl lets only the first thread that set a pthreads OpenBLAS limit set it again;
    the decode thread's proxy targets then ran on every BLAS thread (last bits differed)."""
    with single_threaded_blas():
        assert set(_blas_threads()) == {1}
    seen: list[list[int]] = []

    def decode_thread() -> None:
        with single_threaded_blas():
            seen.append(_blas_threads())

    t = threading.Thread(target=decode_thread)
    t.start()
    t.join()
    assert seen and set(seen[0]) == {1}
    # and the limit is lifted again from that thread
    t = threading.Thread(target=lambda: seen.append(_blas_threads()))
    t.start()
    t.join()
    assert seen[1] == _blas_threads()


def test_overlapping_users_share_one_limit():
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with single_threaded_blas():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    entered.wait(10)
    with single_threaded_blas():
        assert set(_blas_threads()) == {1}
    assert set(_blas_threads()) == {1}  # the other thread still holds it
    release.set()
    t.join()
