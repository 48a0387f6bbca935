"""Moving and maintaining feature stores: migrate format 1, copy anywhere, compact, verify.

Every operation keeps the store's promises: a reader never opens a half-written store, an
interrupted copy or migration is resumed (or redone) by running it again, and nothing already
stored is lost.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from messai.errors import StoreError
from messai.features import location as loc
from messai.features.store import (
    STATE_FILE,
    TRACKS_TABLE,
    WINDOWS_TABLE,
    FeatureStore,
    storage_error,
)

#: tracks read and written per batch while copying or migrating
BATCH_TRACKS = 256


@dataclass
class AdminReport:
    """What a store operation did (JSON-ready with ``to_dict``)."""

    action: str
    source: str
    destination: str
    n_tracks: int = 0
    n_failures: int = 0
    n_skipped: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


Progress = Callable[[int, int], None]  # (done, total)


def migrate(
    source: str, *, destination: str | None = None, on_progress: Progress | None = None
) -> AdminReport:
    """Convert a format-1 store (``manifest.json`` + ``.npz`` files) into format 2, losslessly.

    Without ``destination`` the store is converted in place: format 2 is written beside it
    and swapped in once complete (the format-1 files are removed only then). Re-running an
    interrupted migration starts again from the untouched format-1 files.
    """
    from messai.features.store_v1 import FeatureStoreV1

    src_path = loc.local_path(loc.normalise(source))
    if src_path is None:
        raise StoreError(f"{source}: format-1 stores are local folders")
    old = FeatureStoreV1.at(src_path)
    in_place = destination is None
    target = (
        str(src_path.with_name(src_path.name + ".migrating"))
        if in_place
        else loc.normalise(destination)
    )
    if loc.exists(target):
        if not in_place:
            raise StoreError(f"{target}: a store exists there already")
        loc.remove_tree(target)  # an interrupted earlier migration: start again
    new = FeatureStore.create(target, dataset=old.dataset, model=old.model, settings=old.settings)
    report = AdminReport("migrate", str(src_path), target if not in_place else str(src_path))
    ids = old.track_ids()
    with old.writer(), new.writer():  # no format-1 writer meanwhile
        if old.source_root is not None:
            new.set_source(old.source_root, old.source_kind or "folder")
        for i, entry in enumerate(old.iter_entries()):
            new.put(entry, old.read_arrays(entry.track_id))
            report.n_tracks += 1
            if on_progress is not None:
                on_progress(i + 1, len(ids))
        for failure in old.failures().values():
            new.mark_failed(failure.track_id, failure.source, failure.reason)
            report.n_failures += 1
    check = FeatureStore.at(target)
    if len(check) != len(ids):
        raise StoreError(
            f"{target}: migration wrote {len(check)} of {len(ids)} tracks; run it again"
        )
    if in_place:
        _swap_in(target, src_path)
    return report


def _swap_in(migrated: str, original) -> None:
    """Replace the format-1 folder by the migrated one (rename aside, rename in, remove)."""
    from pathlib import Path

    from messai.files import swap_dir_into_place

    swap_dir_into_place(Path(migrated), original)


def copy(source: str, destination: str, *, on_progress: Progress | None = None) -> AdminReport:
    """Copy a store to another location (laptop → ``s3://…`` and back), resumably.

    The windows are copied first, in batches (a re-run skips what is there); the tracks table,
    which makes the destination a store, is written last in one commit. Until then nobody can
    open the destination as a store, so a reader never sees it half-written.
    """
    import lance

    src = FeatureStore.at(source)
    dst_uri = loc.normalise(destination)
    if loc.exists(loc.join(dst_uri, TRACKS_TABLE)):
        raise StoreError(
            f"{dst_uri}: a store exists there already (remove it first, or choose another place)"
        )
    if loc.is_remote(dst_uri):
        loc.check_conditional_writes(dst_uri)
    report = AdminReport("copy", src.uri, dst_uri)
    opts = loc.storage_options() if loc.is_remote(dst_uri) else None
    src_opts = loc.storage_options() if loc.is_remote(src.uri) else None
    win_dst = loc.join(dst_uri, WINDOWS_TABLE)
    path = loc.local_path(dst_uri)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if loc.exists(win_dst):
        existing = lance.dataset(win_dst, storage_options=opts)
        done = set(existing.to_table(columns=["extraction_id"]).column("extraction_id").to_pylist())
    rows = src.ok_rows()
    eids = [r["extraction_id"] for r in rows.values() if r["extraction_id"] not in done]
    report.n_skipped = len(rows) - len(eids)
    win_src = lance.dataset(loc.join(src.uri, WINDOWS_TABLE), storage_options=src_opts)
    for start in range(0, len(eids), BATCH_TRACKS):
        chunk = eids[start : start + BATCH_TRACKS]
        quoted = ", ".join("'" + e + "'" for e in chunk)
        table = win_src.to_table(filter=f"extraction_id IN ({quoted})")
        mode = "append" if loc.exists(win_dst) else "create"
        try:
            lance.write_dataset(table, win_dst, mode=mode, storage_options=opts)
        except (OSError, ValueError, RuntimeError) as exc:
            raise storage_error(dst_uri, exc) from None
        if on_progress is not None:
            on_progress(report.n_skipped + start + len(chunk), len(rows))
    if not loc.exists(win_dst):  # an empty store
        lance.write_dataset(
            win_src.schema.empty_table(), win_dst, mode="create", storage_options=opts
        )
    state = src.read_side_file(STATE_FILE)
    if state is not None:  # before the tracks table: a store is never seen without it
        loc.write_bytes(loc.join(dst_uri, STATE_FILE), state)
    tracks_src = lance.dataset(loc.join(src.uri, TRACKS_TABLE), storage_options=src_opts)
    reader = tracks_src.scanner(batch_size=BATCH_TRACKS).to_reader()
    try:
        lance.write_dataset(
            reader,
            loc.join(dst_uri, TRACKS_TABLE),
            schema=tracks_src.schema,
            mode="create",
            storage_options=opts,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise storage_error(dst_uri, exc) from None
    for name in ("probe.json",):
        data = src.read_side_file(name)
        if data is not None:
            FeatureStore.at(dst_uri).write_side_file(name, data)
    copied = FeatureStore.at(dst_uri)
    report.n_tracks = len(copied)
    report.n_failures = len(copied.failures())
    return report


def compact(store: FeatureStore, *, retention_days: float = 7.0) -> AdminReport:
    """Merge small fragments of both tables and remove versions older than ``retention_days``
    (a reader holding an older version keeps working for that long)."""
    report = AdminReport("compact", store.uri, store.uri)
    older_than = _dt.timedelta(days=retention_days)
    for name in (TRACKS_TABLE, WINDOWS_TABLE):
        ds = store.open_table(name)
        before = len(ds.get_fragments())
        try:
            ds.optimize.compact_files()
            ds = store.open_table(name)
            stats = ds.cleanup_old_versions(older_than=older_than)
        except (OSError, ValueError, RuntimeError) as exc:
            raise storage_error(store.uri, exc) from None
        report.details[name] = {
            "fragments_before": before,
            "fragments_after": len(ds.get_fragments()),
            "old_versions_removed": int(getattr(stats, "old_versions", 0)),
            "bytes_removed": int(getattr(stats, "bytes_removed", 0)),
        }
    report.n_tracks = len(store)
    return report


def verify(
    store: FeatureStore, *, repair: bool = False, on_progress: Progress | None = None
) -> AdminReport:
    """Read every stored track and check its windows and digest against its record. Damaged
    tracks are listed in ``details["damaged"]``; with ``repair`` they are removed from the
    store, so the next ``mess extract`` redoes them."""
    report = AdminReport("verify", store.uri, store.uri)
    damaged: dict[str, str] = {}
    ids = store.track_ids()
    for i, tid in enumerate(ids):
        try:
            store.read_arrays(tid)
        except StoreError as exc:
            damaged[tid] = str(exc)
        if on_progress is not None:
            on_progress(i + 1, len(ids))
    report.n_tracks = len(ids)
    report.details["damaged"] = damaged
    if repair and damaged:
        with store.writer():
            for tid in damaged:
                store.remove(tid)
    return report
