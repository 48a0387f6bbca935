"""Splits of the layer probe: group folds, the inner folds of the alpha search, the
across-group permutation of the control, and the group bootstrap.

Everything here is about *which samples* go where; nothing is fitted. The method is described
in ``docs/probe-method.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from messai.errors import ConfigError, MessError

__all__ = [
    "bootstrap_counts",
    "effective_inner_folds",
    "group_kfold",
    "inner_fold_pairs",
    "permute_across_groups",
]


def group_kfold(groups: Any, n_splits: int, *, seed: int = 0) -> np.ndarray:
    """Assign every sample to an outer fold, keeping each group within one fold.

    The unique groups are shuffled with ``seed`` and dealt, in that order, each to the fold with
    the fewest samples so far: folds differ by at most one group's size and every fold gets at
    least one group.

    Parameters
    ----------
    groups
        ``[n_samples]`` group labels (track or work ids; any sortable type).
    n_splits
        Number of folds, at least 2.
    seed
        Seeds the order in which groups are dealt.

    Returns
    -------
    numpy.ndarray
        ``[n_samples]`` int64 fold of each sample, in ``0 .. n_splits - 1``.

    Raises
    ------
    ConfigError
        ``n_splits < 2``.
    MessError
        Fewer groups than folds.
    """
    groups = np.asarray(groups)
    _, group_index = np.unique(groups, return_inverse=True)
    sizes = np.bincount(group_index)
    if n_splits < 2:
        raise ConfigError(f"folds must be at least 2, got {n_splits}")
    if len(sizes) < n_splits:
        raise MessError(
            f"cannot make {n_splits} group folds from {len(sizes)} groups: "
            f"need at least as many groups (tracks) as folds; pass --folds {len(sizes)} "
            "or fewer, or add tracks"
        )
    rng = np.random.default_rng(seed)
    load = np.zeros(n_splits, dtype=np.int64)
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    for g in rng.permutation(len(sizes)):
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += sizes[g]
    return fold_of_group[group_index]


def permute_across_groups(
    y: np.ndarray, valid: np.ndarray, group_index: np.ndarray, group_cycle: np.ndarray
) -> np.ndarray:
    """Control targets: each group gets the valid target sequence of the next group in a cycle.

    Among groups with valid rows, taken in the order of ``group_cycle``, each takes the rows of
    the one after it (cyclically), row ``i`` from the donor's row ``i mod donor_size``; so no
    group keeps its own targets and groups of unequal size work.

    Parameters
    ----------
    y
        ``[n_samples, k]`` target values.
    valid
        ``[n_samples]`` bool, rows usable for this target; only these are exchanged.
    group_index
        ``[n_samples]`` dense group id of each row, in ``0 .. n_groups - 1``.
    group_cycle
        ``[n_groups]`` a (random) permutation of the group ids.

    Returns
    -------
    numpy.ndarray
        ``[n_samples, k]`` permuted targets; 0 on invalid rows, and everywhere when fewer than
        two groups have valid rows (a constant control: its R² is NaN).
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


def bootstrap_counts(rng: np.random.Generator, n_bootstrap: int, n_groups: int) -> np.ndarray:
    """Group bootstrap: how often each group is drawn in each resample.

    Parameters
    ----------
    rng
        Source of the draws.
    n_bootstrap
        Number of resamples (may be 0).
    n_groups
        Number of groups; each resample draws ``n_groups`` of them with replacement.

    Returns
    -------
    numpy.ndarray
        ``[n_bootstrap, n_groups]`` float64 counts, each row summing to ``n_groups``.
    """
    draws = rng.integers(0, n_groups, size=(n_bootstrap, n_groups))
    draws += (np.arange(n_bootstrap) * n_groups)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_bootstrap * n_groups)
    return counts.reshape(n_bootstrap, n_groups).astype(np.float64)


def inner_fold_pairs(folds: int, inner_folds: int) -> list[tuple[int, int]]:
    """Fold pairs ``(a, b)`` whose complement is an inner training set of the alpha search.

    Outer fold ``f`` is validated, for the alpha search, on the training folds nearest to it in
    the cycle ``0 .. folds-1``: ``f ± 1, ..., f ± ceil(inner_folds / 2)``, so on
    ``min(inner_folds rounded up to even, folds - 1)`` folds. The inner fit that leaves out
    ``f`` and validation fold ``v`` also serves outer fold ``v`` (validated on ``f``), so there
    are about ``folds * inner_folds / 2`` inner fits. ``inner_folds >= folds - 1`` is
    leave-one-fold-out over all training folds.

    Returns
    -------
    list of tuple of int
        Sorted pairs ``(a, b)`` with ``a < b``.
    """
    reach = min(-(-inner_folds // 2), folds // 2)
    pairs = {tuple(sorted((f, (f + j) % folds))) for f in range(folds) for j in range(1, reach + 1)}
    return sorted(pairs)


def effective_inner_folds(folds: int, inner_folds: int) -> int:
    """Training folds each outer fold is validated on (see `inner_fold_pairs`)."""
    return min(2 * -(-inner_folds // 2), folds - 1)
