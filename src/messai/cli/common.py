"""Shared pieces of the CLI: the app, consoles, common options, settings, rendering."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from messai.numeric import json_safe


@functools.cache
def out_console():
    """Rich console on stdout (created on first use: rich is not imported on the fast path)."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(soft_wrap=True, width=200)  # piped tables: don't fold cells at 80 columns
    return console


@functools.cache
def err_console():
    """Rich console on stderr, for progress bars and status spinners."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def error_line(message: str) -> None:
    """``error: message`` as one line on stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


class _MessGroup(TyperGroup):
    """Turns a MessError raised by any command into one line on stderr and its exit status."""

    def invoke(self, ctx):
        from messai.errors import MessError

        try:
            return super().invoke(ctx)
        except MessError as exc:
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="mess",
    cls=_MessGroup,
    help="mess — music similarity research on MERT: extract every layer, find which layer "
    "encodes which musical aspect, and search tracks by aspect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    rich_markup_mode=None,
)


class Format(str, Enum):
    table = "table"
    json = "json"
    tsv = "tsv"


class ListFormat(str, Enum):
    """Formats of commands whose rows are tracks: 'ids' prints one track id per line."""

    table = "table"
    json = "json"
    tsv = "tsv"
    ids = "ids"


def setting_choices(name: str, enum_name: str) -> type[Enum]:
    """A click choice enum made from a setting's declared choices (one source of truth)."""
    from messai.config import FIELDS

    return Enum(enum_name, [(c, c) for c in FIELDS[name].choices], type=str)


DeviceChoice = setting_choices("device", "DeviceChoice")
PrecisionChoice = setting_choices("precision", "PrecisionChoice")
StoreDtypeChoice = setting_choices("store_dtype", "StoreDtypeChoice")


def _version(value: bool) -> None:
    if value:
        from messai import __version__

        sys.stdout.write(f"mess {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """mess — music similarity research on MERT: extract every layer, find which layer encodes
    which musical aspect, and search tracks by aspect."""


ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", help="Hub id (default m-a-p/MERT-v1-95M) or a local checkpoint directory."
    ),
]
RevisionOpt = Annotated[
    Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit).")
]
DeviceOpt = Annotated[
    Optional[DeviceChoice],
    typer.Option("--device", help="auto prefers Apple MPS, then CUDA, then CPU."),
]
PrecisionOpt = Annotated[
    Optional[PrecisionChoice],
    typer.Option(
        "--precision",
        help="Compute precision: float16 only on GPU/MPS; int8 (dynamic quantisation) only on "
        "CPU; bfloat16 and int8 are approximate (fidelity in the README).",
    ),
]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Dataset (feature store) name.")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def settings_from(**flags: Any):
    """Resolve Settings with CLI flags on top (``None`` = flag not given)."""
    from messai.config import resolve_settings

    clean = {k: (v.value if isinstance(v, Enum) else v) for k, v in flags.items()}
    return resolve_settings(clean)[0]


def print_json(obj: Any) -> None:
    text = json.dumps(
        json_safe(json.loads(json.dumps(obj, default=_json_default))), ensure_ascii=False, indent=2
    )
    sys.stdout.write(text + "\n")


def print_json_line(obj: Any) -> None:
    sys.stdout.write(json.dumps(json_safe(obj), ensure_ascii=False, default=_json_default) + "\n")
    sys.stdout.flush()


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``all`` (or None) → every layer; ``0,3,5`` → those, each within 0..n_layers-1."""
    from messai.errors import ConfigError

    if text is None or text.strip() == "all":
        return list(range(n_layers))
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(
            f"--layers {text!r}: expected 'all' or comma-separated integers"
        ) from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers {text!r}: layers must be within 0..{n_layers - 1}")
    return layers


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_tsv(
    rows: list[dict[str, Any]], columns: list[str] | None = None, *, header: bool = True
) -> None:
    columns = columns or _columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    if header:
        w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else _cell(r.get(c)) for c in columns])
    sys.stdout.write(buf.getvalue())


def print_table(
    rows: list[dict[str, Any]], columns: list[str] | None = None, *, title: str | None = None
) -> None:
    from rich.table import Table

    columns = columns or _columns(rows)
    table = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*["" if r.get(c) is None else _cell(r.get(c)) for c in columns])
    out_console().print(table)


def render_rows(
    rows: list[dict[str, Any]],
    fmt: Format,
    *,
    columns: list[str] | None = None,
    title: str | None = None,
) -> None:
    if fmt == Format.json:
        print_json(rows)
    elif fmt == Format.tsv:
        print_tsv(rows, columns)
    else:
        print_table(rows, columns, title=title)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def notice(message: str) -> None:
    """A one-line notice on stderr (never on stdout, which carries only results)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
