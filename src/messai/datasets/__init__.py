"""Datasets: turn a folder into track ids, audio paths and labels.

One module per dataset kind (``folder``, ``smd``, ``maestro``), each exposing ``NAME``,
``DESCRIPTION``, ``LABELS`` (label columns it provides; empty for ``folder``, whose labels come
from its metadata.csv), ``OPTIONS`` (keyword options its ``scan`` accepts), ``detect(root)`` and
``scan(root, **options) -> TrackList``. A :class:`TrackList` is a ``list[TrackInfo]`` sorted by
track id, with a ``warnings`` list of one-line messages for the caller to show.

>>> tracks = scan("data/demo")                      # doctest: +SKIP
>>> tracks[0].track_id, tracks[0].labels["work"]    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from messai.datasets import folder, maestro, smd
from messai.datasets.base import AUDIO_EXTENSIONS, TrackInfo, TrackList, validate_track_id
from messai.errors import DatasetError

__all__ = [
    "AUDIO_EXTENSIONS",
    "REGISTRY",
    "TrackInfo",
    "TrackList",
    "detect_kind",
    "get",
    "scan",
    "validate_track_id",
]

#: Dataset kind -> module. ``folder`` is the fallback; the others are auto-detected.
REGISTRY: dict[str, ModuleType] = {m.NAME: m for m in (folder, smd, maestro)}
DEFAULT_KIND = folder.NAME


def get(kind: str) -> ModuleType:
    """The dataset module for ``kind``; DatasetError listing the known kinds otherwise."""
    try:
        return REGISTRY[kind]
    except KeyError:
        raise DatasetError(
            f"unknown dataset kind {kind!r}; use one of {', '.join(sorted(REGISTRY))}"
        ) from None


def detect_kind(root: Path) -> str:
    """The dataset kind of ``root``: a specific kind when exactly one matches, else ``folder``.

    Raises DatasetError when ``root`` is not a folder, or when several specific kinds match
    (the message asks for ``--layout``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: {'is not a folder' if root.exists() else 'does not exist'}")
    matches = [name for name, mod in REGISTRY.items() if name != DEFAULT_KIND and mod.detect(root)]
    if len(matches) > 1:
        raise DatasetError(
            f"{root}: looks like several datasets ({', '.join(matches)}); "
            f"say which with --layout {'|'.join(sorted(REGISTRY))}"
        )
    return matches[0] if matches else DEFAULT_KIND


def scan(root: Path, kind: str | None = None, **options: object) -> TrackList:
    """Scan ``root`` as dataset ``kind`` (auto-detected when None).

    ``options`` go to the dataset's ``scan`` (e.g. ``split``, ``limit`` for maestro). Options
    that are None are dropped, so a caller can pass every option it knows; a non-None option the
    dataset does not take is a DatasetError.
    """
    root = Path(root)
    module = get(kind) if kind is not None else get(detect_kind(root))
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(module.OPTIONS))
    if unknown:
        accepted = ", ".join(module.OPTIONS) or "none"
        raise DatasetError(
            f"option(s) {', '.join(unknown)} do not apply to dataset kind {module.NAME!r} "
            f"(it takes: {accepted})"
        )
    return module.scan(root, **given)
