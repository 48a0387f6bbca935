"""FAISS behind the layer indices: kinds and their parameters, construction, raw searches.

Everything here works on FAISS indices of already-normalised float32 vectors; faiss itself is
imported lazily (:func:`load_faiss`), so importing this module costs numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from messai.errors import ConfigError, SearchIndexError

if TYPE_CHECKING:  # pragma: no cover
    import faiss as faiss_module

__all__ = [
    "FAISS_TYPES",
    "FEW_QUERIES",
    "HNSW_DEFAULTS",
    "KINDS",
    "REFINED_KINDS",
    "apply_search_params",
    "faiss_search",
    "filtered_topk",
    "flat_storage",
    "ivf_nlist",
    "load_faiss",
    "new_faiss_index",
    "resolve_params",
]

KINDS = ("flat", "hnsw", "ivf", "ivfpq", "hnsw-sq8")
#: memory-bounded kinds: compressed codes in RAM, candidates re-ranked exactly against the
#: normalised float32 vectors kept memory-mapped beside the index (``vectors.npy``)
REFINED_KINDS = ("ivfpq", "hnsw-sq8")
#: FAISS class of each kind (checked on load)
FAISS_TYPES = {
    "flat": "IndexFlatIP",
    "hnsw": "IndexHNSWFlat",
    "ivf": "IndexIVFFlat",
    "ivfpq": "IndexIVFPQ",
    "hnsw-sq8": "IndexHNSWSQ",
}

HNSW_DEFAULTS = {"M": 32, "efConstruction": 100, "efSearch": 64}
#: hnsw-sq8: 16 links keep the graph at 128 B per vector (1M × 768: 768 MB codes + 128 MB graph)
#: efSearch 384: recall@10 0.98 at 100k × 768 in the serving benchmark (96: 0.89, 192: 0.94)
HNSW_SQ8_DEFAULTS = {"M": 16, "efConstruction": 80, "efSearch": 384, "refine": 4}
IVF_MIN_POINTS_PER_LIST = 39  # FAISS' own k-means warning threshold
IVF_MIN_LISTS = 16
IVF_MAX_LISTS = 65536
#: ivfpq candidates re-ranked exactly: ``refine`` × k (30 with half the lists probed: recall@10
#: 0.98 at 100k × 768 in the serving benchmark; a quarter probed, refine 10: 0.89)
IVFPQ_REFINE = 30
PARAM_NAMES = {
    "flat": set(),
    "hnsw": set(HNSW_DEFAULTS),
    "ivf": {"nlist", "nprobe"},
    "ivfpq": {"nlist", "nprobe", "pq_m", "pq_bits", "refine"},
    "hnsw-sq8": set(HNSW_SQ8_DEFAULTS),
}

#: at most this many queries: run FAISS single-threaded (faster, see the benchmark)
FEW_QUERIES = 4


def load_faiss() -> faiss_module:
    """The ``faiss`` module, imported on first use."""
    import faiss

    return faiss


def ivf_nlist(n: int) -> int:
    """Default number of IVF lists for ``n`` vectors: ≈ 4·sqrt(n), at most n/39 and 65536."""
    return int(min(round(4 * np.sqrt(n)), n // IVF_MIN_POINTS_PER_LIST, IVF_MAX_LISTS))


def resolve_params(kind: str, params: dict[str, Any], *, n: int, dim: int = 0) -> dict[str, Any]:
    """The FAISS parameters a ``kind`` index of ``n`` vectors is built with, defaults filled in.

    Raises
    ------
    ConfigError
        A parameter that ``kind`` does not take, or an IVF ``nlist`` below 16.
    SearchIndexError
        An IVF index asked of too few vectors to train it.
    """
    unknown = set(params) - PARAM_NAMES[kind]
    if unknown:
        allowed = ", ".join(sorted(PARAM_NAMES[kind])) or "none"
        raise ConfigError(f"unknown {kind} parameter(s) {sorted(unknown)}; allowed: {allowed}")
    if kind == "hnsw":
        return {name: int(params.get(name, default)) for name, default in HNSW_DEFAULTS.items()}
    if kind == "ivf":
        return _ivf_params(params, n=n)
    if kind == "hnsw-sq8":
        return {name: int(params.get(name, v)) for name, v in HNSW_SQ8_DEFAULTS.items()}
    if kind == "ivfpq":
        return _ivfpq_params(params, n=n, dim=dim)
    return {}


def pq_m_default(dim: int) -> int:
    """Default PQ sub-quantisers: the largest divisor of ``dim`` ≤ dim / 8 (96 at 768: 96 B a
    vector), at least 1."""
    target = max(1, dim // 8)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _ivfpq_params(params: dict[str, Any], *, n: int, dim: int) -> dict[str, Any]:
    # ≈ 2·sqrt(n) lists (half of ivf's: cheaper to train), half of them probed: with the
    # shortlist re-ranked exactly, the probed lists bound the recall (see the serving benchmark)
    ivf = {k: v for k, v in params.items() if k in ("nlist", "nprobe")}
    ivf.setdefault(
        "nlist", max(IVF_MIN_LISTS, min(ivf_nlist(n) // 2, n // IVF_MIN_POINTS_PER_LIST))
    )
    used = _ivf_params(ivf, n=n, kind="ivfpq")
    if "nprobe" not in params:
        used["nprobe"] = max(1, min(used["nlist"], max(16, used["nlist"] // 2)))
    pq_m = int(params.get("pq_m", pq_m_default(dim)))
    if pq_m < 1 or dim % pq_m:
        raise ConfigError(f"ivfpq pq_m must divide the dimension {dim}, got {pq_m}")
    # 2**bits centroids per sub-quantiser, each trained on >= 39 points: fewer bits for small n
    bits = int(params.get("pq_bits", min(8, max(4, int(np.log2(max(n, 1) / 39))))))
    if not 4 <= bits <= 12:
        raise ConfigError(f"ivfpq pq_bits must be 4..12, got {bits}")
    refine = int(params.get("refine", IVFPQ_REFINE))
    if refine < 1:
        raise ConfigError(f"refine must be at least 1, got {refine}")
    return {**used, "pq_m": pq_m, "pq_bits": bits, "refine": refine}


def _ivf_params(params: dict[str, Any], *, n: int, kind: str = "ivf") -> dict[str, Any]:
    nlist = int(params.get("nlist", ivf_nlist(n)))
    if "nlist" in params and nlist < IVF_MIN_LISTS:
        raise ConfigError(f"ivf needs nlist of at least {IVF_MIN_LISTS}, got {nlist}")
    minimum = IVF_MIN_POINTS_PER_LIST * max(nlist, IVF_MIN_LISTS)
    if n < minimum:
        instead = (
            "--kind hnsw-sq8 (memory-bounded too, needs no training)"
            if kind == "ivfpq"
            else "--kind hnsw (approximate, needs no training)"
        )
        raise SearchIndexError(
            f"too few tracks for --kind {kind}: it trains {max(nlist, IVF_MIN_LISTS)} lists "
            f"on at least {IVF_MIN_POINTS_PER_LIST} tracks each ({minimum}), there are "
            f"{n}; use --kind flat (exact, and fast up to ~100k tracks) or {instead}"
        )
    nprobe = int(params.get("nprobe", min(nlist, max(8, nlist // 16))))
    return {"nlist": nlist, "nprobe": max(1, min(nprobe, nlist))}


def new_faiss_index(kind: str, Xn: np.ndarray, params: dict[str, Any]) -> Any:
    """A trained, filled inner-product FAISS index of normalised rows ``Xn`` [n, dim] float32."""
    faiss = load_faiss()
    dim = Xn.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
    elif kind == "hnsw-sq8":
        index = faiss.IndexHNSWSQ(
            dim, faiss.ScalarQuantizer.QT_8bit, params["M"], faiss.METRIC_INNER_PRODUCT
        )
        index.hnsw.efConstruction = params["efConstruction"]
        index.train(Xn)
    elif kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(
            quantizer,
            dim,
            params["nlist"],
            params["pq_m"],
            params["pq_bits"],
            faiss.METRIC_INNER_PRODUCT,
        )
        # polysemous code ordering (the factory's default) costs minutes and serves only
        # Hamming pre-filtering, which is not used; PQ k-means on ≤ 64 points per centroid
        index.do_polysemous_training = False
        index.pq.cp.max_points_per_centroid = 64
        index.pq.cp.niter = 20
        index.cp.niter = 10  # the coarse k-means: n·nlist·dim per iteration dominates the build
        index.cp.max_points_per_centroid = 64
        index.train(Xn)
    else:
        index = faiss.index_factory(dim, f"IVF{params['nlist']},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(Xn)
    index.add(Xn)
    apply_search_params(index, kind, params)
    return index


def apply_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    """Set hnsw ``efSearch`` / ivf ``nprobe`` on ``index`` (and give ivf a direct map)."""
    if kind in ("hnsw", "hnsw-sq8"):
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivfpq":
        index.nprobe = params["nprobe"]
    elif kind == "ivf":
        index.nprobe = params["nprobe"]
        if index.direct_map.no():
            index.make_direct_map()  # for reconstruct(): vector_of, fusion


def owned_flat_copy(index: Any) -> Any:
    """An in-memory copy of a (memory-mapped, read-only) ``IndexFlatIP``: FAISS aborts the
    process when a mapped index is grown, so it is copied before ``add``."""
    faiss = load_faiss()
    copy = faiss.IndexFlatIP(int(index.d))
    if index.ntotal:
        copy.add(flat_storage(index, "flat"))
    return copy


def flat_storage(index: Any, kind: str) -> np.ndarray | None:
    """Zero-copy [n, dim] float32 view of the vectors of a flat or hnsw index; None for others.

    The view is invalid once vectors are added (FAISS may reallocate its storage).
    """
    if kind not in ("flat", "hnsw"):
        return None
    faiss = load_faiss()
    flat = index if kind == "flat" else faiss.downcast_index(index.storage)
    n, dim = int(index.ntotal), int(index.d)
    ptr = faiss.rev_swig_ptr(flat.get_xb(), n * dim)
    return np.asarray(ptr).reshape(n, dim)


def faiss_search(index: Any, Qn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(Qn [m, dim], k)`` → (similarities [m, k], positions [m, k]).

    Single-threaded for at most :data:`FEW_QUERIES` queries (OpenMP start-up costs more).
    """
    if len(Qn) > FEW_QUERIES:
        return index.search(Qn, k)
    faiss = load_faiss()
    previous = faiss.omp_get_max_threads()
    if previous == 1:
        return index.search(Qn, k)
    faiss.omp_set_num_threads(1)
    try:
        return index.search(Qn, k)
    finally:
        faiss.omp_set_num_threads(previous)


def filtered_topk(
    index: Any, Qn: np.ndarray, k: int, exclude: Sequence[set[int]] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of normalised queries ``Qn`` [m, dim] in ``index``, skipping excluded positions.

    Asks FAISS for k + |excluded|, filters, and widens until k are left or the index is
    exhausted.

    Returns
    -------
    sims : np.ndarray
        [m, k] float32, descending, equal ones by position; -inf in empty slots.
    positions : np.ndarray
        [m, k] int64; -1 in empty slots.
    """
    m, n = len(Qn), int(index.ntotal)
    sims = np.full((m, k), -np.inf, dtype=np.float32)
    positions = np.full((m, k), -1, dtype=np.int64)
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    want = min(n, k + extra)
    todo = np.arange(m)
    while len(todo):
        D, found = faiss_search(index, np.ascontiguousarray(Qn[todo]), want)
        unfinished = []
        for row, q in enumerate(todo):
            excluded = exclude[q] if exclude is not None else ()
            keep = [j for j, p in enumerate(found[row]) if p >= 0 and int(p) not in excluded][:k]
            sims[q, : len(keep)] = D[row, keep]
            positions[q, : len(keep)] = found[row, keep]
            exhausted = want >= n or bool((found[row] < 0).any())
            if len(keep) < k and not exhausted:
                unfinished.append(q)
        todo = np.array(unfinished, dtype=np.int64)
        want = min(n, 2 * want)
    _sort_rows(sims, positions)
    return sims, positions


def _sort_rows(sims: np.ndarray, positions: np.ndarray) -> None:
    """Sort each row in place by similarity descending, then position; padding (-1) last."""
    for row in range(len(sims)):
        if np.all(sims[row, 1:] < sims[row, :-1]):  # strictly descending: no ties, no padding
            continue
        missing = positions[row] < 0
        order = np.lexsort((positions[row], -np.where(missing, 0, sims[row]), missing))
        sims[row] = sims[row, order]
        positions[row] = positions[row, order]
