"""Typed records of the query path: what a query asks (aspect specs, the planned parts) and
what it answers (:class:`Recommendation`, :class:`RecommendationResult`, their JSON).

No imports beyond the standard library; re-exported by :mod:`messai.search.recommend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from messai.errors import ConfigError

__all__ = [
    "RESULT_FIELDS",
    "Part",
    "Recommendation",
    "RecommendationResult",
    "flat_row",
    "parse_aspect_spec",
    "split_aspect_specs",
]


@dataclass(frozen=True)
class Recommendation:
    """One recommended track.

    Attributes
    ----------
    rank : int
        1 for the best.
    track_id : str
        The track.
    similarity : float
        Cosine of normalised vectors (fused: Σ w·sim / Σ w).
    labels : dict
        The track's labels in the store (``store.labels``).
    layer_similarities : list of float, optional
        Fused queries only: the cosine in each part's layer, in the order of the aspects.
    """

    rank: int
    track_id: str
    similarity: float
    labels: dict[str, Any] = field(default_factory=dict)
    layer_similarities: list[float] | None = None
    explanation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"rank", "track_id", "similarity", ["layer_similarities"], "labels": {...},
        ["explain"]}``, similarities rounded to 6 decimals. Labels are nested, so a label
        column named like a result field (``rank``, ``similarity``, ``track_id`` …) never
        overwrites it."""
        row: dict[str, Any] = {
            "rank": self.rank,
            "track_id": self.track_id,
            "similarity": round(float(self.similarity), 6),
        }
        if self.layer_similarities is not None:
            row["layer_similarities"] = [round(float(v), 6) for v in self.layer_similarities]
        row["labels"] = dict(self.labels)
        if self.explanation is not None:  # --explain (messai.search.explain)
            row["explain"] = self.explanation
        return row


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A recommendation's JSON (:meth:`Recommendation.to_dict`) as one flat row for tables and
    TSV: the labels as columns of their own, a label named like a result field shown as
    ``label.NAME``."""
    out = {k: v for k, v in row.items() if k != "labels"}
    for name, value in (row.get("labels") or {}).items():
        out[f"label.{name}" if name in RESULT_FIELDS else name] = value
    return out


#: the fields of a recommendation row that a label column must never replace
RESULT_FIELDS = frozenset(
    {
        "rank",
        "track_id",
        "similarity",
        "layer_similarities",
        "labels",
        "explain",
        "query",
        "validated",
    }
)


@dataclass(frozen=True)
class RecommendationResult:
    """The answer to one query: what was asked and the ranked tracks.

    Attributes
    ----------
    query : dict
        ``{"track_id", "dataset"}`` or ``{"audio", "dataset"}`` (or the caller's own).
    caveat : str or None
        Set when a layer searched is not its aspect's validated layer (an unvalidated probe
        result, the prototype defaults, or ``--layer``): the results carry no evidence.
    aspects, layers, weights : list
        One entry per requested aspect: its name, the layer searched, its weight.
    normalize : str
        The indices' normalisation.
    recommendations : list of Recommendation
        Best first.
    """

    query: dict[str, Any]
    aspects: list[str]
    layers: list[int]
    weights: list[float]
    normalize: str
    recommendations: list[Recommendation]
    spaces: list[dict[str, Any]] | None = None
    #: why the layers searched are not validated for their aspects (None when they all are)
    caveat: str | None = None

    @property
    def validated(self) -> bool:
        """Whether every layer searched is its aspect's validated layer."""
        return self.caveat is None

    @property
    def fused(self) -> bool:
        """Whether several aspects were mixed."""
        return len(self.aspects) > 1

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON: ``query``, ``aspect``, ``layer`` (lists and ``weights`` when
        fused), ``normalize``, ``recommendations``."""
        single = not self.fused
        return {
            "query": self.query,
            "aspect": self.aspects[0] if single else list(self.aspects),
            "layer": self.layers[0] if single else list(self.layers),
            **({} if single else {"weights": list(self.weights)}),
            "normalize": self.normalize,
            # searched in fitted aspect spaces (messai.search.aspect_search); absent for layers
            **({} if self.spaces is None else {"space": self.spaces[0] if single else self.spaces}),
            "validated": self.validated,
            "caveat": self.caveat,
            "recommendations": [r.to_dict() for r in self.recommendations],
        }


def parse_aspect_spec(spec: str) -> tuple[str, float]:
    """``"timbral_texture:0.5"`` → ``("timbral_texture", 0.5)``; weight 1 when omitted."""
    name, _, weight = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"invalid aspect {spec!r}: expected NAME or NAME:WEIGHT")
    try:
        w = float(weight) if weight.strip() else 1.0
    except ValueError:
        raise ConfigError(
            f"invalid aspect weight in {spec!r}: expected a number after ':' "
            "(several aspects: NAME:W,NAME:W or -a repeated)"
        ) from None
    if not w > 0:
        raise ConfigError(f"aspect weight must be positive in {spec!r}")
    return name, w


def split_aspect_specs(aspect: str | Sequence[str]) -> list[str]:
    """Aspect specs as given (``-a`` repeated, or comma-separated in one): ``["a:0.7,b:0.3",
    "c"]`` → ``["a:0.7", "b:0.3", "c"]``."""
    specs = [aspect] if isinstance(aspect, str) else list(aspect)
    out = [part for spec in specs for part in str(spec).split(",")]
    if any(not part.strip() for part in out):
        raise ConfigError(
            f"invalid aspect list {', '.join(map(repr, specs))}: an empty entry between commas"
        )
    return [part.strip() for part in out]


@dataclass(frozen=True)
class Part:
    """One weighted aspect of a query and the space it is searched in."""

    aspect: str
    weight: float
    space: Any  # messai.search.spaces.LayerSpace or FittedSpace
    #: why this part's results carry no evidence (None when validated)
    caveat: str | None = None
    #: say the caveat on stderr too, once (an aspect's own layer; not a --layer the user chose)
    notice: bool = False
