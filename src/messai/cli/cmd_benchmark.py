"""``mess benchmark``: extraction speed, similarity metrics, retrieval and query speed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from messai.cli import common
from messai.cli.common import DeviceOpt, ModelOpt, app, print_json

bench_app = typer.Typer(
    help="Measure similarity metrics, retrieval quality and speed.", no_args_is_help=True
)
app.add_typer(bench_app, name="benchmark")


@bench_app.command("extract")
def bench_extract_command(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    precision: Annotated[
        Optional[str],
        typer.Option(
            "--precision",
            help="Precision, or several comma-separated (float32,int8,bfloat16): measured side "
            "by side, each with its fidelity against the first.",
        ),
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    decode_workers: Annotated[
        Optional[int],
        typer.Option("--decode-workers", min=0, help="Decode processes (0: one thread)."),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="The bundled demo's real music instead of generated tones."),
    ] = False,
    null_model: Annotated[
        bool,
        typer.Option(
            "--null-model",
            help="A model that returns zeros: the CPU cost of everything but the forward.",
        ),
    ] = False,
    files: Annotated[
        Optional[int],
        typer.Option(
            "--files", min=1, help="Generated 44.1 kHz stereo files (4), or demo files (all)."
        ),
    ] = None,
    seconds: Annotated[
        float,
        typer.Option("--seconds", min=1.0, help="Length of each file (at least --min-seconds)."),
    ] = 10.0,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Alternating runs per variant; best counts.")
    ] = 2,
) -> None:
    """Extraction throughput: full pipeline (decode, resample, targets, forward, store) vs the
    bare model forward on the same windows (both warmed up): windows/s, × real time, their
    ratio, CPU ms per window, decode rate per worker, peak memory. Without --model it uses a
    random checkpoint of the MERT-v1-95M shape (weights don't change the cost)."""
    from messai.bench.extraction import bench_extraction
    from messai.config import FIELDS

    precisions = [p.strip() for p in (precision or "").split(",") if p.strip()]
    for p in precisions:
        if p not in FIELDS["precision"].choices:
            raise typer.BadParameter(
                f"{p!r}: choose from {', '.join(FIELDS['precision'].choices)}",
                param_hint="--precision",
            )
    settings = common.settings_from(
        device=device,
        precision=precisions[0] if precisions else None,
        batch_size=batch_size,
        decode_workers=decode_workers,
    )
    common.notice("benchmarking extraction (this takes a minute or more on a CPU) ...")
    result = bench_extraction(
        model=model,
        device=settings.device,
        precisions=precisions or [settings.precision],
        batch_size=settings.batch_size,
        decode_workers=settings.decode_workers,
        n_files=files or (None if demo else 4),
        seconds_per_file=seconds,
        repeats=repeats,
        audio="demo" if demo else "synthetic",
        null_model=null_model,
    )
    print_json(result)


@bench_app.command("similarity")
def bench_similarity_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset (feature store) name.")],
    model: ModelOpt = None,
    label: Annotated[
        Optional[str],
        typer.Option(
            "--label", help="Label for retrieval scores (composer, work, instrument ...)."
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per query.")] = 10,
    layers: Annotated[
        Optional[str], typer.Option("--layers", help="'all' (default) or comma-separated layers.")
    ] = None,
    max_tracks: Annotated[
        int, typer.Option("--max-tracks", min=3, help="Subsample larger stores (seeded).")
    ] = 4000,
    fmt: Annotated[common.Format, typer.Option("--format", "-f")] = common.Format.table,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write a PNG of spread, hubness and precision by layer."),
    ] = None,
) -> None:
    """Per layer × metric (cosine, euclidean, dot) × normalisation (none, center, zscore):
    similarity spread, hubness, retrieval against a label, and aspect fidelity."""
    from messai.bench.similarity import evaluate_similarity, plot_similarity
    from messai.features.store import FeatureStore

    settings = common.settings_from()
    store = FeatureStore.open(dataset, model, home=settings.home)
    chosen = common.parse_layers(layers, store.n_layers)
    report = evaluate_similarity(store, label=label, k=k, layers=chosen, max_tracks=max_tracks)
    if plot is not None:
        plot_similarity(report, plot)
        common.notice(f"plot written to {plot}")
    if fmt == common.Format.json:
        print_json(report)
        return
    rows = []
    for r in report["results"]:
        fid = r["aspect_fidelity"]
        rows.append(
            {
                "layer": r["layer"],
                "metric": r["metric"],
                "normalize": r["normalize"],
                "mean_sim": r["mean_similarity"],
                "frac>0.9": r["frac_above_0_9"],
                "hub_skew": r["hub_skewness"],
                "max_hub": r["max_hub_occurrence"],
                "P@k": r.get("precision_at_k"),
                "MAP": r.get("map"),
                "MRR": r.get("mrr"),
                "fidelity(mean)": (sum(fid.values()) / len(fid)) if fid else None,
            }
        )
    common.render_rows(
        rows,
        fmt,
        title=f"{dataset}: {report['n_tracks']} tracks, k={report['k']}"
        + (
            f", retrieval against label {label!r}"
            if label
            else " (no --label: no retrieval scores)"
        ),
    )


@bench_app.command("speed")
def bench_speed_command(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Smaller sizes (a few minutes less; figures not comparable to the goals).",
        ),
    ] = False,
    skip_extract: Annotated[
        bool, typer.Option("--skip-extract", help="Leave out the extraction benchmark.")
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the JSON to this file.")
    ] = None,
) -> None:
    """Extraction (pipeline vs bare forward), probe time, index build, query latency p50/p99 for
    flat and hnsw with recall@10, and cold start of 'mess recommend' — as JSON for tracking."""
    import json
    import platform

    from messai.bench import speed

    report: dict = {
        "benchmark": "speed",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus",
        "quick": quick,
    }
    if not skip_extract:
        from messai.bench.extraction import bench_extraction

        common.notice("extraction ...")
        settings = common.settings_from(device=device)
        report["extraction"] = bench_extraction(
            model=model,
            device=settings.device,
            batch_size=settings.batch_size,
            n_files=2 if quick else 4,
            seconds_per_file=10.0,
            repeats=1 if quick else 2,
        )
    common.notice("probe ...")
    report["probe"] = speed.bench_probe(n_samples=4000 if quick else 20000)
    common.notice("queries ...")
    report["queries"] = speed.bench_queries(n_flat=10_000, n_hnsw=20_000 if quick else 100_000)
    common.notice("cold start ...")
    report["cold_start"] = speed.bench_cold_start(n_tracks=1000, runs=3 if quick else 7)
    print_json(report)
    if out is not None:
        from messai.files import atomic_write_bytes

        atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())
