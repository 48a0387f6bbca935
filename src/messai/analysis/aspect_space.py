"""Aspect spaces: a linear projection of one layer (or several, concatenated) into a small space
where distance follows one aspect.

Two kinds, both closed-form and auditable:

- **target spaces** (an aspect defined by proxy targets, e.g. brightness ← centroid, roll-off):
  the span of a ridge probe's weights. Features are standardised, the targets (each after its
  own transform, ``log1p`` for Hz) standardised per output, alpha chosen by grouped
  cross-validation (no group on both sides), the weights fitted on every window, and the
  predicted outputs *whitened* (their covariance made the identity) so that every output counts
  equally. The space has at most as many dimensions as there are target outputs.
- **label spaces** (an aspect defined by a label column: instrument, work, mood ...): a shrinkage
  LDA (scikit-learn, ``solver="eigen"``, Ledoit-Wolf shrinkage), whose projection whitens the
  within-class scatter; at most ``n_classes - 1`` dimensions.

Either way a space is ``z = (x - mean_) @ components_`` on a track's (or window's) concatenated
layer vectors ``x``; being linear, a track's position is the mean of its windows' positions.
Distances are euclidean; a similarity for ranking and fusion is ``exp(-d² / (2 · dim))`` (1 for
identical positions; about e⁻¹ for two typical tracks, whatever the space's dimension).

The fits on arrays (``fit_ridge_span``, ``fit_shrinkage_lda`` and their cross-validation) are
in :mod:`messai.analysis.space_fitting`; this module re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from messai.analysis.space_fitting import (  # noqa: F401 - re-exported: they were defined here
    ALPHAS,
    RANK_TOL,
    _folds,
    _standardise,
    cv_r2_by_name,
    fit_ridge_span,
    fit_shrinkage_lda,
    ridge_cv,
    ridge_weights,
)


@dataclass
class AspectSpace:
    """A fitted aspect space (scikit-learn style: learned state ends with ``_``).

    Attributes
    ----------
    name : str
        The aspect (a built-in aspect such as ``spectral_brightness``, or any name).
    kind : str
        ``"targets"`` or ``"label"``.
    sources : list of str
        Target names, or ``[label column]``.
    layers : list of int
        Layers concatenated (in this order) before projecting.
    method : str
        ``"ridge_span"`` or ``"shrinkage_lda"``.
    mean_ : ndarray, shape (n_layers * dim,)
    components_ : ndarray, shape (n_layers * dim, n_components)
    evidence : dict
        Held-out figures of the fit (``cv_r2`` per target, or ``cv_accuracy`` and ``chance``).
    fingerprint : str or None
        ``store.fingerprint(probe_inputs=True)`` of the store it was fitted on.
    """

    name: str
    kind: str
    sources: list[str]
    layers: list[int]
    method: str
    mean_: np.ndarray
    components_: np.ndarray
    evidence: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    created: str | None = None

    @property
    def dim(self) -> int:
        """Dimensions of the space."""
        return int(self.components_.shape[1])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``[n, n_layers * dim]`` (or ``[n, n_layers, dim]``) → ``[n, n_components]`` float64."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 3:
            X = X.reshape(len(X), -1)
        return (X - self.mean_) @ self.components_

    def describe(self) -> dict[str, Any]:
        """Everything but the arrays (for listings and JSON)."""
        return {
            "aspect": self.name,
            "kind": self.kind,
            "sources": list(self.sources),
            "layers": list(self.layers),
            "method": self.method,
            "dim": self.dim,
            "evidence": self.evidence,
            "fingerprint": self.fingerprint,
            "created": self.created,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.describe(),
            "mean": self.mean_.astype(np.float32).tolist(),
            "components": self.components_.astype(np.float32).tolist(),
        }

    def checksum(self) -> str:
        """SHA-256 (hex, 20 characters) of the space as saved (:func:`dict_checksum` of
        :meth:`to_dict`): what its index and results depend on."""
        return dict_checksum(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AspectSpace:
        mean = np.asarray(d["mean"], dtype=np.float64)
        comp = np.asarray(d["components"], dtype=np.float64).reshape(len(mean), -1)
        return cls(
            d["aspect"],
            d["kind"],
            list(d["sources"]),
            [int(x) for x in d["layers"]],
            d["method"],
            mean,
            comp,
            d.get("evidence") or {},
            d.get("fingerprint"),
            d.get("created"),
        )


def dict_checksum(d: dict[str, Any]) -> str:
    """SHA-256 (hex, 20 characters) of a saved space's canonical JSON, its own ``checksum``
    entry left out (numbers as float32 values, as saved)."""
    import hashlib
    import json

    body = {k: v for k, v in d.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def similarity_from_distance(d2: np.ndarray, dim: int) -> np.ndarray:
    """``exp(-d² / (2 · dim))`` from squared euclidean distances in a ``dim``-dim space."""
    return np.exp(-np.asarray(d2, dtype=np.float64) / (2.0 * max(dim, 1)))
