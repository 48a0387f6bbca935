"""Probe results: `TargetProbeResult` per target, `ProbeResults` per run, and their JSON form.

The JSON layout of `ProbeResults.to_dict` (schema ``messai.probe/1``) and the meaning of each
field are documented in ``docs/probe-method.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from messai.errors import MessError
from messai.numeric import finite_or_none

__all__ = [
    "BEST_LAYER_STATISTIC",
    "DEFAULT_MAX_FOLD_SPREAD",
    "DEFAULT_MIN_MARGIN",
    "DEFAULT_MIN_R2",
    "SCHEMA",
    "ProbeResults",
    "TargetProbeResult",
    "float_list",
]

SCHEMA = "messai.probe/1"
#: R² a target needs on a layer to count as validated. The library calls this threshold
#: ``min_r2`` everywhere; the user-facing setting ``r2_threshold`` (config file / environment,
#: `messai.config`) is passed in as ``min_r2``.
DEFAULT_MIN_R2 = 0.5
#: How far the lower end of the R² CI must clear the control for a target to count as validated.
DEFAULT_MIN_MARGIN = 0.1
#: A layer × target cell whose fold R²s spread more than this (max − min), or disagree in sign,
#: is flagged "unstable across folds".
DEFAULT_MAX_FOLD_SPREAD = 1.0
#: The statistic a target's best layer is chosen on (one unstable fold cannot carry it): the
#: lower end of R²'s group-bootstrap CI; "median_fold_r2" when the probe ran no bootstrap.
BEST_LAYER_STATISTIC = "r2_ci_low"


def float_list(values: Any) -> list[float]:
    """Any array-like as a flat list of Python floats (NaN kept)."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _json_list(values: Sequence[float] | None) -> list[float | None] | None:
    return None if values is None else [finite_or_none(v) for v in values]


def _from_json_list(values: Sequence[float | None] | None) -> list[float] | None:
    return None if values is None else [math.nan if v is None else float(v) for v in values]


@dataclass
class TargetProbeResult:
    """Probe of one target over all layers. Lists hold one value per layer (NaN: undefined).

    ``docs/probe-method.md`` gives the meaning of each field; ``fold_r2`` is
    ``[n_layers][folds]``. ``random_model_r2`` is None unless control features were probed.
    ``best_layer`` has the highest lower CI bound ``r2_ci_low`` (the median fold R²
    ``fold_r2_median`` without a bootstrap; ties by pooled R²);
    ``unstable[layer]`` flags a cell whose folds disagree in sign or spread more than the run's
    ``max_fold_spread``.
    """

    name: str
    n_outputs: int
    n_samples: int
    transform: str
    r2: list[float]
    r2_std: list[float]
    r2_ci_low: list[float]
    r2_ci_high: list[float]
    fold_r2: list[list[float]]
    alpha: list[float]
    control_r2: list[float]
    random_model_r2: list[float] | None
    selectivity: list[float]
    selectivity_baseline: str
    best_layer: int | None
    runner_up_layer: int | None
    margin_over_median: float
    fold_wins_over_runner_up: int | None
    beats_runner_up: bool | None
    fold_r2_median: list[float] | None = None
    unstable: list[bool] | None = None
    random_model_r2_ci_low: list[float] | None = None
    random_model_r2_ci_high: list[float] | None = None

    def __post_init__(self) -> None:
        if self.fold_r2_median is None:  # older results: derive it from the folds
            self.fold_r2_median = [
                float(np.median([v for v in row if math.isfinite(v)]))
                if any(math.isfinite(v) for v in row)
                else math.nan
                for row in self.fold_r2
            ] or [math.nan] * len(self.r2)

    def is_unstable(self, layer: int) -> bool:
        """Whether the folds of ``layer`` disagree (sign, or spread over ``max_fold_spread``)."""
        return bool(self.unstable and self.unstable[layer])

    def is_validated(
        self,
        layer: int,
        *,
        min_r2: float = DEFAULT_MIN_R2,
        min_margin: float = DEFAULT_MIN_MARGIN,
        against_random_model: bool = True,
    ) -> bool:
        """Whether the target is validated on ``layer``.

        True when ``r2[layer] >= min_r2`` and ``r2_ci_low[layer] > baseline + min_margin``, the
        baseline being ``control_r2[layer]``, or the larger of it and ``random_model_r2[layer]``
        when that exists and ``against_random_model``.

        Parameters
        ----------
        layer
            Layer index, ``0 .. n_layers - 1``.
        min_r2
            Least pooled out-of-fold R² (the setting ``r2_threshold``).
        min_margin
            How far the CI's lower end must exceed the baseline.
        against_random_model
            Also compare with ``random_model_r2`` when the random model was probed.

        Returns
        -------
        bool
            False as well when R², its CI or every baseline is undefined (a probe run with
            ``control="none"`` and no random model validates nothing).
        """
        baselines = [self.control_r2[layer]]
        if against_random_model and self.random_model_r2 is not None:
            baselines.append(self.random_model_r2[layer])
        baselines = [b for b in baselines if math.isfinite(b)]
        r2, low = self.r2[layer], self.r2_ci_low[layer]
        if not baselines or not (math.isfinite(r2) and math.isfinite(low)):
            return False
        return r2 >= min_r2 and low > max(baselines) + min_margin

    def validation_failures(
        self,
        layer: int,
        *,
        min_r2: float = DEFAULT_MIN_R2,
        min_margin: float = DEFAULT_MIN_MARGIN,
        against_random_model: bool = True,
    ) -> list[str]:
        """Which tests of :meth:`is_validated` ``layer`` fails, as short phrases (empty when
        it is validated): the R² threshold, the permuted-target control, the random-model
        control."""
        r2, low = self.r2[layer], self.r2_ci_low[layer]
        if not (math.isfinite(r2) and math.isfinite(low)):
            return ["R² undefined"]
        out = []
        if r2 < min_r2:
            out.append(f"R² {r2:.2f} < threshold {min_r2:g}")
        control = self.control_r2[layer]
        random = None
        if against_random_model and self.random_model_r2 is not None:
            random = self.random_model_r2[layer]
        if not math.isfinite(control) and (random is None or not math.isfinite(random)):
            out.append("no control was run")
            return out
        if math.isfinite(control) and not low > control + min_margin:
            out.append(
                f"CI low {low:.2f} not above the permuted control {control:.2f} + {min_margin:g}"
            )
        if random is not None and math.isfinite(random) and not low > random + min_margin:
            out.append(
                f"CI low {low:.2f} not above the random-model R² {random:.2f} + {min_margin:g}"
            )
        return out

    def validated_layers(self, **kwargs: Any) -> list[int]:
        """Layers on which `is_validated` holds (same keyword arguments), by R², best first.

        Returns
        -------
        list of int
            Layer indices.
        """
        layers = [i for i in range(len(self.r2)) if self.is_validated(i, **kwargs)]
        return sorted(layers, key=lambda i: -self.r2[i])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN → None); the per-target part of `ProbeResults.to_dict`."""
        return {
            "n_outputs": self.n_outputs,
            "n_samples": self.n_samples,
            "transform": self.transform,
            "r2": _json_list(self.r2),
            "r2_std": _json_list(self.r2_std),
            "r2_ci_low": _json_list(self.r2_ci_low),
            "r2_ci_high": _json_list(self.r2_ci_high),
            "fold_r2": [_json_list(row) for row in self.fold_r2],
            "alpha": _json_list(self.alpha),
            "control_r2": _json_list(self.control_r2),
            "random_model_r2": _json_list(self.random_model_r2),
            "selectivity": _json_list(self.selectivity),
            "selectivity_baseline": self.selectivity_baseline,
            "best_layer": self.best_layer,
            "runner_up_layer": self.runner_up_layer,
            "margin_over_median": finite_or_none(self.margin_over_median),
            "fold_wins_over_runner_up": self.fold_wins_over_runner_up,
            "beats_runner_up": self.beats_runner_up,
            "fold_r2_median": _json_list(self.fold_r2_median),
            "unstable": None if self.unstable is None else [bool(v) for v in self.unstable],
            "random_model_r2_ci_low": _json_list(self.random_model_r2_ci_low),
            "random_model_r2_ci_high": _json_list(self.random_model_r2_ci_high),
        }

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> TargetProbeResult:
        """Inverse of `to_dict`."""
        n_layers = len(d["r2"])
        missing = [None] * n_layers
        margin = d.get("margin_over_median")
        return cls(
            name=name,
            n_outputs=int(d.get("n_outputs", 1)),
            n_samples=int(d.get("n_samples", 0)),
            transform=d.get("transform", "none"),
            r2=_from_json_list(d["r2"]),
            r2_std=_from_json_list(d.get("r2_std", missing)),
            r2_ci_low=_from_json_list(d.get("r2_ci_low", missing)),
            r2_ci_high=_from_json_list(d.get("r2_ci_high", missing)),
            fold_r2=[_from_json_list(row) for row in d.get("fold_r2", [])],
            alpha=_from_json_list(d.get("alpha", missing)),
            control_r2=_from_json_list(d.get("control_r2", missing)),
            random_model_r2=_from_json_list(d.get("random_model_r2")),
            selectivity=_from_json_list(d.get("selectivity", missing)),
            selectivity_baseline=d.get("selectivity_baseline", "none"),
            best_layer=d.get("best_layer"),
            runner_up_layer=d.get("runner_up_layer"),
            margin_over_median=math.nan if margin is None else float(margin),
            fold_wins_over_runner_up=d.get("fold_wins_over_runner_up"),
            beats_runner_up=d.get("beats_runner_up"),
            fold_r2_median=_from_json_list(d.get("fold_r2_median")),
            unstable=None if d.get("unstable") is None else [bool(v) for v in d["unstable"]],
            random_model_r2_ci_low=_from_json_list(d.get("random_model_r2_ci_low")),
            random_model_r2_ci_high=_from_json_list(d.get("random_model_r2_ci_high")),
        )


@dataclass
class ProbeResults:
    """Result of `probe_layers`: one `TargetProbeResult` per target plus the run's settings.

    ``predictions`` (only with ``return_predictions=True``; never serialised): target name →
    out-of-fold predictions ``[n_layers, n_samples]`` or ``[n_layers, n_samples, k]`` in the
    target's (transformed) units, NaN for dropped samples.
    """

    targets: dict[str, TargetProbeResult]
    n_samples: int
    n_groups: int
    n_layers: int
    folds: int
    inner_folds: int
    seed: int
    alphas: list[float]
    alpha_scale: Literal["relative", "absolute"]
    control: Literal["permute", "none"]
    random_model: bool
    n_bootstrap: int
    ci: float
    predictions: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    max_fold_spread: float = DEFAULT_MAX_FOLD_SPREAD
    best_layer_statistic: str = BEST_LAYER_STATISTIC
    #: how windows were grouped into folds ("track", or a label such as "work"); None: unknown
    group_by: str | None = None

    def best_layers(self) -> dict[str, int | None]:
        """The best layer of every target.

        Returns
        -------
        dict
            Target name → layer with the highest ``best_layer_statistic`` (ties: pooled R²;
            None when no layer has a finite R²).
        """
        return {name: t.best_layer for name, t in self.targets.items()}

    def to_dict(self) -> dict[str, Any]:
        """The run as a JSON-serialisable dict (NaN → None), the layout documented in
        ``docs/probe-method.md``; `from_dict` reads it back."""
        return {
            "schema": SCHEMA,
            "n_samples": self.n_samples,
            "n_groups": self.n_groups,
            "n_layers": self.n_layers,
            "folds": self.folds,
            "inner_folds": self.inner_folds,
            "seed": self.seed,
            "alphas": _json_list(self.alphas),
            "alpha_scale": self.alpha_scale,
            "control": self.control,
            "random_model": self.random_model,
            "n_bootstrap": self.n_bootstrap,
            "ci": self.ci,
            "best_layer_statistic": self.best_layer_statistic,
            "max_fold_spread": self.max_fold_spread,
            "group_by": self.group_by,
            "targets": {name: t.to_dict() for name, t in self.targets.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeResults:
        """Read back `to_dict` output (e.g. after a JSON round trip); ``predictions`` is None.

        Raises
        ------
        MessError
            The dict has another ``schema`` than `SCHEMA`.
        """
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise MessError(f"unsupported probe results schema {schema!r} (expected {SCHEMA!r})")
        return cls(
            targets={
                name: TargetProbeResult.from_dict(name, t) for name, t in d["targets"].items()
            },
            n_samples=int(d["n_samples"]),
            n_groups=int(d["n_groups"]),
            n_layers=int(d["n_layers"]),
            folds=int(d["folds"]),
            inner_folds=int(d.get("inner_folds", 0)),
            seed=int(d["seed"]),
            alphas=_from_json_list(d["alphas"]),
            alpha_scale=d.get("alpha_scale", "relative"),
            control=d.get("control", "permute"),
            random_model=bool(d.get("random_model", False)),
            n_bootstrap=int(d.get("n_bootstrap", 0)),
            ci=float(d.get("ci", 0.95)),
            max_fold_spread=float(d.get("max_fold_spread", DEFAULT_MAX_FOLD_SPREAD)),
            best_layer_statistic=d.get("best_layer_statistic", "pooled_r2"),
            group_by=d.get("group_by"),
        )
