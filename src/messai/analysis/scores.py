"""Scores of the layer probe: R² from out-of-fold predictions, and the per-target summary.

`score_layer` fits one layer for every task and scores it: R² pooled over all out-of-fold
predictions, per fold, and on group-bootstrap resamples (all from per-group sums).
`summarise_target` turns a target's per-layer arrays into a `TargetProbeResult`: best layer
(by the lower CI bound of R², see `selection_statistic`), runner-up comparison, selectivity, and the cells
whose folds disagree (`unstable_cells`). The method is described in ``docs/probe-method.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.analysis.results import DEFAULT_MAX_FOLD_SPREAD, TargetProbeResult, float_list
from messai.analysis.ridge import FitOptions, fit_task
from messai.analysis.tasks import ProbeSetup

__all__ = [
    "fold_median",
    "rank_layers",
    "score_layer",
    "selection_statistic",
    "summarise_target",
    "unstable_cells",
]


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


def score_layer(
    x: np.ndarray,
    setup: ProbeSetup,
    *,
    options: FitOptions,
    out: dict[str, dict[str, np.ndarray]],
    layer: int,
    predictions: dict[str, np.ndarray] | None,
) -> None:
    """Probe one layer for every task of ``setup`` and write its scores into ``out``.

    Parameters
    ----------
    x
        ``[n_samples, dim]`` float64 features of the layer, rows in ``setup.order``; centred
        in place.
    setup
        Folds, tasks and bootstrap weights.
    options
        Alpha grid, inner folds and CI level.
    out
        target name → ``{"r2", "r2_ci_low", "r2_ci_high", "alpha", "control_r2"}`` arrays
        ``[n_layers]`` and ``"fold_r2"`` ``[n_layers, folds]``; entry ``layer`` is filled.
    layer
        Index of this layer in ``out``.
    predictions
        target name → ``[n_layers, n_samples, k]`` out-of-fold predictions to fill (in the
        target's units, original sample order), or None.
    """
    offset = x.mean(axis=0)
    x -= offset  # a constant shift (exact): every fit re-centres on its own training rows
    n_groups = setup.bootstrap.shape[1]
    fold_weights = (setup.fold_of_group[None, :] == np.arange(setup.folds)[:, None]).astype(float)
    for task in setup.tasks:
        xt = x if len(task.rows) == len(x) else x[task.rows]
        pred, chosen = fit_task(xt, task, options=options, offset=offset)
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


def _fold_std(fold_r2: np.ndarray) -> np.ndarray:
    """Sample std over folds ``[n_layers]`` of ``[n_layers, folds]``, ignoring NaN."""
    out = np.full(fold_r2.shape[0], np.nan)
    for i, row in enumerate(fold_r2):
        finite = row[np.isfinite(row)]
        if len(finite) > 1:
            out[i] = np.std(finite, ddof=1)
    return out


def summarise_target(
    name: str,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    random_r2: np.ndarray | None,
    *,
    has_control: bool,
    random_ci: tuple[np.ndarray, np.ndarray] | None = None,
    max_fold_spread: float = DEFAULT_MAX_FOLD_SPREAD,
) -> TargetProbeResult:
    """One target's result over all layers: best layer, runner-up comparison, selectivity.

    Parameters
    ----------
    name
        Target name.
    meta
        ``{"n_outputs", "n_samples", "transform"}`` of the target (from `build_setup`).
    arrays
        The target's arrays filled by `score_layer`: ``[n_layers]`` each, ``fold_r2``
        ``[n_layers, folds]``.
    random_r2
        ``[n_layers]`` R² of the random model's features, or None.
    has_control
        Whether ``arrays["control_r2"]`` holds the permuted control.
    random_ci
        ``(low, high)`` ``[n_layers]`` bootstrap CI of the random model's R², or None.
    max_fold_spread
        A cell whose fold R²s spread more than this (or disagree in sign) is flagged unstable.

    Returns
    -------
    TargetProbeResult
    """
    r2, fold_r2 = arrays["r2"], arrays["fold_r2"]
    median = fold_median(fold_r2)
    ranked = rank_layers(r2, selection_statistic(arrays["r2_ci_low"], median))
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
        r2=float_list(r2),
        r2_std=float_list(_fold_std(fold_r2)),
        r2_ci_low=float_list(arrays["r2_ci_low"]),
        r2_ci_high=float_list(arrays["r2_ci_high"]),
        fold_r2=[float_list(row) for row in fold_r2],
        alpha=float_list(arrays["alpha"]),
        control_r2=float_list(arrays["control_r2"]),
        random_model_r2=None if random_r2 is None else float_list(random_r2),
        selectivity=float_list(selectivity),
        selectivity_baseline=baseline,
        best_layer=best,
        runner_up_layer=runner_up,
        margin_over_median=margin,
        fold_wins_over_runner_up=wins,
        beats_runner_up=beats,
        fold_r2_median=float_list(median),
        unstable=unstable_cells(fold_r2, max_spread=max_fold_spread),
        random_model_r2_ci_low=None if random_ci is None else float_list(random_ci[0]),
        random_model_r2_ci_high=None if random_ci is None else float_list(random_ci[1]),
    )


def fold_median(fold_r2: np.ndarray) -> np.ndarray:
    """Median over folds ``[n_layers]`` of ``[n_layers, folds]``, ignoring NaN (NaN if none)."""
    out = np.full(fold_r2.shape[0], np.nan)
    for i, row in enumerate(fold_r2):
        finite = row[np.isfinite(row)]
        if len(finite):
            out[i] = float(np.median(finite))
    return out


def selection_statistic(ci_low: np.ndarray, median: np.ndarray) -> np.ndarray:
    """What the best layer is chosen on: the lower end of the group-bootstrap CI of R²
    (``r2_ci_low``) when the probe ran a bootstrap, else the median fold R². Neither can be
    carried by one fold (or a few groups) the way the pooled R² can."""
    return ci_low if np.isfinite(ci_low).any() else median


def rank_layers(r2: np.ndarray, statistic: np.ndarray) -> list[int]:
    """Layers with a finite pooled R², best first, ranked by ``statistic`` (see
    :func:`selection_statistic`), ties by pooled R²; layers without a finite statistic come
    last, by pooled R²."""
    layers = [i for i in range(len(r2)) if np.isfinite(r2[i])]
    return sorted(
        layers,
        key=lambda i: (
            0 if np.isfinite(statistic[i]) else 1,
            -statistic[i] if np.isfinite(statistic[i]) else 0.0,
            -r2[i],
            i,
        ),
    )


def unstable_cells(fold_r2: np.ndarray, *, max_spread: float) -> list[bool]:
    """Per layer: whether its folds disagree in sign (one below 0, one above) or spread more
    than ``max_spread`` (max − min fold R²); needs two finite folds."""
    out = []
    for row in fold_r2:
        finite = row[np.isfinite(row)]
        if len(finite) < 2:
            out.append(False)
            continue
        lo, hi = float(finite.min()), float(finite.max())
        out.append(bool((lo < 0.0 < hi) or (hi - lo > max_spread)))
    return out
