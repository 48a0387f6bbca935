"""Layer-based recommendations: the nearest tracks for one musical aspect (or a weighted mix).

An aspect resolves to a layer through the store's probe results (``messai.analysis.aspects``); that
layer's FAISS index (``messai.search.cache``) is searched with the query track's vector. The
query is never among its results. Only ``recommend_audio`` (a file outside the store) loads
torch; everything else needs numpy and faiss alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import ConfigError, MessError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recommendation:
    """One recommended track.

    Attributes
    ----------
    rank : int
        1 for the best.
    track_id : str
        The track.
    similarity : float
        Cosine of normalised vectors (fused: Σ w·sim / Σ w).
    labels : dict
        The track's labels in the store (``store.labels``).
    layer_similarities : list of float, optional
        Fused queries only: the cosine in each part's layer, in the order of the aspects.
    """

    rank: int
    track_id: str
    similarity: float
    labels: dict[str, Any] = field(default_factory=dict)
    layer_similarities: list[float] | None = None
    explanation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"rank", "track_id", "similarity", ["layer_similarities"], **labels}``, rounded
        to 6 decimals."""
        row: dict[str, Any] = {
            "rank": self.rank,
            "track_id": self.track_id,
            "similarity": round(float(self.similarity), 6),
        }
        if self.layer_similarities is not None:
            row["layer_similarities"] = [round(float(v), 6) for v in self.layer_similarities]
        row.update(self.labels)
        if self.explanation is not None:  # --explain (messai.search.explain)
            row["explain"] = self.explanation
        return row


@dataclass(frozen=True)
class RecommendationResult:
    """The answer to one query: what was asked and the ranked tracks.

    Attributes
    ----------
    query : dict
        ``{"track_id", "dataset"}`` or ``{"audio", "dataset"}`` (or the caller's own).
    caveat : str or None
        Set when a layer searched is not its aspect's validated layer (an unvalidated probe
        result, the prototype defaults, or ``--layer``): the results carry no evidence.
    aspects, layers, weights : list
        One entry per requested aspect: its name, the layer searched, its weight.
    normalize : str
        The indices' normalisation.
    recommendations : list of Recommendation
        Best first.
    """

    query: dict[str, Any]
    aspects: list[str]
    layers: list[int]
    weights: list[float]
    normalize: str
    recommendations: list[Recommendation]
    spaces: list[dict[str, Any]] | None = None
    #: why the layers searched are not validated for their aspects (None when they all are)
    caveat: str | None = None

    @property
    def validated(self) -> bool:
        """Whether every layer searched is its aspect's validated layer."""
        return self.caveat is None

    @property
    def fused(self) -> bool:
        """Whether several aspects were mixed."""
        return len(self.aspects) > 1

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON: ``query``, ``aspect``, ``layer`` (lists and ``weights`` when
        fused), ``normalize``, ``recommendations``."""
        single = not self.fused
        return {
            "query": self.query,
            "aspect": self.aspects[0] if single else list(self.aspects),
            "layer": self.layers[0] if single else list(self.layers),
            **({} if single else {"weights": list(self.weights)}),
            "normalize": self.normalize,
            # searched in fitted aspect spaces (messai.search.aspect_search); absent for layers
            **({} if self.spaces is None else {"space": self.spaces[0] if single else self.spaces}),
            "validated": self.validated,
            "caveat": self.caveat,
            "recommendations": [r.to_dict() for r in self.recommendations],
        }


def parse_aspect_spec(spec: str) -> tuple[str, float]:
    """``"timbral_texture:0.5"`` → ``("timbral_texture", 0.5)``; weight 1 when omitted."""
    name, _, weight = spec.partition(":")
    if not name:
        raise ConfigError(f"invalid aspect {spec!r}: expected NAME or NAME:WEIGHT")
    try:
        w = float(weight) if weight else 1.0
    except ValueError:
        raise ConfigError(
            f"invalid aspect weight in {spec!r}: expected a number after ':'"
        ) from None
    if not w > 0:
        raise ConfigError(f"aspect weight must be positive in {spec!r}")
    return name, w


class LayerBasedRecommender:
    """Recommend tracks of a dataset by aspect (the prototype's API, made honest).

    >>> rec = LayerBasedRecommender(dataset="smd")  # doctest: +SKIP
    >>> rec.recommend(reference_track="Beethoven_Op027No1-01", aspect="spectral_brightness")  # doctest: +SKIP

    Every query goes through :meth:`recommend_by_vector`: :meth:`recommend_by_id` passes the
    track's indexed vectors, :meth:`recommend_by_audio` the vectors extracted from a file.
    ``recommend`` and ``recommend_audio`` return the same answers as JSON-ready dicts.
    """

    def __init__(
        self,
        dataset: str,
        model: str | None = None,
        *,
        home: str | Path | None = None,
        stores: str | None = None,
        normalize: str = "center",
        kind: str = "flat",
        on_notice: Callable[[str], None] | None = None,
        space: str = "auto",
        backend: str = "faiss",
    ):
        from messai.features.store import FeatureStore

        if home is None:
            from messai.config import load_settings

            home = load_settings().home
        self.home = Path(home)
        self.store = FeatureStore.open(dataset, model, home=self.home, stores=stores)
        if backend not in ("faiss", "lancedb"):
            raise ConfigError(f"unknown backend {backend!r}; choose faiss or lancedb")
        self.normalize, self.kind, self.backend = normalize, kind, backend
        self.space = space  # auto | aspect | layer: see messai.search.aspect_search
        self._label_cache: dict[str, dict[str, Any]] | None = None
        self._scopes: dict[str, Callable[[Sequence[str]], np.ndarray]] = {}
        self.on_notice = on_notice or (lambda m: log.warning("%s", m))
        self._indices: dict[int, Any] = {}
        self._aspects = None
        self._tracks = None
        self._noticed: set[str] = set()

    @property
    def tracks(self):
        """The store's track ids and labels (a cached :class:`TrackCatalogue`: the cold path
        reads one small file instead of the store's tables)."""
        if self._tracks is None:
            from messai.search.cache import store_cache_dir
            from messai.search.catalogue import TrackCatalogue

            self._tracks = TrackCatalogue.for_store(
                store_cache_dir(self.home, self.store), self.store, on_notice=self.on_notice
            )
        return self._tracks

    # ------------------------------------------------------------------ aspects
    def aspect_map(self):
        if self._aspects is None:
            from messai.analysis.aspects import aspect_map

            self._aspects = aspect_map(self.store)
            if any(e.stale for e in self._aspects.values()):
                self.on_notice(
                    f"note: the store changed after the last probe; aspect layers may be outdated (re-run 'mess probe --dataset {self.store.dataset}')"
                )
        return self._aspects

    def get_available_aspects(self) -> dict[str, dict[str, Any]]:
        """Aspect → its layer and evidence (``AspectLayer.to_dict()``), for aspects with a layer."""
        return {a: e.to_dict() for a, e in self.aspect_map().items() if e.layer is not None}

    def caveat(self, parts: list[tuple[str, int, float]], layer: int | None) -> str | None:
        """Why the layers of ``parts`` are not validated for their aspects (None when they
        are); the first use of an unvalidated aspect mapping also goes to ``on_notice``."""
        if layer is not None:
            entry = self.aspect_map().get(parts[0][0])
            if entry is not None and entry.validated and entry.layer == layer:
                return None
            return f"layer {layer} given with --layer: not validated for {parts[0][0]}"
        notes = []
        for name, lay, _ in parts:
            entry = self.aspect_map().get(name)
            if entry is not None and entry.validated:
                continue
            why = "no probe evidence" if entry is None else entry.reason or entry.source
            notes.append(f"{name} → layer {lay} is not validated ({why})")
            if name not in self._noticed:
                self._noticed.add(name)
                self.on_notice(
                    f"note: {name} → layer {lay} is not validated ({why}); "
                    "these results carry no evidence"
                )
        return "; ".join(notes) or None

    def layer_for(self, aspect: str) -> int:
        from messai.analysis.aspects import resolve_aspect

        return int(resolve_aspect(self.aspect_map(), aspect).layer)

    def space_plan(self, aspect, layer):
        """The fitted aspect spaces to search (see `messai.search.aspect_search.space_plan`), or
        None for the whole-layer search."""
        from messai.search.aspect_search import space_plan

        return space_plan(self, aspect, layer)

    # ------------------------------------------------------------------ indices
    def index(self, layer: int):
        if layer not in self._indices:
            from messai.search.cache import load_layer_index

            if not 0 <= layer < self.store.n_layers:
                raise ConfigError(
                    f"layer {layer} out of range: the store's model has layers 0..{self.store.n_layers - 1}"
                )
            if self.backend == "lancedb":
                from messai.search.lancedb_backend import LanceDBLayer

                self._indices[layer] = LanceDBLayer.open(
                    self.store, layer, normalize=self.normalize, on_notice=self.on_notice
                )
                return self._indices[layer]
            self._indices[layer] = load_layer_index(
                self.home,
                self.store,
                layer,
                normalize=self.normalize,
                kind=self.kind,
                on_notice=self.on_notice,
            )
        return self._indices[layer]

    # ------------------------------------------------------------------ queries
    def plan(
        self, aspect: str | Sequence[str], layer: int | None = None
    ) -> list[tuple[str, int, float]]:
        """``(aspect, layer, weight)`` per requested aspect; errors for unknown aspects or layers."""
        from messai.analysis.aspects import ASPECTS

        specs = [aspect] if isinstance(aspect, str) else list(aspect)
        if not specs:
            raise ConfigError("give at least one aspect")
        if layer is not None and len(specs) > 1:
            raise ConfigError(
                "--layer overrides the layer of one aspect; with several aspects each uses its own layer"
            )
        names = [parse_aspect_spec(spec)[0] for spec in specs]
        if len(set(names)) < len(names):
            raise ConfigError(
                f"an aspect is given twice ({', '.join(names)}); give each once, with a weight"
            )
        if layer is not None and not 0 <= layer < self.store.n_layers:
            raise ConfigError(
                f"layer {layer} out of range: the store's model has layers 0..{self.store.n_layers - 1}"
            )
        parts = []
        for spec in specs:
            name, weight = parse_aspect_spec(spec)
            if layer is not None and name not in ASPECTS:
                raise ConfigError(f"unknown aspect {name!r}; known: {', '.join(ASPECTS)}")
            parts.append((name, layer if layer is not None else self.layer_for(name), weight))
        return parts

    # ------------------------------------------------------------------ filters
    def labels_by_id(self) -> dict[str, dict[str, Any]]:
        """Every stored track's labels (read once)."""
        if self._label_cache is None:
            self._label_cache = self.tracks.label_rows()
        return self._label_cache

    def where_scope(self, where: str | None) -> Callable[[Sequence[str]], np.ndarray] | None:
        """A ``--where`` filter as a function: track ids → bool mask (unknown ids: False);
        parsed and checked against the store's labels once per filter text."""
        if where is None:
            return None
        if where not in self._scopes:
            self._scopes[where] = self._new_scope(where)
        return self._scopes[where]

    def _new_scope(self, where: str) -> Callable[[Sequence[str]], np.ndarray]:
        from messai.search.filters import parse_where

        parsed = parse_where(where)
        labels = self.labels_by_id()
        parsed.check_columns({k for d in labels.values() for k in d})
        masks: dict[int, tuple[Sequence[str], np.ndarray]] = {}

        def scope(ids: Sequence[str]) -> np.ndarray:
            # one evaluation per id list (an index's track_ids): batches of queries reuse it
            hit = masks.get(id(ids))
            if hit is None or hit[0] is not ids:
                hit = masks[id(ids)] = (ids, parsed.mask([labels.get(t) for t in ids]))
            return hit[1]

        return scope

    def _check_max_per(self, max_per: tuple[str, int] | None) -> None:
        if max_per is None:
            return
        label, n = max_per
        known = {k for d in self.labels_by_id().values() for k in d}
        if label not in known:
            raise ConfigError(
                f"--max-per: unknown label {label!r} (labels here: {', '.join(sorted(known)) or 'none'})"
            )
        if n < 1:
            raise ConfigError(f"--max-per needs N of at least 1, got {n}")

    def _exclusions(self, track_id: str, exclude_same: Sequence[str]) -> set[str]:
        out: set[str] = set()
        labels = self.tracks.labels(track_id)
        for label in exclude_same:
            value = labels.get(label)
            if value is None:
                known = sorted(
                    {k for t in self.tracks.track_ids()[:1000] for k in self.tracks.labels(t)}
                )
                raise ConfigError(
                    f"--exclude-same {label}: track {track_id!r} has no {label!r} label (labels here: {', '.join(known) or 'none'})"
                )
            out |= {t for t, d in self.labels_by_id().items() if d.get(label) == value}
        out.discard(track_id)
        return out

    def recommend(
        self,
        reference_track: str,
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        exclude_same: Sequence[str] = (),
        where: str | None = None,
        max_per: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """:meth:`recommend_by_id` as the documented JSON dict (``RecommendationResult.to_dict``):
        ``query``, ``aspect``, ``layer``, ``normalize``, ``recommendations`` (rank, track_id,
        similarity, labels...)."""
        return self.recommend_by_id(
            reference_track,
            aspect,
            n_recommendations,
            layer=layer,
            exclude_same=exclude_same,
            where=where,
            max_per=max_per,
        ).to_dict()

    def recommend_audio(
        self,
        path: str | Path,
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        device: str = "auto",
    ) -> dict[str, Any]:
        """:meth:`recommend_by_audio` as the documented JSON dict."""
        return self.recommend_by_audio(
            path, aspect, n_recommendations, layer=layer, device=device
        ).to_dict()

    def recommend_by_id(
        self,
        reference_track: str,
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        exclude_same: Sequence[str] = (),
        where: str | None = None,
        max_per: tuple[str, int] | None = None,
    ) -> RecommendationResult:
        """The ``n_recommendations`` nearest tracks to the stored ``reference_track``.

        Parameters
        ----------
        reference_track : str
            A track of the store; never among the results.
        aspect : str or sequence of str
            ``NAME`` or ``NAME:WEIGHT``; several for weighted fusion of per-layer similarities.
        n_recommendations : int
            At least 1; capped at the store's size.
        layer : int, optional
            Overrides the layer of a single aspect.
        exclude_same : sequence of str
            Label names: tracks sharing the query's value of any of them are left out.
        where, max_per
            As in :meth:`recommend_by_vector`.
        """
        from messai.features.records import nfc

        reference_track = nfc(reference_track)
        self.tracks.require_track(reference_track)
        if n_recommendations < 1:
            raise ConfigError("the number of recommendations must be at least 1")
        n_recommendations = min(n_recommendations, len(self.tracks))  # there are no more to return
        in_spaces = self.space_plan(aspect, layer)
        if in_spaces is not None:
            from messai.search.aspect_search import recommend_in_spaces

            return recommend_in_spaces(
                self,
                in_spaces,
                n_recommendations,
                reference_track=reference_track,
                exclude_ids=self._exclusions(reference_track, exclude_same),
                query={"track_id": reference_track, "dataset": self.store.dataset},
            )
        parts = self.plan(aspect, layer)
        excluded = self._exclusions(reference_track, exclude_same)
        vectors = {lay: self.index(lay).vector_of(reference_track) for _, lay, _ in parts}
        return self.recommend_by_vector(
            vectors,
            aspect,
            n_recommendations,
            layer=layer,
            exclude_ids=excluded | {reference_track},
            normalized=True,
            query={"track_id": reference_track, "dataset": self.store.dataset},
            where=where,
            max_per=max_per,
        )

    def recommend_by_audio(
        self,
        path: str | Path,
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        device: str = "auto",
        where: str | None = None,
        max_per: tuple[str, int] | None = None,
    ) -> RecommendationResult:
        """Recommend for an audio file: it is extracted with the store's model, revision and
        window settings (this loads torch), then :meth:`recommend_by_vector`. A stored track with
        the same content (the file itself, or a copy) is never among the results."""
        from messai.features.extractor import FeatureExtractor

        s, m = self.store.settings, self.store.model
        model = m["id"]
        if m.get("revision") not in (None, "local"):
            model_rev = m.get("requested_revision") or m["revision"]
        else:
            model_rev = None
        fx = FeatureExtractor(
            model,
            revision=model_rev,
            device=device,
            precision=s.get("precision", "float32"),
            segment_seconds=s["segment_seconds"],
            hop_seconds=s["hop_seconds"],
            min_seconds=s["min_seconds"],
            compute_targets=False,
        )
        if self.space_plan(aspect, layer) is None:
            self.plan(aspect, layer)
        n_recommendations = min(max(1, n_recommendations), len(self.tracks))
        now = fx.checkpoint.identity()
        changed = [
            k for k in ("id", "config_hash", "weights_sha256", "revision") if now.get(k) != m.get(k)
        ]
        if changed:
            raise MessError(
                f"the checkpoint {model} is not the one the store was built with ({', '.join(changed)} differ); "
                "an --audio query must be extracted by the same model: re-extract the store, or restore the checkpoint"
            )
        aggregated = fx.extract(path)["aggregated"]  # [n_layers, dim]
        same = self.store.tracks_with_content(path)  # the query's own track, as with --track
        return self.recommend_by_vector(
            aggregated,
            aspect,
            min(n_recommendations, max(1, len(self.tracks) - len(same))),
            layer=layer,
            exclude_ids=same,
            query={"audio": str(path), "dataset": self.store.dataset},
            where=where,
            max_per=max_per,
        )

    def recommend_by_vector(
        self,
        vectors: np.ndarray | Mapping[int, np.ndarray],
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        exclude_ids: Iterable[str] = (),
        normalized: bool = False,
        query: dict[str, Any] | None = None,
        where: str | None = None,
        max_per: tuple[str, int] | None = None,
    ) -> RecommendationResult:
        """The ``n_recommendations`` nearest tracks to query vectors, one per layer searched.

        Parameters
        ----------
        vectors : np.ndarray or mapping of int to np.ndarray
            [n_layers, dim] (a track's aggregated vectors, as the extractor returns them), or
            ``{layer: [dim]}`` holding at least the layers the aspects resolve to.
        aspect : str or sequence of str
            ``NAME`` or ``NAME:WEIGHT``; several for weighted fusion.
        n_recommendations : int
            Results wanted (at least 1).
        layer : int, optional
            Overrides the layer of a single aspect.
        exclude_ids : iterable of str
            Track ids never returned.
        normalized : bool
            The vectors are already normalised by their layer's index (``index.vector_of``);
            by default they are raw and normalised like the corpus.
        query : dict, optional
            Echoed as ``query`` in the result (default ``{"dataset": ...}``).
        where : str, optional
            A filter over the track labels (``"composer = 'Bach' AND year >= 1900"``; grammar in
            :mod:`messai.search.filters`), applied inside the search: k come back when k match.
        max_per : (str, int), optional
            ``(label, n)``: at most n results per value of that label (diversity).
        """
        if n_recommendations < 1:
            raise ConfigError("the number of recommendations must be at least 1")
        in_spaces = self.space_plan(aspect, layer)
        if in_spaces is not None:
            from messai.search.aspect_search import recommend_in_spaces

            if isinstance(vectors, Mapping) and normalized:
                raise ConfigError("aspect spaces need the raw layer vectors of the query")
            return recommend_in_spaces(
                self,
                in_spaces,
                n_recommendations,
                vectors=vectors,
                exclude_ids=exclude_ids,
                query=query,
            )
        parts = self.plan(aspect, layer)
        excluded = set(exclude_ids)
        scope = self.where_scope(where)
        self._check_max_per(max_per)
        total = len(self.tracks)
        want = n_recommendations if max_per is None else min(total, 4 * n_recommendations)
        while True:
            sims, ids, per_layer = self._search(parts, vectors, want, excluded, scope, normalized)
            if max_per is None:
                break
            labels = self.labels_by_id()
            from messai.search.filters import limit_per_label

            keep = limit_per_label([labels.get(t) for t in ids], *max_per)
            if len(keep) >= n_recommendations or len(ids) < want or want >= total:
                keep = keep[:n_recommendations]
                sims, ids = sims[keep], [ids[i] for i in keep]
                per_layer = None if per_layer is None else per_layer[keep]
                break
            want = min(total, 4 * want)
        recs = [
            Recommendation(
                rank,
                tid,
                float(sim),
                self.tracks.labels(tid),
                None if per_layer is None else [float(v) for v in per_layer[rank - 1]],
            )
            for rank, (tid, sim) in enumerate(zip(ids, sims), start=1)
        ]
        return RecommendationResult(
            query if query is not None else {"dataset": self.store.dataset},
            [p[0] for p in parts],
            [p[1] for p in parts],
            [p[2] for p in parts],
            self.normalize,
            recs,
            caveat=self.caveat(parts, layer),
        )

    def _search(self, parts, vectors, k: int, excluded: set[str], scope, normalized: bool):
        """(similarities [k'], ids, per-layer similarities [k', parts] or None) of one query."""
        if len(parts) == 1:
            index = self.index(parts[0][1])
            qn = np.asarray(vectors[parts[0][1]])
            qn = qn if normalized else index.transform(qn)[0]
            sims, ids = index.nearest(qn, k, exclude_ids=excluded, scope=scope)
            finite = np.isfinite(np.asarray(sims, dtype=np.float64))  # never NaN/inf
            if not finite.all():
                sims, ids = np.asarray(sims)[finite], [t for t, f in zip(ids, finite) if f]
            return sims, ids, None
        if self.backend != "faiss":
            raise ConfigError(
                "fusing several aspects needs the faiss backend (--backend lancedb searches one aspect)"
            )
        from messai.search.fusion import fuse

        res = fuse(
            [(w, self.index(lay), np.asarray(vectors[lay])) for _, lay, w in parts],
            k,
            exclude_ids=excluded,
            normalized=normalized,
            scope=scope,
        )
        sims, ids, per_layer = res.similarities, res.track_ids, res.layer_similarities
        finite = np.isfinite(np.asarray(sims, dtype=np.float64))  # never a NaN/inf similarity
        if not finite.all():
            sims = np.asarray(sims)[finite]
            ids = [t for t, f in zip(ids, finite) if f]
            per_layer = None if per_layer is None else np.asarray(per_layer)[finite]
        return sims, ids, per_layer
