"""Fitting an aspect space's projection on arrays: the whitened span of a ridge probe
(``fit_ridge_span``, cross-validated by ``ridge_cv``) for targets, a shrinkage LDA
(``fit_shrinkage_lda``) for a label (see :mod:`messai.analysis.aspect_space`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from messai.errors import ConfigError

#: ridge alphas tried (times the number of training windows)
ALPHAS = tuple(float(a) for a in np.logspace(-4, 3, 15))
#: eigenvalues of the predictions' covariance below this fraction of the largest are dropped
RANK_TOL = 1e-6


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0)
    sd = X.std(0)
    floor = max(float(sd.max(initial=0.0)), 1e-12) * 1e-6
    inv = np.where(sd > floor, 1.0 / np.where(sd > floor, sd, 1.0), 0.0)
    return mean, inv


def _folds(groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    k = min(folds, n_groups)
    if k < 2:
        raise ConfigError(f"fitting an aspect space needs at least 2 groups; got {n_groups}")
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def ridge_weights(Xs: np.ndarray, Y: np.ndarray, alphas: np.ndarray):
    """Ridge weights ``[n_features, n_outputs]`` for each alpha: with fewer windows than
    features from the eigen-decomposition of the windows' Gram matrix ``Xs Xsᵀ = U diag(s) Uᵀ``
    (``Xsᵀ U diag(1/(s + alpha)) Uᵀ Y``, a few times cheaper than the thin SVD it equals), else
    from that of the features' one (the same solution, ``V diag(1/(s + alpha)) Vᵀ Xᵀ Y``)."""
    if len(Xs) < Xs.shape[1]:
        s, U = np.linalg.eigh(Xs @ Xs.T)
        s = np.maximum(s, 0.0)
        B = U.T @ Y  # [n, m]
        return [Xs.T @ (U @ (B / (s + a)[:, None])) for a in alphas]
    s, V = np.linalg.eigh(Xs.T @ Xs)
    s = np.maximum(s, 0.0)
    B = V.T @ (Xs.T @ Y)  # [D, m]
    return [V @ (B / (s + a)[:, None]) for a in alphas]


def ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    return_oof: bool = False,
) -> tuple:
    """The grouped cross-validation of :func:`fit_ridge_span`: windows with a non-finite value
    dropped, then the pooled out-of-fold R² ``[n_alphas, n_outputs]`` of a ridge probe at each
    of ``ALPHAS`` (standardisation inside the folds). Returns ``(X, Y, r2, splits)`` with the
    windows kept; ``return_oof`` adds ``(kept, predictions)``: the mask of windows kept and
    their out-of-fold predictions ``[n_alphas, n_kept, n_outputs]``."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    ok = np.isfinite(Y).all(1) & np.isfinite(X).all(1)
    X, Y, groups = X[ok], Y[ok], np.asarray(groups)[ok]
    if len(X) < 4:
        raise ConfigError(f"fitting an aspect space needs at least 4 windows; got {len(X)}")
    splits = _folds(groups, folds, seed)
    alphas = np.asarray(ALPHAS)
    sse = np.zeros((len(alphas), Y.shape[1]))
    oof = np.full((len(alphas), *Y.shape), np.nan) if return_oof else None
    for train, test in splits:
        mx, ix = _standardise(X[train])
        my, sy = Y[train].mean(0), Y[train].std(0)
        sy = np.where(sy > 0, sy, 1.0)
        Xs = (X[train] - mx) * ix
        Ws = ridge_weights(Xs, (Y[train] - my) / sy, alphas * len(train))
        Xt = (X[test] - mx) * ix
        for i, W in enumerate(Ws):
            p = (Xt @ W) * sy + my
            sse[i] += ((p - Y[test]) ** 2).sum(0)
            if oof is not None:
                oof[i][test] = p
    tss = ((Y - Y.mean(0)) ** 2).sum(0)
    tss = np.where(tss > 0, tss, np.nan)
    if return_oof:
        return X, Y, 1.0 - sse / tss, splits, ok, oof
    return X, Y, 1.0 - sse / tss, splits


def cv_r2_by_name(r2: np.ndarray, output_names: list[str] | None) -> dict[str, float]:
    """One alpha's out-of-fold R² per output, averaged over outputs that share a name."""
    names = output_names or [f"y{i}" for i in range(len(r2))]
    by_name: dict[str, list[float]] = {}
    for name, value in zip(names, r2):
        by_name.setdefault(name, []).append(float(value))
    return {k: round(float(np.nanmean(v)), 4) for k, v in by_name.items()}


def fit_ridge_span(
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    *,
    output_names: list[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    return_oof: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The whitened span of a ridge probe's weights (``return_oof``: also ``(kept, Y,
    predictions)``, the windows used, their targets and out-of-fold predictions).

    Parameters
    ----------
    X : ndarray, shape (n_windows, n_features)
    Y : ndarray, shape (n_windows, n_outputs)
        Targets after their transforms; standardised here.
    groups : ndarray, shape (n_windows,)
        No group is on both sides of a CV split.
    output_names : list of str, optional
        A name per output column; outputs sharing a name are averaged in ``cv_r2``.

    Returns
    -------
    mean : ndarray (n_features,)
    components : ndarray (n_features, n_components)
    evidence : dict
        ``alpha`` (per window), ``cv_r2`` name → out-of-fold R² at that alpha, ``folds``.
    """
    if return_oof:
        X, Y, r2, splits, ok, oof = ridge_cv(X, Y, groups, folds=folds, seed=seed, return_oof=True)
    else:
        X, Y, r2, splits = ridge_cv(X, Y, groups, folds=folds, seed=seed)
    alphas = np.asarray(ALPHAS)
    best = int(np.nanargmax(np.nanmean(r2, axis=1)))
    mx, ix = _standardise(X)
    my, sy = Y.mean(0), Y.std(0)
    sy = np.where(sy > 0, sy, 1.0)
    Xs = (X - mx) * ix
    (W,) = ridge_weights(Xs, (Y - my) / sy, alphas[[best]] * len(X))
    P = Xs @ W
    cov = np.cov(P, rowvar=False).reshape(P.shape[1], P.shape[1])
    lam, U = np.linalg.eigh(cov)
    keep = lam > RANK_TOL * max(float(lam.max(initial=0.0)), 1e-300)
    if not keep.any():
        raise ConfigError("the ridge probe predicts a constant: no aspect space to fit")
    lam, U = lam[keep][::-1], U[:, keep][:, ::-1]
    components = (ix[:, None] * W) @ (U / np.sqrt(lam))
    evidence = {
        "alpha": float(alphas[best]),
        "cv_r2": cv_r2_by_name(r2[best], output_names),
        "folds": len(splits),
        "n_windows": len(X),
    }
    if return_oof:  # (windows kept, their out-of-fold predictions at the chosen alpha)
        return mx, components, evidence, (ok, Y, oof[best])
    return mx, components, evidence


def fit_shrinkage_lda(
    X: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    max_components: int | None = None,
    evaluate: bool = True,
    return_oof: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A shrinkage-LDA projection (scikit-learn ``solver="eigen", shrinkage="auto"``);
    ``evaluate=False`` skips the cross-validated accuracy (``cv_accuracy`` None).

    Returns
    -------
    mean : ndarray (n_features,)
    components : ndarray (n_features, n_components)
    evidence : dict
        ``cv_accuracy`` (out-of-fold window classification accuracy, grouped), ``chance``
        (the largest class's share), ``n_classes``, ``folds``.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ConfigError(f"a label space needs at least 2 label values; got {len(classes)}")
    mx, ix = _standardise(X)
    Xs = (X - mx) * ix
    correct, tried = 0, 0
    hit = np.full(len(labels), np.nan)  # out-of-fold: 1 right, 0 wrong, nan untested
    splits = _folds(np.asarray(groups), folds, seed) if evaluate else []
    for train, test in splits:
        if len(np.unique(labels[train])) < 2:
            continue
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(
            Xs[train], labels[train]
        )
        right = lda.predict(Xs[test]) == labels[test]
        hit[test] = right
        correct += int(right.sum())
        tried += len(test)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(Xs, labels)
    r = len(classes) - 1 if max_components is None else min(max_components, len(classes) - 1)
    r = min(r, Xs.shape[1])
    components = ix[:, None] * lda.scalings_[:, :r]
    evidence = {
        "cv_accuracy": round(correct / tried, 4) if tried else None,
        "chance": round(float(counts.max() / counts.sum()), 4),
        "n_classes": len(classes),
        "folds": len(splits),
        "n_windows": len(X),
    }
    if return_oof:
        return mx, components, evidence, hit
    return mx, components, evidence
