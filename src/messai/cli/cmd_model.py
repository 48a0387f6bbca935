"""``mess model random``: write a random-weight checkpoint (MERT shapes, or any model's twin)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from messai.cli.common import TYPER_SUGGESTS, RevisionOpt, app, notice

model_app = typer.Typer(
    help="Model checkpoints.", no_args_is_help=True, suggest_commands=TYPER_SUGGESTS
)
app.add_typer(model_app, name="model")


class Preset(str, Enum):
    tiny = "tiny"
    base = "base"
    large = "large"


class WeightsFormat(str, Enum):
    safetensors = "safetensors"
    bin = "bin"
    both = "both"


@model_app.command("random")
def random_command(
    directory: Annotated[Path, typer.Argument(help="New folder to write the checkpoint into.")],
    like: Annotated[
        Optional[str],
        typer.Option(
            "--like",
            help="Write the untrained twin of this model: a MERT hub id or directory, or crepe:tiny / crepe:full.",
        ),
    ] = None,
    preset: Annotated[
        Optional[Preset],
        typer.Option(
            "--preset", help="A MERT shape: tiny (tests), base (95M shape), large (330M shape)."
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Random seed (with --like, combined with the source's weights: a twin never re-draws them).",
        ),
    ] = 0,
    weights_format: Annotated[
        WeightsFormat, typer.Option("--weights-format", help="Weights file(s) to write.")
    ] = WeightsFormat.safetensors,
    revision: RevisionOpt = None,
) -> None:
    """Write a random-weight checkpoint: a MERT shape (--preset) in the hub layout, or the
    untrained twin of a model (--like: a MERT checkpoint, or crepe:tiny / crepe:full).

    Its embeddings mean NOTHING musically. It is for two jobs: smoke-testing pipelines without
    a 380 MB download, and the random-initialisation control of layer probing (same
    architecture as the real model, untrained: extract a store with it and pass it to
    'mess probe --control-store'). A twin's weights never equal its source's: the seed is
    combined with the source's weights, and an identical result is refused.
    """
    from messai.models import write_random_checkpoint

    out = write_random_checkpoint(
        directory,
        like=like,
        preset=preset.value if preset else None,
        seed=seed,
        weights_format=weights_format.value,
        revision=revision,
    )
    notice(f"wrote random-weight checkpoint to {out} (embeddings mean nothing musically)")
    print(out)
