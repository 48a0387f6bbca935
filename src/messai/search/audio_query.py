"""Queries by an audio file outside the store: extracted with the store's model, revision and
window settings (this loads torch), then searched like stored vectors.

:class:`AudioQueries` is a mixin of :class:`~messai.search.recommend.LayerBasedRecommender`: it
uses the host's ``store``, ``plan_parts``, ``where_scope``, ``_check_max_per`` and
``recommend_by_vector``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from messai.errors import MessError
from messai.search.records import RecommendationResult


class AudioQueries:
    """``recommend_audio`` / ``recommend_by_audio`` of a recommender (see the module docstring)."""

    def recommend_audio(
        self,
        path: str | Path,
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        device: str = "auto",
    ) -> dict[str, Any]:
        """:meth:`recommend_by_audio` as the documented JSON dict."""
        return self.recommend_by_audio(
            path, aspect, n_recommendations, layer=layer, device=device
        ).to_dict()

    def recommend_by_audio(
        self,
        path: str | Path,
        aspect: str | Sequence[str] = "spectral_brightness",
        n_recommendations: int = 5,
        *,
        layer: int | None = None,
        device: str = "auto",
        where: str | None = None,
        max_per: tuple[str, int] | None = None,
        offset: int = 0,
    ) -> RecommendationResult:
        """Recommend for an audio file: it is extracted with the store's model, revision and
        window settings (this loads torch), then :meth:`recommend_by_vector`. A stored track with
        the same content (the file itself, or a copy) is never among the results."""
        from messai.features.extractor import FeatureExtractor

        s, m = self.store.settings, self.store.model
        model = m["id"]
        if m.get("revision") not in (None, "local"):
            model_rev = m.get("requested_revision") or m["revision"]
        else:
            model_rev = None
        self.plan_parts(aspect, layer)  # a bad aspect fails before the model loads
        self.where_scope(where)
        self._check_max_per(max_per)
        fx = FeatureExtractor(
            model,
            revision=model_rev,
            device=device,
            precision=s.get("precision", "float32"),
            segment_seconds=s["segment_seconds"],
            hop_seconds=s["hop_seconds"],
            min_seconds=s["min_seconds"],
            compute_targets=False,
        )
        now = fx.checkpoint.identity()
        changed = [
            k for k in ("id", "config_hash", "weights_sha256", "revision") if now.get(k) != m.get(k)
        ]
        if changed:
            raise MessError(
                f"the checkpoint {model} is not the one the store was built with ({', '.join(changed)} differ); "
                "an --audio query must be extracted by the same model: re-extract the store, or restore the checkpoint"
            )
        aggregated = fx.extract(path)["aggregated"]  # [n_layers, dim]
        same = self.store.tracks_with_content(path)  # the query's own track, as with --track
        return self.recommend_by_vector(
            aggregated,
            aspect,
            n_recommendations,
            layer=layer,
            exclude_ids=same,
            query={"audio": str(path), "dataset": self.store.dataset},
            where=where,
            max_per=max_per,
            offset=offset,
        )
