"""Figures (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

FORMATS = ("png", "pdf", "svg")


def check_plot_path(path: str | Path) -> Path:
    """Refuse, before any work, a plot path whose format is not png/pdf/svg or that cannot be
    written (a folder, or below a file or a read-only folder). Returns it as a ``Path``."""
    import os

    from messai.errors import ConfigError

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: unsupported plot format {fmt!r}; use .png, .pdf or .svg")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a file name for the plot")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{path}: cannot write the plot ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: cannot write the plot ({parent} is not writable)")
    return path


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure atomically, in the format its extension names (png, pdf, svg)."""
    import io

    import matplotlib.pyplot as plt

    from messai.errors import ConfigError
    from messai.files import atomic_write_bytes

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in FORMATS:
        plt.close(fig)
        raise ConfigError(f"{path}: unsupported plot format {fmt!r}; use .png, .pdf or .svg")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


SELECTIVITY_LABELS = {
    "random_model": "R² − random-model R²",
    "permuted": "R² − permuted-target control R²",
}


def selectivity_label(results) -> str:
    """What the right panel shows: R² minus the baseline the selectivity was computed with."""
    baselines = {r.selectivity_baseline for r in results.targets.values()}
    if len(baselines) == 1:
        return SELECTIVITY_LABELS.get(baselines.pop(), "R² − baseline")
    return "R² − baseline (random-model R² where probed, else permuted control)"


def heatmap_panels(results):
    """``(names, r2, selectivity, unstable)``, arrays ``[n_targets, n_layers]``: what
    :func:`probe_heatmap` draws. The selectivity is R² minus its baseline (random-model R²,
    or the permuted control) **clipped at 0**: a negative control predicts worse than the mean,
    and subtracting it would credit the layer with a gain it does not have (R² 0.5 against a
    control of −37.1 is 0.5, not 37.6)."""
    import numpy as np

    names = list(results.targets)

    def rows(get):
        return np.array(
            [[math.nan if v is None else v for v in get(results.targets[n])] for n in names],
            dtype=float,
        ).reshape(len(names), -1)

    def baseline_of(t):
        if t.selectivity_baseline == "random_model" and t.random_model_r2 is not None:
            return t.random_model_r2
        if t.selectivity_baseline == "permuted":
            return t.control_r2
        return [math.nan] * len(t.r2)

    r2 = rows(lambda t: t.r2)
    sel = r2 - np.maximum(rows(baseline_of), 0.0)
    unstable = rows(lambda t: t.unstable if t.unstable is not None else [False] * len(t.r2)) == 1
    return names, r2, sel, unstable


def probe_heatmap(results, path: str | Path, *, title: str = "") -> Path:
    """Heat-map of R² by layer × target: left the probe, right its selectivity (R² minus the
    random-model R² when a random model was probed, else minus the permuted control, and
    labelled so), the baseline **clipped at 0**: a control below zero predicts worse than the
    mean, which is no gain for the model to be credited with. The best layer of each target
    (its ``best_layer_statistic``) is boxed; cells whose folds disagree (``unstable``) are
    hatched.
    Format from the extension (png/pdf/svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    check_plot_path(path)
    names, r2, sel, unstable = heatmap_panels(results)
    fig, axes = plt.subplots(
        1, 2, figsize=(2 + 0.5 * r2.shape[1] * 2, 1.8 + 0.45 * len(names)), constrained_layout=True
    )
    for ax, data, label in (
        (axes[0], r2, "R² (out-of-fold)"),
        (axes[1], sel, selectivity_label(results) + "\n(baseline clipped at 0)"),
    ):
        im = ax.imshow(np.clip(data, -0.2, 1.0), aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.0)
        ax.set_xticks(range(data.shape[1]))
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if ax is axes[0] else [])
        ax.set_xlabel("layer")
        ax.set_title(label, fontsize=9)
        for i, n in enumerate(names):
            best = results.targets[n].best_layer
            for j in range(data.shape[1]):
                if unstable[i, j]:
                    ax.add_patch(
                        plt.Rectangle(
                            (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", ec="0.6", lw=0
                        )
                    )
            if best is not None:
                ax.add_patch(plt.Rectangle((best - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
            for j in range(data.shape[1]):
                if math.isfinite(data[i, j]) and data.shape[1] <= 25:
                    ax.text(
                        j,
                        i,
                        f"{data[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if data[i, j] < 0.5 else "black",
                    )
        fig.colorbar(im, ax=ax, shrink=0.8)
    grouping = f"grouped by {results.group_by}; " if getattr(results, "group_by", None) else ""
    fig.suptitle(
        (title + "\n" if title else "")
        + f"{grouping}red box: best layer (highest {results.best_layer_statistic}); hatched: "
        f"unstable across folds (sign or spread > {results.max_fold_spread:g})",
        fontsize=9,
    )
    return save_figure(fig, path)
