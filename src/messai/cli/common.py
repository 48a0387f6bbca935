"""Shared pieces of the CLI: the app, consoles, common options, settings, rendering."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from messai.numeric import json_safe


def out_console():
    """Rich console on stdout (created on first use: rich is not imported on the fast path;
    a new one when ``COLUMNS`` changes, as between commands run in one process)."""
    return _out_console(os.environ.get("COLUMNS"))


@functools.cache
def _out_console(columns: str | None):
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(soft_wrap=True, width=200)  # piped tables: don't fold cells at 80 columns
    console.on_broken_pipe = _closed_stdout_exit  # rich would exit with status 1
    return console


def _keep_argument_help() -> None:
    """typer < 0.26 sets an argument's help before click's (>= 8.3) Parameter.__init__ resets
    it to None, so 'mess extract --help' showed PATH without its text: set it again after."""
    init = TyperArgument.__init__
    if getattr(init, "_keeps_help", False):
        return

    def patched(self, *args, help=None, **kwargs):
        init(self, *args, help=help, **kwargs)
        if help and not self.help:
            self.help = help

    patched._keeps_help = True  # type: ignore[attr-defined]
    TyperArgument.__init__ = patched  # type: ignore[method-assign]
    # click >= 8.3 then lists them under "Positional arguments" too; typer has its own section
    TyperCommand.format_arguments = lambda self, ctx, formatter: None  # type: ignore[method-assign]


_keep_argument_help()


def _closed_stdout_exit() -> None:
    quiet_closed_stdout()
    raise typer.Exit(0)


@functools.cache
def err_console():
    """Rich console on stderr, for progress bars and status spinners."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def error_line(message: str) -> None:
    """``error: message`` as one line on stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def quiet_closed_stdout() -> None:
    """stdout's reader went away (``mess tracks -f ids | head -1``): point stdout at the null
    device so nothing more (not even the final flush) fails; the command ends with status 0."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def os_error_line(exc: OSError) -> str:
    """One line for a file-system error: ``PATH: reason``."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


class _MessGroup(TyperGroup):
    """Turns a MessError raised by any command into one line on stderr and its exit status;
    a file-system error into one line too; a closed stdout into a quiet exit 0."""

    def invoke(self, ctx):
        from messai.errors import MessError

        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
            return result
        except MessError as exc:
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            quiet_closed_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:
            error_line(os_error_line(exc))
            raise typer.Exit(1) from None


def _click_suggests() -> bool:
    """click 8.2+ says "Did you mean …?" for a misspelt command itself; Typer then adds the
    same sentence again. Let Typer suggest only where click does not."""
    try:
        from click.exceptions import NoSuchCommand

        return "Did you mean" in NoSuchCommand("ab", possibilities=["abc"]).format_message()
    except Exception:  # older click: no NoSuchCommand, or another signature
        return False


#: whether Typer should add its own suggestion (every ``typer.Typer`` of mess passes this)
TYPER_SUGGESTS = not _click_suggests()

app = typer.Typer(
    name="mess",
    suggest_commands=TYPER_SUGGESTS,
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
        "--model",
        "-m",
        help="Hub id (default m-a-p/MERT-v1-95M), a local checkpoint directory, or crepe:tiny / crepe:full (extra 'crepe').",
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
StoresOpt = Annotated[
    Optional[str],
    typer.Option(
        "--stores",
        help="Where feature stores live: a folder or s3://bucket/prefix (gs://, az://); "
        "default: the 'stores' setting, else MESS_HOME/stores.",
    ),
]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Dataset (feature store) name.")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
NoHeaderOpt = Annotated[
    bool, typer.Option("--no-header", help="TSV without its header line (for scripts).")
]


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
    rows: list[dict[str, Any]],
    columns: list[str] | None = None,
    *,
    title: str | None = None,
    drop_first: Sequence[str] = (),
) -> None:
    """Rows as a table that fits the console's width (see :func:`fit_table`): ids and numbers
    whole, text wrapped at spaces, paths shortened in the middle, and when even that does not
    fit, columns left out (``drop_first`` first, then from the right) with a note on stderr."""
    from rich import box
    from rich.table import Table

    columns = columns or _columns(rows)
    if rows:  # a column empty on every row only takes width
        columns = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    cells = [["" if r.get(c) is None else _cell(r.get(c)) for c in columns] for r in rows]
    width = out_console().width
    layout = fit_table(columns, cells, width, drop_first=drop_first)
    if layout.dropped:
        notice(
            f"note: {', '.join(layout.dropped)} left out to fit {width} columns "
            "(--format tsv or json shows every column)"
        )
    table = Table(
        title=title,
        show_lines=False,
        header_style="bold",
        box=box.SIMPLE_HEAD,  # no vertical rules: 80 columns hold more
        pad_edge=False,
        padding=(0, 1, 0, 0),  # with the box's blank rule: two spaces between columns
        show_edge=False,
    )
    for col in layout.columns:
        table.add_column(
            col.header, width=col.width, overflow="fold"
        )  # cells fit: only headers wrap
    for row in cells:
        table.add_row(*(col.show(row[col.index]) for col in layout.columns))
    out_console().print(table, soft_wrap=False)  # the title wraps too


#: columns that hold identifiers: printed whole, on one line
ID_COLUMNS = {"track_id", "dataset", "model", "query", "aspect", "target", "layer", "rank"}
#: columns that hold paths: shortened in the middle (both ends stay) when space is short
PATH_COLUMNS = {"path", "source", "store_path", "config_file"}
#: a word longer than this may be folded in a narrow text column (rather than a column so wide)
LONGEST_UNBROKEN_WORD = 16
#: the space between two columns (the box's blank rule plus the right padding)
COLUMN_GAP = 2
#: a shortened path keeps at least this many characters
SHORTEST_PATH = 20


@dataclass
class FittedColumn:
    """One column of a fitted table: its position in the row, header and width."""

    name: str
    index: int
    header: str
    width: int
    atomic: bool  # ids, numbers, short words: never wrapped
    path: bool  # shortened in the middle to ``width``

    def show(self, text: str) -> str:
        return short_path(text, self.width) if self.path else text


@dataclass
class TableLayout:
    columns: list[FittedColumn]
    dropped: list[str]


def fit_table(
    columns: list[str], cells: list[list[str]], width: int, *, drop_first: Sequence[str] = ()
) -> TableLayout:
    """Widths for a table of ``cells`` (rows of strings) within ``width`` characters.

    Each column has a natural width (its longest cell or header) and a least width: ids,
    numbers and short words keep their longest cell (only the header may wrap, at ``_`` or
    spaces), text keeps its longest word (up to ``LONGEST_UNBROKEN_WORD``), paths
    ``SHORTEST_PATH``. When the natural widths do not fit, the columns that can give way share
    the room in proportion to what they give up; when even the least widths do not fit,
    columns are left out — those in ``drop_first``, in order, then paths, then from the right,
    never the first — and named in ``dropped``."""
    specs = []
    for i, c in enumerate(columns):
        values = [row[i] for row in cells]
        header = _header(c)
        header_word = max(len(w) for w in header.replace("_", " ").split(" ") or [header])
        longest = max((len(v) for v in values), default=0)
        atomic = _atomic(c, values)
        path = c in PATH_COLUMNS and not atomic and any("/" in v or os.sep in v for v in values)
        if atomic:
            least = max(longest, header_word)
        elif path:
            least = max(header_word, min(longest, SHORTEST_PATH))
        else:
            word = max((len(w) for v in values for w in v.split()), default=0)
            least = max(header_word, min(word, LONGEST_UNBROKEN_WORD))
        specs.append((c, i, header, max(longest, len(header), 1), max(least, 1), atomic, path))

    def room(kept) -> int:
        return width - COLUMN_GAP * (len(kept) - 1)

    kept = list(specs)
    dropped: list[str] = []
    order = [c for c in drop_first if c in columns]
    order += [s[0] for s in specs[1:] if s[6]]  # paths: long, and in the JSON anyway
    order += list(reversed(columns[1:]))
    for name in order:
        if sum(s[4] for s in kept) <= room(kept) or len(kept) == 1:
            break
        if name not in dropped:
            kept = [s for s in kept if s[0] != name]
            dropped.append(name)
    dropped = [_header(c) for c in dropped]
    natural = [s[3] for s in kept]
    widths = [s[4] for s in kept]
    extra = room(kept) - sum(widths)
    # the room left goes first to the columns that need least to be whole (a short text on one
    # line), then what remains to the next one
    for j in sorted(range(len(kept)), key=lambda j: natural[j] - widths[j]):
        more = min(natural[j] - widths[j], max(extra, 0))
        widths[j] += more
        extra -= more
    fitted = []
    for (c, i, header, _, _, atomic, path), w in zip(kept, widths, strict=True):
        shown = header if len(header) <= w else header.replace("_", " ")
        fitted.append(FittedColumn(c, i, shown, w, atomic, path))
    return TableLayout(fitted, dropped)


def _atomic(column: str, values: list[str]) -> bool:
    """Numbers, ids and short words: worth a column as wide as their longest value."""
    if column in ID_COLUMNS:
        return True
    return all(_is_number(v) or (len(v) <= 12 and " " not in v) for v in values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text in ("", "—", "-")
    return True


#: short table headers for long JSON keys (tables only; JSON and TSV keep the keys)
SHORT_HEADERS = {"duration_seconds": "seconds", "store_dtype": "dtype", "size_mb": "MB"}


def _header(name: str) -> str:
    """A short header: ``n_tracks`` → ``tracks``, ``label_work`` → ``work``."""
    name = SHORT_HEADERS.get(name, name)
    for prefix in ("n_", "label_"):
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    return name


def short_path(text: str, width: int = 36) -> str:
    """A path or id for a table cell: the home folder as ``~``, the middle elided when it is
    longer than ``width`` (both ends stay: the root and the name)."""
    home = str(Path.home())
    if text.startswith(home + os.sep):
        text = "~" + text[len(home) :]
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]


def render_rows(
    rows: list[dict[str, Any]],
    fmt: Format,
    *,
    columns: list[str] | None = None,
    title: str | None = None,
    header: bool = True,
    drop_first: Sequence[str] = (),
) -> None:
    if fmt == Format.json:
        print_json(rows)
    elif fmt == Format.tsv:
        print_tsv(rows, columns, header=header)
    else:
        print_table(rows, columns, title=title, drop_first=drop_first)


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


@contextlib.contextmanager
def step_progress():
    """A progress display on stderr for library calls that report ``progress(step, done,
    total)`` (one bar per step, e.g. "searching layers 3/13"); it goes away when done."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(step: str, done: int, total: int) -> None:
        if step not in tasks:
            tasks[step] = bars.add_task(step, total=total)
        bars.update(tasks[step], completed=done, total=total)

    with bars:
        yield update


def notice(message: str) -> None:
    """A one-line notice on stderr (never on stdout, which carries only results)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
