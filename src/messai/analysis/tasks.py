"""Probe inputs: targets checked and transformed, their permuted controls, and the tasks.

A *task* is the set of targets (and their controls) that share the same valid rows; they are
fitted together, so they share every decomposition. `build_setup` makes the tasks once per
probe run, with the sample order, folds and bootstrap weights every layer uses. The method is
described in ``docs/probe-method.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from messai.analysis.splits import bootstrap_counts, group_kfold, permute_across_groups
from messai.errors import MessError

__all__ = ["TRANSFORMS", "FitTask", "ProbeSetup", "TargetSpan", "build_setup"]

#: Target transforms `probe_layers` applies: ``"log"`` is the natural log, non-positive values
#: counting as missing (the proxy targets' ``log1p`` is applied before, by the caller).
TRANSFORMS = ("none", "log")


@dataclass(frozen=True)
class TargetSpan:
    """Columns ``start:stop`` of a task's ``y`` belong to target ``name`` (or its control)."""

    name: str
    control: bool
    start: int
    stop: int


@dataclass
class FitTask:
    """Targets sharing one set of valid samples, fitted together.

    ``rows`` index the fold-sorted samples; ``y`` is ``[n_rows, n_columns]`` float64, centred;
    ``bounds`` ``[folds + 1]`` delimit each fold's rows; ``group`` ``[n_rows]`` dense group ids.
    """

    rows: np.ndarray
    y: np.ndarray
    spans: list[TargetSpan]
    bounds: np.ndarray
    group: np.ndarray
    constant: np.ndarray  # [n_columns] bool: output has a single value
    y_offset: np.ndarray  # [n_columns] the mean removed from y


@dataclass
class ProbeSetup:
    """Everything shared by all layers: sample order, folds, tasks, bootstrap weights."""

    order: np.ndarray  # [n_samples] sample index, sorted by (fold, group)
    fold_of_group: np.ndarray  # [n_groups]
    tasks: list[FitTask]
    bootstrap: np.ndarray  # [n_bootstrap, n_groups] resample counts
    folds: int

    def without_controls(self, *, keep_bootstrap: bool = False) -> ProbeSetup:
        """The same folds and tasks with the permuted controls dropped (what the probe of a
        random model's features needs), and without the bootstrap unless ``keep_bootstrap``
        (the same resamples: the random model's R² gets a CI comparable to the model's)."""
        tasks = [_task_without_controls(t) for t in self.tasks]
        boot = self.bootstrap if keep_bootstrap else self.bootstrap[:0]
        return ProbeSetup(self.order, self.fold_of_group, tasks, boot, self.folds)


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


def _make_task(
    members: list[tuple[str, np.ndarray, np.ndarray]],
    *,
    order: np.ndarray,
    fold_sorted: np.ndarray,
    group_index: np.ndarray,
    group_cycle: np.ndarray | None,
    folds: int,
) -> FitTask:
    """One task from targets ``(name, y [n, k], valid [n])`` that share ``valid``; with a
    ``group_cycle``, each target is followed by its group-permuted control columns."""
    rows = np.flatnonzero(members[0][2][order])
    columns, spans, constant, means = [], [], [], []
    for name, y, valid in members:
        pieces = [(False, y)]
        if group_cycle is not None:
            pieces.append((True, permute_across_groups(y, valid, group_index, group_cycle)))
        for is_control, values in pieces:
            block = values[order][rows]
            mean = block.mean(axis=0) if len(block) else np.zeros(block.shape[1])
            start = sum(c.shape[1] for c in columns)
            spans.append(TargetSpan(name, is_control, start, start + block.shape[1]))
            constant.append(np.ptp(block, axis=0) == 0 if len(block) else mean == 0)
            means.append(mean)
            columns.append(block - mean)
    return FitTask(
        rows=rows,
        y=np.ascontiguousarray(np.concatenate(columns, axis=1)),
        spans=spans,
        bounds=np.searchsorted(fold_sorted[rows], np.arange(folds + 1)),
        group=group_index[order][rows],
        constant=np.concatenate(constant),
        y_offset=np.concatenate(means),
    )


def build_setup(
    targets: Mapping[str, Any],
    groups: np.ndarray,
    *,
    folds: int,
    seed: int,
    control: bool,
    transforms: Mapping[str, str],
    n_bootstrap: int,
) -> tuple[ProbeSetup, dict[str, dict[str, Any]]]:
    """Fold assignment, sample order, tasks and bootstrap weights shared by every layer.

    Parameters
    ----------
    targets
        name → ``[n_samples]`` or ``[n_samples, k]`` values.
    groups
        ``[n_samples]`` group labels.
    folds, seed
        As in `probe_layers`: the outer group folds and the seed of folds, control and bootstrap.
    control
        Add each target's group-permuted control columns to its task.
    transforms
        name → one of `TRANSFORMS` (missing names: ``"none"``).
    n_bootstrap
        Group bootstrap resamples.

    Returns
    -------
    setup : ProbeSetup
        Samples sorted by (fold, group), the tasks and ``[n_bootstrap, n_groups]`` counts.
    meta : dict
        name → ``{"n_outputs", "n_samples" (valid ones), "transform", "ndim"}``.
    """
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
    bootstrap = bootstrap_counts(bootstrap_rng, n_bootstrap, n_groups)
    return ProbeSetup(order, fold_of_group, tasks, bootstrap, folds), meta


def _task_without_controls(task: FitTask) -> FitTask:
    """The task's real targets only (its permuted controls dropped)."""
    keep = [s for s in task.spans if not s.control]
    cols = np.concatenate([np.arange(s.start, s.stop) for s in keep])
    spans, start = [], 0
    for s in keep:
        spans.append(TargetSpan(s.name, False, start, start + s.stop - s.start))
        start += s.stop - s.start
    return FitTask(
        rows=task.rows,
        y=np.ascontiguousarray(task.y[:, cols]),
        spans=spans,
        bounds=task.bounds,
        group=task.group,
        constant=task.constant[cols],
        y_offset=task.y_offset[cols],
    )
