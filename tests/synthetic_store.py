"""Feature stores with synthetic features for tests: see :mod:`messai.bench.synthetic`."""

from messai.bench.synthetic import clustered_store as make_store

__all__ = ["make_store"]
