"""``mess store``: migrate, copy, compact and verify feature stores."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from messai.cli.common import (
    TYPER_SUGGESTS,
    Format,
    ModelOpt,
    StoresOpt,
    app,
    print_json,
    render_rows,
    settings_from,
)

store_app = typer.Typer(
    suggest_commands=TYPER_SUGGESTS,
    help="Move and maintain feature stores: migrate format 1, copy, compact, verify.",
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")

AtOpt = Annotated[Optional[str], typer.Option("--at", help="Store location instead of --dataset.")]
DatasetArg = Annotated[
    Optional[str], typer.Option("--dataset", "-d", help="Dataset whose store to use.")
]


def _store(dataset: str | None, location: str | None, model, stores):
    """The store named by ``--dataset`` (under --stores) or by its location."""
    from messai.errors import ConfigError
    from messai.features.store import FeatureStore

    if (dataset is None) == (location is None):
        raise ConfigError("name the store: --dataset NAME or its location (folder or URI)")
    if location is not None:
        return FeatureStore.at(location)
    settings = settings_from(stores=stores)
    return FeatureStore.open(dataset, model, stores=settings.stores_location)


def _render(report, fmt: Format) -> None:
    """JSON: the report as documented (``action``, ``source``, ``destination``, counts,
    ``details``). Table/TSV: one summary row, then one row per table or track concerned."""
    d = report.to_dict()
    if fmt == Format.json:
        print_json(d)
        return
    details = d.pop("details")
    summary = {"action": d["action"]}
    if d["source"] == d["destination"]:
        summary["store"] = d["source"]
    else:
        summary.update(source=d["source"], destination=d["destination"])
    summary["tracks"] = d["n_tracks"]
    if d["action"] in ("copy", "migrate"):
        summary.update(failed=d["n_failures"], skipped=d["n_skipped"])
    if d["action"] == "verify":
        summary["damaged"] = len(details.get("damaged", {}))
        summary["removed"] = len(details.get("removed", []))
    render_rows([summary], fmt)
    rows = _detail_rows(d["action"], details, d["source"])
    if rows:
        title = {"compact": "tables", "verify": "problems"}.get(d["action"])
        render_rows(rows, fmt, title=title)


def _detail_rows(action: str, details: dict, uri: str) -> list[dict]:
    if action == "compact":
        return [{"table": name, **stats} for name, stats in details.items()]
    if action != "verify":
        return []
    rows = []
    repaired = details.get("repaired_tables", {})
    for name, why in details.get("tables", {}).items():
        rows.append({"what": name, "problem": why, "done": ""})
    for name, done in repaired.items():
        rows.append({"what": name, "problem": "damaged", "done": done})
    removed = set(details.get("removed", []))
    prefix = f"{uri}: "
    for tid, why in details.get("damaged", {}).items():
        why = why[len(prefix) :] if why.startswith(prefix) else why
        rows.append({"what": tid, "problem": why, "done": "removed" if tid in removed else ""})
    return rows


@store_app.command("migrate")
def migrate_command(
    location: Annotated[
        Optional[str], typer.Argument(help="A format-1 store folder (or use --dataset).")
    ] = None,
    dataset: DatasetArg = None,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Convert a format-1 store (manifest.json + .npz files) to format 2, in place, losslessly.
    Format 2 is written beside it and swapped in when complete; run again if interrupted."""
    from messai.errors import ConfigError
    from messai.features import location as loc
    from messai.features.store_admin import migrate

    if (dataset is None) == (location is None):
        raise ConfigError("name the store: --dataset NAME or its folder")
    if location is None:
        base = loc.normalise(settings_from(stores=stores).stores_location)
        folders = loc.list_dirs(loc.join(base, dataset))
        v1 = [
            loc.join(base, dataset, f)
            for f in folders
            if loc.exists(loc.join(base, dataset, f, "manifest.json"))
        ]
        if model is not None:
            v1 = [p for p in v1 if model in p]
        if len(v1) != 1:
            raise ConfigError(
                f"dataset {dataset!r}: {len(v1)} format-1 stores found; pass the store's folder"
            )
        location = v1[0]
    _render(migrate(location), fmt)


@store_app.command("copy")
def copy_command(
    source: Annotated[str, typer.Argument(help="Store location (folder or URI) to copy.")],
    destination: Annotated[
        str, typer.Argument(help="Where the copy goes: a folder or s3://bucket/prefix/…")
    ],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Copy a store between any two locations (laptop ↔ s3://…), resumably: run the same
    command again after an interruption. The destination becomes a store only when complete."""
    from messai.features.store_admin import copy

    _render(copy(source, destination), fmt)


@store_app.command("compact")
def compact_command(
    dataset: DatasetArg = None,
    location: AtOpt = None,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    retention_days: Annotated[
        float,
        typer.Option("--retention-days", help="Keep versions younger than this (days).", min=0),
    ] = 7.0,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Merge small fragments and remove store versions older than the retention."""
    from messai.features.store_admin import compact

    _render(compact(_store(dataset, location, model, stores), retention_days=retention_days), fmt)


@store_app.command("verify")
def verify_command(
    dataset: DatasetArg = None,
    location: AtOpt = None,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Repair damaged tables and remove damaged tracks, so 'mess extract' redoes them.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --repair: also when a table is damaged or more than 5 tracks would go.",
        ),
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Check both tables and read every track against its record (window count, digest).
    Exit 1 when damage was found (and not repaired). --repair stops without changing anything
    when a table is damaged or more than 5 tracks would be removed, unless --force."""
    from messai.features.store_admin import verify

    report = verify(_store(dataset, location, model, stores), repair=repair, force=force)
    _render(report, fmt)
    damaged = report.details["damaged"] or report.details["tables"]
    if damaged and not repair:
        raise typer.Exit(1)
