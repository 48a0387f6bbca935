"""Whether a fitted aspect space is validated: its held-out evidence against a threshold and a
control, by the same kind of rule as a layer (:meth:`TargetProbeResult.is_validated`).

``held_out_interval`` gives the held-out score of a fit (out-of-fold R² for a target space,
out-of-fold accuracy for a label space) with a confidence interval from resampling whole groups;
``validate_space`` turns it into the ``evidence["validation"]`` saved with the space;
``space_validation`` reads that back (a space without it, fitted by an older mess, is not
validated).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _bootstrap_weights(groups: np.ndarray, n_bootstrap: int, seed: int):
    """(group index per window, [n_bootstrap, n_groups] resample counts of whole groups)."""
    _, gidx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = int(gidx.max()) + 1 if len(gidx) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_bootstrap, n_groups))
    counts = np.zeros((n_bootstrap, n_groups))
    np.add.at(counts, (np.arange(n_bootstrap)[:, None], draws), 1.0)
    return gidx, counts


def held_out_interval(
    kind: str, oof, groups: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95
) -> tuple[float, float, float]:
    """(value, CI low, CI high) of a space's held-out score, the interval by resampling whole
    groups (tracks, or the ``--group-by`` label): R² of out-of-fold predictions, pooled and
    averaged over outputs (``kind`` ``"targets"``), or out-of-fold accuracy (``"label"``)."""
    if kind == "targets":
        kept, Y, P = oof
        g = np.asarray(groups)[kept]
        ok = np.isfinite(P).all(1)
        Y, P, g = Y[ok], P[ok], g[ok]
        gidx, W = _bootstrap_weights(g, n_bootstrap, seed)
        G = int(gidx.max()) + 1 if len(gidx) else 0

        def per_group(v):
            out = np.zeros((G, v.shape[1]))
            np.add.at(out, gidx, v)
            return out

        n_g = np.bincount(gidx, minlength=G).astype(float)
        sse_g, y_g, yy_g = per_group((P - Y) ** 2), per_group(Y), per_group(Y**2)

        def r2(w):  # w [b, G] → mean over outputs of 1 - SSE/TSS
            n = w @ n_g
            tss = w @ yy_g - (w @ y_g) ** 2 / n[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.nanmean(np.where(tss > 0, 1 - (w @ sse_g) / tss, np.nan), axis=1)

        value = float(r2(np.ones((1, G)))[0])
        boot = r2(W)
    else:
        hit = np.asarray(oof, dtype=np.float64)
        ok = np.isfinite(hit)
        gidx, W = _bootstrap_weights(np.asarray(groups)[ok], n_bootstrap, seed)
        G = int(gidx.max()) + 1 if len(gidx) else 0
        c_g = np.bincount(gidx, weights=hit[ok], minlength=G)
        n_g = np.bincount(gidx, minlength=G).astype(float)
        value = float(c_g.sum() / n_g.sum()) if n_g.sum() else float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = (W @ c_g) / (W @ n_g)
    boot = boot[np.isfinite(boot)]
    if not len(boot) or not np.isfinite(value):
        return value, float("nan"), float("nan")
    tail = (1 - ci) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return value, float(low), float(high)


def validate_space(
    kind: str,
    value: float,
    low: float,
    high: float,
    *,
    min_r2: float,
    chance: float | None,
    control: float | None,
    control_store: str | None,
    margin: float,
) -> dict[str, Any]:
    """The ``evidence["validation"]`` of a space: validated only when the lower confidence
    bound of its held-out score clears the threshold (R² ``min_r2`` for targets, chance +
    ``margin`` for a label) and, when a control store exists, the random-weights control's score
    + ``margin``: the same kind of rule as a layer's (:meth:`TargetProbeResult.is_validated`)."""
    statistic = "cv_r2" if kind == "targets" else "cv_accuracy"
    threshold = min_r2 if kind == "targets" else float(chance or 0.0) + margin
    failures = []
    if not np.isfinite(low):
        failures.append(f"no held-out {statistic} interval (too few groups)")
    elif not low > threshold:
        failures.append(
            f"held-out {statistic} {value:.3f} (95% CI low {low:.3f}) is not above "
            + (
                f"the R² threshold {threshold:g}"
                if kind == "targets"
                else f"chance {chance:g} + {margin:g}"
            )
        )
    if control is not None and np.isfinite(low) and not low > control + margin:
        failures.append(
            f"CI low {low:.3f} is not above the random-weights control ({control_store}: "
            f"{control:.3f}) + {margin:g}"
        )
    r = lambda v: None if v is None or not np.isfinite(v) else round(float(v), 4)  # noqa: E731
    return {
        "statistic": statistic,
        "value": r(value),
        "ci_low": r(low),
        "ci_high": r(high),
        "threshold": round(float(threshold), 4),
        "control": r(control),
        "control_store": control_store,
        "validated": not failures,
        "failures": failures,
    }


def space_validation(space) -> tuple[bool, str | None]:
    """(validated?, why not) of a fitted space, from its saved evidence."""
    v = (space.evidence or {}).get("validation")
    if not isinstance(v, dict):
        return False, "no held-out validation recorded (fitted by an older mess): refit it"
    if v.get("validated") is True:
        return True, None
    return False, "; ".join(v.get("failures") or ["held-out evidence fails"])
