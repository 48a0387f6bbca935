"""``mess tracks`` and ``mess datasets``: what the feature stores hold."""

from __future__ import annotations

from typing import Annotated

import typer

from messai.cli.common import (
    DatasetOpt,
    Format,
    ListFormat,
    ModelOpt,
    app,
    render_rows,
    settings_from,
)


@app.command("tracks")
def tracks_command(
    dataset: DatasetOpt,
    model: ModelOpt = None,
    fmt: Annotated[
        ListFormat,
        typer.Option("--format", "-f", help="Output format; 'ids' prints one track id per line."),
    ] = ListFormat.table,
) -> None:
    """List the tracks of a store: id, duration, segments, status (failed files too)."""
    from messai.features.store import FeatureStore

    settings = settings_from()
    store = FeatureStore.open(dataset, model, home=settings.home)
    rows = store.track_rows()
    if fmt == ListFormat.ids:
        for r in rows:
            if not r["status"].startswith(
                "failed"
            ):  # stored tracks, stale ones included (they are searchable)
                print(r["track_id"])
        return
    render_rows(rows, Format(fmt.value), title=f"{store.dataset} · {store.model_id}")


@app.command("datasets")
def datasets_command(
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """List the feature stores under the data root (MESS_HOME)."""
    from messai.features.store import FeatureStore

    settings = settings_from()
    rows = []
    for store in FeatureStore.list(home=settings.home):
        s = store.summary().to_dict()
        s["hours"] = round(s["hours"], 4)
        s["size_mb"] = round(s.pop("size_bytes") / 1e6, 3)
        rows.append(s)
    columns = (
        None
        if fmt != Format.table
        else [
            "dataset",
            "model",
            "n_tracks",
            "n_failed",
            "n_segments",
            "hours",
            "n_layers",
            "dim",
            "store_dtype",
            "size_mb",
        ]
    )
    render_rows(rows, fmt, columns=columns, title=f"stores under {settings.stores_dir}")
