"""Typed records of the feature store: what one stored track is, and the names of its arrays.

Every module that reads or writes a store goes through these records and the
:class:`~messai.features.store.FeatureStore` methods; nobody else knows how they are kept on
disk, so the storage underneath can change without touching callers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

#: array names of a stored track
SEGMENTS = "segments"  # [n_segments, n_layers, dim], the store's dtype (float16 by default)
AGGREGATED = "aggregated"  # [n_layers, dim] float32: mean of the float32 segments
STARTS = "starts"  # [n_segments] int64, samples at the model rate
LENGTHS = "lengths"  # [n_segments] int64, samples
TARGET_PREFIX = "target__"  # + target name: [n_segments] or [n_segments, k] float32


def target_array_name(target: str) -> str:
    """The stored array name of a proxy target (``spectral_centroid`` → ``target__…``)."""
    return TARGET_PREFIX + target


def target_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Target name → values, from a track's arrays."""
    n = len(TARGET_PREFIX)
    return {k[n:]: v for k, v in arrays.items() if k.startswith(TARGET_PREFIX)}


def feature_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A track's arrays without its proxy targets (segments, aggregated, starts, lengths)."""
    return {k: v for k, v in arrays.items() if k in (SEGMENTS, AGGREGATED, STARTS, LENGTHS)}


def track_arrays(
    segments: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    targets: dict[str, np.ndarray],
    *,
    store_dtype: str = "float16",
) -> dict[str, np.ndarray]:
    """The arrays of one track as stored.

    Parameters
    ----------
    segments : ndarray, shape (n_segments, n_layers, dim), float32
        Time-averaged hidden states per window.
    starts, lengths : ndarray, shape (n_segments,)
        Window positions in samples at the model rate.
    targets : dict
        Target name → ``[n_segments]`` or ``[n_segments, k]`` values.
    store_dtype : {"float16", "float32"}
        dtype the segments are kept in. ``aggregated`` is always the float32 mean of the
        float32 segments, computed before any rounding.
    """
    arrays = {
        SEGMENTS: segments.astype(store_dtype),
        AGGREGATED: segments.mean(axis=0).astype(np.float32),
        STARTS: np.asarray(starts, dtype=np.int64),
        LENGTHS: np.asarray(lengths, dtype=np.int64),
    }
    for name, values in targets.items():
        arrays[target_array_name(name)] = np.asarray(values, dtype=np.float32)
    return arrays


@dataclass(frozen=True)
class TrackEntry:
    """One stored track: where its audio came from and what was extracted.

    ``source`` is the audio path relative to the dataset root; ``size``/``mtime_ns``/
    ``content_hash`` describe the file as read (a re-run compares them); ``targets`` names the
    proxy targets stored; ``labels`` are the dataset's labels (composer, work, …).
    """

    track_id: str
    source: str
    size: int
    mtime_ns: int
    content_hash: str
    duration_seconds: float
    n_segments: int
    targets: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    extracted_at: str | None = None
    targets_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without ``track_id``, which is the key it is kept under)."""
        d = asdict(self)
        del d["track_id"]
        d["targets"] = list(self.targets)
        d["labels"] = dict(self.labels)
        if d["targets_at"] is None:
            del d["targets_at"]
        return d

    @classmethod
    def from_dict(cls, track_id: str, d: dict[str, Any]) -> TrackEntry:
        return cls(
            track_id=track_id,
            source=str(d.get("source", "")),
            size=int(d.get("size", 0)),
            mtime_ns=int(d.get("mtime_ns", 0)),
            content_hash=str(d.get("content_hash", "")),
            duration_seconds=float(d.get("duration_seconds", 0.0)),
            n_segments=int(d["n_segments"]),
            targets=tuple(d.get("targets") or ()),
            labels=dict(d.get("labels") or {}),
            extracted_at=d.get("extracted_at"),
            targets_at=d.get("targets_at"),
        )

    def with_changes(self, **changes: Any) -> TrackEntry:
        return replace(self, **changes)


@dataclass(frozen=True)
class TrackFailure:
    """A track whose last extraction failed: ``reason`` is the one-line explanation."""

    track_id: str
    source: str
    reason: str
    at: str | None = None
    size: int | None = None  # the file as it was when it failed (None: unknown)
    mtime_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "at": self.at}

    @classmethod
    def from_dict(cls, track_id: str, d: dict[str, Any]) -> TrackFailure:
        return cls(track_id, str(d.get("source", "")), str(d.get("reason", "")), d.get("at"))


def nfc(track_id: Any) -> Any:
    """Track ids are NFC (as the scanners make them): an id typed or listed in another Unicode
    normalisation (macOS file names are NFD) finds the same track."""
    import unicodedata

    return unicodedata.normalize("NFC", track_id) if isinstance(track_id, str) else track_id
