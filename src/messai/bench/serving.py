"""Serving at catalogue scale: memory, build time, query latency and recall of each index kind
and of the LanceDB backend, with and without a filter, and the cost of a 1 % append.

:func:`bench_serving` is the entry point (``mess benchmark serving``; the scale benchmark calls
it per size). Vectors are synthetic with a low intrinsic dimension, like real embeddings
(``low_rank``: a shared offset + a rank-48 signal + small isotropic noise); i.i.d. Gaussian
vectors would make every approximate index look hopeless and are not what MERT produces.
Recall@k is measured against exact brute force over the same normalised vectors (restricted to
the matching tracks for the filtered queries). Timings are medians/percentiles of single-query
searches in one process; memory is what the loaded FAISS structure holds (its serialised size),
with the re-ranking vectors of ivfpq / hnsw-sq8 reported separately (memory-mapped from disk).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "bench_cold_start_backends",
    "bench_faiss_kinds",
    "bench_lancedb",
    "bench_serving",
    "low_rank",
    "synthetic_tracks_store",
]

#: tracks of group ``g7`` (i % 100 == 7): the filter that keeps 1 % of the tracks
FILTER = "group = 'g07'"


def low_rank(n: int, dim: int, *, rank: int = 48, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """[n, dim] float32: offset 3 + rank-``rank`` Gaussian signal + isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim)).astype(np.float32) / np.sqrt(rank)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        latent = rng.normal(size=(m, rank)).astype(np.float32)
        out[start : start + m] = 3.0 + latent @ basis + noise * rng.normal(size=(m, dim))
    return out


def _groups(n: int) -> np.ndarray:
    return np.arange(n) % 100 == 7


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def _truths(Xn: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None) -> list[set[int]]:
    """Exact top-k positions of each query row (itself excluded), computed before any timing (a
    large BLAS product between timed searches would leave threads spinning into them)."""
    out = []
    for start in range(0, len(queries), 32):
        qs = queries[start : start + 32]
        sims = Xn @ Xn[qs].T  # [n, 32]
        for j, q in enumerate(qs):
            col = sims[:, j].copy()
            col[q] = -np.inf
            if mask is not None:
                col[~mask] = -np.inf
            top = np.argpartition(-col, k)[:k]
            out.append({int(i) for i in top if np.isfinite(col[i])})
    return out


def bench_faiss_kinds(
    X: np.ndarray,
    *,
    kinds: tuple[str, ...] = ("flat", "ivfpq", "hnsw-sq8"),
    n_queries: int = 200,
    k: int = 10,
    append_fraction: float = 0.01,
    workdir: Path | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per kind: build seconds, memory, p50/p99 latency and recall@k unfiltered and
    with the 1 % filter, and the seconds of appending ``append_fraction`` more tracks (load, add,
    save) as a fraction of the full build (build + save)."""
    from messai.search.layer_index import LayerIndex, build_index

    n_new = max(1, int(len(X) * append_fraction))
    base, extra = X[:-n_new], X[-n_new:]
    ids = [f"t{i:07d}" for i in range(len(X))]
    mask = _groups(len(base))
    rng = np.random.default_rng(seed)
    queries = rng.choice(len(base), size=min(n_queries, len(base)), replace=False)
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for kind in kinds:
            t0 = time.perf_counter()
            built = build_index(base, ids[: len(base)], kind=kind)
            folder = built.save(Path(tmp) / kind)
            build_s = time.perf_counter() - t0
            Xn = built.normalized_vectors()
            del built
            index = LayerIndex.load(folder)
            row: dict[str, Any] = {
                "kind": kind,
                "n_tracks": len(base),
                "dim": X.shape[1],
                "params": index.params,
                "build_s": round(build_s, 3),
                "memory_bytes": len(_serialised(index)),
                "mapped_bytes": int((folder / "vectors.npy").stat().st_size)
                if (folder / "vectors.npy").exists()
                else 0,
            }
            row["memory_bytes_per_track"] = round(row["memory_bytes"] / len(base), 1)
            row["memory_bytes_at_1m_estimate"] = _memory_at(index, row["memory_bytes"], 1_000_000)
            for name, allow in (("unfiltered", None), ("filtered_1pct", mask)):
                seconds, recalls = [], []
                truths = _truths(Xn, queries, k, allow)
                for q, truth in zip(queries, truths):
                    t = time.perf_counter()
                    _, pos = index.search_normalized(
                        Xn[q : q + 1], k, exclude=[{int(q)}], allow=allow
                    )
                    seconds.append(time.perf_counter() - t)
                    recalls.append(len(truth & set(pos[0].tolist())) / max(1, len(truth)))
                row[name] = {
                    **_percentiles(seconds),
                    f"recall_at_{k}": round(float(np.mean(recalls)), 4),
                }
            del index
            t0 = time.perf_counter()
            index = LayerIndex.load(folder)
            index.add(extra, ids[len(base) :])
            index.save(folder)
            row["append_s"] = round(time.perf_counter() - t0, 3)
            row["append_fraction_of_build"] = round(row["append_s"] / build_s, 4)
            rows.append(row)
            del index, Xn
    return rows


def _memory_at(index, measured: int, n_target: int) -> int:
    """The FAISS structure's bytes at ``n_target`` tracks: ivfpq from its parts (codes + ids per
    track, coarse centroids for the default ≈ 2·sqrt(n) lists, the PQ codebooks), others linear
    in n (their fixed parts are a few KB)."""
    n, dim = index.n_total, index.dim
    if index.kind != "ivfpq":
        return int(measured / n * n_target)
    from messai.search.backend import resolve_params

    p = index.params
    target = resolve_params(
        "ivfpq", {"pq_m": p["pq_m"], "pq_bits": p["pq_bits"]}, n=n_target, dim=dim
    )
    code = int(index.faiss_index.code_size)
    codebooks = p["pq_m"] * (2 ** p["pq_bits"]) * (dim // p["pq_m"]) * 4
    return int(n_target * (code + 8) + target["nlist"] * dim * 4 + codebooks)


def _serialised(index) -> np.ndarray:
    from messai.search.backend import load_faiss

    return load_faiss().serialize_index(index.faiss_index)


def synthetic_tracks_store(home: Path, X: np.ndarray, *, dataset: str = "serving"):
    """A one-layer store whose tracks table holds ``X`` (labels ``group``: g00 … g99), written
    in bulk (no windows: what the serving side reads is the tracks table)."""
    import lance
    import pyarrow as pa

    from messai.bench.synthetic import synthetic_identity, synthetic_settings
    from messai.features.store import TRACKS_TABLE, FeatureStore

    n, dim = X.shape
    store = FeatureStore.create(
        home / "stores" / dataset / "synthetic--serving",
        dataset=dataset,
        model=synthetic_identity("serving", n_layers=1, dim=dim) | {"config_hash": "serving"},
        settings=synthetic_settings("float16"),
    )
    schema = lance.dataset(f"{store.uri}/{TRACKS_TABLE}").schema
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        idx = np.arange(start, start + m)
        columns = {f.name: pa.nulls(m, f.type) for f in schema}
        columns["track_id"] = pa.array([f"t{i:07d}" for i in idx])
        columns["status"] = pa.array(["ok"] * m)
        columns["extraction_id"] = pa.array([f"e{i}" for i in idx])
        columns["content_hash"] = pa.array([f"h{i}" for i in idx])
        columns["n_segments"] = pa.array(np.ones(m, np.int32))
        columns["extracted_at"] = pa.array(["2026-01-01T00:00:00Z"] * m)
        columns["labels"] = pa.array([json.dumps({"group": f"g{i % 100:02d}"}) for i in idx])
        flat = pa.array(np.ascontiguousarray(X[start : start + m]).reshape(-1))
        columns["layer_00"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        table = pa.table([columns[f.name] for f in schema], schema=schema)
        lance.write_dataset(table, f"{store.uri}/{TRACKS_TABLE}", mode="append")
    return FeatureStore.at(store.uri)


def _memo_scope(where, by_id):
    """The filter as the recommender passes it: evaluated once per id list."""
    cache: dict[int, np.ndarray] = {}

    def scope(ids):
        if id(ids) not in cache:
            cache[id(ids)] = where.mask([by_id.get(t) for t in ids])
        return cache[id(ids)]

    return scope


def bench_lancedb(
    store,
    *,
    kinds: tuple[str, ...] = ("ivfpq", "hnsw-sq8"),
    n_queries: int = 50,
    k: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per LanceDB kind on layer 0 of ``store``: build seconds, p50/p99 latency and
    recall@k unfiltered and with :data:`FILTER` (1 %), plus the seconds to import lancedb."""
    import subprocess
    import sys

    from messai.search.filters import parse_where
    from messai.search.lancedb_backend import LanceDBLayer, build_lancedb_index
    from messai.search.normalise import Normalizer

    cold = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); import lancedb; print(time.perf_counter() - t)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    ids, X = store.layer(0)
    Xn = Normalizer("center").fit_transform(X)
    del X
    labels = [store.labels(t) for t in ids]
    where = parse_where(FILTER)
    mask = where.mask(labels)
    by_id = dict(zip(ids, labels))
    rng = np.random.default_rng(seed)
    queries = rng.choice(len(ids), size=min(n_queries, len(ids)), replace=False)
    rows = []
    for kind in kinds:
        t0 = time.perf_counter()
        build_lancedb_index(store, 0, kind=kind)
        build_s = time.perf_counter() - t0
        layer = LanceDBLayer.open(store, 0, normalize="center")
        row: dict[str, Any] = {
            "backend": "lancedb",
            "kind": kind,
            "n_tracks": len(ids),
            "params": layer.params,
            "build_s": round(build_s, 3),
            "import_lancedb_s": round(float(cold.stdout.strip()), 3),
        }
        for name, allow in (("unfiltered", None), ("filtered_1pct", mask)):
            scope = None if allow is None else _memo_scope(where, by_id)
            seconds, recalls = [], []
            truths = _truths(Xn, queries, k, allow)
            for q, positions in zip(queries, truths):
                t = time.perf_counter()
                _, got = layer.nearest(Xn[q], k, exclude_ids=[ids[q]], scope=scope)
                seconds.append(time.perf_counter() - t)
                truth = {ids[i] for i in positions}
                recalls.append(len(truth & set(got)) / max(1, len(truth)))
            row[name] = {
                **_percentiles(seconds),
                f"recall_at_{k}": round(float(np.mean(recalls)), 4),
            }
        rows.append(row)
    return rows


def bench_serving(
    *,
    n_tracks: int = 100_000,
    dim: int = 768,
    kinds: tuple[str, ...] = ("flat", "ivfpq", "hnsw-sq8"),
    lancedb_kinds: tuple[str, ...] = ("ivfpq",),
    n_queries: int = 200,
    k: int = 10,
    workdir: Path | None = None,
    seed: int = 0,
    cold_start: bool = True,
) -> dict[str, Any]:
    """FAISS kinds and (when ``lancedb_kinds`` and the extra is installed) the LanceDB backend on
    ``n_tracks`` × ``dim`` synthetic vectors; memory also extrapolated linearly to 1M tracks.
    With ``cold_start``, also :func:`bench_cold_start_backends` (1,000 tracks)."""
    X = low_rank(n_tracks, dim, seed=seed)
    faiss_rows = bench_faiss_kinds(
        X, kinds=kinds, n_queries=n_queries, k=k, workdir=workdir, seed=seed
    )
    result: dict[str, Any] = {
        "n_tracks": n_tracks,
        "dim": dim,
        "k": k,
        "filter": FILTER,
        "faiss": faiss_rows,
    }
    if lancedb_kinds:
        try:
            import lancedb  # noqa: F401
        except ImportError:
            result["lancedb"] = "not installed (messai[lancedb])"
            return result
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            store = synthetic_tracks_store(Path(tmp), X)
            result["lancedb"] = bench_lancedb(
                store, kinds=lancedb_kinds, n_queries=min(n_queries, 50), k=k, seed=seed
            )
        if cold_start:
            result["cold_start"] = bench_cold_start_backends(dim=dim, workdir=workdir)
    return result


def bench_cold_start_backends(
    *, n_tracks: int = 1000, dim: int = 768, runs: int = 5, workdir: Path | None = None
) -> dict[str, Any]:
    """Median wall time of a cold ``mess recommend --layer 0 --format json`` process with each
    backend on an ``n_tracks`` one-layer store (flat indices), interleaved with the baseline
    ``python -c "import numpy, faiss, typer, rich"``."""
    import os
    import statistics
    import subprocess
    import sys

    from messai.search.cache import build_layer_index
    from messai.search.lancedb_backend import build_lancedb_index

    def timed(command: list[str], env: dict[str, str]) -> float:
        t = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        home = Path(tmp)
        store = synthetic_tracks_store(home, low_rank(n_tracks, dim))
        build_layer_index(home, store, 0)
        build_lancedb_index(store, 0, kind="flat")
        env = dict(os.environ, MESS_HOME=str(home), MESS_CONFIG=str(home / "none.toml"))
        mess = [sys.executable, "-m", "messai"]
        rec = [
            *mess,
            "recommend",
            "-d",
            store.dataset,
            "-t",
            "t0000007",
            "--layer",
            "0",
            "-f",
            "json",
        ]
        commands = {
            "baseline_imports": [sys.executable, "-c", "import numpy, faiss, typer, rich"],
            "faiss": rec,
            "lancedb": [*rec, "--backend", "lancedb"],
        }
        for command in commands.values():
            timed(command, env)  # warm the page cache
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                times[name].append(timed(command, env))
    medians = {name: round(statistics.median(t), 3) for name, t in times.items()}
    base = medians["baseline_imports"]
    return {
        "n_tracks": n_tracks,
        "runs": runs,
        "median_s": medians,
        "ratio_to_imports": {
            k: round(v / base, 2) for k, v in medians.items() if k != "baseline_imports"
        },
    }
