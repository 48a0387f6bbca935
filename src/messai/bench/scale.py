"""``mess benchmark scale``: how the store and the search cost grow with the catalogue.

For each size N, a synthetic store of N tracks (one window each, the real 13 × 768 shape by
default) is written through the store API, then measured:

- ``append``: tracks per second when appending tracks of ``windows_per_track`` windows to the
  store of size N (committed in batches, as ``mess extract`` does) — should not fall with N;
- ``bytes_per_audio_hour``: bytes the appended tracks added to the store, per hour of audio;
- ``open_s``: opening the store and listing its track ids;
- ``index_build_s``: building the flat index of one layer (reads one column);
- ``cold_recommend``: a ``mess recommend -k 10 --format ids`` process with the index and the
  track catalogue cached, against
  ``python -c "import numpy, faiss, typer, rich"`` in the same run (median of interleaved runs);
- ``query``: single-query latency on the index (p50/p99).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from messai.bench.speed import percentiles, time_command
from messai.bench.synthetic import clustered, synthetic_identity, synthetic_settings

DEFAULT_SIZES = (1_000, 10_000, 100_000)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _synthetic_tracks(
    n: int, *, n_layers: int, dim: int, start: int = 0, windows: int = 1, seed: int = 0
):
    """``(entry, arrays)`` of ``n`` synthetic tracks of ``windows`` windows each, lazily."""
    from messai.bench.synthetic import synthetic_entry
    from messai.features.records import track_arrays

    rng = np.random.default_rng(seed)
    for i0 in range(start, start + n, 1_000):
        m = min(1_000, start + n - i0)
        vecs = clustered(m, n_layers * dim, seed=int(rng.integers(1 << 30)))
        vecs = vecs.reshape(m, n_layers, dim)
        for j in range(m):
            seg = np.repeat(vecs[j][None], windows, axis=0)
            if windows > 1:
                seg = seg + 0.01 * rng.standard_normal(seg.shape).astype(np.float32)
            arrays = track_arrays(seg, np.arange(windows) * 120_000, np.full(windows, 120_000), {})
            yield synthetic_entry(f"track{i0 + j:07d}", windows), arrays


def _put_all(store, tracks, *, batch: int) -> None:
    """Store ``tracks`` through the store API, committing every ``batch`` tracks."""
    store.COMMIT_TRACKS, store.COMMIT_SECONDS = batch, 1e9
    with store.writer():
        for entry, arrays in tracks:
            store.put(entry, arrays)


def bench_scale(
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    *,
    n_layers: int = 13,
    dim: int = 768,
    windows_per_track: int = 36,
    append_tracks: int = 200,
    cold_runs: int = 5,
    n_queries: int = 100,
    workdir: str | None = None,
) -> dict[str, Any]:
    """The figures above for each size; JSON-ready. Stores are written under ``workdir`` (a
    temporary folder by default) and removed after each size."""
    import compileall
    import os

    import messai
    from messai.features.store import FeatureStore
    from messai.search.cache import build_layer_index
    from messai.search.layer_index import LayerIndex

    compileall.compile_dir(str(Path(messai.__file__).parent), quiet=1)
    mess = str(Path(sys.executable).with_name("mess"))
    base_dir = Path(workdir or tempfile.mkdtemp(prefix="mess-scale-"))
    out: dict[str, Any] = {
        "benchmark": "scale",
        "n_layers": n_layers,
        "dim": dim,
        "windows_per_track": windows_per_track,
        "append_tracks": append_tracks,
        "sizes": [],
    }
    for n in sizes:
        home = base_dir / f"n{n}"
        shutil.rmtree(home, ignore_errors=True)
        uri = home / "stores" / "scale" / "synthetic--scale"
        row: dict[str, Any] = {"n_tracks": n}
        store = FeatureStore.create(
            uri,
            dataset="scale",
            model=synthetic_identity("scale", n_layers=n_layers, dim=dim),
            settings=synthetic_settings("float16"),
        )
        t0 = time.perf_counter()
        _put_all(store, _synthetic_tracks(n, n_layers=n_layers, dim=dim), batch=2_000)
        row["fill_s"] = time.perf_counter() - t0
        before = _dir_bytes(uri)
        appended = list(  # made before timing: only the store's own work is measured
            _synthetic_tracks(
                append_tracks,
                n_layers=n_layers,
                dim=dim,
                start=n,
                windows=windows_per_track,
                seed=1,
            )
        )
        t0 = time.perf_counter()
        _put_all(store, appended, batch=64)
        seconds = time.perf_counter() - t0
        added = _dir_bytes(uri) - before
        hours = append_tracks * windows_per_track * 5.0 / 3600
        row["append"] = {"tracks_per_s": append_tracks / seconds, "seconds": seconds}
        row["bytes_per_audio_hour"] = added / hours
        t0 = time.perf_counter()
        opened = FeatureStore.open("scale", stores=str(home / "stores"))
        ids = opened.track_ids()
        row["open_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outcome = build_layer_index(home, opened, 0, force=True)
        row["index_build_s"] = time.perf_counter() - t0
        (home / "config.toml").write_text("")  # no user config: defaults only
        env = dict(os.environ, MESS_HOME=str(home), MESS_CONFIG=str(home / "config.toml"))
        env.pop("MESS_STORES", None)
        rec = [mess, "recommend", "-d", "scale", "--track", ids[7], "--layer", "0"]
        rec += ["-k", "10", "--format", "ids"]
        imports = [sys.executable, "-c", "import numpy, faiss, typer, rich"]
        time_command(rec, env, 1)  # builds the track catalogue once, warms the page cache
        time_command(imports, env, 1)
        rec_t, base_t = [], []
        for _ in range(cold_runs):
            rec_t += time_command(rec, env, 1)
            base_t += time_command(imports, env, 1)
        r, b = statistics.median(rec_t), statistics.median(base_t)
        row["cold_recommend"] = {"recommend_median_s": r, "imports_median_s": b, "ratio": r / b}
        index = LayerIndex.load(outcome.path)
        _, X = opened.layer(0, track_ids=ids[:n_queries])
        lat = []
        for q in X:
            t0 = time.perf_counter()
            index.search(q[None], 10)
            lat.append(time.perf_counter() - t0)
        row["query"] = percentiles(lat)
        row["store_bytes"] = _dir_bytes(uri)
        out["sizes"].append(row)
        shutil.rmtree(home, ignore_errors=True)
    rates = [r["append"]["tracks_per_s"] for r in out["sizes"]]
    out["append_ratio_largest_to_smallest"] = rates[-1] / rates[0] if rates else None
    return out
