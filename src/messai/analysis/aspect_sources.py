"""What defines an aspect space: target names or one label column (``mess aspects fit --from``)."""

from __future__ import annotations

from dataclasses import dataclass

from messai.errors import ConfigError


@dataclass(frozen=True)
class SpaceSource:
    """What defines an aspect: ``kind`` ``"targets"`` (``names``: target names) or ``"label"``
    (``names``: one label column)."""

    kind: str
    names: tuple[str, ...]


def parse_sources(specs: list[str] | None, aspect: str, store=None) -> SpaceSource:
    """``["target:spectral_centroid", "target:spectral_rolloff"]`` or ``["label:instrument"]``;
    without specs, the built-in aspect's targets, or the label column named like the aspect."""
    from messai.analysis.aspects import ASPECTS
    from messai.features.targets import ASPECTS_OF_TARGETS, TARGETS

    if not specs:
        if aspect in ASPECTS:
            names = tuple(t for t, a in ASPECTS_OF_TARGETS.items() if a == aspect)
            if store is not None:  # the aspect's targets this store has for every track
                stored = [set(e.targets) for e in store.iter_entries()]
                have = set.intersection(*stored) if stored else set()
                if not have & set(names):
                    raise ConfigError(
                        f"dataset {store.dataset!r} has none of {aspect}'s targets ({', '.join(names)}); "
                        f"run 'mess targets --dataset {store.dataset}'"
                    )
                names = tuple(t for t in names if t in have)
            return SpaceSource("targets", names)
        if store is not None and any(aspect in store.labels(t) for t in store.track_ids()[:50]):
            return SpaceSource("label", (aspect,))
        raise ConfigError(
            f"aspect {aspect!r} is neither built in ({', '.join(ASPECTS)}) nor a label of the "
            "dataset; say what defines it with --from target:NAME or --from label:COLUMN"
        )
    kinds, names = set(), []
    for spec in specs:
        kind, _, name = spec.partition(":")
        if kind not in ("target", "label") or not name:
            raise ConfigError(f"--from {spec!r}: expected target:NAME or label:COLUMN")
        if kind == "target" and name not in TARGETS:
            raise ConfigError(f"--from {spec!r}: unknown target; known: {', '.join(TARGETS)}")
        kinds.add(kind)
        names.append(name)
    if len(kinds) > 1 or (kinds == {"label"} and len(names) > 1):
        raise ConfigError("--from takes target:NAME (one or more) or a single label:COLUMN")
    return SpaceSource("targets" if kinds == {"target"} else "label", tuple(names))
