"""Per-layer FAISS indices over track-level vectors: normalise, build, search, fuse, save, load.

This module works on plain arrays and knows nothing about feature stores: the caller hands it a
``[n_tracks, dim]`` matrix of one layer's track vectors and the track ids, and a fingerprint of
what they were built from (stored and exposed, never interpreted here).

Normalisation (``normalize=``), fitted on the corpus and applied to every query:

- ``"center"`` (default): subtract the layer's corpus mean, then L2-normalise. Inner product is
  then the cosine of centred vectors. Raw MERT means sit in a narrow cone (every pair near 0.9);
  centring spreads them out and removes most of the hubness.
- ``"zscore"``: subtract the mean, divide each dimension by its corpus std (floored, see
  :class:`Normalizer`), then L2-normalise.
- ``"l2"``: plain L2 normalisation: the prototype's raw cosine.

A vector that normalises to zero (a zero vector, or exactly the corpus mean under ``"center"``)
stays the zero vector: similarity 0 to everything, never NaN.

Index kinds (``kind=``), all inner product on unit vectors, so similarities are cosines:

- ``"flat"``: ``IndexFlatIP``, exact; the default up to ~100k tracks. Single queries on a
  large flat index (≥ 2^22 n·dim elements) scan a float16 copy kept in memory (built at the
  second such query, never saved, +50 % memory), then rescore the shortlist in float32,
  widening it until the float16 error bound proves nothing outside can enter the top k:
  still exact, half the memory traffic, about twice as fast.
- ``"hnsw"``: ``IndexHNSWFlat`` (``M``, ``efConstruction``, ``efSearch``).
- ``"ivf"``: ``IndexIVFFlat`` (``nlist`` ≈ 4·sqrt(n), bounded; ``nprobe``); refuses corpora too
  small to train.

On disk (:meth:`LayerIndex.save`) an index is one directory::

    index.faiss   faiss.write_index of the FAISS index (normalised vectors)
    mean.npy      Normalizer.mean_  [dim] float64
    scale.npy     Normalizer.scale_ [dim] float64
    meta.json     format, version, kind, normalize, params, dim, n, n_fit, fingerprint,
                  meta (caller's), track_ids (one list), file sizes

written into a temporary sibling directory and moved into place with ``os.replace``.

Imports only numpy at module level (faiss lazily), so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from messai.errors import ConfigError, SearchIndexError, TrackNotFoundError
from messai.files import fsync_dir, fsync_file, swap_dir_into_place

if TYPE_CHECKING:  # pragma: no cover
    import faiss as faiss_module

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "NORMALIZE_MODES",
    "FusionResult",
    "LayerIndex",
    "Normalizer",
    "build_index",
    "fuse",
    "ivf_nlist",
]

FORMAT = "mess-layer-index"
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivf")
NORMALIZE_MODES = ("center", "zscore", "l2")

HNSW_DEFAULTS = {"M": 32, "efConstruction": 100, "efSearch": 64}
IVF_MIN_POINTS_PER_LIST = 39  # FAISS' own k-means warning threshold
IVF_MIN_LISTS = 16
IVF_MAX_LISTS = 65536
_PARAM_NAMES = {"flat": set(), "hnsw": set(HNSW_DEFAULTS), "ivf": {"nlist", "nprobe"}}

_INDEX_FILE = "index.faiss"
_MEAN_FILE = "mean.npy"
_SCALE_FILE = "scale.npy"
_META_FILE = "meta.json"

_CHUNK_ELEMENTS = 1 << 24  # rows × columns processed at once (64 MiB of float32)
_FEW_QUERIES = 4  # at most this many queries: run FAISS single-threaded (faster, see benchmark)
# Single queries on a flat index of at least this many n·dim elements (≈ 5.5k tracks at 768)
# first scan a float16 copy, then rescore a shortlist exactly (see LayerIndex._two_stage_topk).
_SHADOW_MIN_ELEMENTS = 1 << 22
# Bound on |cos(q, x) − cos(q, fp16(x))| for unit q, x: fp16 rounding ≤ 2^-11 ≈ 4.9e-4
# relative per component, plus float32 summation (≈ dim · 2^-24 ≈ 5e-5 at 768); doubled.
_FP16_ERROR = 1e-3


def _faiss() -> faiss_module:
    import faiss

    return faiss


# --------------------------------------------------------------------------------------------
# normalisation


class Normalizer:
    """Centre / standardise / L2-normalise vectors with statistics fitted on a corpus.

    Estimator-style: parameters in ``__init__``, learned state with a trailing underscore.

    Parameters
    ----------
    mode:
        ``"center"``, ``"zscore"`` or ``"l2"`` (see the module docstring).
    min_scale:
        ``"zscore"`` only: each dimension's std is floored at ``min_scale`` × the RMS of all
        dimensions' stds, so near-constant dimensions are not blown up (a query from outside
        the corpus would otherwise be dominated by them). If every dimension is constant the
        scale is 1.

    Learned
    -------
    mean_:  [dim] float64 (zeros for ``"l2"``)
    scale_: [dim] float64 (ones for ``"l2"`` and ``"center"``)
    n_fit_: number of corpus rows the statistics come from
    """

    def __init__(self, mode: str = "center", *, min_scale: float = 1e-2) -> None:
        if mode not in NORMALIZE_MODES:
            raise ConfigError(
                f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALIZE_MODES)}"
            )
        self.mode = mode
        self.min_scale = float(min_scale)

    def fit(self, X: np.ndarray) -> Normalizer:
        """Learn ``mean_`` and ``scale_`` from ``X`` [n, dim] (any float dtype)."""
        X = np.asarray(X)
        n, dim = X.shape
        if self.mode == "l2":
            mean, scale = np.zeros(dim), np.ones(dim)
        else:
            mean, var = _column_mean_var(X)
            scale = np.ones(dim)
            if self.mode == "zscore":
                scale = _floored_std(var, self.min_scale)
        self.mean_, self.scale_, self.n_fit_ = mean, scale, int(n)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Normalise ``X`` [n, dim] → float32 [n, dim] rows of unit norm (or all-zero rows)."""
        X = np.asarray(X)
        out = np.empty(X.shape, dtype=np.float32)
        for start, stop in _chunks(X.shape[0], X.shape[1]):
            out[start:stop] = self._transform_chunk(X[start:stop])
        return out

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``: [n, dim] → float32 [n, dim]."""
        return self.fit(X).transform(X)

    def _transform_chunk(self, X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float64)
        Y = (X - self.mean_) / self.scale_
        norms = np.linalg.norm(Y, axis=1)
        # "Zero" relative to the input's own magnitude: a row equal to the mean up to
        # float rounding carries no direction; it becomes the zero vector, not noise.
        reference = np.linalg.norm(X / self.scale_, axis=1) + np.linalg.norm(
            self.mean_ / self.scale_
        )
        zero = norms <= 1e-10 * reference
        norms[zero] = 1.0
        Y /= norms[:, None]
        Y[zero] = 0.0
        return Y

    @classmethod
    def from_state(
        cls, mode: str, mean: np.ndarray, scale: np.ndarray, n_fit: int, *, min_scale: float
    ) -> Normalizer:
        """Rebuild a fitted normaliser from saved state (mean/scale [dim])."""
        norm = cls(mode, min_scale=min_scale)
        norm.mean_ = np.asarray(mean, dtype=np.float64)
        norm.scale_ = np.asarray(scale, dtype=np.float64)
        norm.n_fit_ = int(n_fit)
        return norm

    def __repr__(self) -> str:
        return f"Normalizer(mode={self.mode!r}, min_scale={self.min_scale})"


def _chunks(n_rows: int, n_cols: int) -> Iterable[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _column_mean_var(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) variance of X [n, dim], float64, chunked (two passes)."""
    n, dim = X.shape
    total = np.zeros(dim)
    for start, stop in _chunks(n, dim):
        total += X[start:stop].sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(dim)
    for start, stop in _chunks(n, dim):
        centred = X[start:stop].astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    return mean, squares / n


def _floored_std(var: np.ndarray, min_scale: float) -> np.ndarray:
    std = np.sqrt(var)
    rms = float(np.sqrt(np.mean(var)))
    if rms == 0.0:
        return np.ones_like(std)
    return np.maximum(std, min_scale * rms)


# --------------------------------------------------------------------------------------------
# building


def ivf_nlist(n: int) -> int:
    """Default number of IVF lists for ``n`` vectors: ≈ 4·sqrt(n), at most n/39 and 65536."""
    return int(min(round(4 * np.sqrt(n)), n // IVF_MIN_POINTS_PER_LIST, IVF_MAX_LISTS))


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
    vectors:
        [n, dim] track vectors of one layer (any float dtype; converted to float32 after
        normalisation). Must be finite.
    track_ids:
        n unique track ids, row order.
    kind:
        ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"``.
    normalize:
        ``"center"`` (default), ``"zscore"`` or ``"l2"``.
    params:
        hnsw: ``M``, ``efConstruction``, ``efSearch``; ivf: ``nlist``, ``nprobe``. Defaults are
        filled in and the values actually used are recorded in :attr:`LayerIndex.params`.
    fingerprint:
        The caller's fingerprint of what the vectors came from; stored, exposed, not checked.
    meta:
        JSON-serialisable extras stored with the index (layer, model, dataset …).

    Raises
    ------
    ConfigError: unknown kind / normalisation / parameter, or bad shapes / ids.
    SearchIndexError: an IVF index asked of too few vectors to train it.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    X = _check_vectors(vectors, dim=None)
    ids = _check_ids(track_ids, expected=X.shape[0])
    meta = _check_meta(meta)
    used = _resolve_params(kind, dict(params or {}), n=X.shape[0])
    normalizer = Normalizer(normalize).fit(X)
    Xn = normalizer.transform(X)
    index = _new_faiss_index(kind, Xn, used)
    return LayerIndex(
        index, ids, normalizer, kind=kind, params=used, fingerprint=fingerprint, meta=meta
    )


def _check_vectors(vectors: np.ndarray, *, dim: int | None) -> np.ndarray:
    X = np.asarray(vectors)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ConfigError(f"expected vectors of shape [n, dim] with n, dim > 0, got {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    if dim is not None and X.shape[1] != dim:
        raise ConfigError(f"expected vectors of dimension {dim}, got {X.shape[1]}")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ConfigError(f"vectors contain NaN or inf (rows {bad[:5].tolist()} …)")
    return X


def _check_ids(track_ids: Sequence[str], *, expected: int) -> list[str]:
    ids = [str(t) for t in track_ids]
    if len(ids) != expected:
        raise ConfigError(f"{len(ids)} track ids for {expected} vectors")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = [t for t in ids if t in seen or seen.add(t)]
        raise ConfigError(f"duplicate track ids: {dupes[:5]}")
    return ids


def _check_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"index meta must be JSON-serialisable: {exc}") from exc
    return meta


def _resolve_params(kind: str, params: dict[str, Any], *, n: int) -> dict[str, Any]:
    unknown = set(params) - _PARAM_NAMES[kind]
    if unknown:
        allowed = ", ".join(sorted(_PARAM_NAMES[kind])) or "none"
        raise ConfigError(f"unknown {kind} parameter(s) {sorted(unknown)}; allowed: {allowed}")
    if kind == "hnsw":
        return {name: int(params.get(name, default)) for name, default in HNSW_DEFAULTS.items()}
    if kind == "ivf":
        return _ivf_params(params, n=n)
    return {}


def _ivf_params(params: dict[str, Any], *, n: int) -> dict[str, Any]:
    nlist = int(params.get("nlist", ivf_nlist(n)))
    if "nlist" in params and nlist < IVF_MIN_LISTS:
        raise ConfigError(f"ivf needs nlist of at least {IVF_MIN_LISTS}, got {nlist}")
    minimum = IVF_MIN_POINTS_PER_LIST * max(nlist, IVF_MIN_LISTS)
    if n < minimum:
        raise SearchIndexError(
            f"an ivf index needs at least {minimum} vectors to train "
            f"{max(nlist, IVF_MIN_LISTS)} lists ({IVF_MIN_POINTS_PER_LIST} per list); "
            f"got {n}. Use kind 'flat' (exact, fast up to ~100k tracks)."
        )
    nprobe = int(params.get("nprobe", min(nlist, max(8, nlist // 16))))
    return {"nlist": nlist, "nprobe": max(1, min(nprobe, nlist))}


def _new_faiss_index(kind: str, Xn: np.ndarray, params: dict[str, Any]) -> Any:
    faiss = _faiss()
    dim = Xn.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
    else:
        index = faiss.index_factory(dim, f"IVF{params['nlist']},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(Xn)
    index.add(Xn)
    _apply_search_params(index, kind, params)
    return index


def _apply_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        index.nprobe = params["nprobe"]
        if index.direct_map.no():
            index.make_direct_map()  # for reconstruct(): vector_of, fusion


# --------------------------------------------------------------------------------------------
# the index


class LayerIndex:
    """One layer's FAISS index with its normaliser, track ids and provenance.

    Build with :func:`build_index` or :meth:`load`. Positions are row numbers in
    :attr:`track_ids` (0 … n-1); similarities are float32 cosines of normalised vectors,
    clipped to [-1, 1].
    """

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
    ) -> None:
        self._index = index
        self._track_ids = track_ids
        self._positions: dict[str, int] | None = None
        self._storage_view: np.ndarray | None = None
        self._shadow: Any = None  # float16 copy of a large flat index, built on second use
        self._few_query_searches = 0
        self.normalizer = normalizer
        self.kind = kind
        self._params = dict(params)
        self.fingerprint = fingerprint
        self.meta = dict(meta or {})

    # ---- facts -----------------------------------------------------------------------------

    @property
    def track_ids(self) -> list[str]:
        """Track ids in position order (do not mutate)."""
        return self._track_ids

    @property
    def normalize(self) -> str:
        """The normalisation mode: ``"center"``, ``"zscore"`` or ``"l2"``."""
        return self.normalizer.mode

    @property
    def params(self) -> dict[str, Any]:
        """FAISS parameters used: hnsw ``M``, ``efConstruction``, ``efSearch``; ivf ``nlist``,
        ``nprobe``; flat none."""
        return dict(self._params)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def n_total(self) -> int:
        """Number of vectors in the index."""
        return int(self._index.ntotal)

    @property
    def n_fit(self) -> int:
        """Number of vectors the normaliser's statistics come from (< n_total after ``add``)."""
        return self.normalizer.n_fit_

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for inspection; searching it bypasses normalisation)."""
        return self._index

    def __len__(self) -> int:
        return self.n_total

    def __repr__(self) -> str:
        return (
            f"LayerIndex(kind={self.kind!r}, normalize={self.normalize!r}, n={self.n_total}, "
            f"dim={self.dim}, params={self._params})"
        )

    def position(self, track_id: str) -> int:
        """Row of ``track_id``; raises TrackNotFoundError if it is not indexed."""
        if self._positions is None:
            self._positions = {t: i for i, t in enumerate(self._track_ids)}
        try:
            return self._positions[track_id]
        except KeyError:
            raise TrackNotFoundError(
                f"track {track_id!r} is not in this index ({self.n_total} tracks)"
            ) from None

    def __contains__(self, track_id: object) -> bool:
        try:
            self.position(track_id)  # type: ignore[arg-type]
        except TrackNotFoundError:
            return False
        return True

    # ---- vectors ---------------------------------------------------------------------------

    def vector_of(self, track_id: str) -> np.ndarray:
        """The normalised vector [dim] float32 of ``track_id`` as stored in the index (a copy)."""
        return self._rows(np.array([self.position(track_id)]))[0]

    def normalized_vectors(self) -> np.ndarray:
        """All normalised vectors [n, dim] float32, in position order (a copy)."""
        view = self._view()
        if view is not None:
            return view.copy()
        return self._index.reconstruct_n(0, self.n_total)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Normalise raw query vectors [m, dim] (or [dim]) like the corpus → float32 [m, dim]."""
        return self.normalizer.transform(self._check_queries(vectors))

    def _view(self) -> np.ndarray | None:
        """Zero-copy [n, dim] view of FAISS' flat storage (flat, hnsw); None for ivf."""
        if self.kind == "ivf":
            return None
        if self._storage_view is None:
            faiss = _faiss()
            flat = self._index if self.kind == "flat" else faiss.downcast_index(self._index.storage)
            n, dim = self.n_total, self.dim
            ptr = faiss.rev_swig_ptr(flat.get_xb(), n * dim)
            self._storage_view = np.asarray(ptr).reshape(n, dim)
        return self._storage_view

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        """Normalised vectors at ``positions`` [c] → [c, dim] float32."""
        view = self._view()
        if view is not None:
            return view[positions]
        return self._index.reconstruct_batch(np.asarray(positions, dtype=np.int64))

    # ---- search ----------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Sequence[set[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of raw (unnormalised) queries.

        Parameters
        ----------
        queries: [m, dim] (or [dim], treated as m = 1) raw vectors of this layer.
        k: neighbours per query.
        exclude: optional m sets of positions that must not be returned for that query.

        Returns
        -------
        similarities [m, k] float32 (cosine, descending, equal ones by position) and
        positions [m, k] int64. Slots without a result (k larger than what is left) hold
        position -1 and similarity -inf.
        """
        Qn = self.transform(queries)
        return self._search_normalized(Qn, k, exclude=exclude)

    def search_track(
        self,
        track_id: str,
        k: int,
        *,
        exclude_ids: Iterable[str] = (),
    ) -> tuple[np.ndarray, list[str]]:
        """Top-``k`` neighbours of an indexed track, never the track itself.

        ``exclude_ids`` are dropped too (ids not in the index are ignored). Returns
        similarities [k'] float32 and the k' ≤ k track ids, best first.
        """
        sims, positions = self._search_normalized(
            self._rows(np.array([self.position(track_id)])),
            k,
            exclude=[self._excluded_positions(track_id, exclude_ids)],
        )
        keep = positions[0] >= 0
        return sims[0][keep], [self._track_ids[p] for p in positions[0][keep]]

    def _excluded_positions(self, track_id: str | None, exclude_ids: Iterable[str]) -> set[int]:
        excluded = {self.position(track_id)} if track_id is not None else set()
        for other in exclude_ids:
            if other in self:
                excluded.add(self.position(other))
        return excluded

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        Q = np.asarray(queries)
        if Q.ndim == 1:
            Q = Q[None, :]
        if Q.ndim != 2 or Q.shape[1] != self.dim:
            raise ConfigError(f"expected queries of shape [m, {self.dim}], got {np.shape(queries)}")
        if not np.isfinite(Q).all():
            raise ConfigError("query vectors contain NaN or inf")
        return Q

    def _search_normalized(
        self, Qn: np.ndarray, k: int, *, exclude: Sequence[set[int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if exclude is not None and len(exclude) != len(Qn):
            raise ConfigError(f"{len(exclude)} exclusion sets for {len(Qn)} queries")
        Qn = np.ascontiguousarray(Qn, dtype=np.float32)
        if self._use_shadow(len(Qn)):
            sims, positions = self._two_stage_topk(Qn, k, exclude)
        else:
            sims, positions = self._faiss_topk(Qn, k, exclude)
        np.clip(sims, -1.0, 1.0, out=sims, where=positions >= 0)
        return sims, positions

    def _use_shadow(self, m: int) -> bool:
        """Float16 two-stage path: flat, few queries, large; from the second such search on.

        The first search uses the plain path, so a one-shot process (``mess recommend``)
        never pays for building the float16 copy (≈ 10-40 ms at 10k × 768).
        """
        if not (
            self.kind == "flat"
            and m <= _FEW_QUERIES
            and self.n_total * self.dim >= _SHADOW_MIN_ELEMENTS
        ):
            return False
        self._few_query_searches += 1
        return self._shadow is not None or self._few_query_searches > 1

    def _fp16_shadow(self) -> Any:
        if self._shadow is None:
            faiss = _faiss()
            shadow = faiss.IndexScalarQuantizer(
                self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            shadow.add(self._view())
            self._shadow = shadow
        return self._shadow

    def _two_stage_topk(
        self, Qn: np.ndarray, k: int, exclude: Sequence[set[int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of a few queries: float16 scan for a shortlist, float32 rescoring.

        Every track outside the shortlist has an exact similarity ≤ (the shortlist's lowest
        float16 similarity + _FP16_ERROR); when the k-th exact similarity is strictly above
        that, the result is exact (ties by lower position included). Otherwise widen ×4.
        """
        shadow, X, n = self._fp16_shadow(), self._view(), self.n_total
        sims = np.full((len(Qn), k), -np.inf, dtype=np.float32)
        positions = np.full((len(Qn), k), -1, dtype=np.int64)
        for q in range(len(Qn)):
            excluded = exclude[q] if exclude is not None else set()
            want = min(n, 2 * (k + len(excluded)) + 16)
            while True:
                approx, found = _faiss_search(shadow, Qn[q : q + 1], want)
                shortlist = np.array(
                    [p for p in found[0] if p >= 0 and int(p) not in excluded], dtype=np.int64
                )
                exact = np.einsum("ij,j->i", X[shortlist], Qn[q])
                order = np.lexsort((shortlist, -exact))[:k]
                bound = approx[0, -1] + _FP16_ERROR  # nothing outside the shortlist beats it
                if want >= n or (len(order) == k and exact[order[-1]] > bound):
                    break
                want = min(n, 4 * want)
            sims[q, : len(order)] = exact[order]
            positions[q, : len(order)] = shortlist[order]
        return sims, positions

    def _faiss_topk(
        self, Qn: np.ndarray, k: int, exclude: Sequence[set[int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search asking for k + |excluded|, filtering, and widening until k are left."""
        m, n = len(Qn), self.n_total
        sims = np.full((m, k), -np.inf, dtype=np.float32)
        positions = np.full((m, k), -1, dtype=np.int64)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        want = min(n, k + extra)
        todo = np.arange(m)
        while len(todo):
            D, found = _faiss_search(self._index, np.ascontiguousarray(Qn[todo]), want)
            unfinished = []
            for row, q in enumerate(todo):
                excluded = exclude[q] if exclude is not None else ()
                keep = [j for j, p in enumerate(found[row]) if p >= 0 and int(p) not in excluded][
                    :k
                ]
                sims[q, : len(keep)] = D[row, keep]
                positions[q, : len(keep)] = found[row, keep]
                exhausted = want >= n or bool((found[row] < 0).any())
                if len(keep) < k and not exhausted:
                    unfinished.append(q)
            todo = np.array(unfinished, dtype=np.int64)
            want = min(n, 2 * want)
        _sort_rows(sims, positions)
        return sims, positions

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
        clash = [t for t in ids if t in self]
        if clash:
            raise ConfigError(f"track ids already indexed: {clash[:5]}")
        self._index.add(self.normalizer.transform(X))
        self._track_ids = self._track_ids + ids
        self._positions = None
        self._storage_view = None  # FAISS may have reallocated its storage
        self._shadow = None
        if fingerprint is not None:
            self.fingerprint = fingerprint

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change hnsw ``efSearch`` or ivf ``nprobe`` (recorded in :attr:`params`)."""
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ConfigError("efSearch applies to hnsw indices only")
            self._params["efSearch"] = int(ef_search)
        if nprobe is not None:
            if self.kind != "ivf":
                raise ConfigError("nprobe applies to ivf indices only")
            self._params["nprobe"] = max(1, min(int(nprobe), self._params["nlist"]))
        _apply_search_params(self._index, self.kind, self._params)

    # ---- persistence -----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` atomically (temp sibling dir, then ``os.replace``).

        An existing index there is replaced. Returns the directory path.
        """
        import shutil
        import tempfile

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            os.chmod(tmp, target.parent.stat().st_mode & 0o777)  # mkdtemp makes it 0700
            self._write_files(tmp)
            swap_dir_into_place(tmp, target)
        except NotADirectoryError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SearchIndexError(f"{target}: exists and is not an index directory") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _write_files(self, directory: Path) -> None:
        faiss = _faiss()
        faiss.write_index(self._index, str(directory / _INDEX_FILE))
        fsync_file(directory / _INDEX_FILE)
        stats = ((_MEAN_FILE, self.normalizer.mean_), (_SCALE_FILE, self.normalizer.scale_))
        for name, array in stats:
            with open(directory / name, "wb") as fh:
                np.save(fh, np.asarray(array, dtype=np.float64), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        sizes = {
            name: (directory / name).stat().st_size
            for name in (_INDEX_FILE, _MEAN_FILE, _SCALE_FILE)
        }
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "normalize": self.normalize,
            "min_scale": self.normalizer.min_scale,
            "params": self._params,
            "dim": self.dim,
            "n": self.n_total,
            "n_fit": self.n_fit,
            "fingerprint": self.fingerprint,
            "meta": self.meta,
            "faiss_version": getattr(faiss, "__version__", "unknown"),
            "files": sizes,
            "track_ids": self._track_ids,
        }
        with open(directory / _META_FILE, "w", encoding="utf-8") as fh:
            json.dump(record, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LayerIndex:
        """Read an index written by :meth:`save`.

        Raises SearchIndexError (naming the path and the reason) if anything is missing,
        truncated, of an unknown format version, or inconsistent (vector count vs track ids,
        dimensions, index type).
        """
        path = Path(directory)
        record = _read_meta(path)
        _check_file_sizes(path, record)
        mean = _read_array(path / _MEAN_FILE, record["dim"])
        scale = _read_array(path / _SCALE_FILE, record["dim"])
        index = _read_faiss(path / _INDEX_FILE)
        _check_faiss_index(path, index, record)
        normalizer = Normalizer.from_state(
            record["normalize"], mean, scale, record["n_fit"], min_scale=record["min_scale"]
        )
        params = dict(record["params"])
        _apply_search_params(index, record["kind"], params)
        return cls(
            index,
            record["track_ids"],
            normalizer,
            kind=record["kind"],
            params=params,
            fingerprint=record["fingerprint"],
            meta=record["meta"],
        )


def _faiss_search(index: Any, Qn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``; single-threaded for a few queries (OpenMP start-up costs more)."""
    if len(Qn) > _FEW_QUERIES:
        return index.search(Qn, k)
    faiss = _faiss()
    previous = faiss.omp_get_max_threads()
    if previous == 1:
        return index.search(Qn, k)
    faiss.omp_set_num_threads(1)
    try:
        return index.search(Qn, k)
    finally:
        faiss.omp_set_num_threads(previous)


def _sort_rows(sims: np.ndarray, positions: np.ndarray) -> None:
    """Sort each row in place by similarity descending, then position; padding (-1) last."""
    for row in range(len(sims)):
        if np.all(sims[row, 1:] < sims[row, :-1]):  # strictly descending: no ties, no padding
            continue
        missing = positions[row] < 0
        order = np.lexsort((positions[row], -np.where(missing, 0, sims[row]), missing))
        sims[row] = sims[row, order]
        positions[row] = positions[row, order]


# --------------------------------------------------------------------------------------------
# persistence helpers


_META_KEYS = {
    "format": str,
    "format_version": int,
    "kind": str,
    "normalize": str,
    "min_scale": float,
    "params": dict,
    "dim": int,
    "n": int,
    "n_fit": int,
    "fingerprint": str,
    "meta": dict,
    "files": dict,
    "track_ids": list,
}


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / _META_FILE
    try:
        with open(meta_path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise SearchIndexError(f"{path}: no index here ({_META_FILE} is missing)") from None
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{meta_path}: unreadable index metadata ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SearchIndexError(f"{meta_path}: not a mess layer index")
    if record.get("format_version") != FORMAT_VERSION:
        raise SearchIndexError(
            f"{meta_path}: index format version {record.get('format_version')!r}, this mess "
            f"reads version {FORMAT_VERSION}; rebuild the index"
        )
    for key, kind in _META_KEYS.items():
        value = record.get(key)
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is int and isinstance(value, bool)):
            raise SearchIndexError(f"{meta_path}: missing or malformed field {key!r}")
    if record["kind"] not in KINDS or record["normalize"] not in NORMALIZE_MODES:
        raise SearchIndexError(f"{meta_path}: unknown kind or normalisation")
    ids = record["track_ids"]
    if len(ids) != record["n"] or not all(isinstance(t, str) for t in ids):
        raise SearchIndexError(f"{meta_path}: {len(ids)} track ids for n = {record['n']}")
    if len(set(ids)) != len(ids):
        raise SearchIndexError(f"{meta_path}: duplicate track ids")
    return record


def _check_file_sizes(path: Path, record: dict[str, Any]) -> None:
    for name in (_INDEX_FILE, _MEAN_FILE, _SCALE_FILE):
        expected = record["files"].get(name)
        try:
            actual = (path / name).stat().st_size
        except FileNotFoundError:
            raise SearchIndexError(f"{path / name}: missing index file") from None
        if actual != expected:
            raise SearchIndexError(
                f"{path / name}: {actual} bytes, expected {expected} (truncated or replaced)"
            )


def _read_array(path: Path, dim: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{path}: unreadable normaliser statistics ({exc})") from None
    if array.shape != (dim,) or not np.issubdtype(array.dtype, np.floating):
        raise SearchIndexError(f"{path}: expected [{dim}] floats, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise SearchIndexError(f"{path}: normaliser statistics contain NaN or inf")
    return array


def _read_faiss(path: Path) -> Any:
    faiss = _faiss()
    try:
        return faiss.read_index(str(path))
    except (RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SearchIndexError(f"{path}: unreadable FAISS index ({reason})") from None


_FAISS_TYPES = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat"}


def _check_faiss_index(path: Path, index: Any, record: dict[str, Any]) -> None:
    faiss = _faiss()
    where = path / _INDEX_FILE
    expected_type = _FAISS_TYPES[record["kind"]]
    if type(index).__name__ != expected_type:
        raise SearchIndexError(
            f"{where}: holds a {type(index).__name__}, metadata says {record['kind']} "
            f"({expected_type})"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise SearchIndexError(f"{where}: metric is not inner product")
    if index.d != record["dim"]:
        raise SearchIndexError(f"{where}: dimension {index.d}, metadata says {record['dim']}")
    if index.ntotal != len(record["track_ids"]):
        raise SearchIndexError(
            f"{where}: {index.ntotal} vectors for {len(record['track_ids'])} track ids"
        )


# --------------------------------------------------------------------------------------------
# fusion


@dataclass(frozen=True)
class FusionResult:
    """Ranked result of :func:`fuse`.

    track_ids: k' ids, best first; similarities: [k'] float32 fused Σ w·sim / Σ w;
    layer_similarities: [k', n_parts] float32 exact cosine in each part's index;
    weights: the parts' weights.
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
) -> FusionResult:
    """Weighted fusion of per-layer similarities over the union of per-layer candidates.

    Parameters
    ----------
    parts:
        ``(weight, index, query)`` per aspect/layer; ``weight`` > 0; ``query`` is a track id
        (excluded from the results) or a raw vector [dim] for that index's layer.
    k:
        Results wanted.
    exclude_ids:
        Track ids never returned.
    n_candidates:
        Candidates taken from each part's own search (default ``max(4k, 50)``). The union of
        these is re-scored exactly in every part, so the result is exact over that union; a
        track outside every part's candidate list cannot appear.

    Returns
    -------
    FusionResult, ranked by Σ w·sim / Σ w (ties by first appearance in the union).
    """
    if not parts:
        raise ConfigError("fusion needs at least one (weight, index, query) part")
    weights = np.array([float(w) for w, _, _ in parts])
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ConfigError(f"fusion weights must be positive, got {weights.tolist()}")
    excluded = set(exclude_ids) | {q for _, _, q in parts if isinstance(q, str)}
    queries = [_normalized_query(index, query) for _, index, query in parts]
    per_part = n_candidates if n_candidates is not None else max(4 * k, 50)

    candidates: dict[str, None] = {}
    for (_, index, _), qn in zip(parts, queries):
        exclude = index._excluded_positions(None, excluded)
        _, positions = index._search_normalized(qn[None, :], per_part, exclude=[exclude])
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


def _normalized_query(index: LayerIndex, query: str | np.ndarray) -> np.ndarray:
    if isinstance(query, str):
        return index.vector_of(query)
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
    sims = np.einsum("ij,j->i", index._rows(positions), qn)
    return np.clip(sims, -1.0, 1.0).astype(np.float32)
