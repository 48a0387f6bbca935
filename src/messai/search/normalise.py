"""Corpus normalisation of track vectors: centre / z-score / L2, fitted once, applied to queries.

The modes are described in ``docs/index-format.md`` (section "Normalisation"). Imports numpy
only.
"""

from __future__ import annotations

import numpy as np

from messai.errors import ConfigError
from messai.search.column_stats import (  # noqa: F401 - re-exported: they were defined here
    CHUNK_ELEMENTS,
    column_mean_var,
    floored_std,
    row_chunks,
)

__all__ = [
    "INDEX_MODES",
    "NORMALIZE_MODES",
    "Normalizer",
    "column_mean_var",
    "floored_std",
    "row_chunks",
]

#: the normalisations a user chooses for a layer's index
NORMALIZE_MODES = ("center", "zscore", "l2")
#: those an index may record: also ``"none"`` (vectors kept as given), used by the indices of
#: fitted aspect spaces (``messai.search.spaces``), whose rows are already search coordinates
INDEX_MODES = (*NORMALIZE_MODES, "none")


class Normalizer:
    """Centre / standardise / L2-normalise vectors with statistics fitted on a corpus.

    Estimator-style: parameters in ``__init__``, learned state with a trailing underscore.

    Parameters
    ----------
    mode : str
        ``"center"``, ``"zscore"`` or ``"l2"`` (see ``docs/index-format.md``).
    min_scale : float
        ``"zscore"`` only: each dimension's std is floored at ``min_scale`` × the RMS of all
        dimensions' stds (:func:`floored_std`), so near-constant dimensions are not blown up (a
        query from outside the corpus would otherwise be dominated by them). If every dimension
        is constant the scale is 1.

    Attributes
    ----------
    mean_ : np.ndarray
        [dim] float64 (zeros for ``"l2"``).
    scale_ : np.ndarray
        [dim] float64 (ones for ``"l2"`` and ``"center"``).
    n_fit_ : int
        Number of corpus rows the statistics come from.
    """

    def __init__(self, mode: str = "center", *, min_scale: float = 1e-2) -> None:
        if mode not in INDEX_MODES:
            raise ConfigError(
                f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALIZE_MODES)}"
            )
        self.mode = mode
        self.min_scale = float(min_scale)

    def fit(self, X: np.ndarray) -> Normalizer:
        """Learn ``mean_`` and ``scale_`` from ``X`` [n, dim] (any float dtype); returns self."""
        X = np.asarray(X)
        n, dim = X.shape
        if self.mode in ("l2", "none"):
            mean, scale = np.zeros(dim), np.ones(dim)
        else:
            mean, var = column_mean_var(X)
            scale = np.ones(dim)
            if self.mode == "zscore":
                scale = floored_std(var, self.min_scale)
        self.mean_, self.scale_, self.n_fit_ = mean, scale, int(n)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Normalise ``X`` [n, dim] → float32 [n, dim] rows of unit norm (or all-zero rows).

        A row that normalises to zero (a zero vector, or the corpus mean under ``"center"``)
        stays the zero vector: similarity 0 to everything, never NaN.
        """
        X = np.asarray(X)
        out = np.empty(X.shape, dtype=np.float32)
        for start, stop in row_chunks(X.shape[0], X.shape[1]):
            out[start:stop] = self._transform_chunk(X[start:stop])
        return out

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``: [n, dim] → float32 [n, dim]."""
        return self.fit(X).transform(X)

    def _transform_chunk(self, X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float64)
        if self.mode == "none":  # search coordinates already (an aspect space's index)
            return X
        Y = (X - self.mean_) / self.scale_
        norms = np.linalg.norm(Y, axis=1)
        # "Zero" relative to the input's own magnitude: a row equal to the mean up to
        # float rounding carries no direction; it becomes the zero vector, not noise.
        reference = np.linalg.norm(X / self.scale_, axis=1) + np.linalg.norm(
            self.mean_ / self.scale_
        )
        zero = norms <= 1e-10 * reference
        norms[zero] = 1.0
        Y /= norms[:, None]
        Y[zero] = 0.0
        return Y

    @classmethod
    def from_state(
        cls, mode: str, mean: np.ndarray, scale: np.ndarray, n_fit: int, *, min_scale: float
    ) -> Normalizer:
        """Rebuild a fitted normaliser from saved state (``mean``, ``scale``: [dim])."""
        norm = cls(mode, min_scale=min_scale)
        norm.mean_ = np.asarray(mean, dtype=np.float64)
        norm.scale_ = np.asarray(scale, dtype=np.float64)
        norm.n_fit_ = int(n_fit)
        return norm

    def __repr__(self) -> str:
        return f"Normalizer(mode={self.mode!r}, min_scale={self.min_scale})"
