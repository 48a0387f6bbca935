"""Layer discovery on a feature store: which layer encodes which proxy target.

``LayerDiscovery(dataset=...).run_full_discovery()`` (the prototype's documented API) gathers
every window's features and proxy targets from the store, groups windows by track (or by a
label such as ``work``), runs ``probe_layers`` with its controls and saves the results beside
the store (``probe.json``), where ``mess aspects`` and ``mess recommend`` find them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.analysis.results import DEFAULT_MIN_R2
from messai.errors import ConfigError, StoreError

log = logging.getLogger(__name__)


@dataclass
class ProbeInputs:
    """Window-level inputs of the probe, rows aligned across arrays."""

    features: np.ndarray  # [n_windows, n_layers, dim] (store dtype)
    targets: dict[str, np.ndarray]  # name -> [n_windows] or [n_windows, k], transformed
    groups: np.ndarray  # [n_windows] group label per window
    track_ids: list[str]  # per track, in row order
    n_segments: list[int]  # per track


def probe_inputs(
    store,
    *,
    targets: list[str] | None = None,
    group_by: str = "track",
    track_ids: list[str] | None = None,
) -> ProbeInputs:
    """Stack the windows of every track (or ``track_ids``) with their (transformed) targets.

    Parameters
    ----------
    store
        A `messai.features.store.FeatureStore` with proxy targets computed.
    targets
        Target names (default: every registered target the store has).
    group_by
        ``"track"``, or a label (e.g. ``"work"``) every track must have.
    track_ids
        Tracks to use, in this order (default: all of the store's).

    Returns
    -------
    ProbeInputs
        ``features [n_windows, n_layers, dim]``, ``targets`` name → ``[n_windows]`` or
        ``[n_windows, k]`` after each target's own transform (``log1p`` for the Hz targets),
        ``groups [n_windows]``.

    Raises
    ------
    StoreError
        No tracks, or targets not computed.
    ConfigError
        Unknown targets, or tracks without the ``group_by`` label.
    """
    from messai.features.targets import TARGETS

    ids = track_ids if track_ids is not None else store.track_ids()
    if not ids:
        raise StoreError(f"dataset {store.dataset!r} has no tracks to probe")
    if group_by != "track":
        missing = [t for t in ids if not store.labels(t).get(group_by)]
        if missing:
            raise ConfigError(
                f"--group-by {group_by}: {len(missing)} of {len(ids)} tracks have no {group_by!r} label "
                f"(e.g. {missing[0]!r}); use a dataset kind or metadata.csv that provides it, or --group-by track"
            )
    entries = [store.entry(t) for t in ids]
    n_seg = [e.n_segments for e in entries]
    stored = [set(e.targets) for e in entries]
    available = set.intersection(*stored) if stored else set()
    collected = set.union(*stored) if stored else set()
    wanted = list(targets) if targets else [t for t in TARGETS if t in collected]
    if not wanted:
        raise StoreError(
            f"store {store.dataset!r} has no proxy targets; run 'mess targets --dataset {store.dataset}'"
        )
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown:
        raise ConfigError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    absent = [t for t in wanted if t not in available]
    if absent:
        raise StoreError(
            f"store {store.dataset!r} has no stored values for {', '.join(absent)}; run 'mess targets --dataset {store.dataset}'"
        )
    data = store.read_windows(targets=wanted, track_ids=list(ids))
    labels = [t if group_by == "track" else e.labels[group_by] for t, e in zip(ids, entries)]
    groups = np.repeat(np.asarray(labels, dtype=object), n_seg)
    values = {
        t: TARGETS[t].apply_transform(np.asarray(data["targets"][t], dtype=np.float64))
        for t in wanted
    }
    return ProbeInputs(data["segments"], values, groups.astype(str), list(ids), n_seg)


def resolve_grouping(store, group_by: str = "auto") -> str:
    """``"auto"`` → ``"work"`` when every track of ``store`` has a ``work`` label (whole works
    stay on one side of a split), else ``"track"``; any other value is returned as given."""
    if group_by != "auto":
        return group_by
    ids = store.track_ids()
    return "work" if ids and all(store.labels(t).get("work") for t in ids) else "track"


def same_weights(model: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two stores' model identities name the same weights: equal weight hashes where
    both have one, else the same id, revision and config."""
    a, b = model.get("weights_sha256"), other.get("weights_sha256")
    if a and b:
        return a == b
    keys = ("id", "revision", "config_hash")
    return all(model.get(k) == other.get(k) for k in keys)


def check_control(store, control, features=None, control_features=None) -> None:
    """Refuse a random-weight control that is the model itself (issue 21.1): a control store
    extracted with the same weights, or whose stored windows equal the model's.

    Raises
    ------
    ConfigError
        The control is no control.
    """
    fix = "extract the same audio with its untrained twin ('mess model random DIR --like MODEL')"
    if same_weights(store.model, control.model):
        raise ConfigError(
            f"control store {control.dataset!r} was extracted with the same model weights as "
            f"{store.dataset!r} ({control.model_id}): it is no random-weight control; {fix}"
        )
    same = (
        features is not None
        and control_features is not None
        and np.shape(features) == np.shape(control_features)
        and np.array_equal(
            np.asarray(features, dtype=np.float32), np.asarray(control_features, dtype=np.float32)
        )
    )
    if same:
        raise ConfigError(
            f"control store {control.dataset!r} holds the same features as {store.dataset!r} "
            f"window for window: it is no random-weight control; {fix}"
        )


class LayerDiscovery:
    """Probe every layer of a store against its proxy targets (with controls) and save the result.

    Parameters
    ----------
    dataset, model
        The feature store to probe (`messai.features.store.FeatureStore.open`).
    home
        MESS home directory (default: the configured one).
    stores
        Where the stores live (default: the ``stores`` setting, else ``home/stores``).
    targets
        Target names (default: all the store has).
    folds, seed
        Outer group folds and seed of `probe_layers`.
    group_by
        ``"auto"`` (default): ``"work"`` when every track has a work label, else ``"track"``;
        or ``"track"``, or a label such as ``"work"`` to keep whole works on one side of a
        split. The grouping used is ``group_by_`` and is recorded in the results.
    control_store
        Dataset name of the same audio extracted with a random-weights model (random-model
        control), or None.
    min_r2
        R² threshold saved with the results, the default of `aspect_map` (the setting
        ``r2_threshold``).
    n_bootstrap
        Group bootstrap resamples.

    Examples
    --------
    >>> LayerDiscovery(dataset="smd").run_full_discovery().best_layers()  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: str,
        model: str | None = None,
        *,
        home: str | Path | None = None,
        stores: str | None = None,
        targets: list[str] | None = None,
        folds: int = 5,
        seed: int = 0,
        group_by: str = "auto",
        control_store: str | None = None,
        min_r2: float = DEFAULT_MIN_R2,
        n_bootstrap: int = 1000,
    ):
        from messai.features.store import FeatureStore

        self.store = FeatureStore.open(dataset, model, home=home, stores=stores)
        self.control = (
            FeatureStore.open(control_store, home=home, stores=stores) if control_store else None
        )
        self.targets, self.folds, self.seed = targets, folds, seed
        self.group_by = group_by
        self.group_by_ = resolve_grouping(self.store, group_by)
        self.min_r2, self.n_bootstrap = min_r2, n_bootstrap
        self.results_ = None

    def _control_features(self, inputs: ProbeInputs) -> np.ndarray | None:
        if self.control is None:
            return None
        c = self.control
        check_control(self.store, c)
        missing = [t for t in inputs.track_ids if t not in c]
        if missing:
            raise StoreError(
                f"control store {c.dataset!r} lacks {len(missing)} tracks (e.g. {missing[0]!r}); extract the same audio with the random model"
            )
        if c.n_layers != self.store.n_layers:
            raise StoreError(
                f"control store {c.dataset!r} has {c.n_layers} layers, {self.store.dataset!r} has {self.store.n_layers}"
            )
        out = np.empty((len(inputs.features), c.n_layers, c.dim), dtype=np.float32)
        row = 0
        for tid, n in zip(inputs.track_ids, inputs.n_segments):
            seg = c.load(tid)["segments"]
            if len(seg) != n:
                raise StoreError(
                    f"control store {c.dataset!r}: track {tid!r} has {len(seg)} windows, expected {n} (same window settings needed)"
                )
            out[row : row + n] = seg
            row += n
        check_control(self.store, c, inputs.features, out)
        return out

    def run_full_discovery(self, *, save: bool = True):
        """Run `probe_layers` on the store's windows.

        Parameters
        ----------
        save
            Also write the results (with metadata) to the store's ``probe.json``.

        Returns
        -------
        ProbeResults
            Also kept as ``results_``.
        """
        from messai.analysis.probe import probe_layers

        inputs = probe_inputs(self.store, targets=self.targets, group_by=self.group_by_)
        results = probe_layers(
            inputs.features,
            inputs.targets,
            inputs.groups,
            folds=self.folds,
            seed=self.seed,
            control_features=self._control_features(inputs),
            n_bootstrap=self.n_bootstrap,
            group_by=self.group_by_,
        )
        self.results_ = results
        if save:
            self.save(results)
        return results

    def save(self, results) -> str:
        """Write ``results`` (`ProbeResults`) and the run's metadata to the store's
        ``probe.json`` (atomically); return its location."""
        from messai.features.store import now_iso

        meta: dict[str, Any] = {
            "dataset": self.store.dataset,
            "model": self.store.model_id,
            "store_fingerprint": self.store.fingerprint(probe_inputs=True),
            "group_by": self.group_by_,
            "control_store": self.control.dataset if self.control else None,
            "min_r2": self.min_r2,
            "created": now_iso(),
        }
        text = json.dumps(
            {"meta": meta, "results": results.to_dict()}, indent=1, ensure_ascii=False
        )
        return self.store.write_side_file("probe.json", (text + "\n").encode("utf-8"))
