"""``mess benchmark``: extraction speed, similarity metrics, retrieval and query speed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from messai.cli import common
from messai.cli.common import DeviceOpt, ModelOpt, app, print_json

bench_app = typer.Typer(
    suggest_commands=common.TYPER_SUGGESTS,
    help="Measure similarity metrics, retrieval quality and speed.",
    no_args_is_help=True,
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
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", help="Windows per forward (default: 2 on CPU, 16 on CUDA, 8 on MPS)."
        ),
    ] = None,
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
    stores: common.StoresOpt = None,
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
    fmt: Annotated[
        common.Format, typer.Option("--format", "-f", help="Output format.")
    ] = common.Format.table,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write a PNG of spread, hubness and precision by layer."),
    ] = None,
) -> None:
    """Per layer × metric (cosine, euclidean, dot) × normalisation (none, center, zscore):
    similarity spread, hubness, retrieval against a label, and aspect fidelity."""
    from messai.bench.similarity import evaluate_similarity, plot_similarity
    from messai.features.store import FeatureStore
    from messai.plots import check_plot_path

    if plot is not None:
        check_plot_path(plot)  # before the work, not after it
    settings = common.settings_from(stores=stores)
    store = FeatureStore.open(dataset, model, stores=settings.stores_location)
    chosen = common.parse_layers(layers, store.n_layers)
    report = evaluate_similarity(store, label=label, k=k, layers=chosen, max_tracks=max_tracks)
    if k >= report["n_tracks"] - 1:
        common.notice(
            f"note: k={k} with {report['n_tracks']} tracks: every other track is a neighbour, so "
            "precision@k and the neighbour figures are meaningless; use a smaller -k"
        )
    if plot is not None:
        plot_similarity(report, plot)
        common.notice(f"plot written to {plot}")
    if fmt == common.Format.json:
        print_json(report)
        return

    # short headers (the JSON has the full names): mean similarity, fraction of pairs above
    # 0.9, hubness skew, most k-occurrences of one track, aspect fidelity (mean over aspects)
    def g3(v):  # three significant digits: the table fits 80 columns
        return None if v is None else f"{v:.3g}"

    rows = []
    for r in report["results"]:
        fid = r["aspect_fidelity"]
        rows.append(
            {
                "layer": r["layer"],
                "metric": r["metric"],
                "norm": r["normalize"],
                "mean": g3(r["mean_similarity"]),
                ">0.9": g3(r["frac_above_0_9"]),
                "skew": g3(r["hub_skewness"]),
                "hub": r["max_hub_occurrence"],
                "P@k": g3(r.get("precision_at_k")),
                "MAP": g3(r.get("map")),
                "MRR": g3(r.get("mrr")),
                "fid": g3((sum(fid.values()) / len(fid)) if fid else None),
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


@bench_app.command("aspects")
def bench_aspects_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset (feature store) name.")],
    model: ModelOpt = None,
    control_store: Annotated[
        Optional[str],
        typer.Option(
            "--control-store",
            help="The same audio extracted with a random-weight model ('mess model random --like'): adds random_layer and random_space.",
        ),
    ] = None,
    layer: Annotated[
        Optional[int],
        typer.Option("--layer", help="Layer of every aspect [default: the middle one]."),
    ] = None,
    labels: Annotated[
        Optional[str],
        typer.Option(
            "--labels", help="Comma-separated label aspects [default: every usable label]."
        ),
    ] = None,
    aspects: Annotated[
        Optional[str],
        typer.Option(
            "--aspects", help="Comma-separated built-in aspects [default: all with stored targets]."
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours for P@k and overlap.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split halves.")] = 0,
    fmt: Annotated[
        common.Format, typer.Option("--format", "-f", help="Output format.")
    ] = common.Format.table,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Write a bar chart (.png, .pdf or .svg).")
    ] = None,
) -> None:
    """Aspect-specific similarity on crossing labels, on held-out tracks: the whole layer vs the
    aspect space vs the proxy descriptors alone (vs a random-weight twin): own-aspect P@k, MAP and
    triplet accuracy, off-aspect triplet accuracy and leakage, proxy fidelity, list overlap."""
    from messai.bench.aspects import evaluate_aspects, plot_aspects, table_rows
    from messai.features.store import FeatureStore
    from messai.plots import check_plot_path

    if plot is not None:
        check_plot_path(plot)  # before the work, not after it
    settings = common.settings_from()
    store = FeatureStore.open(dataset, model, home=settings.home)
    control = FeatureStore.open(control_store, home=settings.home) if control_store else None

    def split(text):
        return [x.strip() for x in text.split(",") if x.strip()] if text else None

    report = evaluate_aspects(
        store,
        control=control,
        layer=layer,
        labels=split(labels),
        aspects=split(aspects),
        k=k,
        seed=seed,
    )
    if plot is not None:
        plot_aspects(report, plot)
        common.notice(f"plot written to {plot}")
    if fmt == common.Format.json:
        print_json(report)
        return
    common.render_rows(
        table_rows(report),
        fmt,
        title=f"{dataset} · layer {report['layer']} · k={report['k']} · held-out halves (see split_by)",
    )
    for note in report["notes"]:
        common.notice(f"note: {note}")


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


@bench_app.command("scale")
def bench_scale_command(
    tracks: Annotated[
        str,
        typer.Option(
            "--tracks",
            help="Comma-separated store sizes (tracks), e.g. 1000,10000,100000,1000000.",
        ),
    ] = "1000,10000,100000",
    windows_per_track: Annotated[
        int, typer.Option("--windows", min=1, help="Windows per appended track.")
    ] = 36,
    append_tracks: Annotated[
        int, typer.Option("--append", min=1, help="Tracks appended to measure throughput.")
    ] = 200,
    n_layers: Annotated[
        int,
        typer.Option(
            "--layers",
            min=1,
            help="Layers per synthetic track (13 as MERT-v1-95M; a query reads one layer's "
            "index, so 1 measures the cold path at a size whose full store would not fit).",
        ),
    ] = 13,
    workdir: Annotated[
        Optional[Path],
        typer.Option("--workdir", help="Where the synthetic stores are written (default: /tmp)."),
    ] = None,
    serving: Annotated[
        bool,
        typer.Option(
            "--serving/--no-serving",
            help="Also run 'mess benchmark serving' at the largest size: memory, build, p50/p99 "
            "and recall@10 per index kind and for LanceDB, with and without a 1 % filter.",
        ),
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the JSON to this file.")
    ] = None,
) -> None:
    """Store and search cost against catalogue size on synthetic stores (13 × 768, one window
    per track, plus appended tracks of --windows windows): append throughput, bytes per audio
    hour, open time, index build per layer, cold 'mess recommend -k 10 --format ids' against
    the bare imports (ratio), query p50 — as JSON. Needs about 60 kB of disk per track at 13
    layers (about 8 kB at --layers 1)."""
    import json

    from messai.bench.scale import bench_scale
    from messai.errors import ConfigError

    try:
        sizes = tuple(int(x) for x in tracks.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--tracks {tracks!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < 20:
        raise ConfigError("--tracks: sizes must be at least 20")
    report = bench_scale(
        sizes,
        windows_per_track=windows_per_track,
        append_tracks=append_tracks,
        n_layers=n_layers,
        workdir=str(workdir) if workdir else None,
    )
    if serving:
        from messai.bench.serving import bench_serving

        common.notice(f"serving at {max(sizes)} tracks ...")
        report["serving"] = bench_serving(n_tracks=max(sizes))
    print_json(report)
    if out is not None:
        from messai.files import atomic_write_bytes

        atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())


@bench_app.command("serving")
def bench_serving_command(
    tracks: Annotated[
        int, typer.Option("--tracks", min=2000, help="Synthetic tracks (one layer).")
    ] = 100_000,
    dim: Annotated[int, typer.Option("--dim", min=8, help="Vector dimension.")] = 768,
    kinds: Annotated[
        str, typer.Option("--kinds", help="FAISS kinds, comma-separated.")
    ] = "flat,ivfpq,hnsw-sq8",
    lancedb_kinds: Annotated[
        str,
        typer.Option("--lancedb-kinds", help="LanceDB kinds, comma-separated ('' to skip)."),
    ] = "ivfpq",
    queries: Annotated[int, typer.Option("--queries", min=10, help="Queries per case.")] = 200,
    cold_start: Annotated[
        bool,
        typer.Option(
            "--cold-start/--no-cold-start",
            help="Also time a cold 'mess recommend' with each backend (1,000 tracks).",
        ),
    ] = True,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the JSON to this file.")
    ] = None,
) -> None:
    """Serving at catalogue scale: per index kind (and the LanceDB backend) memory, build time,
    p50/p99 query latency and recall@10, unfiltered and with a filter keeping 1 % of the tracks,
    and the cost of appending 1 % more tracks relative to a full build — as JSON."""
    import json

    from messai.bench.serving import bench_serving

    common.notice(f"serving benchmark on {tracks} × {dim} synthetic vectors ...")
    report = bench_serving(
        n_tracks=tracks,
        dim=dim,
        kinds=tuple(k for k in kinds.split(",") if k),
        lancedb_kinds=tuple(k for k in lancedb_kinds.split(",") if k),
        n_queries=queries,
        cold_start=cold_start,
    )
    report = {"benchmark": "serving", **report}
    print_json(report)
    if out is not None:
        from messai.files import atomic_write_bytes

        atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())


@bench_app.command("serve")
def bench_serve_command(
    tracks: Annotated[
        int, typer.Option("--tracks", min=100, help="Synthetic tracks in the served store.")
    ] = 10_000,
    dim: Annotated[int, typer.Option("--dim", min=8, help="Vector dimension.")] = 768,
    layers: Annotated[int, typer.Option("--layers", min=1, help="Layers in the store.")] = 3,
    clients: Annotated[
        int, typer.Option("--clients", min=1, max=256, help="Concurrent keep-alive clients.")
    ] = 32,
    seconds: Annotated[
        float, typer.Option("--seconds", min=1.0, max=600.0, help="Duration of the load.")
    ] = 20.0,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the JSON to this file.")
    ] = None,
) -> None:
    """Load on 'mess serve' over 127.0.0.1 only: CLIENTS concurrent clients for SECONDS against a
    synthetic store, a mix of similar (k=10), track searches and 64 KiB audio ranges; requests/s,
    p50/p99 per kind, errors and the server's RSS over the run — as JSON (needs the serve extra)."""
    import json

    from messai.bench.serve_load import bench_serve

    common.notice(
        f"serve benchmark: {tracks} tracks × {dim}, {clients} clients for {seconds:g} s on 127.0.0.1 ..."
    )
    report = bench_serve(
        n_tracks=tracks, n_layers=layers, dim=dim, clients=clients, seconds=seconds
    )
    report = {"benchmark": "serve", **report}
    print_json(report)
    if out is not None:
        from messai.files import atomic_write_bytes

        atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())
