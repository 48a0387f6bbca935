"""Figures (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

FORMATS = ("png", "pdf", "svg")


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


def probe_heatmap(results, path: str | Path, *, title: str = "") -> Path:
    """Heat-map of R² by layer × target: left the probe, right its selectivity (R² minus the
    random-model R² when a random model was probed, else minus the permuted control, and
    labelled so); the best layer of each target is boxed. Format from the extension (png/pdf/svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results.targets)
    r2 = np.array(
        [[v if v is not None else math.nan for v in results.targets[n].r2] for n in names]
    )
    sel = np.array(
        [[v if v is not None else math.nan for v in results.targets[n].selectivity] for n in names]
    )
    fig, axes = plt.subplots(
        1, 2, figsize=(2 + 0.5 * r2.shape[1] * 2, 1.5 + 0.45 * len(names)), constrained_layout=True
    )
    for ax, data, label in (
        (axes[0], r2, "R² (out-of-fold)"),
        (axes[1], sel, selectivity_label(results)),
    ):
        im = ax.imshow(np.clip(data, -0.2, 1.0), aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.0)
        ax.set_xticks(range(data.shape[1]))
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if ax is axes[0] else [])
        ax.set_xlabel("layer")
        ax.set_title(label)
        for i, n in enumerate(names):
            best = results.targets[n].best_layer
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
    fig.suptitle((title + "\n" if title else "") + "red box: best layer of each target", fontsize=9)
    return save_figure(fig, path)
