"""Decoding through FFmpeg (PyAV, whose wheels ship their own FFmpeg) for what libsndfile
cannot read: AAC and ALAC in .m4a/.mp4 (iTunes), WMA, APE, WavPack, Matroska/WebM audio ...

soundfile stays the fast path (:mod:`messai.features.decode` tries it first); this module is
used only when it fails. PyAV is imported inside the functions (it is not on any fast path).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from messai.errors import AudioError

#: AudioInfo.format prefix of files read through FFmpeg
FORMAT_PREFIX = "ffmpeg:"


def _open(path: Path):
    try:
        import av
    except ImportError:  # pragma: no cover - a dependency
        raise AudioError(f"{path}: not readable by libsndfile, and PyAV is not installed") from None
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except Exception as exc:  # av.error.* (InvalidDataError, ...)
        raise AudioError(f"{path}: not a readable audio file ({_short(exc)})") from None
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{path}: no audio stream (not an audio file)")
    return container


def probe(path: str | Path) -> tuple[int, int, int, str]:
    """``(sample_rate, channels, frames, format)`` of the first audio stream; ``frames`` is
    estimated from the container's duration (0 when unknown). AudioError when unreadable."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 0)
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000
        else:
            seconds = 0.0
        name = f"{FORMAT_PREFIX}{stream.codec_context.name}"
    finally:
        container.close()
    if rate <= 0 or channels <= 0:
        raise AudioError(f"{path}: invalid audio stream (sample rate {rate}, {channels} channels)")
    return rate, channels, max(0, round(seconds * rate)), name


def stream_blocks(path: str | Path, *, block_frames: int) -> Iterator[np.ndarray]:
    """Decoded audio as float32 blocks ``[frames, channels]`` of about ``block_frames``
    (the last one shorter), at the stream's own sample rate. AudioError on a decoding error."""
    import av

    path = Path(path)
    container = _open(path)
    pending: list[np.ndarray] = []
    n_pending = 0
    try:
        stream = container.streams.audio[0]
        channels = int(stream.codec_context.channels)
        # one interleaved float layout whatever the codec's sample format
        resampler = av.AudioResampler(format="flt", layout=stream.codec_context.layout)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pending.append(out.to_ndarray().reshape(-1, channels))
                n_pending += pending[-1].shape[0]
            if n_pending >= block_frames:
                yield np.concatenate(pending).astype(np.float32, copy=False)
                pending, n_pending = [], 0
        for out in resampler.resample(None):
            pending.append(out.to_ndarray().reshape(-1, channels))
    except AudioError:
        raise
    except Exception as exc:  # av.error.* while demuxing or decoding
        raise AudioError(f"{path}: decoding failed ({_short(exc)})") from None
    finally:
        container.close()
    if pending:
        yield np.concatenate(pending).astype(np.float32, copy=False)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
