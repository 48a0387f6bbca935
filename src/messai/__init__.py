"""mess: music similarity research on MERT.

Public API (imported lazily, so ``import messai`` stays light)::

    from messai import FeatureExtractor, FeatureStore, LayerDiscovery, LayerBasedRecommender
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FeatureExtractor": "messai.features.extractor",
    "extract_dataset": "messai.features.pipeline",
    "FeatureStore": "messai.features.store",
    "Settings": "messai.config",
    "load_settings": "messai.config",
    "probe_layers": "messai.analysis.probe",
    "ProbeResults": "messai.analysis.probe",
    "LayerDiscovery": "messai.analysis.discovery",
    "LayerBasedRecommender": "messai.search.recommend",
    "MessError": "messai.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'messai' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
