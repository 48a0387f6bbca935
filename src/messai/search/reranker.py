"""Exact top-k of a few queries on a large flat index: float16 scan, float32 re-ranking.

A float16 copy of the index halves the memory traffic of the scan; the shortlist it returns is
rescored exactly against the float32 vectors and widened until the float16 error bound proves
that nothing outside it can enter the top k. The result equals the plain float32 search (ties
broken by lower position). Used by :class:`messai.search.layer_index.LayerIndex` for single
queries on large flat indices; never saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from messai.search.backend import FEW_QUERIES, faiss_search, load_faiss

__all__ = ["Float16Reranker"]


class Float16Reranker:
    """A float16 copy of normalised vectors and the two-stage exact search over it.

    Parameters
    ----------
    vectors : np.ndarray
        [n, dim] float32 normalised vectors (a flat index's storage); kept by reference for
        the exact rescoring, so it must not change while the reranker is in use.

    Attributes
    ----------
    min_elements : int
        Class setting: an index of fewer n·dim elements never uses the float16 copy
        (≈ 5.5k tracks at 768).
    max_queries : int
        Class setting: searches of more queries than this use FAISS directly.
    error_bound : float
        Bound on ``|cos(q, x) − cos(q, fp16(x))|`` for unit q, x: fp16 rounding ≤ 2^-11 ≈ 4.9e-4
        relative per component, plus float32 summation (≈ dim · 2^-24 ≈ 5e-5 at 768); doubled.
    largest_shortlist : int
        The widest shortlist any search has asked for so far (diagnostics).
    """

    min_elements: ClassVar[int] = 1 << 22
    max_queries: ClassVar[int] = FEW_QUERIES
    error_bound: ClassVar[float] = 1e-3

    def __init__(self, vectors: np.ndarray) -> None:
        faiss = load_faiss()
        self._vectors = vectors
        self._fp16 = faiss.IndexScalarQuantizer(
            vectors.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        self._fp16.add(vectors)
        self.largest_shortlist = 0

    @classmethod
    def worthwhile(cls, n: int, dim: int, n_queries: int) -> bool:
        """Whether ``n_queries`` queries on an [n, dim] flat index should take this path."""
        return n_queries <= cls.max_queries and n * dim >= cls.min_elements

    def topk(
        self, Qn: np.ndarray, k: int, exclude: Sequence[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of normalised queries ``Qn`` [m, dim] float32.

        Every vector outside the shortlist has an exact similarity ≤ (the shortlist's lowest
        float16 similarity + :attr:`error_bound`); when the k-th exact similarity is strictly
        above that, the result is exact. Otherwise the shortlist grows ×4.

        Parameters
        ----------
        Qn : np.ndarray
            [m, dim] float32 normalised queries.
        k : int
            Neighbours per query.
        exclude : sequence of set of int, optional
            m sets of positions never returned for that query.

        Returns
        -------
        sims : np.ndarray
            [m, k] float32, descending, equal ones by position; -inf in empty slots.
        positions : np.ndarray
            [m, k] int64; -1 in empty slots.
        """
        X, n = self._vectors, len(self._vectors)
        sims = np.full((len(Qn), k), -np.inf, dtype=np.float32)
        positions = np.full((len(Qn), k), -1, dtype=np.int64)
        for q in range(len(Qn)):
            excluded = exclude[q] if exclude is not None else set()
            want = min(n, 2 * (k + len(excluded)) + 16)
            while True:
                self.largest_shortlist = max(self.largest_shortlist, want)
                approx, found = faiss_search(self._fp16, Qn[q : q + 1], want)
                shortlist = np.array(
                    [p for p in found[0] if p >= 0 and int(p) not in excluded], dtype=np.int64
                )
                exact = np.einsum("ij,j->i", X[shortlist], Qn[q])
                order = np.lexsort((shortlist, -exact))[:k]
                bound = approx[0, -1] + self.error_bound  # nothing outside the shortlist beats it
                if want >= n or (len(order) == k and exact[order[-1]] > bound):
                    break
                want = min(n, 4 * want)
            sims[q, : len(order)] = exact[order]
            positions[q, : len(order)] = shortlist[order]
        return sims, positions

    @property
    def memory_bytes(self) -> int:
        """Bytes of the float16 copy (n · dim · 2)."""
        return int(self._fp16.ntotal) * int(self._fp16.d) * 2

    def __repr__(self) -> str:
        return f"Float16Reranker(n={int(self._fp16.ntotal)}, dim={int(self._fp16.d)})"

    def __len__(self) -> int:
        return int(self._fp16.ntotal)
