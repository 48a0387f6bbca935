"""Speed benchmarks: cold start of ``mess recommend``, query latency, index build, probe time.

Every figure comes with a baseline measured in the same run (the machine may be shared and
noisy), and ratios are reported next to raw seconds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from messai.bench.synthetic import benchmark_store, clustered


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def time_command(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append(time.perf_counter() - t0)
    return times


def bench_cold_start(*, n_tracks: int = 1000, runs: int = 7) -> dict[str, Any]:
    """Wall time of a cold ``mess recommend`` process on an ``n_tracks`` store (flat index
    cached) against ``python -c "import numpy, faiss, typer, rich"``, interleaved runs."""
    import compileall

    import messai
    from messai.search.cache import build_layer_index

    # an editable install's modules are compiled on first import; with PYTHONDONTWRITEBYTECODE
    # they never get cached, so compile them once, as uv's compile-bytecode does for dependencies
    compileall.compile_dir(str(Path(messai.__file__).parent), quiet=1)
    mess = str(Path(sys.executable).with_name("mess"))
    with tempfile.TemporaryDirectory(prefix="mess-bench-") as tmp:
        home = Path(tmp)
        store = benchmark_store(home, "bench", n_tracks=n_tracks)
        build_layer_index(home, store, 0)
        env = dict(os.environ, MESS_HOME=str(home), MESS_CONFIG=os.devnull)
        rec = [
            mess,
            "recommend",
            "--dataset",
            "bench",
            "--track",
            "track000007",
            "--format",
            "json",
        ]
        base = [sys.executable, "-c", "import numpy, faiss, typer, rich"]
        time_command(rec, env, 1), time_command(base, env, 1)  # warm the page cache
        rec_t, base_t = [], []
        for _ in range(runs):
            rec_t += time_command(rec, env, 1)
            base_t += time_command(base, env, 1)
    r, b = statistics.median(rec_t), statistics.median(base_t)
    return {
        "n_tracks": n_tracks,
        "runs": runs,
        "recommend_median_s": r,
        "baseline_imports_median_s": b,
        "ratio": r / b,
        "goal_ratio": 1.5,
    }


def bench_queries(
    *,
    n_flat: int = 10_000,
    n_hnsw: int = 100_000,
    dim: int = 768,
    n_queries: int = 200,
    hnsw_params: dict | None = None,
) -> dict[str, Any]:
    """Single-query latency (as ``mess recommend`` issues them) for flat and hnsw, with
    recall@10 of hnsw against exact search, plus build times and a numpy brute-force baseline."""
    from messai.search.layer_index import build_index

    out: dict[str, Any] = {"dim": dim, "n_queries": n_queries}
    rng = np.random.default_rng(1)
    for kind, n in (("flat", n_flat), ("hnsw", n_hnsw)):
        if not n:
            continue
        X = clustered(n, dim, seed=2)
        ids = [str(i) for i in range(n)]
        t0 = time.perf_counter()
        index = build_index(
            X, ids, kind=kind, normalize="center", params=hnsw_params if kind == "hnsw" else None
        )
        build_s = time.perf_counter() - t0
        queries = rng.choice(n, n_queries, replace=False)
        lat, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, pos = index.search(X[q][None], 10)
            lat.append(time.perf_counter() - t0)
            found.append(pos[0])
        entry: dict[str, Any] = {
            "n": n,
            "build_s": build_s,
            "params": index.params,
            **percentiles(lat),
        }
        Xn = index.normalized_vectors()
        base = []
        exact = []
        for q in queries:
            t0 = time.perf_counter()
            sims = Xn @ Xn[q]
            top = np.argpartition(-sims, 10)[:10]
            base.append(time.perf_counter() - t0)
            exact.append(set(top.tolist()))
        entry["numpy_bruteforce"] = percentiles(base)
        entry["p50_ratio_to_numpy"] = entry["p50_ms"] / entry["numpy_bruteforce"]["p50_ms"]
        if kind == "hnsw":
            entry["recall_at_10"] = float(
                np.mean([len(set(f.tolist()) & e) / 10 for f, e in zip(found, exact)])
            )
        out[kind] = entry
    return out


def bench_probe(
    *,
    n_samples: int = 20_000,
    n_layers: int = 13,
    dim: int = 768,
    n_groups: int = 400,
    folds: int = 5,
) -> dict[str, Any]:
    """Wall time of ``probe_layers`` on synthetic windows with every registered target's shape."""
    from messai.analysis.probe import probe_layers
    from messai.features.targets import TARGETS

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n_samples, n_layers, dim)).astype(np.float16)
    groups = np.repeat(np.arange(n_groups), -(-n_samples // n_groups))[:n_samples]
    targets = {
        name: rng.normal(size=(n_samples,) if t.size == 1 else (n_samples, t.size))
        for name, t in TARGETS.items()
    }
    t0 = time.perf_counter()
    probe_layers(feats, targets, groups, folds=folds, n_bootstrap=200)
    s = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.linalg.eigh(np.cov(rng.normal(size=(2000, dim)), rowvar=False))
    eig = time.perf_counter() - t0
    return {
        "n_samples": n_samples,
        "n_layers": n_layers,
        "dim": dim,
        "n_targets": len(targets),
        "n_outputs": sum(t.size for t in TARGETS.values()),
        "folds": folds,
        "seconds": s,
        "goal_seconds": 20.0,
        "one_eigh_dim_x_dim_s": eig,
    }
