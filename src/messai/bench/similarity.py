"""Similarity-metric evaluation on a feature store.

For every layer × metric (cosine, euclidean, dot) × normalisation (none, center, zscore) of the
track vectors (mean of each track's windows):

* **spread** of pairwise similarity (mean, std, and for cosine the fraction of pairs above 0.9:
  the prototype's "every track is 90 % similar" problem, measured instead of asserted);
* **hubness**: skewness of the k-occurrence distribution (how often each track appears in
  others' top-k) and the largest hub;
* **retrieval** against a label (precision@k, MAP, MRR; the query excluded; queries whose label
  has no other track are skipped);
* **aspect fidelity**: for each proxy target, the mean |Δ target| between a track and its top-k
  neighbours divided by the mean |Δ| over all pairs (< 1: neighbours really share that aspect;
  ≈ 1: the metric ignores it); per aspect, the mean over its targets.

Euclidean similarity is the negative distance. Large stores are subsampled to ``max_tracks``
(seeded); the JSON says so.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

METRICS = ("cosine", "euclidean", "dot")
NORMALIZATIONS = ("none", "center", "zscore")


def _normalise(X: np.ndarray, mode: str) -> np.ndarray:
    """Before the metric: none, centred, or z-scored with the same std floor as the indices'
    ``zscore`` (``messai.search.normalise.Normalizer``), but without their final L2 step."""
    if mode == "none":
        return X
    Xc = X - X.mean(0)
    if mode == "center":
        return Xc
    from messai.search.normalise import Normalizer, floored_std

    return Xc / floored_std(X.var(0), Normalizer("zscore").min_scale)


def similarity_matrix(X: np.ndarray, metric: str) -> np.ndarray:
    """``[n, n]`` float64 similarities; euclidean is the negative distance."""
    X = X.astype(np.float64)
    if metric == "cosine":
        n = np.linalg.norm(X, axis=1, keepdims=True)
        Xn = np.divide(X, n, out=np.zeros_like(X), where=n > 0)
        return Xn @ Xn.T
    if metric == "dot":
        return X @ X.T
    if metric == "euclidean":
        sq = (X * X).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0.0)
        return -np.sqrt(d2)
    raise ValueError(f"unknown metric {metric!r}")


def _ranking(S: np.ndarray) -> np.ndarray:
    """Per row, the other tracks from most to least similar (self excluded): ``[n, n-1]``."""
    S = S.copy()
    np.fill_diagonal(S, -np.inf)
    order = np.argsort(-S, axis=1, kind="stable")
    return order[:, :-1]


def _skew(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    sd = x.std()
    return float(((x - x.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0


def retrieval_scores(order: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float | int]:
    """precision@k, MAP and MRR of rankings ``order [n, n-1]`` against ``labels [n]``."""
    rel = labels[order] == labels[:, None]  # [n, n-1]
    has = rel.any(1)
    if not has.any():
        return {
            "precision_at_k": float("nan"),
            "map": float("nan"),
            "mrr": float("nan"),
            "n_queries": 0,
        }
    rel = rel[has]
    p_at_k = rel[:, :k].mean(1)
    ranks = np.arange(1, rel.shape[1] + 1)
    cum = np.cumsum(rel, axis=1)
    ap = (rel * cum / ranks).sum(1) / rel.sum(1)
    mrr = 1.0 / (rel.argmax(1) + 1)
    return {
        "precision_at_k": float(p_at_k.mean()),
        "map": float(ap.mean()),
        "mrr": float(mrr.mean()),
        "n_queries": int(has.sum()),
    }


def aspect_fidelity(order: np.ndarray, values: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """Per target: mean |Δ| to the top-k neighbours / mean |Δ| over all pairs."""
    out = {}
    n = len(order)
    for name, v in values.items():
        v = v.reshape(n, -1)

        def diff(a, b, v=v):
            return np.linalg.norm(v[a] - v[b], axis=-1)

        neigh = diff(np.repeat(np.arange(n), k), order[:, :k].ravel()).mean()
        iu = np.triu_indices(n, 1)
        base = diff(iu[0], iu[1]).mean()
        out[name] = float(neigh / base) if base > 0 else float("nan")
    return out


def track_targets(store, ids: list[str]) -> dict[str, np.ndarray]:
    """Per track, the mean over its windows of each (transformed) proxy target."""
    from messai.features.targets import TARGETS

    entries = [store.entry(t) for t in ids]
    common = set.intersection(*(set(e.targets) for e in entries)) if entries else set()
    names = [n for n in TARGETS if n in common]
    data = store.read_windows(layers=False, targets=names, track_ids=list(ids))
    bounds = np.concatenate([[0], np.cumsum(data["n_segments"])])
    out = {}
    for name in names:
        values = TARGETS[name].apply_transform(np.asarray(data["targets"][name], np.float64))
        out[name] = np.stack([values[a:b].mean(0) for a, b in itertools.pairwise(bounds)])
    return out


def evaluate_similarity(
    store,
    *,
    label: str | None = None,
    k: int = 10,
    layers: list[int] | None = None,
    metrics: tuple[str, ...] = METRICS,
    normalizations: tuple[str, ...] = NORMALIZATIONS,
    max_tracks: int = 4000,
    seed: int = 0,
) -> dict[str, Any]:
    """The full grid as a JSON-ready dict: ``{"dataset", "n_tracks", "k", "label", "results":
    [{"layer", "metric", "normalize", "mean_similarity", "std_similarity", "frac_above_0_9",
    "hub_skewness", "max_hub_occurrence", "max_hub_track", "precision_at_k", "map", "mrr",
    "fidelity": {target: ratio}, "aspect_fidelity": {aspect: ratio}}]}``."""
    from messai.errors import ConfigError
    from messai.features.targets import ASPECTS_OF_TARGETS
    from messai.search.cache import layer_vectors

    if k < 1 or max_tracks < 3:
        raise ConfigError(
            f"k must be at least 1 and max_tracks at least 3 (got k={k}, max_tracks={max_tracks})"
        )
    ids = store.track_ids()
    subsampled = len(ids) > max_tracks
    if subsampled:
        ids = sorted(np.random.default_rng(seed).choice(ids, max_tracks, replace=False).tolist())
    n = len(ids)
    if n < 3:
        raise ConfigError(
            f"dataset {store.dataset!r} has {n} tracks; the benchmark needs at least 3"
        )
    k = min(k, n - 1)
    labels = None
    if label:
        raw = [store.labels(t).get(label) for t in ids]
        if all(v is None for v in raw):
            raise ConfigError(f"--label {label}: no track of {store.dataset!r} has that label")
        labels = np.array(
            [v if v is not None else f"\0{t}" for v, t in zip(raw, ids)], dtype=object
        )
    values = track_targets(store, ids)
    results = []
    for layer in layers if layers is not None else range(store.n_layers):
        _, X = layer_vectors(store, layer, ids)
        for norm in normalizations:
            Xn = _normalise(X.astype(np.float64), norm)
            for metric in metrics:
                S = similarity_matrix(Xn, metric)
                off = S[~np.eye(n, dtype=bool)]
                order = _ranking(S)
                occ = np.bincount(order[:, :k].ravel(), minlength=n)
                row: dict[str, Any] = {
                    "layer": layer,
                    "metric": metric,
                    "normalize": norm,
                    "mean_similarity": float(off.mean()),
                    "std_similarity": float(off.std()),
                    "frac_above_0_9": float((off > 0.9).mean()) if metric == "cosine" else None,
                    "hub_skewness": _skew(occ),
                    "max_hub_occurrence": int(occ.max()),
                    "max_hub_track": ids[int(occ.argmax())],
                }
                if labels is not None:
                    row.update(retrieval_scores(order, labels, k))
                fid = aspect_fidelity(order, values, k)
                row["fidelity"] = fid
                by_aspect: dict[str, list[float]] = {}
                for name, r in fid.items():
                    by_aspect.setdefault(ASPECTS_OF_TARGETS.get(name, name), []).append(r)
                row["aspect_fidelity"] = {a: float(np.nanmean(v)) for a, v in by_aspect.items()}
                results.append(row)
    return {
        "benchmark": "similarity",
        "dataset": store.dataset,
        "model": store.model_id,
        "n_tracks": n,
        "subsampled": subsampled,
        "k": k,
        "label": label,
        "results": results,
    }


def plot_similarity(report: dict[str, Any], path) -> None:
    """Per layer: cosine spread, hubness and (with a label) precision@k, one line per
    metric × normalisation. Format from the file's extension (png, pdf, svg), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [
        ("mean_similarity", "mean pairwise similarity (cosine rows)"),
        ("hub_skewness", "k-occurrence skewness"),
    ]
    if report.get("label"):
        panels.append(("precision_at_k", f"precision@{report['k']} ({report['label']})"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 3.8), constrained_layout=True
    )
    rows = report["results"]
    combos = sorted({(r["metric"], r["normalize"]) for r in rows})
    for ax, (key, title) in zip(axes, panels):
        for metric, norm in combos:
            if key == "mean_similarity" and metric != "cosine":
                continue
            sel = [r for r in rows if r["metric"] == metric and r["normalize"] == norm]
            ax.plot(
                [r["layer"] for r in sel],
                [r[key] for r in sel],
                marker="o",
                ms=3,
                label=f"{metric}/{norm}",
            )
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(title)
    fig.legend(*axes[-1].get_legend_handles_labels(), loc="outside right center", fontsize=7)
    from messai.plots import save_figure

    save_figure(fig, path)
