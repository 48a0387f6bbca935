"""``mess aspects``: the aspect → layer map and fitted aspect spaces; ``mess aspects fit``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from messai.cli.aspect_listing import _summary
from messai.cli.common import (
    TYPER_SUGGESTS,
    Format,
    ModelOpt,
    NoHeaderOpt,
    StoresOpt,
    app,
    notice,
    print_json,
    render_rows,
    settings_from,
    step_progress,
)

aspects_app = typer.Typer(
    suggest_commands=TYPER_SUGGESTS,
    help="The aspect → layer map (from 'mess probe') and fitted aspect spaces; 'mess aspects fit' fits one.",
    invoke_without_command=True,
)
app.add_typer(aspects_app, name="aspects")


@aspects_app.callback()
def aspects_callback(
    ctx: typer.Context,
    dataset: Annotated[
        Optional[str], typer.Option("--dataset", "-d", help="Dataset (feature store) name.")
    ] = None,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    no_header: NoHeaderOpt = False,
) -> None:
    """Every aspect with its layer, R², control and source (this dataset's probe, or the
    prototype's defaults labelled unvalidated), and every fitted aspect space with its evidence.
    'mess aspects fit' fits a space."""
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None:
        from messai.errors import ConfigError

        raise ConfigError("give --dataset NAME (or a subcommand: mess aspects fit --help)")
    from messai.cli.aspect_listing import aspects_command

    aspects_command(dataset, model, stores=stores, fmt=fmt, no_header=no_header)


@aspects_app.command("fit")
def fit_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset (feature store) name.")],
    aspect: Annotated[
        str,
        typer.Option(
            "--aspect",
            "-a",
            help="A built-in aspect (see 'mess aspects'), or any name with --from.",
        ),
    ],
    sources: Annotated[
        Optional[list[str]],
        typer.Option(
            "--from",
            help="target:NAME (repeatable) or label:COLUMN; default: the built-in aspect's targets, or the label column named like the aspect.",
        ),
    ] = None,
    layers: Annotated[
        Optional[str],
        typer.Option(
            "--layers",
            help="Comma-separated layers to concatenate; default: the probe's layer for the aspect, else the layer with the best grouped-CV score.",
        ),
    ] = None,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="track, or a label such as work (no group on both sides of a CV split).",
        ),
    ] = "track",
    folds: Annotated[int, typer.Option("--folds", min=2, help="Grouped CV folds.")] = 5,
    control_store: Annotated[
        Optional[str],
        typer.Option(
            "--control-store",
            help="Dataset of the same tracks extracted with a random-weights model: the space "
            "is validated only when its held-out score clears that control's (default: the "
            "control store of the probe, if any).",
        ),
    ] = None,
    model: ModelOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
) -> None:
    """Fit an aspect space (ridge-probe span for targets, shrinkage LDA for a label) on one or more
    layers and save it with the store; 'mess recommend --aspect NAME' then searches it."""
    from messai.analysis.aspect_fit import fit_aspect_space, save_space
    from messai.analysis.space_validation import space_validation
    from messai.cli.common import parse_layers
    from messai.features.store import FeatureStore

    settings = settings_from()
    store = FeatureStore.open(dataset, model, home=settings.home)
    chosen = parse_layers(layers, store.n_layers) if layers else None
    with step_progress() as progress:  # the layer search can take a while: show it
        space = fit_aspect_space(
            store,
            aspect,
            sources=sources,
            layers=chosen,
            group_by=group_by,
            folds=folds,
            seed=settings.seed,
            control_store=control_store,
            progress=progress,
        )
    where = save_space(store, space)
    notice(f"saved the {aspect} space with the store ({where})")
    ok, why = space_validation(space)
    info = {**space.describe(), "validated": ok, "caveat": why}
    if not ok:
        notice(f"note: the space is NOT VALIDATED ({why}): its results will carry this caveat")
    if fmt == Format.json:
        print_json(info)
        return
    cols = ["aspect", "kind", "sources", "layers", "method", "dim", "evidence"]
    render_rows(
        [{**info, "evidence": _summary(info)}], fmt, columns=cols, title=f"aspect space · {dataset}"
    )
