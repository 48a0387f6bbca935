"""Error types. The library raises these; the CLI turns each into one line on stderr."""

from __future__ import annotations


class MessError(Exception):
    """Base class for every error mess reports to a user as one clear line."""

    exit_code: int = 2


class ConfigError(MessError):
    """Bad settings: unknown config key, invalid value, conflicting options."""


class DeviceError(MessError):
    """A requested device or precision is not available here."""


class ModelError(MessError):
    """A checkpoint cannot be found, downloaded, or is not a MERT model we can load."""


class AudioError(MessError):
    """One audio file cannot be used (unreadable, truncated, too short, NaN samples ...)."""


class StoreError(MessError):
    """A feature store is missing, locked by another writer, or inconsistent."""


class DatasetError(MessError):
    """A dataset folder or its metadata is malformed."""


class TrackNotFoundError(MessError):
    """A track id is not in a store."""


class SearchIndexError(MessError):
    """A FAISS index is missing or stale."""
