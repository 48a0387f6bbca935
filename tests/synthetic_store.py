"""Feature stores with synthetic features, for index/recommend/benchmark tests (no model work)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from messai.features.store import FeatureStore


def make_store(
    home: Path,
    dataset: str = "syn",
    *,
    n_tracks: int = 40,
    n_layers: int = 4,
    dim: int = 16,
    n_clusters: int = 4,
    seed: int = 0,
    offset: float = 5.0,
) -> FeatureStore:
    """Clustered track features around a large shared offset (like raw MERT means), labels
    ``work`` (the cluster) and ``composer``; each track has 2–4 windows with proxy targets."""
    rng = np.random.default_rng(seed)
    identity = {
        "id": "synthetic/model",
        "revision": "0" * 40,
        "config_hash": "syn",
        "sample_rate": 24000,
        "n_layers": n_layers,
        "dim": dim,
        "do_normalize": True,
        "stable_layer_norm": False,
    }
    settings = {
        "sample_rate": 24000,
        "segment_seconds": 5.0,
        "hop_seconds": 5.0,
        "min_seconds": 1.0,
        "do_normalize": True,
        "store_dtype": "float32",
        "precision": "float32",
    }
    root = home / "stores" / dataset / "synthetic--model"
    store = FeatureStore.create(root, dataset=dataset, model=identity, settings=settings)
    centers = rng.normal(size=(n_clusters, n_layers, dim))
    for i in range(n_tracks):
        c = i % n_clusters
        n = int(rng.integers(2, 5))
        seg = offset + centers[c] + 0.6 * rng.normal(size=(n, n_layers, dim))
        seg = seg.astype(np.float32)
        tid = f"c{c}/track {i:03d}"
        arrays = {
            "segments": seg,
            "aggregated": seg.mean(0),
            "starts": np.arange(n) * 120000,
            "lengths": np.full(n, 120000),
            "target__spectral_centroid": rng.uniform(500, 3000, n).astype(np.float32),
        }
        entry = {
            "source": f"{tid}.wav",
            "size": 1,
            "mtime_ns": 1,
            "content_hash": hashlib.md5(tid.encode()).hexdigest(),
            "duration_seconds": 5.0 * n,
            "n_segments": n,
            "targets": ["spectral_centroid"],
            "labels": {"work": f"work{c}", "composer": f"comp{c % 2}"},
        }
        store.put(tid, arrays, entry)
    return store
