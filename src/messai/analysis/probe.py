"""Layer probing: how well each layer linearly encodes each proxy target, with controls.

`probe_layers` fits, for every layer x target, a ridge regression from the layer's features to
the target and reports out-of-fold R² that a sceptical reviewer can trust:

* **Splits by group.** Outer folds come from `group_kfold` (groups shuffled with ``seed`` and
  dealt, in that order, to the fold with the fewest samples so far), so no track has segments on
  both sides of a split.
* **Nothing is fitted on the test fold.** Feature standardisation (mean, population std, as
  `sklearn.preprocessing.StandardScaler`) and the ridge penalty are chosen on the training folds
  only. The penalty is picked by an inner, group-aware cross-validation over whole outer folds:
  outer fold ``f`` is validated on the training folds next to it in a fixed cycle of the folds
  (``f+1`` and ``f-1`` by default, ``inner_folds=2``; ``folds - 1`` gives leave-one-fold-out
  over all training folds), each inner fit standardised on its own training part. The inner fit
  that leaves out folds ``f`` and ``v`` serves outer fold ``f`` (validated on ``v``) and outer
  fold ``v`` (validated on ``f``), so the search costs ``folds * inner_folds / 2`` fits.
* **One decomposition per fit.** Every fit works from per-fold sums (``X'X``, ``X'y`` ...), so
  standardising and centring a training set is algebra on ``dim x dim`` matrices (never an
  ``n x n`` one), and one decomposition of the standardised training Gram, ``C = Q T Q'`` with
  ``T`` tridiagonal (LAPACK sytrd; half the cost of an eigendecomposition), serves every target
  and every penalty: each penalty is a tridiagonal solve. The inner validation error comes from
  the validation fold's sums too. Per layer: ``folds`` outer plus ``folds * inner_folds / 2``
  inner decompositions (10 for the defaults). Features are read one layer at a time (float64
  per layer); layers run in parallel threads (``n_jobs``) while BLAS is held to one thread
  (process-wide, for the duration of the call).
* **Penalties.** With ``alphas=None`` the grid is `DEFAULT_RELATIVE_ALPHAS` (1e-4 ... 1e6, one
  per decade) *relative* to the training Gram's scale: the penalty of a fit on ``n`` training
  samples is ``alpha * n``: every standardised feature has squared norm ``n``, so ``n`` is the
  mean eigenvalue (trace / dim) of the standardised training Gram. Given explicitly, ``alphas`` are absolute and mean exactly what ``Ridge(alpha)`` means on
  ``StandardScaler`` output (loss ``||y - b - Zw||² + alpha ||w||²``). One alpha skips the inner
  search. Multi-output targets share one alpha, chosen by the mean over outputs of the inner
  validation error divided by the error of predicting the training mean.
* **Scores.** R² pooled over all out-of-fold predictions (per output, then the mean over outputs),
  its spread over folds (sample std of per-fold R²), and a percentile bootstrap CI resampling
  groups with replacement (the same resamples for every layer and target, so layers are compared
  on paired resamples).
* **Controls.** ``control="permute"`` runs the same pipeline (own alpha search included) on the
  targets moved between groups: groups are put in a seeded random cycle and each takes the target
  sequence of the next group (row ``i`` of a group gets the donor's row ``i mod donor_size``, so
  groups of unequal size work and no group keeps its own targets). Rows invalid for a target keep
  their place; only valid rows are exchanged. One seeded draw per run; with a single group
  holding valid rows there is nothing to permute and ``control_r2`` is NaN. With
  ``control_features`` (a random-weights model's
  features, same ``[n_samples, n_layers, *]``), the probe also runs on those
  (``random_model_r2``). *Selectivity* is ``r2 - random_model_r2`` when that is given, else
  ``r2 - control_r2``.
* **Which layer.** Per target: the best layer by pooled R², its margin over the median layer, and
  whether it beats the runner-up reliably: its per-fold R² is higher in every fold (a one-sided
  sign test, p = 2**-folds: 0.031 for 5 folds).
* **Missing values.** A sample whose target (any output of it) is NaN or infinite, or not
  positive under the ``"log"`` transform, is dropped for that target only; the folds stay those
  of the group split. Targets sharing the same missing rows share their decompositions (each
  other pattern of missing rows costs its own).
* **Degenerate targets.** An output that is constant has no R²: it is NaN in `ProbeResults` and
  ``null`` in JSON (as is anything else not computable), and it is left out of the mean over
  outputs. Nothing crashes.

`ProbeResults.to_dict()` (JSON-serialisable; `ProbeResults.from_dict` reads it back)::

    {
      "schema": "messai.probe/1",
      "n_samples": int, "n_groups": int, "n_layers": int, "folds": int, "seed": int,
      "inner_folds": int,            # folds each alpha search validated on (0: one alpha given)
      "alphas": [float, ...],        # the grid searched
      "alpha_scale": "relative" | "absolute",   # relative: penalty = alpha * n_train
      "control": "permute" | "none",
      "random_model": bool,          # whether control_features were given
      "n_bootstrap": int, "ci": 0.95,
      "targets": {
        NAME: {
          "n_outputs": int,          # 1 for a scalar target, k for [n_samples, k]
          "n_samples": int,          # samples valid for this target
          "transform": "none" | "log",
          # lists with one entry per layer (null where not computable):
          "r2": [...],               # pooled out-of-fold R², mean over outputs
          "r2_std": [...],           # sample std of the per-fold R²
          "r2_ci_low": [...], "r2_ci_high": [...],   # bootstrap over groups, percentile CI
          "fold_r2": [[...], ...],   # [n_layers][folds] per-fold R²
          "alpha": [...],            # median over outer folds of the chosen alpha (grid units)
          "control_r2": [...],       # same pipeline on group-permuted targets
          "random_model_r2": [...] | null,   # probe on control_features
          "selectivity": [...],      # r2 - random_model_r2, else r2 - control_r2
          "selectivity_baseline": "random_model" | "permuted" | "none",
          "best_layer": int | null,
          "runner_up_layer": int | null,
          "margin_over_median": float | null,  # r2[best] - median over layers of r2
          "fold_wins_over_runner_up": int | null,  # folds where best's R² > runner-up's
          "beats_runner_up": bool | null  # wins in every fold
        }
      }
    }

A target is *validated* on a layer (`TargetProbeResult.is_validated`) when its R² is at least
``min_r2`` (0.5) and the lower end of its bootstrap CI exceeds the control by ``min_margin``
(0.1); the control is the permuted-target R², or the larger of it and the random-model R² when
that is available.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from messai.errors import ConfigError, MessError
from messai.numeric import finite_or_none, single_threaded_blas

__all__ = [
    "DEFAULT_RELATIVE_ALPHAS",
    "ProbeResults",
    "TargetProbeResult",
    "group_kfold",
    "probe_layers",
]

logger = logging.getLogger(__name__)

SCHEMA = "messai.probe/1"
DEFAULT_RELATIVE_ALPHAS: tuple[float, ...] = tuple(10.0**k for k in range(-4, 7))
TRANSFORMS = ("none", "log")


# --------------------------------------------------------------------------------------------
# Splits


def group_kfold(groups: Any, n_splits: int, *, seed: int = 0) -> np.ndarray:
    """Outer fold of every sample, ``[n_samples]`` ints in ``0 .. n_splits - 1``.

    The unique groups are shuffled with ``seed`` and dealt, in that order, each to the fold with
    the fewest samples so far: folds differ by at most one group's size and every fold gets at
    least one group. All samples of a group share a fold.
    """
    groups = np.asarray(groups)
    _, group_index = np.unique(groups, return_inverse=True)
    sizes = np.bincount(group_index)
    if n_splits < 2:
        raise ConfigError(f"folds must be at least 2, got {n_splits}")
    if len(sizes) < n_splits:
        raise MessError(
            f"cannot make {n_splits} group folds from {len(sizes)} groups: "
            f"need at least as many groups (tracks) as folds"
        )
    rng = np.random.default_rng(seed)
    load = np.zeros(n_splits, dtype=np.int64)
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    for g in rng.permutation(len(sizes)):
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += sizes[g]
    return fold_of_group[group_index]


# --------------------------------------------------------------------------------------------
# Inputs: targets, controls, and the groups of targets that share valid rows


@dataclass(frozen=True)
class _Span:
    """Columns ``start:stop`` of a task's ``y`` belong to target ``name`` (or its control)."""

    name: str
    control: bool
    start: int
    stop: int


@dataclass
class _Task:
    """Targets sharing one set of valid samples, fitted together.

    ``rows`` index the fold-sorted samples; ``y`` is ``[n_rows, n_columns]`` float64, centred;
    ``bounds`` ``[folds + 1]`` delimit each fold's rows; ``group`` ``[n_rows]`` dense group ids.
    """

    rows: np.ndarray
    y: np.ndarray
    spans: list[_Span]
    bounds: np.ndarray
    group: np.ndarray
    constant: np.ndarray  # [n_columns] bool: output has a single value
    y_offset: np.ndarray  # [n_columns] the mean removed from y


@dataclass
class _Setup:
    """Everything shared by all layers: sample order, folds, tasks, bootstrap weights."""

    order: np.ndarray  # [n_samples] sample index, sorted by (fold, group)
    fold_of_group: np.ndarray  # [n_groups]
    tasks: list[_Task]
    bootstrap: np.ndarray  # [n_bootstrap, n_groups] resample counts
    folds: int


@dataclass(frozen=True)
class _Options:
    """Fit settings shared by every layer: alpha grid (relative to n_train or absolute),
    inner folds of the alpha search, CI level."""

    grid: np.ndarray
    relative: bool
    inner_folds: int
    ci: float

    def alphas(self, n_train: float) -> np.ndarray:
        """Absolute penalties of the grid for a fit on ``n_train`` samples."""
        return self.grid * n_train if self.relative else self.grid


def _prepare_target(
    name: str, values: Any, n_samples: int, transform: str
) -> tuple[np.ndarray, np.ndarray]:
    """Target as ``[n_samples, k]`` float64 and its valid rows ``[n_samples]`` bool."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n_samples or y.shape[1] == 0:
        raise MessError(
            f"target {name!r} has shape {np.shape(values)}; expected [{n_samples}] or "
            f"[{n_samples}, k]"
        )
    if transform == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(y > 0, np.log(np.where(y > 0, y, 1.0)), np.nan)
    valid = np.isfinite(y).all(axis=1)
    return y, valid


def _permute_across_groups(
    y: np.ndarray, valid: np.ndarray, group_index: np.ndarray, group_cycle: np.ndarray
) -> np.ndarray:
    """Control targets: each group gets the valid target sequence of the next group in a cycle.

    ``group_cycle`` ``[n_groups]`` is a random order of the groups; among groups with valid rows,
    each takes the rows of the one after it (cyclically), row ``i`` from the donor's row
    ``i mod donor_size``. With fewer than two such groups the control is constant (R² NaN).
    """
    out = np.zeros_like(y)
    rows = np.flatnonzero(valid)
    rank = np.empty(len(group_cycle), dtype=np.int64)
    rank[group_cycle] = np.arange(len(group_cycle))
    rows = rows[np.argsort(rank[group_index[rows]], kind="stable")]
    _, start, count = np.unique(rank[group_index[rows]], return_index=True, return_counts=True)
    if len(start) < 2:
        return out
    member = np.repeat(np.arange(len(start)), count)
    position = np.arange(len(rows)) - start[member]
    donor = (member + 1) % len(start)
    out[rows] = y[rows[start[donor] + position % count[donor]]]
    return out


def _make_task(
    members: list[tuple[str, np.ndarray, np.ndarray]],
    *,
    order: np.ndarray,
    fold_sorted: np.ndarray,
    group_index: np.ndarray,
    group_cycle: np.ndarray | None,
    folds: int,
) -> _Task:
    """One task from targets ``(name, y [n, k], valid [n])`` that share ``valid``; with a
    ``group_cycle``, each target is followed by its group-permuted control columns."""
    rows = np.flatnonzero(members[0][2][order])
    columns, spans, constant, means = [], [], [], []
    for name, y, valid in members:
        pieces = [(False, y)]
        if group_cycle is not None:
            pieces.append((True, _permute_across_groups(y, valid, group_index, group_cycle)))
        for is_control, values in pieces:
            block = values[order][rows]
            mean = block.mean(axis=0) if len(block) else np.zeros(block.shape[1])
            start = sum(c.shape[1] for c in columns)
            spans.append(_Span(name, is_control, start, start + block.shape[1]))
            constant.append(np.ptp(block, axis=0) == 0 if len(block) else mean == 0)
            means.append(mean)
            columns.append(block - mean)
    return _Task(
        rows=rows,
        y=np.ascontiguousarray(np.concatenate(columns, axis=1)),
        spans=spans,
        bounds=np.searchsorted(fold_sorted[rows], np.arange(folds + 1)),
        group=group_index[order][rows],
        constant=np.concatenate(constant),
        y_offset=np.concatenate(means),
    )


def _bootstrap_counts(rng: np.random.Generator, n_bootstrap: int, n_groups: int) -> np.ndarray:
    """``[n_bootstrap, n_groups]`` times each group is drawn in each resample (with
    replacement, ``n_groups`` draws)."""
    draws = rng.integers(0, n_groups, size=(n_bootstrap, n_groups))
    draws += (np.arange(n_bootstrap) * n_groups)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_bootstrap * n_groups)
    return counts.reshape(n_bootstrap, n_groups).astype(np.float64)


def _build_setup(
    targets: Mapping[str, Any],
    groups: np.ndarray,
    *,
    folds: int,
    seed: int,
    control: bool,
    transforms: Mapping[str, str],
    n_bootstrap: int,
) -> tuple[_Setup, dict[str, dict[str, Any]]]:
    """Fold assignment, sample order, tasks and bootstrap weights; plus per-target metadata."""
    fold = group_kfold(groups, folds, seed=seed)
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    fold_of_group = np.zeros(n_groups, dtype=np.int64)
    fold_of_group[group_index] = fold
    order = np.lexsort((group_index, fold))
    control_rng, bootstrap_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(2))
    group_cycle = control_rng.permutation(n_groups) if control else None

    by_mask: dict[bytes, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for name, values in targets.items():
        transform = transforms.get(name, "none")
        y, valid = _prepare_target(name, values, len(groups), transform)
        meta[name] = {
            "n_outputs": y.shape[1],
            "n_samples": int(valid.sum()),
            "transform": transform,
            "ndim": np.ndim(values),
        }
        by_mask.setdefault(valid.tobytes(), []).append((name, y, valid))
    tasks = [
        _make_task(
            members,
            order=order,
            fold_sorted=fold[order],
            group_index=group_index,
            group_cycle=group_cycle,
            folds=folds,
        )
        for members in by_mask.values()
    ]
    bootstrap = _bootstrap_counts(bootstrap_rng, n_bootstrap, n_groups)
    return _Setup(order, fold_of_group, tasks, bootstrap, folds), meta


# --------------------------------------------------------------------------------------------
# Ridge from sufficient statistics


@dataclass
class _Sums:
    """Sums over some samples: count, Σx ``[dim]``, Σxx' ``[dim, dim]``, Σy, Σy² ``[m]``, Σxy'
    ``[dim, m]`` (features globally centred, targets centred)."""

    n: float
    sx: np.ndarray
    gram: np.ndarray
    sy: np.ndarray
    syy: np.ndarray
    sxy: np.ndarray

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(*(a + b for a, b in zip(self._fields(), other._fields())))

    def __sub__(self, other: _Sums) -> _Sums:
        return _Sums(*(a - b for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple[Any, ...]:
        return (self.n, self.sx, self.gram, self.sy, self.syy, self.sxy)

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Sums:
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


class _RidgePath:
    """Ridge regressions of every target column on standardised features, any penalty.

    Built from `_Sums` of a training set. The standardised centred Gram
    ``C = S⁻¹ (Σ(x-μ)(x-μ)') S⁻¹ = Q T Q'`` is tridiagonalised once; a penalty is then one
    tridiagonal solve for all columns. ``mean_`` ``[dim]``, ``scale_`` ``[dim]`` (population
    std, 1 for constant features), ``y_mean_`` ``[m]`` are the training statistics; ``n_`` the
    training count.
    """

    def __init__(self, sums: _Sums, *, offset: np.ndarray) -> None:
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
    path: _RidgePath, coef: np.ndarray, val: _Sums
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
    sse: np.ndarray, baseline: np.ndarray, spans: list[_Span], constant: np.ndarray
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


def _inner_pairs(folds: int, inner_folds: int) -> list[tuple[int, int]]:
    """Fold pairs ``(a, b)`` whose complement is an inner training set.

    Outer fold ``f`` is validated, for the alpha search, on the training folds nearest to it in
    the cycle ``0 .. folds-1``: ``f ± 1, ..., f ± ceil(inner_folds / 2)``, so on
    ``min(inner_folds rounded up to even, folds - 1)`` folds. The inner fit that leaves out
    ``f`` and validation fold ``v`` also serves outer fold ``v`` (validated on ``f``), so there
    are about ``folds * inner_folds / 2`` inner fits. ``inner_folds >= folds - 1`` is
    leave-one-fold-out over all training folds.
    """
    reach = min(-(-inner_folds // 2), folds // 2)
    pairs = {tuple(sorted((f, (f + j) % folds))) for f in range(folds) for j in range(1, reach + 1)}
    return sorted(pairs)


def _effective_inner_folds(folds: int, inner_folds: int) -> int:
    """Training folds each outer fold is validated on (see `_inner_pairs`)."""
    return min(2 * -(-inner_folds // 2), folds - 1)


def _fit_task(
    x: np.ndarray,
    task: _Task,
    *,
    options: _Options,
    offset: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions ``[n_rows, m]`` and chosen grid index ``[folds, n_spans]``.

    ``x`` ``[n_rows, dim]`` float64, globally centred, rows sorted by fold as in ``task``.
    """
    bounds = task.bounds
    folds = len(bounds) - 1
    m = task.y.shape[1]
    blocks = [_Sums.of(x[lo:hi], task.y[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    total = blocks[0]
    for b in blocks[1:]:
        total = total + b

    grid = options.grid
    chosen = np.zeros((folds, len(task.spans)), dtype=np.int64)
    if len(grid) > 1:
        sse = np.zeros((folds, len(grid), m))
        baseline = np.zeros((folds, m))
        for a, b in _inner_pairs(folds, options.inner_folds):
            train = total - blocks[a] - blocks[b]
            if train.n < 2:
                continue
            path = _RidgePath(train, offset=offset)
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
        path = _RidgePath(train, offset=offset)
        alphas = options.alphas(path.n_)[chosen[f][column_span]]
        predictions[lo:hi] = path.predict(x[lo:hi], path.coef(alphas))
    return predictions, chosen


# --------------------------------------------------------------------------------------------
# Scores from out-of-fold predictions


@dataclass
class _GroupSums:
    """Per-group sums ``[n_groups, ...]``: count, Σy, Σy², Σ(y-ŷ)² per column."""

    count: np.ndarray
    sy: np.ndarray
    syy: np.ndarray
    sse: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, pred: np.ndarray, group: np.ndarray, n_groups: int) -> _GroupSums:
        """``group`` ``[n_rows]`` sorted so that each group's rows are contiguous."""
        m = y.shape[1]
        out = cls(np.zeros(n_groups), *(np.zeros((n_groups, m)) for _ in range(3)))
        if len(y) == 0:
            return out
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        ids = group[starts]
        out.count[ids] = np.diff(np.r_[starts, len(y)])
        out.sy[ids] = np.add.reduceat(y, starts, axis=0)
        out.syy[ids] = np.add.reduceat(y * y, starts, axis=0)
        out.sse[ids] = np.add.reduceat((y - pred) ** 2, starts, axis=0)
        return out

    def weighted(self, weights: np.ndarray) -> _GroupSums:
        """Sums under group weights ``[k, n_groups]`` (bootstrap counts, fold indicators)."""
        return _GroupSums(
            weights @ self.count, weights @ self.sy, weights @ self.syy, weights @ self.sse
        )


def _r2(sums: _GroupSums, constant: np.ndarray) -> np.ndarray:
    """R² per column ``[..., m]`` from summed statistics; NaN where not defined."""
    count = sums.count[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sst = sums.syy - sums.sy**2 / count
        r2 = 1.0 - sums.sse / sst
    undefined = (count <= 1) | (sst <= 1e-12 * sums.syy) | constant
    return np.where(undefined, np.nan, r2)


def _mean_outputs(r2: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where all are NaN."""
    finite = np.isfinite(r2)
    total = np.where(finite, r2, 0.0).sum(axis=-1)
    count = finite.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    """Central ``ci`` percentile interval of the finite ``values``; NaNs when there are none."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return math.nan, math.nan
    low, high = np.percentile(finite, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])
    return float(low), float(high)


def _score_layer(
    x: np.ndarray,
    setup: _Setup,
    *,
    options: _Options,
    out: dict[str, dict[str, np.ndarray]],
    layer: int,
    predictions: dict[str, np.ndarray] | None,
) -> None:
    """Probe one layer ``x`` ``[n_samples, dim]`` (fold-sorted) for every task; fill ``out``."""
    offset = x.mean(axis=0)
    x -= offset  # a constant shift (exact): every fit re-centres on its own training rows
    n_groups = setup.bootstrap.shape[1]
    fold_weights = (setup.fold_of_group[None, :] == np.arange(setup.folds)[:, None]).astype(float)
    for task in setup.tasks:
        xt = x if len(task.rows) == len(x) else x[task.rows]
        pred, chosen = _fit_task(xt, task, options=options, offset=offset)
        sums = _GroupSums.of(task.y, pred, task.group, n_groups)
        pooled = _r2(sums.weighted(np.ones((1, n_groups))), task.constant)[0]
        per_fold = _r2(sums.weighted(fold_weights), task.constant)
        boot = None
        if len(setup.bootstrap):
            boot = _r2(sums.weighted(setup.bootstrap), task.constant)
        for i, span in enumerate(task.spans):
            cols = slice(span.start, span.stop)
            rec = out[span.name]
            if span.control:
                rec["control_r2"][layer] = _mean_outputs(pooled[cols])
                continue
            rec["r2"][layer] = _mean_outputs(pooled[cols])
            rec["fold_r2"][layer] = _mean_outputs(per_fold[:, cols])
            if np.isfinite(rec["r2"][layer]):  # else nothing was fitted: alpha stays NaN
                rec["alpha"][layer] = np.median(options.grid[chosen[:, i]])
            if boot is not None:
                low, high = _percentile_interval(_mean_outputs(boot[:, cols]), options.ci)
                rec["r2_ci_low"][layer], rec["r2_ci_high"][layer] = low, high
            if predictions is not None:
                target_pred = predictions[span.name]
                target_pred[layer, setup.order[task.rows]] = pred[:, cols] + task.y_offset[cols]


# --------------------------------------------------------------------------------------------
# Results


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _json_list(values: Sequence[float] | None) -> list[float | None] | None:
    return None if values is None else [finite_or_none(v) for v in values]


def _from_json_list(values: Sequence[float | None] | None) -> list[float] | None:
    return None if values is None else [math.nan if v is None else float(v) for v in values]


@dataclass
class TargetProbeResult:
    """Probe of one target over all layers. Lists hold one value per layer (NaN: undefined).

    See the module docstring for the meaning of each field; ``fold_r2`` is
    ``[n_layers][folds]``. ``random_model_r2`` is None unless control features were probed.
    """

    name: str
    n_outputs: int
    n_samples: int
    transform: str
    r2: list[float]
    r2_std: list[float]
    r2_ci_low: list[float]
    r2_ci_high: list[float]
    fold_r2: list[list[float]]
    alpha: list[float]
    control_r2: list[float]
    random_model_r2: list[float] | None
    selectivity: list[float]
    selectivity_baseline: str
    best_layer: int | None
    runner_up_layer: int | None
    margin_over_median: float
    fold_wins_over_runner_up: int | None
    beats_runner_up: bool | None

    def is_validated(
        self,
        layer: int,
        *,
        min_r2: float = 0.5,
        min_margin: float = 0.1,
        against_random_model: bool = True,
    ) -> bool:
        """Whether the target is validated on ``layer``.

        True when ``r2[layer] >= min_r2`` and ``r2_ci_low[layer] > baseline + min_margin``, the
        baseline being ``control_r2[layer]``, or the larger of it and ``random_model_r2[layer]``
        when that exists and ``against_random_model``. Without any finite baseline (probe run
        with ``control="none"`` and no random model) nothing is validated.
        """
        baselines = [self.control_r2[layer]]
        if against_random_model and self.random_model_r2 is not None:
            baselines.append(self.random_model_r2[layer])
        baselines = [b for b in baselines if math.isfinite(b)]
        r2, low = self.r2[layer], self.r2_ci_low[layer]
        if not baselines or not (math.isfinite(r2) and math.isfinite(low)):
            return False
        return r2 >= min_r2 and low > max(baselines) + min_margin

    def validated_layers(self, **kwargs: Any) -> list[int]:
        """Layers on which `is_validated` holds (same keyword arguments), best first."""
        layers = [i for i in range(len(self.r2)) if self.is_validated(i, **kwargs)]
        return sorted(layers, key=lambda i: -self.r2[i])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN → None); the per-target part of `ProbeResults.to_dict`."""
        return {
            "n_outputs": self.n_outputs,
            "n_samples": self.n_samples,
            "transform": self.transform,
            "r2": _json_list(self.r2),
            "r2_std": _json_list(self.r2_std),
            "r2_ci_low": _json_list(self.r2_ci_low),
            "r2_ci_high": _json_list(self.r2_ci_high),
            "fold_r2": [_json_list(row) for row in self.fold_r2],
            "alpha": _json_list(self.alpha),
            "control_r2": _json_list(self.control_r2),
            "random_model_r2": _json_list(self.random_model_r2),
            "selectivity": _json_list(self.selectivity),
            "selectivity_baseline": self.selectivity_baseline,
            "best_layer": self.best_layer,
            "runner_up_layer": self.runner_up_layer,
            "margin_over_median": finite_or_none(self.margin_over_median),
            "fold_wins_over_runner_up": self.fold_wins_over_runner_up,
            "beats_runner_up": self.beats_runner_up,
        }

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> TargetProbeResult:
        """Inverse of `to_dict`."""
        n_layers = len(d["r2"])
        missing = [None] * n_layers
        margin = d.get("margin_over_median")
        return cls(
            name=name,
            n_outputs=int(d.get("n_outputs", 1)),
            n_samples=int(d.get("n_samples", 0)),
            transform=d.get("transform", "none"),
            r2=_from_json_list(d["r2"]),
            r2_std=_from_json_list(d.get("r2_std", missing)),
            r2_ci_low=_from_json_list(d.get("r2_ci_low", missing)),
            r2_ci_high=_from_json_list(d.get("r2_ci_high", missing)),
            fold_r2=[_from_json_list(row) for row in d.get("fold_r2", [])],
            alpha=_from_json_list(d.get("alpha", missing)),
            control_r2=_from_json_list(d.get("control_r2", missing)),
            random_model_r2=_from_json_list(d.get("random_model_r2")),
            selectivity=_from_json_list(d.get("selectivity", missing)),
            selectivity_baseline=d.get("selectivity_baseline", "none"),
            best_layer=d.get("best_layer"),
            runner_up_layer=d.get("runner_up_layer"),
            margin_over_median=math.nan if margin is None else float(margin),
            fold_wins_over_runner_up=d.get("fold_wins_over_runner_up"),
            beats_runner_up=d.get("beats_runner_up"),
        )


@dataclass
class ProbeResults:
    """Result of `probe_layers`: one `TargetProbeResult` per target plus the run's settings.

    ``predictions`` (only with ``return_predictions=True``; never serialised): target name →
    out-of-fold predictions ``[n_layers, n_samples]`` or ``[n_layers, n_samples, k]`` in the
    target's (transformed) units, NaN for dropped samples.
    """

    targets: dict[str, TargetProbeResult]
    n_samples: int
    n_groups: int
    n_layers: int
    folds: int
    inner_folds: int
    seed: int
    alphas: list[float]
    alpha_scale: Literal["relative", "absolute"]
    control: Literal["permute", "none"]
    random_model: bool
    n_bootstrap: int
    ci: float
    predictions: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def best_layers(self) -> dict[str, int | None]:
        """Target name → best layer (None when no layer has a defined R²)."""
        return {name: t.best_layer for name, t in self.targets.items()}

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON layout (see the module docstring)."""
        return {
            "schema": SCHEMA,
            "n_samples": self.n_samples,
            "n_groups": self.n_groups,
            "n_layers": self.n_layers,
            "folds": self.folds,
            "inner_folds": self.inner_folds,
            "seed": self.seed,
            "alphas": _json_list(self.alphas),
            "alpha_scale": self.alpha_scale,
            "control": self.control,
            "random_model": self.random_model,
            "n_bootstrap": self.n_bootstrap,
            "ci": self.ci,
            "targets": {name: t.to_dict() for name, t in self.targets.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeResults:
        """Read back `to_dict` output (e.g. after a JSON round trip)."""
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise MessError(f"unsupported probe results schema {schema!r} (expected {SCHEMA!r})")
        return cls(
            targets={
                name: TargetProbeResult.from_dict(name, t) for name, t in d["targets"].items()
            },
            n_samples=int(d["n_samples"]),
            n_groups=int(d["n_groups"]),
            n_layers=int(d["n_layers"]),
            folds=int(d["folds"]),
            inner_folds=int(d.get("inner_folds", 0)),
            seed=int(d["seed"]),
            alphas=_from_json_list(d["alphas"]),
            alpha_scale=d.get("alpha_scale", "relative"),
            control=d.get("control", "permute"),
            random_model=bool(d.get("random_model", False)),
            n_bootstrap=int(d.get("n_bootstrap", 0)),
            ci=float(d.get("ci", 0.95)),
        )


def _fold_std(fold_r2: np.ndarray) -> np.ndarray:
    """Sample std over folds ``[n_layers]`` of ``[n_layers, folds]``, ignoring NaN."""
    out = np.full(fold_r2.shape[0], np.nan)
    for i, row in enumerate(fold_r2):
        finite = row[np.isfinite(row)]
        if len(finite) > 1:
            out[i] = np.std(finite, ddof=1)
    return out


def _summarise(
    name: str,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    random_r2: np.ndarray | None,
    *,
    has_control: bool,
) -> TargetProbeResult:
    """Per-target record: best layer, runner-up comparison, selectivity."""
    r2, fold_r2 = arrays["r2"], arrays["fold_r2"]
    ranked = [int(i) for i in np.argsort(-np.where(np.isfinite(r2), r2, -np.inf), kind="stable")]
    ranked = [i for i in ranked if np.isfinite(r2[i])]
    best = ranked[0] if ranked else None
    runner_up = ranked[1] if len(ranked) > 1 else None
    margin = float(r2[best] - np.median(r2[ranked])) if best is not None else math.nan
    wins = beats = None
    if runner_up is not None:
        diff = fold_r2[best] - fold_r2[runner_up]
        wins = int(np.sum(diff > 0))
        beats = bool(np.all(np.isfinite(diff)) and wins == len(diff))
    if random_r2 is not None:
        selectivity, baseline = r2 - random_r2, "random_model"
    elif has_control:
        selectivity, baseline = r2 - arrays["control_r2"], "permuted"
    else:
        selectivity, baseline = np.full_like(r2, np.nan), "none"
    return TargetProbeResult(
        name=name,
        n_outputs=int(meta["n_outputs"]),
        n_samples=int(meta["n_samples"]),
        transform=str(meta["transform"]),
        r2=_floats(r2),
        r2_std=_floats(_fold_std(fold_r2)),
        r2_ci_low=_floats(arrays["r2_ci_low"]),
        r2_ci_high=_floats(arrays["r2_ci_high"]),
        fold_r2=[_floats(row) for row in fold_r2],
        alpha=_floats(arrays["alpha"]),
        control_r2=_floats(arrays["control_r2"]),
        random_model_r2=None if random_r2 is None else _floats(random_r2),
        selectivity=_floats(selectivity),
        selectivity_baseline=baseline,
        best_layer=best,
        runner_up_layer=runner_up,
        margin_over_median=margin,
        fold_wins_over_runner_up=wins,
        beats_runner_up=beats,
    )


# --------------------------------------------------------------------------------------------
# Entry point


def _check_features(features: Any, n_samples: int | None, what: str) -> Any:
    shape = np.shape(features)
    if len(shape) != 3:
        raise MessError(f"{what} must be [n_samples, n_layers, dim], got shape {shape}")
    if n_samples is not None and shape[0] != n_samples:
        raise MessError(f"{what} has {shape[0]} samples, expected {n_samples}")
    if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
        raise MessError(f"{what} is empty (shape {shape})")
    return features


def _check_inputs(features: Any, groups: np.ndarray, control_features: Any) -> tuple[int, int]:
    """``(n_samples, n_layers)`` after checking the shapes of the arrays."""
    _check_features(features, None, "features")
    n_samples, n_layers = np.shape(features)[:2]
    if np.shape(groups) != (n_samples,):
        raise MessError(f"groups has shape {np.shape(groups)}, expected ({n_samples},)")
    if control_features is not None:
        _check_features(control_features, n_samples, "control_features")
        if np.shape(control_features)[1] != n_layers:
            raise MessError(
                f"control_features has {np.shape(control_features)[1]} layers, "
                f"features has {n_layers}"
            )
    return n_samples, n_layers


def _check_targets(targets: Mapping[str, Any], transforms: Mapping[str, str] | None) -> None:
    if not targets:
        raise ConfigError("no targets to probe")
    for name, transform in (transforms or {}).items():
        if name not in targets:
            raise ConfigError(f"target_transforms names unknown target {name!r}")
        if transform not in TRANSFORMS:
            raise ConfigError(
                f"transform for {name!r} must be one of {TRANSFORMS}, got {transform!r}"
            )


def _resolve_jobs(n_jobs: int | None) -> int:
    """scikit-learn's convention: None → 1, -1 → all CPUs, -2 → all but one ..."""
    import os

    if n_jobs is None:
        return 1
    if n_jobs == 0:
        raise ConfigError("n_jobs must not be 0")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    return max(1, n_jobs if n_jobs > 0 else cpus + 1 + n_jobs)


def _run_layers(
    features: Any,
    setup: _Setup,
    meta: Mapping[str, Mapping[str, Any]],
    *,
    options: _Options,
    n_jobs: int,
    return_predictions: bool,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray] | None]:
    """Probe every layer of ``features``; per-target arrays over layers (and predictions).

    BLAS/LAPACK run single-threaded (for the whole process, while this runs) and ``n_jobs``
    layers run concurrently in threads: on a small shared machine that is faster, and far more
    robust to other load, than multi-threaded LAPACK on small matrices; it also keeps numpy's
    and scipy's separate OpenBLAS thread pools from spinning against each other.
    """
    n_samples, n_layers = np.shape(features)[:2]
    folds = setup.folds
    per_layer = ("r2", "r2_ci_low", "r2_ci_high", "alpha", "control_r2")
    out = {
        name: {
            **{key: np.full(n_layers, np.nan) for key in per_layer},
            "fold_r2": np.full((n_layers, folds), np.nan),
        }
        for name in meta
    }
    predictions = None
    if return_predictions:
        predictions = {
            name: np.full((n_layers, n_samples, m["n_outputs"]), np.nan) for name, m in meta.items()
        }

    def probe_one(layer: int) -> None:
        x = np.asarray(features[setup.order, layer], dtype=np.float64)  # a fresh copy
        _score_layer(x, setup, options=options, out=out, layer=layer, predictions=predictions)
        logger.debug("probed layer %d/%d", layer + 1, n_layers)

    jobs = min(n_jobs, n_layers)
    with single_threaded_blas():
        if jobs <= 1:
            for layer in range(n_layers):
                probe_one(layer)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(probe_one, range(n_layers)))
    if predictions is not None:
        for name, m in meta.items():
            if m["ndim"] == 1:
                predictions[name] = predictions[name][..., 0]
    return out, predictions


def probe_layers(
    features: Any,
    targets: Mapping[str, Any],
    groups: Any,
    *,
    folds: int = 5,
    seed: int = 0,
    alphas: Sequence[float] | None = None,
    inner_folds: int = 2,
    control: Literal["permute", "none"] = "permute",
    control_features: Any | None = None,
    target_transforms: Mapping[str, str] | None = None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    n_jobs: int | None = -1,
    return_predictions: bool = False,
) -> ProbeResults:
    """Cross-validated ridge probe of every layer x target, with controls.

    Parameters
    ----------
    features
        ``[n_samples, n_layers, dim]`` array (float16/32/64, memory-mapped is fine); read one
        layer at a time.
    targets
        name → ``[n_samples]`` or ``[n_samples, k]`` values.
    groups
        ``[n_samples]`` group labels (track or work ids; any sortable type).
    folds
        Outer group folds (≥ 3 when alphas are searched, ≥ 2 for a single alpha); needs at
        least as many groups.
    seed
        Seeds the fold assignment, the control permutation and the bootstrap.
    alphas
        Ridge penalties to search. None: `DEFAULT_RELATIVE_ALPHAS` times the training sample
        count; given: absolute, as ``sklearn.linear_model.Ridge(alpha)`` on standardised
        features.
    inner_folds
        Training folds each outer fold is validated on in the alpha search: its neighbours in a
        fixed cycle of the folds (rounded up to even; ``folds - 1`` or more: all of them).
        Costs ``folds * inner_folds / 2`` extra decompositions per layer.
    control
        ``"permute"``: also probe targets permuted across groups (``control_r2``); ``"none"``.
    control_features
        Features of a random-weights model, ``[n_samples, n_layers, *]``; probed the same way
        (without its own permutation control) into ``random_model_r2``.
    target_transforms
        name → ``"none"`` or ``"log"`` (natural log; non-positive values count as missing).
    n_bootstrap, ci
        Group bootstrap resamples and the CI level (0 resamples: CIs are NaN).
    n_jobs
        Layers probed concurrently (threads; BLAS is limited to one thread meanwhile), with
        scikit-learn's convention: None or 1 one at a time, -1 one per CPU. Results do not
        depend on it.
    return_predictions
        Keep the out-of-fold predictions in `ProbeResults.predictions`.

    Raises
    ------
    MessError
        Bad shapes, or fewer groups than folds. `ConfigError` for bad settings.
    """
    groups = np.asarray(groups)
    n_samples, n_layers = _check_inputs(features, groups, control_features)
    _check_targets(targets, target_transforms)
    if control not in ("permute", "none"):
        raise ConfigError(f"control must be 'permute' or 'none', got {control!r}")
    relative = alphas is None
    grid = np.asarray(DEFAULT_RELATIVE_ALPHAS if relative else alphas, dtype=np.float64).ravel()
    if len(grid) == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
        raise ConfigError(f"alphas must be positive and finite, got {list(grid)}")
    if len(grid) > 1 and folds < 3:
        raise ConfigError("searching alphas needs folds >= 3 (it validates on other folds)")
    if inner_folds < 1:
        raise ConfigError(f"inner_folds must be at least 1, got {inner_folds}")
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be between 0 and 1, got {ci}")
    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be >= 0, got {n_bootstrap}")

    options = _Options(grid, relative, inner_folds, ci)
    jobs = _resolve_jobs(n_jobs)
    setup, meta = _build_setup(
        targets,
        groups,
        folds=folds,
        seed=seed,
        control=control == "permute",
        transforms=dict(target_transforms or {}),
        n_bootstrap=n_bootstrap,
    )
    arrays, predictions = _run_layers(
        features,
        setup,
        meta,
        options=options,
        n_jobs=jobs,
        return_predictions=return_predictions,
    )
    random_arrays = None
    if control_features is not None:
        plain_setup = _Setup(
            setup.order,
            setup.fold_of_group,
            [_without_controls(t) for t in setup.tasks],
            setup.bootstrap[:0],
            setup.folds,
        )
        random_arrays, _ = _run_layers(
            control_features,
            plain_setup,
            meta,
            options=options,
            n_jobs=jobs,
            return_predictions=False,
        )
    results = {
        name: _summarise(
            name,
            meta[name],
            arrays[name],
            None if random_arrays is None else random_arrays[name]["r2"],
            has_control=control == "permute",
        )
        for name in targets
    }
    return ProbeResults(
        targets=results,
        n_samples=int(n_samples),
        n_groups=int(setup.bootstrap.shape[1]),
        n_layers=int(n_layers),
        folds=folds,
        inner_folds=_effective_inner_folds(folds, inner_folds) if len(grid) > 1 else 0,
        seed=seed,
        alphas=_floats(grid),
        alpha_scale="relative" if relative else "absolute",
        control=control,
        random_model=control_features is not None,
        n_bootstrap=n_bootstrap,
        ci=ci,
        predictions=predictions,
    )


def _without_controls(task: _Task) -> _Task:
    """The task's real targets only (its permuted controls dropped)."""
    keep = [s for s in task.spans if not s.control]
    cols = np.concatenate([np.arange(s.start, s.stop) for s in keep])
    spans, start = [], 0
    for s in keep:
        spans.append(_Span(s.name, False, start, start + s.stop - s.start))
        start += s.stop - s.start
    return _Task(
        rows=task.rows,
        y=np.ascontiguousarray(task.y[:, cols]),
        spans=spans,
        bounds=task.bounds,
        group=task.group,
        constant=task.constant[cols],
        y_offset=task.y_offset[cols],
    )


# LayerDiscovery (store → probe_layers → results saved with the store) is in messai.analysis.discovery.
