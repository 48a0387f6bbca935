"""``--explain``: why each recommended track is there.

Per result, :func:`explain_result` adds

- ``aspect_similarities``: the similarity of query and result in every fitted aspect space of
  the store (``exp(-d² / (2 · dim))``, as the space search ranks them), stale spaces included
  (their names end in `` (stale)``);
- ``target_differences``: the proxy targets that differ most between result and query, as
  ``{"target", "delta", "unit", "z"}``: ``delta`` is result − query in the target's own units
  (per track, the mean over its windows; for a vector target such as mfcc the euclidean norm of
  the difference, never negative), ``z`` is that difference over the target's spread across the
  store's tracks (per component, then the norm divided by √components). The largest |z| first.

Only stored tracks can be explained (an ``--audio`` query has no stored targets).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from messai.errors import ConfigError

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


def explain_result(rec, result, *, query_track: str | None = None, top_targets: int = 3):
    """``result`` (a ``RecommendationResult`` of ``rec``) with each recommendation's
    ``explanation`` filled in, relative to ``query_track`` (default the result's query track)."""
    from messai.search.spaces import load_fitted

    query = query_track if query_track is not None else result.query.get("track_id")
    if query is None:
        raise ConfigError(
            "--explain needs a stored query track (--track): an audio file has no stored targets"
        )
    store = rec.store
    cache = rec.__dict__.setdefault("_target_means", {})  # a batch of queries reads them once
    if "ids" not in cache:
        cache["ids"] = store.track_ids()
        cache["means"] = track_target_means(store, cache["ids"])
    ids, means = cache["ids"], cache["means"]
    row = {t: i for i, t in enumerate(ids)}
    spaces = {
        name + (" (stale)" if stale else ""): load_fitted(rec, space, stale=stale)
        for name, (space, stale) in rec.fitted_spaces().items()
    }
    anchors = {label: fs.query_of(query) for label, fs in spaces.items()}
    recs = []
    for r in result.recommendations:
        sims = {
            label: round(float(fs.similarities(anchors[label], [r.track_id])[0]), 6)
            for label, fs in spaces.items()
        }
        explanation = {
            "aspect_similarities": sims,
            "target_differences": target_differences(
                means, row[query], row[r.track_id], top=top_targets
            ),
        }
        recs.append(dataclasses.replace(r, explanation=explanation))
    return dataclasses.replace(result, recommendations=recs)


def format_explanation(explanation: dict[str, Any] | None) -> str:
    """One line for tables: ``fa 0.93 · fb 0.12 | spectral_centroid +420 Hz, ...``."""
    if not explanation:
        return ""
    sims = " · ".join(f"{k} {v:.2f}" for k, v in explanation["aspect_similarities"].items())
    diffs = ", ".join(
        f"{d['target']} {d['delta']:+.3g}{(' ' + d['unit']) if d['unit'] else ''}"
        for d in explanation["target_differences"]
    )
    return " | ".join(p for p in (sims, diffs) if p)
