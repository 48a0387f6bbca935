"""Decoding, streaming resampling, windowing, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from messai.errors import AudioError
from messai.features.decode import (
    StreamResampler,
    WindowSpec,
    audio_info,
    decode,
    downmix,
    iter_windows,
    normalize_window,
    stream_mono,
    window_starts,
)
from tests.conftest import tone


@pytest.mark.parametrize("rate", [44100, 22050, 48000, 8000, 11025, 24000, 44101])
def test_streaming_resample_equals_whole_signal(rate):
    x = np.random.default_rng(rate).standard_normal(rate * 3 + 17).astype(np.float32)
    r = StreamResampler(rate, 24000, chunk_seconds=0.7)
    out = []
    for i in range(0, len(x), 3001):
        out.extend(r.push(x[i : i + 3001]))
    out.extend(r.flush())
    y = np.concatenate(out)
    if r.use_sinc:
        ref = AF.resample(torch.from_numpy(x), rate, 24000).numpy()
    else:  # coprime rates: scipy's polyphase filter (torchaudio's kernel would be gigabytes)
        from scipy.signal import resample_poly

        ref = resample_poly(x, r.new, r.orig)
    assert len(y) == len(ref) == int(np.ceil(len(x) * 24000 / rate))
    np.testing.assert_allclose(y, ref, atol=2e-6)


def test_decode_downmixes_and_resamples(tmp_path):
    data = tone(2.0, 44100, channels=3)
    sf.write(str(tmp_path / "x.flac"), data, 44100)
    y = decode(tmp_path / "x.flac", 24000)
    ref = AF.resample(
        torch.from_numpy(sf.read(str(tmp_path / "x.flac"), dtype="float32")[0].mean(1)),
        44100,
        24000,
    )
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-6)
    assert audio_info(tmp_path / "x.flac").channels == 3


@pytest.mark.parametrize(
    "n,expected",
    [
        (120000 * 2, [(0, 120000), (120000, 120000)]),
        (120000 * 2 + 23999, [(0, 120000), (120000, 120000)]),
        (120000 * 2 + 24000, [(0, 120000), (120000, 120000), (240000, 24000)]),
        (30000, [(0, 30000)]),
        (20000, []),
    ],
)
def test_window_starts(n, expected):
    assert window_starts(n, 120000, 120000, 24000) == expected


@pytest.mark.parametrize("hop", [5.0, 2.5, 7.0])
def test_iter_windows_matches_window_starts(hop):
    spec = WindowSpec(5.0, hop, 1.0)
    x = np.arange(24000 * 23 + 5000, dtype=np.float32)
    blocks = (x[i : i + 7777] for i in range(0, len(x), 7777))
    got = list(iter_windows(blocks, spec, 24000))
    want = window_starts(len(x), *spec.samples(24000))
    assert [(s, len(w)) for s, w in got] == want
    for s, w in got:
        np.testing.assert_array_equal(w, x[s : s + len(w)])


@pytest.mark.parametrize("n", [1, 7, 24000, 120001])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 300.0])
def test_normalize_window_is_bit_identical_to_the_formula(n, scale):
    """The single-pass version must give the bits of (x - mean) / sqrt(var + eps) in float64."""
    x = (np.random.default_rng(n).standard_normal(n) * scale + 0.3 * scale).astype(np.float32)
    mean, var = x.mean(dtype=np.float64), x.var(dtype=np.float64)
    expected = ((x - mean) / np.sqrt(var + 1e-7)).astype(np.float32)
    assert normalize_window(x).tobytes() == expected.tobytes()


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 7])
def test_downmix_is_the_channel_mean_bit_for_bit(channels):
    rng = np.random.default_rng(channels)
    data = rng.standard_normal((50_001, channels)).astype(np.float32)
    data[::7] = 0.0
    data[1::11, 0] = -0.0
    data[2::13] = -0.0  # every channel -0.0: the mean is +0.0
    data[3::17, :] = np.float32(1e-30) * rng.standard_normal((1, channels)).astype(np.float32)
    expected = data[:, 0] if channels == 1 else data.mean(axis=1)  # mono passes through as is
    assert downmix(data).tobytes() == expected.tobytes()


def test_normalize_window_and_silence():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 3 + 2
    y = normalize_window(x)
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-3
    z = normalize_window(np.zeros(1000, np.float32))
    assert np.all(z == 0)


def test_bad_files(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        audio_info(tmp_path / "e.wav")
    (tmp_path / "t.ogg").write_text("text")
    with pytest.raises(AudioError, match=r"t\.ogg: not a readable audio file"):
        audio_info(tmp_path / "t.ogg")
    bad = tone(1.0, 8000)
    bad[100] = np.inf
    sf.write(str(tmp_path / "inf.wav"), bad, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        list(stream_mono(tmp_path / "inf.wav", 24000))


def test_long_file_streams_in_bounded_memory(tmp_path):
    """A long file is decoded block by block: peak block size stays ~20 s whatever the length."""
    rate = 8000
    sf.write(str(tmp_path / "long.wav"), np.zeros((rate * 300, 1), np.float32), rate)
    sizes = [len(b) for b in stream_mono(tmp_path / "long.wav", 24000)]
    assert sum(sizes) == 24000 * 300
    assert max(sizes) <= 24000 * 21
