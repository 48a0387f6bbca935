"""``mess benchmark aspects``: does aspect-specific similarity really differ by aspect?

Evaluated on a store whose labels cross (the bundled demo: 6 works × 4 instruments, the same
notes on every instrument). One layer for every aspect (``--layer``, default the middle one), so
the whole-layer search is the same for all aspects and any difference comes from the spaces.

**Splits.** For a label aspect A, the tracks are split by another label G that crosses A (every
G value holds ≥ 2 values of A and every A value occurs under ≥ 2 G values; the one with the most
values): the G values are shuffled (seeded) into two halves; a space is fitted on one half's
tracks and evaluated on the other's, then the halves swap, and the two figures are averaged.
So instrument is fitted on 3 works and scored on the 3 others; work on 2 instruments and scored
on the 2 others. Built-in (target) aspects are split by the crossing label with the most values
(work on the demo). No evaluated track's labels or targets are used to fit what scores it.

**Representations**, each scored on the held-out tracks:

- ``layer``: the whole layer, centred cosine (what ``--space layer`` searches);
- ``space``: the aspect space fitted on the other half (shrinkage LDA for labels, ridge span for
  targets);
- ``descriptors``: no MERT: for a label aspect the same LDA fitted on the proxy descriptors (all
  stored targets per window); for a target aspect its own descriptors, z-scored (the ceiling of
  proxy fidelity, 1 by construction);
- ``random_layer``, ``random_space``: the same two on the random-weight twin (``--control``).

**Metrics** (:mod:`messai.bench.aspect_metrics`): per label, P@k, MAP and its chance P@k, and
MERIT-style triplet accuracy; per built-in aspect, proxy fidelity (Spearman ρ between distance
and |Δ descriptors|). ``specificity``: mean Jaccard overlap of top-k lists between every two
aspects, with spaces fitted on all tracks (labels are not scored there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from messai.bench.aspect_metrics import (
    cosine_distances,
    euclidean_distances,
    fidelity,
    jaccard_at_k,
    retrieval,
    triplet_accuracy,
)
from messai.errors import ConfigError

REPRESENTATIONS = ("layer", "space", "descriptors", "random_layer", "random_space")


def label_columns(store, ids: list[str]) -> dict[str, np.ndarray]:
    """Labels on every track with 2..n-1 values, at least one of them on ≥ 2 tracks."""
    rows = [store.labels(t) for t in ids]
    out = {}
    for col in dict.fromkeys(c for r in rows for c in r):
        values = [r.get(col) for r in rows]
        if any(v is None for v in values):
            continue
        _, counts = np.unique(values, return_counts=True)
        if 2 <= len(counts) < len(ids) and counts.max() >= 2:
            out[col] = np.asarray(values, dtype=str)
    return out


def crossing_label(
    labels: dict[str, np.ndarray], aspect: str | None, prefer: list[str] = ()
) -> str | None:
    """The label to split by for ``aspect`` (None: any crossing label; most values wins, ties
    go to ``prefer``'s order, then the labels' order)."""
    best = None
    order = [c for c in prefer if c in labels] + [c for c in labels if c not in prefer]
    for g in order:
        gv = labels[g]
        if g == aspect:
            continue
        if aspect is not None:
            av = labels[aspect]
            if any(len(set(av[gv == v])) < 2 for v in set(gv)):
                continue
            if any(len(set(gv[av == v])) < 2 for v in set(av)):
                continue
        if best is None or len(set(gv)) > len(set(labels[best])):
            best = g
    return best


def _halves(ids, labels, split_by, seed) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    key = labels[split_by] if split_by else np.asarray(ids, dtype=str)
    values = rng.permutation(sorted(set(key)))
    first = np.isin(key, values[: (len(values) + 1) // 2])
    return [
        (np.flatnonzero(first), np.flatnonzero(~first)),
        (np.flatnonzero(~first), np.flatnonzero(first)),
    ]


class _Data:
    """Window- and track-level inputs of one layer (and its random twin)."""

    def __init__(self, store, ids, layer, control):
        from messai.features.targets import ASPECTS_OF_TARGETS, TARGETS

        stored = [set(store.entry(t).targets) for t in ids]
        self.targets = [t for t in TARGETS if t in set.intersection(*stored)]
        w = store.read_windows(targets=self.targets, track_ids=ids)
        self.track_of = np.repeat(np.arange(len(ids)), w["n_segments"])
        self.X_win = np.asarray(w["segments"][:, layer], dtype=np.float64)
        self.X = store.layer(layer, track_ids=ids)[1].astype(np.float64)
        cols = {
            t: TARGETS[t]
            .apply_transform(np.asarray(w["targets"][t], dtype=np.float64))
            .reshape(len(self.track_of), -1)
            for t in self.targets
        }
        self.target_win = cols
        self.desc_win = np.concatenate(list(cols.values()), axis=1) if cols else None
        self.track_targets = {t: self._track_mean(v) for t, v in cols.items()}
        self.aspects = {}
        for t in self.targets:
            self.aspects.setdefault(ASPECTS_OF_TARGETS[t], []).append(t)
        self.C_win = self.C = None
        if control is not None:
            from messai.analysis.discovery import check_control

            check_control(store, control)
            cw = control.read_windows(track_ids=ids)
            if not np.array_equal(cw["n_segments"], w["n_segments"]):
                raise ConfigError(
                    f"control store {control.dataset!r} has other windows for these tracks (same window settings needed)"
                )
            check_control(store, control, w["segments"], cw["segments"])
            self.C_win = np.asarray(cw["segments"][:, layer], dtype=np.float64)
            self.C = control.layer(layer, track_ids=ids)[1].astype(np.float64)

    def _track_mean(self, v):
        n = self.track_of.max() + 1
        sums = np.zeros((n, v.shape[1]))
        np.add.at(sums, self.track_of, v)
        return sums / np.bincount(self.track_of, minlength=n)[:, None]

    def aspect_values(self, aspect, rows):
        v = np.concatenate([self.track_targets[t] for t in self.aspects[aspect]], axis=1)[rows]
        sd = v.std(0)
        return (v - v.mean(0)) / np.where(sd > 0, sd, 1.0)


def _fit(kind, Xw, fit_rows, data, ys):
    from messai.analysis.aspect_space import fit_ridge_span, fit_shrinkage_lda

    win = np.isin(data.track_of, fit_rows)
    groups = data.track_of[win]
    if kind == "label":
        mean, comp, _ = fit_shrinkage_lda(Xw[win], ys[data.track_of[win]], groups, evaluate=False)
    else:
        mean, comp, _ = fit_ridge_span(Xw[win], ys[win], groups, folds=3)
    return lambda X: (X - mean) @ comp


def _distances(rep, kind, data, fit_rows, eval_rows, ys) -> np.ndarray | None:
    if rep in ("layer", "random_layer"):
        X = data.X if rep == "layer" else data.C
        return None if X is None else cosine_distances(X[eval_rows], center=X.mean(0))
    if rep == "descriptors":
        if kind == "label":
            project = _fit("label", data.desc_win, fit_rows, data, ys)
            return euclidean_distances(project(data._track_mean(data.desc_win)[eval_rows]))
        return euclidean_distances(ys_track(data, ys)[eval_rows])
    Xw, X = (data.X_win, data.X) if rep == "space" else (data.C_win, data.C)
    if X is None:
        return None
    return euclidean_distances(_fit(kind, Xw, fit_rows, data, ys)(X[eval_rows]))


def ys_track(data, ys):
    v = data._track_mean(ys)
    sd = v.std(0)
    return (v - v.mean(0)) / np.where(sd > 0, sd, 1.0)


def _scores(D, labels, data, eval_rows, k) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": {}, "fidelity": {}}
    for col, v in labels.items():
        r = retrieval(D, v[eval_rows], k)
        out["labels"][col] = {**r, "triplet_accuracy": triplet_accuracy(D, v[eval_rows])}
    for aspect in data.aspects:
        out["fidelity"][aspect] = fidelity(D, data.aspect_values(aspect, eval_rows))
    return out


def _mean_scores(folds: list[dict[str, Any]]) -> dict[str, Any]:
    def avg(values):
        vals = [v for v in values if v is not None and np.isfinite(v)]
        return round(float(np.mean(vals)), 4) if vals else None

    first = folds[0]
    return {
        "labels": {
            col: {m: avg([f["labels"][col][m] for f in folds]) for m in first["labels"][col]}
            for col in first["labels"]
        },
        "fidelity": {a: avg([f["fidelity"][a] for f in folds]) for a in first["fidelity"]},
    }


def evaluate_aspects(
    store,
    *,
    control=None,
    layer: int | None = None,
    labels: list[str] | None = None,
    aspects: list[str] | None = None,
    k: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (documented in ``docs/aspect-spaces.md``)."""
    ids = store.track_ids()
    layer = store.n_layers // 2 if layer is None else layer
    if not 0 <= layer < store.n_layers:
        raise ConfigError(f"layer {layer} out of range: the store has 0..{store.n_layers - 1}")
    all_labels = label_columns(store, ids)
    chosen = list(all_labels) if labels is None else labels
    unknown = [c for c in chosen if c not in all_labels]
    if unknown:
        raise ConfigError(
            f"label {unknown[0]!r} is not usable here (on every track, 2+ values, one shared); usable: {', '.join(all_labels) or 'none'}"
        )
    data = _Data(store, ids, layer, control)
    targets_aspects = list(data.aspects) if aspects is None else aspects
    missing = [a for a in targets_aspects if a not in data.aspects]
    if missing:
        raise ConfigError(
            f"aspect {missing[0]!r} has no stored targets; have: {', '.join(data.aspects)}"
        )
    reps = [r for r in REPRESENTATIONS if control is not None or not r.startswith("random")]
    jobs = [("label", a) for a in chosen] + [("targets", a) for a in targets_aspects]
    results = []
    for kind, name in jobs:
        split_by = crossing_label(all_labels, name if kind == "label" else None, chosen)
        ys = (
            all_labels[name]
            if kind == "label"
            else np.concatenate([data.target_win[t] for t in data.aspects[name]], axis=1)
        )
        per_rep = {}
        for rep in reps:
            folds = []
            for fit_rows, eval_rows in _halves(ids, all_labels, split_by, seed):
                D = _distances(rep, kind, data, fit_rows, eval_rows, ys)
                folds.append(_scores(D, all_labels, data, eval_rows, k))
            per_rep[rep] = _summarise(_mean_scores(folds), kind, name)
        results.append(
            {
                "aspect": name,
                "kind": kind,
                "split_by": split_by or "track",
                "representations": per_rep,
            }
        )
    return {
        "benchmark": "aspects",
        "dataset": store.dataset,
        "model": store.model_id,
        "control": control.dataset if control is not None else None,
        "layer": layer,
        "k": k,
        "n_tracks": len(ids),
        "seed": seed,
        "labels": chosen,
        "aspects": results,
        "specificity": _specificity(jobs, data, all_labels, k),
        "notes": _notes(results),
    }


def _summarise(scores, kind, name) -> dict[str, Any]:
    labels = scores["labels"]
    own = labels.get(name) if kind == "label" else None
    others = {c: v for c, v in labels.items() if c != name}

    def mean(key):
        vals = [v[key] for v in others.values() if v[key] is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    leak = [
        v["precision_at_k"] - v["chance_at_k"]
        for v in others.values()
        if v["precision_at_k"] is not None
    ]
    return {
        "own_precision_at_k": own["precision_at_k"] if own else None,
        "own_map": own["map"] if own else None,
        "own_chance_at_k": own["chance_at_k"] if own else None,
        "own_triplet_accuracy": own["triplet_accuracy"] if own else None,
        "off_triplet_accuracy": mean("triplet_accuracy"),
        "off_leakage": round(float(np.mean(leak)), 4) if leak else None,
        "own_fidelity": scores["fidelity"].get(name) if kind == "targets" else None,
        **scores,
    }


def _specificity(jobs, data, labels, k) -> list[dict[str, Any]]:
    everyone = np.arange(len(data.X))
    D_layer = cosine_distances(data.X, center=data.X.mean(0))
    spaces = {}
    for kind, name in jobs:
        ys = (
            labels[name]
            if kind == "label"
            else np.concatenate([data.target_win[t] for t in data.aspects[name]], axis=1)
        )
        spaces[name] = euclidean_distances(_fit(kind, data.X_win, everyone, data, ys)(data.X))
    names = list(spaces)
    return [
        {
            "a": a,
            "b": b,
            "space_jaccard": round(jaccard_at_k(spaces[a], spaces[b], k), 4),
            "layer_jaccard": round(jaccard_at_k(D_layer, D_layer, k), 4),
        }
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]


def _notes(results) -> list[str]:
    notes = []
    for r in results:
        reps = r["representations"]
        key = "own_triplet_accuracy" if r["kind"] == "label" else "own_fidelity"
        space, layer = reps["space"][key], reps["layer"][key]
        if r["kind"] == "label":
            desc = reps["descriptors"][key]
            if desc is not None and space is not None and desc > space:
                notes.append(
                    f"{r['aspect']}: the proxy descriptors alone (no MERT) beat the MERT aspect space ({desc:.2f} vs {space:.2f} triplet accuracy)"
                )
        if space is not None and layer is not None and layer > space:
            notes.append(
                f"{r['aspect']}: the whole layer beats the aspect space ({layer:.2f} vs {space:.2f})"
            )
        if "random_space" in reps and reps["random_space"][key] is not None and space is not None:
            rnd = reps["random_space"][key]
            if rnd >= space:
                notes.append(
                    f"{r['aspect']}: the random-weight twin does as well as the model ({rnd:.2f} vs {space:.2f}): no evidence the training matters here"
                )
    return notes


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per aspect × representation: the headline figures of :func:`evaluate_aspects`."""

    def f(v):
        return None if v is None else round(float(v), 3)

    rows = []
    for a in report["aspects"]:
        for rep, v in a["representations"].items():
            rows.append(
                {
                    "aspect": a["aspect"],
                    "split_by": a["split_by"],
                    "representation": rep,
                    "P@k": f(v["own_precision_at_k"]),
                    "chance": f(v["own_chance_at_k"]),
                    "MAP": f(v["own_map"]),
                    "triplet_own": f(v["own_triplet_accuracy"]),
                    "triplet_off": f(v["off_triplet_accuracy"]),
                    "leak": f(v["off_leakage"]),
                    "fidelity_own": f(v["own_fidelity"]),
                }
            )
    return rows


def plot_aspects(report: dict[str, Any], path) -> None:
    """Per aspect, the own-aspect figure (triplet accuracy for labels, proxy fidelity for
    targets) of every representation, as grouped bars. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from messai.plots import save_figure

    aspects = report["aspects"]
    reps = list(aspects[0]["representations"]) if aspects else []
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(aspects)), 4), constrained_layout=True)
    width = 0.8 / max(len(reps), 1)
    for i, rep in enumerate(reps):
        values = []
        for a in aspects:
            v = a["representations"][rep]
            x = v["own_triplet_accuracy"] if a["kind"] == "label" else v["own_fidelity"]
            values.append(np.nan if x is None else x)
        ax.bar(np.arange(len(aspects)) + i * width, values, width, label=rep)
    ax.set_xticks(np.arange(len(aspects)) + 0.4 - width / 2)
    ax.set_xticklabels([a["aspect"] for a in aspects], rotation=30, ha="right", fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_ylabel("triplet accuracy (labels) / Spearman ρ (targets)")
    ax.set_title(f"{report['dataset']} · layer {report['layer']}: own aspect, held-out tracks")
    ax.legend(fontsize=7)
    save_figure(fig, path)
