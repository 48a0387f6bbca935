"""The track catalogue of a store (ids and labels), cached beside its indices.

``mess recommend`` needs, besides an index, which tracks exist and their labels. Reading them
from the store means importing pyarrow and Lance (about half a second) and scanning the tracks
table; the catalogue keeps them in one JSON file in the local index cache, keyed by the store's
``fingerprint(probe_inputs=True)`` (which changes with every change of features or labels,
in constant time). A stale or missing catalogue is rebuilt from the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from messai.errors import TrackNotFoundError

FILE = "catalogue.json"


class TrackCatalogue:
    """Track ids and labels of a store at one state; the queries the recommender makes."""

    def __init__(
        self,
        dataset: str,
        state: str,
        track_ids: list[str],
        labels: list[dict],
        sources: list[str] | None = None,
        failures: dict[str, str] | None = None,
    ):
        self.dataset = dataset
        self.state = state
        self._ids = track_ids
        self._labels = labels
        self._sources = sources if sources is not None else [""] * len(track_ids)
        self._pos = {t: i for i, t in enumerate(track_ids)}
        self._failures = failures or {}

    @classmethod
    def for_store(cls, folder: Path, store) -> TrackCatalogue:
        """The cached catalogue in ``folder`` when it matches the store's state, else one read
        from the store (and cached)."""
        from messai.files import atomic_write_json

        state = store.fingerprint(probe_inputs=True)
        path = Path(folder) / FILE
        cached = _read(path)
        if cached is not None and cached.get("state") == state:
            return cls(
                store.dataset,
                state,
                cached["track_ids"],
                cached["labels"],
                cached.get("sources"),
                cached.get("failures"),
            )
        entries = list(store.iter_entries())
        ids = [e.track_id for e in entries]
        labels = [e.labels for e in entries]
        sources = [e.source for e in entries]
        stored = set(ids)
        failures = {t: f.reason for t, f in store.failures().items() if t not in stored}
        record = {"dataset": store.dataset, "state": state, "track_ids": ids, "labels": labels}
        try:
            atomic_write_json(
                path, {**record, "sources": sources, "failures": failures}, indent=None
            )
        except OSError:
            pass  # a read-only cache only costs speed
        return cls(store.dataset, state, ids, labels, sources, failures)

    def track_ids(self) -> list[str]:
        """Stored track ids, sorted."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._pos

    def labels(self, track_id: str) -> dict[str, Any]:
        self.require_track(track_id)
        return dict(self._labels[self._pos[track_id]])

    def missing_sources(self, root: Path | None, track_ids) -> set[str]:
        """Of ``track_ids``, those whose audio file is gone from ``root`` (a cheap stat each)."""
        if root is None or "://" in str(root):
            return set()
        out = set()
        for t in track_ids:
            i = self._pos.get(t)
            if i is not None and self._sources[i] and not (root / self._sources[i]).exists():
                out.add(t)
        return out

    def require_track(self, track_id: str) -> None:
        """TrackNotFoundError naming the three closest ids when ``track_id`` is absent."""
        if track_id not in self._pos:
            import difflib

            if track_id in self._failures:
                raise TrackNotFoundError(
                    f"track {track_id!r} of dataset {self.dataset!r} failed to extract: "
                    f"{self._failures[track_id]}"
                )
            close = difflib.get_close_matches(track_id, self._ids, n=3, cutoff=0.0)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise TrackNotFoundError(
                f"unknown track {track_id!r} in dataset {self.dataset!r}{hint}"
            )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("track_ids"), list)
    return data if ok and len(data.get("labels", [])) == len(data["track_ids"]) else None
