"""``mess demo``: the whole tool on the bundled demo set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from messai.cli import common
from messai.cli.cmd_extract import ExtractProgress
from messai.cli.common import DeviceOpt, ModelOpt, PrecisionOpt, RevisionOpt, app
from messai.features.listener import ExtractionListener


@app.command("demo")
def demo_command(
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    path: Annotated[
        Optional[Path],
        typer.Option("--path", help="Demo folder (default: data/demo of this checkout)."),
    ] = None,
    query: Annotated[
        str, typer.Option("--query", help="Track to recommend for.")
    ] = "piano/bach_bwv846_prelude",
    aspect: Annotated[
        str, typer.Option("--aspect", help="Aspect to recommend by.")
    ] = "spectral_brightness",
    random_control: Annotated[
        bool,
        typer.Option(
            "--random-control/--no-random-control",
            help="Also extract with a random-weight model of the same architecture and require layers to beat it (doubles extraction time).",
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Extract → probe → index → recommend on 24 bundled public-domain pieces (6 works × 4
    instruments) and print: per target, the best layer against its control, the aspect → layer
    map, and recommendations for one track. With the default hub model it needs the network
    once; offline, pass --model DIR (a local checkpoint, or 'mess model random DIR --preset base'
    for a smoke test whose numbers mean nothing musically). By default the demo audio is also
    extracted by a random-weight twin of the model, the control every layer must beat."""
    from messai.demo import run_demo

    settings = common.settings_from(
        model=model, revision=revision, device=device, precision=precision
    )
    progress = _DemoProgress()
    try:
        report = run_demo(
            settings,
            path=path,
            query=query,
            aspect=aspect,
            random_control=random_control,
            on_step=progress.step,
            listener=progress,
        )
    finally:
        progress.stop()
    for line in report.notes:
        common.notice(f"note: {line}")
    if json_out:
        common.print_json(report.to_dict())
        return
    p = report.probe_settings
    common.print_table(
        [{**r, "validated": "yes" if r["validated"] else "no"} for r in report.probe_summary],
        ["target", "best_layer", "r2", "control_r2", "random_model_r2", "validated", "why_not"],
        title=f"best layer per proxy target ({report.model}); control_r2: targets permuted "
        "across works; random_model_r2: same probe on an untrained model of the same "
        f"architecture. Probe: {p['folds']} folds grouped by {p['group_by']}, "
        f"{p['n_bootstrap']} bootstrap resamples, seed {p['seed']}, min R² {p['min_r2']:g} "
        "(as 'mess probe')",
    )
    common.print_table(
        report.aspects,
        ["aspect", "layer", "r2", "control_r2", "random_model_r2", "target", "source"],
        title="aspect → layer",
    )
    from messai.search.recommend import flat_row

    r = report.recommendations
    rows, cols = [flat_row(x) for x in r["recommendations"]], ["rank", "track_id", "similarity"]
    title = f"tracks like {r['query']['track_id']} in {r['aspect']} (layer {r['layer']})"
    if not r.get("validated", True):
        rows = [{**x, "validated": "no"} for x in rows]  # the caveat next to the results
        cols.append("validated")
        title += f"; NOT VALIDATED: {r['caveat']}"
    common.print_table(rows, [*cols, "composer", "work", "instrument"], title=title)
    if report.aspect_benchmark is not None:
        from messai.bench.aspects import table_rows

        b = report.aspect_benchmark
        common.print_table(
            table_rows(b),
            title=f"aspect spaces vs the whole layer {b['layer']} on held-out tracks "
            f"(mess benchmark aspects; k={b['k']}; fitted on one half of split_by, scored on the other)",
        )


class _DemoProgress(ExtractionListener):
    """Steps as lines, and a fresh extraction bar for each extraction."""

    def __init__(self):
        self.bar = ExtractProgress()

    def step(self, text: str) -> None:
        self.bar.stop()
        self.bar = ExtractProgress()
        common.notice(f"· {text}")

    def on_plan(self, plan) -> None:
        self.bar.on_plan(plan)

    def on_window(self, track, seconds: float) -> None:
        self.bar.on_window(track, seconds)

    def on_track(self, result) -> None:
        self.bar.on_track(result)

    def stop(self) -> None:
        self.bar.stop()
