"""``mess remove``: drop tracks from a store and from its indices."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from messai.cli.common import (
    DatasetOpt,
    Format,
    ModelOpt,
    app,
    print_json,
    print_table,
    settings_from,
)


@app.command("remove")
def remove_command(
    dataset: DatasetOpt,
    track: Annotated[
        list[str],
        typer.Option(
            "--track", "-t", help="Track id to remove (repeatable); '-' reads ids from stdin."
        ),
    ],
    model: ModelOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Remove tracks from a feature store and from every cached index of it (tombstones where the
    index kind allows, a rebuild otherwise); never returned by 'mess recommend' again. All ids
    must exist, or nothing is removed."""
    from messai.errors import ConfigError
    from messai.features.store import FeatureStore
    from messai.search.updates import remove_tracks

    ids = [t for t in track if t != "-"]
    if "-" in track:
        ids += [line.strip() for line in sys.stdin if line.strip()]
    if not ids:
        raise ConfigError("give at least one --track ID (or '-' to read ids from stdin)")
    settings = settings_from()
    store = FeatureStore.open(dataset, model, home=settings.home)
    report = remove_tracks(settings.home, store, ids)
    if fmt == Format.json:
        print_json(report.to_dict())
        return
    rows = [{"removed": t} for t in report.removed]
    if fmt == Format.tsv:
        sys.stdout.write("".join(f"{t}\n" for t in report.removed))
        return
    print_table(rows, ["removed"], title=f"removed from {store.dataset}")
    if report.indices:
        print_table(
            report.indices,
            ["space", "layer", "action", "n_tracks", "n_removed", "seconds", "path"],
            title="indices updated",
        )
