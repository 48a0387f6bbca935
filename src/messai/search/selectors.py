"""Searches restricted to a subset of an index: filters (``--where``), tombstones, exclusions.

The subset is a boolean mask over the index's positions. A small subset (at most
:data:`EXACT_SUBSET_MAX` positions) is scanned exactly; a larger one is searched by FAISS
itself with an ``IDSelectorBitmap`` in the search parameters, so that ``k`` results come back
whenever ``k`` positions match (the probe width is doubled while a query comes back short).
Candidates of the memory-bounded kinds are re-ranked exactly by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from messai.search.backend import faiss_search, load_faiss

__all__ = ["EXACT_SUBSET_MAX", "exact_topk", "masked_topk", "rescore"]

#: a subset of at most this many positions is scanned exactly (≈ 15 M multiply-adds at 768)
EXACT_SUBSET_MAX = 20_000


def exact_topk(
    vectors_at: Callable[[np.ndarray], np.ndarray], qn: np.ndarray, k: int, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of one normalised query ``qn`` [dim] among ``positions`` [c].

    Returns similarities [k'] float32 descending (equal ones by position) and positions [k'].
    """
    if not len(positions):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    sims = np.empty(len(positions), dtype=np.float32)
    step = 8192  # bounded copies of the gathered rows
    for start in range(0, len(positions), step):
        block = positions[start : start + step]
        rows = vectors_at(block)
        # einsum for small blocks: threaded BLAS on a small shared CPU wakes idle threads erratically
        sims[start : start + len(block)] = (
            np.einsum("ij,j->i", rows, qn) if len(block) <= 2048 else rows @ qn
        )
    order = np.lexsort((positions, -sims))[:k]
    return sims[order], positions[order].astype(np.int64)


def rescore(
    vectors_at: Callable[[np.ndarray], np.ndarray], qn: np.ndarray, k: int, candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-ranking of candidate positions (-1 entries ignored) → top ``k``."""
    candidates = np.unique(candidates[candidates >= 0])
    return exact_topk(vectors_at, qn, k, candidates)


def _search_parameters(index: Any, kind: str, params: dict[str, Any], selector: Any, widen: int):
    faiss = load_faiss()
    if kind in ("ivf", "ivfpq"):
        nprobe = min(params["nlist"], params["nprobe"] * widen)
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe), nprobe >= params["nlist"]
    if kind in ("hnsw", "hnsw-sq8"):
        ef = params["efSearch"] * widen
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef), ef >= int(index.ntotal)
    return faiss.SearchParameters(sel=selector), True


def masked_topk(
    index: Any, kind: str, params: dict[str, Any], qn: np.ndarray, want: int, mask: np.ndarray
) -> np.ndarray:
    """Positions [≤ want] of one normalised query's nearest neighbours among ``mask`` [n] bool,
    found by FAISS with a bitmap selector (approximate for approximate kinds)."""
    faiss = load_faiss()
    n_match = int(mask.sum())
    want = min(want, n_match)
    if want == 0:
        return np.zeros(0, np.int64)
    bitmap = np.packbits(mask.astype(np.uint8), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
    # probe wider in proportion to how selective the filter is: as many matches reached as
    # an unfiltered search would reach
    widen = int(min(64, np.ceil(len(mask) / n_match)))
    while True:
        search_params, exhausted = _search_parameters(index, kind, params, selector, widen)
        q = np.ascontiguousarray(qn[None, :], dtype=np.float32)
        _, found = _search(index, q, want, search_params)
        found = found[0][found[0] >= 0]
        if len(found) >= want or exhausted:
            del bitmap  # kept alive until here: the selector points into it
            return found.astype(np.int64)
        widen *= 2


def _search(index: Any, q: np.ndarray, k: int, search_params: Any):
    faiss = load_faiss()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(q, k, params=search_params)
    finally:
        faiss.omp_set_num_threads(previous)


def unmasked_candidates(index: Any, qn: np.ndarray, want: int) -> np.ndarray:
    """Positions [≤ want] from a plain FAISS search of one normalised query."""
    _, found = faiss_search(index, np.ascontiguousarray(qn[None, :], dtype=np.float32), want)
    return found[0][found[0] >= 0].astype(np.int64)
