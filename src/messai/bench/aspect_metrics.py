"""Metrics of aspect-specific similarity on a set of tracks (all exact, no sampling).

- :func:`triplet_accuracy`: MERIT-style: over every triplet (anchor, positive, negative) where
  anchor and positive share a label and the negative does not, the share where the anchor is
  closer to the positive (ties count one half);
- :func:`retrieval`: precision@k and MAP against a label, with the chance level of P@k;
- :func:`fidelity`: Spearman correlation between pairwise distance and |Δ descriptor|;
- :func:`jaccard_at_k`: mean overlap of two rankings' top-k lists (list specificity).

Distances are ``[n, n]`` matrices; the diagonal (a track to itself) is never used.
"""

from __future__ import annotations

import numpy as np


def euclidean_distances(Z: np.ndarray) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    sq = (Z * Z).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0.0))


def cosine_distances(X: np.ndarray, *, center: np.ndarray | None = None) -> np.ndarray:
    """1 − cosine after subtracting ``center`` (the whole-layer search's ``center`` mode)."""
    X = np.asarray(X, dtype=np.float64)
    if center is not None:
        X = X - center
    n = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = np.divide(X, n, out=np.zeros_like(X), where=n > 0)
    return 1.0 - Xn @ Xn.T


def ranking(D: np.ndarray) -> np.ndarray:
    """Per row, the other items from nearest to farthest: ``[n, n-1]`` (ties by index)."""
    D = np.array(D, dtype=np.float64)
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :-1]


def triplet_accuracy(D: np.ndarray, labels) -> float:
    """Share of (anchor, positive, negative) triplets with ``D[a, p] < D[a, n]``; NaN without
    any triplet."""
    labels = np.asarray(labels).astype(str)
    correct = total = 0.0
    for a in range(len(labels)):
        same = labels == labels[a]
        same[a] = False
        pos, neg = np.sort(D[a, same]), np.sort(D[a, labels != labels[a]])
        if not len(pos) or not len(neg):
            continue
        below = np.searchsorted(neg, pos, side="left")  # negatives strictly closer than p
        ties = np.searchsorted(neg, pos, side="right") - below
        correct += float((len(neg) - below - ties).sum() + 0.5 * ties.sum())
        total += len(pos) * len(neg)
    return correct / total if total else float("nan")


def retrieval(D: np.ndarray, labels, k: int) -> dict[str, float]:
    """``precision_at_k``, ``map`` and ``chance_at_k`` (expected P@k of a random ranking) over
    the queries whose label has another track."""
    labels = np.asarray(labels).astype(str)
    order = ranking(D)
    rel = labels[order] == labels[:, None]
    has = rel.any(1)
    if not has.any():
        return {"precision_at_k": float("nan"), "map": float("nan"), "chance_at_k": float("nan")}
    rel = rel[has]
    ranks = np.arange(1, rel.shape[1] + 1)
    ap = (rel * np.cumsum(rel, axis=1) / ranks).sum(1) / rel.sum(1)
    return {
        "precision_at_k": float(rel[:, :k].mean()),
        "map": float(ap.mean()),
        "chance_at_k": float(rel.sum(1).mean() / rel.shape[1]),
    }


def fidelity(D: np.ndarray, values: np.ndarray) -> float:
    """Spearman ρ between ``D`` and the euclidean |Δ values| over all pairs (values ``[n]`` or
    ``[n, m]``)."""
    from scipy.stats import spearmanr

    v = np.asarray(values, dtype=np.float64).reshape(len(D), -1)
    iu = np.triu_indices(len(D), 1)
    delta = np.linalg.norm(v[iu[0]] - v[iu[1]], axis=1)
    if np.ptp(delta) == 0 or np.ptp(D[iu]) == 0:
        return float("nan")
    return float(spearmanr(D[iu], delta).statistic)


def jaccard_at_k(D1: np.ndarray, D2: np.ndarray, k: int) -> float:
    """Mean Jaccard overlap of the top-k lists of every query under two distance matrices."""
    o1, o2 = ranking(D1)[:, :k], ranking(D2)[:, :k]
    out = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(o1, o2)]
    return float(np.mean(out))
