"""Fitted aspect spaces kept with their store (``aspect_spaces.json``).

``save_space`` writes a space into the store's side file (one entry per aspect, replacing an
older one, with a checksum of its content), ``load_spaces`` reads them back and marks each fresh
or stale, ``verify_spaces`` reports which entries are intact (``mess index --verify``).

The side file (documented in ``docs/aspect-spaces.md``)::

    {"format": "mess-aspect-spaces", "version": 1,
     "spaces": {NAME: {"aspect", "kind", "sources", "layers", "method", "dim", "evidence",
                       "fingerprint", "created", "mean": [...], "components": [[...], ...]}}}
"""

from __future__ import annotations

import json
from typing import Any

from messai.analysis.aspect_space import AspectSpace, dict_checksum
from messai.errors import ConfigError

SIDE_FILE = "aspect_spaces.json"
FORMAT = "mess-aspect-spaces"


def fit_suggestion(store, name: str, *, refit: bool = False, quote=str) -> str:
    """What to run to fit (or refit) a space for ``name``: a command that works as given (a
    built-in aspect, or a label of the store: ``--from label:NAME``), else what is missing."""
    from messai.analysis.aspects import ASPECTS

    base = f"mess aspects fit --dataset {quote(store.dataset)} --aspect {quote(name)}"
    if refit:
        spaces = _read(store)
        d = spaces.get(name) or {}
        if d.get("kind") == "label" and d.get("sources"):
            base += f" --from label:{quote(d['sources'][0])}"
        return base
    if name in ASPECTS:
        return f"fit one: {base}"
    if any(name in store.labels(t) for t in store.track_ids()[:50]):
        return f"fit one: {base} --from label:{quote(name)}"
    return (
        f"{name!r} is neither a built-in aspect ({', '.join(ASPECTS)}) nor a label of "
        f"{store.dataset!r}; to fit a space for it say what defines it: {base} --from target:NAME"
    )


def _read(store) -> dict[str, Any]:
    raw = store.read_side_file(SIDE_FILE)
    if raw is None:
        return {}
    try:
        saved = json.loads(raw.decode("utf-8"))
        if saved.get("format") != FORMAT:
            raise ValueError("not an aspect-spaces file")
        return dict(saved["spaces"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{store.uri}/{SIDE_FILE}: unreadable aspect spaces ({exc}); fit them again with 'mess aspects fit'"
        ) from None


def save_space(store, space: AspectSpace) -> str:
    """Add (or replace) ``space`` in the store's ``aspect_spaces.json``; return its location."""
    spaces = _read(store)
    entry = space.to_dict()
    spaces[space.name] = {**entry, "checksum": dict_checksum(entry)}
    text = json.dumps({"format": FORMAT, "version": 1, "spaces": spaces}, ensure_ascii=False)
    return store.write_side_file(SIDE_FILE, (text + "\n").encode("utf-8"))


def remove_space(store, name: str) -> bool:
    """Drop ``name`` from the store's spaces; False when it was not there."""
    spaces = _read(store)
    if spaces.pop(name, None) is None:
        return False
    text = json.dumps({"format": FORMAT, "version": 1, "spaces": spaces}, ensure_ascii=False)
    store.write_side_file(SIDE_FILE, (text + "\n").encode("utf-8"))
    return True


def load_spaces(store) -> dict[str, tuple[AspectSpace, bool]]:
    """Aspect name → (its fitted space, stale?) where stale means the store's features, targets
    or labels changed after the fit."""
    spaces = _read(store)
    if not spaces:
        return {}
    now = store.fingerprint(probe_inputs=True)
    out = {}
    for name, d in spaces.items():
        problem = space_file_problem(d)
        if problem is not None:
            raise ConfigError(
                f"{store.uri}/{SIDE_FILE}: space {name!r} {problem}; fit it again "
                f"({fit_suggestion(store, name, refit=True)})"
            )
        try:
            space = AspectSpace.from_dict(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{store.uri}/{SIDE_FILE}: space {name!r} is damaged ({exc}); fit it again"
            ) from None
        out[name] = (space, space.fingerprint != now)
    return out


def space_file_problem(d: Any) -> str | None:
    """Why a saved space entry must not be used (None when it is intact): its checksum does
    not match its content (the file was edited after the fit), or it has none (saved by an
    older mess: content unverifiable)."""
    if not isinstance(d, dict):
        return "is not an object"
    if "checksum" not in d:
        return "has no checksum (saved by an older mess; its content cannot be verified)"
    if d["checksum"] != dict_checksum(d):
        return "was edited after it was fitted (its checksum does not match its content)"
    return None


def verify_spaces(store) -> list[dict[str, Any]]:
    """``[{"space", "status", "path", "fitted"}]`` per saved space: ``ok`` or why it is unusable
    (for ``mess index --verify``); ``fitted`` is the ``AspectSpace`` when intact, else None."""
    rows = []
    for name, d in _read(store).items():
        problem = space_file_problem(d)
        rows.append(
            {
                "space": name,
                "status": "ok" if problem is None else f"damaged: {problem}",
                "path": f"{store.uri}/{SIDE_FILE}",
                "fitted": AspectSpace.from_dict(d) if problem is None else None,
            }
        )
    return rows
