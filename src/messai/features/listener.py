"""The progress protocol of an extraction run (import-light: the CLI loads it at start)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from messai.datasets.base import TrackInfo
    from messai.features.extractor import TrackResult
    from messai.features.pipeline import ExtractionPlan


class ExtractionListener:
    """Progress of an extraction run. Override what you need; every method defaults to nothing.

    ``on_plan`` is called once, before any model work; ``on_window`` after each window is
    decoded (``seconds`` of audio); ``on_track`` when a track is finished (stored, or failed
    with ``result.error`` set).
    """

    def on_plan(self, plan: ExtractionPlan) -> None:
        """Called once with what will be done."""

    def on_window(self, track: TrackInfo, seconds: float) -> None:
        """Called after each decoded window."""

    def on_track(self, result: TrackResult) -> None:
        """Called when a track is finished (stored or failed)."""

    def on_notice(self, text: str) -> None:
        """Called with a one-line notice (e.g. waiting for another writer)."""
