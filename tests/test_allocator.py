"""messai.allocator: glibc keeps large freed blocks for the decode path."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_thresholds_are_set_once_per_process():
    code = (
        "from messai.allocator import keep_freed_memory\n"
        "assert keep_freed_memory() is True\n"
        "assert keep_freed_memory() is True  # cached: mallopt runs once\n"
        "assert keep_freed_memory.cache_info().misses == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_decoder_path_sets_them(tmp_path):
    """The thread, the worker processes and Ray's decode stage all run decode_track."""
    from messai.allocator import keep_freed_memory
    from messai.datasets.base import TrackInfo
    from messai.features.decode import WindowSpec
    from messai.features.workers import DecodeJob, decode_track
    from tests.conftest import write_audio

    keep_freed_memory.cache_clear()
    path = write_audio(tmp_path / "a.wav", 2.0, 24000)
    job = DecodeJob(WindowSpec(), 24000, do_normalize=True, compute_targets=False)
    decode_track(0, TrackInfo("a", path), job, lambda message: True)
    assert keep_freed_memory.cache_info().currsize == 1
