"""Weighted fusion of several spaces' similarities (a mix of aspects; see
:mod:`messai.search.spaces`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.errors import ConfigError, SearchIndexError, TrackNotFoundError

__all__ = ["FusionResult", "fuse"]


@dataclass(frozen=True)
class FusionResult:
    """Ranked result of :func:`fuse`.

    Attributes
    ----------
    track_ids : list of str
        k' ids, best first.
    similarities : np.ndarray
        [k'] float32 fused Σ w·sim / Σ w.
    layer_similarities : np.ndarray
        [k', n_parts] float32 exact cosine in each part's index.
    weights : tuple of float
        The parts' weights.
    """

    track_ids: list[str]
    similarities: np.ndarray
    layer_similarities: np.ndarray
    weights: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"weights": [...], "results": [{"rank", "track_id", "similarity",
        "layer_similarities"}]}``."""
        return {
            "weights": list(self.weights),
            "results": [
                {
                    "rank": rank,
                    "track_id": track_id,
                    "similarity": float(self.similarities[rank - 1]),
                    "layer_similarities": [float(s) for s in self.layer_similarities[rank - 1]],
                }
                for rank, track_id in enumerate(self.track_ids, start=1)
            ],
        }


def fuse(
    parts: Sequence[tuple[float, Any, str | np.ndarray]],
    k: int,
    *,
    exclude_ids: Iterable[str] = (),
    n_candidates: int | None = None,
    normalized: bool = False,
    scope: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> FusionResult:
    """Weighted fusion of per-space similarities over the union of per-space candidates.

    Parameters
    ----------
    parts : sequence of (float, space, str or np.ndarray)
        ``(weight, space, query)`` per aspect; ``weight`` > 0. A space is a
        :class:`messai.search.spaces.LayerSpace` or ``FittedSpace`` (or a bare ``LayerIndex``,
        taken as its layer's space); ``query`` is a track id (excluded from the results) or
        the space's query vector.
    k : int
        Results wanted.
    exclude_ids : iterable of str
        Track ids never returned.
    n_candidates : int, optional
        Candidates taken from each part's own search (default ``max(4k, 50)``). The union of
        these is re-scored exactly in every part, so the result is exact over that union; a
        track outside every part's candidate list cannot appear.
    normalized : bool
        Bare ``LayerIndex`` parts only: the query vectors are already normalised
        (``index.transform`` or ``index.vector_of``); by default they are raw.
    scope : callable, optional
        Maps a space's track ids to a bool mask of those that may be returned (a filter),
        applied inside each part's search.

    Returns
    -------
    FusionResult
        Ranked by Σ w·sim / Σ w (ties by first appearance in the union).
    """
    if not parts:
        raise ConfigError("fusion needs at least one (weight, space, query) part")
    weights = np.array([float(w) for w, _, _ in parts])
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ConfigError(f"fusion weights must be positive, got {weights.tolist()}")
    excluded = set(exclude_ids) | {q for _, _, q in parts if isinstance(q, str)}
    spaces = [_as_space(space) for _, space, _ in parts]
    queries = [_query(sp, q, normalized) for sp, (_, _, q) in zip(spaces, parts)]
    per_part = n_candidates if n_candidates is not None else max(4 * k, 50)

    candidates: dict[str, None] = {}
    for space, q in zip(spaces, queries):
        _, found = space.nearest(q, per_part, exclude_ids=excluded, scope=scope)
        for t in found:
            candidates.setdefault(t, None)
    ids = list(candidates)
    if not ids:
        return FusionResult(
            [],
            np.zeros(0, np.float32),
            np.zeros((0, len(parts)), np.float32),
            tuple(weights.tolist()),
        )
    try:
        layer_sims = np.stack(
            [np.asarray(sp.similarities(q, ids)) for sp, q in zip(spaces, queries)], axis=1
        )
    except TrackNotFoundError as exc:
        raise SearchIndexError(
            f"the indices being fused cover different tracks ({exc}); rebuild them"
        ) from None
    fused = layer_sims.astype(np.float64) @ weights / weights.sum()
    if all(sp.kind == "layer" for sp in spaces):  # cosines: float32, as a layer search gives
        fused, layer_sims = fused.astype(np.float32), layer_sims.astype(np.float32)
    order = np.lexsort((np.arange(len(ids)), -fused))[:k]
    return FusionResult(
        [ids[i] for i in order], fused[order], layer_sims[order], tuple(weights.tolist())
    )


def _as_space(space: Any) -> Any:
    if hasattr(space, "similarities"):
        return space
    from messai.search.spaces import LayerSpace  # a bare LayerIndex: its layer's space

    return LayerSpace(space, 0)


def _query(space: Any, query: str | np.ndarray, normalized: bool) -> np.ndarray:
    if isinstance(query, str):
        return space.query_of(query)
    if normalized or not hasattr(space.index, "transform") or space.kind != "layer":
        return np.asarray(query)
    return np.asarray(space.index.transform(query)[0], dtype=np.float32)
