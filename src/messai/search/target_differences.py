"""How a recommended track's proxy targets differ from the query's (``--explain``): per-track
target means and the targets that differ most, in their own units and as z-scores over the
store's tracks (see :mod:`messai.search.explain`)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

UNITS = {
    "spectral_centroid": "Hz",
    "spectral_rolloff": "Hz",
    "spectral_bandwidth": "Hz",
    "spectral_contrast": "dB",
    "rms_db_mean": "dB",
    "rms_db_std": "dB",
    "onset_rate": "onsets/s",
    "chroma_entropy": "bits",
}


def track_target_means(store, track_ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per target stored for every track: ``[n_tracks(, k)]`` mean of its windows (raw units)."""
    ids = track_ids if track_ids is not None else store.track_ids()
    stored = [set(store.entry(t).targets) for t in ids]
    names = sorted(set.intersection(*stored)) if stored else []
    if not names:
        return {}
    data = store.read_windows(layers=False, targets=names, track_ids=list(ids))
    bounds = np.concatenate([[0], np.cumsum(data["n_segments"])])
    out = {}
    for name in names:
        v = np.asarray(data["targets"][name], dtype=np.float64)
        out[name] = np.stack([v[a:b].mean(0) for a, b in itertools.pairwise(bounds)])
    return out


def target_differences(
    means: dict[str, np.ndarray], query: int, other: int, *, top: int = 3
) -> list[dict[str, Any]]:
    """The ``top`` targets that differ most (by |z|) between rows ``other`` and ``query``."""
    rows = []
    for name, v in means.items():
        sd = v.std(0)
        d = v[other] - v[query]
        z = np.divide(d, sd, out=np.zeros_like(np.asarray(d, dtype=np.float64)), where=sd > 0)
        if np.ndim(d) == 0:
            delta, zz = float(d), float(z)
        else:
            delta, zz = float(np.linalg.norm(d)), float(np.linalg.norm(z) / np.sqrt(d.size))
        rows.append(
            {
                "target": name,
                "delta": round(delta, 4),
                "unit": UNITS.get(name, ""),
                "z": round(zz, 3),
            }
        )
    rows.sort(key=lambda r: -abs(r["z"]))
    return rows[:top]
