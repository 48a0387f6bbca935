"""Recommend in fitted aspect spaces (``mess aspects fit``) instead of a whole layer.

A space has a few dimensions (at most the aspect's target outputs, or its label values − 1), so
the search is exact and brute force in numpy: every track's position is its layer vectors
projected by the space (``AspectSpace.transform``), computed once per recommender. The
similarity is ``exp(-d² / (2 · dim))`` (:func:`messai.analysis.aspect_space.similarity_from_distance`);
several aspects fuse as ``Σ w · sim / Σ w``, each in its own space.

Routing (``LayerBasedRecommender(space=...)``, ``mess recommend --space``):

- ``auto`` (default): every requested aspect with a fitted space is searched in it; when any
  requested aspect has none, the whole query runs today's whole-layer search, with a notice;
- ``aspect``: the aspect spaces or an error;
- ``layer``: today's whole-layer search, unchanged (also whenever ``--layer`` is given).

A space fitted before the store changed (features, targets or labels) is used with a notice
naming the command that refits it: it is never used silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.errors import ConfigError

SPACE_MODES = ("auto", "aspect", "layer")


@dataclass
class SpaceIndex:
    """Track positions in one aspect space.

    Attributes
    ----------
    space : AspectSpace
    track_ids : list of str
    positions : ndarray, shape (n_tracks, space.dim)
    """

    space: Any
    track_ids: list[str]
    positions: np.ndarray

    @classmethod
    def build(cls, store, space) -> SpaceIndex:
        ids, X = track_matrix(store, space.layers)
        return cls(space, ids, space.transform(X))

    def position_of(self, track_id: str) -> np.ndarray:
        try:
            return self.positions[self.track_ids.index(track_id)]
        except ValueError:
            raise ConfigError(f"track {track_id!r} is not in the aspect space's tracks") from None

    def similarities(self, z: np.ndarray) -> np.ndarray:
        """``[n_tracks]`` similarity of every track to position ``z``."""
        from messai.analysis.aspect_space import similarity_from_distance

        d2 = ((self.positions - np.asarray(z, dtype=np.float64)[None]) ** 2).sum(1)
        return similarity_from_distance(d2, self.space.dim)


def track_matrix(store, layers: list[int], track_ids: list[str] | None = None):
    """Track vectors of ``layers`` concatenated: ``(ids, [n_tracks, len(layers) * dim])``."""
    ids, first = store.layer(layers[0], track_ids=track_ids)
    parts = [first] + [store.layer(la, track_ids=ids)[1] for la in layers[1:]]
    return ids, np.concatenate(parts, axis=1).astype(np.float64)


def space_plan(rec, aspect, layer: int | None) -> list[tuple[str, Any, float]] | None:
    """``[(name, AspectSpace, weight)]`` when ``rec`` should search aspect spaces, else None."""
    from messai.analysis.aspect_fit import load_spaces
    from messai.search.recommend import parse_aspect_spec

    mode = getattr(rec, "space", "auto")
    if mode not in SPACE_MODES:
        raise ConfigError(f"unknown space {mode!r}; choose one of {', '.join(SPACE_MODES)}")
    if mode == "layer":
        return None
    if layer is not None:
        if mode == "aspect":
            raise ConfigError(
                "--layer searches a whole layer; it cannot be used with --space aspect"
            )
        return None
    specs = [aspect] if isinstance(aspect, str) else list(aspect)
    parsed = [parse_aspect_spec(s) for s in specs]
    if not parsed:
        raise ConfigError("give at least one aspect")
    names = [n for n, _ in parsed]
    if len(set(names)) < len(names):
        raise ConfigError(
            f"an aspect is given twice ({', '.join(names)}); give each once, with a weight"
        )
    cache = rec.__dict__.setdefault("aspect_space_cache", {})
    if "spaces" not in cache:
        cache["spaces"] = load_spaces(rec.store)
    spaces = cache["spaces"]
    missing = [n for n in names if n not in spaces]
    dataset = rec.store.dataset
    if missing:
        fit = f"mess aspects fit --dataset {dataset} --aspect {missing[0]}"
        if mode == "aspect":
            raise ConfigError(f"no fitted space for aspect {missing[0]!r}; run: {fit}")
        _notice_once(
            rec,
            cache,
            f"note: no fitted space for {', '.join(missing)}: searching the whole layer (fit one: {fit})",
        )
        return None
    for n in names:
        if spaces[n][1]:
            _notice_once(
                rec,
                cache,
                f"note: the space of {n!r} was fitted before the store changed; "
                f"refit it: mess aspects fit --dataset {dataset} --aspect {n}",
            )
    return [(n, spaces[n][0], w) for n, w in parsed]


def _notice_once(rec, cache: dict, message: str) -> None:
    said = cache.setdefault("said", set())
    if message not in said:
        said.add(message)
        rec.on_notice(message)


def space_index(rec, space) -> SpaceIndex:
    cache = rec.__dict__.setdefault("aspect_space_cache", {})
    key = ("index", space.name)
    if key not in cache:
        cache[key] = SpaceIndex.build(rec.store, space)
    return cache[key]


def space_info(space) -> dict[str, Any]:
    """The ``space`` entry of the recommend JSON."""
    return {
        "aspect": space.name,
        "kind": space.kind,
        "sources": list(space.sources),
        "layers": list(space.layers),
        "method": space.method,
        "dim": space.dim,
    }


def recommend_in_spaces(
    rec,
    plan: list[tuple[str, Any, float]],
    n_recommendations: int,
    *,
    reference_track: str | None = None,
    vectors: np.ndarray | None = None,
    exclude_ids=(),
    query: dict[str, Any] | None = None,
):
    """The nearest tracks in the planned spaces, as a ``RecommendationResult``.

    The query is a stored track (``reference_track``) or raw aggregated vectors
    ``[n_layers, dim]`` (an ``--audio`` query).
    """
    from messai.search.recommend import Recommendation, RecommendationResult

    if n_recommendations < 1:
        raise ConfigError("the number of recommendations must be at least 1")
    total = 0.0
    fused = None
    per_part = []
    ids = None
    for _, space, weight in plan:
        idx = space_index(rec, space)
        if reference_track is not None:
            z = idx.position_of(reference_track)
        else:
            x = np.concatenate([np.asarray(vectors[la], dtype=np.float64) for la in space.layers])
            z = space.transform(x[None])[0]
        sims = idx.similarities(z)
        if ids is None:
            ids = idx.track_ids
        elif ids != idx.track_ids:  # the same store: same tracks, same order
            raise ConfigError("aspect spaces disagree on the store's tracks; refit them")
        per_part.append(sims)
        fused = weight * sims if fused is None else fused + weight * sims
        total += weight
    fused = fused / total
    excluded = set(exclude_ids)
    if reference_track is not None:
        excluded.add(reference_track)
    keep = np.asarray([t not in excluded for t in ids], dtype=bool)
    cand = np.flatnonzero(keep)
    order = cand[np.lexsort((cand, -fused[cand]))][:n_recommendations]
    several = len(plan) > 1
    recs = [
        Recommendation(
            rank,
            ids[i],
            float(fused[i]),
            rec.tracks.labels(ids[i]),
            [float(p[i]) for p in per_part] if several else None,
        )
        for rank, i in enumerate(order, start=1)
    ]
    return RecommendationResult(
        query if query is not None else {"dataset": rec.store.dataset},
        [name for name, _, _ in plan],
        [space.layers[0] for _, space, _ in plan],
        [w for _, _, w in plan],
        rec.normalize,
        recs,
        spaces=[space_info(space) for _, space, _ in plan],
    )
