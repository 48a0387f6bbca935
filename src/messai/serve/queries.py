"""The answers of the HTTP API as JSON-ready dicts, each made by the library's own calls.

A ``similar`` answer *is* ``LayerBasedRecommender.recommend_by_id(...).to_dict()`` (the JSON of
``mess recommend --format json``: the same ids, similarities, ``validated`` and ``caveat``), with
paging fields added; ``recommend`` is ``recommend_by_examples``. Nothing here ranks, filters or
scores on its own. No FastAPI here: the route layer (:mod:`messai.serve.app`) turns these into
responses.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Any

from messai.errors import ConfigError, TrackNotFoundError

#: most results in one page (``k``, ``limit``)
MAX_K = 100
#: deepest result reachable by paging (``offset + k``)
MAX_DEPTH = 1000
#: most example tracks in one playlist query
MAX_EXAMPLES = 100
#: longest ``where`` / search text
MAX_TEXT = 1000


# ---------------------------------------------------------------------------- cursors
def encode_cursor(offset: int) -> str:
    """An opaque cursor for the page starting at ``offset``."""
    raw = json.dumps({"o": int(offset)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The offset a cursor stands for (0 without one); ConfigError for anything else."""
    if not cursor:
        return 0
    try:
        pad = "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(cursor + pad))
        offset = data["o"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ConfigError(
            "invalid cursor: pass back the next_cursor of a previous answer"
        ) from None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ConfigError("invalid cursor: pass back the next_cursor of a previous answer")
    return offset


def json_ready(obj: Any) -> Any:
    """Non-finite floats → None (JSON has no NaN), as the CLI's JSON does."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def check_k(k: int, offset: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be within 1..{MAX_K}, got {k}")
    if offset + k > MAX_DEPTH:
        raise ConfigError(f"paging reaches at most result {MAX_DEPTH} (offset {offset} + k {k})")


def parse_max_per(text: str | None) -> tuple[str, int] | None:
    """``"composer:2"`` → ``("composer", 2)``."""
    if not text:
        return None
    label, _, n = text.rpartition(":")
    if not label or not n.strip().lstrip("-").isdigit():
        raise ConfigError(f"max_per {text!r}: expected LABEL:N, e.g. composer:2")
    return label, int(n)


def _check_text(name: str, value: str | None) -> None:
    if value is not None and len(value) > MAX_TEXT:
        raise ConfigError(f"{name} is longer than {MAX_TEXT} characters")


def _paged(result_dict: dict[str, Any], *, k: int, offset: int, n_tracks: int) -> dict[str, Any]:
    recs = result_dict["recommendations"]
    more = len(recs) == k and offset + k < min(MAX_DEPTH, n_tracks - 1)
    return {
        **result_dict,
        "k": k,
        "offset": offset,
        "next_cursor": encode_cursor(offset + k) if more else None,
    }


# ---------------------------------------------------------------------------- queries
def similar(
    snap,
    track_id: str,
    *,
    aspects: Sequence[str] = ("spectral_brightness",),
    space: str = "auto",
    layer: int | None = None,
    k: int = 10,
    where: str | None = None,
    max_per: tuple[str, int] | None = None,
    explain: bool = False,
    cursor: str | None = None,
) -> dict[str, Any]:
    """``recommend_by_id`` of the snapshot's recommender for ``space``, paged."""
    offset = decode_cursor(cursor)
    check_k(k, offset)
    _check_text("where", where)
    rec = snap.recommender(space)
    result = _by_id(
        rec,
        track_id,
        list(aspects) or ["spectral_brightness"],
        k,
        layer=layer,
        where=where,
        max_per=max_per,
        explain=explain,
        offset=offset,
    )
    return _paged(result.to_dict(), k=k, offset=offset, n_tracks=len(rec.tracks))


def examples(
    snap,
    positive: Sequence[str],
    negative: Sequence[str] = (),
    *,
    aspects: Sequence[str] = ("spectral_brightness",),
    space: str = "auto",
    layer: int | None = None,
    k: int = 10,
    where: str | None = None,
    max_per: tuple[str, int] | None = None,
    explain: bool = False,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Playlist shaping: tracks like ``positive`` and unlike ``negative``, paged."""
    offset = decode_cursor(cursor)
    check_k(k, offset)
    _check_text("where", where)
    if len(positive) + len(negative) > MAX_EXAMPLES:
        raise ConfigError(f"at most {MAX_EXAMPLES} example tracks in one query")
    rec = snap.recommender(space)
    result = _by_examples(
        rec,
        list(positive),
        list(negative),
        list(aspects) or ["spectral_brightness"],
        k,
        layer=layer,
        where=where,
        max_per=max_per,
        explain=explain,
        offset=offset,
    )
    return _paged(result.to_dict(), k=k, offset=offset, n_tracks=len(rec.tracks))


def _by_id(rec, track_id, aspects, k, *, layer, where, max_per, explain, offset):
    return rec.recommend_by_id(
        track_id,
        aspects,
        k,
        layer=layer,
        where=where,
        max_per=max_per,
        explain=explain,
        offset=offset,
    )


def _by_examples(rec, positive, negative, aspects, k, *, layer, where, max_per, explain, offset):
    return rec.recommend_by_examples(
        positive,
        negative,
        aspects,
        k,
        layer=layer,
        where=where,
        max_per=max_per,
        explain=explain,
        offset=offset,
    )


# ---------------------------------------------------------------------------- tracks
def tracks_page(snap, *, q: str | None = None, cursor: str | None = None, limit: int = 50):
    """Stored tracks whose id or a label value contains ``q`` (case-insensitive), sorted by id,
    ``limit`` per page."""
    if not 1 <= limit <= MAX_K:
        raise ConfigError(f"limit must be within 1..{MAX_K}, got {limit}")
    _check_text("q", q)
    offset = decode_cursor(cursor)
    ids, text, starts = snap.memo("track_search", lambda: _search_texts(snap))
    needle = (q or "").strip().casefold()
    cat = snap.recommender("auto").tracks
    hits: list[int] = []
    if not needle:
        hits = list(range(offset, min(len(ids), offset + limit + 1)))
    elif "\n" not in needle and "\x00" not in needle:
        from bisect import bisect_right

        pos = starts[offset] if offset < len(ids) else len(text)
        while len(hits) <= limit:
            pos = text.find(needle, pos)
            if pos < 0:
                break
            i = bisect_right(starts, pos) - 1
            hits.append(i)
            pos = starts[i + 1] if i + 1 < len(starts) else len(text)
    more = len(hits) > limit
    hits = hits[:limit]
    return {
        "dataset": snap.dataset,
        "q": q or "",
        "n_tracks": len(ids),
        "tracks": [{"track_id": ids[i], "labels": cat.labels(ids[i])} for i in hits],
        "next_cursor": encode_cursor(hits[-1] + 1) if more else None,
    }


def _search_texts(snap) -> tuple[list[str], str, list[int]]:
    """Sorted ids, the case-folded text a search scans (per track its id and label values,
    ``\\x00`` between them and ``\\n`` between tracks, so no match spans two of them) and where
    each track's part starts."""
    cat = snap.recommender("auto").tracks
    ids = cat.track_ids()
    parts = [
        "\x00".join([t, *(str(v) for v in cat.labels(t).values())]).casefold().replace("\n", " ")
        for t in ids
    ]
    starts, pos = [], 0
    for p in parts:
        starts.append(pos)
        pos += len(p) + 1
    return ids, "\n".join(parts), starts


def track_info(snap, track_id: str, *, audio_url: str) -> dict[str, Any]:
    """One stored track: labels, duration, windows, status, and whether its audio plays."""
    from messai.features.records import nfc
    from messai.serve.audio import playable_type, source_path

    store = snap.store
    tid = nfc(track_id)
    entry = store.get_entry(tid)
    if entry is None:
        snap.recommender("auto").tracks.require_track(tid)  # the library's message
        raise TrackNotFoundError(f"unknown track {track_id!r} in dataset {snap.dataset!r}")
    failure = store.failures().get(tid)
    path = source_path(store.source_root, entry.source)
    if failure is not None:
        status = f"stale: kept from an earlier run; last extraction failed: {failure.reason}"
    elif path is None:
        status = "missing"
    else:
        status = "ok"
    playable = path is not None and playable_type(path) is not None
    return {
        "dataset": snap.dataset,
        "track_id": tid,
        "labels": entry.labels,
        "duration_seconds": round(entry.duration_seconds, 3),
        "n_segments": entry.n_segments,
        "status": status,
        "audio": {
            "available": path is not None,
            "playable": playable,
            "format": (path.suffix.lower().lstrip(".") if path is not None else None),
            "url": audio_url if playable else None,
        },
    }


# ---------------------------------------------------------------------------- evidence
def aspects(snap) -> dict[str, Any]:
    """The aspect → layer map with its held-out evidence and validation (``mess aspects``'s
    rows), and every fitted aspect space with its cross-validated evidence."""
    from messai.analysis.aspect_fit import load_spaces
    from messai.analysis.aspects import aspect_map

    store = snap.store
    mapping = aspect_map(store)
    rows = [e.to_dict() for e in mapping.values()]
    spaces = []
    for name, (space, stale) in load_spaces(store).items():
        spaces.append({**space.describe(), "aspect": name, "stale": stale})
    return {
        "dataset": snap.dataset,
        "probe_stale": any(e.stale for e in mapping.values()),
        "aspects": rows,
        "spaces": spaces,
    }


def probe(snap) -> dict[str, Any]:
    """The saved probe results (``mess probe --format json``), with per-target validation."""
    from messai.analysis.aspects import load_probe
    from messai.analysis.results import ProbeResults

    store = snap.store
    results, meta = load_probe(store)
    if results is None:
        raise ProbeMissing(
            f"dataset {snap.dataset!r} has no probe results; run 'mess probe --dataset {snap.dataset}'"
        )
    parsed = ProbeResults.from_dict(results)
    min_r2 = (meta or {}).get("min_r2")
    validation = {}
    for name, res in parsed.targets.items():
        best = res.best_layer
        kwargs = {} if min_r2 is None else {"min_r2": float(min_r2)}
        why = [] if best is None else res.validation_failures(best, **kwargs)
        validation[name] = {
            "best_layer": best,
            "validated": best is not None and not why,
            "caveat": None if best is not None and not why else ("; ".join(why) or "no finite R²"),
        }
    return {
        "dataset": snap.dataset,
        "results": results,
        "meta": meta,
        "validation": validation,
        "stale": bool(meta)
        and meta.get("store_fingerprint") != store.fingerprint(probe_inputs=True),
    }


def heatmap(snap, fmt: str) -> bytes:
    """The probe heat-map (``mess probe --plot``) as PNG or SVG bytes, made once per state."""
    if fmt not in ("png", "svg"):
        raise ConfigError(f"heat-map format {fmt!r}: choose png or svg")

    def make() -> bytes:
        import tempfile
        from pathlib import Path

        from messai.analysis.aspects import load_probe
        from messai.analysis.results import ProbeResults
        from messai.plots import probe_heatmap

        results, _ = load_probe(snap.store)
        if results is None:
            raise ProbeMissing(
                f"dataset {snap.dataset!r} has no probe results; run 'mess probe --dataset {snap.dataset}'"
            )
        with tempfile.TemporaryDirectory(prefix="mess-heatmap-") as tmp:
            out = probe_heatmap(
                ProbeResults.from_dict(results),
                Path(tmp) / f"heatmap.{fmt}",
                title=f"{snap.dataset} · {snap.store.model_id}",
            )
            return out.read_bytes()

    return snap.memo(f"heatmap.{fmt}", make)


class ProbeMissing(TrackNotFoundError):
    """No probe results saved with the store (HTTP 404)."""
