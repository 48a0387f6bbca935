"""Extraction engines other than the local one (``mess extract --engine``).

The local engine is :func:`messai.features.pipeline.local_engine`; ``ray``
(:mod:`messai.features.engines.ray_engine`) runs the same decode and model functions on a Ray
cluster. Importing this package imports nothing heavy.
"""

from __future__ import annotations

from messai.errors import ConfigError

ENGINES = ("local", "ray")
RAY_INSTALL_HINT = (
    "--engine ray needs Ray Data: pip install 'messai[ray]' (or: uv sync --extra ray)"
)


def require_ray() -> None:
    """ConfigError with one line saying what to install when Ray Data is missing.

    Also turns off Ray's ``uv run`` worker hook unless the user set it (it is read when ray is
    first imported): under ``uv run mess ...`` it would start every worker with ``uv run`` in
    a copy of the current folder, re-syncing a new environment there."""
    import os

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_INSTALL_HINT) from None
