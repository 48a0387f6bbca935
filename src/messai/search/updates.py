"""Removing tracks from a store and from every cached index of it, without full rebuilds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from messai.errors import TrackNotFoundError

__all__ = ["RemovalReport", "remove_tracks", "update_cached_indices"]


@dataclass
class RemovalReport:
    """What :func:`remove_tracks` did.

    Attributes
    ----------
    removed : list of str
        Track ids removed from the store.
    indices : list of dict
        One ``IndexOutcome.to_dict()`` per cached FAISS index of the store, brought up to date
        (``updated``: tombstones added; ``built``: rebuilt, e.g. a flat centred index or one
        past the tombstone threshold).
    """

    removed: list[str]
    indices: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``{"removed": [...], "indices": [...]}``."""
        return {"removed": list(self.removed), "indices": list(self.indices)}


def update_cached_indices(home: Path, store) -> list[dict[str, Any]]:
    """Bring every cached FAISS index of ``store`` up to date (tombstones / appends where the
    kind allows, rebuilds otherwise), those of its fitted aspect spaces included; returns their
    outcomes."""
    from messai.search.cache import build_layer_index, cached_indices
    from messai.search.spaces import update_space_indices

    return [
        build_layer_index(home, store, layer, normalize=normalize, kind=kind).to_dict()
        for layer, normalize, kind in cached_indices(home, store)
    ] + update_space_indices(home, store)


def remove_tracks(home: Path, store, track_ids: Sequence[str]) -> RemovalReport:
    """Remove tracks from ``store`` (one Lance commit) and then from its cached indices.

    Every id must be stored: an unknown one raises TrackNotFoundError (naming it and the
    closest ids) before anything is removed. LanceDB indices need nothing: they read the live
    table, where deleted rows are gone.
    """
    ids = list(dict.fromkeys(track_ids))
    missing = [t for t in ids if t not in store]
    if missing:
        try:
            store.require_track(missing[0])
        except TrackNotFoundError as exc:
            raise TrackNotFoundError(f"{exc}; nothing was removed") from None
    with store.writer():
        for track_id in ids:
            store.remove(track_id)
    return RemovalReport(ids, update_cached_indices(home, store))
