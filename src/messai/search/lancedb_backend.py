"""LanceDB backend: vector indices on the layer columns of the store's own ``tracks`` table.

The store's ``tracks.lance`` table (local folder or ``s3://`` …, with the store's storage
options) is opened with LanceDB; ``mess index --backend lancedb`` creates a vector index on one
layer column (``ivf`` → IVF_FLAT, ``ivfpq`` → IVF_PQ, ``hnsw-sq8`` → IVF_HNSW_SQ; ``flat``
creates none and every query scans) plus a BTREE index on ``track_id``, and writes the layer's
normaliser (mean, scale) as a store side file ``lancedb-layerNN-<normalize>.json`` so every
reader of a shared store normalises alike.

Queries always read the live table: tracks added since the index was built are scanned (LanceDB
searches unindexed rows exhaustively), removed tracks are gone, so results are never stale; the
index only gets slower until it is rebuilt. The normalised cosine (centre / z-score / L2) is not
a LanceDB metric, so the index is an L2 one on the raw column and is queried with the raw-space
point ``mean + scale · r · q̂`` (r: the median length of a normalised corpus row); its L2
neighbours are nearly the cosine neighbours, and ``refine`` × k of them (default 30 × k, at least 200) are
re-ranked by the exact normalised cosine. ``--where`` filters become a LanceDB pre-filter on
the matching track ids; when at most ``EXACT_SUBSET_MAX`` (20k) tracks match, those rows are
read (through the BTREE index on ``track_id``) and scored exactly instead.

``lancedb`` is an optional extra (``pip install 'messai[lancedb]'``) and is imported only here,
inside functions: importing it costs ≈ 1.1 s (measured: ``python -X importtime -c 'import
lancedb'``), so it is never on the default path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from messai.errors import ConfigError, SearchIndexError
from messai.search.selectors import EXACT_SUBSET_MAX

__all__ = ["LANCEDB_KINDS", "LanceDBLayer", "build_lancedb_index"]

#: mess kind → LanceDB index type (None: no index, exhaustive exact scan)
LANCEDB_KINDS = {"flat": None, "ivf": "IVF_FLAT", "ivfpq": "IVF_PQ", "hnsw-sq8": "IVF_HNSW_SQ"}
MIN_CANDIDATES = 200
DEFAULT_REFINE = 30
PARAM_NAMES = {"nlist", "nprobe", "pq_m", "refine", "M", "efConstruction", "efSearch"}


def _lancedb():
    try:
        import lancedb
    except ImportError:
        raise ConfigError(
            "the lancedb backend needs the optional extra: pip install 'messai[lancedb]' "
            "(or uv sync --extra lancedb)"
        ) from None
    return lancedb


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def state_name(layer: int, normalize: str) -> str:
    """The store side file holding one layer's normaliser and index parameters."""
    return f"lancedb-layer{layer:02d}-{normalize}.json"


def open_table(store):
    """The store's ``tracks`` table through LanceDB."""
    from messai.features import location as loc

    lancedb = _lancedb()
    opts = loc.storage_options() if loc.is_remote(store.uri) else None
    try:
        db = lancedb.connect(store.uri, storage_options=opts)
        return db.open_table("tracks")
    except (OSError, ValueError, RuntimeError) as exc:
        raise SearchIndexError(
            f"{store.uri}: LanceDB cannot open the tracks table ({exc})"
        ) from None


def _params(kind: str, params: dict[str, Any], n: int, dim: int) -> dict[str, Any]:
    from messai.search.backend import ivf_nlist, pq_m_default

    unknown = set(params) - PARAM_NAMES
    if unknown:
        raise ConfigError(f"unknown lancedb parameter(s) {sorted(unknown)}")
    used: dict[str, Any] = {"refine": int(params.get("refine", DEFAULT_REFINE))}
    if kind != "flat":
        nlist = int(params.get("nlist", max(1, min(ivf_nlist(max(n, 1)), n // 256 or 1))))
        used["nlist"] = nlist
        used["nprobe"] = int(params.get("nprobe", max(16, nlist // 2)))
    if kind == "ivfpq":
        used["pq_m"] = int(params.get("pq_m", pq_m_default(dim)))
    if kind == "hnsw-sq8":
        used["M"] = int(params.get("M", 16))
        used["efConstruction"] = int(params.get("efConstruction", 150))
        used["efSearch"] = int(params.get("efSearch", 128))
    return used


def build_lancedb_index(
    store,
    layer: int,
    *,
    kind: str = "ivfpq",
    normalize: str = "center",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the layer's normaliser, index its column of the store's tracks table, and record
    both; returns ``{"layer", "action", "n_tracks", "kind", "index_type", "params", ...}``."""
    import time

    from messai.features.store import layer_column
    from messai.search.normalise import Normalizer

    if kind not in LANCEDB_KINDS:
        raise ConfigError(
            f"--backend lancedb supports --kind {', '.join(LANCEDB_KINDS)}; got {kind!r}"
        )
    t0 = time.perf_counter()
    ids, X = store.layer(layer)
    if not ids:
        raise SearchIndexError(f"dataset {store.dataset!r} has no tracks to index")
    used = _params(kind, dict(params or {}), len(ids), X.shape[1])
    normalizer = Normalizer(normalize).fit(X)
    # typical length of a normalised-but-not-unit row: the query point's distance from the mean
    sample = X[:: max(1, len(X) // 10000)]
    centred = (sample - normalizer.mean_) / normalizer.scale_
    radius = float(np.median(np.linalg.norm(centred, axis=1)))
    del X, sample, centred
    table = open_table(store)
    column = layer_column(layer)
    index_type = LANCEDB_KINDS[kind]
    if index_type is not None:
        table.create_index(column, config=_index_config(kind, used), replace=True)
    if not any(i.columns == ["track_id"] for i in table.list_indices()):
        from lancedb.index import BTree

        table.create_index("track_id", config=BTree(), replace=True)
    state = {
        "format": "mess-lancedb-layer",
        "layer": layer,
        "normalize": normalize,
        "kind": kind,
        "params": used,
        "fingerprint": store.fingerprint(),
        "n_fit": normalizer.n_fit_,
        "radius": radius,
        "min_scale": normalizer.min_scale,
        "mean": np.asarray(normalizer.mean_, dtype=np.float64).tolist(),
        "scale": np.asarray(normalizer.scale_, dtype=np.float64).tolist(),
    }
    where = store.write_side_file(state_name(layer, normalize), json.dumps(state).encode())
    return {
        "layer": layer,
        "path": where,
        "action": "built",
        "n_tracks": len(ids),
        "seconds": round(time.perf_counter() - t0, 4),
        "kind": kind,
        "index_type": index_type or "none (exact scan)",
        "params": used,
    }


def _index_config(kind: str, used: dict[str, Any]):
    from lancedb.index import HnswSq, IvfFlat, IvfPq

    if kind == "ivfpq":
        return IvfPq(distance_type="l2", num_partitions=used["nlist"], num_sub_vectors=used["pq_m"])
    if kind == "hnsw-sq8":
        return HnswSq(
            distance_type="l2",
            num_partitions=used["nlist"],
            m=used["M"],
            ef_construction=used["efConstruction"],
        )
    return IvfFlat(distance_type="l2", num_partitions=used["nlist"])


class LanceDBLayer:
    """One layer of the store searched through LanceDB (see the module docstring).

    Offers what :class:`messai.search.recommend.LayerBasedRecommender` needs of a layer:
    :meth:`transform`, :meth:`vector_of`, :meth:`nearest`.
    """

    def __init__(self, store, layer: int, normalize: str, state: dict[str, Any]) -> None:
        from messai.features.store import layer_column
        from messai.search.normalise import Normalizer

        self.store, self.layer, self.normalize = store, layer, normalize
        self.kind = state["kind"]
        self.params = dict(state["params"])
        self.state = state
        self.normalizer = Normalizer.from_state(
            normalize,
            np.asarray(state["mean"]),
            np.asarray(state["scale"]),
            int(state["n_fit"]),
            min_scale=float(state["min_scale"]),
        )
        self.column = layer_column(layer)
        self.table = open_table(store)
        self._ids: list[str] | None = None

    @classmethod
    def open(
        cls, store, layer: int, *, normalize: str, on_notice: Callable[[str], None] | None = None
    ) -> LanceDBLayer:
        """The layer's LanceDB searcher; SearchIndexError with the command to run if
        ``mess index --backend lancedb`` has not been run for it."""
        raw = store.read_side_file(state_name(layer, normalize))
        command = (
            f"mess index --dataset {store.dataset} --layers {layer} --backend lancedb "
            f"--normalize {normalize}"
        )
        if raw is None:
            raise SearchIndexError(
                f"no lancedb index for layer {layer} of {store.dataset!r}; run: {command}"
            )
        try:
            state = json.loads(raw)
            layer_ok = state["layer"] == layer and state["normalize"] == normalize
        except (ValueError, KeyError, TypeError):
            layer_ok = False
        if not layer_ok:
            raise SearchIndexError(f"{state_name(layer, normalize)}: malformed; run: {command}")
        if on_notice is not None and state["fingerprint"] != store.fingerprint():
            on_notice(
                f"note: the store changed since the lancedb index of layer {layer} was built; "
                f"results cover every current track (new ones by exhaustive scan, normalised with "
                f"the statistics of the {state['n_fit']} tracks indexed then); refresh with: {command}"
            )
        return cls(store, layer, normalize, state)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Normalise raw query vectors [m, dim] (or [dim]) like the corpus → [m, dim]."""
        return self.normalizer.transform(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))

    def vector_of(self, track_id: str) -> np.ndarray:
        """The normalised vector [dim] of a stored track (read from the table)."""
        rows = (
            self.table.search()
            .where(f"track_id = {_sql(track_id)} AND status = 'ok'")
            .select([self.column])
            .limit(1)
            .to_arrow()
        )
        if rows.num_rows == 0:
            self.store.require_track(track_id)
            raise SearchIndexError(f"track {track_id!r} is not in the tracks table")
        return self.transform(self._vectors(rows))[0]

    def _vectors(self, rows) -> np.ndarray:
        column = rows.column(self.column).combine_chunks()
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)

    def nearest(
        self,
        qn: np.ndarray,
        k: int,
        *,
        exclude_ids: Iterable[str] = (),
        scope: Callable[[Sequence[str]], np.ndarray] | None = None,
        candidates: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Top-``k`` (similarities [k'], ids) of a normalised query ``qn`` [dim].

        ``scope`` maps the store's track ids to a bool mask of those allowed (a ``--where``
        filter); the allowed ids become a pre-filter, so k come back when k match.
        """
        predicate = ["status = 'ok'"]
        excluded = sorted(set(exclude_ids))
        if excluded:
            predicate.append(f"track_id NOT IN ({', '.join(map(_sql, excluded))})")
        if scope is not None:
            if candidates is None:
                if self._ids is None:
                    self._ids = self.store.track_ids()
                candidates = self._ids
            ids = candidates
            allowed = [t for t, ok in zip(ids, scope(ids)) if ok]
            if not allowed:
                return np.zeros(0, np.float32), []
            predicate.append(f"track_id IN ({', '.join(map(_sql, allowed))})")
        where = " AND ".join(predicate)
        small = scope is not None and len(allowed) <= EXACT_SUBSET_MAX
        if self.kind == "flat" or small:  # every matching row, scored exactly
            rows = self.table.search().where(where).select(["track_id", self.column]).to_arrow()
        else:
            # the raw-space point at the corpus' typical distance from the mean in the query's
            # direction: its L2 neighbours are (nearly) the normalised-cosine neighbours
            scale, mean = np.asarray(self.state["scale"]), np.asarray(self.state["mean"])
            point = mean + scale * self.state["radius"] * np.asarray(qn, dtype=np.float64)
            want = max(MIN_CANDIDATES, self.params["refine"] * k)
            query = (
                self.table.search(point.astype(np.float32), vector_column_name=self.column)
                .distance_type("l2")
                .where(where, prefilter=True)
                .select(["track_id", self.column, "_distance"])
                .limit(want)
                .nprobes(self.params["nprobe"])
            )
            if self.kind == "hnsw-sq8":
                query = query.ef(max(self.params["efSearch"], want))
            rows = query.to_arrow()
        if rows.num_rows == 0:
            return np.zeros(0, np.float32), []
        ids = rows.column("track_id").to_pylist()
        sims = (self.transform(self._vectors(rows)) @ np.asarray(qn, dtype=np.float32)).clip(-1, 1)
        order = np.lexsort((np.arange(len(ids)), -sims))[:k]
        return sims[order].astype(np.float32), [ids[i] for i in order]
