"""Dataset → store: run the extractor over a folder into its feature store, resumably.

Up-to-date tracks are skipped, one bad file never stops the run, and everything finished is
committed as it completes (see :mod:`messai.features.store`). Progress is reported to an
:class:`ExtractionListener`; the library itself never prints.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from messai.datasets.base import TrackInfo
from messai.errors import AudioError, MessError, StoreError
from messai.features.decode import WindowSpec, iter_windows, stream_mono
from messai.features.extractor import FeatureExtractor, TrackResult, check_window, result_arrays
from messai.features.listener import ExtractionListener
from messai.features.records import TrackEntry


@dataclass(frozen=True)
class Failure:
    """A file that could not be extracted: ``str()`` is the one line ``path: reason``."""

    path: str
    reason: str

    @classmethod
    def from_line(cls, line: str, path: str | os.PathLike | None = None) -> Failure:
        """From a ``path: reason`` line (``path`` given when known: names may hold ': ')."""
        if path is not None and line.startswith(f"{path}: "):
            return cls(str(path), line[len(f"{path}: ") :])
        head, sep, tail = line.partition(": ")
        return cls(head, tail) if sep else cls("", line)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class ExtractionEngine(Protocol):
    """What runs the model work of an extraction (see :func:`extract_dataset`'s ``engine``)."""

    def __call__(
        self, checkpoint, settings, tracks: list[TrackInfo], listener: ExtractionListener
    ) -> Any: ...


@dataclass
class ExtractionReport:
    """Summary of one ``extract_dataset`` run.

    ``failures`` are the files this run could not extract; ``failed_earlier`` those that failed
    in an earlier run and have not changed since (not retried without ``retry_failed``; they do
    not make the run a failure). ``interrupted`` is true when a stop was requested: ``n_left``
    tracks were not done (what was finished is committed)."""

    dataset: str
    store_path: str
    n_tracks: int = 0
    n_extracted: int = 0
    n_skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    failed_earlier: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # scan notes (skipped names, no labels)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    interrupted: bool = False
    n_left: int = 0

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["store_path"] = str(self.store_path)
        d["failures"] = [f.to_dict() for f in self.failures]
        d["failed_earlier"] = [f.to_dict() for f in self.failed_earlier]
        d["realtime_factor"] = round(self.realtime_factor, 3)
        return d


@dataclass
class ExtractionPlan:
    """Which of the scanned tracks need model work (``todo``) and which are up to date."""

    tracks: list[TrackInfo]
    todo: list[TrackInfo]
    skipped: list[TrackInfo]
    failed_earlier: list[tuple[TrackInfo, str]] = field(default_factory=list)  # (track, reason)


def plan_extraction(
    store, tracks: list[TrackInfo], *, force: bool, retry_failed: bool = False
) -> ExtractionPlan:
    """Which tracks need work: new ones, changed ones (size/mtime differ and so does the content
    hash), ones whose stored features are missing, or all with ``force``. Unchanged content
    with a new mtime is refreshed in the store without model work. A file whose last extraction
    failed and that has not been modified since is not retried (``failed_earlier``) unless
    ``retry_failed`` or ``force`` — also when an earlier version of it is stored (the track is
    ``stale``); a stale track whose file is back to the stored content is up to date again."""
    from messai.features.store import file_content_hash

    todo, skipped, failed_earlier = [], [], []
    complete = store.window_counts_ok()  # tracks whose stored windows are all there
    every_failure = store.failures()
    failures = every_failure if not (force or retry_failed) else {}
    for t in tracks:
        entry = store.get_entry(t.track_id)
        failure = failures.get(t.track_id)
        if force or entry is None or t.track_id not in complete:
            if entry is None and failure is not None and _unchanged_since_failure(t.path, failure):
                failed_earlier.append((t, failure.reason))
            else:
                todo.append(t)
            continue
        try:
            st = t.path.stat()
        except OSError:
            todo.append(t)  # the extractor reports why it cannot be read
            continue
        if entry.size == st.st_size and entry.mtime_ns == st.st_mtime_ns:
            up_to_date = True  # the stored file itself (also one restored after a failure)
        elif failure is not None and _unchanged_since_failure(t.path, failure):
            failed_earlier.append((t, failure.reason))  # stale: the version that failed
            continue
        elif file_content_hash(t.path) == entry.content_hash:
            store.refresh_file_stat(t.track_id, size=st.st_size, mtime_ns=st.st_mtime_ns)
            up_to_date = True
        else:
            up_to_date = False
        if up_to_date:
            if t.track_id in every_failure:
                store.forget_failure(t.track_id)  # stale no more: its stored file is back
            skipped.append(t)
        else:
            todo.append(t)
    return ExtractionPlan(tracks, todo, skipped, failed_earlier)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _unchanged_since_failure(path: Path, failure) -> bool:
    """The file is as it was when it failed: the same size and mtime (a cheap stat); for a
    failure recorded without them (a stored track that failed later: its row keeps the stored
    file's stat), not modified since the attempt that failed began (``failure.at``)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if failure.size is not None and failure.mtime_ns is not None:
        return (st.st_size, st.st_mtime_ns) == (failure.size, failure.mtime_ns)
    if not failure.at:
        return False
    try:
        at = _dt.datetime.fromisoformat(failure.at)
    except ValueError:
        return False
    if at.tzinfo is None:
        at = at.replace(tzinfo=_dt.UTC)
    at_ns = int(at.timestamp()) * 1_000_000_000 + at.microsecond * 1000
    return st.st_mtime_ns < at_ns


class StopRequested(Exception):
    """Raised inside the extraction loop when a stop was asked for (private to this module's
    loop: ``extract_dataset`` turns it into ``report.interrupted``)."""


def store_uri_for(settings, dataset: str, identity: dict[str, Any]) -> str:
    """Where the store of ``dataset`` extracted with the model ``identity`` lives."""
    from messai.features import location
    from messai.features.store import model_slug

    base = location.normalise(settings.stores_location)
    return location.join(base, dataset, model_slug(identity))


def default_dataset_name(root: Path) -> str:
    """The folder's name, made a valid dataset name (``My Music!`` → ``My_Music``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name).strip("._-")[:128]
    return name or "dataset"


def extract_dataset(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    settings=None,
    layout: str | None = None,
    force: bool = False,
    prune: bool = False,
    scan_options: dict[str, Any] | None = None,
    listener: ExtractionListener | None = None,
    retry_failed: bool = False,
    stop: threading.Event | None = None,
    engine: ExtractionEngine | None = None,
    source_uri: str | None = None,
) -> ExtractionReport:
    """Extract every audio file under ``path`` into the store of ``dataset``.

    Parameters
    ----------
    path : path-like
        The dataset folder (scanned recursively, or by ``layout``), or one audio file (its
        folder is the dataset; only that file is extracted).
    dataset : str, optional
        Store name (default: the folder's name).
    settings : Settings, optional
        Model, device, window and store settings (default: :func:`messai.config.load_settings`).
    layout : {"folder", "smd", "maestro"}, optional
        Dataset layout (auto-detected by default).
    force : bool
        Re-extract every track, and rebuild a store built with other settings.
    prune : bool
        Drop stored tracks whose audio file no longer exists.
    scan_options : dict, optional
        Options of the layout's scanner (``split``, ``limit`` for MAESTRO).
    listener : ExtractionListener, optional
        Receives progress.
    retry_failed : bool
        Retry files that failed before and have not changed since (by default they are listed
        in ``failed_earlier`` and skipped).
    stop : threading.Event, optional
        When set (e.g. by a signal handler), the run stops after the window in flight: tracks
        not finished are dropped, everything finished is committed, ``report.interrupted``.
    engine : callable, optional
        ``engine(checkpoint, settings, tracks, listener)`` → iterable of ``TrackResult``, one
        per track (failed ones with ``error`` set), in any order: what runs the tracks that
        need work. Default: :func:`local_engine` (this process). The Ray engine
        (:mod:`messai.features.engines.ray_engine`) plugs in here.
    source_uri : str, optional
        Where the audio really lives when ``path`` is a local stand-in for it (an ``s3://``
        prefix listed into placeholder files): recorded as the store's source, and failures
        name files under it.

    Returns
    -------
    ExtractionReport
        Failures are listed in it, never raised (the exit status is the caller's business).
    """
    from messai.features.store import StoreRemovedError

    options = dict(
        dataset=dataset,
        settings=settings,
        layout=layout,
        force=force,
        prune=prune,
        scan_options=scan_options,
        listener=listener,
        retry_failed=retry_failed,
        stop=stop,
        engine=engine,
        source_uri=source_uri,
    )
    try:
        return _extract_dataset(path, **options)
    except StoreRemovedError:
        # the empty store was removed by the run that created it while this one waited for
        # it: nothing of it was ours or anyone's; create it again, once
        return _extract_dataset(path, **options)


def _extract_dataset(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    settings=None,
    layout: str | None = None,
    force: bool = False,
    prune: bool = False,
    scan_options: dict[str, Any] | None = None,
    listener: ExtractionListener | None = None,
    retry_failed: bool = False,
    stop: threading.Event | None = None,
    engine: ExtractionEngine | None = None,
    source_uri: str | None = None,
) -> ExtractionReport:
    """:func:`extract_dataset`, once."""
    from messai import datasets
    from messai.config import load_settings, validate_dataset_name
    from messai.device import select_device, select_dtype
    from messai.features.store import FeatureStore
    from messai.models import resolve_checkpoint

    settings = settings or load_settings()
    listener = listener or ExtractionListener()
    root = Path(path).expanduser()
    single = root.resolve() if root.is_file() else None
    if single is not None:
        root = root.parent
    elif not root.is_dir():
        raise MessError(f"{root}: {'not a folder' if root.exists() else 'does not exist'}")
    root = root.resolve()
    dataset = validate_dataset_name(dataset or default_dataset_name(root))
    layout = layout or datasets.detect_kind(root)
    tracks = datasets.scan(root, kind=layout, **(scan_options or {}))
    rejected = [Failure.from_line(line) for line in getattr(tracks, "rejected", [])]
    if single is not None:
        tracks, rejected = _only_file(tracks, rejected, single)
    tracks, unnamed = _unencodable_names(tracks)
    rejected += unnamed
    if not tracks and not rejected:
        raise MessError(
            f"{root}: no audio files found (looked for {', '.join(sorted(datasets.AUDIO_EXTENSIONS))})"
        )
    select_dtype(settings.precision, select_device(settings.device))  # fail before the store
    checkpoint = resolve_checkpoint(settings.model, revision=settings.revision)
    window = WindowSpec(settings.segment_seconds, settings.hop_seconds, settings.min_seconds)
    check_window(window, checkpoint)
    identity = checkpoint.identity()
    if settings.revision:
        identity["requested_revision"] = settings.revision
    build = dict(
        sample_rate=checkpoint.sample_rate,
        segment_seconds=settings.segment_seconds,
        hop_seconds=settings.hop_seconds,
        min_seconds=settings.min_seconds,
        do_normalize=checkpoint.do_normalize,
        store_dtype=settings.store_dtype,
        precision=settings.precision,
    )
    store_uri = store_uri_for(settings, dataset, identity)
    new_store = not FeatureStore.exists_at(store_uri)
    store = (
        FeatureStore.create(store_uri, dataset=dataset, model=identity, settings=build)
        if new_store
        else FeatureStore.at(store_uri)
    )
    report = ExtractionReport(
        dataset=dataset,
        store_path=store.uri,
        n_tracks=len(tracks) + len(rejected),
        warnings=list(getattr(tracks, "warnings", [])),
        failures=rejected,
    )
    t0 = time.perf_counter()
    try:
        store.COMMIT_TRACKS, store.COMMIT_SECONDS = settings.commit_tracks, settings.commit_seconds
        with store.writer(on_wait=listener.on_notice):
            store.reconcile_build(identity, build, force=force)
            store.set_source(source_uri or root, layout)
            _tidy(store, root, tracks, prune=prune, report=report)
            plan = plan_extraction(store, tracks, force=force, retry_failed=retry_failed)
            report.n_skipped = len(plan.skipped)
            report.failed_earlier = [Failure(str(t.path), r) for t, r in plan.failed_earlier]
            listener.on_plan(plan)
            for t in plan.skipped:  # labels may have changed in metadata.csv
                store.set_labels(t.track_id, t.labels)
            store.commit()
            if plan.todo:
                done = 0
                # when the attempt began (before the stats: a file changed later is retried)
                began = _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")
                attempted = {t.track_id: _stat(t.path) for t in plan.todo}
                run = engine or local_engine
                watched = _StopAtWindow(listener, stop)
                try:
                    if stop is not None and stop.is_set():
                        raise StopRequested
                    for result in run(checkpoint, settings, plan.todo, watched):
                        _store_result(
                            store,
                            result,
                            root,
                            settings.store_dtype,
                            report,
                            source_uri,
                            attempted=attempted.get(result.track.track_id),
                            began=began,
                        )
                        listener.on_track(result)
                        done += 1
                        if stop is not None and stop.is_set():
                            raise StopRequested
                except StopRequested:
                    report.interrupted = True
                    report.n_left = len(plan.todo) - done
    except BaseException:
        _remove_if_never_used(store, created=new_store)
        raise
    report.wall_seconds = time.perf_counter() - t0
    return report


def _unencodable_names(tracks) -> tuple[list[TrackInfo], list[Failure]]:
    """Split off tracks whose file name is not valid UTF-8 (a name the store cannot hold: ids
    and sources are UTF-8 text); each becomes one failure line, the rest are extracted."""
    ok, bad = [], []
    for t in tracks:
        try:
            t.track_id.encode("utf-8")
            str(t.path).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(t.path).decode("utf-8", "backslashreplace")
            bad.append(Failure(shown, "file name is not valid UTF-8; rename the file"))
            continue
        ok.append(t)
    if isinstance(tracks, list) and not bad:
        return tracks, []
    out = type(tracks)(ok) if isinstance(tracks, list) and type(tracks) is not list else ok
    for attr in ("rejected", "warnings"):
        if hasattr(tracks, attr):
            setattr(out, attr, getattr(tracks, attr))
    return out, bad


def _only_file(tracks, rejected: list[Failure], file: Path):
    """The scan of ``file``'s folder cut down to ``file`` (``mess extract FILE``)."""
    from messai.datasets.base import is_audio

    mine = [t for t in tracks if t.path.resolve() == file]
    rejected = [f for f in rejected if f.path and Path(f.path).resolve() == file]
    if not mine and not rejected:
        why = "not an audio file" if not is_audio(file) else "not a track of its folder's layout"
        raise MessError(f"{file}: {why}")
    return mine, rejected


def local_engine(checkpoint, settings, tracks: list[TrackInfo], listener: ExtractionListener):
    """The default engine: :class:`FeatureExtractor` in this process."""
    extractor = FeatureExtractor(
        checkpoint,
        device=settings.device,
        precision=settings.precision,
        batch_size=settings.batch_size,
        segment_seconds=settings.segment_seconds,
        hop_seconds=settings.hop_seconds,
        min_seconds=settings.min_seconds,
        decode_workers=settings.decode_workers,
    )
    yield from extractor.run(tracks, on_window=listener.on_window)


class _StopAtWindow(ExtractionListener):
    """Passes progress on; after a stop request, the next window ends the run (the windows
    of unfinished tracks are dropped, everything finished is committed)."""

    def __init__(self, listener: ExtractionListener, stop: threading.Event | None):
        self.listener, self.stop = listener, stop

    def on_plan(self, plan) -> None:
        self.listener.on_plan(plan)

    def on_window(self, track, seconds: float) -> None:
        self.listener.on_window(track, seconds)
        if self.stop is not None and self.stop.is_set():
            raise StopRequested

    def on_track(self, result) -> None:
        self.listener.on_track(result)

    def on_notice(self, text: str) -> None:
        self.listener.on_notice(text)


def _remove_if_never_used(store, *, created: bool) -> None:
    """A store this run created and never wrote to is removed on failure (no empty folder on
    a full disk), but only while no other process uses it: a store another run is writing or
    waiting to write (it lost the race to create it) is never touched, nor one on object
    storage (see :meth:`FeatureStore.remove_if_unused`)."""
    if not created:
        return
    try:
        store.remove_if_unused()
    except Exception:  # best effort: leaving an empty store is harmless
        return


def _tidy(
    store, root: Path, tracks: list[TrackInfo], *, prune: bool, report: ExtractionReport
) -> None:
    """Forget failures of files that are gone; report (or with ``prune`` drop) stored tracks
    whose audio file no longer exists. A partial scan (``--limit``) never counts as removal."""
    scanned = {t.track_id for t in tracks}
    for tid, failure in store.failures().items():
        if tid not in scanned and not (root / failure.source).exists():
            store.forget_failure(tid)
    gone = [
        e.track_id
        for e in store.iter_entries()
        if e.track_id not in scanned and not (root / e.source).exists()
    ]
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


def _store_result(
    store,
    result: TrackResult,
    root: Path,
    store_dtype: str,
    report,
    source_uri: str | None = None,
    *,
    attempted: tuple[int, int] | None = None,
    began: str | None = None,
) -> None:
    """Store one finished track, or record its failure with ``attempted`` — the file's size
    and mtime when the attempt began — and ``began``, that time (a file that changed
    meanwhile is then retried)."""
    tid = result.track.track_id
    source = result.track.path.relative_to(root).as_posix()
    if not result.ok:
        shown = f"{source_uri.rstrip('/')}/{source}" if source_uri else result.track.path
        report.failures.append(Failure.from_line(result.error, shown))
        prefix = f"{shown}: "
        reason = result.error[len(prefix) :] if result.error.startswith(prefix) else result.error
        size, mtime = attempted if attempted is not None else (None, None)
        store.mark_failed(tid, source, reason, size=size, mtime_ns=mtime, at=began)
        return
    size, mtime, digest = result.source
    entry = TrackEntry(
        track_id=tid,
        source=source,
        size=size,
        mtime_ns=mtime,
        content_hash=digest,
        duration_seconds=round(result.duration_seconds, 6),
        n_segments=int(result.segments.shape[0]),
        targets=tuple(sorted(result.targets)),
        labels=dict(result.track.labels),
    )
    store.put(entry, result_arrays(result, store_dtype=store_dtype))
    report.n_extracted += 1
    report.audio_seconds += result.duration_seconds


def recompute_targets(dataset: str, model: str | None = None, *, settings=None) -> ExtractionReport:
    """Recompute every stored track's proxy targets from its audio file (no model work).

    The file must still be where extraction found it and have the same content; otherwise the
    track is reported as failed and left untouched."""
    from messai.config import load_settings
    from messai.features.store import FeatureStore, file_content_hash
    from messai.features.targets import compute_targets

    settings = settings or load_settings()
    store = FeatureStore.open(dataset, model, stores=settings.stores_location)
    root = store.source_root or Path()
    s = store.settings
    spec = WindowSpec(s["segment_seconds"], s["hop_seconds"], s["min_seconds"])
    rate = int(s["sample_rate"])
    report = ExtractionReport(dataset=store.dataset, store_path=store.uri)
    t0 = time.perf_counter()
    with store.writer():
        report.n_tracks = len(store)
        for entry in store.iter_entries():
            path = root / entry.source
            try:
                if not path.is_file():
                    raise AudioError(f"{path}: audio file no longer there")
                if file_content_hash(path) != entry.content_hash:
                    raise AudioError(f"{path}: changed since extraction; re-run 'mess extract'")
                # window by window: memory stays bounded for long files
                rows = [
                    compute_targets([w], rate)
                    for _, w in iter_windows(stream_mono(path, rate), spec, rate)
                ]
                if len(rows) != entry.n_segments:
                    raise AudioError(f"{path}: {len(rows)} windows now, {entry.n_segments} stored")
                values = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
                store.replace_targets(entry.track_id, values)
            except (AudioError, StoreError) as exc:
                report.failures.append(Failure.from_line(str(exc), path))
                continue
            report.n_extracted += 1
    report.wall_seconds = time.perf_counter() - t0
    return report
