"""One layer's FAISS index over track-level vectors: build, search, add; save and load.

This module works on plain arrays and knows nothing about feature stores: the caller hands it a
``[n_tracks, dim]`` matrix of one layer's track vectors and the track ids, and a fingerprint of
what they were built from (stored and exposed, never interpreted here). Normalisation modes,
index kinds and the on-disk folder format are described in ``docs/index-format.md``.

The parts live in sibling modules: :mod:`messai.search.normalise` (``Normalizer``),
:mod:`messai.search.backend` (FAISS kinds, parameters, raw searches),
:mod:`messai.search.reranker` (the float16 two-stage exact search of large flat indices),
:mod:`messai.search.index_io` (the folder format); their public names are re-exported here.
Fusion of several spaces lives in :mod:`messai.search.fusion`, which uses this module (never
the other way round).

Imports only numpy at module level (faiss lazily), so importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import ConfigError, TrackNotFoundError
from messai.search.backend import (
    KINDS,
    REFINED_KINDS,
    apply_search_params,
    filtered_topk,
    flat_storage,
    ivf_nlist,
    new_faiss_index,
    owned_flat_copy,
    resolve_params,
)
from messai.search.index_inputs import _check_ids, _check_meta, _check_vectors
from messai.search.index_io import FORMAT_VERSION, read_index_dir, save_index
from messai.search.mapped import ListColumn
from messai.search.normalise import NORMALIZE_MODES, Normalizer
from messai.search.reranker import Float16Reranker
from messai.search.selectors import EXACT_SUBSET_MAX, exact_topk, masked_topk, rescore

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "NORMALIZE_MODES",
    "Float16Reranker",
    "LayerIndex",
    "Normalizer",
    "build_index",
    "ivf_nlist",
]


def build_index(
    vectors: np.ndarray,
    track_ids: Sequence[str],
    *,
    kind: str = "flat",
    normalize: str = "center",
    params: dict[str, Any] | None = None,
    fingerprint: str = "",
    meta: dict[str, Any] | None = None,
) -> LayerIndex:
    """Fit a :class:`Normalizer` on ``vectors`` and build a FAISS index of the normalised rows.

    Parameters
    ----------
    vectors : np.ndarray
        [n, dim] track vectors of one layer (any float dtype; converted to float32 after
        normalisation). Must be finite.
    track_ids : sequence of str
        n unique track ids, row order.
    kind : str
        ``"flat"`` (exact), ``"hnsw"``, ``"ivf"``, or the memory-bounded ``"ivfpq"`` and
        ``"hnsw-sq8"`` (compressed codes searched, candidates re-ranked exactly).
    normalize : str
        ``"center"`` (default), ``"zscore"`` or ``"l2"``.
    params : dict, optional
        hnsw: ``M``, ``efConstruction``, ``efSearch``; ivf: ``nlist``, ``nprobe``; ivfpq: those of
        ivf and ``pq_m``, ``pq_bits``, ``refine``; hnsw-sq8: those of hnsw and ``refine``
        (``refine`` × k candidates are re-ranked exactly). Defaults, chosen from n, are filled in and the values actually used are recorded in :attr:`LayerIndex.params`.
    fingerprint : str
        The caller's fingerprint of what the vectors came from; stored, exposed, not checked.
    meta : dict, optional
        JSON-serialisable extras stored with the index (layer, model, dataset …).

    Returns
    -------
    LayerIndex
        n vectors of dimension dim.

    Raises
    ------
    ConfigError
        Unknown kind / normalisation / parameter, or bad shapes / ids.
    SearchIndexError
        An IVF index asked of too few vectors to train it.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    X = _check_vectors(vectors, dim=None)
    ids = _check_ids(track_ids, expected=X.shape[0])
    meta = _check_meta(meta)
    used = resolve_params(kind, dict(params or {}), n=X.shape[0], dim=X.shape[1])
    normalizer = Normalizer(normalize).fit(X)
    Xn = normalizer.transform(X)
    index = new_faiss_index(kind, Xn, used)
    return LayerIndex(
        index,
        ids,
        normalizer,
        kind=kind,
        params=used,
        fingerprint=fingerprint,
        meta=meta,
        vectors=Xn if kind in REFINED_KINDS else None,
    )


class LayerIndex:
    """One layer's FAISS index with its normaliser, track ids and provenance.

    Build with :func:`build_index` or :meth:`load`. Positions are row numbers in
    :attr:`track_ids` (0 … n-1); similarities are float32 cosines of normalised vectors,
    clipped to [-1, 1].

    Parameters
    ----------
    index : faiss.Index
        Inner-product FAISS index of n normalised [dim] float32 vectors.
    track_ids : list of str
        n ids, position order.
    normalizer : Normalizer
        Fitted on the corpus; applied to every raw query.
    kind : str
        ``"flat"``, ``"hnsw"`` or ``"ivf"``.
    params : dict
        The FAISS parameters ``index`` was built with.
    fingerprint : str
        The caller's fingerprint of the vectors' source.
    meta : dict, optional
        JSON-serialisable extras; ``meta["tombstones"]`` lists removed positions.
    vectors : np.ndarray or list of np.ndarray, optional
        Memory-bounded kinds only: the [n, dim] float32 normalised vectors (usually read-only
        memory maps, in row chunks) that candidates are re-ranked against.
    """

    #: a filtered subset of at most this many positions is scanned exactly
    exact_subset_max: int = EXACT_SUBSET_MAX

    def __init__(
        self,
        index: Any,
        track_ids: list[str],
        normalizer: Normalizer,
        *,
        kind: str,
        params: dict[str, Any],
        fingerprint: str = "",
        meta: dict[str, Any] | None = None,
        vectors: np.ndarray | list[np.ndarray] | None = None,
        mapped: bool = False,
    ) -> None:
        chunks = [] if vectors is None else vectors if isinstance(vectors, list) else [vectors]
        if kind in REFINED_KINDS and sum(len(c) for c in chunks) != len(track_ids):
            raise ConfigError(f"a {kind} index needs its {len(track_ids)} normalised vectors")
        self._index = index
        self._chunks: list[np.ndarray] = chunks
        # a memory-mapped StringColumn when loaded; anything with ``find`` (id → row)
        self._track_ids = track_ids if hasattr(track_ids, "find") else ListColumn(track_ids)
        self._mapped = mapped  # faiss_index reads a read-only memory map: copy before adding
        self._storage_view: np.ndarray | None = None
        self._reranker: Float16Reranker | None = None  # large flat indices, built on second use
        self._few_query_searches = 0
        self.normalizer = normalizer
        self.kind = kind
        self._params = dict(params)
        self.fingerprint = fingerprint
        self.meta = dict(meta or {})
        self._removed = np.zeros(len(track_ids), dtype=bool)
        self._removed[np.asarray(self.meta.get("tombstones", []), dtype=np.int64)] = True

    # ---- facts -----------------------------------------------------------------------------

    @property
    def track_ids(self) -> Sequence[str]:
        """Track ids in position order (a read-only sequence: a memory-mapped
        :class:`~messai.search.mapped.StringColumn` when loaded; do not mutate)."""
        return self._track_ids

    @property
    def normalize(self) -> str:
        """The normalisation mode: ``"center"``, ``"zscore"`` or ``"l2"``."""
        return self.normalizer.mode

    @property
    def params(self) -> dict[str, Any]:
        """FAISS parameters used: hnsw ``M``, ``efConstruction``, ``efSearch``; ivf ``nlist``,
        ``nprobe``; ivfpq also ``pq_m``, ``pq_bits``, ``refine``; hnsw-sq8 also ``refine``."""
        return dict(self._params)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def n_total(self) -> int:
        """Number of vectors in the index (removed ones included until a rebuild)."""
        return int(self._index.ntotal)

    @property
    def n_removed(self) -> int:
        """Number of removed (tombstoned) positions: never returned, dropped by a rebuild."""
        return int(self._removed.sum())

    @property
    def refine_vectors(self) -> list[np.ndarray]:
        """Memory-bounded kinds: the normalised vectors in position order, as chunks (a memory
        map, then anything added since loading); empty for other kinds."""
        return list(self._chunks)

    @property
    def n_fit(self) -> int:
        """Number of vectors the normaliser's statistics come from (< n_total after ``add``)."""
        return self.normalizer.n_fit_

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for inspection; searching it bypasses normalisation)."""
        return self._index

    def __len__(self) -> int:
        """Number of tracks that can be returned (vectors minus removed ones)."""
        return self.n_total - self.n_removed

    def __repr__(self) -> str:
        return (
            f"LayerIndex(kind={self.kind!r}, normalize={self.normalize!r}, n={self.n_total}, "
            f"dim={self.dim}, params={self._params})"
        )

    def position(self, track_id: str) -> int:
        """Row of ``track_id``; raises TrackNotFoundError if it is not indexed (or removed).
        O(log n) on a loaded index (a binary search of its id file), no dict of n built."""
        position = self._track_ids.find(track_id) if isinstance(track_id, str) else None
        if position is None or self._removed[position]:
            raise TrackNotFoundError(
                f"track {track_id!r} is not in this index ({len(self)} tracks)"
            )
        return position

    def __contains__(self, track_id: object) -> bool:
        try:
            self.position(track_id)  # type: ignore[arg-type]
        except TrackNotFoundError:
            return False
        return True

    # ---- vectors ---------------------------------------------------------------------------

    def vector_of(self, track_id: str) -> np.ndarray:
        """The normalised vector [dim] float32 of ``track_id`` as stored in the index (a copy)."""
        return self.vectors_at(np.array([self.position(track_id)]))[0]

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """Normalised vectors at ``positions`` [c] int → [c, dim] float32 (a copy)."""
        if self._chunks:
            return self._refined_rows(np.asarray(positions, dtype=np.int64))
        view = self._view()
        if view is not None:
            return view[positions]
        return self._index.reconstruct_batch(np.asarray(positions, dtype=np.int64))

    def normalized_vectors(self) -> np.ndarray:
        """All normalised vectors [n, dim] float32, in position order (a copy)."""
        if self._chunks:
            return np.concatenate([np.asarray(c, dtype=np.float32) for c in self._chunks])
        view = self._view()
        if view is not None:
            return view.copy()
        return self._index.reconstruct_n(0, self.n_total)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Normalise raw query vectors [m, dim] (or [dim]) like the corpus → float32 [m, dim]."""
        return self.normalizer.transform(self._check_queries(vectors))

    def positions_of(self, track_ids: Iterable[str]) -> set[int]:
        """Positions of those of ``track_ids`` that are indexed (others are ignored)."""
        return {self.position(t) for t in track_ids if t in self}

    def _refined_rows(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        start = 0
        for chunk in self._chunks:
            inside = (positions >= start) & (positions < start + len(chunk))
            if inside.any():
                rows = positions[inside] - start
                order = np.argsort(rows)  # sorted reads of a memory map are friendlier
                picked = np.empty((len(rows), self.dim), dtype=np.float32)
                picked[order] = chunk[rows[order]]
                out[inside] = picked
            start += len(chunk)
        return out

    def _view(self) -> np.ndarray | None:
        """Zero-copy [n, dim] view of FAISS' flat storage (flat, hnsw); None for ivf."""
        if self._storage_view is None:
            self._storage_view = flat_storage(self._index, self.kind)
        return self._storage_view

    # ---- search ----------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Sequence[set[int]] | None = None,
        allow: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of raw (unnormalised) queries.

        Parameters
        ----------
        queries: [m, dim] (or [dim], treated as m = 1) raw vectors of this layer.
        k: neighbours per query.
        exclude: optional m sets of positions that must not be returned for that query.
        allow: optional [n_total] bool mask of the positions that may be returned (a filter).

        Returns
        -------
        similarities [m, k] float32 (cosine, descending, equal ones by position) and
        positions [m, k] int64. Slots without a result (k larger than what is left) hold
        position -1 and similarity -inf.
        """
        Qn = self.transform(queries)
        return self.search_normalized(Qn, k, exclude=exclude, allow=allow)

    def search_track(
        self,
        track_id: str,
        k: int,
        *,
        exclude_ids: Iterable[str] = (),
        allow: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Top-``k`` neighbours of an indexed track, never the track itself.

        ``exclude_ids`` are dropped too (ids not in the index are ignored). Returns
        similarities [k'] float32 and the k' ≤ k track ids, best first.
        """
        position = self.position(track_id)
        sims, positions = self.search_normalized(
            self.vectors_at(np.array([position])),
            k,
            exclude=[{position} | self.positions_of(exclude_ids)],
            allow=allow,
        )
        keep = positions[0] >= 0
        return sims[0][keep], [self._track_ids[p] for p in positions[0][keep]]

    def nearest(
        self,
        qn: np.ndarray,
        k: int,
        *,
        exclude_ids: Iterable[str] = (),
        scope: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Top-``k`` (similarities [k'], track ids) of one normalised query ``qn`` [dim].

        ``scope`` maps this index's track ids to a bool mask of the allowed ones (a filter);
        ``exclude_ids`` are never returned.
        """
        allow = None if scope is None else np.asarray(scope(self._track_ids), dtype=bool)
        sims, positions = self.search_normalized(
            np.asarray(qn, dtype=np.float32)[None, :],
            k,
            exclude=[self.positions_of(exclude_ids)],
            allow=allow,
        )
        keep = positions[0] >= 0
        return sims[0][keep], [self._track_ids[p] for p in positions[0][keep]]

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        Q = np.asarray(queries)
        if Q.ndim == 1:
            Q = Q[None, :]
        if Q.ndim != 2 or Q.shape[1] != self.dim:
            raise ConfigError(f"expected queries of shape [m, {self.dim}], got {np.shape(queries)}")
        if not np.isfinite(Q).all():
            raise ConfigError("query vectors contain NaN or inf")
        return Q

    def search_normalized(
        self,
        Qn: np.ndarray,
        k: int,
        *,
        exclude: Sequence[set[int]] | None = None,
        allow: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of already-normalised queries ``Qn`` [m, dim].

        Like :meth:`search`, for queries from :meth:`transform` or :meth:`vector_of`. Large
        flat indices answer a few queries with the exact float16 two-stage search of
        :class:`Float16Reranker` (from the second such search on), others with FAISS.
        Memory-bounded kinds re-rank ``refine`` × k candidates exactly. With an ``allow``
        mask (or removed tracks) a subset of at most ``EXACT_SUBSET_MAX`` positions is scanned
        exactly, a larger one searched by FAISS with a bitmap selector and re-ranked exactly.

        Returns
        -------
        similarities [m, k] float32 and positions [m, k] int64, as :meth:`search`.
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if exclude is not None and len(exclude) != len(Qn):
            raise ConfigError(f"{len(exclude)} exclusion sets for {len(Qn)} queries")
        Qn = np.ascontiguousarray(Qn, dtype=np.float32)
        if allow is not None and len(allow) != self.n_total:
            raise ConfigError(f"allow mask of {len(allow)} for an index of {self.n_total}")
        if allow is not None or self.n_removed or self.kind in REFINED_KINDS:
            sims, positions = self._subset_search(Qn, k, exclude, allow)
        elif self._use_reranker(len(Qn)):
            if self._reranker is None:
                self._reranker = Float16Reranker(self._view())
            sims, positions = self._reranker.topk(Qn, k, exclude)
        else:
            sims, positions = filtered_topk(self._index, Qn, k, exclude)
        np.clip(sims, -1.0, 1.0, out=sims, where=positions >= 0)
        return sims, positions

    def _subset_search(
        self,
        Qn: np.ndarray,
        k: int,
        exclude: Sequence[set[int]] | None,
        allow: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Searches with a filter, removed tracks, or re-ranking (see :meth:`search_normalized`)."""
        sims = np.full((len(Qn), k), -np.inf, dtype=np.float32)
        positions = np.full((len(Qn), k), -1, dtype=np.int64)
        refine = int(self._params.get("refine", 1))
        live = None
        if allow is not None or self.n_removed:
            live = ~self._removed if allow is None else (np.asarray(allow, bool) & ~self._removed)
        for q in range(len(Qn)):
            excluded = exclude[q] if exclude is not None else set()
            if live is None:  # a memory-bounded kind, nothing filtered
                want = min(self.n_total, refine * (k + len(excluded)))
                _, found = filtered_topk(self._index, Qn[q : q + 1], want, [excluded])
                s, p = rescore(self.vectors_at, Qn[q], k, found[0])
            else:
                mask = live
                if excluded:
                    mask = live.copy()
                    mask[np.fromiter(excluded, dtype=np.int64, count=len(excluded))] = False
                n_match = int(mask.sum())
                if n_match <= self.exact_subset_max:
                    s, p = exact_topk(self.vectors_at, Qn[q], k, np.flatnonzero(mask))
                else:
                    found = masked_topk(
                        self._index, self.kind, self._params, Qn[q], refine * k, mask
                    )
                    s, p = rescore(self.vectors_at, Qn[q], k, found)
            sims[q, : len(s)] = s
            positions[q, : len(p)] = p
        return sims, positions

    @property
    def float16_reranker(self) -> Float16Reranker | None:
        """The float16 two-stage searcher of a large flat index; None until built (never saved).

        The first single-query search uses the plain path, so a one-shot process
        (``mess recommend``) never pays for building the float16 copy (≈ 10-40 ms at 10k × 768).
        """
        return self._reranker

    def _use_reranker(self, m: int) -> bool:
        if not (self.kind == "flat" and Float16Reranker.worthwhile(self.n_total, self.dim, m)):
            return False
        self._few_query_searches += 1
        return self._reranker is not None or self._few_query_searches > 1

    # ---- changes ---------------------------------------------------------------------------

    def add(
        self, vectors: np.ndarray, track_ids: Sequence[str], *, fingerprint: str | None = None
    ) -> None:
        """Append raw vectors [a, dim] with new, unique ``track_ids``.

        The normaliser is not refitted: new vectors are normalised with the statistics of the
        corpus the index was built on (``n_fit`` < ``n_total`` afterwards; rebuild when the
        corpus has changed a lot). IVF adds to the trained lists without retraining.
        ``fingerprint`` replaces the stored fingerprint when given.
        """
        X = _check_vectors(vectors, dim=self.dim)
        ids = _check_ids(track_ids, expected=X.shape[0])
        clash = [t for t in ids if self._track_ids.find(t) is not None]
        if clash:
            raise ConfigError(
                f"track ids already indexed (or removed, until a rebuild): {clash[:5]}"
            )
        Xn = self.normalizer.transform(X)
        if self._mapped:  # FAISS cannot grow a memory-mapped index: take an owned copy first
            self._index = owned_flat_copy(self._index)
            self._mapped = False
        self._index.add(Xn)
        if self._chunks:
            self._chunks.append(Xn)
        self._removed = np.concatenate([self._removed, np.zeros(len(ids), dtype=bool)])
        self._track_ids = ListColumn([*self._track_ids, *ids])
        self._storage_view = None  # FAISS may have reallocated its storage
        self._reranker = None
        if fingerprint is not None:
            self.fingerprint = fingerprint

    def remove(self, track_ids: Iterable[str], *, fingerprint: str | None = None) -> int:
        """Mark indexed tracks as removed (tombstones, kept in ``meta["tombstones"]``): they are
        never returned again and their vectors are dropped by the next rebuild. Ids that are
        not indexed are ignored. Returns the number newly removed."""
        positions = sorted(self.positions_of(track_ids))
        self._removed[positions] = True
        self.meta["tombstones"] = np.flatnonzero(self._removed).tolist()
        self._reranker = None
        if fingerprint is not None:
            self.fingerprint = fingerprint
        return len(positions)

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change hnsw ``efSearch`` or ivf ``nprobe`` (recorded in :attr:`params`)."""
        if ef_search is not None:
            if self.kind not in ("hnsw", "hnsw-sq8"):
                raise ConfigError("efSearch applies to hnsw indices only")
            self._params["efSearch"] = int(ef_search)
        if nprobe is not None:
            if self.kind not in ("ivf", "ivfpq"):
                raise ConfigError("nprobe applies to ivf indices only")
            self._params["nprobe"] = max(1, min(int(nprobe), self._params["nlist"]))
        apply_search_params(self._index, self.kind, self._params)

    # ---- persistence -----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` atomically (temp sibling dir, then swapped in).

        An existing index there is replaced. Returns the directory path. Format:
        ``docs/index-format.md``.
        """
        return save_index(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LayerIndex:
        """Read an index written by :meth:`save`.

        Raises
        ------
        SearchIndexError
            Naming the path and the reason, if anything is missing, truncated, of an unknown
            format version, or inconsistent (vector count vs track ids, dimensions, index type).
        """
        stored = read_index_dir(directory)
        return cls(
            stored.faiss_index,
            stored.track_ids,
            stored.normalizer,
            kind=stored.kind,
            params=stored.params,
            fingerprint=stored.fingerprint,
            meta=stored.meta,
            vectors=stored.vectors,
            mapped=stored.mapped,
        )
