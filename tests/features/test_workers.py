"""Decode worker processes: same bits as the single thread, a killed worker fails only its file,
memory bounded on a 3-hour file; int8 precision works and is labelled."""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

from messai.datasets.base import TrackInfo
from messai.features.extractor import FeatureExtractor
from messai.features.workers import DecodePool, default_decode_workers
from tests.conftest import write_audio


def _tracks(folder: Path) -> list[TrackInfo]:
    write_audio(folder / "a.wav", 11.3, 44100, freq=330)  # 2 windows + a 1.3 s tail
    write_audio(folder / "b.flac", 5.0, 22050, freq=550, channels=2)  # one window
    (folder / "bad.wav").write_bytes(b"RIFF not really audio")
    write_audio(folder / "c.ogg", 7.0, 24000, freq=880)  # a window + a 2 s tail
    write_audio(folder / "d.wav", 16.0, 48000, freq=220, channels=2)
    return [TrackInfo(p.stem, p) for p in sorted(folder.iterdir())]


def _run(ckpt, tracks, workers, **kw):
    fx = FeatureExtractor(ckpt, device="cpu", decode_workers=workers, **kw)
    return fx, list(fx.run(tracks))


def _assert_same(a, b, *, exact_segments: bool = True):
    # same yield order (a failure is yielded as soon as it is known, before pending tracks)
    assert [r.track.track_id for r in a] == [r.track.track_id for r in b]
    for x, y in zip(a, b):
        assert x.error == y.error
        if x.ok:
            if exact_segments:
                assert x.segments.tobytes() == y.segments.tobytes()  # bit for bit
            else:
                np.testing.assert_allclose(x.segments, y.segments, rtol=0, atol=1e-6)
            assert np.array_equal(x.starts, y.starts) and np.array_equal(x.lengths, y.lengths)
            assert x.targets.keys() == y.targets.keys()
            for k in x.targets:  # the decode path alone: always bit for bit
                assert x.targets[k].tobytes() == y.targets[k].tobytes(), k
            assert x.source == y.source and x.duration_seconds == y.duration_seconds


def test_worker_pool_equals_single_thread_bit_for_bit(tmp_path, tiny_ckpt):
    from messai.features.targets import compute_targets

    compute_targets([np.ones(4000, np.float32)], 24000)  # the main thread limits BLAS first
    tracks = _tracks(tmp_path / "music")
    _, thread = _run(tiny_ckpt, tracks, 0)
    fx, pool = _run(tiny_ckpt, tracks, 2, prefetch_windows=4)
    assert isinstance(fx.last_decoder, DecodePool)
    ok = {r.track.track_id: r.ok for r in thread}
    assert ok == {"a": True, "b": True, "bad": False, "c": True, "d": True}
    # Everything bit for bit, also after this process's main thread has limited BLAS before
    # (threadpoolctl let only that thread limit OpenBLAS again: the thread path's targets then
    # ran on two BLAS threads and differed in their last bits from a worker's)
    _assert_same(thread, pool)
    _, one = _run(tiny_ckpt, tracks, 1, prefetch_windows=2)
    _assert_same(pool, one)  # the model runs alone in this process: exact
    _, three = _run(tiny_ckpt, tracks, 3, batch_size=3)
    _, three_again = _run(tiny_ckpt, tracks, 3, batch_size=3)
    _assert_same(three, three_again)


def test_killed_worker_fails_only_its_file(tmp_path, tiny_ckpt):
    folder = tmp_path / "music"
    write_audio(folder / "0long.wav", 60.0, 44100, freq=330)  # 12 windows
    write_audio(folder / "1.wav", 6.0, 44100, freq=440)
    write_audio(folder / "2.wav", 6.0, 44100, freq=550)
    write_audio(folder / "3.wav", 6.0, 44100, freq=660)
    tracks = [TrackInfo(p.stem, p) for p in sorted(folder.iterdir())]
    _, reference = _run(tiny_ckpt, tracks, 0)

    fx = FeatureExtractor(tiny_ckpt, device="cpu", decode_workers=2, prefetch_windows=4)
    killed: list[int] = []

    def on_window(track, seconds):
        if track.track_id == "0long" and not killed:
            pid = fx.last_decoder.worker_pid(0)  # its queue is full: it is mid-file
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    results = list(fx.run(tracks, on_window=on_window))
    assert killed
    assert sorted(r.track.track_id for r in results) == ["0long", "1", "2", "3"]
    results.sort(key=lambda r: r.track.track_id)
    assert not results[0].ok
    assert "decode worker crashed (killed by signal 9)" in results[0].error
    assert fx.last_decoder.crashes and "0long" in fx.last_decoder.crashes[0]
    reference.sort(key=lambda r: r.track.track_id)
    # the failed track's windows left the batches they shared, and batch composition changes
    # the model's last bits; the targets are bit for bit
    _assert_same(reference[1:], results[1:], exact_segments=False)


def _sparse_wav(path: Path, seconds: float, rate: int) -> Path:
    """A valid 16-bit mono WAV of silence whose data is a sparse hole (no disk, instant)."""
    n_bytes = int(seconds * rate) * 2
    header = b"RIFF" + struct.pack("<I", 36 + n_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", n_bytes)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n_bytes)
    return path


def _peak_rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


class _Stop(Exception):
    pass


def test_memory_bounded_on_a_three_hour_file_with_two_workers(tmp_path, tiny_ckpt):
    """A 3-hour file (8 kHz, resampled) with a slow model: the workers never run further ahead
    than the queue bound, and a worker's memory does not grow with the file."""
    long = _sparse_wav(tmp_path / "long.wav", 3 * 3600, 8000)
    short = tmp_path / "short.wav"
    write_audio(short, 6.0, 8000)
    tracks = [TrackInfo("long", long), TrackInfo("short", short)]
    fx = FeatureExtractor(
        tiny_ckpt, device="cpu", decode_workers=2, prefetch_windows=8, compute_targets=False
    )
    seen = {"n": 0, "rss": []}

    def on_window(track, seconds):
        seen["n"] += 1
        pool = fx.last_decoder
        assert pool.queued() <= 2 * pool.queue_windows  # never more than the bound waits here
        if seen["n"] % 40 == 0:
            seen["rss"].append(max(filter(None, map(_peak_rss_mb, pool.pids)), default=0.0))
        if seen["n"] >= 160:  # 13 minutes into the file: enough to see growth
            raise _Stop

    with pytest.raises(_Stop):
        for _ in fx.run(tracks, on_window=on_window):
            pass
    pool = fx.last_decoder
    assert pool.max_queued <= 2 * pool.queue_windows
    assert pool.pids == []  # closed: every worker joined
    if seen["rss"] and seen["rss"][0]:
        # the worker's peak RSS after 160 windows is about what it was after 40 (±64 MB), and far
        # below the 3-hour signal (3 h x 24 kHz x 4 B = 1 GB)
        assert seen["rss"][-1] - seen["rss"][0] < 64
        assert seen["rss"][-1] < 900


def test_default_decode_workers():
    assert default_decode_workers("cpu", 2) == 0  # the thread keeps up with a CPU model
    assert default_decode_workers("cpu", 32) == 8
    assert default_decode_workers("cuda", 16) == 8
    assert default_decode_workers("cuda", 2) == 1
    assert default_decode_workers("mps", 8) == 7


def test_int8_precision_is_labelled_and_close(tmp_path, tiny_ckpt):
    from messai.device import PRECISION_LABELS, select_dtype
    from messai.errors import DeviceError

    tracks = _tracks(tmp_path / "music")[:2]
    _, ref = _run(tiny_ckpt, tracks, 0)
    fx, q = _run(tiny_ckpt, tracks, 0, precision="int8")
    assert fx.loaded.info["quantized"] == "int8"
    assert "approximate" in PRECISION_LABELS["int8"]
    for a, b in zip(ref, q):
        assert a.ok and b.ok
        assert a.segments.shape == b.segments.shape
        cos = (a.segments * b.segments).sum(-1) / (
            np.linalg.norm(a.segments, axis=-1) * np.linalg.norm(b.segments, axis=-1)
        )
        assert cos.min() > 0.9
    import torch

    with pytest.raises(DeviceError, match="CPU only"):
        select_dtype("int8", torch.device("cuda"))


def test_null_model_has_the_shapes_of_the_model(tmp_path, tiny_ckpt):
    tracks = _tracks(tmp_path / "music")[:2]
    _, ref = _run(tiny_ckpt, tracks, 0)
    _, null = _run(tiny_ckpt, tracks, 0, null_model=True)
    for a, b in zip(ref, null):
        assert a.segments.shape == b.segments.shape and not b.segments.any()
