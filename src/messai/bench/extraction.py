"""Extraction speed: the whole pipeline (decode + resample + window + targets + forward + store)
against the bare model forward on the same windows, in the same process and run."""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _make_audio(
    folder: Path, *, n_files: int, seconds: float, sample_rate: int = 44100
) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_files):
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        x = 0.2 * np.sin(2 * np.pi * (220 + 40 * i) * t)[:, None] + 0.02 * rng.standard_normal(
            (len(t), 2)
        )
        p = folder / f"track{i:02d}.flac"
        sf.write(str(p), x.astype(np.float32), sample_rate)
        paths.append(p)
    return paths


def bench_extraction(
    *,
    model: str | None = None,
    device: str = "cpu",
    precision: str = "float32",
    batch_size: int | None = None,
    n_files: int = 4,
    seconds_per_file: float = 10.0,
    repeats: int = 2,
) -> dict[str, Any]:
    """Times, in one run, the pipeline and the bare forward over the same windows.

    ``model`` defaults to a random checkpoint of the base (MERT-v1-95M) shape: weights do not
    change the cost. Each variant runs once untimed (warm-up), then ``repeats`` times,
    alternating; the best time counts.
    Returns a JSON-ready dict with both throughputs (× real time) and their ratio.
    """
    import torch

    from messai.datasets.base import TrackInfo
    from messai.features.decode import decode, iter_windows, normalize_window
    from messai.features.extractor import FeatureExtractor, result_arrays
    from messai.features.records import TrackEntry
    from messai.features.store import FeatureStore
    from messai.models.mert import pooled_hidden_states, write_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="mess-bench-") as tmp:
        tmp = Path(tmp)
        label = model
        if model is None:
            model = str(write_random_checkpoint(tmp / "ckpt", preset="base"))
            label = "random base (MERT-v1-95M shape)"
        (tmp / "audio").mkdir()
        paths = _make_audio(tmp / "audio", n_files=n_files, seconds=seconds_per_file)
        fx = FeatureExtractor(model, device=device, precision=precision, batch_size=batch_size)
        loaded = fx.loaded
        rate, spec = fx.sample_rate, fx.window
        windows = [
            normalize_window(w)
            for p in paths
            for _, w in iter_windows(iter([decode(p, rate)]), spec, rate)
        ]
        audio_seconds = sum(len(w) for w in windows) / rate
        seg = spec.samples(rate)[0]
        pooled_hidden_states(loaded, torch.from_numpy(windows[0][None]))  # warm-up
        tracks = [TrackInfo(p.stem, p) for p in paths]

        def bare() -> float:
            t0 = time.perf_counter()
            full = [w for w in windows if len(w) == seg]
            for i in range(0, len(full), fx.batch_size):
                pooled_hidden_states(
                    loaded, torch.from_numpy(np.stack(full[i : i + fx.batch_size]))
                )
            for w in windows:
                if len(w) != seg:
                    pooled_hidden_states(loaded, torch.from_numpy(w[None]))
            return time.perf_counter() - t0

        def pipeline(k: int) -> float:
            store = FeatureStore.create(
                tmp / f"store{k}", dataset="bench", model=fx.checkpoint.identity(), settings={}
            )
            t0 = time.perf_counter()
            for r in fx.run(tracks):
                if not r.ok:
                    raise RuntimeError(r.error)
                entry = TrackEntry(
                    track_id=r.track.track_id,
                    source=r.track.path.name,
                    size=r.source[0],
                    mtime_ns=r.source[1],
                    content_hash=r.source[2],
                    duration_seconds=r.duration_seconds,
                    n_segments=len(r.segments),
                )
                store.put(entry, result_arrays(r))
            return time.perf_counter() - t0

        bare()  # warm both paths up (allocator, thread pools, first store write) before timing
        pipeline(-1)
        bare_times, pipe_times = [], []
        for k in range(repeats):
            bare_times.append(bare())
            pipe_times.append(pipeline(k))
    tb, tp = min(bare_times), min(pipe_times)
    return {
        "benchmark": "extraction",
        "model": str(label),
        "device": str(loaded.device),
        "precision": precision,
        "batch_size": fx.batch_size,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "n_windows": len(windows),
        "audio_seconds": audio_seconds,
        "bare_forward_seconds": bare_times,
        "pipeline_seconds": pipe_times,
        "bare_forward_x_realtime": audio_seconds / tb,
        "pipeline_x_realtime": audio_seconds / tp,
        "pipeline_over_bare": tb / tp,
    }
