"""Time ``mess aspects fit`` without ``--layers`` (the layer search) on a synthetic store of the
issue-21 shape: 13 tracks of MERT-v1-95M shape (13 layers x 768), ``--windows`` windows each,
with a label column and the spectral centroid as a proxy target.

    uv run python benchmarks/bench_aspect_fit.py                 # label and target aspects
    uv run python benchmarks/bench_aspect_fit.py --windows 40 --repeat 2

Runs the exact commands ``mess aspects fit -d bench --aspect work`` (a label: shrinkage LDA)
and ``mess aspects fit -d bench --aspect spectral_brightness`` (targets: ridge span; the store
has no probe, so the layer is searched) in subprocesses, and prints one JSON object with the
wall and CPU time of each (the best of ``--repeat``) and the chosen layer. The machine is shared:
compare figures from one run only (e.g. this script at two commits, run back to back).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_store(home: Path, *, n_tracks: int, windows: int, seed: int = 0) -> None:
    from messai.bench.synthetic import synthetic_entry, synthetic_identity, synthetic_settings
    from messai.features.records import track_arrays
    from messai.features.store import FeatureStore

    rng = np.random.default_rng(seed)
    n_layers, dim = 13, 768
    store = FeatureStore.create(
        home / "stores" / "bench" / "synthetic--aspectfit",
        dataset="bench",
        model=synthetic_identity("aspectfit", n_layers=n_layers, dim=dim) | {"config_hash": "af"},
        settings=synthetic_settings("float16"),
    )
    centers = rng.normal(size=(4, n_layers, dim))
    with store.writer():
        for i in range(n_tracks):
            c = i % 4
            seg = 3.0 + centers[c] * np.linspace(0.1, 1.0, n_layers)[:, None]
            seg = (seg + rng.normal(size=(windows, n_layers, dim))).astype(np.float32)
            targets = {"spectral_centroid": rng.uniform(500, 3000, windows).astype(np.float32)}
            arrays = track_arrays(
                seg, np.arange(windows) * 120000, np.full(windows, 120000), targets
            )
            labels = {"work": f"work{c}"}
            store.put(synthetic_entry(f"t{i:02d}", windows, ("spectral_centroid",), labels), arrays)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=13)
    ap.add_argument("--windows", type=int, default=40, help="windows per track")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        make_store(home, n_tracks=args.tracks, windows=args.windows)
        env = {**os.environ, "MESS_HOME": str(home), "MESS_CONFIG": str(Path(tmp) / "c.toml")}
        Path(env["MESS_CONFIG"]).write_text("")
        out = {"tracks": args.tracks, "windows_per_track": args.windows, "runs": {}}
        for aspect in ("work", "spectral_brightness"):
            cmd = ["mess", "aspects", "fit", "-d", "bench", "--aspect", aspect]
            best, best_cpu, layers = None, None, None
            for _ in range(args.repeat):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                r = subprocess.run(
                    [sys.executable, "-m", "messai", *cmd[1:], "--format", "json"],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                wall = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                if r.returncode != 0:
                    raise SystemExit(r.stderr)
                layers = json.loads(r.stdout)["layers"]
                best = wall if best is None else min(best, wall)
                best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
            out["runs"][" ".join(cmd)] = {
                "wall_s": round(best, 2),
                "cpu_s": round(best_cpu, 2),  # the command's CPU time: steadier on a busy machine
                "layers": layers,
            }
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
