"""Choose an aspect space's layer by grouped cross-validation, one layer at a time.

``search_layers`` scores every layer the way the final fit reports it (the ridge probe's CV
for targets; for a label, the shrinkage-LDA classifier's out-of-fold hits computed without its
eigendecomposition: ``lda_cv_hits`` / ``shrinkage_lda_coef``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from messai.analysis.aspect_sources import SpaceSource
from messai.analysis.space_fitting import _folds, _standardise, cv_r2_by_name, ridge_cv


def _window_matrix(segments: np.ndarray, layers: list[int]) -> np.ndarray:
    return np.asarray(segments[:, layers], dtype=np.float64).reshape(len(segments), -1)


def _score(evidence: dict[str, Any]) -> float:
    if "cv_r2" in evidence:
        return float(np.nanmean(list(evidence["cv_r2"].values())))
    return float(evidence.get("cv_accuracy") or 0.0)


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
