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
from typing import Any

from messai.errors import ConfigError
from messai.search.target_differences import (  # noqa: F401 - re-exported: they were defined here
    UNITS,
    target_differences,
    track_target_means,
)


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
