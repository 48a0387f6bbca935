"""The spaces a query searches: a layer, or a fitted aspect space (``mess aspects fit``).

To the search every space is the same thing: it maps track ids to vectors, has a fingerprint
and a cached index (:mod:`messai.search.cache`), and offers

- ``query_of(track_id)``: a stored track's search vector;
- ``encode(vectors)``: the search vector of raw layer vectors ``[n_layers, dim]`` (``--audio``);
- ``nearest(q, k, exclude_ids=, scope=)``: the top ``k`` (similarities, ids) with exclusions,
  the ``--where`` scope and removed tracks (tombstones) applied inside the index search;
- ``similarities(q, ids)``: the exact similarity of given tracks (fusion re-scores with it).

Several weighted spaces fuse (:func:`messai.search.fusion.fuse`). Everything else a query
applies (exclusions, ``--where``, ``--max-per``, ``-k``, paging, validation, ``--explain``)
is done once, for every space, by :meth:`messai.search.recommend.LayerBasedRecommender.search`.

A layer space searches cosine similarity of normalised vectors. A fitted space searches its
own coordinates ``z = (x - mean) @ components`` with similarity ``exp(-d² / (2 · dim))``; its
index (any kind: flat, hnsw, ivf, ivfpq, hnsw-sq8) holds rows lifted from ``z`` so that inner
product orders tracks as ``-|q - z|²`` does (exactly for flat; see :class:`Lift`); the
similarity returned is recomputed from the distance.

Routing (``LayerBasedRecommender(space=...)``, ``mess recommend --space``):

- ``auto`` (default): every requested aspect with a fitted space is searched in it; when any
  requested aspect has none, the whole query runs the whole-layer search, with a notice;
- ``aspect``: the aspect spaces or an error;
- ``layer``: the whole layer (also whenever ``--layer`` is given); a label aspect, which has no
  probe layer, uses the layer its space was fitted on.

A space fitted before the store changed (features, targets or labels) is used with a notice
naming the command that refits it, and its results carry a caveat: it is never used silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import ConfigError

SPACE_MODES = ("auto", "aspect", "layer")


def _safe_name(name: str) -> str:
    """A folder-safe form of a space name (never a path: no separators, no dots first)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "space"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def track_matrix(store, layers: list[int], track_ids: list[str] | None = None):
    """Track vectors of ``layers`` concatenated: ``(ids, [n_tracks, len(layers) * dim])``."""
    ids, first = store.layer(layers[0], track_ids=track_ids)
    parts = [first] + [store.layer(la, track_ids=ids)[1] for la in layers[1:]]
    return ids, np.concatenate(parts, axis=1).astype(np.float64)


@dataclass(frozen=True)
class Lift:
    """How a fitted space's coordinates ``z`` [dim] become index rows searched by inner product.

    - ``flat`` indices: rows ``[z, -|z|²/2]``, queries ``[q, 1]``; the inner product
      ``q·z - |z|²/2`` orders tracks exactly as ``-|q - z|²``;
    - approximate kinds (graphs and inverted lists compare rows with rows, which that lift makes
      meaningless): unit rows ``[z/R, √(1 - |z|²/R²)]`` with ``R = 10·√dim`` (the coordinates
      are whitened: |z| is about √dim), whose cosine is ``1 - |q - z|²/(2R²)`` up to a relative
      error of at most ``(|q| + |z|)²/(4R²)`` (about 1%); a row beyond R (10 standard deviations
      out) is put on the sphere's equator. :meth:`FittedSpace.nearest` takes ``max(4k, k + 32)``
      candidates from such an index and re-scores them exactly from the recovered ``z``.
    """

    kind: str
    radius: float = 1.0

    @classmethod
    def for_index(cls, kind: str, dim: int) -> Lift:
        return cls("augment") if kind == "flat" else cls("sphere", 10.0 * np.sqrt(max(dim, 1)))

    def rows(self, Z: np.ndarray) -> np.ndarray:
        Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        sq = (Z**2).sum(1, keepdims=True)
        if self.kind == "augment":
            return np.concatenate([Z, -0.5 * sq], axis=1)
        return np.concatenate(
            [Z / self.radius, np.sqrt(np.clip(1.0 - sq / self.radius**2, 0.0, None))], axis=1
        )

    def query(self, q: np.ndarray) -> np.ndarray:
        if self.kind == "augment":
            return np.append(np.asarray(q, dtype=np.float64), 1.0).astype(np.float32)
        return self.rows(q)[0].astype(np.float32)

    def coordinates(self, rows: np.ndarray) -> np.ndarray:
        z = np.asarray(rows, dtype=np.float64)[..., :-1]
        return z if self.kind == "augment" else z * self.radius


@dataclass(frozen=True)
class FittedSpaceSource:
    """What a fitted space's index is built from (the ``source`` of
    :func:`messai.search.cache.build_source_index`): the store's tracks projected by the space.
    Its fingerprint covers the store's features and the space's checksum, so a refit (or an
    edited ``aspect_spaces.json``) makes the index stale."""

    store: Any
    space: Any

    @property
    def what(self) -> str:
        return f"aspect space {self.space.name!r}"

    def folder(self, home: Path, *, normalize: str, kind: str) -> Path:
        from messai.search.cache import store_cache_dir

        return store_cache_dir(home, self.store) / f"space-{_safe_name(self.space.name)}-{kind}"

    def fingerprint(self, *, normalize: str, kind: str, params: dict[str, Any] | None) -> str:
        blob = json.dumps(
            [self.store.fingerprint(), self.space.checksum(), kind, params or {}, "lift-1"],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def vectors(self, track_ids: list[str], *, kind: str) -> np.ndarray:
        _, X = track_matrix(self.store, self.space.layers, track_ids)
        return Lift.for_index(kind, self.space.dim).rows(self.space.transform(X))

    def command(self, *, normalize: str, kind: str, params: dict[str, Any] | None) -> str:
        from shlex import quote

        from messai.search.cache import stale_command

        layer_cmd = stale_command(self.store, 0, normalize="center", kind=kind, params=params)
        extra = layer_cmd.split(" --normalize center", 1)[1]
        return (
            f"mess index --dataset {quote(self.store.dataset)} --model {quote(self.store.model_id)} "
            f"--space {quote(self.space.name)} --kind {kind}{extra}"
        )

    @property
    def meta(self) -> dict[str, Any]:
        return {"layer": int(self.space.layers[0]), "space": self.space.name}


class LayerSpace:
    """A whole layer: cosine similarity of normalised vectors, searched in its index (a
    :class:`messai.search.layer_index.LayerIndex`, or a LanceDB layer)."""

    kind = "layer"

    def __init__(self, index, layer: int) -> None:
        self.index, self.layer = index, int(layer)
        self.layers = [self.layer]

    def info(self) -> dict[str, Any] | None:
        return None

    def query_of(self, track_id: str) -> np.ndarray:
        return np.asarray(self.index.vector_of(track_id), dtype=np.float32)

    def encode(self, vectors) -> np.ndarray:
        return np.asarray(self.index.transform(np.asarray(vectors[self.layer]))[0], np.float32)

    def combine(self, positive: list[np.ndarray], negative: list[np.ndarray]) -> np.ndarray:
        """The query of several examples: mean of the positives minus mean of the negatives,
        made unit length again (so similarities stay cosines)."""
        q = np.mean(positive, axis=0) - (np.mean(negative, axis=0) if negative else 0.0)
        norm = float(np.linalg.norm(q))
        return (q / norm if norm > 0 else q).astype(np.float32)

    def nearest(self, q, k: int, *, exclude_ids=(), scope=None):
        return self.index.nearest(q, k, exclude_ids=exclude_ids, scope=scope)

    def similarities(self, q: np.ndarray, track_ids: list[str]) -> np.ndarray:
        positions = np.array([self.index.position(t) for t in track_ids], dtype=np.int64)
        # einsum, not BLAS: a few hundred rows, and threaded BLAS is erratic on small shared CPUs
        sims = np.einsum("ij,j->i", self.index.vectors_at(positions), q)
        return np.clip(sims, -1.0, 1.0).astype(np.float32)

    def positions_of(self, track_ids) -> set[int]:
        return self.index.positions_of(track_ids)


class FittedSpace:
    """A fitted aspect space (:class:`messai.analysis.aspect_space.AspectSpace`) over the
    store's tracks, searched in its cached index (see the module docstring)."""

    kind = "aspect"

    def __init__(self, space, index, *, stale: bool = False) -> None:
        self.space, self.index, self.stale = space, index, stale
        self.lift = Lift.for_index(index.kind, space.dim)
        self.layers = [int(x) for x in space.layers]
        self.layer = self.layers[0]

    def info(self) -> dict[str, Any]:
        """The ``space`` entry of the recommend JSON."""
        return space_info(self.space)

    def query_of(self, track_id: str) -> np.ndarray:
        return self.lift.coordinates(self.index.vector_of(track_id))

    def encode(self, vectors) -> np.ndarray:
        x = np.concatenate([np.asarray(vectors[la], dtype=np.float64) for la in self.layers])
        return self.space.transform(x[None])[0]

    def combine(self, positive: list[np.ndarray], negative: list[np.ndarray]) -> np.ndarray:
        """The query of several examples: mean of the positives minus mean of the negatives (the
        coordinates are centred on the fit's mean, as a layer's are on the corpus mean)."""
        return np.mean(positive, axis=0) - (np.mean(negative, axis=0) if negative else 0.0)

    def nearest(self, q, k: int, *, exclude_ids=(), scope=None):
        want = k if self.lift.kind == "augment" else max(4 * k, k + 32)
        _, ids = self.index.nearest(self.lift.query(q), want, exclude_ids=exclude_ids, scope=scope)
        if not ids:
            return np.zeros(0, np.float64), []
        sims = self.similarities(q, ids)
        order = np.lexsort((np.arange(len(ids)), -sims))[:k]  # equal ones keep index order
        return sims[order], [ids[i] for i in order]

    def similarities(self, q: np.ndarray, track_ids: list[str]) -> np.ndarray:
        from messai.analysis.aspect_space import similarity_from_distance

        positions = np.array([self.index.position(t) for t in track_ids], dtype=np.int64)
        Z = self.lift.coordinates(self.index.vectors_at(positions))
        d2 = ((Z - np.asarray(q, dtype=np.float64)[None]) ** 2).sum(1)
        return similarity_from_distance(d2, self.space.dim)

    def positions_of(self, track_ids) -> set[int]:
        return self.index.positions_of(track_ids)


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


def load_fitted(rec, space, *, stale: bool) -> FittedSpace:
    """``space`` with its index (cached under the data root; see :func:`open_fitted`)."""
    cache = rec.__dict__.setdefault("_fitted_spaces", {})
    if space.name not in cache:
        cache[space.name] = open_fitted(
            rec.home,
            rec.store,
            space,
            kind=rec.kind,
            backend=rec.backend,
            stale=stale,
            on_notice=rec.on_notice,
        )
    return cache[space.name]


def open_fitted(
    home,
    store,
    space,
    *,
    kind: str = "flat",
    backend: str = "faiss",
    stale: bool = False,
    on_notice=None,
) -> FittedSpace:
    """A fitted space searchable through its cached index of ``kind`` (a missing or stale flat
    one is built on the fly, an approximate one must be built with ``mess index --space``)."""
    from messai.search.cache import load_source_index

    if backend != "faiss":
        raise ConfigError(
            f"the lancedb backend searches whole layers only; aspect space {space.name!r} is "
            "searched with --backend faiss (or use --space layer)"
        )
    index = load_source_index(
        home, FittedSpaceSource(store, space), normalize="none", kind=kind, on_notice=on_notice
    )
    return FittedSpace(space, index, stale=stale)


def build_space_indices(
    home, store, names: list[str], *, kind: str = "flat", params=None, force: bool = False
):
    """Build (or bring up to date) the cached indices of fitted spaces (``names``, or
    ``["all"]``) for ``mess index --space``: :class:`messai.search.cache.IndexOutcome` each."""
    from messai.analysis.space_file import load_spaces
    from messai.search.cache import build_source_index

    spaces = load_spaces(store)
    if not spaces:
        raise ConfigError(
            f"dataset {store.dataset!r} has no fitted aspect spaces; fit one with 'mess aspects fit'"
        )
    wanted = sorted(spaces) if "all" in names else list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in spaces]
    if unknown:
        raise ConfigError(
            f"no fitted space {unknown[0]!r} in {store.dataset!r}; fitted: {', '.join(sorted(spaces))}"
        )
    return [
        build_source_index(
            home,
            FittedSpaceSource(store, spaces[n][0]),
            normalize="none",
            kind=kind,
            params=params,
            force=force,
        )
        for n in wanted
    ]


def update_space_indices(home, store) -> list[dict[str, Any]]:
    """Bring the cached indices of the store's fitted spaces up to date after tracks were added
    or removed (appends / tombstones like a layer's): one ``IndexOutcome.to_dict()`` each; a
    space whose saved entry is damaged is listed with ``"action": "skipped: …"``."""
    from messai.analysis.space_file import verify_spaces
    from messai.search.backend import KINDS
    from messai.search.cache import build_source_index

    rows = []
    for row in verify_spaces(store):
        if row["fitted"] is None:
            rows.append({"space": row["space"], "action": f"skipped: {row['status']}"})
            continue
        source = FittedSpaceSource(store, row["fitted"])
        for kind in KINDS:
            if (source.folder(home, normalize="none", kind=kind) / "meta.json").is_file():
                out = build_source_index(home, source, normalize="none", kind=kind)
                rows.append(out.to_dict())
    return rows
