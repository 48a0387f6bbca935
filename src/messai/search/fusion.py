"""Weighted fusion of several layer indices' similarities (a mix of aspects)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from messai.errors import ConfigError, SearchIndexError, TrackNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from messai.search.layer_index import LayerIndex

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
    parts: Sequence[tuple[float, LayerIndex, str | np.ndarray]],
    k: int,
    *,
    exclude_ids: Iterable[str] = (),
    n_candidates: int | None = None,
    normalized: bool = False,
    scope: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> FusionResult:
    """Weighted fusion of per-layer similarities over the union of per-layer candidates.

    Parameters
    ----------
    parts : sequence of (float, LayerIndex, str or np.ndarray)
        ``(weight, index, query)`` per aspect/layer; ``weight`` > 0; ``query`` is a track id
        (excluded from the results) or a vector [dim] for that index's layer.
    k : int
        Results wanted.
    exclude_ids : iterable of str
        Track ids never returned.
    n_candidates : int, optional
        Candidates taken from each part's own search (default ``max(4k, 50)``). The union of
        these is re-scored exactly in every part, so the result is exact over that union; a
        track outside every part's candidate list cannot appear.
    normalized : bool
        Query vectors are already normalised by their index (``index.transform`` or
        ``index.vector_of``); by default they are raw and normalised here.
    scope : callable, optional
        Maps an index's track ids to a bool mask of those that may be returned (a filter),
        applied inside each part's search.

    Returns
    -------
    FusionResult
        Ranked by Σ w·sim / Σ w (ties by first appearance in the union).
    """
    if not parts:
        raise ConfigError("fusion needs at least one (weight, index, query) part")
    weights = np.array([float(w) for w, _, _ in parts])
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ConfigError(f"fusion weights must be positive, got {weights.tolist()}")
    excluded = set(exclude_ids) | {q for _, _, q in parts if isinstance(q, str)}
    queries = [_normalized_query(index, query, normalized) for _, index, query in parts]
    per_part = n_candidates if n_candidates is not None else max(4 * k, 50)

    candidates: dict[str, None] = {}
    for (_, index, _), qn in zip(parts, queries):
        exclude = index.positions_of(excluded)
        allow = None if scope is None else np.asarray(scope(index.track_ids), dtype=bool)
        _, positions = index.search_normalized(
            qn[None, :], per_part, exclude=[exclude], allow=allow
        )
        for p in positions[0][positions[0] >= 0]:
            candidates.setdefault(index.track_ids[p], None)
    ids = list(candidates)
    if not ids:
        return FusionResult(
            [],
            np.zeros(0, np.float32),
            np.zeros((0, len(parts)), np.float32),
            tuple(weights.tolist()),
        )

    layer_sims = np.stack(
        [_exact_similarities(index, qn, ids) for (_, index, _), qn in zip(parts, queries)], axis=1
    )
    fused = (layer_sims.astype(np.float64) @ weights / weights.sum()).astype(np.float32)
    order = np.lexsort((np.arange(len(ids)), -fused))[:k]
    return FusionResult(
        [ids[i] for i in order], fused[order], layer_sims[order], tuple(weights.tolist())
    )


def _normalized_query(index: LayerIndex, query: str | np.ndarray, normalized: bool) -> np.ndarray:
    if isinstance(query, str):
        return index.vector_of(query)
    if normalized:
        return np.asarray(query, dtype=np.float32)
    return index.transform(query)[0]


def _exact_similarities(index: LayerIndex, qn: np.ndarray, track_ids: list[str]) -> np.ndarray:
    """Cosine of normalised query qn [dim] with each of track_ids in ``index`` → [c] float32."""
    try:
        positions = np.array([index.position(t) for t in track_ids], dtype=np.int64)
    except TrackNotFoundError as exc:
        raise SearchIndexError(
            f"the indices being fused cover different tracks ({exc}); rebuild them"
        ) from None
    # einsum, not BLAS: a few hundred rows, and threaded BLAS is erratic on small shared CPUs
    sims = np.einsum("ij,j->i", index.vectors_at(positions), qn)
    return np.clip(sims, -1.0, 1.0).astype(np.float32)
