"""An f0 target for the trained-vs-untrained experiment, outside the target registry.

CREPE is an f0 tracker; none of mess's twelve proxy targets is an f0. This script computes one
per stored window, librosa's pYIN median log2 f0 over the window's voiced frames (65–2093 Hz,
C2–C7) and the voiced fraction, and probes two existing stores (the model's and its twin's,
extracted from the same audio) on it with the settings of ``mess probe``. It needs librosa
(a dev dependency) and prints one JSON object.

    uv run mess extract data/demo -d demo-crepe --model crepe:tiny
    uv run mess model random /tmp/crepe-twin --like crepe:tiny
    uv run mess extract data/demo -d demo-crepe-twin --model /tmp/crepe-twin
    uv run python benchmarks/crepe_f0_probe.py demo-crepe demo-crepe-twin
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def window_f0(store, track_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per stored window ``[n_windows]``: median log2 f0 of the voiced frames (NaN if none),
    and the fraction of voiced frames. Audio is decoded and windowed as the store was."""
    import librosa

    from messai.features.decode import WindowSpec, stream_mono

    s = store.settings
    rate = int(s["sample_rate"])
    spec = WindowSpec(s["segment_seconds"], s["hop_seconds"], s["min_seconds"])
    seg = spec.samples(rate)[0]  # windows start at the stored starts
    f0s, voiced = [], []
    for tid in track_ids:
        entry = store.entry(tid)
        audio = np.concatenate(list(stream_mono(store.source_root / entry.source, rate)))
        starts = store.load(tid)["starts"]
        for start in starts:
            w = audio[int(start) : int(start) + seg]
            f0, flag, _ = librosa.pyin(
                w, fmin=65.0, fmax=2093.0, sr=rate, frame_length=2048, hop_length=512
            )
            ok = flag & np.isfinite(f0)
            f0s.append(float(np.median(np.log2(f0[ok]))) if ok.any() else math.nan)
            voiced.append(float(ok.mean()))
        assert len(starts) == entry.n_segments
    return np.asarray(f0s), np.asarray(voiced)


def main() -> None:
    from messai.analysis.discovery import check_control, probe_inputs, resolve_grouping
    from messai.analysis.probe import probe_layers
    from messai.features.store import FeatureStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("twin")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    store, twin = FeatureStore.open(args.dataset), FeatureStore.open(args.twin)
    check_control(store, twin)
    group_by = resolve_grouping(store)
    inputs = probe_inputs(store, group_by=group_by, targets=["rms_db_mean"])
    f0, voiced = window_f0(store, inputs.track_ids)
    control = np.concatenate([twin.load(t)["segments"] for t in inputs.track_ids])
    res = probe_layers(
        inputs.features,
        {"f0_log2_median": f0, "voiced_fraction": voiced},
        inputs.groups,
        folds=args.folds,
        control_features=control,
        group_by=group_by,
    )
    out = {"dataset": args.dataset, "twin": args.twin, "group_by": group_by, "targets": {}}
    for name, t in res.targets.items():
        b = t.best_layer
        out["targets"][name] = {
            "n_windows": t.n_samples,
            "layer": b,
            "r2": round(t.r2[b], 3),
            "r2_ci": [round(t.r2_ci_low[b], 3), round(t.r2_ci_high[b], 3)],
            "twin_r2": round(t.random_model_r2[b], 3),
            "twin_ci": [
                round(t.random_model_r2_ci_low[b], 3),
                round(t.random_model_r2_ci_high[b], 3),
            ],
            "unstable": t.is_unstable(b),
            "validated": t.is_validated(b),
            "why_not": t.validation_failures(b),
            "r2_by_layer": [round(v, 3) for v in t.r2],
            "twin_r2_by_layer": [round(v, 3) for v in t.random_model_r2],
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
