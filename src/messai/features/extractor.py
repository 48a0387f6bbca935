"""Extraction: audio → windows → MERT hidden states of every layer, time-averaged per window.

``FeatureExtractor`` is the in-memory API (one file → arrays); ``extract_dataset`` runs it over a
folder into a ``FeatureStore``: resumable, skipping up-to-date tracks, one bad file never
stopping the run. A background thread decodes, resamples, windows the next files and computes
the proxy targets while the model runs on the current batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from messai.datasets.base import TrackInfo
from messai.errors import AudioError, ConfigError, MessError, StoreError
from messai.features.decode import (
    WindowSpec,
    audio_info,
    iter_windows,
    normalize_window,
    stream_mono,
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


_END = object()


def check_window(window: WindowSpec, checkpoint) -> WindowSpec:
    """Refuse windows shorter than the model's receptive field (the CNN cannot compute them)."""
    segment, _, minimum = window.samples(checkpoint.sample_rate)
    rf = checkpoint.receptive_field
    if min(segment, minimum) < rf:
        raise ConfigError(
            f"windows must be at least {rf} samples ({rf / checkpoint.sample_rate:.3f} s) "
            "long, MERT's receptive field: raise --min-seconds / --segment-seconds"
        )
    return window


class FeatureExtractor:
    """Load a MERT checkpoint once; turn audio files into per-window, per-layer embeddings.

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
    ):
        from messai.device import default_batch_size, select_device, select_dtype
        from messai.models.mert import MertCheckpoint, resolve_checkpoint

        self.device = select_device(device)
        self.dtype = select_dtype(precision, self.device)
        self.precision = precision
        self.checkpoint = (
            model
            if isinstance(model, MertCheckpoint)
            else resolve_checkpoint(model, revision=revision)
        )
        self.window = check_window(
            WindowSpec(segment_seconds, hop_seconds, min_seconds), self.checkpoint
        )
        self.batch_size = batch_size or default_batch_size(self.device)
        self.compute_targets = compute_targets
        self.prefetch_windows = max(prefetch_windows, 2 * self.batch_size)
        self._loaded = None

    @property
    def loaded(self):
        """The model, loaded on first use (a run whose files all fail never loads it)."""
        if self._loaded is None:
            from messai.models.mert import load_mert

            self._loaded = load_mert(self.checkpoint, device=self.device, dtype=self.dtype)
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
        (failed tracks too, with ``error`` set). Decoding runs ahead in a background thread.

        A failure — unreadable audio, or a model forward that raises — fails that track only."""
        tracks = list(tracks)
        q: queue.Queue = queue.Queue(maxsize=self.prefetch_windows)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce, args=(tracks, q, stop), daemon=True, name="mess-decode"
        )
        producer.start()
        run = _RunState(tracks)
        segment_len = self.window.samples(self.sample_rate)[0]
        try:
            while True:
                item = self._next_item(q, producer)
                if item is _END:
                    break
                kind, ti = item[0], item[1]
                if ti in run.dead:
                    continue  # the rest of a track that already failed
                if kind == "start":
                    run.state[ti] = _Track(tracks[ti])
                elif kind == "window":
                    _, _, start, samples, targets = item
                    t = run.state[ti]
                    wi = t.windows
                    t.windows += 1
                    t.starts.append(start)
                    t.lengths.append(len(samples))
                    t.targets.append(targets)
                    if len(samples) != segment_len:  # a tail: run it alone, at its own length
                        self._forward(run, [(ti, wi, samples)], keep_raw)
                    else:
                        run.pending.append((ti, wi, samples))
                        if len(run.pending) >= self.batch_size:
                            self._flush(run, keep_raw)
                    if on_window is not None:
                        on_window(t.info, len(samples) / self.sample_rate)
                elif kind == "end":
                    t = run.state[ti]
                    t.expected, t.duration, t.source = t.windows, item[2], item[3]
                    if q.empty() and run.pending:
                        # the decoder is behind: don't hold finished tracks hostage to a full batch
                        self._flush(run, keep_raw)
                elif kind == "fail":
                    run.fail(ti, item[2])
                yield from run.take_failures()
                yield from self._finished(run.state, keep_raw)
            self._flush(run, keep_raw)
            yield from run.take_failures()
            yield from self._finished(run.state, keep_raw)
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait()

    @staticmethod
    def _next_item(q: queue.Queue, producer: threading.Thread):
        while True:
            try:
                return q.get(timeout=1.0)
            except queue.Empty:
                if not producer.is_alive() and q.empty():
                    raise MessError(
                        "the decoding thread stopped unexpectedly; see the log"
                    ) from None

    # ------------------------------------------------------------------ internals
    def _produce(self, tracks: list[TrackInfo], q: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        for ti, track in enumerate(tracks):
            if stop.is_set():
                return
            try:
                source = self._decode_track(ti, track, put)
                if source is None:
                    return
                if not put(("end", ti, *source)):
                    return
            except AudioError as exc:
                if not put(("fail", ti, str(exc))):
                    return
            except MemoryError:
                if not put(("fail", ti, f"{track.path}: out of memory while decoding")):
                    return
            except Exception as exc:  # one bad file never stops a run
                log.exception("unexpected error decoding %s", track.path)
                if not put(("fail", ti, f"{track.path}: {type(exc).__name__}: {exc}")):
                    return
        put(_END)

    def _decode_track(
        self, ti: int, track: TrackInfo, put
    ) -> tuple[float, tuple[int, int, str]] | None:
        """Send one track's windows; return ``(duration, (size, mtime_ns, content hash))`` of the
        file as read (None when stopped). A file that changes while it is read fails."""
        from messai.features.store import file_content_hash

        path = track.path
        try:
            before = path.stat()
        except OSError as exc:
            raise AudioError(f"{path}: cannot read: {exc.strerror or exc}") from None
        info = audio_info(path)
        if info.duration_seconds < self.window.min_seconds and info.frames > 0:
            raise AudioError(
                f"{path}: too short ({info.duration_seconds:.2f} s < --min-seconds {self.window.min_seconds:g})"
            )
        digest = file_content_hash(path)
        if not put(("start", ti)):
            return None
        n_out = 0
        for start, samples in iter_windows(
            stream_mono(path, self.sample_rate), self.window, self.sample_rate
        ):
            targets = self._targets(samples)
            if not put(
                (
                    "window",
                    ti,
                    start,
                    normalize_window(samples) if self.checkpoint.do_normalize else samples,
                    targets,
                )
            ):
                return None
            n_out += 1
        if n_out == 0:
            raise AudioError(
                f"{path}: too short (no window of at least {self.window.min_seconds:g} s)"
            )
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise AudioError(f"{path}: changed while it was being read; run again")
        return info.duration_seconds, (before.st_size, before.st_mtime_ns, digest)

    def _targets(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        if not self.compute_targets:
            return {}
        from messai.features.targets import compute_targets

        values = compute_targets([samples], self.sample_rate)
        return {k: np.asarray(v)[0] for k, v in values.items()}

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

        from messai.models.mert import pooled_hidden_states

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
    """The arrays of one track as stored: segments in ``store_dtype``; aggregated float32 is the
    mean of the float32 segments (before any rounding)."""
    seg = result.segments
    arrays = {
        "segments": seg.astype(store_dtype),
        "aggregated": seg.mean(axis=0).astype(np.float32),
        "starts": result.starts,
        "lengths": result.lengths,
    }
    for name, values in result.targets.items():
        arrays[f"target__{name}"] = np.asarray(values, dtype=np.float32)
    return arrays


# ====================================================================== dataset → store
@dataclass
class ExtractionReport:
    """Summary of one ``extract_dataset`` run."""

    dataset: str
    store_path: Path
    n_tracks: int = 0
    n_extracted: int = 0
    n_skipped: int = 0
    failures: list[str] = field(default_factory=list)  # "path: reason"
    warnings: list[str] = field(
        default_factory=list
    )  # dataset scan notes (skipped names, unlabelled tracks)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["store_path"] = str(self.store_path)
        d["realtime_factor"] = round(self.realtime_factor, 3)
        return d


@dataclass
class ExtractionPlan:
    tracks: list[TrackInfo]
    todo: list[TrackInfo]
    skipped: list[TrackInfo]


def plan_extraction(store, tracks: list[TrackInfo], *, force: bool) -> ExtractionPlan:
    """Which tracks need work: new ones, changed ones (size/mtime differ and so does the content
    hash), ones whose track file is missing, or all with ``force``. Unchanged content with a new
    mtime is refreshed without model work."""
    from messai.features.store import file_content_hash

    todo, skipped = [], []
    for t in tracks:
        entry = store.entries.get(t.track_id)
        if force or entry is None or not store.has_track_file(t.track_id):
            todo.append(t)
            continue
        try:
            st = t.path.stat()
        except OSError:
            todo.append(t)  # the extractor reports why it cannot be read
            continue
        if entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            skipped.append(t)
        elif file_content_hash(t.path) == entry.get("content_hash"):
            entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            skipped.append(t)
        else:
            todo.append(t)
    return ExtractionPlan(tracks, todo, skipped)


def store_root_for(settings, dataset: str, identity: dict[str, Any]) -> Path:
    from messai.features.store import model_slug

    return settings.stores_dir / dataset / model_slug(identity)


def reconcile_build(
    store, identity: dict[str, Any], ext_settings: dict[str, Any], *, force: bool
) -> None:
    """Under the store's lock: refuse to mix models or settings in one store unless ``force``;
    with ``force``, a store built differently is emptied (its tracks are all redone anyway)."""
    old_settings = {k: store.settings.get(k) for k in ext_settings}
    changed = [
        f"{k}: {old_settings[k]} → {v}" for k, v in ext_settings.items() if old_settings[k] != v
    ]
    changed += [
        f"model {k}: {store.model.get(k)} → {v}"
        for k, v in identity.items()
        if store.model.get(k) != v
    ]
    if changed and store.entries:
        if not force:
            raise StoreError(
                f"{store.root}: store was built with different settings ({'; '.join(changed)}); "
                "re-run with --force to rebuild it, or use another --dataset name"
            )
        store.entries.clear()
    if changed:
        store.manifest["failures"] = {}
    store.manifest["model"] = identity
    store.manifest["settings"] = ext_settings


def default_dataset_name(root: Path) -> str:
    """The folder's name, made a valid dataset name (``My Music!`` → ``My_Music``)."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name).strip("._-")[:128]
    return name or "dataset"


def extract_dataset(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    settings=None,
    kind: str | None = None,
    force: bool = False,
    prune: bool = False,
    scan_options: dict[str, Any] | None = None,
    on_plan: Callable[[ExtractionPlan], None] | None = None,
    on_window: Callable[[TrackInfo, float], None] | None = None,
    on_track: Callable[[TrackResult], None] | None = None,
) -> ExtractionReport:
    """Extract every audio file under ``path`` into the store of ``dataset`` (default: the
    folder's name). Returns a report; failures are listed, never raised (exit status is the
    caller's business). ``prune`` drops stored tracks whose audio file no longer exists."""
    from messai import datasets
    from messai.config import load_settings, validate_dataset_name
    from messai.device import select_device, select_dtype
    from messai.features.store import FeatureStore
    from messai.models.mert import resolve_checkpoint

    settings = settings or load_settings()
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MessError(f"{root}: not a folder")
    root = root.resolve()
    dataset = validate_dataset_name(dataset or default_dataset_name(root))
    kind = kind or datasets.detect_kind(root)
    tracks = datasets.scan(root, kind=kind, **(scan_options or {}))
    rejected = list(getattr(tracks, "rejected", []))
    if not tracks and not rejected:
        raise MessError(
            f"{root}: no audio files found (looked for {', '.join(sorted(datasets.AUDIO_EXTENSIONS))})"
        )
    select_dtype(
        settings.precision, select_device(settings.device)
    )  # fail before touching the store
    checkpoint = resolve_checkpoint(settings.model, revision=settings.revision)
    check_window(
        WindowSpec(settings.segment_seconds, settings.hop_seconds, settings.min_seconds), checkpoint
    )
    identity = checkpoint.identity()
    if settings.revision:
        identity["requested_revision"] = settings.revision
    ext_settings = dict(
        sample_rate=checkpoint.sample_rate,
        segment_seconds=settings.segment_seconds,
        hop_seconds=settings.hop_seconds,
        min_seconds=settings.min_seconds,
        do_normalize=checkpoint.do_normalize,
        store_dtype=settings.store_dtype,
        precision=settings.precision,
    )
    store_root = store_root_for(settings, dataset, identity)
    new_store = not (store_root / "manifest.json").is_file()
    store = (
        FeatureStore.create(store_root, dataset=dataset, model=identity, settings=ext_settings)
        if new_store
        else FeatureStore.at(store_root)
    )
    report = ExtractionReport(
        dataset=dataset,
        store_path=store.root,
        n_tracks=len(tracks) + len(rejected),
        warnings=list(getattr(tracks, "warnings", [])),
        failures=rejected,
    )
    t0 = time.perf_counter()
    try:
        with store.writer():
            reconcile_build(store, identity, ext_settings, force=force)
            store.manifest["source"] = {"root": str(root), "kind": kind}
            store.adopt_orphans()  # tracks a killed run wrote but had not yet listed
            _tidy(store, root, tracks, prune=prune, report=report)
            plan = plan_extraction(store, tracks, force=force)
            report.n_skipped = len(plan.skipped)
            if on_plan is not None:
                on_plan(plan)
            for t in plan.skipped:  # labels may have changed in metadata.csv
                store.entries[t.track_id]["labels"] = dict(t.labels)
            store.save_manifest()
            if plan.todo:
                extractor = FeatureExtractor(
                    checkpoint,
                    device=settings.device,
                    precision=settings.precision,
                    batch_size=settings.batch_size,
                    segment_seconds=settings.segment_seconds,
                    hop_seconds=settings.hop_seconds,
                    min_seconds=settings.min_seconds,
                )
                for result in extractor.run(plan.todo, on_window=on_window):
                    _store_result(store, result, root, settings.store_dtype, report)
                    if on_track is not None:
                        on_track(result)
    except BaseException:
        if new_store and not store.entries and not store.manifest.get("failures"):
            import shutil

            shutil.rmtree(store.root, ignore_errors=True)  # don't leave an empty store behind
        raise
    report.wall_seconds = time.perf_counter() - t0
    return report


def _tidy(
    store, root: Path, tracks: list[TrackInfo], *, prune: bool, report: ExtractionReport
) -> None:
    """Forget failures of files that are gone; report (or with ``prune`` drop) stored tracks
    whose audio file no longer exists. A partial scan (``--limit``) never counts as removal."""
    scanned = {t.track_id for t in tracks}
    for tid in [
        t
        for t, f in store.manifest["failures"].items()
        if t not in scanned and not (root / f.get("source", "")).exists()
    ]:
        store.manifest["failures"].pop(tid)
    gone = sorted(
        t
        for t, e in store.entries.items()
        if t not in scanned and not (root / e.get("source", "")).exists()
    )
    if not gone:
        return
    if prune:
        for tid in gone:
            store.remove(tid)
        report.warnings.append(
            f"pruned {len(gone)} track(s) whose audio file is gone (first: {gone[0]})"
        )
    else:
        report.warnings.append(
            f"{len(gone)} stored track(s) have no audio file under {root} any more (first: {gone[0]}); "
            "they stay in the store; --prune drops them"
        )


def _store_result(store, result: TrackResult, root: Path, store_dtype: str, report) -> None:
    tid = result.track.track_id
    source = result.track.path.relative_to(root).as_posix()
    if not result.ok:
        report.failures.append(result.error)
        prefix = f"{result.track.path}: "
        reason = result.error[len(prefix) :] if result.error.startswith(prefix) else result.error
        store.mark_failed(tid, source, reason)
        return
    size, mtime, digest = result.source
    entry = {
        "source": source,
        "size": size,
        "mtime_ns": mtime,
        "content_hash": digest,
        "duration_seconds": round(result.duration_seconds, 6),
        "n_segments": int(result.segments.shape[0]),
        "targets": sorted(result.targets),
        "labels": dict(result.track.labels),
    }
    store.put(tid, result_arrays(result, store_dtype=store_dtype), entry)
    report.n_extracted += 1
    report.audio_seconds += result.duration_seconds


def recompute_targets(dataset: str, model: str | None = None, *, settings=None) -> ExtractionReport:
    """Recompute every stored track's proxy targets from its audio file (no model work).

    The file must still be where extraction found it and have the same content; otherwise the
    track is reported as failed and left untouched."""
    from messai.config import load_settings
    from messai.features.store import FeatureStore, file_content_hash, now_iso
    from messai.features.targets import compute_targets

    settings = settings or load_settings()
    store = FeatureStore.open(dataset, model, home=settings.home)
    root = Path(store.manifest.get("source", {}).get("root", ""))
    s = store.settings
    spec = WindowSpec(s["segment_seconds"], s["hop_seconds"], s["min_seconds"])
    rate = int(s["sample_rate"])
    report = ExtractionReport(dataset=store.dataset, store_path=store.root)
    t0 = time.perf_counter()
    with store.writer():
        report.n_tracks = len(store.entries)
        for tid in store.track_ids():
            entry = store.entries[tid]
            path = root / entry["source"]
            try:
                if not path.is_file():
                    raise AudioError(f"{path}: audio file no longer there")
                if file_content_hash(path) != entry["content_hash"]:
                    raise AudioError(f"{path}: changed since extraction; re-run 'mess extract'")
                # window by window: memory stays bounded for long files
                rows = [
                    compute_targets([w], rate)
                    for _, w in iter_windows(stream_mono(path, rate), spec, rate)
                ]
                if len(rows) != entry["n_segments"]:
                    raise AudioError(
                        f"{path}: {len(rows)} windows now, {entry['n_segments']} stored"
                    )
                values = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
                arrays = {
                    k: v
                    for k, v in store.read_arrays(tid).items()
                    if not k.startswith("target__") and k != "meta"
                }
            except (AudioError, StoreError) as exc:
                report.failures.append(str(exc))
                continue
            arrays.update(
                {f"target__{k}": np.asarray(v, dtype=np.float32) for k, v in values.items()}
            )
            entry = {
                k: v for k, v in entry.items() if k != "file"
            }  # features unchanged: keep extracted_at
            store.put(tid, arrays, {**entry, "targets": sorted(values), "targets_at": now_iso()})
            report.n_extracted += 1
    report.wall_seconds = time.perf_counter() - t0
    return report
