"""``mess tracks`` and ``mess datasets``: what the feature stores hold."""

from __future__ import annotations

from typing import Annotated

import typer

from messai.cli.common import (
    DatasetOpt,
    Format,
    ListFormat,
    ModelOpt,
    NoHeaderOpt,
    StoresOpt,
    app,
    render_rows,
    settings_from,
    short_path,
)


@app.command("tracks")
def tracks_command(
    dataset: DatasetOpt,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    fmt: Annotated[
        ListFormat,
        typer.Option("--format", "-f", help="Output format; 'ids' prints one track id per line."),
    ] = ListFormat.table,
    no_header: NoHeaderOpt = False,
) -> None:
    """List the tracks of a store: id, duration, segments, status (ok, missing: the audio file
    is gone, stale, failed: with the reason)."""
    from messai.features.store import FeatureStore

    settings = settings_from(stores=stores)
    store = FeatureStore.open(dataset, model, stores=settings.stores_location)
    rows = store.track_rows()
    if fmt == ListFormat.ids:
        for r in rows:
            if not r["status"].startswith(
                "failed"
            ):  # stored tracks, stale ones included (they are searchable)
                print(r["track_id"])
        return
    title = f"{store.dataset} · {store.model_id}"
    render_rows(
        rows,
        Format(fmt.value),
        title=title,
        header=not no_header,
        drop_first=("source", "n_segments"),  # the id shows the source; seconds the windows
    )


@app.command("datasets")
def datasets_command(
    stores: StoresOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    no_header: NoHeaderOpt = False,
) -> None:
    """List the feature stores under the stores location (default MESS_HOME/stores)."""
    from messai.features.store import FeatureStore

    settings = settings_from(stores=stores)
    rows = []
    for store in FeatureStore.list(stores=settings.stores_location):
        s = store.summary().to_dict()
        s["hours"] = round(s["hours"], 4)
        size = s.pop("size_bytes")
        s["size_mb"] = None if size is None else round(size / 1e6, 3)  # not listed on s3://
        rows.append(s)
    columns = None
    if fmt == Format.table:  # what fits 80 columns: ids whole, shape in one cell
        columns = ["dataset", "model", "tracks", "segments", "hours", "shape", "MB"]
        rows = [
            {
                "dataset": s["dataset"],
                "model": short_path(str(s["model"]), 30),
                "tracks": f"{s['n_tracks']}"
                + (f" +{s['n_failed']} failed" if s["n_failed"] else ""),
                "segments": s["n_segments"],
                "hours": s["hours"],
                "shape": f"{s['n_layers']}×{s['dim']} {s['store_dtype']}",
                "MB": s["size_mb"],
            }
            for s in rows
        ]
    title = f"stores under {settings.stores_location}"  # a title wraps: the whole path
    render_rows(rows, fmt, columns=columns, title=title, header=not no_header)
