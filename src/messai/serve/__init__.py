"""``mess serve``: the library's query path over HTTP (FastAPI + uvicorn, the ``serve`` extra)
and a static listening page.

- :mod:`messai.serve.live` — which stores are served and the snapshot each request reads: a
  constant-time staleness check picks up a new extraction, a refit aspect space or a rebuilt
  index on the next request, and a store is never read while a writer holds it.
- :mod:`messai.serve.queries` — the answers (plain dicts), made by the library's own calls.
- :mod:`messai.serve.audio` — the source file of a track, only from inside its store's source
  root, with HTTP ranges.
- :mod:`messai.serve.app` — the FastAPI app: routes, bearer token, limits, one log line per
  request. Importing this package does not import FastAPI; only :mod:`~messai.serve.app` does.
"""

from __future__ import annotations

#: pip extra that brings FastAPI and uvicorn
EXTRA_HINT = (
    "mess serve needs the 'serve' extra: pip install 'messai[serve]' (or: uv sync --extra serve)"
)


def check_extra() -> None:
    """ConfigError naming the extra to install when FastAPI or uvicorn is missing."""
    import importlib.util

    from messai.errors import ConfigError

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{EXTRA_HINT} ({', '.join(missing)} not installed)")
