"""Benchmark `messai.analysis.probe.probe_layers` at the issue's scale.

    uv run python benchmarks/bench_probe.py            # 20,000 x 13 x 768 float16, ~41 outputs

Prints one JSON object: wall time of `probe_layers` (default settings: 11-alpha search with
``inner_folds=2``, permutation control, 1000 bootstrap resamples, ``n_jobs=-1``), and, for
scale, the time of one `np.linalg.eigh` of a dim x dim matrix (numpy's default BLAS threads)
times the number of decompositions the probe does, measured in the same run (the machine is
shared; compare numbers from one run only). The probe's decomposition is a tridiagonalisation,
about half the cost of an eigh.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from messai.analysis.probe import probe_layers

# name -> number of outputs (the proxy targets: 12 targets, 41 outputs)
TARGET_SHAPES = {
    "spectral_centroid": 1,
    "spectral_rolloff": 1,
    "spectral_bandwidth": 1,
    "spectral_contrast": 7,
    "spectral_flatness": 1,
    "mfcc": 13,
    "zero_crossing_rate": 1,
    "rms_db_mean": 1,
    "rms_db_std": 1,
    "onset_rate": 1,
    "chroma": 12,
    "chroma_entropy": 1,
}


def make_data(
    n_samples: int, n_groups: int, n_layers: int, dim: int, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Features ``[n_samples, n_layers, dim]`` float16 (track vector + segment noise, layers
    drifting from a shared base), targets linear in some layer plus noise, track groups of
    unequal size."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, size=n_groups).astype(float)
    counts = np.maximum(1, np.round(sizes / sizes.sum() * n_samples)).astype(int)
    counts[-1] += n_samples - counts.sum()
    groups = np.repeat(np.arange(n_groups), counts)
    features = np.empty((n_samples, n_layers, dim), dtype=np.float16)
    base = rng.standard_normal((n_groups, dim), dtype=np.float32)[groups]
    base += 0.5 * rng.standard_normal((n_samples, dim), dtype=np.float32)
    for layer in range(n_layers):
        base += 0.3 * rng.standard_normal((n_samples, dim), dtype=np.float32)
        features[:, layer] = base * (1 + 0.1 * layer)
    targets = {}
    for i, (name, k) in enumerate(TARGET_SHAPES.items()):
        layer = i % n_layers
        x = features[:, layer].astype(np.float32)
        y = x @ rng.standard_normal((dim, k), dtype=np.float32) / np.sqrt(dim)
        y += rng.standard_normal(y.shape, dtype=np.float32)
        targets[name] = y[:, 0] if k == 1 else y
    targets["spectral_centroid"] = np.exp(targets["spectral_centroid"] / 4 + 7)  # Hz-like
    return features, targets, groups


def time_eigh(dim: int, repeats: int = 5) -> float:
    """Median seconds of one np.linalg.eigh of a dim x dim SPD matrix."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2 * dim, dim))
    gram = a.T @ a
    np.linalg.eigh(gram)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.linalg.eigh(gram)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=400)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--inner-folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=-1, help="probe_layers(n_jobs=...)")
    args = parser.parse_args()

    features, targets, groups = make_data(
        args.samples, args.groups, args.layers, args.dim, args.seed
    )
    start = time.perf_counter()
    results = probe_layers(
        features,
        targets,
        groups,
        folds=args.folds,
        seed=args.seed,
        inner_folds=args.inner_folds,
        n_jobs=args.jobs,
        target_transforms={"spectral_centroid": "log"},
    )
    probe_seconds = time.perf_counter() - start
    eigh_seconds = time_eigh(args.dim)
    # per layer: one decomposition per outer fold, one per inner fit of the alpha search
    from messai.analysis.splits import inner_fold_pairs

    decompositions = args.layers * (
        args.folds + len(inner_fold_pairs(args.folds, args.inner_folds))
    )
    print(
        json.dumps(
            {
                "probe_layers_seconds": round(probe_seconds, 2),
                "n_samples": args.samples,
                "n_groups": results.n_groups,
                "n_layers": args.layers,
                "dim": args.dim,
                "folds": args.folds,
                "n_jobs": args.jobs,
                "n_targets": len(targets),
                "n_outputs": sum(t.n_outputs for t in results.targets.values()),
                "n_alphas": len(results.alphas),
                "decompositions": decompositions,
                "eigh_seconds": round(eigh_seconds, 4),
                "eigh_times_decompositions_seconds": round(eigh_seconds * decompositions, 2),
                "best_layer": {
                    name: f"layer {t.best_layer}: r2 {t.r2[t.best_layer]:.3f}, "
                    f"control {t.control_r2[t.best_layer]:.3f}"
                    for name, t in results.targets.items()
                },
                "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
