"""``mess probe`` and ``mess targets``: layer discovery (the ``mess aspects`` listing is in
:mod:`messai.cli.aspect_listing`)."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from messai.cli.common import (
    DatasetOpt,
    ModelOpt,
    StoresOpt,
    app,
    notice,
    print_json,
    settings_from,
)


class ProbeFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("probe")
def probe_command(
    dataset: DatasetOpt,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    targets: Annotated[
        Optional[str],
        typer.Option("--targets", help="Comma-separated targets (default: all stored)."),
    ] = None,
    folds: Annotated[
        Optional[int], typer.Option("--folds", help="Outer group folds [default: 5].")
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            "--seed", help="Seed of folds, permutation control and bootstrap [default: 0]."
        ),
    ] = None,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="auto (work when every track has a work label, else track), track, or a label such as work (no group on both sides of a split).",
        ),
    ] = "auto",
    control_store: Annotated[
        Optional[str],
        typer.Option(
            "--control-store",
            help="Dataset extracted from the same audio with a random-weight model ('mess model random --like').",
        ),
    ] = None,
    min_r2: Annotated[
        Optional[float],
        typer.Option("--min-r2", help="R² an aspect needs to count as validated [default: 0.5]."),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Group-bootstrap resamples for the CIs.")
    ] = 1000,
    fmt: Annotated[
        ProbeFormat, typer.Option("--format", "-f", help="Output format.")
    ] = ProbeFormat.table,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot", help="Write a heat-map of R² by layer × target (.png, .pdf or .svg)."
        ),
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save/--no-save",
            help="Save the results with the store (they replace the previous ones and define 'mess aspects').",
        ),
    ] = True,
) -> None:
    """Layer discovery: regress every layer onto every proxy target with grouped CV, alpha tuned
    inside training folds, a permuted-target control (and a random-model control), and save the
    results with the store; they define 'mess aspects'."""
    from messai.analysis.discovery import LayerDiscovery

    if plot is not None:
        from messai.plots import check_plot_path

        check_plot_path(plot)  # before the work, not after it
    settings = settings_from(folds=folds, seed=seed, r2_threshold=min_r2, stores=stores)
    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    discovery = LayerDiscovery(
        dataset,
        model,
        home=settings.home,
        stores=settings.stores_location,
        targets=names,
        folds=settings.folds,
        seed=settings.seed,
        group_by=group_by,
        control_store=control_store,
        min_r2=settings.r2_threshold,
        n_bootstrap=bootstrap,
    )
    with _status(f"probing {discovery.store.n_layers} layers of {dataset} ..."):
        results = discovery.run_full_discovery(save=save)
    if plot is not None:
        from messai.plots import probe_heatmap

        probe_heatmap(results, plot, title=f"{dataset} · {discovery.store.model_id}")
        notice(f"heat-map written to {plot}")
    if fmt == ProbeFormat.json:
        print_json(results.to_dict())
    else:
        _print_probe_table(results, settings.r2_threshold)


def _status(text: str):
    from messai.cli.common import err_console

    return err_console().status(text)


def _print_probe_table(results, min_r2: float) -> None:
    """R² per layer × target with layers as rows, paged into as many target columns as the
    terminal holds; then one row per target: best layer, controls, validated and why not."""
    from rich import box
    from rich.table import Table

    from messai.cli.common import out_console, print_table

    console = out_console()
    names = list(results.targets)
    title = (
        f"out-of-fold R² per layer (n={results.n_samples} windows, {results.n_groups} groups, "
        f"{results.folds} folds)"
    )
    statistic = {"r2_ci_low": "highest lower CI bound", "median_fold_r2": "highest median fold R²"}
    legend = (
        f"grouped by {results.group_by or 'unknown'}; * best layer "
        f"({statistic.get(results.best_layer_statistic, results.best_layer_statistic)}); "
        f"~ unstable across folds (folds differ in sign or by more than {results.max_fold_spread:g})"
    )

    def width(name: str) -> int:  # a long header folds onto a second line: half of it
        return max(7, (len(name) + 1) // 2) + 2

    pages, page, used = [], [], 7
    for name in names:
        if page and used + width(name) > console.width:
            pages.append(page)
            page, used = [], 7
        page.append(name)
        used += width(name)
    if page:
        pages.append(page)
    for i, page in enumerate(pages):
        suffix = f" ({i + 1}/{len(pages)})" if len(pages) > 1 else ""
        table = Table(
            title=title + suffix,
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            show_edge=False,
            padding=(0, 1, 0, 0),
            header_style="bold",
        )
        table.add_column("layer", justify="right", no_wrap=True)
        for name in page:
            table.add_column(name, justify="right", min_width=6, overflow="fold")
        for layer in range(results.n_layers):
            cells = []
            for name in page:
                res = results.targets[name]
                r2 = res.r2[layer]
                txt = "—" if not math.isfinite(r2) else f"{r2:.2f}"
                if res.is_unstable(layer):
                    txt += "~"
                cells.append(f"[bold]{txt}*[/]" if layer == res.best_layer else txt)
            table.add_row(str(layer), *cells)
        console.print(table, soft_wrap=False)  # the title wraps too
    console.print(legend, highlight=False, soft_wrap=False)

    def at(values, best):
        if best is None or values is None or not math.isfinite(values[best]):
            return None
        return f"{values[best]:.2f}"

    rows = []
    for name, res in results.targets.items():
        best = res.best_layer
        why = [] if best is None else res.validation_failures(best, min_r2=min_r2)
        rows.append(
            {
                "target": name,
                "best": None if best is None else f"{best}~" if res.is_unstable(best) else best,
                "r2": at(res.r2, best),
                "control": at(res.control_r2, best),
                "random_model": at(res.random_model_r2, best),
                "validated": "yes" if best is not None and not why else "no",
                "why_not": "; ".join(why) if best is not None else "no finite R²",
            }
        )
    print_table(rows, title="best layer per target")
    console.print(
        "control: permuted targets; random_model: untrained net of the same architecture; "
        "~ the best layer's folds disagree (sign, or spread)",
        highlight=False,
        soft_wrap=False,
    )


@app.command("targets")
def targets_command(
    dataset: DatasetOpt,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only failures and errors.")] = False,
) -> None:
    """(Re)compute the proxy targets of an existing store from its audio files (no model work)."""
    from messai.features.pipeline import recompute_targets

    settings = settings_from(stores=stores)
    report = recompute_targets(dataset, model, settings=settings)
    for failure in report.failures:
        notice(str(failure))
    if not quiet or report.failures:
        notice(
            f"{dataset}: targets computed for {report.n_extracted} tracks, {len(report.failures)} failed"
        )
    if report.failures:
        raise typer.Exit(1)
