"""Decode one audio file into what the model stage needs, in one call (for worker processes).

:func:`decode_file` is the CPU half of extraction for one track: read, downmix, resample,
window, normalise, proxy targets, and the file's ``(size, mtime_ns, content hash)``. It is
built only from the public functions the local engine's decoding thread uses
(:mod:`messai.features.decode`, :func:`messai.features.targets.compute_targets`,
:func:`messai.features.store.file_content_hash`), in the same order with the same checks, so
an engine that runs it elsewhere (Ray workers) stores bit-identical windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from messai.errors import AudioError
from messai.features.decode import (
    WindowSpec,
    audio_info,
    iter_windows,
    normalize_window,
    stream_mono,
)


@dataclass
class DecodedTrack:
    """One file, decoded: per window its start (samples at the model rate), the samples as the
    model sees them (normalised when the model asks) and the proxy targets of the raw window."""

    starts: list[int] = field(default_factory=list)
    windows: list[np.ndarray] = field(default_factory=list)  # float32 [length] each
    targets: list[dict[str, np.ndarray]] = field(default_factory=list)
    duration_seconds: float = 0.0
    source: tuple[int, int, str] = (0, 0, "")  # (size, mtime_ns, content hash) as read


def decode_file(
    path: str | Path,
    *,
    window: WindowSpec,
    sample_rate: int,
    do_normalize: bool,
    compute_targets: bool = True,
) -> DecodedTrack:
    """Decode ``path`` into windows and targets; AudioError (``"path: reason"``) when the file
    cannot be used: unreadable, too short, or changed while it was read."""
    from messai.features.store import file_content_hash

    path = Path(path)
    try:
        before = path.stat()
    except OSError as exc:
        raise AudioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    info = audio_info(path)
    if info.duration_seconds < window.min_seconds and info.frames > 0:
        raise AudioError(
            f"{path}: too short ({info.duration_seconds:.2f} s < --min-seconds {window.min_seconds:g})"
        )
    digest = file_content_hash(path)
    out = DecodedTrack()
    for start, samples in iter_windows(stream_mono(path, sample_rate), window, sample_rate):
        out.targets.append(window_targets(samples, sample_rate) if compute_targets else {})
        out.windows.append(normalize_window(samples) if do_normalize else samples)
        out.starts.append(start)
    if not out.windows:
        raise AudioError(f"{path}: too short (no window of at least {window.min_seconds:g} s)")
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise AudioError(f"{path}: changed while it was being read; run again")
    out.duration_seconds = info.duration_seconds
    out.source = (before.st_size, before.st_mtime_ns, digest)
    return out


def window_targets(samples: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """The proxy targets of one raw window (name → scalar or ``[k]`` array)."""
    from messai.features.targets import compute_targets

    values = compute_targets([samples], sample_rate)
    return {k: np.asarray(v)[0] for k, v in values.items()}
