"""Proxy targets: cheap, interpretable audio descriptors computed per analysis window.

Each target is one number (or a short vector) per window of mono audio, defined as the
mean over STFT frames of a librosa feature (``n_fft=2048``, ``hop_length=512``, Hann window,
``center=True`` with librosa's default zero padding). The probe regresses MERT layers onto them.

The implementation is numpy only (librosa is *not* a runtime dependency) and follows librosa
0.11 step by step, including its float32 intermediate arithmetic; the tests compare every
target against librosa. Constant matrices (window, mel / chroma filter banks, DCT) are built
once per ``(sample_rate, n_fft)`` and cached.

Registry: :data:`TARGETS` maps a name to a :class:`Target` (description, aspect, size,
transform). :func:`compute_targets` computes any subset for a batch of windows.

Silence (all-zero window) gives finite values everywhere:

===================== =========================================================
spectral_centroid     0 Hz
spectral_rolloff      0 Hz
spectral_bandwidth    0 Hz
spectral_contrast     0 dB in every band (peak and valley are both at the floor)
spectral_flatness     1 (every bin sits at librosa's ``amin`` floor: perfectly flat)
mfcc                  0 (the dB mel spectrum is constant, so c1..c13 vanish)
zero_crossing_rate    0
rms_db_mean           :data:`RMS_DB_FLOOR` (-120 dB)
rms_db_std            0 dB
onset_rate            0 onsets/s
chroma                all 12 bins 0
chroma_entropy        log2(12) bits (no pitch class dominates; the maximum)
===================== =========================================================
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from messai.errors import AudioError, ConfigError
from messai.numeric import single_threaded_blas

N_FFT = 2048
"""FFT size and frame length in samples (librosa's default)."""

HOP_LENGTH = 512
"""Hop between frames in samples (librosa's default)."""

RMS_DB_FLOOR = -120.0
"""Frame RMS below 1e-6 (full scale 1.0) is clamped to this many dB."""

_N_MELS = 128
_N_MFCC = 14  # c0 .. c13; c0 (overall level) is dropped, c1..c13 are the target
_AMIN = 1e-10  # librosa's amin for power_to_db and spectral_flatness
_TOP_DB = 80.0  # librosa's power_to_db default
_ROLL_PERCENT = 0.85
_ROLLOFF_BLOCK = 32  # bins per block of the two-step running sum of spectral_rolloff
_CONTRAST_FMIN = 200.0
_CONTRAST_BANDS = 6
_CONTRAST_QUANTILE = 0.02
_ZCR_THRESHOLD = 1e-10
_TINY32 = float(np.finfo(np.float32).tiny)
_BATCH = 8  # windows per vectorised chunk (bounds memory: ~15 MB per 5 s window)


@dataclass(frozen=True)
class Target:
    """One proxy target.

    Attributes:
        name: registry key, e.g. ``"spectral_centroid"``.
        description: one line, with units.
        aspect: the musical aspect it stands for, e.g. ``"spectral_brightness"``.
        size: 1 for a scalar per window, k for a k-vector per window.
        transform: ``"none"`` or ``"log1p"``; ``"log1p"`` means the probe should regress onto
            ``log1p(value)`` (natural log of 1 + value, finite for the 0 Hz of silence).
    """

    name: str
    description: str
    aspect: str
    size: int = 1
    transform: str = "none"

    def apply_transform(self, values: np.ndarray) -> np.ndarray:
        """Return ``values`` on the scale the probe should use (``log1p`` for ``"log1p"``)."""
        values = np.asarray(values, dtype=np.float64)
        if self.transform == "log1p":
            return np.log1p(np.maximum(values, 0.0))
        return values


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "spectral_centroid",
            "mean spectral centroid of the magnitude spectrum, Hz",
            "spectral_brightness",
            transform="log1p",
        ),
        Target(
            "spectral_rolloff",
            "mean frequency below which 85% of spectral magnitude lies, Hz",
            "spectral_brightness",
            transform="log1p",
        ),
        Target(
            "spectral_bandwidth",
            "mean 2nd-order spectral spread around the centroid, Hz",
            "acoustic_structure",
            transform="log1p",
        ),
        Target(
            "spectral_contrast",
            "mean peak-minus-valley dB in 7 octave bands (librosa)",
            "acoustic_structure",
            size=_CONTRAST_BANDS + 1,
        ),
        Target(
            "spectral_flatness",
            "mean spectral flatness (geometric / arithmetic mean power)",
            "noisiness",
        ),
        Target(
            "mfcc",
            "mean MFCCs c1..c13 (slaney mel, dB, DCT-II ortho; c0 dropped)",
            "timbral_texture",
            size=_N_MFCC - 1,
        ),
        Target(
            "zero_crossing_rate",
            "mean fraction of sign changes per sample in 2048-frames",
            "noisiness",
        ),
        Target("rms_db_mean", "mean frame RMS level, dB re full scale (floor -120 dB)", "dynamics"),
        Target("rms_db_std", "std over frames of RMS level, dB (gain-invariant)", "dynamics"),
        Target("onset_rate", "librosa onset_detect onsets per second", "rhythmic_density"),
        Target(
            "chroma", "mean 12-bin chroma_stft (C..B, per-frame max-normalised)", "harmony", size=12
        ),
        Target(
            "chroma_entropy",
            "Shannon entropy of the normalised mean chroma, bits (0..3.585)",
            "harmonic_complexity",
        ),
    )
}
"""The registry: target name -> :class:`Target`, in a stable order."""

ASPECTS_OF_TARGETS: dict[str, str] = {name: t.aspect for name, t in TARGETS.items()}
"""Target name -> the aspect it stands for."""


def targets_for_aspect(aspect: str) -> list[str]:
    """Names of the targets that stand for ``aspect`` (empty list if none), in registry order."""
    return [name for name, t in TARGETS.items() if t.aspect == aspect]


def compute_targets(
    windows: list[np.ndarray] | np.ndarray,
    sample_rate: int,
    *,
    names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Compute proxy targets for each window of mono audio.

    Args:
        windows: a list of 1-D float arrays (lengths may differ, each at least one sample),
            or a 2-D array ``[n_windows, n_samples]``. Computed in float32, as librosa does for
            float32 audio.
        sample_rate: samples per second (24000 for MERT).
        names: targets to compute (default: all of :data:`TARGETS`).

    Returns:
        target name -> float64 array ``[n_windows]`` for scalars or ``[n_windows, size]`` for
        vectors, in the order of ``names``.

    Raises:
        ConfigError: an unknown target name, or a sample rate too low for a target.
        AudioError: a window that is empty, not 1-D, or has non-finite samples.
    """
    wanted = _resolve_names(names)
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate must be positive, got {sample_rate}")
    highest_contrast_band_hz = _CONTRAST_FMIN * 2 ** (_CONTRAST_BANDS - 1)
    if "spectral_contrast" in wanted and 0.5 * sample_rate <= highest_contrast_band_hz:
        raise ConfigError(
            f"spectral_contrast needs sample_rate > "
            f"{_CONTRAST_FMIN * 2**_CONTRAST_BANDS:.0f} Hz, got {sample_rate}"
        )
    signals = _as_signals(windows)
    out = {
        name: np.zeros(
            (len(signals), TARGETS[name].size) if TARGETS[name].size > 1 else (len(signals),)
        )
        for name in wanted
    }
    by_length: dict[int, list[int]] = {}
    for i, y in enumerate(signals):
        by_length.setdefault(len(y), []).append(i)
    with single_threaded_blas():
        for indices in by_length.values():
            for start in range(0, len(indices), _BATCH):
                chunk = indices[start : start + _BATCH]
                analysis = _Analysis(np.stack([signals[i] for i in chunk]), sample_rate)
                for name in wanted:
                    out[name][chunk] = _COMPUTE[name](analysis)
    return out


def _resolve_names(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(TARGETS)
    if isinstance(names, str):
        names = [names]
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in TARGETS]
    if unknown:
        raise ConfigError(
            f"unknown target(s) {', '.join(map(repr, unknown))}; "
            f"known targets: {', '.join(TARGETS)}"
        )
    return wanted


def _as_signals(windows: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(windows, np.ndarray) and windows.ndim == 2:
        windows = list(windows)
    signals = []
    for i, w in enumerate(windows):
        y = np.asarray(w, dtype=np.float32)
        if y.ndim != 1 or y.size == 0:
            raise AudioError(f"window {i} must be a non-empty 1-D array, got shape {y.shape}")
        if not np.isfinite(y).all():
            raise AudioError(f"window {i} has non-finite samples")
        signals.append(y)
    return signals


# --------------------------------------------------------------------------- cached constants


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window ``[n_fft]``, float64, computed as scipy.signal.get_window does."""
    fac = np.linspace(-np.pi, np.pi, n_fft + 1)
    w = np.zeros(n_fft + 1)
    w += 0.5
    w += 0.5 * np.cos(fac)
    return _readonly(w[:n_fft].copy())


@functools.lru_cache(maxsize=8)
def _fft_frequencies(sample_rate: int, n_fft: int) -> np.ndarray:
    """Centre frequency of each rfft bin, Hz, ``[n_fft // 2 + 1]``."""
    return _readonly(np.fft.rfftfreq(n_fft, d=1.0 / sample_rate))


@functools.lru_cache(maxsize=8)
def _moment_basis(sample_rate: int, n_fft: int) -> np.ndarray:
    """``[n_bins, 3]`` columns 1, f, f**2 (Hz) for spectral moments."""
    f = _fft_frequencies(sample_rate, n_fft)
    return _readonly(np.stack([np.ones_like(f), f, f * f], axis=1))


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa ``htk=False``)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = f / f_sp
    log_region = f >= min_log_hz
    mels[log_region] = min_log_hz / f_sp + np.log(f[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    freqs = f_sp * m
    log_region = m >= min_log_mel
    freqs[log_region] = min_log_hz * np.exp(logstep * (m[log_region] - min_log_mel))
    return freqs


@functools.lru_cache(maxsize=8)
def _mel_basis_t(sample_rate: int, n_fft: int, n_mels: int = _N_MELS) -> np.ndarray:
    """Transposed slaney mel filter bank ``[n_bins, n_mels]``, float32 (librosa.filters.mel)."""
    fftfreqs = _fft_frequencies(sample_rate, n_fft)
    mel_f = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2
        )
    )
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return _readonly(np.ascontiguousarray(weights.T))


@functools.lru_cache(maxsize=8)
def _mel_basis_sparse(sample_rate: int, n_fft: int) -> object:
    """:func:`_mel_basis_t` as a scipy CSC matrix (scipy imported here: importing this module
    stays light)."""
    from scipy import sparse

    return sparse.csc_matrix(_mel_basis_t(sample_rate, n_fft))


@functools.lru_cache(maxsize=4)
def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``[n_in, n_out]``: ``x @ D == dct(x, norm='ortho')[:n_out]``."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    d = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    d[:, 0] /= np.sqrt(2.0)
    return _readonly(d)


@functools.lru_cache(maxsize=256)
def _chroma_basis_t(sample_rate: int, n_fft: int, tuning: float) -> np.ndarray:
    """Transposed chroma filter bank ``[n_bins, 12]``, float32 (librosa.filters.chroma defaults)."""
    n_chroma = 12
    frequencies = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / n_chroma)
    frqbins = n_chroma * np.log2(frequencies / (a440 / 16))
    frqbins = np.concatenate(([frqbins[0] - 1.5 * n_chroma], frqbins))
    binwidthbins = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1]))
    d = np.subtract.outer(frqbins, np.arange(0, n_chroma, dtype="d")).T
    n_chroma2 = np.round(float(n_chroma) / 2)
    d = np.remainder(d + n_chroma2 + 10 * n_chroma, n_chroma) - n_chroma2
    wts = np.exp(-0.5 * (2 * d / np.tile(binwidthbins, (n_chroma, 1))) ** 2)
    wts /= np.sqrt(np.sum(wts**2, axis=0, keepdims=True))  # column L2 norm (never tiny here)
    wts *= np.exp(-0.5 * (((frqbins / n_chroma - 5.0) / 2.0) ** 2))  # ctroct 5, octwidth 2
    wts = np.roll(wts, -3, axis=0)  # start at C
    # Weights below 1e-12 (down to 1e-32 at the spectrum's ends) change no float32 result but
    # make the matrix product crawl through subnormal arithmetic: drop them.
    wts[wts < 1e-12] = 0.0
    return _readonly(np.ascontiguousarray(wts[:, : 1 + n_fft // 2].T, dtype=np.float32))


@functools.lru_cache(maxsize=8)
def _contrast_bands(sample_rate: int, n_fft: int) -> tuple[tuple[int, int, int], ...]:
    """Per octave band of librosa.feature.spectral_contrast: (first bin, stop bin, n_quantile)."""
    freq = _fft_frequencies(sample_rate, n_fft)
    octa = np.zeros(_CONTRAST_BANDS + 2)
    octa[1:] = _CONTRAST_FMIN * 2.0 ** np.arange(0, _CONTRAST_BANDS + 1)
    bands = []
    for k, (f_low, f_high) in enumerate(itertools.pairwise(octa)):
        idx = np.flatnonzero((freq >= f_low) & (freq <= f_high))
        if idx.size == 0:
            raise ConfigError(f"spectral_contrast band {k} is empty at sample_rate={sample_rate}")
        lo = int(idx[0]) - 1 if k > 0 else int(idx[0])
        last = len(freq) - 1 if k == _CONTRAST_BANDS else int(idx[-1])
        count = last - lo + 1
        stop = last + 1 if k == _CONTRAST_BANDS else last  # lower bands drop their top bin
        n_q = max(int(np.rint(_CONTRAST_QUANTILE * count)), 1)
        bands.append((lo, stop, n_q))
    return tuple(bands)


# --------------------------------------------------------------------------- analysis of a batch


class _Analysis:
    """Lazily computed spectra of a batch of equal-length windows ``[batch, n_samples]``."""

    def __init__(
        self, y: np.ndarray, sample_rate: int, *, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH
    ) -> None:
        self.y = y
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length

    @functools.cached_property
    def padded(self) -> np.ndarray:
        """The windows zero-padded by ``n_fft // 2`` on each side (librosa's center=True)."""
        pad = self.n_fft // 2
        return np.pad(self.y, ((0, 0), (pad, pad)), mode="constant")

    @functools.cached_property
    def frames(self) -> np.ndarray:
        """Zero-padded (center=True) frames, a strided view ``[batch, n_frames, n_fft]``."""
        return sliding_window_view(self.padded, self.n_fft, axis=-1)[:, :: self.hop_length]

    @functools.cached_property
    def magnitude(self) -> np.ndarray:
        """|STFT| ``[batch, n_frames, n_bins]`` float32 (FFT in float64, rounded like librosa)."""
        spectrum = np.fft.rfft(self.frames * _hann(self.n_fft), axis=-1)
        return np.abs(spectrum.astype(np.complex64))

    @functools.cached_property
    def power(self) -> np.ndarray:
        """|STFT|**2 ``[batch, n_frames, n_bins]`` float32."""
        return self.magnitude**2

    @functools.cached_property
    def magnitude_blocks(self) -> np.ndarray:
        """|STFT| in float64, zero-padded to whole blocks of ``_ROLLOFF_BLOCK`` bins
        ``[batch, n_frames, n_blocks, _ROLLOFF_BLOCK]`` (one copy shared by the moments and
        the rolloff)."""
        mag = self.magnitude
        n_bins = mag.shape[-1]
        n_blocks = -(-n_bins // _ROLLOFF_BLOCK)
        blocks = np.zeros((*mag.shape[:-1], n_blocks * _ROLLOFF_BLOCK))
        blocks[..., :n_bins] = mag
        return blocks.reshape(*mag.shape[:-1], n_blocks, _ROLLOFF_BLOCK)

    @functools.cached_property
    def moments(self) -> np.ndarray:
        """Magnitude moments sum S, sum f S, sum f**2 S (f in Hz) ``[batch, n_frames, 3]``."""
        n_bins = self.magnitude.shape[-1]
        blocks = self.magnitude_blocks
        flat = blocks.reshape(-1, blocks.shape[-2] * blocks.shape[-1])[:, :n_bins]
        basis = _moment_basis(self.sample_rate, self.n_fft)
        return (flat @ basis).reshape(*blocks.shape[:-2], 3)

    @functools.cached_property
    def centroid(self) -> np.ndarray:
        """Spectral centroid per frame, Hz ``[batch, n_frames]`` (0 for a silent frame)."""
        m = self.moments
        total = np.where(m[..., 0] < _TINY32, 1.0, m[..., 0])
        return m[..., 1] / total

    @functools.cached_property
    def mel_db(self) -> np.ndarray:
        """Mel power in dB (librosa power_to_db defaults) ``[batch, n_frames, 128]`` float32.

        The filter bank is applied as a sparse matrix: each FFT bin feeds at most two mel
        bands, so this is ~4x cheaper than the dense product and needs no BLAS."""
        power = self.power
        mel = power.reshape(-1, power.shape[-1]) @ _mel_basis_sparse(self.sample_rate, self.n_fft)
        mel = np.asarray(mel, dtype=np.float32).reshape(*power.shape[:-1], -1)
        return _power_to_db(mel)

    @functools.cached_property
    def rms_db(self) -> np.ndarray:
        """Frame RMS level in dB, clamped at RMS_DB_FLOOR ``[batch, n_frames]``."""
        n_frames = self.frames.shape[1]
        energy = _frame_sums(
            np.square(self.padded), n_frames, self.n_fft, self.hop_length, dtype=np.float64
        )
        power = energy / self.n_fft
        rms = np.sqrt(power)
        return 20.0 * np.log10(np.maximum(rms, 10.0 ** (RMS_DB_FLOOR / 20.0)))

    @functools.cached_property
    def chroma(self) -> np.ndarray:
        """Mean over frames of librosa chroma_stft (tuning estimated per window) ``[batch, 12]``."""
        out = np.empty((self.y.shape[0], 12))
        for b, power in enumerate(self.power):
            tuning = _estimate_tuning(power, self.sample_rate, self.n_fft)
            raw = power @ _chroma_basis_t(self.sample_rate, self.n_fft, tuning)
            length = raw.max(axis=-1, keepdims=True).astype(np.float64)
            length[length < _TINY32] = 1.0
            out[b] = (raw / length).astype(np.float32).mean(axis=0)
        return out


def _frame_sums(
    values: np.ndarray, n_frames: int, n_fft: int, hop_length: int, *, dtype=None
) -> np.ndarray:
    """``values[:, f * hop_length : f * hop_length + n_fft].sum(-1)`` for every frame ``f``
    ``[batch, n_frames]``, in one pass over the samples: sums per block of gcd(n_fft, hop)
    samples, then each frame adds its ``n_fft / block`` blocks (instead of one pass per
    overlapping frame)."""
    block = math.gcd(n_fft, hop_length)
    per_frame, step = n_fft // block, hop_length // block
    n_blocks = (n_frames - 1) * step + per_frame
    sums = (
        values[:, : n_blocks * block]
        .reshape(values.shape[0], n_blocks, block)
        .sum(axis=-1, dtype=dtype)
    )
    span = (n_frames - 1) * step + 1
    return sum(sums[:, k : k + span : step] for k in range(per_frame))


def _power_to_db(power: np.ndarray) -> np.ndarray:
    """librosa.power_to_db(ref=1.0, amin=1e-10, top_db=80), the top_db floor set per window.

    Args:
        power: ``[batch, ...]``; the maximum is taken over everything but the batch axis.
    """
    db = 10.0 * np.log10(np.maximum(_AMIN, power))
    peak = db.max(axis=tuple(range(1, db.ndim)), keepdims=True)
    return np.maximum(db, peak - _TOP_DB)


def _estimate_tuning(power: np.ndarray, sample_rate: int, n_fft: int) -> float:
    """librosa.estimate_tuning(S=power) for one window: deviation from A440 in fractions of a bin.

    piptrack (parabolic-interpolated local maxima above 0.1 x the frame maximum, 150 Hz to
    4 kHz) on the power spectrogram ``[n_frames, n_bins]``, keep peaks at or above the median
    peak magnitude, and return the left edge of the fullest 0.01-bin histogram cell in
    [-0.5, 0.5). Returns 0.0 when there are no peaks (silence).
    """
    freqs = _fft_frequencies(sample_rate, n_fft)
    fmax = min(4000.0, sample_rate / 2.0)
    in_range = np.flatnonzero((freqs >= 150.0) & (freqs < fmax))
    if in_range.size == 0:
        return 0.0
    lo, hi = int(in_range[0]), int(in_range[-1]) + 1  # lo >= 1 and hi <= n_bins - 1 always
    ref = 0.1 * power.max(axis=-1, keepdims=True)
    band = power[:, lo - 1 : hi + 1]  # the range and one neighbour on each side
    gated = np.where(band > ref, band, np.float32(0.0))
    centre = gated[:, 1:-1]
    is_peak = (centre > gated[:, :-2]) & (centre >= gated[:, 2:])
    frame, col = np.divmod(np.flatnonzero(is_peak), is_peak.shape[1])  # 4x faster than 2-D
    if frame.size == 0:
        return 0.0
    bin_ = col + lo
    s_prev, s_mid, s_next = power[frame, bin_ - 1], power[frame, bin_], power[frame, bin_ + 1]
    a = s_next + s_prev - 2 * s_mid
    b = (s_next - s_prev) / 2
    safe_a = np.where(a == 0, np.float32(1.0), a)
    shift = np.where(np.abs(b) >= np.abs(a), np.float32(0.0), -b / safe_a).astype(np.float32)
    pitch = ((bin_ + shift) * float(sample_rate) / n_fft).astype(np.float32)
    mag = s_mid + np.float32(0.5) * b * shift  # np.gradient at an interior bin == b
    pitch = pitch[(mag >= np.median(mag)) & (pitch > 0)]
    if pitch.size == 0:
        return 0.0
    residual = np.mod(12 * np.log2(pitch / np.float32(440.0 / 16)), 1.0)
    residual[residual >= 0.5] -= 1.0
    counts, edges = np.histogram(residual, np.linspace(-0.5, 0.5, 101))
    return float(edges[np.argmax(counts)])


def _peak_pick(
    x: np.ndarray,
    *,
    pre_max: int,
    post_max: int,
    pre_avg: int,
    post_avg: int,
    delta: float,
    wait: int,
) -> np.ndarray:
    """librosa.util.peak_pick for one envelope ``[n]``: indices of the picked peaks.

    ``n`` is a peak when ``x[n] == max(x[n - pre_max : n + post_max])`` and
    ``x[n] >= mean(x[n - pre_avg : n + post_avg]) + delta`` (windows clipped to the array),
    taken greedily left to right, skipping ``wait`` frames after each peak.
    """
    n = x.shape[0]
    padded = np.pad(x, (pre_max, post_max - 1), constant_values=-np.inf)
    mov_max = sliding_window_view(padded, pre_max + post_max).max(axis=-1)
    cum = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(n)
    lo, hi = np.maximum(i - pre_avg, 0), np.minimum(i + post_avg, n)
    mov_avg = (cum[hi] - cum[lo]) / (hi - lo)
    candidates = np.flatnonzero((x == mov_max) & (x >= mov_avg + np.float32(delta)))
    peaks: list[int] = []
    last = -math.inf
    for c in candidates:
        if c > last + wait:
            peaks.append(int(c))
            last = c
    return np.asarray(peaks, dtype=np.int64)


# --------------------------------------------------------------------------- the targets


def _spectral_centroid(a: _Analysis) -> np.ndarray:
    """``[batch]`` Hz."""
    return a.centroid.mean(axis=-1)


def _spectral_bandwidth(a: _Analysis) -> np.ndarray:
    """``[batch]`` Hz: sqrt(sum_f S_norm (f - centroid)**2), librosa p=2, norm=True."""
    m = a.moments
    total = np.where(m[..., 0] < _TINY32, 1.0, m[..., 0])
    c = a.centroid
    var = m[..., 2] / total - 2 * c * m[..., 1] / total + c * c * m[..., 0] / total
    return np.sqrt(np.maximum(var, 0.0)).mean(axis=-1)


def _spectral_rolloff(a: _Analysis) -> np.ndarray:
    """``[batch]`` Hz: lowest bin frequency whose cumulative magnitude reaches 85%.

    A running sum over 1025 bins is a serial loop in numpy (~0.8 ms per 5-s window), so the
    crossing is found in two steps, in float64: the running sum over blocks of
    ``_ROLLOFF_BLOCK`` bins finds the block, then the running sum inside that block the bin.
    """
    n_bins = a.magnitude.shape[-1]
    blocks = a.magnitude_blocks
    block_sums = blocks.sum(axis=-1)
    running = np.cumsum(block_sums, axis=-1)
    threshold = _ROLL_PERCENT * running[..., -1:]
    block = np.argmax(running >= threshold, axis=-1)[..., None]
    before = np.take_along_axis(running - block_sums, block, axis=-1)
    inside = before + np.cumsum(
        np.take_along_axis(blocks, block[..., None], axis=-2)[..., 0, :], axis=-1
    )
    reached = inside >= threshold
    # rounding can leave the block's last running sum a hair below the threshold
    offset = np.where(reached.any(axis=-1), np.argmax(reached, axis=-1), _ROLLOFF_BLOCK - 1)
    first = np.minimum(block[..., 0] * _ROLLOFF_BLOCK + offset, n_bins - 1)
    return _fft_frequencies(a.sample_rate, a.n_fft)[first].mean(axis=-1)


def _spectral_flatness(a: _Analysis) -> np.ndarray:
    """``[batch]``: mean over frames of gmean / amean of max(power, 1e-10)."""
    s = np.maximum(np.float32(_AMIN), a.power)
    gmean = np.exp(np.mean(np.log(s), axis=-1))
    return (gmean / np.mean(s, axis=-1)).mean(axis=-1)


def _spectral_contrast(a: _Analysis) -> np.ndarray:
    """``[batch, 7]`` dB: power_to_db(peak) - power_to_db(valley) of |STFT| per band (librosa)."""
    mag = a.magnitude
    bands = _contrast_bands(a.sample_rate, a.n_fft)
    shape = (*mag.shape[:-1], len(bands))
    valley, peak = np.empty(shape), np.empty(shape)
    for k, (lo, stop, n_q) in enumerate(bands):
        sub = mag[..., lo:stop]
        if n_q == 1:
            valley[..., k], peak[..., k] = sub.min(axis=-1), sub.max(axis=-1)
        else:  # numpy's SIMD sort is several times faster than np.partition here
            ordered = np.sort(sub, axis=-1)
            valley[..., k] = ordered[..., :n_q].mean(axis=-1)
            peak[..., k] = ordered[..., -n_q:].mean(axis=-1)
    return (_power_to_db(peak) - _power_to_db(valley)).mean(axis=1)


def _mfcc(a: _Analysis) -> np.ndarray:
    """``[batch, 13]``: c1..c13 of DCT-II (ortho) of the dB mel spectrum, mean over frames."""
    coeffs = a.mel_db.astype(np.float64) @ _dct_matrix(_N_MELS, _N_MFCC)
    return coeffs[..., 1:].mean(axis=1)


def _zero_crossing_rate(a: _Analysis) -> np.ndarray:
    """``[batch]``: librosa zero_crossing_rate (edge padding, |x| <= 1e-10 counts as 0)."""
    n, hop = a.n_fft, a.hop_length
    padded = np.pad(a.y, ((0, 0), (n // 2, n // 2)), mode="edge")
    negative = padded < -_ZCR_THRESHOLD
    # change[i]: samples i-1 and i differ in sign (change[0] = 0)
    change = np.zeros(negative.shape, dtype=np.int32)
    change[:, 1:] = negative[:, 1:] != negative[:, :-1]
    n_frames = 1 + (padded.shape[-1] - n) // hop
    # a frame counts the changes between its own samples: not the one into its first sample
    per_frame = _frame_sums(change, n_frames, n, hop) - change[:, np.arange(n_frames) * hop]
    return (per_frame / n).mean(axis=-1)


def _rms_db_mean(a: _Analysis) -> np.ndarray:
    """``[batch]`` dB."""
    return a.rms_db.mean(axis=-1)


def _rms_db_std(a: _Analysis) -> np.ndarray:
    """``[batch]`` dB (population std; unchanged by a gain unless frames hit the floor)."""
    return a.rms_db.std(axis=-1)


def _onset_rate(a: _Analysis) -> np.ndarray:
    """``[batch]`` onsets per second: librosa.onset.onset_detect on the default onset strength.

    Onset strength: mean over mel bands of the positive first difference of the dB mel
    spectrogram, shifted right by 3 frames (lag 1 + n_fft / (2 hop)), trimmed to n_frames;
    normalised to [0, 1]; peaks picked with pre_max 30 ms, post_max 1 frame, pre_avg 100 ms,
    post_avg 100 ms + 1 frame, wait 30 ms, delta 0.07 (librosa's defaults, in frames).
    """
    mel_db = a.mel_db
    n_frames = mel_db.shape[1]
    flux = np.maximum(0.0, mel_db[:, 1:] - mel_db[:, :-1]).mean(axis=-1)
    shift = 1 + a.n_fft // (2 * a.hop_length)
    envelope = np.zeros((mel_db.shape[0], n_frames), dtype=np.float32)
    if n_frames > shift:
        envelope[:, shift:] = flux[:, : n_frames - shift]
    sr, hop = a.sample_rate, a.hop_length
    params = dict(
        pre_max=int(0.03 * sr // hop),
        post_max=1,
        pre_avg=int(0.10 * sr // hop),
        post_avg=int(0.10 * sr // hop) + 1,
        wait=int(0.03 * sr // hop),
        delta=0.07,
    )
    duration_s = a.y.shape[1] / a.sample_rate
    rates = np.zeros(mel_db.shape[0])
    for b, env in enumerate(envelope):
        env = env - env.min()
        env /= env.max() + np.float32(_TINY32)
        if env.any():
            rates[b] = len(_peak_pick(env, **params)) / duration_s
    return rates


def _chroma(a: _Analysis) -> np.ndarray:
    """``[batch, 12]``."""
    return a.chroma


def _chroma_entropy(a: _Analysis) -> np.ndarray:
    """``[batch]`` bits; log2(12) for an all-zero chroma."""
    chroma = a.chroma
    total = chroma.sum(axis=-1, keepdims=True)
    p = np.where(total > 0, chroma / np.where(total > 0, total, 1.0), 1.0 / 12)
    logp = np.log2(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=-1)


_COMPUTE: dict[str, Callable[[_Analysis], np.ndarray]] = {
    "spectral_centroid": _spectral_centroid,
    "spectral_rolloff": _spectral_rolloff,
    "spectral_bandwidth": _spectral_bandwidth,
    "spectral_contrast": _spectral_contrast,
    "spectral_flatness": _spectral_flatness,
    "mfcc": _mfcc,
    "zero_crossing_rate": _zero_crossing_rate,
    "rms_db_mean": _rms_db_mean,
    "rms_db_std": _rms_db_std,
    "onset_rate": _onset_rate,
    "chroma": _chroma,
    "chroma_entropy": _chroma_entropy,
}
