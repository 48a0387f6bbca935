"""Regenerate mess's demo set: public-domain scores from music21's corpus, rendered with FluidSynth.

Needed only to rebuild ``data/demo/``; the demo itself uses the shipped files. Requirements
(outside the project's environment, on purpose)::

    apt-get install fluidsynth fluid-soundfont-gm          # FluidSynth + FluidR3_GM (MIT)
    python3 -m venv /tmp/demo-venv
    /tmp/demo-venv/bin/pip install music21==10.5.1 soundfile numpy
    /tmp/demo-venv/bin/python data/demo/make_demo.py [--out data/demo] [--seconds 15]

For each work × instrument: parse the score, set one tempo and one General MIDI program for
every part, write MIDI, render it at 24 kHz with FluidSynth (its default reverb and chorus),
downmix to mono, cut ``--seconds`` from the first note, fade the last 0.75 s, apply one gain
per file (RMS to -20 dBFS, peak at most -1 dBFS: no compression, so the dynamics inside a file
stay as rendered) and write OGG Vorbis as ``<instrument>/<work>.ogg``. Then ``metadata.csv``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 24_000
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RMS_DBFS = -20.0
PEAK_DBFS = -1.0
FADE_SECONDS = 0.75
VORBIS_QUALITY = 0.45  # soundfile's compression_level: 0 = best quality ... 1 = smallest


@dataclass(frozen=True)
class Work:
    slug: str  # file name and ``work`` label
    composer: str
    key: str
    corpus_path: str  # path inside music21's corpus
    qpm: float  # tempo, quarter notes per minute


@dataclass(frozen=True)
class Instrument:
    name: str  # folder name and ``instrument`` label
    program: int  # General MIDI program, 0-based


WORKS = (
    Work("bach_bwv846_prelude", "Bach", "C major", "bach/bwv846.mxl", 72),
    Work("bach_bwv66_6_chorale", "Bach", "F# minor", "bach/bwv66.6.mxl", 66),
    Work("mozart_k155_allegro", "Mozart", "D major", "mozart/k155/movement1.mxl", 132),
    Work("beethoven_op18no1_allegro", "Beethoven", "F major", "beethoven/opus18no1/movement1.mxl", 168),
    Work("schumann_op41no1_introduzione", "Schumann", "A minor", "schumann_robert/opus41no1/movement1.mxl", 60),
    Work("joplin_maple_leaf_rag", "Joplin", "Ab major", "joplin/maple_leaf_rag.mxl", 92),
)

INSTRUMENTS = (
    Instrument("piano", 0),  # Acoustic Grand Piano
    Instrument("strings", 48),  # String Ensemble 1
    Instrument("organ", 19),  # Church Organ
    Instrument("guitar", 24),  # Acoustic Guitar (nylon)
)


def score_to_midi(score, work: Work, instrument: Instrument, midi_path: Path) -> None:
    """Give every part of (a copy of) ``score`` one tempo and ``instrument``'s program; MIDI."""
    from music21 import instrument as m21instrument, tempo

    score = copy.deepcopy(score)
    for mark in list(score.recurse().getElementsByClass(tempo.TempoIndication)):
        mark.activeSite.remove(mark)
    rng = np.random.default_rng(zlib.crc32(f"{work.slug}/{instrument.name}".encode()))
    for part in score.parts:
        for old in list(part.recurse().getElementsByClass(m21instrument.Instrument)):
            old.activeSite.remove(old)
        new = m21instrument.Instrument()
        new.midiProgram = instrument.program
        part.insert(0, new)
        part.insert(0, tempo.MetronomeMark(number=work.qpm))
        for note in part.recurse().notes:  # a little human unevenness on top of the dynamics
            realized = note.volume.getRealized(useDynamicContext=True)
            note.volume.velocity = int(np.clip(realized * 127 + rng.normal(0, 5), 20, 127))
    score.write("midi", fp=str(midi_path))


def render(midi_path: Path, wav_path: Path) -> np.ndarray:
    """FluidSynth ``midi_path`` -> mono float32 at SAMPLE_RATE."""
    subprocess.run(
        ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(SAMPLE_RATE),
         "-F", str(wav_path), str(SOUNDFONT), str(midi_path)],
        check=True, capture_output=True,
    )
    audio, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    assert sr == SAMPLE_RATE, sr
    return audio.mean(axis=1)


def excerpt(audio: np.ndarray, seconds: float) -> np.ndarray:
    """``seconds`` from the first audible sample, faded out, one gain applied."""
    loud = np.flatnonzero(np.abs(audio) > 10 ** (-50 / 20) * np.abs(audio).max())
    start = max(int(loud[0]) - int(0.02 * SAMPLE_RATE), 0)
    n = int(round(seconds * SAMPLE_RATE))
    clip = audio[start:start + n].astype(np.float64)
    if len(clip) < n:
        raise SystemExit(f"render is only {len(clip) / SAMPLE_RATE:.1f} s, need {seconds} s")
    fade = int(FADE_SECONDS * SAMPLE_RATE)
    clip[-fade:] *= np.linspace(1.0, 0.0, fade) ** 2
    clip[: int(0.005 * SAMPLE_RATE)] *= np.linspace(0.0, 1.0, int(0.005 * SAMPLE_RATE))
    rms = np.sqrt(np.mean(clip**2))
    gain = min(10 ** (RMS_DBFS / 20) / rms, 10 ** (PEAK_DBFS / 20) / np.abs(clip).max())
    return (clip * gain).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    from music21 import corpus

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for work in WORKS:
            score = corpus.parse(work.corpus_path)
            for inst in INSTRUMENTS:
                midi, wav = Path(tmp, "x.mid"), Path(tmp, "x.wav")
                score_to_midi(score, work, inst, midi)
                clip = excerpt(render(midi, wav), args.seconds)
                out = args.out / inst.name / f"{work.slug}.ogg"
                out.parent.mkdir(parents=True, exist_ok=True)
                sf.write(out, clip, SAMPLE_RATE, format="OGG", subtype="VORBIS",
                         compression_level=VORBIS_QUALITY)
                rows.append({"track_id": f"{inst.name}/{work.slug}", "composer": work.composer,
                             "work": work.slug, "instrument": inst.name, "key": work.key})
                print(f"{out}  {out.stat().st_size / 1024:.0f} KiB")
    with open(args.out / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["track_id"]))


if __name__ == "__main__":
    main()
