"""``mess extract``: audio folder → feature store (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from messai.cli.common import (
    DeviceOpt,
    ModelOpt,
    PrecisionOpt,
    RevisionOpt,
    StoreDtypeChoice,
    StoresOpt,
    app,
    err_console,
    notice,
    print_json,
    settings_from,
)
from messai.features.listener import ExtractionListener


@app.command("extract")
def extract_command(
    path: Annotated[
        Optional[str],
        typer.Argument(
            help="Folder of audio (scanned recursively), or one audio file (its folder is the "
            "dataset); with --engine ray also an s3:// or gs:// prefix. Optional when --dataset "
            "is configured in the config file."
        ),
    ] = None,
    dataset: Annotated[
        Optional[str],
        typer.Option("--dataset", "-d", help="Store name (default: the folder's name)."),
    ] = None,
    layout: Annotated[
        Optional[str],
        typer.Option("--layout", help="Dataset layout: folder, smd, maestro (auto-detected)."),
    ] = None,
    kind: Annotated[
        Optional[str],
        typer.Option("--kind", hidden=True, help="Deprecated alias of --layout."),
    ] = None,
    split: Annotated[
        Optional[str],
        typer.Option("--split", help="MAESTRO split to extract (train/validation/test)."),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option("--limit", help="Extract at most this many tracks (MAESTRO).")
    ] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    stores: StoresOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", help="Windows per forward (default: 2 on CPU, 16 on CUDA, 8 on MPS)."
        ),
    ] = None,
    decode_workers: Annotated[
        Optional[int],
        typer.Option(
            "--decode-workers",
            min=0,
            help="Processes that decode, resample and compute targets (0: one thread) "
            "[default: from the cores and the device].",
        ),
    ] = None,
    segment_seconds: Annotated[
        Optional[float],
        typer.Option("--segment-seconds", help="Window length in seconds [default: 5]."),
    ] = None,
    hop_seconds: Annotated[
        Optional[float], typer.Option("--hop-seconds", help="Window hop in seconds [default: 5].")
    ] = None,
    min_seconds: Annotated[
        Optional[float],
        typer.Option("--min-seconds", help="Shortest tail window kept, seconds [default: 1]."),
    ] = None,
    store_dtype: Annotated[
        Optional[StoreDtypeChoice],
        typer.Option("--store-dtype", help="dtype of the stored features [default: float16]."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-extract every track, even up-to-date ones.")
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Retry files that failed before and have not changed (by default they are "
            "listed as 'failed earlier (unchanged)' and do not change the exit status).",
        ),
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Drop stored tracks whose audio file no longer exists.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bar or plan notices: failures, notes and the summary line only.",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the run's report as JSON on stdout.")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local: this process; ray: a Ray cluster (needs the ray extra; PATH may be an s3:// or gs:// prefix).",
        ),
    ] = "local",
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address",
            help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: RAY_ADDRESS, else a local cluster).",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers", help="Model workers on Ray (default: GPUs / --gpus-per-worker, or 1)."
        ),
    ] = None,
    gpus_per_worker: Annotated[
        Optional[float],
        typer.Option(
            "--gpus-per-worker",
            help="GPUs per model worker on Ray (default: 1 if the cluster has GPUs, else 0).",
        ),
    ] = None,
) -> None:
    """Extract the time-averaged hidden states of every MERT layer, per window, for every audio
    file under PATH, into the dataset's feature store. Re-running skips up-to-date tracks.
    Ctrl-C (or SIGTERM) stops cleanly: finished tracks are kept; re-run to continue (exit 130).
    Exit 1 only when a file failed in this run. With --engine ray the work runs on a Ray
    cluster and PATH may be an object-storage prefix."""
    from messai.features.pipeline import extract_dataset

    settings = settings_from(
        stores=stores,
        model=model,
        revision=revision,
        device=device,
        precision=precision,
        batch_size=batch_size,
        decode_workers=decode_workers,
        segment_seconds=segment_seconds,
        hop_seconds=hop_seconds,
        min_seconds=min_seconds,
        store_dtype=store_dtype,
    )
    if kind is not None:
        notice("note: 'mess extract --kind' is deprecated; use --layout (--kind goes in 0.3)")
        layout = layout or kind
    if engine not in ("local", "ray"):
        raise typer.BadParameter(
            f"unknown engine {engine!r}: use local or ray", param_hint="--engine"
        )
    path, dataset, layout = _resolve_path(path, dataset, layout, settings)
    if "://" not in str(path):  # a local folder or file; object-storage prefixes stay text
        path = Path(path)
    if model is None and isinstance(path, Path):
        settings = _model_of_existing_store(path, dataset, settings)
    scan_options = {k: v for k, v in (("split", split), ("limit", limit)) if v is not None}
    progress = ExtractProgress(quiet=quiet)
    options = dict(
        dataset=dataset,
        settings=settings,
        layout=layout,
        force=force,
        prune=prune,
        scan_options=scan_options,
        listener=progress,
        retry_failed=retry_failed,
    )
    with stop_on_signals() as stop:
        try:
            if engine == "ray":
                from messai.features.engines import require_ray

                require_ray()
                from messai.features.engines.ray_engine import RayOptions, extract_with_ray

                ray_options = RayOptions(ray_address, workers, gpus_per_worker, batch_size)
                report = extract_with_ray(path, options=ray_options, stop=stop, **options)
            else:
                report = extract_dataset(path, stop=stop, **options)
        finally:
            progress.stop()
    for failure in report.failures:  # files the scan rejected (the run's were printed already)
        if str(failure) not in progress.printed:
            notice(str(failure))
    for failure in report.failed_earlier:
        notice(f"failed earlier (unchanged; --retry-failed retries): {failure}")
    for line in report.warnings:
        notice(f"note: {line}")
    if prune and any(w.startswith("pruned ") for w in report.warnings):
        _prune_indices(settings.home, report.store_path)
    if json_out:
        print_json(report.to_dict())
    if report.interrupted:
        notice(
            f"interrupted: {report.n_extracted} tracks saved, {report.n_left} left; "
            "re-run to continue"
        )
        raise typer.Exit(130)
    # the summary line, also with --quiet (which drops the progress and the plan notices)
    speed = (
        (
            f"{report.audio_seconds / 3600:.3f} h of audio in {report.wall_seconds:.1f} s "
            f"({report.realtime_factor:.2f}× real time)"
        )
        if report.n_extracted
        else f"{report.wall_seconds:.1f} s"
    )
    notice(
        f"{report.dataset}: {report.n_extracted} extracted, {report.n_skipped} up to date, "
        f"{len(report.failures)} failed"
        + (f", {len(report.failed_earlier)} failed earlier" if report.failed_earlier else "")
        + f" of {report.n_tracks} tracks; {speed} → {report.store_path}"
    )
    if report.failures:
        raise typer.Exit(1)


def stop_on_signals():
    """A context giving a threading.Event that SIGINT / SIGTERM set (the run then stops after
    the window in flight and commits what is finished); a second Ctrl-C interrupts at once."""
    import contextlib
    import signal
    import threading

    @contextlib.contextmanager
    def handlers():
        stop = threading.Event()

        def handle(signum, frame):
            if stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            stop.set()
            notice("stopping after the window in flight (Ctrl-C again to abort at once) ...")

        if threading.current_thread() is not threading.main_thread():
            yield stop
            return
        old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield stop
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    return handlers()


def _model_of_existing_store(path, dataset, settings):
    """No --model: when the model setting is the default and the dataset already has exactly
    one store, extract with that store's model (as every other command does)."""
    from messai.config import resolve_settings
    from messai.errors import MessError
    from messai.features.pipeline import default_dataset_name
    from messai.features.store import FeatureStore

    if resolve_settings()[1].get("model") != "default":
        return settings  # configured in the file or MESS_MODEL
    folder = path.expanduser()
    name = dataset or default_dataset_name(folder.parent if folder.is_file() else folder.resolve())
    try:
        store = FeatureStore.open(name, None, home=settings.home, stores=settings.stores)
    except MessError:
        return settings
    update = {"model": store.model_id}
    revision = store.model.get("requested_revision")
    if revision:
        update["revision"] = revision
    return settings.model_copy(update=update)


def _prune_indices(home, store_path) -> None:
    """Pruned tracks leave every cached index of the store too (tombstones or a rebuild)."""
    from messai.features.store import FeatureStore
    from messai.search.updates import update_cached_indices

    for row in update_cached_indices(home, FeatureStore.at(store_path)):
        notice(f"note: layer {row['layer']} index {row['action']} ({row['n_tracks']} tracks)")


def _resolve_path(path, dataset, layout, settings):
    from messai.errors import ConfigError

    if path is not None:
        return path, dataset, layout
    if dataset and dataset in settings.datasets:
        entry = settings.datasets[dataset]
        return entry.path, dataset, layout or entry.kind
    if dataset:
        raise ConfigError(
            f"no PATH given and dataset {dataset!r} is not configured ([datasets.{dataset}] path = ... in the config file)"
        )
    raise ConfigError("give a folder of audio: mess extract PATH [--dataset NAME]")


def progress_fields(
    *, done_files: int, n_files: int, done_seconds: float, total_seconds: float, elapsed: float
) -> dict[str, str]:
    """The text of an extraction bar: files, audio hours, × real time and ETA.

    No rate before it means something: windows are reported as they are decoded, ahead of the
    model, so until a file is finished (or ``RATE_AFTER_SECONDS`` have passed) the rate is not
    shown, nor an ETA. Unknown parts are left out rather than shown as ``?`` or blank; when
    every file is done the ETA gives way to ``done``."""
    total = f"/{total_seconds / 3600:.2f}" if total_seconds > 0 else ""
    fields = {
        "files": f"{done_files}/{n_files} files",
        "hours": f"{done_seconds / 3600:.2f}{total} h",
        "speed": "",
        "eta": "",
    }
    if n_files and done_files >= n_files:
        fields["eta"] = "done"
    rate_known = done_seconds > 0 and elapsed > 0
    if not rate_known or (done_files == 0 and elapsed < RATE_AFTER_SECONDS):
        return fields
    rate = done_seconds / elapsed
    fields["speed"] = f"{rate:.2f}× rt"
    if not fields["eta"] and total_seconds > done_seconds:
        left = round((total_seconds - done_seconds) / rate)
        fields["eta"] = f"ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"
    return fields


#: before the first finished file, the rate (and ETA) wait this long for enough windows
RATE_AFTER_SECONDS = 10.0


class ExtractProgress(ExtractionListener):
    """Rich progress on stderr: files, audio hours, × real time, ETA (see
    :func:`progress_fields`)."""

    def __init__(self, *, quiet: bool = False, console=None, clock=None):
        import time

        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[hours]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=console or err_console(),
            transient=False,
        )
        self.clock = clock or time.perf_counter
        self.task = None
        self.n_files = 0
        self.done_files = 0
        self.total_seconds = 0.0
        self.done_seconds = 0.0
        self.started = False
        self.quiet = quiet
        self.printed: set[str] = set()
        self.t0 = self.clock()

    def on_plan(self, plan) -> None:
        import threading

        if self.quiet:
            return
        if plan.skipped:
            notice(f"{len(plan.skipped)} tracks up to date, skipped")
        if not plan.todo:
            notice("nothing to do")
        self.n_files = len(plan.todo)
        if plan.todo:
            self.progress.start()
            self.started = True
            self.t0 = self.clock()
            # the audio total needs every file's header (slow for thousands of MP3s): count it in
            # the background; until then the bar is indeterminate
            self.task = self.progress.add_task("extract", total=None, **self._fields())
            threading.Thread(target=self._count_audio, args=(plan.todo,), daemon=True).start()

    def _count_audio(self, tracks) -> None:
        from messai.errors import MessError
        from messai.features.decode import audio_info

        total = 0.0
        for t in tracks:
            try:
                total += audio_info(t.path).duration_seconds
            except MessError:
                pass
        if total <= 0:  # no header readable here (audio on object storage): no total
            return
        self.total_seconds = total
        if self.task is not None:
            self.progress.update(
                self.task,
                total=self.total_seconds,
                completed=min(self.done_seconds, self.total_seconds),
                **self._fields(),
            )

    def _fields(self) -> dict:
        return progress_fields(
            done_files=self.done_files,
            n_files=self.n_files,
            done_seconds=self.done_seconds,
            total_seconds=self.total_seconds,
            elapsed=self.clock() - self.t0,
        )

    def on_window(self, track, seconds: float) -> None:
        self.done_seconds += seconds
        if self.task is not None:
            done = (
                min(self.done_seconds, self.total_seconds)
                if self.total_seconds
                else self.done_seconds
            )
            self.progress.update(self.task, completed=done, **self._fields())

    def on_notice(self, text: str) -> None:
        self.progress.console.print(f"note: {text}", highlight=False, markup=False)

    def on_track(self, result) -> None:
        self.done_files += 1
        if not result.ok:
            self.printed.add(result.error)
            self.progress.console.print(result.error, highlight=False, markup=False, soft_wrap=True)
        if self.task is not None:
            update = self._fields()
            if self.done_files >= self.n_files:  # all done (failed files too): a full bar
                end = max(self.total_seconds, self.done_seconds, 1e-9)
                self.progress.update(self.task, total=end, completed=end, **update)
            else:
                self.progress.update(self.task, **update)

    def stop(self) -> None:
        if self.started:
            self.progress.stop()
