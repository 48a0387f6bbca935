"""Recommendations: the nearest tracks for one musical aspect (or a weighted mix).

An aspect resolves to a space (:mod:`messai.search.spaces`): its fitted aspect space, or the
layer the store's probe results map it to (``messai.analysis.aspects``). Every query (a stored
track, examples, an audio file, raw vectors) ends in :meth:`LayerBasedRecommender.search`, the
one query path. The query is never among its results. Only ``recommend_by_audio`` (a file
outside the store) loads torch; everything else needs numpy and faiss alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from messai.errors import ConfigError
from messai.search.audio_query import AudioQueries
from messai.search.records import (  # noqa: F401 - re-exported: the public names live here too
    RESULT_FIELDS,
    Part,
    Recommendation,
    RecommendationResult,
    flat_row,
    parse_aspect_spec,
    split_aspect_specs,
)
from messai.search.scopes import LabelScopes

log = logging.getLogger(__name__)


class LayerBasedRecommender(LabelScopes, AudioQueries):
    """Recommend tracks of a dataset by aspect (the prototype's API, made honest).

    >>> rec = LayerBasedRecommender(dataset="smd")  # doctest: +SKIP
    >>> rec.recommend(reference_track="Beethoven_Op027No1-01", aspect="spectral_brightness")  # doctest: +SKIP

    Every query goes through :meth:`recommend_by_vector`: :meth:`recommend_by_id` passes the
    track's indexed vectors, :meth:`recommend_by_audio` the vectors extracted from a file.
    ``recommend`` and ``recommend_audio`` return the same answers as JSON-ready dicts.
    The label filters (:class:`~messai.search.scopes.LabelScopes`) and the audio-file queries
    (:class:`~messai.search.audio_query.AudioQueries`) are mixed in from their own modules.
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
        self.space = space  # auto | aspect | layer: see messai.search.spaces
        self._label_cache: dict[str, dict[str, Any]] | None = None
        self._scopes: dict[str, Callable[[Sequence[str]], np.ndarray]] = {}
        self.on_notice = on_notice or (lambda m: log.warning("%s", m))
        self._indices: dict[int, Any] = {}
        self._aspects = None
        self._fitted: dict[str, tuple[Any, bool]] | None = None
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

    def fitted_spaces(self) -> dict[str, tuple[Any, bool]]:
        """The store's fitted aspect spaces: name → (``AspectSpace``, stale?), read once."""
        if self._fitted is None:
            from messai.analysis.space_file import load_spaces

            self._fitted = load_spaces(self.store)
        return self._fitted

    def _layer_caveat(self, name: str, lay: int, layer: int | None) -> str | None:
        entry = self.aspect_map().get(name)
        if layer is not None:
            if entry is not None and entry.validated and entry.layer == layer:
                return None
            return f"layer {layer} given with --layer: not validated for {name}"
        if entry is not None and entry.validated:
            return None
        if entry is None and name in self.fitted_spaces():
            why = "a label aspect: its evidence is for its fitted space, not the whole layer"
        else:
            why = "no probe evidence" if entry is None else entry.reason or entry.source
        return f"{name} → layer {lay} is not validated ({why})"

    def _space_caveat(self, space, stale: bool) -> str | None:
        from messai.analysis.space_validation import space_validation

        ok, why = space_validation(space)
        notes = [] if ok else [f"{space.name} space is not validated ({why})"]
        if stale:
            notes.append(f"{space.name} space was fitted before the store changed")
        return "; ".join(notes) or None

    def caveat(self, parts: list[tuple[str, int, float]], layer: int | None) -> str | None:
        """Why the layers of ``parts`` (``(aspect, layer, weight)``) are not validated for
        their aspects (None when they are)."""
        notes = [self._layer_caveat(name, lay, layer) for name, lay, _ in parts]
        return "; ".join(n for n in notes if n) or None

    def layer_for(self, aspect: str) -> int:
        """The layer searched for ``aspect`` as a whole layer: its probe layer, or for an aspect
        with a fitted space only (a label aspect) the layer that space was fitted on."""
        from messai.analysis.aspects import resolve_aspect

        entry = self.aspect_map().get(aspect)
        if (entry is None or entry.layer is None) and aspect in self.fitted_spaces():
            layers = self.fitted_spaces()[aspect][0].layers
            if len(layers) > 1:
                raise ConfigError(
                    f"the space of {aspect!r} concatenates layers {','.join(map(str, layers))}: "
                    f"give --layer N (one of them) to search a whole layer"
                )
            return int(layers[0])
        if entry is None or entry.layer is None:
            spaces = sorted(self.fitted_spaces())
            try:
                resolve_aspect(self.aspect_map(), aspect)
            except ConfigError as exc:
                more = f"; fitted spaces: {', '.join(spaces)}" if spaces else ""
                raise ConfigError(f"{exc}{more}") from None
        return int(entry.layer)

    def plan_parts(self, aspect: str | Sequence[str], layer: int | None = None) -> list[Part]:
        """The spaces a query searches: one :class:`Part` per requested aspect (see the routing
        in :mod:`messai.search.spaces`); errors for unknown aspects, layers or modes."""
        from messai.search.spaces import SPACE_MODES, LayerSpace

        if self.space not in SPACE_MODES:
            raise ConfigError(
                f"unknown space {self.space!r}; choose one of {', '.join(SPACE_MODES)}"
            )
        parsed = [parse_aspect_spec(s) for s in split_aspect_specs(aspect)]
        if not parsed:
            raise ConfigError("give at least one aspect")
        names = [n for n, _ in parsed]
        if len(set(names)) < len(names):
            raise ConfigError(
                f"an aspect is given twice ({', '.join(names)}); give each once, with a weight"
            )
        if layer is not None:
            if self.space == "aspect":
                raise ConfigError(
                    "--layer searches a whole layer; it cannot be used with --space aspect"
                )
            if len(parsed) > 1:
                raise ConfigError(
                    "--layer overrides the layer of one aspect; with several aspects each uses its own layer"
                )
            self._check_layer(layer)
            from messai.analysis.aspects import ASPECTS

            name = parsed[0][0]
            if name not in ASPECTS and name not in self.fitted_spaces():
                spaces = sorted(self.fitted_spaces())
                raise ConfigError(
                    f"unknown aspect {name!r}; known: {', '.join(ASPECTS)}"
                    + (f"; fitted spaces: {', '.join(spaces)}" if spaces else "")
                )
        if self.space != "layer" and layer is None:
            fitted = self._fitted_parts(parsed)
            if fitted is not None:
                return fitted
        parts = []
        for name, weight in parsed:
            lay = layer if layer is not None else self.layer_for(name)
            self._check_layer(lay)
            caveat = self._layer_caveat(name, lay, layer)
            space = LayerSpace(self.index(lay), lay)
            parts.append(Part(name, weight, space, caveat, notice=layer is None))
        return parts

    def _fitted_parts(self, parsed: list[tuple[str, float]]) -> list[Part] | None:
        from messai.search.spaces import load_fitted

        spaces = self.fitted_spaces()
        missing = [n for n, _ in parsed if n not in spaces]
        if missing:
            fit = self._fit_command(missing[0])
            if self.space == "aspect":
                raise ConfigError(f"no fitted space for aspect {missing[0]!r}; {fit}")
            mapped = self.aspect_map()
            if any(mapped.get(n) is None or mapped[n].layer is None for n in missing):
                return None  # no layer either: the whole-layer plan says so, in one line
            self._notice_once(
                f"note: no fitted space for {', '.join(missing)}: searching the whole layer ({fit})"
            )
            return None
        parts = []
        for name, weight in parsed:
            space, stale = spaces[name]
            if stale:
                self._notice_once(
                    f"note: the space of {name!r} was fitted before the store changed; "
                    f"refit it: {self._fit_command(name, refit=True)}"
                )
            fitted = load_fitted(self, space, stale=stale)
            parts.append(Part(name, weight, fitted, self._space_caveat(space, stale)))
        return parts

    def _fit_command(self, name: str, *, refit: bool = False) -> str:
        """A 'mess aspects fit' command that works for ``name``, or what to do instead."""
        from shlex import quote

        from messai.analysis.space_file import fit_suggestion

        return fit_suggestion(self.store, name, refit=refit, quote=quote)

    def _notice_once(self, message: str) -> None:
        if message not in self._noticed:
            self._noticed.add(message)
            self.on_notice(message)

    def plan(
        self, aspect: str | Sequence[str], layer: int | None = None
    ) -> list[tuple[str, int, float]]:
        """``(aspect, layer, weight)`` per requested aspect (the first layer of a fitted space);
        errors for unknown aspects or layers."""
        return [(p.aspect, p.space.layer, p.weight) for p in self.plan_parts(aspect, layer)]

    def space_plan(self, aspect, layer):
        """``[(aspect, AspectSpace, weight)]`` when the query searches fitted aspect spaces,
        else None (whole layers)."""
        parts = self.plan_parts(aspect, layer)
        if parts[0].space.kind != "aspect":
            return None
        return [(p.aspect, p.space.space, p.weight) for p in parts]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.store.n_layers:
            raise ConfigError(
                f"layer {layer} out of range: the store's model has layers 0..{self.store.n_layers - 1}"
            )

    # ------------------------------------------------------------------ indices
    def index(self, layer: int):
        if layer not in self._indices:
            from messai.search.cache import load_layer_index

            self._check_layer(layer)
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
        explain: bool = False,
        offset: int = 0,
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
            explain=explain,
            offset=offset,
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
        explain: bool = False,
        offset: int = 0,
    ) -> RecommendationResult:
        """The ``n_recommendations`` nearest tracks to the stored ``reference_track``.

        Parameters
        ----------
        reference_track : str
            A track of the store; never among the results.
        aspect : str or sequence of str
            ``NAME`` or ``NAME:WEIGHT`` (several, or comma-separated, for weighted fusion).
        n_recommendations : int
            At least 1; capped at the store's size.
        layer : int, optional
            Overrides the layer of a single aspect.
        exclude_same : sequence of str
            Label names: tracks sharing the query's value of any of them are left out.
        where, max_per, explain, offset
            As in :meth:`search`.
        """
        from messai.features.records import nfc

        reference_track = nfc(reference_track)
        self.tracks.require_track(reference_track)
        parts = self.plan_parts(aspect, layer)
        return self.search(
            parts,
            [p.space.query_of(reference_track) for p in parts],
            n_recommendations,
            exclude_ids=self._exclusions(reference_track, exclude_same) | {reference_track},
            query={"track_id": reference_track, "dataset": self.store.dataset},
            where=where,
            max_per=max_per,
            explain_track=reference_track if explain else None,
            offset=offset,
        )

    def recommend_by_examples(
        self,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        where: str | None = None,
        max_per: tuple[str, int] | None = None,
        explain: bool = False,
        offset: int = 0,
    ) -> RecommendationResult:
        """Tracks like the ``positive`` examples and unlike the ``negative`` ones (a playlist
        seed: "more like these, less like those").

        In each space searched the query is the mean of the positives' search vectors minus the
        mean of the negatives' (a layer's normalised vectors, made unit length again; a fitted
        space's coordinates, centred on its fit's mean); weighted aspects fuse as for one
        track. No given example is ever returned. ``offset`` pages: ``offset=k`` returns ranks
        k+1 … k+n of the same query. ``explain`` needs exactly one positive and no negative.
        """
        from messai.features.records import nfc

        pos = [nfc(t) for t in positive]
        neg = [nfc(t) for t in negative]
        if not pos:
            raise ConfigError("give at least one positive example track")
        both = sorted(set(pos) & set(neg))
        if both:
            raise ConfigError(
                f"track {both[0]!r} is given as both a positive and a negative example"
            )
        for t in pos + neg:
            self.tracks.require_track(t)
        if explain and (len(pos) != 1 or neg):
            raise ConfigError("explain needs exactly one positive example and no negative ones")
        parts = self.plan_parts(aspect, layer)
        queries = [
            p.space.combine([p.space.query_of(t) for t in pos], [p.space.query_of(t) for t in neg])
            for p in parts
        ]
        query: dict[str, Any] = {"positive": pos, "negative": neg, "dataset": self.store.dataset}
        if len(pos) == 1 and not neg:
            query = {"track_id": pos[0], **query}
        return self.search(
            parts,
            queries,
            n_recommendations,
            exclude_ids=set(pos) | set(neg),
            query=query,
            where=where,
            max_per=max_per,
            explain_track=pos[0] if explain else None,
            offset=offset,
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
        offset: int = 0,
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
            by default they are raw and normalised like the corpus. Fitted aspect spaces need
            the raw vectors.
        query : dict, optional
            Echoed as ``query`` in the result (default ``{"dataset": ...}``).
        where, max_per, offset
            As in :meth:`search`.
        """
        parts = self.plan_parts(aspect, layer)
        if normalized and any(p.space.kind != "layer" for p in parts):
            raise ConfigError("aspect spaces need the raw layer vectors of the query")
        queries = [
            np.asarray(vectors[p.space.layer], dtype=np.float32)
            if normalized
            else p.space.encode(vectors)
            for p in parts
        ]
        return self.search(
            parts,
            queries,
            n_recommendations,
            exclude_ids=set(exclude_ids),
            query=query if query is not None else {"dataset": self.store.dataset},
            where=where,
            max_per=max_per,
            offset=offset,
        )

    # ------------------------------------------------------------------ the one path
    def search(
        self,
        parts: list[Part],
        queries: list[np.ndarray],
        n_recommendations: int,
        *,
        exclude_ids: set[str],
        query: dict[str, Any],
        where: str | None = None,
        max_per: tuple[str, int] | None = None,
        explain_track: str | None = None,
        offset: int = 0,
    ) -> RecommendationResult:
        """The one query path: every query of every space (a layer, fused layers, fitted
        aspect spaces) ends here, and everything below is applied here, once.

        Parameters
        ----------
        parts, queries
            The spaces (:meth:`plan_parts`) and one query vector per space.
        n_recommendations : int
            ``-k``: results wanted (at least 1); fewer come back when fewer tracks match.
        exclude_ids : set of str
            Never returned: the query itself, its same-content tracks, ``--exclude-same``,
            the examples. Removed tracks (tombstones) are never returned by an index.
        where : str, optional
            A filter over the track labels (``"composer = 'Bach' AND year >= 1900"``; grammar in
            :mod:`messai.search.filters`), applied inside each space's search: k come back
            when k match.
        max_per : (str, int), optional
            ``(label, n)``: at most n results per value of that label (diversity).
        explain_track : str, optional
            Fill in each result's explanation relative to this stored track (``--explain``).
        offset : int
            Skip the first ``offset`` results (paging: ranks continue from ``offset + 1``).
        """
        if n_recommendations < 1:
            raise ConfigError("the number of recommendations must be at least 1")
        if offset < 0:
            raise ConfigError(f"offset must be at least 0, got {offset}")
        scope = self.where_scope(where)
        self._check_max_per(max_per)
        total = len(self.tracks)
        end = offset + n_recommendations
        want = min(total, end if max_per is None else 4 * end)
        while True:
            sims, ids, per_part = self._nearest(parts, queries, max(want, 1), exclude_ids, scope)
            if max_per is None:
                break
            from messai.search.filters import limit_per_label

            labels = self.labels_by_id()
            keep = limit_per_label([labels.get(t) for t in ids], *max_per)
            if len(keep) >= end or len(ids) < want or want >= total:
                sims, ids = sims[keep], [ids[i] for i in keep]
                per_part = None if per_part is None else per_part[keep]
                break
            want = min(total, 4 * want)
        sims, ids = sims[offset:end], ids[offset:end]
        per_part = None if per_part is None else per_part[offset:end]
        recs = [
            Recommendation(
                rank,
                tid,
                float(sim),
                self.tracks.labels(tid),
                None if per_part is None else [float(v) for v in per_part[rank - offset - 1]],
            )
            for rank, (tid, sim) in enumerate(zip(ids, sims), start=offset + 1)
        ]
        caveats = [p.caveat for p in parts if p.caveat]
        for p in parts:
            if p.caveat and p.notice:
                self._notice_once(f"note: {p.caveat}; these results carry no evidence")
        fitted = parts[0].space.kind == "aspect"
        result = RecommendationResult(
            query,
            [p.aspect for p in parts],
            [p.space.layer for p in parts],
            [p.weight for p in parts],
            self.normalize,
            recs,
            spaces=[p.space.info() for p in parts] if fitted else None,
            caveat="; ".join(caveats) or None,
        )
        if explain_track is not None:
            from messai.search.explain import explain_result

            result = explain_result(self, result, query_track=explain_track)
        return result

    def _nearest(self, parts: list[Part], queries, k: int, excluded: set[str], scope):
        """(similarities [k'], ids, per-part similarities [k', parts] or None) of one query."""
        if len(parts) == 1:
            sims, ids = parts[0].space.nearest(queries[0], k, exclude_ids=excluded, scope=scope)
            sims = np.asarray(sims)
            finite = np.isfinite(sims.astype(np.float64))  # never NaN/inf
            if not finite.all():
                sims, ids = sims[finite], [t for t, f in zip(ids, finite) if f]
            return sims, list(ids), None
        if self.backend != "faiss":
            raise ConfigError(
                "fusing several aspects needs the faiss backend (--backend lancedb searches one aspect)"
            )
        from messai.search.fusion import fuse

        res = fuse(
            [(p.weight, p.space, q) for p, q in zip(parts, queries)],
            k,
            exclude_ids=excluded,
            normalized=True,  # the queries are the spaces' search vectors already
            scope=scope,
        )
        sims, ids, per_part = res.similarities, res.track_ids, res.layer_similarities
        finite = np.isfinite(np.asarray(sims, dtype=np.float64))  # never a NaN/inf similarity
        if not finite.all():
            sims = np.asarray(sims)[finite]
            ids = [t for t, f in zip(ids, finite) if f]
            per_part = np.asarray(per_part)[finite]
        return sims, ids, per_part
