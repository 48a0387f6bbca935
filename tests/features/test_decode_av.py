"""Every format a music library holds (issue 14): what libsndfile cannot read (AAC and ALAC in
.m4a, WMA) is decoded through FFmpeg (PyAV); files that are not audio are listed as skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.cli import app
from messai.features.decode import audio_info, decode

av = pytest.importorskip("av")
runner = CliRunner()


def write_av(path: Path, codec: str, container: str, *, rate=44100, seconds=3.0) -> Path:
    """A 440 Hz stereo tone encoded by FFmpeg (PyAV) with ``codec`` in ``container``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(path), "w", format=container)
    stream = out.add_stream(codec, rate=rate, layout="stereo")
    if codec.startswith("wma"):
        stream.bit_rate = 128000
    t = np.arange(int(rate * seconds)) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
    frame.sample_rate = rate
    resampler = av.AudioResampler(
        format=stream.codec_context.format,
        layout="stereo",
        rate=rate,
        frame_size=stream.codec_context.frame_size or 1024,
    )
    for f in resampler.resample(frame) + resampler.resample(None):
        for packet in stream.encode(f):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return path


FORMATS = [("aac.m4a", "aac", "ipod"), ("alac.m4a", "alac", "ipod"), ("song.wma", "wmav2", "asf")]


@pytest.mark.parametrize("name,codec,container", FORMATS)
def test_ffmpeg_formats_decode(tmp_path, name, codec, container):
    path = write_av(tmp_path / name, codec, container)
    info = audio_info(path)
    assert info.sample_rate == 44100 and info.channels == 2
    assert info.format == f"ffmpeg:{codec}" and abs(info.duration_seconds - 3.0) < 0.2
    x = decode(path, 24000)
    assert abs(len(x) / 24000 - 3.0) < 0.1
    # the tone survives: most energy at 440 Hz
    spectrum = np.abs(np.fft.rfft(x[2400:-2400]))
    assert abs(np.argmax(spectrum) * 24000 / len(x[2400:-2400]) - 440) < 5


def test_a_library_of_mixed_formats_extracts_and_lists_what_is_skipped(tmp_path, tiny_ckpt):
    lib = tmp_path / "lib"
    for name, codec, container in FORMATS:
        write_av(lib / name, codec, container)
    (lib / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not audio")
    (lib / "notes.txt").write_text("liner notes")
    (lib / "broken.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A garbage")
    args = ["extract", str(lib), "-d", "mixed", "--model", str(tiny_ckpt), "--device", "cpu"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 1, r.output  # broken.m4a failed in this run
    report = json.loads(r.stdout)
    assert report["n_extracted"] == 3
    assert [Path(f["path"]).name for f in report["failures"]] == ["broken.m4a"]
    assert "skipped 2 file(s) that are not audio" in r.stderr
    assert ".jpg (1)" in r.stderr and ".txt (1)" in r.stderr
