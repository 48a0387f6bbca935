"""Layer probing: how well each layer linearly encodes each proxy target, with controls.

`probe_layers` fits, for every layer x target, a group-cross-validated ridge regression from the
layer's features to the target and reports out-of-fold R² with a bootstrap CI, a permuted-target
control and (optionally) a random-model control. The method, its guarantees and the JSON layout
of `ProbeResults.to_dict` are described in ``docs/probe-method.md``.

The work is split by stage: `messai.analysis.splits` (group folds, permutation, bootstrap),
`messai.analysis.tasks` (targets grouped by shared valid rows), `messai.analysis.ridge` (ridge
from sufficient statistics, alpha search), `messai.analysis.scores` (R² and per-target
summary) and `messai.analysis.results` (result classes and JSON). This module runs them over
the layers and re-exports the public names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from messai.analysis.results import (
    DEFAULT_MAX_FOLD_SPREAD,
    DEFAULT_MIN_MARGIN,
    DEFAULT_MIN_R2,
    SCHEMA,
    ProbeResults,
    TargetProbeResult,
    float_list,
)
from messai.analysis.ridge import FitOptions
from messai.analysis.scores import score_layer, summarise_target
from messai.analysis.splits import effective_inner_folds, group_kfold
from messai.analysis.tasks import TRANSFORMS, ProbeSetup, build_setup
from messai.errors import ConfigError, MessError
from messai.numeric import single_threaded_blas

__all__ = [
    "DEFAULT_MAX_FOLD_SPREAD",
    "DEFAULT_MIN_MARGIN",
    "DEFAULT_MIN_R2",
    "DEFAULT_RELATIVE_ALPHAS",
    "SCHEMA",
    "TRANSFORMS",
    "ProbeResults",
    "TargetProbeResult",
    "group_kfold",
    "probe_layers",
]

logger = logging.getLogger(__name__)

#: Default ridge penalties, one per decade, relative to the training sample count.
DEFAULT_RELATIVE_ALPHAS: tuple[float, ...] = tuple(10.0**k for k in range(-4, 7))


def _check_features(features: Any, n_samples: int | None, what: str) -> Any:
    shape = np.shape(features)
    if len(shape) != 3:
        raise MessError(f"{what} must be [n_samples, n_layers, dim], got shape {shape}")
    if n_samples is not None and shape[0] != n_samples:
        raise MessError(f"{what} has {shape[0]} samples, expected {n_samples}")
    if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
        raise MessError(f"{what} is empty (shape {shape})")
    return features


def _check_inputs(features: Any, groups: np.ndarray, control_features: Any) -> tuple[int, int]:
    """``(n_samples, n_layers)`` after checking the shapes of the arrays."""
    _check_features(features, None, "features")
    n_samples, n_layers = np.shape(features)[:2]
    if np.shape(groups) != (n_samples,):
        raise MessError(f"groups has shape {np.shape(groups)}, expected ({n_samples},)")
    if control_features is not None:
        _check_features(control_features, n_samples, "control_features")
        if np.shape(control_features)[1] != n_layers:
            raise MessError(
                f"control_features has {np.shape(control_features)[1]} layers, "
                f"features has {n_layers}"
            )
    return n_samples, n_layers


def _check_targets(targets: Mapping[str, Any], transforms: Mapping[str, str] | None) -> None:
    if not targets:
        raise ConfigError("no targets to probe")
    for name, transform in (transforms or {}).items():
        if name not in targets:
            raise ConfigError(f"target_transforms names unknown target {name!r}")
        if transform not in TRANSFORMS:
            raise ConfigError(
                f"transform for {name!r} must be one of {TRANSFORMS}, got {transform!r}"
            )


def _resolve_jobs(n_jobs: int | None) -> int:
    """scikit-learn's convention: None → 1, -1 → all CPUs, -2 → all but one ..."""
    import os

    if n_jobs is None:
        return 1
    if n_jobs == 0:
        raise ConfigError("n_jobs must not be 0")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    return max(1, n_jobs if n_jobs > 0 else cpus + 1 + n_jobs)


def _run_layers(
    features: Any,
    setup: ProbeSetup,
    meta: Mapping[str, Mapping[str, Any]],
    *,
    options: FitOptions,
    n_jobs: int,
    return_predictions: bool,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray] | None]:
    """Probe every layer of ``features``; per-target arrays over layers (and predictions).

    BLAS/LAPACK run single-threaded (for the whole process, while this runs) and ``n_jobs``
    layers run concurrently in threads: on a small shared machine that is faster, and far more
    robust to other load, than multi-threaded LAPACK on small matrices; it also keeps numpy's
    and scipy's separate OpenBLAS thread pools from spinning against each other.
    """
    n_samples, n_layers = np.shape(features)[:2]
    folds = setup.folds
    per_layer = ("r2", "r2_ci_low", "r2_ci_high", "alpha", "control_r2")
    out = {
        name: {
            **{key: np.full(n_layers, np.nan) for key in per_layer},
            "fold_r2": np.full((n_layers, folds), np.nan),
        }
        for name in meta
    }
    predictions = None
    if return_predictions:
        predictions = {
            name: np.full((n_layers, n_samples, m["n_outputs"]), np.nan) for name, m in meta.items()
        }

    def probe_one(layer: int) -> None:
        x = np.asarray(features[setup.order, layer], dtype=np.float64)  # a fresh copy
        score_layer(x, setup, options=options, out=out, layer=layer, predictions=predictions)
        logger.debug("probed layer %d/%d", layer + 1, n_layers)

    jobs = min(n_jobs, n_layers)
    with single_threaded_blas():
        if jobs <= 1:
            for layer in range(n_layers):
                probe_one(layer)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(probe_one, range(n_layers)))
    if predictions is not None:
        for name, m in meta.items():
            if m["ndim"] == 1:
                predictions[name] = predictions[name][..., 0]
    return out, predictions


def probe_layers(
    features: Any,
    targets: Mapping[str, Any],
    groups: Any,
    *,
    folds: int = 5,
    seed: int = 0,
    alphas: Sequence[float] | None = None,
    inner_folds: int = 2,
    control: Literal["permute", "none"] = "permute",
    control_features: Any | None = None,
    target_transforms: Mapping[str, str] | None = None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    n_jobs: int | None = -1,
    return_predictions: bool = False,
    max_fold_spread: float = DEFAULT_MAX_FOLD_SPREAD,
    group_by: str | None = None,
) -> ProbeResults:
    """Cross-validated ridge probe of every layer x target, with controls.

    Parameters
    ----------
    features
        ``[n_samples, n_layers, dim]`` array (float16/32/64, memory-mapped is fine); read one
        layer at a time.
    targets
        name → ``[n_samples]`` or ``[n_samples, k]`` values.
    groups
        ``[n_samples]`` group labels (track or work ids; any sortable type).
    folds
        Outer group folds (≥ 3 when alphas are searched, ≥ 2 for a single alpha); needs at
        least as many groups.
    seed
        Seeds the fold assignment, the control permutation and the bootstrap.
    alphas
        Ridge penalties to search. None: `DEFAULT_RELATIVE_ALPHAS` times the training sample
        count; given: absolute, as ``sklearn.linear_model.Ridge(alpha)`` on standardised
        features.
    inner_folds
        Training folds each outer fold is validated on in the alpha search: its neighbours in a
        fixed cycle of the folds (rounded up to even; ``folds - 1`` or more: all of them).
        Costs ``folds * inner_folds / 2`` extra decompositions per layer.
    control
        ``"permute"``: also probe targets permuted across groups (``control_r2``); ``"none"``.
    control_features
        Features of a random-weights model, ``[n_samples, n_layers, *]``; probed the same way
        (without its own permutation control) into ``random_model_r2``.
    target_transforms
        name → ``"none"`` or ``"log"`` (natural log; non-positive values count as missing).
        Not the proxy targets' ``"log1p"``: `messai.analysis.discovery` applies that before
        probing and passes no transforms.
    n_bootstrap, ci
        Group bootstrap resamples and the CI level (0 resamples: CIs are NaN).
    n_jobs
        Layers probed concurrently (threads; BLAS is limited to one thread meanwhile), with
        scikit-learn's convention: None or 1 one at a time, -1 one per CPU. Results do not
        depend on it.
    return_predictions
        Keep the out-of-fold predictions in `ProbeResults.predictions`.
    max_fold_spread
        A cell whose fold R²s spread more than this (max − min), or disagree in sign, is
        flagged ``unstable`` (it still counts; the flag is reported).
    group_by
        What ``groups`` are (``"track"``, ``"work"`` ...), recorded in the results.

    Returns
    -------
    ProbeResults
        One `TargetProbeResult` per target (lists over layers) and the run's settings; its
        JSON layout is documented in ``docs/probe-method.md``.

    Raises
    ------
    MessError
        Bad shapes, or fewer groups than folds.
    ConfigError
        Bad settings.
    """
    groups = np.asarray(groups)
    n_samples, n_layers = _check_inputs(features, groups, control_features)
    _check_targets(targets, target_transforms)
    if control not in ("permute", "none"):
        raise ConfigError(f"control must be 'permute' or 'none', got {control!r}")
    relative = alphas is None
    grid = np.asarray(DEFAULT_RELATIVE_ALPHAS if relative else alphas, dtype=np.float64).ravel()
    if len(grid) == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
        raise ConfigError(f"alphas must be positive and finite, got {list(grid)}")
    if len(grid) > 1 and folds < 3:
        raise ConfigError("searching alphas needs folds >= 3 (it validates on other folds)")
    if inner_folds < 1:
        raise ConfigError(f"inner_folds must be at least 1, got {inner_folds}")
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be between 0 and 1, got {ci}")
    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if not max_fold_spread > 0:
        raise ConfigError(f"max_fold_spread must be positive, got {max_fold_spread}")

    options = FitOptions(grid, relative, inner_folds, ci)
    jobs = _resolve_jobs(n_jobs)
    setup, meta = build_setup(
        targets,
        groups,
        folds=folds,
        seed=seed,
        control=control == "permute",
        transforms=dict(target_transforms or {}),
        n_bootstrap=n_bootstrap,
    )
    arrays, predictions = _run_layers(
        features,
        setup,
        meta,
        options=options,
        n_jobs=jobs,
        return_predictions=return_predictions,
    )
    random_arrays = None
    if control_features is not None:
        random_arrays, _ = _run_layers(
            control_features,
            setup.without_controls(keep_bootstrap=True),
            meta,
            options=options,
            n_jobs=jobs,
            return_predictions=False,
        )
    results = {
        name: summarise_target(
            name,
            meta[name],
            arrays[name],
            None if random_arrays is None else random_arrays[name]["r2"],
            has_control=control == "permute",
            random_ci=None
            if random_arrays is None
            else (random_arrays[name]["r2_ci_low"], random_arrays[name]["r2_ci_high"]),
            max_fold_spread=max_fold_spread,
        )
        for name in targets
    }
    return ProbeResults(
        targets=results,
        n_samples=int(n_samples),
        n_groups=int(setup.bootstrap.shape[1]),
        n_layers=int(n_layers),
        folds=folds,
        inner_folds=effective_inner_folds(folds, inner_folds) if len(grid) > 1 else 0,
        seed=seed,
        alphas=float_list(grid),
        alpha_scale="relative" if relative else "absolute",
        control=control,
        random_model=control_features is not None,
        n_bootstrap=n_bootstrap,
        ci=ci,
        predictions=predictions,
        max_fold_spread=float(max_fold_spread),
        best_layer_statistic="r2_ci_low" if n_bootstrap > 0 else "median_fold_r2",
        group_by=group_by,
    )


# LayerDiscovery (store → probe_layers → results saved with the store) is in messai.analysis.discovery.
