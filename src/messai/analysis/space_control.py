"""The control an aspect space must clear: the same fit on a random-weights store's windows,
and the probe settings (control store, R² threshold) a fit inherits."""

from __future__ import annotations

from typing import Any

from messai.analysis.aspect_sources import SpaceSource
from messai.analysis.aspect_space import fit_ridge_span, fit_shrinkage_lda
from messai.analysis.layer_search import _score, _window_matrix
from messai.errors import ConfigError


def _fit_on(X, source: SpaceSource, Y, names, labels, groups, *, folds, seed):
    if source.kind == "targets":
        return "ridge_span", fit_ridge_span(
            X, Y, groups, output_names=names, folds=folds, seed=seed
        )
    return "shrinkage_lda", fit_shrinkage_lda(X, labels, groups, folds=folds, seed=seed)


def _probe_meta(store) -> dict[str, Any]:
    from messai.analysis.aspects import load_probe

    return load_probe(store)[1] or {}


def _probe_control(store) -> str | None:
    return _probe_meta(store).get("control_store")


def _probe_min_r2(store) -> float:
    from messai.analysis.results import DEFAULT_MIN_R2

    return float(_probe_meta(store).get("min_r2", DEFAULT_MIN_R2))


def _control_score(store, control_name, ids, layers, source, Y, names, labels, groups, folds, seed):
    """The held-out score of the same fit on the random-weights control store's windows."""
    from messai.features.store import FeatureStore

    control = FeatureStore.open(control_name) if isinstance(control_name, str) else control_name
    missing = [t for t in ids if t not in control]
    if missing:
        raise ConfigError(
            f"control store {control.dataset!r} lacks {len(missing)} of the {len(ids)} tracks "
            f"(e.g. {missing[0]!r}); extract them with the random-weights model"
        )
    data = control.read_windows(track_ids=list(ids))
    segments = data["segments"]
    if len(segments) != len(groups):
        raise ConfigError(
            f"control store {control.dataset!r} has other windows than {store.dataset!r} "
            "(different segment settings); extract it with the same settings"
        )
    X = _window_matrix(segments, layers)
    _, (_, _, ev) = _fit_on(X, source, Y, names, labels, groups, folds=folds, seed=seed)
    return _score(ev)
