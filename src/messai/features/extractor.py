"""Extraction: audio → windows → a model's layers (MERT's hidden states, CREPE's conv blocks:
see :mod:`messai.models`), time-averaged per window.

``FeatureExtractor`` is the in-memory API (files → arrays, one ``TrackResult`` per track); a
background thread or a pool of worker processes (:mod:`messai.features.workers`) decodes,
resamples, windows the next files and computes the proxy targets while the model runs on the
current batch. :mod:`messai.features.pipeline` runs it over a
dataset into a feature store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from messai.datasets.base import TrackInfo
from messai.errors import AudioError, ConfigError, MessError

__all__ = [
    "FeatureExtractor",
    "TrackDecoded",
    "TrackFailed",
    "TrackResult",
    "TrackStarted",
    "WindowDecoded",
    "check_window",
    "result_arrays",
]
from messai.features.decode import WindowSpec
from messai.features.records import track_arrays
from messai.features.workers import (
    DecodeJob,
    DecodePool,
    ThreadDecoder,
    TrackDecoded,
    TrackFailed,
    TrackStarted,
    WindowDecoded,
    default_decode_workers,
)

log = logging.getLogger(__name__)


@dataclass
class TrackResult:
    """What extraction produced for one track (arrays float32 unless noted)."""

    track: TrackInfo
    segments: np.ndarray | None = None  # [n_segments, n_layers, dim]
    starts: np.ndarray | None = None  # [n_segments] int64, samples at the model rate
    lengths: np.ndarray | None = None  # [n_segments] int64
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [n_segments(, k)]
    duration_seconds: float = 0.0
    raw: list[np.ndarray] | None = None  # per window [n_layers, frames, dim] (keep_raw only)
    source: tuple[int, int, str] | None = None  # (size, mtime_ns, content hash) of the file as read
    error: str | None = None  # "path: reason" when the track failed

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Track:
    info: TrackInfo
    windows: int = 0
    expected: int | None = None
    duration: float = 0.0
    source: tuple[int, int, str] | None = None
    pooled: dict[int, np.ndarray] = field(default_factory=dict)
    raw: dict[int, np.ndarray] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    targets: list[dict[str, np.ndarray]] = field(default_factory=list)


def check_window(window: WindowSpec, checkpoint) -> WindowSpec:
    """Refuse windows shorter than the model's receptive field (the CNN cannot compute them)."""
    segment, _, minimum = window.samples(checkpoint.sample_rate)
    rf = checkpoint.receptive_field
    if min(segment, minimum) < rf:
        raise ConfigError(
            f"windows must be at least {rf} samples ({rf / checkpoint.sample_rate:.3f} s) "
            "long, the model's receptive field: raise --min-seconds / --segment-seconds"
        )
    return window


class FeatureExtractor:
    """Load a model once (any family of :mod:`messai.models`: a MERT checkpoint, ``crepe:tiny``);
    turn audio files into per-window, per-layer embeddings.

    >>> fx = FeatureExtractor(model="path/to/ckpt", device="cpu")  # doctest: +SKIP
    >>> out = fx.extract("song.flac")  # doctest: +SKIP
    >>> out["segments"].shape  # [n_segments, n_layers, dim]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike = "m-a-p/MERT-v1-95M",
        *,
        revision: str | None = None,
        device: str = "auto",
        precision: str = "float32",
        batch_size: int | None = None,
        segment_seconds: float = 5.0,
        hop_seconds: float = 5.0,
        min_seconds: float = 1.0,
        compute_targets: bool = True,
        prefetch_windows: int = 32,
        decode_workers: int | None = None,
        null_model: bool = False,
    ):
        """``decode_workers``: worker processes that decode, resample, window and compute the
        targets (0: one background thread; None: :func:`default_decode_workers` for the device).
        ``precision="int8"`` quantises the linear layers (CPU). ``null_model`` replaces the
        forward by zeros of the same shapes (benchmarks: the cost of everything else)."""
        from messai.device import default_batch_size, select_device, select_dtype
        from messai.models import resolve_checkpoint

        self.device = select_device(device)
        self.dtype = select_dtype(precision, self.device)
        self.precision = precision
        self.checkpoint = resolve_checkpoint(model, revision=revision)
        self.window = check_window(
            WindowSpec(segment_seconds, hop_seconds, min_seconds), self.checkpoint
        )
        self.batch_size = batch_size or default_batch_size(
            self.device,
            window_seconds=segment_seconds,
            hidden_size=self.checkpoint.dim,
            dtype_bytes=self.dtype.itemsize,
        )
        self.compute_targets = compute_targets
        self.prefetch_windows = max(prefetch_windows, 2 * self.batch_size)
        self.decode_workers = (
            default_decode_workers(self.device.type) if decode_workers is None else decode_workers
        )
        if self.decode_workers < 0:
            raise ConfigError(f"decode_workers must be 0 or more, got {self.decode_workers}")
        self.null_model = null_model
        self.last_decoder: ThreadDecoder | DecodePool | None = None  # of the latest run()
        self._loaded = None

    @property
    def loaded(self):
        """The model, loaded on first use (a run whose files all fail never loads it)."""
        if self._loaded is None:
            from messai.models import load_model, null_model

            if self.null_model:
                self._loaded = null_model(self.checkpoint, device=self.device)
            else:
                self._loaded = load_model(
                    self.checkpoint,
                    device=self.device,
                    dtype=self.dtype,
                    quantize="int8" if self.precision == "int8" else None,
                )
        return self._loaded

    @property
    def sample_rate(self) -> int:
        return self.checkpoint.sample_rate

    # ------------------------------------------------------------------ public API
    def extract(self, path: str | os.PathLike, *, keep_raw: bool = False) -> dict[str, Any]:
        """One file → ``segments [n_segments, n_layers, dim]``, ``aggregated [n_layers, dim]``
        (mean over segments), ``targets``, ``starts``/``lengths`` (samples), and with
        ``keep_raw`` also ``raw [n_segments, n_layers, frames, dim]`` (needs equal-length
        windows: a shorter tail window is dropped from ``raw`` only)."""
        path = Path(path)
        result = next(iter(self.run([TrackInfo(path.stem, path)], keep_raw=keep_raw)))
        if not result.ok:
            raise AudioError(result.error)
        out = result_arrays(result, store_dtype="float32")
        out = {
            "segments": out["segments"],
            "aggregated": out["aggregated"],
            "starts": out["starts"],
            "lengths": out["lengths"],
            "targets": result.targets,
            "duration_seconds": result.duration_seconds,
        }
        if keep_raw:
            full = [r for r in result.raw if r.shape[1] == result.raw[0].shape[1]]
            out["raw"] = np.stack(full)
        return out

    def run(
        self,
        tracks: Iterable[TrackInfo],
        *,
        keep_raw: bool = False,
        on_window: Callable[[TrackInfo, float], None] | None = None,
    ) -> Iterator[TrackResult]:
        """Extract every track, yielding one ``TrackResult`` per track as soon as it is complete
        (failed tracks too, with ``error`` set), in the order of ``tracks``. Decoding runs ahead
        in a background thread or in ``decode_workers`` processes; either way the windows,
        batches and results are the same, bit for bit.

        A failure — unreadable audio, or a model forward that raises — fails that track only."""
        tracks = list(tracks)
        decoder = self._decoder(tracks)
        if isinstance(decoder, DecodePool):
            decoder.start()  # workers import and start decoding while the model loads
        self.last_decoder = decoder
        run = _RunState(tracks)
        segment_len = self.window.samples(self.sample_rate)[0]
        try:
            for item in decoder.messages():
                ti = item.index
                if ti in run.dead:
                    continue  # the rest of a track that already failed
                if isinstance(item, TrackStarted):
                    run.state[ti] = _Track(tracks[ti])
                elif isinstance(item, WindowDecoded):
                    samples = item.samples
                    t = run.state[ti]
                    wi = t.windows
                    t.windows += 1
                    t.starts.append(item.start)
                    t.lengths.append(len(samples))
                    t.targets.append(item.targets)
                    if len(samples) != segment_len:  # a tail: run it alone, at its own length
                        self._forward(run, [(ti, wi, samples)], keep_raw)
                    else:
                        run.pending.append((ti, wi, samples))
                        if len(run.pending) >= self.batch_size:
                            self._flush(run, keep_raw)
                    if on_window is not None:
                        on_window(t.info, len(samples) / self.sample_rate)
                elif isinstance(item, TrackDecoded):
                    t = run.state[ti]
                    t.expected, t.duration, t.source = t.windows, item.duration_seconds, item.source
                    # No early flush of a part-filled batch here: batches depend only on the
                    # windows, never on timing, so every run (thread or workers) computes the
                    # same bits (the CPU kernels' rounding depends on the batch size).
                elif isinstance(item, TrackFailed):
                    run.fail(ti, item.error)
                yield from run.take_failures()
                yield from self._finished(run.state, keep_raw)
            self._flush(run, keep_raw)
            yield from run.take_failures()
            yield from self._finished(run.state, keep_raw)
        finally:
            decoder.close()

    # ------------------------------------------------------------------ internals
    def _decoder(self, tracks: list[TrackInfo]) -> ThreadDecoder | DecodePool:
        job = DecodeJob(
            self.window, self.sample_rate, self.checkpoint.do_normalize, self.compute_targets
        )
        if self.decode_workers == 0 or not tracks:
            return ThreadDecoder(tracks, job, queue_windows=self.prefetch_windows)
        per_worker = max(2, -(-self.prefetch_windows // self.decode_workers))
        return DecodePool(tracks, job, n_workers=self.decode_workers, queue_windows=per_worker)

    def _flush(self, run: _RunState, keep_raw: bool) -> None:
        if run.pending:
            items, run.pending = run.pending, []
            self._forward(run, items, keep_raw)

    def _forward(
        self, run: _RunState, items: list[tuple[int, int, np.ndarray]], keep_raw: bool
    ) -> None:
        """Forward a batch; if it raises, retry its windows one by one and fail only the tracks
        whose own window cannot be computed."""
        import torch

        from messai.models import pooled_hidden_states

        items = [it for it in items if it[0] in run.state]
        if not items:
            return
        try:
            batch = torch.from_numpy(np.stack([s for _, _, s in items]))
            pooled, raw = pooled_hidden_states(self.loaded, batch, keep_raw=keep_raw)
        except MessError:
            raise  # the model itself cannot be loaded: nothing will work
        except Exception as exc:
            if len(items) > 1:
                for item in items:
                    self._forward(run, [item], keep_raw)
                return
            ti = items[0][0]
            run.fail(
                ti,
                f"{run.tracks[ti].path}: model forward failed ({type(exc).__name__}: {str(exc)[:200]})",
            )
            return
        pooled = pooled.numpy()
        for j, (ti, wi, _) in enumerate(items):
            t = run.state[ti]
            t.pooled[wi] = pooled[j]
            if keep_raw:
                t.raw[wi] = raw[j].numpy()

    def _finished(self, state: dict[int, _Track], keep_raw: bool) -> Iterator[TrackResult]:
        for ti in sorted(state):
            t = state[ti]
            if t.expected is None or len(t.pooled) < t.expected:
                continue
            del state[ti]
            order = range(t.expected)
            names = t.targets[0].keys() if t.targets else ()
            yield TrackResult(
                track=t.info,
                segments=np.stack([t.pooled[i] for i in order]).astype(np.float32),
                starts=np.asarray(t.starts, dtype=np.int64),
                lengths=np.asarray(t.lengths, dtype=np.int64),
                targets={n: np.stack([np.asarray(row[n]) for row in t.targets]) for n in names},
                duration_seconds=t.duration,
                source=t.source,
                raw=[t.raw[i] for i in order] if keep_raw else None,
            )


@dataclass
class _RunState:
    """Book-keeping of one ``FeatureExtractor.run``: tracks in flight, pending batch, failures."""

    tracks: list[TrackInfo]
    state: dict[int, _Track] = field(default_factory=dict)
    pending: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    dead: set[int] = field(default_factory=set)
    failures: list[TrackResult] = field(default_factory=list)

    def fail(self, ti: int, error: str) -> None:
        self.state.pop(ti, None)
        self.dead.add(ti)
        self.pending = [p for p in self.pending if p[0] != ti]
        self.failures.append(TrackResult(self.tracks[ti], error=error))

    def take_failures(self) -> list[TrackResult]:
        out, self.failures = self.failures, []
        return out


def result_arrays(result: TrackResult, *, store_dtype: str = "float16") -> dict[str, np.ndarray]:
    """The arrays of one track as stored (see :func:`messai.features.records.track_arrays`)."""
    return track_arrays(
        result.segments, result.starts, result.lengths, result.targets, store_dtype=store_dtype
    )
