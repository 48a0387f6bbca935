"""Decoding ahead of the model: in a background thread, or in a pool of worker processes.

Per track, in order, a producer sends ``TrackStarted``, ``WindowDecoded`` × n, then
``TrackDecoded`` or ``TrackFailed``. :func:`decode_track` is that producer for one track (decode
→ resample → window → proxy targets → normalise); the thread and the process pool run the very
same function, so both give bit-identical windows and targets.

The pool assigns track ``i`` to worker ``i % n_workers``; each worker streams its tracks, in
order, into its own bounded queue, and the consumer (:meth:`DecodePool.messages`) reads track 0
from worker 0, track 1 from worker 1, … — so messages arrive in exactly the order of the
single-thread path, and at most ``n_workers × queue_windows`` decoded windows exist at any
time, however long a file is. A worker that dies (killed, segfault in a decoder) fails the track
it was decoding; a fresh worker takes over the rest of its tracks.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from messai.datasets.base import TrackInfo
from messai.errors import AudioError, MessError
from messai.features.decode import (
    WindowSpec,
    audio_info,
    iter_windows,
    normalize_window,
    stream_mono,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class TrackStarted:
    index: int  # position of the track in the run


@dataclass(frozen=True)
class WindowDecoded:
    index: int
    start: int  # samples at the model rate
    samples: np.ndarray  # the window as the model sees it (normalised if the model asks)
    targets: dict[str, np.ndarray]  # proxy targets of the raw window


@dataclass(frozen=True)
class TrackDecoded:
    index: int
    duration_seconds: float
    source: tuple[int, int, str]  # (size, mtime_ns, content hash) of the file as read


@dataclass(frozen=True)
class TrackFailed:
    index: int
    error: str  # "path: reason"


Message = TrackStarted | WindowDecoded | TrackDecoded | TrackFailed


@dataclass(frozen=True)
class WorkerReady:
    """First message of a decode worker process: it started and imported what it needs."""

    pid: int


@dataclass(frozen=True)
class DecodeJob:
    """What a producer needs to turn a file into model-ready windows (picklable)."""

    window: WindowSpec
    sample_rate: int
    do_normalize: bool
    compute_targets: bool


def default_decode_workers(device_type: str, cpu_count: int | None = None) -> int:
    """Decode worker processes when ``--decode-workers`` is not given; 0 means one thread.

    On a CPU device the model already uses every core and one decoding thread keeps up with it
    (measured: a process pool adds start-up and copies and gains nothing on 2 cores), so CPU
    runs keep the thread up to 8 cores and use a quarter of the cores above. An accelerator
    runs the model hundreds of times faster than one core decodes: use every core but one for
    the main process (up to 8).
    """
    cores = cpu_count or os.cpu_count() or 1
    if device_type == "cpu":
        return 0 if cores <= 8 else min(cores // 4, 8)
    return max(1, min(cores - 1, 8))


# ---------------------------------------------------------------------------------- producing
def window_targets(samples: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """Every proxy target of one window (target name → value or ``[k]`` vector)."""
    from messai.features.targets import compute_targets

    values = compute_targets([samples], sample_rate)
    return {k: np.asarray(v)[0] for k, v in values.items()}


def decode_track(
    ti: int, track: TrackInfo, job: DecodeJob, put: Callable[[Message], bool]
) -> TrackDecoded | None:
    """Send one track's ``TrackStarted`` and windows through ``put``; return its
    ``TrackDecoded`` (None when ``put`` says stop). Raises AudioError for a bad file, and for
    a file that changes while it is read."""
    from messai.allocator import keep_freed_memory
    from messai.features.store import file_content_hash

    keep_freed_memory()  # once per process: ~2x cheaper targets (see messai.allocator)
    path = track.path
    try:
        before = path.stat()
    except OSError as exc:
        raise AudioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    info = audio_info(path)
    if info.duration_seconds < job.window.min_seconds and info.frames > 0:
        raise AudioError(
            f"{path}: too short ({info.duration_seconds:.2f} s < --min-seconds {job.window.min_seconds:g})"
        )
    digest = file_content_hash(path)
    if not put(TrackStarted(ti)):
        return None
    n_out = 0
    for start, samples in iter_windows(
        stream_mono(path, job.sample_rate), job.window, job.sample_rate
    ):
        targets = window_targets(samples, job.sample_rate) if job.compute_targets else {}
        model_input = normalize_window(samples) if job.do_normalize else samples
        if not put(WindowDecoded(ti, start, model_input, targets)):
            return None
        n_out += 1
    if n_out == 0:
        raise AudioError(f"{path}: too short (no window of at least {job.window.min_seconds:g} s)")
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise AudioError(f"{path}: changed while it was being read; run again")
    return TrackDecoded(ti, info.duration_seconds, (before.st_size, before.st_mtime_ns, digest))


def produce(
    items: list[tuple[int, TrackInfo]], job: DecodeJob, put: Callable[[Message], bool]
) -> bool:
    """Decode ``(index, track)`` pairs in order; one bad file fails only itself. Returns False
    when ``put`` said stop."""
    for ti, track in items:
        try:
            decoded = decode_track(ti, track, job, put)
            if decoded is None or not put(decoded):
                return False
        except AudioError as exc:
            if not put(TrackFailed(ti, str(exc))):
                return False
        except MemoryError:
            if not put(TrackFailed(ti, f"{track.path}: out of memory while decoding")):
                return False
        except Exception as exc:  # one bad file never stops a run
            log.exception("unexpected error decoding %s", track.path)
            if not put(TrackFailed(ti, f"{track.path}: {type(exc).__name__}: {exc}")):
                return False
    return True


def _bounded_put(q, stop) -> Callable[[Message], bool]:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    return put


# ---------------------------------------------------------------------------------- the thread
class ThreadDecoder:
    """Today's path: one background thread decodes every track, in order."""

    n_workers = 0

    def __init__(self, tracks: list[TrackInfo], job: DecodeJob, *, queue_windows: int):
        self.tracks = tracks
        self.job = job
        self.queue_windows = queue_windows
        self._q: queue.Queue = queue.Queue(maxsize=queue_windows)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mess-decode")

    def _run(self) -> None:
        try:
            produce(list(enumerate(self.tracks)), self.job, _bounded_put(self._q, self._stop))
        finally:
            self._done.set()

    def messages(self) -> Iterator[Message]:
        self._thread.start()
        while True:
            try:
                yield self._q.get(timeout=0.5)
            except queue.Empty:
                if self._done.is_set() and self._q.empty():
                    if self._thread.is_alive():
                        continue
                    return
                if not self._thread.is_alive() and self._q.empty():
                    raise MessError(
                        "the decoding thread stopped unexpectedly; see the log"
                    ) from None

    def queued(self) -> int:
        """Decoded messages waiting for the model."""
        return self._q.qsize()

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------- the processes
def _worker_main(items, job, conn, stop) -> None:
    """Entry point of a decode worker process: stream messages through ``conn``."""
    import contextlib

    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(1)  # the resampler: one core per worker
    from messai.features import targets  # noqa: F401  (import before announcing readiness)
    from messai.numeric import single_threaded_blas

    def put(item) -> bool:
        if stop.is_set():
            return False
        try:
            conn.send(item)  # blocks while the pipe is full: the consumer sets the pace
        except (BrokenPipeError, EOFError, OSError):  # the consumer closed: stop quietly
            return False
        return True

    if put(WorkerReady(os.getpid())):
        with single_threaded_blas():
            produce(items, job, put)
    with contextlib.suppress(OSError):
        conn.close()


class WorkerCrashed(MessError):
    """A decode worker process died (its current track is failed, the run goes on)."""


_EOF = object()  # the worker's end of the pipe closed (it finished, or it died)


@dataclass
class _Worker:
    process: object
    conn: object  # read end of the worker's pipe
    inbox: queue.Queue  # messages received, bounded
    reader: threading.Thread
    items: list[tuple[int, TrackInfo]]
    ready: bool = False


class DecodePool:
    """``n_workers`` decode processes (spawned: safe beside torch's threads, same on every OS).

    Each worker writes to its own pipe; a reader thread here moves its messages into a bounded
    queue, so a worker runs at most ``queue_windows`` (+ one pipe buffer) ahead of the model.
    If a worker dies in the middle of a message, the pipe reports end-of-file (this process
    holds no copy of the write end), never a hang. Call :meth:`start` early (workers import
    numpy and torchaudio while the model loads), iterate :meth:`messages`, then :meth:`close`.
    """

    def __init__(
        self,
        tracks: list[TrackInfo],
        job: DecodeJob,
        *,
        n_workers: int,
        queue_windows: int,
        poll_seconds: float = 0.5,
    ):
        import multiprocessing as mp

        if n_workers < 1:
            raise ValueError("n_workers must be at least 1")
        self.tracks = tracks
        self.job = job
        self.n_workers = max(1, min(n_workers, len(tracks) or 1))
        self.queue_windows = max(1, queue_windows)
        self.poll_seconds = poll_seconds
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self.crashes: list[str] = []  # one line per worker that died
        self.max_queued = 0  # most messages waiting here at once (memory bound, for tests)
        self._started = False

    def _spawn(self, w: int, items: list[tuple[int, TrackInfo]]) -> None:
        read_end, write_end = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(
            target=_worker_main,
            args=(items, self.job, write_end, self._stop),
            daemon=True,
            name=f"mess-decode-{w}",
        )
        p.start()
        write_end.close()  # only the worker holds it now: its death is an EOF here
        inbox: queue.Queue = queue.Queue(maxsize=self.queue_windows)
        reader = threading.Thread(
            target=self._read, args=(read_end, inbox), daemon=True, name=f"mess-decode-read-{w}"
        )
        reader.start()
        self._workers[w] = _Worker(p, read_end, inbox, reader, items)

    def _read(self, conn, inbox: queue.Queue) -> None:
        """Move messages from a worker's pipe into its bounded inbox until EOF or stop."""
        while not self._stop.is_set():
            try:
                msg = conn.recv()
            except (EOFError, OSError, ValueError):
                msg = _EOF
            except Exception:  # a message that cannot be unpickled: treat as a crash
                log.exception("unreadable message from a decode worker")
                msg = _EOF
            while not self._stop.is_set():
                try:
                    inbox.put(msg, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if msg is _EOF:
                return

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for w in range(self.n_workers):
            items = [(i, t) for i, t in enumerate(self.tracks) if i % self.n_workers == w]
            if items:
                self._spawn(w, items)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers, by worker slot (tests and memory reports)."""
        return [wk.process.pid for wk in self._workers if wk is not None and wk.process.pid]

    def worker_pid(self, ti: int) -> int | None:
        """The process that decodes track ``ti`` now."""
        wk = self._workers[ti % self.n_workers]
        return None if wk is None else wk.process.pid

    def queued(self) -> int:
        """Decoded messages waiting here for the model."""
        return sum(wk.inbox.qsize() for wk in self._workers if wk is not None)

    def _get(self, w: int, ti: int):
        """The next message of worker ``w``; raises WorkerCrashed if it died before sending it."""
        wk = self._workers[w]
        while True:
            try:
                msg = wk.inbox.get(timeout=self.poll_seconds)
            except queue.Empty:
                continue
            if msg is _EOF:  # the worker closed its pipe while we still expect track ti
                self._check_started(wk)
                raise WorkerCrashed(self._crash_text(wk, ti))
            if isinstance(msg, WorkerReady):
                wk.ready = True
                continue
            self.max_queued = max(self.max_queued, self.queued() + 1)
            return msg

    def _check_started(self, wk: _Worker) -> None:
        """A worker that died before it was ready will not do better for the next track."""
        if wk.ready:
            return
        wk.process.join(timeout=5)
        raise MessError(
            f"a decode worker process could not start (exit code {wk.process.exitcode}). "
            "Worker processes are spawned: a Python script that extracts with decode workers "
            "must guard its top level with `if __name__ == '__main__':` (as with torch's "
            "DataLoader); or use decode_workers=0 (--decode-workers 0), one decoding thread"
        )

    def _crash_text(self, wk: _Worker, ti: int) -> str:
        wk.process.join(timeout=5)
        code = wk.process.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        return f"{self.tracks[ti].path}: decode worker crashed ({how})"

    def _retire(self, wk: _Worker) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            wk.conn.close()  # a worker blocked on send() gets a broken pipe and exits
        wk.process.join(timeout=2)
        if wk.process.is_alive():
            wk.process.terminate()
            wk.process.join(timeout=2)
        with contextlib.suppress(queue.Empty):
            while True:  # unblock the reader thread
                wk.inbox.get_nowait()
        wk.reader.join(timeout=1)

    def _replace(self, w: int, after: int) -> None:
        """Start a fresh worker ``w`` for its tracks after index ``after``."""
        old = self._workers[w]
        self._workers[w] = None
        self._retire(old)
        rest = [(i, t) for i, t in old.items if i > after]
        if rest and not self._stop.is_set():
            self._spawn(w, rest)

    def messages(self) -> Iterator[Message]:
        """Every message, in track order, exactly as the single-thread path sends them."""
        self.start()
        for ti in range(len(self.tracks)):
            w = ti % self.n_workers
            while True:
                try:
                    msg = self._get(w, ti)
                except WorkerCrashed as exc:
                    self.crashes.append(str(exc))
                    log.warning("%s", exc)
                    self._replace(w, ti)
                    yield TrackFailed(ti, str(exc))
                    break
                if msg.index != ti:  # never happens unless the protocol is broken
                    raise MessError(f"decode worker {w} sent track {msg.index}, expected {ti}")
                yield msg
                if isinstance(msg, (TrackDecoded, TrackFailed)):
                    break

    def close(self) -> None:
        self._stop.set()
        for wk in self._workers:
            if wk is not None:
                self._retire(wk)
        self._workers = [None] * self.n_workers
