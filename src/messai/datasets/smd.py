"""Saarland Music Data (SMD): piano recordings named ``Composer_Work-Movement_Performer_Date-SMD``.

File names look like ``Beethoven_Op027No1-01_003_20090916-SMD.mp3`` (the official download is
MP3; WAV/FLAC conversions work the same). Works without movements have no ``-NN`` part:
``Ravel_JeuxDEau_008_20110315-SMD``. A work name may itself contain a non-numeric hyphenated part
(``Liszt_AnnesDePelerinage-LectureDante_002_20110315-SMD``): only a trailing ``-<digits>`` is a
movement. The folder may be nested; MIDI files and other non-audio files are ignored.

Track ids: ``Composer_Work-Movement`` (``Beethoven_Op027No1-01``, the prototype's ids), or
``Composer_Work`` when there is no movement. When several files share that id (the same piece
by two performers, or on two dates), each of them gets a longer, unique id: ``<id>_<performer>``
when its performer is unique among them, else ``<id>_<performer>_<date>``. The same recording
twice (``x-SMD.mp3`` beside ``x-SMD.wav``) is a DatasetError naming both files.

Labels: composer, work (movement stripped, ``Beethoven_Op027No1``), movement (``01``; absent
when the work has none), performer (``003``), date (``20090916``).

An audio file whose name does not parse is skipped, with a line in the scan's ``warnings``:
one stray file does not stop a scan of the whole collection.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from messai.datasets.base import (
    TrackInfo,
    TrackList,
    check_root,
    iter_audio_files,
    normalize_text,
    validate_track_id,
)
from messai.errors import DatasetError

NAME = "smd"
DESCRIPTION = "Saarland Music Data: Composer_Work-Movement_Performer_Date-SMD audio files."
LABELS: tuple[str, ...] = ("composer", "work", "movement", "performer", "date")
OPTIONS: tuple[str, ...] = ()

_NAME = re.compile(
    r"^(?P<composer>[^_]+)_(?P<work>[^_]+?)(?:-(?P<movement>\d+))?"
    r"_(?P<performer>\d+)_(?P<date>\d{8})-SMD$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SmdName:
    """The parts of one SMD file name."""

    composer: str
    work: str
    movement: str | None
    performer: str
    date: str

    @property
    def base_id(self) -> str:
        """``Composer_Work-Movement`` (or ``Composer_Work``)."""
        piece = f"{self.work}-{self.movement}" if self.movement else self.work
        return f"{self.composer}_{piece}"

    def labels(self) -> dict[str, str]:
        labels = {
            "composer": self.composer,
            "work": f"{self.composer}_{self.work}",
            "movement": self.movement,
            "performer": self.performer,
            "date": self.date,
        }
        return {k: v for k, v in labels.items() if v}


def parse_name(stem: str) -> SmdName | None:
    """Parse a file name without extension; None when it is not an SMD name."""
    m = _NAME.match(normalize_text(stem))
    if m is None:
        return None
    return SmdName(**m.groupdict())


def detect(root: Path) -> bool:
    """True when more than half of the audio files under ``root`` have SMD names."""
    root = Path(root)
    if not root.is_dir():
        return False
    counts = Counter(parse_name(p.stem) is not None for p in iter_audio_files(root))
    return counts[True] > 0 and counts[True] > counts[False]


def scan(root: Path) -> TrackList:
    """All SMD recordings under ``root``, sorted by track id (see the module doc for ids)."""
    root = check_root(root)
    warnings: list[str] = []
    parsed: list[tuple[Path, SmdName]] = []
    for path in iter_audio_files(root):
        name = parse_name(path.stem)
        if name is None:
            warnings.append(
                f"{path}: skipped, not an SMD name (Composer_Work-Movement_Performer_Date-SMD)"
            )
        else:
            parsed.append((path, name))
    if not parsed:
        raise DatasetError(
            f"{root}: no SMD audio files (names like Beethoven_Op027No1-01_003_20090916-SMD.mp3)"
        )
    by_base: dict[str, list[tuple[Path, SmdName]]] = defaultdict(list)
    for path, name in parsed:
        by_base[name.base_id].append((path, name))
    tracks: list[TrackInfo] = []
    for base, group in by_base.items():
        for (path, name), tid in zip(group, _unique_ids(base, group)):
            tracks.append(TrackInfo(validate_track_id(tid), path, name.labels()))
    return TrackList(sorted(tracks, key=lambda t: t.track_id), warnings=warnings)


def _unique_ids(base: str, group: list[tuple[Path, SmdName]]) -> list[str]:
    """Ids for files sharing ``base``: the base alone, else + performer, else + performer + date."""
    if len(group) == 1:
        return [base]
    performers = Counter(name.performer for _, name in group)
    ids = [
        f"{base}_{name.performer}"
        if performers[name.performer] == 1
        else f"{base}_{name.performer}_{name.date}"
        for _, name in group
    ]
    first: dict[str, Path] = {}
    for tid, (path, _) in zip(ids, group):
        if tid in first:
            raise DatasetError(
                f"{path}: same recording as {first[tid]} (track id {tid!r}); keep one of them"
            )
        first[tid] = path
    return ids
