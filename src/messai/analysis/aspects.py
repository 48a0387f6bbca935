"""Musical aspects and the aspect → layer map.

An aspect (spectral_brightness, timbral_texture ...) is what a user asks for; proxy targets
stand for aspects (``messai.features.targets``). The map comes from this store's probe results when they
exist: the aspect's best (target, layer) by R², *validated* when that R² is at least
``min_r2`` (the setting ``r2_threshold``; 0.5 by default) and its bootstrap CI clears the
control. Without probe results, the
prototype's three claims are used, clearly labelled unvalidated.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from messai.analysis.results import DEFAULT_MIN_R2
from messai.errors import ConfigError
from messai.numeric import finite_or_none

#: aspect → one-line description
ASPECTS: dict[str, str] = {
    "spectral_brightness": "how bright the sound is: spectral centroid and roll-off",
    "timbral_texture": "tone colour: the MFCC envelope",
    "acoustic_structure": "spectral spread and peak/valley structure: bandwidth and contrast",
    "noisiness": "noise-like vs tonal: spectral flatness, zero-crossing rate",
    "dynamics": "loudness and its variation: RMS level in dB and its spread",
    "rhythmic_density": "how many note onsets per second",
    "harmony": "pitch-class content: the 12-bin chroma",
    "harmonic_complexity": "how evenly spread the pitch classes are: chroma entropy",
}

#: The prototype's (MESS-AI) claimed layers. All three were really the spectral centroid
#: predicted from different layers; they are a starting point, never evidence.
PROTOTYPE_DEFAULTS: dict[str, int] = {
    "spectral_brightness": 0,
    "timbral_texture": 1,
    "acoustic_structure": 2,
}

SOURCE_PROBE = "probe"
SOURCE_PROBE_UNVALIDATED = "probe (not validated)"
SOURCE_DEFAULT = "prototype default (unvalidated)"


@dataclass(frozen=True)
class AspectLayer:
    """Which layer to use for an aspect, and the evidence for it."""

    aspect: str
    layer: int | None
    source: str
    validated: bool
    target: str | None = None
    r2: float | None = None
    control_r2: float | None = None
    random_model_r2: float | None = None
    description: str = ""
    stale: bool = False
    #: why the layer is not validated (None when it is): the tests it fails
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def aspect_map_from_probe(
    probe: dict[str, Any] | None, *, min_r2: float = DEFAULT_MIN_R2, stale: bool = False
) -> dict[str, AspectLayer]:
    """The aspect → layer map from saved probe results.

    For each aspect, its targets' (target, layer) pairs are ranked validated first, then by R².
    Aspects without probed targets fall back to `PROTOTYPE_DEFAULTS` (unvalidated) or are left
    out.

    Parameters
    ----------
    probe
        A ``ProbeResults.to_dict()`` dict, or None (prototype defaults only).
    min_r2
        R² threshold of `TargetProbeResult.is_validated` (the setting ``r2_threshold``).
    stale
        Mark the probe-based entries as computed on an older version of the store.

    Returns
    -------
    dict
        aspect name → `AspectLayer`.
    """
    from messai.features.targets import ASPECTS_OF_TARGETS

    out: dict[str, AspectLayer] = {}
    results = None
    if probe is not None:
        from messai.analysis.probe import ProbeResults

        results = ProbeResults.from_dict(probe)
    for aspect, description in ASPECTS.items():
        best: tuple[float, str, int, bool] | None = None
        if results is not None:
            for name, res in results.targets.items():
                if ASPECTS_OF_TARGETS.get(name) != aspect:
                    continue
                for layer, r2 in enumerate(res.r2):
                    if not math.isfinite(r2):
                        continue
                    ok = res.is_validated(layer, min_r2=min_r2)
                    key = (ok, r2)
                    if best is None or key > (best[3], best[0]):
                        best = (r2, name, layer, ok)
        if best is not None:
            r2, name, layer, ok = best
            res = results.targets[name]
            out[aspect] = AspectLayer(
                aspect,
                layer,
                SOURCE_PROBE if ok else SOURCE_PROBE_UNVALIDATED,
                ok,
                name,
                finite_or_none(r2, ndigits=4),
                finite_or_none(res.control_r2[layer], ndigits=4),
                finite_or_none(res.random_model_r2[layer], ndigits=4)
                if res.random_model_r2 is not None
                else None,
                description,
                stale,
                None if ok else "; ".join(res.validation_failures(layer, min_r2=min_r2)),
            )
        elif aspect in PROTOTYPE_DEFAULTS:
            out[aspect] = AspectLayer(
                aspect,
                PROTOTYPE_DEFAULTS[aspect],
                SOURCE_DEFAULT,
                False,
                description=description,
                reason="no probe results: the prototype's claim, never tested here",
            )
    return out


def load_probe(store) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The saved probe results of a store and their metadata.

    Returns
    -------
    results : dict or None
        ``ProbeResults.to_dict()`` as saved in the store's ``probe.json``; None without one.
    meta : dict or None
        The run's metadata (``dataset``, ``model``, ``store_fingerprint``, ``min_r2`` ...).

    Raises
    ------
    ConfigError
        ``probe.json`` exists but cannot be read.
    """
    raw = store.read_side_file("probe.json")
    if raw is None:
        return None, None
    try:
        saved = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{store.uri}/probe.json: unreadable probe results ({exc}); re-run 'mess probe'"
        ) from None
    return saved.get("results"), saved.get("meta") or {}


def aspect_map(store, *, min_r2: float | None = None) -> dict[str, AspectLayer]:
    """The aspect → layer map of a store (its probe results, else the prototype defaults).

    Parameters
    ----------
    store
        A `messai.features.store.FeatureStore`.
    min_r2
        R² threshold for validation; None: the threshold the probe was run with (saved in
        ``probe.json``, `DEFAULT_MIN_R2` unless changed).

    Returns
    -------
    dict
        aspect name → `AspectLayer`; probe-based entries are marked ``stale`` when the store
        changed after the probe.
    """
    probe, meta = load_probe(store)
    stale = bool(meta) and meta.get("store_fingerprint") != store.fingerprint(probe_inputs=True)
    if min_r2 is None:
        min_r2 = float((meta or {}).get("min_r2", DEFAULT_MIN_R2))
    return aspect_map_from_probe(probe, min_r2=min_r2, stale=stale)


def resolve_aspect(mapping: dict[str, AspectLayer], aspect: str) -> AspectLayer:
    """The entry for ``aspect`` in an `aspect_map`.

    Raises
    ------
    ConfigError
        No layer for ``aspect``; the message lists the aspects that have one.
    """
    entry = mapping.get(aspect)
    if entry is None or entry.layer is None:
        available = ", ".join(sorted(a for a, e in mapping.items() if e.layer is not None))
        known = "" if aspect in ASPECTS else " (unknown aspect)"
        raise ConfigError(
            f"no layer for aspect {aspect!r}{known}; available: {available or 'none'}"
            + ("" if aspect not in ASPECTS else "; run 'mess probe' to map it, or pass --layer")
        )
    return entry
