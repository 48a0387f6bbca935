"""``mess index`` and ``mess recommend``: layer-specific FAISS search."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from messai.cli.common import (
    DatasetOpt,
    DeviceOpt,
    Format,
    ListFormat,
    ModelOpt,
    NoHeaderOpt,
    StoresOpt,
    app,
    error_line,
    notice,
    parse_layers,
    print_json,
    print_json_line,
    print_table,
    print_tsv,
    render_rows,
    settings_from,
)

if TYPE_CHECKING:  # pragma: no cover
    from messai.search.recommend import RecommendationResult


class Kind(str, Enum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"
    ivfpq = "ivfpq"
    hnsw_sq8 = "hnsw-sq8"


class Backend(str, Enum):
    faiss = "faiss"
    lancedb = "lancedb"


class Space(str, Enum):
    auto = "auto"
    aspect = "aspect"
    layer = "layer"


class Normalize(str, Enum):
    center = "center"
    zscore = "zscore"
    l2 = "l2"


KindOpt = Annotated[
    Optional[Kind],
    typer.Option(
        "--kind",
        help="flat (exact; the default, fine up to ~100k tracks), hnsw or ivf (approximate, for larger stores), ivfpq or hnsw-sq8 (memory-bounded, exactly re-ranked; for catalogues of millions).",
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        help="faiss (local cache; fast cold start) or lancedb (indices on the store's own tracks table, local or s3://; needs messai[lancedb]; ≈ 1 s more per start).",
    ),
]
NormOpt = Annotated[
    Optional[Normalize],
    typer.Option(
        "--normalize",
        help="center (default: subtract the layer mean, then cosine), zscore, or l2 (plain cosine).",
    ),
]


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
    flags = {
        "M": "--hnsw-m",
        "efConstruction": "--ef-construction",
        "efSearch": "--ef-search",
        "nlist": "--nlist",
        "nprobe": "--nprobe",
        "pq_m": "--pq-m",
        "pq_bits": "--pq-bits",
        "refine": "--refine",
    }
    params = {k: v for k, v in named.items() if v is not None} or None
    takes = {
        "flat": set(),
        "hnsw": {"M", "efConstruction", "efSearch"},
        "ivf": {"nlist", "nprobe"},
        "ivfpq": {"nlist", "nprobe", "pq_m", "pq_bits", "refine"},
        "hnsw-sq8": {"M", "efConstruction", "efSearch", "refine"},
    }[settings.index_kind]
    wrong = [flags[k] for k in params or {} if k not in takes]
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


@app.command("recommend")
def recommend_command(
    dataset: DatasetOpt,
    stores: StoresOpt = None,
    track: Annotated[
        Optional[str],
        typer.Option(
            "--track",
            "-t",
            help="Query track id; '-' reads ids from stdin, one per line: json/table print one JSON line per query, tsv rows with a query column, ids the recommended ids.",
        ),
    ] = None,
    aspect: Annotated[
        Optional[list[str]],
        typer.Option(
            "--aspect",
            "-a",
            help="Aspect (default spectral_brightness), or several as NAME[:WEIGHT] for weighted fusion: repeat -a, or separate with commas (-a a:0.7,b:0.3); see 'mess aspects'.",
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of recommendations.")] = 5,
    layer: Annotated[
        Optional[int], typer.Option("--layer", help="Use this layer instead of the aspect's.")
    ] = None,
    normalize: NormOpt = None,
    kind: KindOpt = None,
    exclude_same: Annotated[
        Optional[list[str]],
        typer.Option(
            "--exclude-same", help="Drop tracks sharing this label with the query (e.g. work)."
        ),
    ] = None,
    where: Annotated[
        Optional[str],
        typer.Option(
            "--where",
            help="Only tracks whose labels match, e.g. \"composer = 'Bach' AND year >= 1900\" (=, !=, <, <=, >, >=, IN, AND, OR, NOT, parentheses); applied inside the search.",
        ),
    ] = None,
    max_per: Annotated[
        Optional[tuple[str, int]],
        typer.Option(
            "--max-per",
            metavar="LABEL N",
            help="At most N results per value of LABEL (e.g. --max-per composer 2).",
        ),
    ] = None,
    backend: BackendOpt = Backend.faiss,
    audio: Annotated[
        Optional[Path],
        typer.Option(
            "--audio", help="Query with an audio file outside the store (loads the model)."
        ),
    ] = None,
    space: Annotated[
        Space,
        typer.Option(
            "--space",
            help="auto: the aspect's fitted space ('mess aspects fit') when every requested aspect has one, else the whole layer (with a note); aspect: fitted spaces or an error; layer: the whole layer.",
        ),
    ] = Space.auto,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Per result: its similarity in every fitted aspect space and the proxy targets that differ most from the query.",
        ),
    ] = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    fmt: Annotated[
        ListFormat,
        typer.Option("--format", "-f", help="Output format; ids: one track id per line."),
    ] = ListFormat.table,
    no_header: NoHeaderOpt = False,
) -> None:
    """The nearest tracks for one aspect (its fitted space, else its layer from 'mess aspects'),
    never the query itself. stdout carries only results; notices go to stderr."""
    from messai.config import resolve_fields
    from messai.errors import ConfigError, MessError
    from messai.search.recommend import LayerBasedRecommender

    # the fast path: validate only what this command reads, without importing pydantic
    settings = resolve_fields(
        ["home", "stores", "index_kind", "normalize", "device"],
        {
            "index_kind": kind and kind.value,
            "normalize": normalize and normalize.value,
            "stores": stores,
        },
    )
    aspects = aspect or ["spectral_brightness"]
    if (track is None) == (audio is None):
        raise ConfigError("give exactly one of --track ID (or '-') and --audio FILE")
    rec = LayerBasedRecommender(
        dataset,
        model,
        home=settings.home,
        stores=settings.stores,
        normalize=settings.normalize,
        kind=settings.index_kind,
        on_notice=notice,
        space=space.value,
        backend=backend.value,
    )
    scoping = {"where": where, "max_per": max_per if max_per and max_per[0] else None}
    if track not in (None, "-"):  # an unknown track is the one line said, before any notice
        from messai.features.records import nfc

        rec.tracks.require_track(nfc(track))
    parts = rec.plan_parts(aspects, layer)  # a bad --aspect/--layer fails once, up front
    fitted = [p.aspect for p in parts if p.space.kind == "aspect"]
    if normalize is not None and fitted:
        raise ConfigError(
            f"--normalize applies to whole layers; the fitted space of {fitted[0]!r} is searched "
            "in its own coordinates (drop --normalize, or add --space layer)"
        )
    if audio is not None:
        if explain:
            raise ConfigError("--explain needs --track: an --audio query has no stored targets")
        if exclude_same:
            raise ConfigError(
                "--exclude-same needs --track: an --audio query has no labels to compare"
            )
        result = rec.recommend_by_audio(
            audio,
            aspects,
            k,
            layer=layer,
            device=(device.value if device else settings.device),
            **scoping,
        )
        _render(result, fmt, header=not no_header)
        return
    if track != "-":
        result = rec.recommend_by_id(
            track,
            aspects,
            k,
            layer=layer,
            exclude_same=exclude_same or (),
            explain=explain,
            **scoping,
        )
        _short_notice(result, k)
        _missing_notice(rec, result)
        _render(result, fmt, header=not no_header)
        return
    failed = 0
    header = not no_header
    for line in sys.stdin:
        tid = line.rstrip("\n").rstrip("\r")
        if not tid.strip():
            continue
        if tid not in rec.tracks and tid.strip() in rec.tracks:
            tid = tid.strip()  # stray spaces from a hand-made list
        try:
            result = rec.recommend_by_id(
                tid,
                aspects,
                k,
                layer=layer,
                exclude_same=exclude_same or (),
                explain=explain,
                **scoping,
            )
        except MessError as exc:
            error_line(str(exc))
            failed += 1
            continue
        if fmt in (ListFormat.json, ListFormat.table):
            print_json_line(result.to_dict())
        else:
            _render(result, fmt, with_query=True, header=header)
            header = False
    if failed:
        raise typer.Exit(1)


def _missing_notice(rec, result: RecommendationResult) -> None:
    ids = [r.track_id for r in result.recommendations]
    gone = sorted(rec.tracks.missing_sources(rec.store.source_root, ids))
    if gone:
        notice(
            f"note: {len(gone)} recommended track(s) have no audio file any more "
            f"(missing; first: {gone[0]}); 'mess extract --prune' drops them"
        )


def _short_notice(result: RecommendationResult, k: int) -> None:
    n = len(result.recommendations)
    if n < k:
        notice(
            f"note: only {n} track(s) could be returned (the tracks that match, minus the query and exclusions)"
        )


def _describe(result: RecommendationResult) -> str:
    if result.spaces is not None:
        return " + ".join(
            f"{s['aspect']} space ({s['dim']}-d, layer{'s' if len(s['layers']) > 1 else ''} "
            f"{','.join(map(str, s['layers']))}{f', weight {w:g}' if result.fused else ''})"
            for s, w in zip(result.spaces, result.weights)
        )
    if not result.fused:
        return f"aspect {result.aspects[0]} · layer {result.layers[0]}"
    parts = [
        f"{a} (layer {lay}, weight {w:g})"
        for a, lay, w in zip(result.aspects, result.layers, result.weights)
    ]
    return "fused: " + " + ".join(parts)


def _render(
    typed: RecommendationResult, fmt: ListFormat, *, with_query: bool = False, header: bool = True
) -> None:
    from messai.search.recommend import flat_row

    result = typed.to_dict()
    recs = result["recommendations"]
    if fmt in (ListFormat.table, ListFormat.tsv):
        recs = [flat_row(r) for r in recs]
    if fmt in (ListFormat.table, ListFormat.tsv) and recs and "explain" in recs[0]:
        from messai.search.explain import format_explanation

        recs = [{**r, "explain": format_explanation(r["explain"])} for r in recs]
    if fmt == ListFormat.json:
        print_json(result)
    elif fmt == ListFormat.ids:
        sys.stdout.write("".join(f"{r['track_id']}\n" for r in recs))
        sys.stdout.flush()
    elif fmt == ListFormat.tsv:
        q = result["query"].get("track_id") or result["query"].get("audio")
        rows = [{"query": q, **r} if with_query else r for r in recs]
        cols = (["query"] if with_query else []) + ["rank", "track_id", "similarity"]
        cols += [c for r in recs for c in r if c not in cols and c != "layer_similarities"]
        print_tsv(rows, list(dict.fromkeys(cols)), header=header)
        sys.stdout.flush()
    else:
        q = result["query"].get("track_id") or result["query"].get("audio")
        title = f"{q} · {_describe(typed)} · {result['normalize']}"
        if typed.caveat:
            title += f" · NOT VALIDATED: {typed.caveat}"
            recs = [{**r, "validated": "no"} for r in recs]  # the caveat next to each row
        cols = ["rank", "track_id", "similarity"] + (
            ["layer_similarities"] if recs and "layer_similarities" in recs[0] else []
        )
        cols += [c for r in recs for c in r if c not in cols]
        print_table(recs, list(dict.fromkeys(cols)), title=title)
