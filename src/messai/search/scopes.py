"""The label side of a query, shared by every space: ``--where`` filters, ``--max-per`` and
``--exclude-same``, checked against the store's labels.

:class:`LabelScopes` is a mixin of :class:`~messai.search.recommend.LayerBasedRecommender`: it
uses the host's ``tracks`` (a :class:`~messai.search.catalogue.TrackCatalogue`) and keeps its
caches in the host's ``_label_cache`` and ``_scopes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from messai.errors import ConfigError


class LabelScopes:
    """Label filters and exclusions of a recommender (see the module docstring)."""

    def labels_by_id(self) -> dict[str, dict[str, Any]]:
        """Every stored track's labels (read once)."""
        if self._label_cache is None:
            self._label_cache = self.tracks.label_rows()
        return self._label_cache

    def where_scope(self, where: str | None) -> Callable[[Sequence[str]], np.ndarray] | None:
        """A ``--where`` filter as a function: track ids → bool mask (unknown ids: False);
        parsed and checked against the store's labels once per filter text."""
        if where is None:
            return None
        if where not in self._scopes:
            self._scopes[where] = self._new_scope(where)
        return self._scopes[where]

    def _new_scope(self, where: str) -> Callable[[Sequence[str]], np.ndarray]:
        from messai.search.filters import parse_where

        parsed = parse_where(where)
        labels = self.labels_by_id()
        parsed.check_columns({k for d in labels.values() for k in d})
        masks: dict[int, tuple[Sequence[str], np.ndarray]] = {}

        def scope(ids: Sequence[str]) -> np.ndarray:
            # one evaluation per id list (an index's track_ids): batches of queries reuse it
            hit = masks.get(id(ids))
            if hit is None or hit[0] is not ids:
                hit = masks[id(ids)] = (ids, parsed.mask([labels.get(t) for t in ids]))
            return hit[1]

        return scope

    def _check_max_per(self, max_per: tuple[str, int] | None) -> None:
        if max_per is None:
            return
        label, n = max_per
        known = {k for d in self.labels_by_id().values() for k in d}
        if label not in known:
            raise ConfigError(
                f"--max-per: unknown label {label!r} (labels here: {', '.join(sorted(known)) or 'none'})"
            )
        if n < 1:
            raise ConfigError(f"--max-per needs N of at least 1, got {n}")

    def _exclusions(self, track_id: str, exclude_same: Sequence[str]) -> set[str]:
        out: set[str] = set()
        labels = self.tracks.labels(track_id)
        for label in exclude_same:
            value = labels.get(label)
            if value is None:
                known = sorted(
                    {k for t in self.tracks.track_ids()[:1000] for k in self.tracks.labels(t)}
                )
                raise ConfigError(
                    f"--exclude-same {label}: track {track_id!r} has no {label!r} label (labels here: {', '.join(known) or 'none'})"
                )
            out |= {t for t, d in self.labels_by_id().items() if d.get(label) == value}
        out.discard(track_id)
        return out
