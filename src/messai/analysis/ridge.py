"""Ridge regression from sufficient statistics, for every penalty at once.

Every fit works from per-fold `Sums` (``X'X``, ``X'y`` ...): standardising and centring a
training set is algebra on ``dim x dim`` matrices, and one tridiagonalisation of the
standardised training Gram (`RidgePath`) serves every target column and every penalty. `fit_task`
runs the inner, group-aware alpha search and the outer fits of one task and returns its
out-of-fold predictions. The method is described in ``docs/probe-method.md``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.analysis.splits import inner_fold_pairs
from messai.analysis.tasks import FitTask, TargetSpan
from messai.errors import MessError

__all__ = ["FitOptions", "RidgePath", "Sums", "fit_task"]


@dataclass(frozen=True)
class FitOptions:
    """Fit settings shared by every layer: alpha grid (relative to n_train or absolute),
    inner folds of the alpha search, CI level."""

    grid: np.ndarray
    relative: bool
    inner_folds: int
    ci: float

    def alphas(self, n_train: float) -> np.ndarray:
        """Absolute penalties of the grid for a fit on ``n_train`` samples."""
        return self.grid * n_train if self.relative else self.grid


@dataclass
class Sums:
    """Sums over some samples: count, Σx ``[dim]``, Σxx' ``[dim, dim]``, Σy, Σy² ``[m]``, Σxy'
    ``[dim, m]`` (features globally centred, targets centred)."""

    n: float
    sx: np.ndarray
    gram: np.ndarray
    sy: np.ndarray
    syy: np.ndarray
    sxy: np.ndarray

    def __add__(self, other: Sums) -> Sums:
        return Sums(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def __sub__(self, other: Sums) -> Sums:
        return Sums(*(a - b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.n, self.sx, self.gram, self.sy, self.syy, self.sxy)

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> Sums:
        """Sums over the rows of ``x`` ``[n, dim]`` and ``y`` ``[n, m]``."""
        return cls(
            float(len(x)), x.sum(axis=0), x.T @ x, y.sum(axis=0), (y * y).sum(axis=0), x.T @ y
        )


def _is_constant_feature(var: np.ndarray, mean: np.ndarray, n: float) -> np.ndarray:
    """Zero-variance features, with scikit-learn's rounding bound (they keep scale 1)."""
    eps = np.finfo(np.float64).eps
    return var <= n * eps * var + (n * mean * eps) ** 2


def _tridiagonalise(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``c = q @ T @ q.T`` for symmetric ``c`` ``[d, d]``: diagonal ``[d]`` and off-diagonal
    ``[d-1]`` of the tridiagonal ``T``, orthogonal ``q`` ``[d, d]`` (LAPACK sytrd + orgqr).

    Half the cost of a full eigendecomposition, and enough: ``(c + a I)⁻¹ = q (T + a I)⁻¹ q'``
    is then a tridiagonal solve for any ``a``.
    """
    from scipy.linalg import lapack

    d = c.shape[0]
    if d == 1:
        return c[0].copy(), np.zeros(0), np.ones((1, 1))
    lwork = max(int(lapack.dsytrd_lwork(d, lower=1)[0]), 64 * d)
    packed, diag, off, tau, info = lapack.dsytrd(np.asfortranarray(c), lower=1, lwork=lwork)
    if info != 0:
        raise MessError(f"tridiagonalisation failed (LAPACK info {info})")
    # Reflector i is packed[i+2:, i] with an implicit 1 at row i+1: the layout of a QR
    # factorisation of packed[1:, :-1], so orgqr forms q[1:, 1:] (what LAPACK's orgtr does).
    q_sub, _, info = lapack.dorgqr(packed[1:, :-1], tau, lwork=64 * d)
    if info != 0:
        raise MessError(f"forming Q failed (LAPACK info {info})")
    q = np.zeros((d, d))
    q[0, 0] = 1.0
    q[1:, 1:] = q_sub
    return diag, off, q


class RidgePath:
    """Ridge regressions of every target column on standardised features, any penalty.

    Built from `Sums` of a training set. The standardised centred Gram
    ``C = S⁻¹ (Σ(x-μ)(x-μ)') S⁻¹ = Q T Q'`` is tridiagonalised once; a penalty is then one
    tridiagonal solve for all columns. ``mean_`` ``[dim]``, ``scale_`` ``[dim]`` (population
    std, 1 for constant features), ``y_mean_`` ``[m]`` are the training statistics; ``n_`` the
    training count.
    """

    def __init__(self, sums: Sums, *, offset: np.ndarray) -> None:
        n = sums.n
        self.n_ = n
        self.mean_ = sums.sx / n
        self.y_mean_ = sums.sy / n
        centred = sums.gram - n * np.outer(self.mean_, self.mean_)
        var = np.clip(np.diag(centred) / n, 0.0, None)
        scale = np.sqrt(var)
        scale[_is_constant_feature(var, self.mean_ + offset, n)] = 1.0
        self.scale_ = scale
        self._diag, self._off, self._q = _tridiagonalise(centred / np.outer(scale, scale))
        cross = (sums.sxy - n * np.outer(self.mean_, self.y_mean_)) / scale[:, None]
        self._qty = self._q.T @ cross  # [dim, m]

    def _solve(self, alpha: float, rhs: np.ndarray) -> np.ndarray:
        """``(T + alpha I)⁻¹ rhs`` for ``rhs`` ``[dim, k]`` (LU with partial pivoting)."""
        from scipy.linalg import lapack

        if len(self._off) == 0:
            return rhs / (self._diag + alpha)
        *_, x, info = lapack.dgtsv(self._off, self._diag + alpha, self._off, rhs)
        if info != 0:
            raise MessError(f"ridge solve failed for alpha={alpha:g} (LAPACK info {info})")
        return x

    def coef(self, alphas: np.ndarray) -> np.ndarray:
        """Coefficients ``[dim, m]`` on (centred) raw features, column ``j`` with ``alphas[j]``."""
        solved = np.empty_like(self._qty)
        for alpha in np.unique(alphas):
            cols = np.flatnonzero(alphas == alpha)
            solved[:, cols] = self._solve(float(alpha), self._qty[:, cols])
        return (self._q @ solved) / self.scale_[:, None]

    def coef_grid(self, alphas: np.ndarray) -> np.ndarray:
        """Coefficients ``[dim, n_alphas, m]`` for every penalty and column."""
        solved = np.stack([self._solve(float(a), self._qty) for a in alphas], axis=1)
        dim = solved.shape[0]
        coef = (self._q @ solved.reshape(dim, -1)).reshape(solved.shape)
        return coef / self.scale_[:, None, None]

    def predict(self, x: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """Predictions ``[n, m]`` for rows ``x`` ``[n, dim]`` (same centring as the sums)."""
        return x @ coef + (self.y_mean_ - self.mean_ @ coef)


def _validation_error(
    path: RidgePath, coef: np.ndarray, val: Sums
) -> tuple[np.ndarray, np.ndarray]:
    """Squared error on a validation set from its sums, for coefficients ``[dim, A, m]``.

    Returns ``(sse [A, m], baseline [m])``, baseline being the error of predicting the training
    mean. Uses only ``dim x dim`` algebra:
    Σ(r²) = Σ(y-ȳ)² - 2 Σ(y-ȳ)(x-μ)'β + β'Σ(x-μ)(x-μ)'β.
    """
    mu, ym, n = path.mean_, path.y_mean_, val.n
    gram = val.gram - np.outer(val.sx, mu) - np.outer(mu, val.sx) + n * np.outer(mu, mu)
    cross = val.sxy - np.outer(val.sx, ym) - np.outer(mu, val.sy) + n * np.outer(mu, ym)
    baseline = val.syy - 2.0 * ym * val.sy + n * ym * ym
    dim, n_alphas, m = coef.shape
    flat = coef.reshape(dim, -1)
    quad = np.einsum("ij,ij->j", flat, gram @ flat).reshape(n_alphas, m)
    linear = np.einsum("iam,im->am", coef, cross)
    return baseline - 2.0 * linear + quad, baseline


def _choose_alphas(
    sse: np.ndarray, baseline: np.ndarray, spans: list[TargetSpan], constant: np.ndarray
) -> np.ndarray:
    """Grid index per span ``[n_spans]``: least mean relative inner error over its outputs
    (ties go to the larger penalty; nothing to judge on → the middle of the grid)."""
    n_alphas = sse.shape[0]
    chosen = np.full(len(spans), n_alphas // 2, dtype=np.int64)
    for i, span in enumerate(spans):
        cols = np.arange(span.start, span.stop)
        cols = cols[~constant[cols] & (baseline[cols] > 0)]
        if len(cols) == 0:
            continue
        score = (sse[:, cols] / baseline[cols]).mean(axis=1)
        if np.all(~np.isfinite(score)):
            continue
        reverse = np.where(np.isfinite(score), score, np.inf)[::-1]
        chosen[i] = n_alphas - 1 - int(np.argmin(reverse))
    return chosen


def fit_task(
    x: np.ndarray,
    task: FitTask,
    *,
    options: FitOptions,
    offset: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Alpha search and outer fits of one task: its out-of-fold predictions.

    Parameters
    ----------
    x
        ``[n_rows, dim]`` float64 features of the task's rows, globally centred, sorted by fold
        as in ``task``.
    task
        The targets (columns of ``task.y``, ``[n_rows, m]``) fitted together.
    options
        Alpha grid and inner folds.
    offset
        ``[dim]`` the global mean removed from ``x`` (for the constant-feature test).

    Returns
    -------
    predictions : numpy.ndarray
        ``[n_rows, m]`` out-of-fold predictions of the centred targets (NaN where a fold could
        not be fitted).
    chosen : numpy.ndarray
        ``[folds, n_spans]`` index into ``options.grid`` of the alpha chosen per outer fold.
    """
    bounds = task.bounds
    folds = len(bounds) - 1
    m = task.y.shape[1]
    blocks = [Sums.of(x[lo:hi], task.y[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    total = blocks[0]
    for b in blocks[1:]:
        total = total + b

    grid = options.grid
    chosen = np.zeros((folds, len(task.spans)), dtype=np.int64)
    if len(grid) > 1:
        sse = np.zeros((folds, len(grid), m))
        baseline = np.zeros((folds, m))
        for a, b in inner_fold_pairs(folds, options.inner_folds):
            train = total - blocks[a] - blocks[b]
            if train.n < 2:
                continue
            path = RidgePath(train, offset=offset)
            coef = path.coef_grid(options.alphas(path.n_))
            for outer, val in ((a, b), (b, a)):
                err, base = _validation_error(path, coef, blocks[val])
                sse[outer] += err
                baseline[outer] += base
        for f in range(folds):
            chosen[f] = _choose_alphas(sse[f], baseline[f], task.spans, task.constant)

    column_span = np.empty(m, dtype=np.int64)
    for i, span in enumerate(task.spans):
        column_span[span.start : span.stop] = i
    predictions = np.full((len(x), m), np.nan)
    for f in range(folds):
        lo, hi = bounds[f], bounds[f + 1]
        train = total - blocks[f]
        if train.n < 2 or hi == lo:
            continue
        path = RidgePath(train, offset=offset)
        alphas = options.alphas(path.n_)[chosen[f][column_span]]
        predictions[lo:hi] = path.predict(x[lo:hi], path.coef(alphas))
    return predictions, chosen
