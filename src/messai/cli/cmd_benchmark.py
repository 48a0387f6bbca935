"""``mess benchmark``: extraction speed, similarity metrics, retrieval and query speed."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from messai.cli import common
from messai.cli.common import DeviceOpt, ModelOpt, PrecisionOpt, app, print_json

bench_app = typer.Typer(help="Measure speed and retrieval quality (results as JSON on stdout).", no_args_is_help=True)
app.add_typer(bench_app, name="benchmark")


@bench_app.command("extract")
def bench_extract_command(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    files: Annotated[int, typer.Option("--files", help="Generated 44.1 kHz stereo files.")] = 4,
    seconds: Annotated[float, typer.Option("--seconds", help="Length of each file.")] = 10.0,
    repeats: Annotated[int, typer.Option("--repeats", help="Alternating runs per variant; best counts.")] = 2,
) -> None:
    """Extraction throughput: full pipeline (decode, resample, targets, forward, store) vs the
    bare model forward on the same windows, × real time and their ratio. Without --model it
    uses a random checkpoint of the MERT-v1-95M shape (weights don't change the cost)."""
    from messai.bench.extraction import bench_extraction

    common.notice("benchmarking extraction (this takes a minute on a CPU) ...")
    result = bench_extraction(
        model=model, device=(device.value if device else "cpu"), precision=(precision.value if precision else "float32"),
        batch_size=batch_size, n_files=files, seconds_per_file=seconds, repeats=repeats,
    )  # fmt: skip
    print_json(result)
