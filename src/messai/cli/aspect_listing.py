"""The ``mess aspects`` listing: every aspect with its layer and evidence, and the store's fitted
aspect spaces beside them (the group's callback in :mod:`messai.cli.cmd_aspects`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from messai.cli.common import (
    DatasetOpt,
    Format,
    ModelOpt,
    StoresOpt,
    notice,
    print_json,
    render_rows,
    settings_from,
)


def aspects_command(  # the 'mess aspects' group's callback (cmd_aspects)
    dataset: DatasetOpt,
    model: ModelOpt = None,
    stores: StoresOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    no_header: Annotated[
        bool, typer.Option("--no-header", help="TSV without its header line (for scripts).")
    ] = False,
) -> None:
    """Every aspect with its layer, R², control and source: this dataset's probe, or the
    prototype's defaults (layer 0 brightness, 1 timbre, 2 structure) labelled unvalidated."""
    from messai.analysis.aspects import aspect_map
    from messai.features.store import FeatureStore

    settings = settings_from(stores=stores)
    store = FeatureStore.open(dataset, model, stores=settings.stores_location)
    mapping = aspect_map(store)
    if any(e.stale for e in mapping.values()):
        notice(
            f"note: the store changed after the last probe; re-run 'mess probe --dataset {dataset}'"
        )
    rows = [e.to_dict() for e in mapping.values()]
    cols = ["aspect", "layer", "r2", "control_r2", "random_model_r2", "target", "source"]
    cols += add_space_rows(store, rows)  # fitted aspect spaces, when there are any
    if fmt == Format.json:
        print_json(rows)
        return
    title = f"aspects · {store.dataset} · {store.model_id}"
    render_rows(  # narrow: the target goes before the source (which says 'not validated')
        rows, fmt, columns=cols, title=title, header=not no_header, drop_first=("target",)
    )


def add_space_rows(store, rows: list[dict[str, Any]]) -> list[str]:
    """Add the store's fitted spaces to the ``mess aspects`` rows: a ``space`` entry on the row of
    its aspect, or a row of its own for a label-defined aspect. Returns the extra table columns
    (none when nothing is fitted, so the listing is unchanged)."""
    from messai.analysis.space_file import load_spaces
    from messai.analysis.space_validation import space_validation

    spaces = load_spaces(store)
    if not spaces:
        return []
    by_aspect = {r["aspect"]: r for r in rows}
    for name, (space, stale) in spaces.items():
        ok, why = space_validation(space)
        if stale:
            why = "; ".join(x for x in (why, "fitted before the store changed") if x)
        info = {**space.describe(), "stale": stale, "validated": ok and not stale, "caveat": why}
        row = by_aspect.get(name)
        if row is None:
            row = {"aspect": name, "layer": space.layers[0], "source": f"label:{space.sources[0]}"}
            rows.append(row)
        row["space"] = info
    notice_stale = [n for n, (_, stale) in spaces.items() if stale]
    if notice_stale:
        notice(
            f"note: space(s) {', '.join(notice_stale)} were fitted before the store changed; refit with 'mess aspects fit'"
        )
    for row in rows:
        s = row.get("space")
        row["space_summary"] = _summary(s) if s else None
    return ["space_summary"]


def _summary(s: dict[str, Any]) -> str:
    ev = s.get("evidence") or {}
    if "cv_r2" in ev:
        fig = "cv R² " + ", ".join(f"{k} {v:.2f}" for k, v in ev["cv_r2"].items())
    else:
        fig = f"cv accuracy {ev.get('cv_accuracy')} (chance {ev.get('chance')})"
    layers = ",".join(map(str, s["layers"]))
    v = ev.get("validation") or {}
    if v.get("ci_low") is not None:
        fig += f" (CI low {v['ci_low']})"
    verdict = "validated" if s.get("validated") else f"NOT VALIDATED: {s.get('caveat')}"
    return f"{s['dim']}-d {s['method']} on layer(s) {layers}; {fig}; {verdict}" + (
        " [stale]" if s.get("stale") else ""
    )
