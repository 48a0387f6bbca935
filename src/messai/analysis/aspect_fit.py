"""Fit aspect spaces on a feature store.

``fit_aspect_space(store, "spectral_brightness")`` reads every window of the chosen layer(s)
with the aspect's proxy targets (or a label column), fits the space
(:mod:`messai.analysis.aspect_space`) and records the store fingerprint it was fitted on
(``store.fingerprint(probe_inputs=True)``, like the probe). Its pieces live beside it: what
defines an aspect (:mod:`~messai.analysis.aspect_sources`), the layer search
(:mod:`~messai.analysis.layer_search`), the control (:mod:`~messai.analysis.space_control`)
and the store's ``aspect_spaces.json`` (:mod:`~messai.analysis.space_file`: ``save_space``,
``load_spaces``, ...), whose names this module re-exports.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from messai.analysis.aspect_sources import SpaceSource, parse_sources
from messai.analysis.aspect_space import AspectSpace, fit_ridge_span, fit_shrinkage_lda
from messai.analysis.layer_search import (
    _score,
    _window_matrix,
    lda_cv_accuracy,
    lda_cv_hits,
    search_layers,
    shrinkage_lda_coef,
)
from messai.analysis.results import DEFAULT_MIN_MARGIN
from messai.analysis.space_control import _control_score, _probe_control, _probe_min_r2
from messai.analysis.space_file import (
    FORMAT,
    SIDE_FILE,
    fit_suggestion,
    load_spaces,
    remove_space,
    save_space,
    space_file_problem,
    verify_spaces,
)
from messai.analysis.space_validation import held_out_interval, validate_space
from messai.errors import ConfigError

__all__ = [
    "FORMAT",
    "SIDE_FILE",
    "SpaceSource",
    "fit_aspect_space",
    "fit_suggestion",
    "lda_cv_accuracy",
    "lda_cv_hits",
    "load_spaces",
    "parse_sources",
    "remove_space",
    "save_space",
    "search_layers",
    "shrinkage_lda_coef",
    "space_file_problem",
    "verify_spaces",
]


def fit_aspect_space(
    store,
    aspect: str,
    *,
    sources: list[str] | None = None,
    layers: list[int] | None = None,
    group_by: str = "track",
    folds: int = 5,
    seed: int = 0,
    track_ids: list[str] | None = None,
    control_store: str | None = None,
    min_r2: float | None = None,
    n_bootstrap: int = 1000,
    progress: Callable[[str, int, int], None] | None = None,
) -> AspectSpace:
    """Fit ``aspect``'s space on the store's windows.

    Parameters
    ----------
    sources
        ``--from`` specs (see `parse_sources`).
    layers
        Layers to concatenate. Default: the probe's layer for a built-in aspect (``mess
        probe``), else the single layer with the best grouped-CV score (R² or accuracy).
    group_by
        ``track`` or a label: no group on both sides of a CV split.
    track_ids
        Fit on these tracks only (default all; the benchmark fits on some groups).
    control_store
        Dataset name of the same tracks extracted with a random-weights model: the space fitted
        the same way there is the control its held-out score must clear. Default: the control
        store the store's probe used, if any; ``""`` for none.
    min_r2
        R² threshold of a target space (default: the probe's, else 0.5).
    n_bootstrap
        Group resamples of the held-out score's confidence interval.
    progress
        Called as ``progress(step, done, total)``: after each layer of the search (step
        ``"searching layers"``) and around the final fit (``"fitting the space"``).

    The result's ``evidence["validation"]`` says whether the space is validated and why not
    (:func:`messai.analysis.space_validation.validate_space`).
    """
    from messai.analysis.discovery import probe_inputs
    from messai.features.store import now_iso

    source = parse_sources(sources, aspect, store)
    ids = track_ids if track_ids is not None else store.track_ids()
    if source.kind == "targets":
        inputs = probe_inputs(store, targets=list(source.names), group_by=group_by, track_ids=ids)
        cols = [np.asarray(inputs.targets[t]).reshape(len(inputs.groups), -1) for t in source.names]
        Y = np.concatenate(cols, axis=1)
        names = [t for t, c in zip(source.names, cols) for _ in range(c.shape[1])]
        segments, groups, labels = inputs.features, inputs.groups, None
    else:
        column = source.names[0]
        raw = [store.labels(t).get(column) for t in ids]
        missing = [t for t, v in zip(ids, raw) if v is None]
        if missing:
            raise ConfigError(
                f"label {column!r}: {len(missing)} of {len(ids)} tracks lack it (e.g. {missing[0]!r})"
            )
        data = store.read_windows(track_ids=list(ids))
        n_seg = data["n_segments"]
        segments, Y, names = data["segments"], None, None
        labels = np.repeat(np.asarray(raw, dtype=object), n_seg).astype(str)
        key = ids if group_by == "track" else [store.labels(t).get(group_by) for t in ids]
        if any(k is None for k in key):
            raise ConfigError(f"--group-by {group_by}: some tracks have no {group_by!r} label")
        groups = np.repeat(np.asarray(key, dtype=object), n_seg).astype(str)
    layer_scores = None
    if layers is None:
        layers = _default_layers(store, aspect, source)
    if layers is None:  # choose by grouped CV, one layer at a time
        hits_by_layer: dict[int, np.ndarray] = {}
        searched = search_layers(
            segments,
            source,
            Y,
            names,
            labels,
            groups,
            folds=folds,
            seed=seed,
            progress=progress,
            hits=hits_by_layer,
        )
        layer_scores = {k: round(_score(ev), 4) for k, ev in searched.items()}
        layers = [max(layer_scores, key=lambda k: layer_scores[k])]
    bad = [la for la in layers if not 0 <= la < store.n_layers]
    if bad:
        raise ConfigError(f"layer {bad[0]} out of range: the store has 0..{store.n_layers - 1}")
    X = _window_matrix(segments, list(layers))
    if progress is not None:
        progress("fitting the space", 0, 1)
    if source.kind == "targets":
        method = "ridge_span"
        mean, comp, evidence, oof = fit_ridge_span(
            X, Y, groups, output_names=names, folds=folds, seed=seed, return_oof=True
        )
    elif layer_scores is not None:
        # the search scored the chosen layer with the same classifier: reuse its held-out hits
        method = "shrinkage_lda"
        mean, comp, evidence = fit_shrinkage_lda(
            X, labels, groups, folds=folds, seed=seed, evaluate=False
        )
        evidence = {**evidence, **searched[layers[0]]}
        oof = hits_by_layer[layers[0]]
    else:
        method = "shrinkage_lda"
        mean, comp, evidence, oof = fit_shrinkage_lda(
            X, labels, groups, folds=folds, seed=seed, return_oof=True
        )
    if progress is not None:
        progress("fitting the space", 1, 1)
    evidence = {**evidence, "group_by": group_by}
    control_name = control_store if control_store is not None else _probe_control(store)
    control_score = None
    if control_name:
        control_score = _control_score(
            store, control_name, ids, list(layers), source, Y, names, labels, groups, folds, seed
        )
    value, low, high = held_out_interval(
        source.kind, oof, groups, n_bootstrap=n_bootstrap, seed=seed
    )
    evidence["validation"] = validate_space(
        source.kind,
        value,
        low,
        high,
        min_r2=min_r2 if min_r2 is not None else _probe_min_r2(store),
        chance=evidence.get("chance"),
        control=control_score,
        control_store=control_name or None,
        margin=DEFAULT_MIN_MARGIN,
    )
    if layer_scores is not None:
        evidence["layer_scores"] = {str(k): v for k, v in layer_scores.items()}
    return AspectSpace(
        aspect,
        source.kind,
        list(source.names),
        [int(x) for x in layers],
        method,
        mean,
        comp,
        evidence,
        store.fingerprint(probe_inputs=True) if track_ids is None else None,
        now_iso(),
    )


def _default_layers(store, aspect: str, source: SpaceSource) -> list[int] | None:
    from messai.analysis.aspects import aspect_map

    if source.kind != "targets":
        return None
    entry = aspect_map(store).get(aspect)
    if entry is None or entry.layer is None or entry.source.startswith("prototype"):
        return None
    return [int(entry.layer)]
