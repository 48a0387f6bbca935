"""Fit aspect spaces on a feature store and keep them with it (``aspect_spaces.json``).

``fit_aspect_space(store, "spectral_brightness")`` reads every window of the chosen layer(s)
with the aspect's proxy targets (or a label column), fits the space
(:mod:`messai.analysis.aspect_space`) and records the store fingerprint it was fitted on
(``store.fingerprint(probe_inputs=True)``, like the probe). ``save_space`` writes it into the
store's ``aspect_spaces.json`` (one entry per aspect, replacing an older one), ``load_spaces``
reads them back and marks each fresh or stale.

The side file (documented in ``docs/aspect-spaces.md``)::

    {"format": "mess-aspect-spaces", "version": 1,
     "spaces": {NAME: {"aspect", "kind", "sources", "layers", "method", "dim", "evidence",
                       "fingerprint", "created", "mean": [...], "components": [[...], ...]}}}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.analysis.aspect_space import (
    AspectSpace,
    _folds,
    _standardise,
    cv_r2_by_name,
    dict_checksum,
    fit_ridge_span,
    fit_shrinkage_lda,
    ridge_cv,
)
from messai.analysis.results import DEFAULT_MIN_MARGIN
from messai.analysis.space_validation import held_out_interval, validate_space
from messai.errors import ConfigError

SIDE_FILE = "aspect_spaces.json"
FORMAT = "mess-aspect-spaces"


@dataclass(frozen=True)
class SpaceSource:
    """What defines an aspect: ``kind`` ``"targets"`` (``names``: target names) or ``"label"``
    (``names``: one label column)."""

    kind: str
    names: tuple[str, ...]


def parse_sources(specs: list[str] | None, aspect: str, store=None) -> SpaceSource:
    """``["target:spectral_centroid", "target:spectral_rolloff"]`` or ``["label:instrument"]``;
    without specs, the built-in aspect's targets, or the label column named like the aspect."""
    from messai.analysis.aspects import ASPECTS
    from messai.features.targets import ASPECTS_OF_TARGETS, TARGETS

    if not specs:
        if aspect in ASPECTS:
            names = tuple(t for t, a in ASPECTS_OF_TARGETS.items() if a == aspect)
            if store is not None:  # the aspect's targets this store has for every track
                stored = [set(e.targets) for e in store.iter_entries()]
                have = set.intersection(*stored) if stored else set()
                if not have & set(names):
                    raise ConfigError(
                        f"dataset {store.dataset!r} has none of {aspect}'s targets ({', '.join(names)}); "
                        f"run 'mess targets --dataset {store.dataset}'"
                    )
                names = tuple(t for t in names if t in have)
            return SpaceSource("targets", names)
        if store is not None and any(aspect in store.labels(t) for t in store.track_ids()[:50]):
            return SpaceSource("label", (aspect,))
        raise ConfigError(
            f"aspect {aspect!r} is neither built in ({', '.join(ASPECTS)}) nor a label of the "
            "dataset; say what defines it with --from target:NAME or --from label:COLUMN"
        )
    kinds, names = set(), []
    for spec in specs:
        kind, _, name = spec.partition(":")
        if kind not in ("target", "label") or not name:
            raise ConfigError(f"--from {spec!r}: expected target:NAME or label:COLUMN")
        if kind == "target" and name not in TARGETS:
            raise ConfigError(f"--from {spec!r}: unknown target; known: {', '.join(TARGETS)}")
        kinds.add(kind)
        names.append(name)
    if len(kinds) > 1 or (kinds == {"label"} and len(names) > 1):
        raise ConfigError("--from takes target:NAME (one or more) or a single label:COLUMN")
    return SpaceSource("targets" if kinds == {"target"} else "label", tuple(names))


def _window_matrix(segments: np.ndarray, layers: list[int]) -> np.ndarray:
    return np.asarray(segments[:, layers], dtype=np.float64).reshape(len(segments), -1)


def _fit_on(X, source: SpaceSource, Y, names, labels, groups, *, folds, seed):
    if source.kind == "targets":
        return "ridge_span", fit_ridge_span(
            X, Y, groups, output_names=names, folds=folds, seed=seed
        )
    return "shrinkage_lda", fit_shrinkage_lda(X, labels, groups, folds=folds, seed=seed)


def fit_suggestion(store, name: str, *, refit: bool = False, quote=str) -> str:
    """What to run to fit (or refit) a space for ``name``: a command that works as given (a
    built-in aspect, or a label of the store: ``--from label:NAME``), else what is missing."""
    from messai.analysis.aspects import ASPECTS

    base = f"mess aspects fit --dataset {quote(store.dataset)} --aspect {quote(name)}"
    if refit:
        spaces = _read(store)
        d = spaces.get(name) or {}
        if d.get("kind") == "label" and d.get("sources"):
            base += f" --from label:{quote(d['sources'][0])}"
        return base
    if name in ASPECTS:
        return f"fit one: {base}"
    if any(name in store.labels(t) for t in store.track_ids()[:50]):
        return f"fit one: {base} --from label:{quote(name)}"
    return (
        f"{name!r} is neither a built-in aspect ({', '.join(ASPECTS)}) nor a label of "
        f"{store.dataset!r}; to fit a space for it say what defines it: {base} --from target:NAME"
    )


def _score(evidence: dict[str, Any]) -> float:
    if "cv_r2" in evidence:
        return float(np.nanmean(list(evidence["cv_r2"].values())))
    return float(evidence.get("cv_accuracy") or 0.0)


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


def search_layers(
    segments: np.ndarray,
    source: SpaceSource,
    Y: np.ndarray | None,
    names: list[str] | None,
    labels: np.ndarray | None,
    groups: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    hits: dict[int, np.ndarray] | None = None,
) -> dict[int, dict[str, Any]]:
    """Layer → the grouped-CV evidence of a space fitted on that layer alone (``segments``:
    ``[n_windows, n_layers, dim]``): ``cv_r2`` of the ridge probe for targets, ``cv_accuracy``
    and ``folds`` of the shrinkage-LDA classifier for a label — the figures the fit itself
    reports, computed without fitting the spaces that are not kept (for targets the probe's
    cross-validation only; for a label :func:`lda_cv_accuracy`, the same classifier without
    its projection)."""
    n_layers = segments.shape[1]
    splits = None if source.kind == "targets" else _folds(np.asarray(groups), folds, seed)
    evidence: dict[int, dict[str, Any]] = {}
    for layer in range(n_layers):
        X = _window_matrix(segments, [layer])
        if source.kind == "targets":  # the probe's CV, as fit_ridge_span reports it
            _, _, r2, _ = ridge_cv(X, Y, groups, folds=folds, seed=seed)
            best = int(np.nanargmax(np.nanmean(r2, axis=1)))
            evidence[layer] = {"cv_r2": cv_r2_by_name(r2[best], names)}
        else:
            mx, ix = _standardise(X)
            right = lda_cv_hits((X - mx) * ix, labels, splits)
            if hits is not None:  # per window: 1 right, 0 wrong, nan untested
                hits[layer] = right
            tried = np.isfinite(right)
            accuracy = round(float(right[tried].mean()), 4) if tried.any() else None
            evidence[layer] = {"cv_accuracy": accuracy, "folds": len(splits)}
        if progress is not None:
            progress("searching layers", layer + 1, n_layers)
    return evidence


def lda_cv_hits(Xs: np.ndarray, labels: np.ndarray, splits) -> np.ndarray:
    """Per window, whether scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen",
    shrinkage="auto")`` classifies it right out of fold (1 right, 0 wrong, nan untested) — as
    :func:`~messai.analysis.aspect_space.fit_shrinkage_lda` reports it — without its
    generalised eigendecomposition: with every eigenvector kept, that classifier's coefficients
    are ``Σw⁻¹ μ`` (:func:`shrinkage_lda_coef`). ``Xs``: standardised ``[n_windows, dim]``;
    folds whose training side has one class are skipped, as there."""
    labels = np.asarray(labels).astype(str)
    right = np.full(len(labels), np.nan)
    for train, test in splits:
        y = labels[train]
        classes = np.unique(y)
        if len(classes) < 2:
            continue
        coef, intercept = shrinkage_lda_coef(Xs[train], y)
        predicted = classes[np.argmax(Xs[test] @ coef.T + intercept, axis=1)]
        right[test] = predicted == labels[test]
    return right


def lda_cv_accuracy(Xs: np.ndarray, labels: np.ndarray, splits) -> float | None:
    """Out-of-fold window accuracy of :func:`lda_cv_hits` (None when no fold could be tried)."""
    right = lda_cv_hits(Xs, labels, splits)
    tried = np.isfinite(right)
    return round(float(right[tried].mean()), 4) if tried.any() else None


def shrinkage_lda_coef(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``[n_classes, dim]`` and intercepts of scikit-learn's shrinkage LDA
    (``shrinkage="auto"``: each class's Ledoit-Wolf covariance estimated on its standardised
    windows and scaled back, weighted by the class priors: Σw), for every class in sorted order
    (no two-class reduction): ``coef = Σw⁻¹ μ_k``, ``intercept = −½ μ_k·coef_k + log p_k``.

    Σw is a low-rank part plus a diagonal, ``Aᵀ A + Λ`` (``A``: the centred windows, each
    class's scaled by ``√(p (1 − s) / n)``; ``Λ = Σ p s μ scale²``), and the Ledoit-Wolf
    shrinkage ``s`` needs only the windows' Gram matrices: with fewer windows than features
    the solve goes through the windows (Woodbury: an ``n × n`` Cholesky) and nothing of size
    ``dim × dim`` is formed."""
    from scipy import linalg

    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    n, d = X.shape
    priors = counts / n
    means = np.stack([X[inverse == k].mean(0) for k in range(len(classes))])
    rows, diag = [], np.zeros(d)
    for k in range(len(classes)):
        Xc = X[inverse == k] - means[k]
        nc = len(Xc)
        scale = Xc.std(0)
        scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0  # as StandardScaler
        Z = Xc / scale
        Z = Z - Z.mean(0)  # ledoit_wolf centres again
        Z2 = Z**2
        trace = Z2.sum(0) / nc
        mu = trace.sum() / d
        gram = Z @ Z.T
        delta_ = float((gram**2).sum()) / nc**2  # ‖ZᵀZ‖²_F = ‖Z Zᵀ‖²_F
        beta_ = float((Z2.sum(1) ** 2).sum())  # Σ of the entries of (Z²)ᵀ Z²
        beta = (beta_ / nc - delta_) / (d * nc)
        delta = (delta_ - 2.0 * mu * trace.sum() + d * mu**2) / d
        beta = min(beta, delta)
        shrink = 0.0 if beta == 0 else beta / delta
        rows.append(np.sqrt(priors[k] * (1.0 - shrink) / nc) * Xc)
        diag += priors[k] * shrink * mu * scale**2
    A = np.concatenate(rows)
    M = means.T  # [d, k]
    if n < d and diag.min() > 0:
        B = A / diag  # A Λ⁻¹
        K = B @ A.T
        K.flat[:: n + 1] += 1.0  # I + A Λ⁻¹ Aᵀ
        coef_t = M / diag[:, None] - B.T @ linalg.cho_solve(linalg.cho_factor(K), B @ M)
    else:
        cov = A.T @ A
        cov.flat[:: d + 1] += diag
        try:
            coef_t = linalg.cho_solve(linalg.cho_factor(cov), M)
        except linalg.LinAlgError:  # not positive definite in floating point: least squares
            coef_t = linalg.lstsq(cov, M)[0]
    coef = coef_t.T
    intercept = -0.5 * np.einsum("kd,kd->k", means, coef) + np.log(priors)
    return coef, intercept


def _default_layers(store, aspect: str, source: SpaceSource) -> list[int] | None:
    from messai.analysis.aspects import aspect_map

    if source.kind != "targets":
        return None
    entry = aspect_map(store).get(aspect)
    if entry is None or entry.layer is None or entry.source.startswith("prototype"):
        return None
    return [int(entry.layer)]


# ------------------------------------------------------------------------ persistence
def _read(store) -> dict[str, Any]:
    raw = store.read_side_file(SIDE_FILE)
    if raw is None:
        return {}
    try:
        saved = json.loads(raw.decode("utf-8"))
        if saved.get("format") != FORMAT:
            raise ValueError("not an aspect-spaces file")
        return dict(saved["spaces"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{store.uri}/{SIDE_FILE}: unreadable aspect spaces ({exc}); fit them again with 'mess aspects fit'"
        ) from None


def save_space(store, space: AspectSpace) -> str:
    """Add (or replace) ``space`` in the store's ``aspect_spaces.json``; return its location."""
    spaces = _read(store)
    entry = space.to_dict()
    spaces[space.name] = {**entry, "checksum": dict_checksum(entry)}
    text = json.dumps({"format": FORMAT, "version": 1, "spaces": spaces}, ensure_ascii=False)
    return store.write_side_file(SIDE_FILE, (text + "\n").encode("utf-8"))


def remove_space(store, name: str) -> bool:
    """Drop ``name`` from the store's spaces; False when it was not there."""
    spaces = _read(store)
    if spaces.pop(name, None) is None:
        return False
    text = json.dumps({"format": FORMAT, "version": 1, "spaces": spaces}, ensure_ascii=False)
    store.write_side_file(SIDE_FILE, (text + "\n").encode("utf-8"))
    return True


def load_spaces(store) -> dict[str, tuple[AspectSpace, bool]]:
    """Aspect name → (its fitted space, stale?) where stale means the store's features, targets
    or labels changed after the fit."""
    spaces = _read(store)
    if not spaces:
        return {}
    now = store.fingerprint(probe_inputs=True)
    out = {}
    for name, d in spaces.items():
        problem = space_file_problem(d)
        if problem is not None:
            raise ConfigError(
                f"{store.uri}/{SIDE_FILE}: space {name!r} {problem}; fit it again "
                f"({fit_suggestion(store, name, refit=True)})"
            )
        try:
            space = AspectSpace.from_dict(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{store.uri}/{SIDE_FILE}: space {name!r} is damaged ({exc}); fit it again"
            ) from None
        out[name] = (space, space.fingerprint != now)
    return out


def space_file_problem(d: Any) -> str | None:
    """Why a saved space entry must not be used (None when it is intact): its checksum does
    not match its content (the file was edited after the fit), or it has none (saved by an
    older mess: content unverifiable)."""
    if not isinstance(d, dict):
        return "is not an object"
    if "checksum" not in d:
        return "has no checksum (saved by an older mess; its content cannot be verified)"
    if d["checksum"] != dict_checksum(d):
        return "was edited after it was fitted (its checksum does not match its content)"
    return None


def verify_spaces(store) -> list[dict[str, Any]]:
    """``[{"space", "status", "path", "fitted"}]`` per saved space: ``ok`` or why it is unusable
    (for ``mess index --verify``); ``fitted`` is the ``AspectSpace`` when intact, else None."""
    rows = []
    for name, d in _read(store).items():
        problem = space_file_problem(d)
        rows.append(
            {
                "space": name,
                "status": "ok" if problem is None else f"damaged: {problem}",
                "path": f"{store.uri}/{SIDE_FILE}",
                "fitted": AspectSpace.from_dict(d) if problem is None else None,
            }
        )
    return rows
