"""`mess benchmark scale` on a tiny store: every figure is there, the cold recommend ran."""

from __future__ import annotations

from messai.bench.scale import bench_scale


def test_scale_benchmark_small(tmp_path, isolated_env):
    report = bench_scale(
        (30,),
        n_layers=2,
        dim=16,
        windows_per_track=2,
        append_tracks=3,
        cold_runs=1,
        n_queries=5,
        workdir=str(tmp_path),
    )
    (row,) = report["sizes"]
    assert row["n_tracks"] == 30 and report["n_layers"] == 2
    cold = row["cold_recommend"]
    assert cold["ratio"] == cold["recommend_median_s"] / cold["imports_median_s"] > 0
    assert row["query"]["p50_ms"] > 0 and row["append"]["tracks_per_s"] > 0
    assert list(tmp_path.iterdir()) == []  # each size's store is removed
