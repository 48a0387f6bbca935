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
    lance_failure,
    storage_error,
)
from messai.features.store_arrow import METADATA_KEY

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

    The copy is of one consistent state: a version of the tracks table and a version of the
    windows table that holds every window of those tracks (a writer may be committing
    meanwhile; its later commits are not copied). The windows are copied first, in batches
    (a re-run skips what is there); the side files next (``store.json``, probe results,
    fitted aspect spaces, …); the tracks table, which makes the destination a store, last,
    in one commit. Until then nobody can open the destination as a store. The copy takes
    the name of the dataset folder it lands in (``<stores>/<dataset>/<model>``).
    """
    import json

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
    tracks_version, windows_version, rows = _consistent_versions(src)
    report.details = {"tracks_version": tracks_version, "windows_version": windows_version}
    win_dst = loc.join(dst_uri, WINDOWS_TABLE)
    path = loc.local_path(dst_uri)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if loc.exists(win_dst):
        existing = lance.dataset(win_dst, storage_options=opts)
        done = set(existing.to_table(columns=["extraction_id"]).column("extraction_id").to_pylist())
    eids = [r["extraction_id"] for r in rows.values() if r["extraction_id"] not in done]
    report.n_skipped = len(rows) - len(eids)
    win_src = src.open_table(WINDOWS_TABLE, version=windows_version)
    for start in range(0, len(eids), BATCH_TRACKS):
        chunk = eids[start : start + BATCH_TRACKS]
        quoted = ", ".join("'" + e + "'" for e in chunk)
        table = win_src.to_table(filter=f"extraction_id IN ({quoted})")
        mode = "append" if loc.exists(win_dst) else "create"
        try:
            lance.write_dataset(table, win_dst, mode=mode, storage_options=opts)
        except BaseException as exc:
            if not lance_failure(exc):
                raise
            raise storage_error(dst_uri, exc) from None
        if on_progress is not None:
            on_progress(report.n_skipped + start + len(chunk), len(rows))
    if not loc.exists(win_dst):  # an empty store
        lance.write_dataset(
            win_src.schema.empty_table(), win_dst, mode="create", storage_options=opts
        )
    tracks_src = src.open_table(TRACKS_TABLE, version=tracks_version)
    meta = json.loads(tracks_src.schema.metadata[METADATA_KEY])
    name = _dataset_of(dst_uri) or meta["dataset"]
    meta["dataset"] = name
    # side files before the tracks table: a store is never seen without them
    for file in loc.list_files(src.uri):
        if file == STATE_FILE or FeatureStore._SIDE_FILE.fullmatch(file):
            data = loc.read_bytes(loc.join(src.uri, file))
            if data is None:
                continue
            if file == STATE_FILE:
                state = json.loads(data)
                state.update({k: v for k, v in meta.items()}, dataset=name)
                state.pop("pending", None)
                data = (json.dumps(state, ensure_ascii=False, indent=1) + "\n").encode()
            try:
                loc.write_bytes(loc.join(dst_uri, file), data)
            except OSError as exc:
                raise storage_error(dst_uri, exc) from None
    schema = tracks_src.schema.with_metadata(
        {METADATA_KEY: json.dumps(meta, ensure_ascii=False).encode()}
    )
    reader = tracks_src.scanner(batch_size=BATCH_TRACKS).to_reader()
    try:
        lance.write_dataset(
            reader,
            loc.join(dst_uri, TRACKS_TABLE),
            schema=schema,
            mode="create",
            storage_options=opts,
        )
    except BaseException as exc:
        if not lance_failure(exc):
            raise
        raise storage_error(dst_uri, exc) from None
    copied = FeatureStore.at(dst_uri)
    report.n_tracks = len(copied)
    report.n_failures = len(copied.failures())
    missing = set(copied.ok_rows()) - copied.window_counts_ok()
    if missing:  # cannot happen with a consistent pair; never report a damaged copy as done
        raise StoreError(
            f"{dst_uri}: the copy lacks windows of {len(missing)} track(s) (first: "
            f"{sorted(missing)[0]!r}); remove it and copy again"
        )
    return report


def _dataset_of(uri: str) -> str | None:
    """The dataset folder a store location lies in, when it is a valid dataset name."""
    from messai.config import _DATASET_NAME

    parts = uri.rstrip("/").rsplit("/", 2)
    return parts[1] if len(parts) == 3 and _DATASET_NAME.fullmatch(parts[1]) else None


def _consistent_versions(
    store: FeatureStore, *, tries: int = 20
) -> tuple[int, int, dict[str, dict[str, Any]]]:
    """A version of the tracks table and one of the windows table that holds every window
    of its stored tracks, and the rows (no vectors) of that tracks version. A writer commits
    windows first and deletes replaced ones last, so reading the tracks version first and
    the windows version after it almost always gives a matching pair; when a writer's
    commit fell in between, read both again."""
    from messai.features.store import FeatureStore as _FS

    for attempt in range(tries):
        tracks = store.open_table(TRACKS_TABLE)
        try:
            table = tracks.to_table(columns=list(_FS._META_COLUMNS))
        except BaseException as exc:
            if not lance_failure(exc):
                raise
            raise storage_error(store.uri, exc) from None
        rows = {r["track_id"]: r for r in table.to_pylist() if r["status"] == "ok"}
        windows = store.open_table(WINDOWS_TABLE)
        counts: dict[str, int] = {}
        for e in windows.to_table(columns=["extraction_id"]).column("extraction_id").to_pylist():
            counts[e] = counts.get(e, 0) + 1
        if all(counts.get(r["extraction_id"], 0) == r["n_segments"] for r in rows.values()):
            return int(tracks.version), int(windows.version), rows
        import time

        time.sleep(0.05 * (attempt + 1))
    raise StoreError(
        f"{store.uri}: no consistent state to copy (a writer keeps changing the store, or "
        f"tracks lack windows: see 'mess store verify --at {store.uri}'); run again later"
    )


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
        except BaseException as exc:
            if not lance_failure(exc):
                raise
            raise storage_error(store.uri, exc) from None
        report.details[name] = {
            "fragments_before": before,
            "fragments_after": len(ds.get_fragments()),
            "old_versions_removed": int(getattr(stats, "old_versions", 0)),
            "bytes_removed": int(getattr(stats, "bytes_removed", 0)),
        }
    report.n_tracks = len(store)
    return report


#: ``verify --repair`` removes at most this many tracks without ``force``: more damage at once
#: usually means a table or the store's description is damaged, not the tracks themselves
REPAIR_LIMIT = 5


def verify(
    store: FeatureStore,
    *,
    repair: bool = False,
    force: bool = False,
    on_progress: Progress | None = None,
) -> AdminReport:
    """Check both tables, then read every stored track and check its windows and digest
    against its record.

    Damaged tables are listed in ``details["tables"]`` (table → what is wrong), damaged
    tracks in ``details["damaged"]`` (id → why). With ``repair``: a damaged table is brought
    back to what can still be read (unreadable newest versions are rolled back, unreadable
    data files are dropped, a table with nothing readable left is recreated empty; see
    docs/store-format.md), then damaged tracks are removed from the store, so the next
    ``mess extract`` redoes them from their sources. A repair that would remove more than
    ``REPAIR_LIMIT`` tracks, or touch a damaged table, stops with a StoreError saying why
    unless ``force``.
    """
    report = AdminReport("verify", store.uri, store.uri)
    tables = {
        name: why for name in (TRACKS_TABLE, WINDOWS_TABLE) if (why := _table_damage(store, name))
    }
    report.details["tables"] = dict(tables)
    if tables and repair:
        if not force:
            raise StoreError(
                f"{store.uri}: {_describe(tables)}; repairing loses what cannot be read (the "
                "tracks concerned are then redone by 'mess extract' from their sources). "
                "Nothing was changed; run again with --repair --force to repair it"
            )
        report.details["repaired_tables"] = {
            name: _repair_table(store, name)
            for name in (TRACKS_TABLE, WINDOWS_TABLE)
            if name in tables
        }
        store = FeatureStore.at(store.uri)
        report.details["tables"] = {
            name: why
            for name in (TRACKS_TABLE, WINDOWS_TABLE)
            if (why := _table_damage(store, name))
        }
        if report.details["tables"]:
            raise StoreError(f"{store.uri}: repair failed: {_describe(report.details['tables'])}")
    elif TRACKS_TABLE in tables:  # no track can be read
        report.details["damaged"] = {}
        return report
    damaged: dict[str, str] = {}
    store = FeatureStore.at(store.uri)
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
        if len(damaged) > REPAIR_LIMIT and not force:
            raise StoreError(
                f"{store.uri}: {len(damaged)} of {len(ids)} tracks look damaged; --repair removes "
                f"at most {REPAIR_LIMIT} without --force, because damage this wide usually lies "
                "elsewhere (a table, or the store moved or edited by hand). Nothing was removed; "
                "look at 'mess store verify' first, then run again with --repair --force to "
                "remove them ('mess extract' redoes them)"
            )
        with store.writer():
            for tid in damaged:
                store.remove(tid)
        report.details["removed"] = sorted(damaged)
    return report


def _describe(tables: dict[str, str]) -> str:
    return "; ".join(f"{name} is damaged ({why})" for name, why in tables.items())


def _open_version(store: FeatureStore, name: str, version: int | None = None):
    import lance

    opts = loc.storage_options() if loc.is_remote(store.uri) else None
    return lance.dataset(loc.join(store.uri, name), version=version, storage_options=opts)


def _fragment_damage(fragment) -> str | None:
    """Why a fragment cannot be read in full, or None."""
    try:
        for _ in fragment.to_batches(batch_size=1024):
            pass
    except BaseException as exc:
        if not lance_failure(exc):
            raise
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _table_damage(store: FeatureStore, name: str) -> str | None:
    """Why a table cannot be read in full (its latest version, every data file), or None."""
    try:
        ds = _open_version(store, name)
        fragments = ds.get_fragments()
    except BaseException as exc:
        if not lance_failure(exc):
            raise
        return f"its latest version cannot be opened: {_first_line(exc)}"
    bad = {f.fragment_id: why for f in fragments if (why := _fragment_damage(f))}
    if bad:
        first = next(iter(bad.values()))
        return f"{len(bad)} of {len(fragments)} data files cannot be read: {first}"
    return None


def _manifest_versions(table_uri: str) -> list[int]:
    """Versions that have a manifest file, newest first (both Lance naming schemes)."""
    out = []
    for file in loc.list_files(loc.join(table_uri, "_versions")):
        stem, _, ext = file.partition(".")
        if ext != "manifest" or not stem.isdigit():
            continue
        n = int(stem)
        out.append((2**64 - 1 - n, file) if n > 2**63 else (n, file))
    return sorted(out, reverse=True)


def _repair_table(store: FeatureStore, name: str) -> str:
    """Bring one damaged table back to what can be read; returns what was done."""
    import lance

    table_uri = loc.join(store.uri, name)
    done = []
    try:
        ds = _open_version(store, name)
    except BaseException as exc:
        if not lance_failure(exc):
            raise
        ds = None
        versions = _manifest_versions(table_uri)
        for i, (version, _file) in enumerate(versions):
            try:
                ds = _open_version(store, name, version)
                ds.get_fragments()
            except BaseException as exc:
                if not lance_failure(exc):
                    raise
                ds = None
                continue
            for _v, newer in versions[:i]:  # unreadable: the readable version becomes latest
                loc.remove_file(loc.join(table_uri, "_versions", newer))
            hint = loc.join(table_uri, "_versions", "latest_version_hint.json")
            loc.remove_file(hint)
            done.append(f"rolled back from version {versions[0][0]} to {version}")
            ds = _open_version(store, name)
            break
    if ds is None:
        _recreate_empty(store, name)
        return "nothing readable was left: recreated empty"
    bad = [f.fragment_id for f in ds.get_fragments() if _fragment_damage(f)]
    if bad:
        n_rows = sum(f.count_rows() for f in ds.get_fragments() if f.fragment_id in bad)
        opts = loc.storage_options() if loc.is_remote(store.uri) else None
        try:
            lance.LanceDataset.commit(
                table_uri,
                lance.LanceOperation.Delete([], bad, "false"),
                read_version=ds.version,
                storage_options=opts,
            )
        except BaseException as exc:
            if not lance_failure(exc):
                raise
            raise storage_error(store.uri, exc) from None
        done.append(f"dropped {len(bad)} unreadable data file(s) ({n_rows} rows)")
    return "; ".join(done) or "nothing to do"


def _recreate_empty(store: FeatureStore, name: str) -> None:
    """Replace a table with nothing readable by an empty one of the store's build (the build
    description comes from the tracks table, or from store.json when that is the table lost)."""
    import lance

    from messai.features.store import _STATE_KEYS, _read_state
    from messai.features.store_arrow import tracks_schema, windows_schema

    try:
        meta = dict(_read_meta_of(store))
    except StoreError:
        state = _read_state(store.uri)
        if state is None:
            raise StoreError(
                f"{store.uri}: the tracks table and store.json are both lost; restore the "
                "store from a copy, or remove it and run 'mess extract' again"
            ) from None
        meta = {k: v for k, v in state.items() if k not in _STATE_KEYS}
    n_layers, dim = int(meta["model"]["n_layers"]), int(meta["model"]["dim"])
    if name == TRACKS_TABLE:
        schema = tracks_schema(n_layers, dim, meta)
    else:
        schema = windows_schema(n_layers, dim, meta["settings"].get("store_dtype", "float16"))
    table_uri = loc.join(store.uri, name)
    loc.remove_tree(table_uri)
    opts = loc.storage_options() if loc.is_remote(store.uri) else None
    try:
        lance.write_dataset(schema.empty_table(), table_uri, mode="create", storage_options=opts)
    except BaseException as exc:
        if not lance_failure(exc):
            raise
        raise storage_error(store.uri, exc) from None


def _read_meta_of(store: FeatureStore) -> dict[str, Any]:
    from messai.features.store import _read_meta

    return _read_meta(loc.join(store.uri, TRACKS_TABLE))
