"""The serving benchmark runs end to end on a small size and reports what it promises."""

from __future__ import annotations

import pytest

from messai.bench.serving import bench_serving


def test_serving_benchmark_small(tmp_path):
    pytest.importorskip("lancedb")
    report = bench_serving(
        n_tracks=3000,
        dim=32,
        kinds=("flat", "hnsw-sq8"),
        lancedb_kinds=("flat",),
        n_queries=20,
        workdir=tmp_path,
        cold_start=False,
    )
    flat, sq8 = report["faiss"]
    assert flat["kind"] == "flat" and flat["n_tracks"] == 2970  # 1 % held back to append
    for row in (flat, sq8):
        assert row["memory_bytes"] > 0 and row["append_s"] > 0
        assert {"p50_ms", "p99_ms", "recall_at_10"} <= set(row["filtered_1pct"])
    assert flat["unfiltered"]["recall_at_10"] == 1.0
    assert flat["filtered_1pct"]["recall_at_10"] == 1.0
    assert sq8["mapped_bytes"] == 2970 * 32 * 4 + 128  # float32 rows + the .npy header
    (lance,) = report["lancedb"]
    assert lance["unfiltered"]["recall_at_10"] == 1.0 and lance["import_lancedb_s"] > 0
