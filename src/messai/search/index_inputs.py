"""What a layer index accepts: vectors ``[n, dim]`` of finite floats, one unique track id per
row, JSON-serialisable metadata (ConfigError naming the problem otherwise)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from messai.errors import ConfigError


def _check_vectors(vectors: np.ndarray, *, dim: int | None) -> np.ndarray:
    X = np.asarray(vectors)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ConfigError(f"expected vectors of shape [n, dim] with n, dim > 0, got {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    if dim is not None and X.shape[1] != dim:
        raise ConfigError(f"expected vectors of dimension {dim}, got {X.shape[1]}")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ConfigError(f"vectors contain NaN or inf (rows {bad[:5].tolist()} …)")
    return X


def _check_ids(track_ids: Sequence[str], *, expected: int) -> list[str]:
    ids = [str(t) for t in track_ids]
    if len(ids) != expected:
        raise ConfigError(f"{len(ids)} track ids for {expected} vectors")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = [t for t in ids if t in seen or seen.add(t)]
        raise ConfigError(f"duplicate track ids: {dupes[:5]}")
    return ids


def _check_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"index meta must be JSON-serialisable: {exc}") from exc
    return meta
