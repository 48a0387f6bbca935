"""``mess index``: build (or ``--verify``) the cached FAISS indices of layers and fitted spaces."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from messai.cli.common import (
    DatasetOpt,
    Format,
    ModelOpt,
    StoresOpt,
    app,
    parse_layers,
    print_json,
    print_table,
    print_tsv,
    render_rows,
    settings_from,
)
from messai.cli.search_options import Backend, BackendOpt, KindOpt, NormOpt


@app.command("index")
def index_command(
    dataset: DatasetOpt,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    layers: Annotated[
        str, typer.Option("--layers", help="'all' or comma-separated layer numbers.")
    ] = "all",
    kind: KindOpt = None,
    normalize: NormOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    m: Annotated[Optional[int], typer.Option("--hnsw-m", help="HNSW: links per node.")] = None,
    ef_construction: Annotated[
        Optional[int], typer.Option("--ef-construction", help="HNSW: build beam width.")
    ] = None,
    ef_search: Annotated[
        Optional[int], typer.Option("--ef-search", help="HNSW: search beam width.")
    ] = None,
    nlist: Annotated[Optional[int], typer.Option("--nlist", help="IVF: number of lists.")] = None,
    nprobe: Annotated[
        Optional[int], typer.Option("--nprobe", help="IVF: lists searched per query.")
    ] = None,
    pq_m: Annotated[
        Optional[int], typer.Option("--pq-m", help="IVFPQ: sub-quantisers (bytes per vector).")
    ] = None,
    pq_bits: Annotated[
        Optional[int], typer.Option("--pq-bits", help="IVFPQ: bits per sub-quantiser code (4-12).")
    ] = None,
    refine: Annotated[
        Optional[int],
        typer.Option("--refine", help="ivfpq/hnsw-sq8: refine × k candidates re-ranked exactly."),
    ] = None,
    backend: BackendOpt = Backend.faiss,
    space: Annotated[
        Optional[list[str]],
        typer.Option(
            "--space",
            help="Index these fitted aspect spaces ('mess aspects fit'; 'all' for every one) "
            "instead of layers: same kinds, fingerprints, appends and tombstones; a refit "
            "makes the index stale.",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check every byte of the cached indices and the track catalogue against their "
            "checksums instead of building (a query checks sizes and file signatures only), and "
            "every fitted space in aspect_spaces.json against its own checksum; exit 1 if one is "
            "damaged.",
        ),
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Build per-layer FAISS indices of track vectors (mean of each track's windows), cached
    under the data root and keyed by a fingerprint of the store; incremental when tracks were added
    or removed. memory_mb is what a loaded index holds in RAM; mapped_mb (ivfpq, hnsw-sq8) the
    exact vectors it re-ranks from, memory-mapped from disk. With --backend lancedb the indices are
    built on the store's own tracks table instead."""
    from messai.errors import ConfigError
    from messai.features.store import FeatureStore
    from messai.search.cache import build_layer_index
    from messai.search.index_sources import PARAM_FLAGS

    settings = settings_from(index_kind=kind, normalize=normalize, stores=stores)
    store = FeatureStore.open(dataset, model, stores=settings.stores_location)
    named = {
        "M": m,
        "efConstruction": ef_construction,
        "efSearch": ef_search,
        "nlist": nlist,
        "nprobe": nprobe,
        "pq_m": pq_m,
        "pq_bits": pq_bits,
        "refine": refine,
    }
    params = {k: v for k, v in named.items() if v is not None} or None
    takes = {
        "flat": set(),
        "hnsw": {"M", "efConstruction", "efSearch"},
        "ivf": {"nlist", "nprobe"},
        "ivfpq": {"nlist", "nprobe", "pq_m", "pq_bits", "refine"},
        "hnsw-sq8": {"M", "efConstruction", "efSearch", "refine"},
    }[settings.index_kind]
    wrong = [PARAM_FLAGS[k] for k in params or {} if k not in takes]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} do(es) not apply to --kind {settings.index_kind}")
    if verify:
        _verify_indices(store, parse_layers(layers, store.n_layers), settings, fmt, space)
        return
    if backend == Backend.lancedb:
        if space:
            raise ConfigError(
                "--backend lancedb indexes whole layers only; fitted aspect spaces are indexed "
                "and searched with --backend faiss"
            )
        _index_lancedb(store, layers, settings, params, fmt)
        return
    if space:
        from messai.search.spaces import build_space_indices

        rows = [
            out.to_dict()
            for out in build_space_indices(
                settings.home, store, space, kind=settings.index_kind, params=params, force=force
            )
        ]
    else:
        rows = [
            build_layer_index(
                settings.home,
                store,
                layer,
                normalize=settings.normalize,
                kind=settings.index_kind,
                params=params,
                force=force,
            ).to_dict()
            for layer in parse_layers(layers, store.n_layers)
        ]
    if fmt == Format.json:
        print_json(rows)
    elif fmt == Format.tsv:
        print_tsv(rows)
    else:
        print_table(
            rows,
            (["space"] if space else [])
            + [
                "layer",
                "action",
                "n_tracks",
                "n_removed",
                "memory_mb",
                "mapped_mb",
                "seconds",
                "path",
            ],
            title=f"{settings.index_kind}/{settings.normalize} indices of {dataset}",
        )


def _verify_indices(store, layers: list[int], settings, fmt: Format, spaces) -> None:
    from messai.errors import SearchIndexError
    from messai.search.cache import index_dir
    from messai.search.index_io import verify_index_dir

    rows, bad = [], 0
    for layer in [] if spaces else layers:
        path = index_dir(
            settings.home, store, layer, normalize=settings.normalize, kind=settings.index_kind
        )
        try:
            verify_index_dir(path)
            status = "ok"
        except SearchIndexError as exc:
            status, bad = f"damaged: {exc}", bad + 1
        rows.append({"layer": layer, "status": status, "path": str(path)})
    from messai.search.cache import store_cache_dir
    from messai.search.catalogue import verify_catalogue

    folder = store_cache_dir(settings.home, store)
    try:  # the track ids, labels and sources every query reads
        verify_catalogue(folder)
        status = "ok"
    except SearchIndexError as exc:
        status, bad = f"damaged: {exc}", bad + 1
    rows.append({"layer": "catalogue", "status": status, "path": str(folder / "catalogue")})
    space_rows, space_bad = _verify_spaces(store, settings, spaces)
    render_rows(
        rows + space_rows, fmt, title=f"verify {settings.index_kind}/{settings.normalize} indices"
    )
    if bad or space_bad:
        raise typer.Exit(1)


def _verify_spaces(store, settings, spaces) -> tuple[list[dict], int]:
    """Every fitted space against its checksum in aspect_spaces.json, and the indices of the
    ``--space`` ones."""
    from messai.analysis.space_file import verify_spaces
    from messai.errors import SearchIndexError
    from messai.search.index_io import verify_index_dir

    rows, bad = [], 0
    for row in verify_spaces(store):
        bad += row["status"] != "ok"
        rows.append({"space": row["space"], "status": row["status"], "path": row["path"]})
        if not spaces or not ("all" in spaces or row["space"] in spaces) or row["status"] != "ok":
            continue
        from messai.search.spaces import FittedSpaceSource

        source = FittedSpaceSource(store, row["fitted"])
        path = source.folder(settings.home, normalize="none", kind=settings.index_kind)
        try:
            verify_index_dir(path)
            status = "ok"
        except SearchIndexError as exc:
            status, bad = f"damaged: {exc}", bad + 1
        rows.append({"space": row["space"], "status": f"index: {status}", "path": str(path)})
    return rows, bad


def _index_lancedb(store, layers: str, settings, params, fmt: Format) -> None:
    from messai.search.lancedb_backend import build_lancedb_index

    rows = [
        build_lancedb_index(
            store, layer, kind=settings.index_kind, normalize=settings.normalize, params=params
        )
        for layer in parse_layers(layers, store.n_layers)
    ]
    if fmt == Format.json:
        print_json(rows)
    elif fmt == Format.tsv:
        print_tsv(rows)
    else:
        print_table(
            rows,
            ["layer", "action", "n_tracks", "index_type", "seconds", "path"],
            title=f"lancedb {settings.index_kind}/{settings.normalize} indices of {store.dataset}",
        )
