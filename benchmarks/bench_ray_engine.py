"""Extraction throughput: ``--engine ray`` on a local Ray cluster against the local engine, in
the same run, on the same generated files and the same tiny random checkpoint. Prints JSON.

    uv run --extra ray python benchmarks/bench_ray_engine.py [--tracks 24] [--seconds 12]

Reported: tracks/s and windows/s of each engine (fresh stores, model loading included), the
ratio ray/local, the one-off ``ray.init`` time (not in the ray figure), and the Ray Data
operators that ran (to check that decoding is not fused into the model actors).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault(
    "RAY_AUTH_MODE", "disabled"
)  # a throwaway local cluster: no ~/.ray/auth_token


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracks", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = ap.parse_args()

    import numpy as np
    import soundfile as sf

    work = Path(tempfile.mkdtemp(prefix="mess-bench-ray-"))
    os.environ["MESS_HOME"] = str(work / "home")
    from messai.config import load_settings
    from messai.features.engines.ray_engine import RayEngine, RayOptions, extract_with_ray
    from messai.features.pipeline import extract_dataset
    from messai.models.mert import write_random_checkpoint

    ckpt = write_random_checkpoint(work / "ckpt", preset="tiny")
    audio = work / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.tracks):
        x = 0.1 * rng.standard_normal(int(args.seconds * 44100)).astype(np.float32)
        sf.write(str(audio / f"t{i:03d}.wav"), x, 44100)
    settings = load_settings(model=str(ckpt))

    t = time.perf_counter()
    local = extract_dataset(audio, dataset="local", settings=settings)
    local_s = time.perf_counter() - t

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="ray"))  # fmt: skip
    init_s = time.perf_counter() - t
    plans: list[str] = []

    class Recording(RayEngine):
        def __call__(self, *a, **kw):
            yield from super().__call__(*a, **kw)
            plans.append(self.last_plan or "")

    import messai.features.engines.ray_engine as re_mod

    original, re_mod.RayEngine = re_mod.RayEngine, Recording
    try:
        t = time.perf_counter()
        viaray = extract_with_ray(audio, dataset="ray", settings=settings, options=RayOptions())
        ray_s = time.perf_counter() - t
    finally:
        re_mod.RayEngine = original
    ray.shutdown()
    windows = args.tracks * int(np.ceil(args.seconds / settings.segment_seconds))
    operators = sorted({line.split(":")[0].strip() for line in plans[0].splitlines()
                        if line.startswith("Operator")})  # fmt: skip
    out = {
        "tracks": args.tracks,
        "seconds_per_track": args.seconds,
        "checkpoint": "tiny random (2 layers, dim 32)",
        "cpus": os.cpu_count(),
        "local": {"seconds": round(local_s, 2), "tracks_per_s": round(local.n_extracted / local_s, 2),
                  "windows_per_s": round(windows / local_s, 1)},
        "ray": {"seconds": round(ray_s, 2), "tracks_per_s": round(viaray.n_extracted / ray_s, 2),
                "windows_per_s": round(windows / ray_s, 1), "ray_init_seconds": round(init_s, 2)},
        "ray_over_local": round(local_s / ray_s, 3),
        "ray_data_operators": operators,
    }  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
