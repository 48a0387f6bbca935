"""In-process query latency and recall of messai.search.layer_index. Prints one JSON object.

    uv run python benchmarks/bench_index.py            # flat @ 10k, hnsw @ 100k, dim 768
    uv run python benchmarks/bench_index.py --quick    # flat @ 10k, hnsw @ 20k

Targets (issue 4): single-query p50 ≤ 1 ms for flat at 10k tracks, and for hnsw at 100k tracks
with recall@10 ≥ 0.95 against the exact flat search.

Data: a Gaussian mixture (one cluster per ~400 tracks) in a 128-dim latent space, mapped to
``dim`` by a random projection with a decaying spectrum, plus isotropic noise and a large
common offset, so raw cosines average about 0.86 (MERT's mean-pooled layers: near 0.9).
Queries are indexed tracks, one at a time, as ``mess recommend`` issues them
(``LayerIndex.search_track``: query excluded).

Reported next to every latency: a baseline measured in the same run on the same matrix
(numpy brute force: single-threaded einsum mat-vec + argpartition top-k), and the ratio to
it, because absolute numbers on a small shared machine are noisy. numpy's BLAS mat-vec is
reported too; its thread pool makes it erratic under load. Flat single queries use the exact
two-stage float16 path (see messai.search.reranker); the plain IndexFlatIP path is timed too. FAISS
single-query search is timed with 1 thread and with the default thread count; the library
uses 1 thread for ≤ 4 queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import faiss
import numpy as np

from messai.search.layer_index import Float16Reranker, LayerIndex, build_index


def mixture(n: int, dim: int, *, seed: int = 0, latent: int | None = None) -> np.ndarray:
    """Clustered, anisotropic, offset data [n, dim] float32 (see module docstring)."""
    latent = latent or LATENT
    rng = np.random.default_rng(seed)
    clusters = max(8, n // 400)
    projection = rng.standard_normal((latent, dim)) / np.sqrt(latent)
    projection *= np.linspace(1.0, 0.2, latent)[:, None]
    centres = rng.standard_normal((clusters, latent))
    offset = 5.0 * rng.standard_normal(dim) / np.sqrt(dim) * np.sqrt(latent)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 20_000):
        stop = min(n, start + 20_000)
        labels = rng.integers(0, clusters, stop - start)
        z = centres[labels] + 0.8 * rng.standard_normal((stop - start, latent))
        noise = 0.1 * rng.standard_normal((stop - start, dim))
        out[start:stop] = z @ projection + noise + offset
    return out


def raw_cosine_mean(X: np.ndarray, pairs: int = 2000) -> float:
    """Mean plain cosine between random pairs of rows (MERT's mean-pooled layers: ≈ 0.9)."""
    rng = np.random.default_rng(9)
    a, b = X[rng.integers(0, len(X), pairs)], X[rng.integers(0, len(X), pairs)]
    cos = np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return round(float(cos.mean()), 3)


def latency(fn: Callable[[int], object], queries: np.ndarray, *, warmup: int = 20) -> dict:
    """p50 / p99 / mean of fn(q) over query positions, in milliseconds."""
    for q in queries[:warmup]:
        fn(int(q))
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        start = time.perf_counter()
        fn(int(q))
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
    }


def numpy_baseline(Xn: np.ndarray, k: int, *, blas: bool) -> Callable[[int], object]:
    """Brute force with numpy: one mat-vec [n, dim]·[dim] and an argpartition top-k.

    ``blas=True``: ``Xn @ q`` (OpenBLAS, its own thread pool: erratic on a loaded 2-core
    box); ``blas=False``: ``einsum`` (single thread, no BLAS), the stable reference.
    """

    def run(q: int) -> np.ndarray:
        sims = Xn @ Xn[q] if blas else np.einsum("ij,j->i", Xn, Xn[q])
        top = np.argpartition(-sims, k)[: k + 1]
        return top[np.argsort(-sims[top])]

    return run


def faiss_direct(index: LayerIndex, Xn: np.ndarray, k: int, threads: int) -> dict:
    """Latency of the bare FAISS index.search for one query with ``threads`` OpenMP threads."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return latency(lambda q: index.faiss_index.search(Xn[q : q + 1], k + 1), QUERIES)
    finally:
        faiss.omp_set_num_threads(previous)


def track_latency(index: LayerIndex, k: int) -> dict:
    """Latency of ``search_track`` (query excluded), the call ``mess recommend`` makes."""
    ids = index.track_ids
    return latency(lambda q: index.search_track(ids[q], k), QUERIES)


def plain_flat(index: LayerIndex, ids: list[str], k: int) -> dict:
    """search_track latency with the float16 two-stage path switched off (IndexFlatIP only)."""
    threshold = Float16Reranker.min_elements
    Float16Reranker.min_elements = 1 << 62
    try:
        return latency(lambda q: index.search_track(ids[q], k), QUERIES)
    finally:
        Float16Reranker.min_elements = threshold


def with_ratio(measured: dict, baseline: dict) -> dict:
    return {**measured, "ratio_p50_to_baseline": round(measured["p50_ms"] / baseline["p50_ms"], 3)}


def baselines(Xn: np.ndarray, k: int) -> tuple[dict, dict]:
    """(einsum baseline used for the ratios, BLAS mat-vec for information)."""
    return (
        latency(numpy_baseline(Xn, k, blas=False), QUERIES),
        latency(numpy_baseline(Xn, k, blas=True), QUERIES),
    )


def bench_flat(n: int, dim: int, k: int) -> dict:
    X = mixture(n, dim, seed=1)
    start = time.perf_counter()
    index = build_index(X, [f"t{i}" for i in range(n)], kind="flat")
    build_s = time.perf_counter() - start
    ids = index.track_ids
    first_ms = []
    for q in (0, 1, 2):  # the 2nd single query builds the float16 copy
        start = time.perf_counter()
        index.search_track(ids[q], k)
        first_ms.append(round((time.perf_counter() - start) * 1e3, 3))
    Xn = index.normalized_vectors()
    baseline, blas = baselines(Xn, k)
    raw_latency = latency(lambda q: index.search(X[q], k), QUERIES)
    return {
        "n": n,
        "raw_cosine_mean": raw_cosine_mean(X),
        "dim": dim,
        "k": k,
        "build_s": round(build_s, 3),
        "fp16_copy_used": index.float16_reranker is not None,
        "first_three_queries_ms": first_ms,
        "baseline_numpy_einsum": baseline,
        "numpy_blas_matvec": with_ratio(blas, baseline),
        "search_track": with_ratio(track_latency(index, k), baseline),
        "search_raw_vector": with_ratio(raw_latency, baseline),
        "search_track_without_fp16_copy": with_ratio(plain_flat(index, ids, k), baseline),
        "faiss_1_thread": with_ratio(faiss_direct(index, Xn, k, 1), baseline),
        f"faiss_{faiss.omp_get_max_threads()}_threads": with_ratio(
            faiss_direct(index, Xn, k, faiss.omp_get_max_threads()), baseline
        ),
    }


def exact_neighbours(Xn: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """Exact top-k positions (self excluded) of the query rows, by a batched flat search."""
    flat = faiss.IndexFlatIP(Xn.shape[1])
    flat.add(Xn)
    _, found = flat.search(Xn[queries], k + 1)
    return [set(row[row != q].tolist()[:k]) for q, row in zip(queries, found)]


def recall(index: LayerIndex, queries: np.ndarray, truth: list[set[int]], k: int) -> float:
    hits = 0
    for q, want in zip(queries, truth):
        _, got = index.search_track(index.track_ids[q], k)
        hits += len({index.position(t) for t in got} & want)
    return hits / (k * len(queries))


def bench_hnsw(n: int, dim: int, k: int, recall_queries: int, ef_values: list[int]) -> dict:
    X = mixture(n, dim, seed=2)
    start = time.perf_counter()
    index = build_index(X, [f"t{i}" for i in range(n)], kind="hnsw")
    build_s = time.perf_counter() - start
    del X
    Xn = index.normalized_vectors()
    rq = np.random.default_rng(3).choice(n, size=recall_queries, replace=False)
    start = time.perf_counter()
    truth = exact_neighbours(Xn, rq, k)
    exact_s = time.perf_counter() - start
    baseline, blas = baselines(Xn, k)
    default_ef = index.params["efSearch"]
    sweep = {}
    for ef in sorted(set(ef_values) | {default_ef}):
        index.set_search_params(ef_search=ef)
        sweep[str(ef)] = {
            "recall_at_10": round(recall(index, rq, truth, k), 4),
            "search_track": with_ratio(track_latency(index, k), baseline),
        }
    index.set_search_params(ef_search=default_ef)
    threads = faiss.omp_get_max_threads()
    return {
        "n": n,
        "dim": dim,
        "k": k,
        "params": index.params,
        "build_s": round(build_s, 2),
        "exact_ground_truth_s": round(exact_s, 2),
        "recall_queries": recall_queries,
        "baseline_numpy_einsum": baseline,
        "numpy_blas_matvec": with_ratio(blas, baseline),
        "default": sweep[str(default_ef)],
        "ef_sweep": sweep,
        "faiss_1_thread": with_ratio(faiss_direct(index, Xn, k, 1), baseline),
        f"faiss_{threads}_threads": with_ratio(faiss_direct(index, Xn, k, threads), baseline),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flat-n", type=int, default=10_000)
    parser.add_argument("--hnsw-n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=500, help="timed single queries")
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--ef", type=int, nargs="*", default=[32, 128])
    parser.add_argument("--quick", action="store_true", help="hnsw at 20k instead of 100k")
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--latent", type=int, default=128, help="intrinsic dimension of the data")
    args = parser.parse_args()
    if args.quick:
        args.hnsw_n = 20_000

    global QUERIES, LATENT
    LATENT = args.latent
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "faiss_default_threads": faiss.omp_get_max_threads(),
            "data_latent_dim": args.latent,
        }
    }
    QUERIES = np.random.default_rng(0).integers(0, args.flat_n, args.queries)
    report["flat"] = bench_flat(args.flat_n, args.dim, args.k)
    if not args.skip_hnsw:
        QUERIES = np.random.default_rng(1).integers(0, args.hnsw_n, args.queries)
        report["hnsw"] = bench_hnsw(args.hnsw_n, args.dim, args.k, args.recall_queries, args.ef)
    report["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


QUERIES = np.zeros(0, dtype=np.int64)
LATENT = 128

if __name__ == "__main__":
    main()
