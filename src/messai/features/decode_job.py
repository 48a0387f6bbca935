"""Decode one audio file into what the model stage needs, in one call (for engines that run
the CPU half elsewhere, such as Ray workers).

:func:`decode_file` collects what :func:`messai.features.workers.decode_track` — the very
function the local engine's decoding thread and worker processes run — sends for one file:
windows (normalised when the model asks), their starts, the proxy targets of the raw windows,
and the file's ``(size, mtime_ns, content hash)``. One implementation, so every engine stores
bit-identical windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from messai.features.decode import WindowSpec


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
    from messai.datasets.base import TrackInfo
    from messai.features.workers import DecodeJob, WindowDecoded, decode_track

    path = Path(path)
    out = DecodedTrack()

    def collect(message) -> bool:
        if isinstance(message, WindowDecoded):
            out.starts.append(message.start)
            out.windows.append(message.samples)
            out.targets.append(message.targets)
        return True

    job = DecodeJob(window, sample_rate, do_normalize, compute_targets)
    decoded = decode_track(0, TrackInfo(path.stem, path), job, collect)
    out.duration_seconds, out.source = decoded.duration_seconds, decoded.source
    return out
