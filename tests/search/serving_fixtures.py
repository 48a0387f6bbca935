"""A labelled synthetic store large enough for every index kind, and brute-force search."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from messai.bench.synthetic import clustered_store

N_TRACKS = 800


def labelled_store(home: Path, dataset: str = "syn", *, n_tracks: int = N_TRACKS):
    """``clustered_store`` (2 layers × 16) with labels work, composer (3 values) and year."""
    store = clustered_store(home, dataset, n_tracks=n_tracks, n_layers=2, dim=16, n_clusters=8)
    with store.writer():
        for i, t in enumerate(store.track_ids()):
            c = int(t[1])
            labels = {
                "work": f"work{c}",
                "composer": f"comp{(i * 5) % 3}",
                "year": str(1850 + (i * 7) % 100),
            }
            store.set_labels(t, labels)
    return store


def brute_force(store, query: str, layer: int, k: int, allowed: set[str] | None = None):
    """Exact top-k ids by centred cosine (the mean of every stored track), the query excluded."""
    ids, X = store.layer(layer)
    X = X.astype(np.float64)
    X = X - X.mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sims = X @ X[ids.index(query)]
    order = [
        i
        for i in np.argsort(-sims, kind="stable")
        if ids[i] != query and (allowed is None or ids[i] in allowed)
    ]
    return [ids[i] for i in order[:k]]
