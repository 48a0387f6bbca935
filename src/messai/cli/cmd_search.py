"""``mess recommend``: the nearest tracks for an aspect (``mess index`` is in :mod:`messai.cli.cmd_index`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from messai.cli.common import (
    DatasetOpt,
    DeviceOpt,
    ListFormat,
    ModelOpt,
    NoHeaderOpt,
    StoresOpt,
    app,
    error_line,
    notice,
    print_json,
    print_json_line,
    print_table,
    print_tsv,
)
from messai.cli.search_options import (  # noqa: F401 - re-exported: they were defined here
    Backend,
    BackendOpt,
    Kind,
    KindOpt,
    Normalize,
    NormOpt,
    Space,
)

if TYPE_CHECKING:  # pragma: no cover
    from messai.search.recommend import RecommendationResult


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
