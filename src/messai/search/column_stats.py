"""Per-column statistics of large vector matrices, in row chunks of bounded memory: the
mean and variance a :class:`~messai.search.normalise.Normalizer` fits, and its floored std.
Imports numpy only."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: rows × columns processed at once (64 MiB of float32)
CHUNK_ELEMENTS = 1 << 24


def row_chunks(n_rows: int, n_cols: int) -> Iterable[tuple[int, int]]:
    """``(start, stop)`` row ranges of at most :data:`CHUNK_ELEMENTS` elements each."""
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def column_mean_var(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) variance of ``X`` [n, dim].

    Returns
    -------
    mean, var : np.ndarray
        [dim] float64 each; computed in row chunks, two passes.
    """
    n, dim = X.shape
    total = np.zeros(dim)
    for start, stop in row_chunks(n, dim):
        total += X[start:stop].sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(dim)
    for start, stop in row_chunks(n, dim):
        centred = X[start:stop].astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    return mean, squares / n


def floored_std(var: np.ndarray, min_scale: float) -> np.ndarray:
    """Per-dimension std [dim] from variances [dim], floored at ``min_scale`` × RMS std.

    All ones when every variance is zero.
    """
    std = np.sqrt(var)
    rms = float(np.sqrt(np.mean(var)))
    if rms == 0.0:
        return np.ones_like(std)
    return np.maximum(std, min_scale * rms)
