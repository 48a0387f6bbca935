"""Feature stores with synthetic features, written like real ones (no model work): one builder
for the tests and the benchmarks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from messai.features.records import TrackEntry, track_arrays


def clustered(
    n: int, dim: int, *, n_clusters: int = 50, seed: int = 0, offset: float = 3.0
) -> np.ndarray:
    """Gaussian-mixture vectors ``[n, dim]`` float32 around a shared offset: closer to MERT
    means than uniform noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    return (offset + centers[labels] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def synthetic_identity(name: str, *, n_layers: int, dim: int) -> dict:
    """A model identity for a synthetic store (``synthetic/<name>``)."""
    return {
        "id": f"synthetic/{name}",
        "revision": "0" * 40,
        "config_hash": name,
        "sample_rate": 24000,
        "n_layers": n_layers,
        "dim": dim,
        "do_normalize": True,
        "stable_layer_norm": False,
    }


def synthetic_settings(store_dtype: str = "float16") -> dict:
    return {
        "sample_rate": 24000,
        "segment_seconds": 5.0,
        "hop_seconds": 5.0,
        "min_seconds": 1.0,
        "do_normalize": True,
        "store_dtype": store_dtype,
        "precision": "float32",
    }


def synthetic_entry(
    track_id: str, n_segments: int, targets: tuple[str, ...] = (), labels: dict | None = None
) -> TrackEntry:
    """The record of a synthetic track (5-s windows, a fake source and content hash)."""
    return TrackEntry(
        track_id=track_id,
        source=f"{track_id}.wav",
        size=1,
        mtime_ns=1,
        content_hash=hashlib.md5(track_id.encode()).hexdigest(),
        duration_seconds=5.0 * n_segments,
        n_segments=n_segments,
        targets=targets,
        labels=labels or {},
    )


def clustered_store(
    home: Path,
    dataset: str = "syn",
    *,
    n_tracks: int = 40,
    n_layers: int = 4,
    dim: int = 16,
    n_clusters: int = 4,
    seed: int = 0,
    offset: float = 5.0,
):
    """Clustered track features around a large shared offset (like raw MERT means), labels
    ``work`` (the cluster) and ``composer``; each track has 2–4 windows with a spectral
    centroid target; stored in float32."""
    from messai.features.store import FeatureStore

    rng = np.random.default_rng(seed)
    root = home / "stores" / dataset / "synthetic--model"
    store = FeatureStore.create(
        root,
        dataset=dataset,
        model=synthetic_identity("model", n_layers=n_layers, dim=dim) | {"config_hash": "syn"},
        settings=synthetic_settings("float32"),
    )
    centers = rng.normal(size=(n_clusters, n_layers, dim))
    with store.writer():
        for i in range(n_tracks):
            c = i % n_clusters
            n = int(rng.integers(2, 5))
            seg = (offset + centers[c] + 0.6 * rng.normal(size=(n, n_layers, dim))).astype(
                np.float32
            )
            tid = f"c{c}/track {i:03d}"
            targets = {"spectral_centroid": rng.uniform(500, 3000, n).astype(np.float32)}
            arrays = track_arrays(
                seg, np.arange(n) * 120000, np.full(n, 120000), targets, store_dtype="float32"
            )
            labels = {"work": f"work{c}", "composer": f"comp{c % 2}"}
            store.put(synthetic_entry(tid, n, ("spectral_centroid",), labels), arrays)
    return store


def benchmark_store(
    home: Path, dataset: str, *, n_tracks: int, n_layers: int = 13, dim: int = 768, seed: int = 0
):
    """A store of ``n_tracks`` synthetic tracks (one window each, float16), for speed figures."""
    from messai.features.store import FeatureStore

    store = FeatureStore.create(
        home / "stores" / dataset / "synthetic--benchmark",
        dataset=dataset,
        model=synthetic_identity("benchmark", n_layers=n_layers, dim=dim)
        | {"config_hash": "bench"},
        settings=synthetic_settings("float16"),
    )
    vecs = clustered(n_tracks, n_layers * dim, seed=seed).reshape(n_tracks, n_layers, dim)
    with store.writer():  # inside the writer, put() batches the manifest writes
        for i in range(n_tracks):
            tid = f"track{i:06d}"
            arrays = track_arrays(vecs[i][None], np.zeros(1), np.full(1, 120000), {})
            store.put(synthetic_entry(tid, 1, (), {}), arrays)
    return store


def planted_store(
    home: Path,
    dataset: str = "planted",
    *,
    n_values: int = 4,
    replicates: int = 4,
    n_windows: int = 3,
    dim: int = 32,
    layer: int = 1,
    n_layers: int = 2,
    factor_scale: float = 2.5,
    nuisance_scale: float = 1.5,
    seed: int = 0,
):
    """Two crossing label factors ``fa`` and ``fb`` (``n_values`` each, every combination
    ``replicates`` times; each value at ``factor_scale`` along its own axis) and two continuous
    latents, all planted in different orthogonal directions
    of the same ``layer``, under a larger nuisance shared by every track (8 random directions,
    not orthogonal to the factors) and window noise. The latents are also stored as the proxy
    targets ``spectral_centroid`` (``expm1`` of the brightness latent, so ``log1p`` gives it
    back) and ``rms_db_mean`` (the dynamics latent, in dB); other layers hold noise only.
    Labels: ``fa``, ``fb``, ``rep``."""
    from messai.features.store import FeatureStore

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    n = n_values
    centers_a = factor_scale * q[:, 0:n].T  # value i sits at factor_scale along its own axis
    centers_b = factor_scale * q[:, n : 2 * n].T
    u_bright, u_dyn = q[:, 2 * n], q[:, 2 * n + 1]
    nuisance = rng.normal(size=(8, dim))
    store = FeatureStore.create(
        home / "stores" / dataset / "synthetic--planted",
        dataset=dataset,
        model=synthetic_identity("planted", n_layers=n_layers, dim=dim)
        | {"config_hash": "planted", "weights_sha256": f"planted-seed-{seed}"},
        settings=synthetic_settings("float32"),
    )
    names = ("spectral_centroid", "rms_db_mean")
    with store.writer():
        for a in range(n_values):
            for b in range(n_values):
                for r in range(replicates):
                    bright, dyn = rng.normal(size=2)
                    track = 3.0 + centers_a[a] + centers_b[b] + 1.5 * (bright * u_bright)
                    shared = nuisance_scale * rng.normal(size=8) @ nuisance / np.sqrt(8)
                    track = track + 1.5 * dyn * u_dyn + shared
                    seg = rng.normal(size=(n_windows, n_layers, dim))
                    seg[:, layer] = track + 0.3 * rng.normal(size=(n_windows, dim))
                    targets = {
                        "spectral_centroid": np.expm1(
                            6.0 + 0.5 * bright + 0.05 * rng.normal(size=n_windows)
                        ).astype(np.float32),
                        "rms_db_mean": (-20 + 4 * dyn + 0.2 * rng.normal(size=n_windows)).astype(
                            np.float32
                        ),
                    }
                    arrays = track_arrays(
                        seg.astype(np.float32),
                        np.arange(n_windows) * 120000,
                        np.full(n_windows, 120000),
                        targets,
                        store_dtype="float32",
                    )
                    tid = f"a{a}-b{b}-r{r}"
                    labels = {"fa": f"a{a}", "fb": f"b{b}", "rep": str(r)}
                    store.put(synthetic_entry(tid, n_windows, names, labels), arrays)
    return store
