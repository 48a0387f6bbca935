"""Proxy targets: agreement with librosa, silence, gain invariance, batching, registry."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from messai.errors import AudioError, ConfigError
from messai.features.targets import (
    ASPECTS_OF_TARGETS,
    RMS_DB_FLOOR,
    TARGETS,
    compute_targets,
    targets_for_aspect,
)

SR = 24_000
RTOL = 1e-3  # the brief asks for 1 %; the numpy path agrees with librosa to ~1e-6


def _signals(seconds: float = 3.0) -> dict[str, np.ndarray]:
    """Real-looking test signals at 24 kHz, float32, fixed seed."""
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = {}

    tones = np.zeros(n)  # a melody of decaying harmonic notes, one slightly sharp
    notes = [220.0, 277.18, 329.63, 440.0 * 1.003, 392.0, 261.63]
    step = n // len(notes)
    for i, f0 in enumerate(notes):
        tt = t[: n - i * step]
        for h in range(1, 8):
            partial = np.sin(2 * np.pi * f0 * h * tt + rng.uniform(0, 6))
            tones[i * step :] += np.exp(-3 * tt) * partial * 0.6 / h
    out["tones"] = tones + 1e-3 * rng.standard_normal(n)

    bursts = 1e-4 * rng.standard_normal(n)  # decaying noise bursts
    for s in rng.integers(0, n - 4000, 8):
        length = int(rng.integers(1000, 4000))
        bursts[s : s + length] += (
            0.5 * rng.standard_normal(length) * np.exp(-np.arange(length) / 800)
        )
    out["bursts"] = bursts

    freq = 100 * (8000 / 100) ** (t / seconds)  # exponential chirp 100 Hz -> 8 kHz
    out["chirp"] = 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / SR) + 1e-3 * rng.standard_normal(n)

    clicks = 1e-3 * rng.standard_normal(n)  # clicks every 250 ms
    for s in np.arange(0, n - 100, SR // 4) + int(rng.integers(0, 500)):
        clicks[s : s + 60] += 0.8 * rng.choice([-1, 1]) * np.hanning(60)
    out["clicks"] = clicks

    out["mix"] = out["tones"] + 0.5 * out["clicks"] + 0.3 * out["bursts"]
    return {name: y.astype(np.float32) for name, y in out.items()}


SIGNALS = _signals()


def _librosa_targets(y: np.ndarray) -> dict[str, np.ndarray]:
    librosa = pytest.importorskip("librosa")
    feature = librosa.feature
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_fft larger than a short input
        rms = feature.rms(y=y)[0]
        rms_db = 20 * np.log10(np.maximum(rms, 1e-6))
        chroma = feature.chroma_stft(y=y, sr=SR).mean(axis=1)
        p = chroma / chroma.sum()
        return {
            "spectral_centroid": feature.spectral_centroid(y=y, sr=SR).mean(),
            "spectral_rolloff": feature.spectral_rolloff(y=y, sr=SR).mean(),
            "spectral_bandwidth": feature.spectral_bandwidth(y=y, sr=SR).mean(),
            "spectral_contrast": feature.spectral_contrast(y=y, sr=SR).mean(axis=1),
            "spectral_flatness": feature.spectral_flatness(y=y).mean(),
            "mfcc": feature.mfcc(y=y, sr=SR, n_mfcc=14)[1:].mean(axis=1),
            "zero_crossing_rate": feature.zero_crossing_rate(y).mean(),
            "rms_db_mean": rms_db.mean(),
            "rms_db_std": rms_db.std(),
            "onset_rate": len(librosa.onset.onset_detect(y=y, sr=SR)) / (len(y) / SR),
            "chroma": chroma,
            "chroma_entropy": -(p[p > 0] * np.log2(p[p > 0])).sum(),
        }


def _assert_matches(mine: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    for name, expected in ref.items():
        got = mine[name][0]
        expected = np.asarray(expected, dtype=np.float64)
        if name == "onset_rate":  # same onset frames -> exactly the same count
            assert got == expected, name
        elif name == "mfcc":  # coefficients cross zero: tolerance relative to their scale
            np.testing.assert_allclose(
                got, expected, rtol=0, atol=RTOL * np.abs(expected).max(), err_msg=name
            )
        elif name == "chroma":
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_matches_librosa(name):
    y = SIGNALS[name]
    _assert_matches(compute_targets([y], SR), _librosa_targets(y))


@pytest.mark.parametrize("n_samples", [SR, 1000])
def test_short_windows_match_librosa(n_samples):
    """A 1 s tail window, and one shorter than n_fft (librosa pads it with center=True)."""
    y = SIGNALS["mix"][SR // 2 : SR // 2 + n_samples]
    _assert_matches(compute_targets([y], SR), _librosa_targets(y))


def test_onsets_are_found():
    """The clicks (4 per second) are detected: the onset comparison is not vacuous."""
    rate = compute_targets([SIGNALS["clicks"]], SR, names=["onset_rate"])["onset_rate"][0]
    assert rate == pytest.approx(4.0, abs=0.5)


def test_silence_is_finite_and_documented():
    out = compute_targets([np.zeros(SR, np.float32), np.zeros(700, np.float32)], SR)
    for name, values in out.items():
        assert np.isfinite(values).all(), name
    for name in (
        "spectral_centroid",
        "spectral_rolloff",
        "spectral_bandwidth",
        "zero_crossing_rate",
        "rms_db_std",
        "onset_rate",
    ):
        np.testing.assert_array_equal(out[name], 0.0, err_msg=name)
    np.testing.assert_allclose(out["spectral_contrast"], 0.0, atol=1e-9)
    np.testing.assert_allclose(out["mfcc"], 0.0, atol=1e-9)
    np.testing.assert_array_equal(out["chroma"], 0.0)
    np.testing.assert_allclose(out["spectral_flatness"], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["rms_db_mean"], RMS_DB_FLOOR)
    np.testing.assert_allclose(out["chroma_entropy"], np.log2(12))


def test_rms_db_std_is_gain_invariant():
    y = SIGNALS["mix"]
    loud = compute_targets([y], SR, names=["rms_db_mean", "rms_db_std"])
    quiet = compute_targets([y * np.float32(0.01)], SR, names=["rms_db_mean", "rms_db_std"])
    assert quiet["rms_db_std"][0] == pytest.approx(loud["rms_db_std"][0], abs=1e-3)
    assert quiet["rms_db_mean"][0] == pytest.approx(loud["rms_db_mean"][0] - 40.0, abs=1e-3)


def test_batch_of_unequal_windows_equals_one_by_one():
    y = SIGNALS["mix"]
    # lengths repeat so that equal-length windows share a batch; 11 equal ones exceed one chunk
    windows = [y[:SR], y[SR : 2 * SR], y[: int(1.3 * SR)], y[5000 : 5000 + SR], y[:900]]
    windows += [y[i * 6000 : i * 6000 + 6000] for i in range(11)]
    batched = compute_targets(windows, SR)
    singles = [compute_targets([w], SR) for w in windows]
    for name, values in batched.items():
        size = TARGETS[name].size
        assert values.shape == ((len(windows), size) if size > 1 else (len(windows),)), name
        expected = np.stack([s[name][0] for s in singles])
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_two_dimensional_input_and_subset():
    y = SIGNALS["chirp"]
    out = compute_targets(np.stack([y[:SR], y[SR : 2 * SR]]), SR, names=["chroma", "onset_rate"])
    assert list(out) == ["chroma", "onset_rate"]
    assert out["chroma"].shape == (2, 12)
    assert out["onset_rate"].shape == (2,)
    assert compute_targets([], SR, names=["mfcc"])["mfcc"].shape == (0, 13)


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError, match="spectral_centroid") as info:
        compute_targets([SIGNALS["chirp"]], SR, names=["brightness"])
    assert "brightness" in str(info.value)


def test_bad_windows_raise_audio_error():
    with pytest.raises(AudioError):
        compute_targets([np.zeros(0, np.float32)], SR)
    y = SIGNALS["chirp"][:SR].copy()
    y[10] = np.nan
    with pytest.raises(AudioError):
        compute_targets([y], SR)


def test_registry():
    assert set(ASPECTS_OF_TARGETS) == set(TARGETS)
    for name, target in TARGETS.items():
        assert target.name == name
        assert target.description and "\n" not in target.description
        assert target.transform in ("none", "log1p")
        assert name in targets_for_aspect(target.aspect)
    assert targets_for_aspect("spectral_brightness") == ["spectral_centroid", "spectral_rolloff"]
    assert targets_for_aspect("no such aspect") == []
    centroid = TARGETS["spectral_centroid"]
    logged = centroid.apply_transform(np.array([0.0, 999.0]))
    np.testing.assert_allclose(logged, [0.0, np.log(1000.0)])


def test_import_is_light():
    code = (
        "import sys, messai.features.targets; "
        "bad = {'torch', 'librosa', 'scipy', 'threadpoolctl'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("n_fft", "hop"), [(2048, 512), (2048, 384), (1000, 300)])
def test_frame_sums_equal_the_sum_of_each_frame(n_fft, hop):
    """RMS and zero crossings sum overlapping frames from per-block sums, for any hop."""
    from messai.features.targets import _frame_sums

    y = np.random.default_rng(hop).standard_normal((2, 7001)).astype(np.float32)
    n_frames = 1 + (y.shape[1] - n_fft) // hop
    direct = np.stack(
        [y[:, f * hop : f * hop + n_fft].sum(-1, dtype=np.float64) for f in range(n_frames)], 1
    )
    got = _frame_sums(y, n_frames, n_fft, hop, dtype=np.float64)
    np.testing.assert_allclose(got, direct, rtol=1e-12)
