"""``mess extract --engine ray``: the extraction's model work on a Ray cluster, with Ray Data.

Stages (one streaming Ray Data pipeline; no scheduler of our own):

1. **plan** (driver): the dataset scanners and :func:`~messai.features.pipeline.plan_extraction`
   pick the tracks that need work (tracks committed with the same content are skipped);
2. **decode** (CPU tasks, ``map_batches`` one file per call): read the bytes (local path or
   object storage), decode, downmix, resample, window, normalise and compute the proxy targets
   with :func:`messai.features.decode_job.decode_file` — the local engine's functions. A file
   that fails becomes one failure row (``path: reason``); the other files of the block go on;
3. **model** (a stateful actor class, ``compute=ActorPoolStrategy``, ``num_gpus`` per actor):
   MERT loaded once per actor, windows forwarded in batches of equal length only (MERT's
   group norm makes padding change the result), tails alone; outputs the pooled states;
4. **assembly and commit** (driver): rows are grouped per track as they stream in (no
   shuffle) and each finished track goes through the same store code as the local engine,
   which commits in batches. A killed driver loses at most the uncommitted batch.

Ray retries a task or restarts an actor whose worker dies; rows are keyed by
``(track, window)``, so a retried block cannot duplicate a window.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from messai.datasets.base import TrackInfo
from messai.errors import AudioError, ConfigError, MessError
from messai.features.engines import require_ray
from messai.features.extractor import TrackResult

log = logging.getLogger(__name__)

#: rows of the decode stage's output (one per window, or one failure row per file)
COLUMNS = ("index", "window", "n_windows", "start", "length", "samples", "targets", "duration")
COLUMNS += ("size", "mtime_ns", "digest", "error")
MAX_BLOCKS = 10_000  # input blocks; a file per block up to this many files
#: memory reserved per decode task (it holds one track's windows). Also keeps the decode stage
#: out of the model actors: Ray Data fuses a task stage into the next actor stage when their
#: resource requests are equal, which they are on a CPU-only cluster (num_cpus=1 each)
DECODE_MEMORY = 512 << 20


@dataclass(frozen=True)
class RayOptions:
    """How the job uses the cluster.

    ``address``: ``auto`` (a running cluster found from this machine), ``ray://host:10001`` /
    ``host:6379`` (e.g. a KubeRay head service), or None (``RAY_ADDRESS``, else a local cluster
    on this machine); an already initialised Ray connection is used as it is.
    ``workers``: model actors (the pool's maximum size; default: GPUs in the cluster /
    ``gpus_per_worker``, or 1 without GPUs). ``gpus_per_worker``: GPUs per model actor (default
    1 when the cluster has GPUs, else 0; fractions share a GPU). ``batch_size``: windows per
    forward (default: the settings' batch size, else 16 with GPUs, 2 without).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    batch_size: int | None = None


def extract_with_ray(source, *, options: RayOptions | None = None, **kwargs: Any):
    """:func:`messai.features.pipeline.extract_dataset` with the model work on Ray.

    ``source`` is a local folder or an ``s3://`` / ``gs://`` prefix; the other keyword
    arguments are ``extract_dataset``'s. Returns its ``ExtractionReport``."""
    require_ray()
    from messai.features.engines.sources import listed_source
    from messai.features.pipeline import extract_dataset

    with listed_source(source) as (root, uri):
        engine = RayEngine(options or RayOptions(), root=root, source_uri=uri)
        return extract_dataset(root, engine=engine, source_uri=uri, **kwargs)


def connect(address: str | None) -> None:
    """Connect to (or start) a Ray cluster unless this process already is connected."""
    require_ray()
    import ray

    if ray.is_initialized():
        return
    # the workers read object storage with the driver's settings (endpoint, region, keys)
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": env} if env else None,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MessError(
            f"cannot connect to the Ray cluster at {address or 'auto'}: {exc}"
        ) from None


class RayEngine:
    """The extraction engine that :func:`extract_dataset` calls (see the module docstring)."""

    def __init__(self, options: RayOptions, *, root: Path, source_uri: str | None = None):
        self.options = options
        self.root = root
        self.source_uri = source_uri
        self.last_plan: str | None = None  # the physical plan of the last run (for the README)

    def uri_of(self, track: TrackInfo) -> str:
        if self.source_uri is None:
            return str(track.path)
        return f"{self.source_uri}/{track.path.relative_to(self.root).as_posix()}"

    def __call__(
        self, checkpoint, settings, tracks: list[TrackInfo], listener
    ) -> Iterator[TrackResult]:
        connect(self.options.address)
        import ray
        import ray.data
        from ray.data import ActorPoolStrategy

        from messai.features.decode import WindowSpec

        resources = ray.cluster_resources()
        gpus = self.options.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        workers = self.options.workers or (int(resources.get("GPU", 0) // gpus) if gpus else 1)
        batch_size = self.options.batch_size or settings.batch_size or (16 if gpus else 2)
        if workers < 1 or batch_size < 1 or gpus < 0:
            raise ConfigError(
                "--workers and --batch-size must be at least 1, --gpus-per-worker >= 0"
            )
        window = WindowSpec(settings.segment_seconds, settings.hop_seconds, settings.min_seconds)
        rate = checkpoint.sample_rate
        rows = [{"index": i, "path": self.uri_of(t)} for i, t in enumerate(tracks)]
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
        ds = ds.map_batches(
            decode_batch,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs=dict(window=window, sample_rate=rate, do_normalize=checkpoint.do_normalize),
            num_cpus=1,
            memory=DECODE_MEMORY,
        )
        ds = ds.map_batches(
            MertWorker,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs=dict(
                checkpoint=checkpoint,
                device="cuda" if gpus else "cpu",
                precision=settings.precision,
                batch_size=batch_size,
                segment_samples=window.samples(rate)[0],
            ),
            compute=ActorPoolStrategy(min_size=1, max_size=workers),
            num_gpus=gpus,
            num_cpus=0 if gpus else 1,
        )
        log.info("ray extraction: %d files, %d model workers × %g GPU", len(rows), workers, gpus)
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        yield from assemble(batches, tracks, rate, listener, [r["path"] for r in rows])
        self.last_plan = str(ds.stats())


# ---------------------------------------------------------------------- CPU stage
def decode_batch(batch: dict[str, np.ndarray], *, window, sample_rate, do_normalize) -> dict:
    """Decode every file of the batch into window rows; a file that fails becomes one failure
    row and never takes the others with it."""
    out: dict[str, list] = {k: [] for k in COLUMNS}
    for index, path in zip(batch["index"], batch["path"]):
        try:
            rows = _decode_rows(int(index), str(path), window, sample_rate, do_normalize)
        except AudioError as exc:
            rows = [_failure_row(int(index), str(exc))]
        except MemoryError:
            rows = [_failure_row(int(index), f"{path}: out of memory while decoding")]
        except Exception as exc:  # one bad file never stops a run
            log.exception("unexpected error decoding %s", path)
            rows = [_failure_row(int(index), f"{path}: {type(exc).__name__}: {exc}")]
        for row in rows:
            for k in COLUMNS:
                out[k].append(row[k])
    return {
        k: np.array(v, dtype=object)
        if k in ("samples", "targets", "digest", "error")
        else np.array(v)
        for k, v in out.items()
    }


def _decode_rows(index: int, path: str, window, sample_rate: int, do_normalize: bool) -> list[dict]:
    from messai.features.decode_job import decode_file
    from messai.features.engines.sources import object_stat, read_object
    from messai.features.location import is_remote

    kw = dict(window=window, sample_rate=sample_rate, do_normalize=do_normalize)
    if not is_remote(path):
        decoded = decode_file(path, **kw)
        source = decoded.source
    else:
        with tempfile.TemporaryDirectory(prefix="mess-decode-") as tmp:
            local = Path(tmp) / path.rsplit("/", 1)[-1]
            try:
                before = object_stat(path)
                read_object(path, local)
            except (OSError, FileNotFoundError) as exc:
                raise AudioError(f"{path}: cannot read: {exc}") from None
            try:
                decoded = decode_file(local, **kw)
            except AudioError as exc:
                raise AudioError(str(exc).replace(str(local), path)) from None
            if object_stat(path) != before or local.stat().st_size != before[0]:
                raise AudioError(f"{path}: changed while it was being read; run again")
            source = (before[0], before[1], decoded.source[2])
    n = len(decoded.windows)
    return [
        {
            "index": index,
            "window": w,
            "n_windows": n,
            "start": int(decoded.starts[w]),
            "length": len(decoded.windows[w]),
            "samples": decoded.windows[w].astype(np.float32, copy=False).tobytes(),
            "targets": _pack(decoded.targets[w]),
            "duration": float(decoded.duration_seconds),
            "size": int(source[0]),
            "mtime_ns": int(source[1]),
            "digest": source[2],
            "error": "",
        }
        for w in range(n)
    ]


def _failure_row(index: int, error: str) -> dict:
    return dict(index=index, window=-1, n_windows=0, start=0, length=0, samples=b"", targets=b"",
                duration=0.0, size=0, mtime_ns=0, digest="", error=error)  # fmt: skip


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------- model stage
class MertWorker:
    """A Ray Data actor: MERT loaded once (on the first window, so a batch of failures does no
    model work), pooled hidden states of every window row; failure rows pass through."""

    def __init__(
        self, *, checkpoint, device: str, precision: str, batch_size: int, segment_samples: int
    ):
        self.checkpoint = checkpoint
        self.device, self.precision = device, precision
        self.batch_size = batch_size
        self.segment_samples = segment_samples
        self.loaded = None

    def _model(self):
        if self.loaded is None:
            from messai.device import select_device, select_dtype
            from messai.models import load_model

            device = select_device(self.device)
            dtype = select_dtype(self.precision, device)
            self.loaded = load_model(self.checkpoint, device=device, dtype=dtype)
        return self.loaded

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["index"])
        errors = [str(e) for e in batch["error"]]
        pooled: list[bytes] = [b""] * n
        windows = {
            r: np.frombuffer(batch["samples"][r], dtype=np.float32)
            for r in range(n)
            if not errors[r]
        }
        full = [r for r, w in windows.items() if len(w) == self.segment_samples]
        groups = [full[i : i + self.batch_size] for i in range(0, len(full), self.batch_size)]
        groups += [[r] for r, w in windows.items() if len(w) != self.segment_samples]  # tails alone
        for rows in groups:
            self._forward(rows, windows, pooled, errors)
        out = {k: v for k, v in batch.items() if k != "samples"}
        out["pooled"] = np.array(pooled, dtype=object)
        out["error"] = np.array(errors, dtype=object)
        return out

    def _forward(self, rows: list[int], windows, pooled: list[bytes], errors: list[str]) -> None:
        """Forward equal-length windows; if the batch raises, retry them one by one and fail
        only the window (and so its track) that cannot be computed."""
        import torch

        from messai.models import pooled_hidden_states

        try:
            x = torch.from_numpy(np.stack([windows[r] for r in rows]))
            result, _ = pooled_hidden_states(self._model(), x)
        except MessError:
            raise  # the model cannot be loaded: nothing will work
        except Exception as exc:
            if len(rows) > 1:
                for r in rows:
                    self._forward([r], windows, pooled, errors)
                return
            errors[rows[0]] = f"model forward failed ({type(exc).__name__}: {str(exc)[:200]})"
            return
        for j, r in enumerate(rows):
            buf = io.BytesIO()
            np.save(buf, result[j].numpy().astype(np.float32, copy=False))
            pooled[r] = buf.getvalue()


# ---------------------------------------------------------------------- assembly
@dataclass
class _Partial:
    n_windows: int
    duration: float
    source: tuple[int, int, str]
    windows: dict[int, tuple[int, int, np.ndarray, dict[str, np.ndarray]]]


def assemble(
    batches, tracks: list[TrackInfo], sample_rate: int, listener, names: list[str]
) -> Iterator[TrackResult]:
    """Group streamed window rows into one ``TrackResult`` per track, as each completes
    (``names``: how failures name each track's file)."""
    partial: dict[int, _Partial] = {}
    done: set[int] = set()
    for batch in batches:
        for r in range(len(batch["index"])):
            i = int(batch["index"][r])
            if i in done:
                continue  # a failed track's other windows, or a retried block's duplicates
            error = str(batch["error"][r])
            if error:
                done.add(i)
                partial.pop(i, None)
                if batch["window"][r] >= 0:  # the model stage failed: name the file
                    error = f"{names[i]}: {error}"
                yield TrackResult(tracks[i], error=error)
                continue
            p = partial.get(i)
            if p is None:
                size, mtime, digest = (batch[k][r] for k in ("size", "mtime_ns", "digest"))
                p = partial[i] = _Partial(
                    int(batch["n_windows"][r]), float(batch["duration"][r]),
                    (int(size), int(mtime), str(digest)), {},
                )  # fmt: skip
            w = int(batch["window"][r])
            if w in p.windows:
                continue
            pooled = np.load(io.BytesIO(batch["pooled"][r]), allow_pickle=False)
            n_samples = int(batch["length"][r])
            p.windows[w] = (int(batch["start"][r]), n_samples, pooled, _unpack(batch["targets"][r]))
            listener.on_window(tracks[i], n_samples / sample_rate)
            if len(p.windows) == p.n_windows:
                done.add(i)
                del partial[i]
                yield _result(tracks[i], p)
    for i in sorted(set(range(len(tracks))) - done):
        yield TrackResult(tracks[i], error=f"{names[i]}: no result from the cluster")


def _result(track: TrackInfo, p: _Partial) -> TrackResult:
    order = range(p.n_windows)
    rows = [p.windows[w] for w in order]
    names = rows[0][3].keys()
    return TrackResult(
        track=track,
        segments=np.stack([row[2] for row in rows]).astype(np.float32),
        starts=np.asarray([row[0] for row in rows], dtype=np.int64),
        lengths=np.asarray([row[1] for row in rows], dtype=np.int64),
        targets={n: np.stack([np.asarray(row[3][n]) for row in rows]) for n in names},
        duration_seconds=p.duration,
        source=p.source,
    )
