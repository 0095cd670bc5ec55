"""Objective quality measures and bitrate accounting.

All functions take a reference and an estimate as float arrays ``[N]`` (mono, nominal full
scale [-1, 1]) at the same sample rate. If the lengths differ both are trimmed to the shorter
one. Results are plain floats; ``nan`` means "not measurable" (for example PESQ of silence, or
a metric whose package is not installed). No function here raises on unusual signals.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "PCM_BITS_PER_SECOND",
    "Quality",
    "align",
    "compression_ratio",
    "compute_quality",
    "kbps",
    "log_mel_distance",
    "pesq_nb",
    "pesq_wb",
    "si_sdr_db",
    "snr_db",
    "stoi",
]

PCM_BITS_PER_SECOND = 256_000
"""16-bit PCM at 16 kHz."""

_MEL_N_FFT = 1024
_MEL_HOP = 256
_MEL_BANDS = 80
_MEL_FLOOR = 1e-5


def _pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of both signals, trimmed to the shorter length."""
    r = np.asarray(ref, dtype=np.float64)
    e = np.asarray(est, dtype=np.float64)
    if r.ndim != 1 or e.ndim != 1:
        raise ValueError(f"expected mono signals [N], got shapes {r.shape} and {e.shape}")
    n = min(r.shape[0], e.shape[0])
    return r[:n], e[:n]


def _ratio_db(signal_energy: float, noise_energy: float) -> float:
    if noise_energy == 0.0:
        return math.inf if signal_energy > 0.0 else math.nan
    if signal_energy == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    """Signal-to-noise ratio ``10 log10(sum ref^2 / sum (ref - est)^2)`` in dB.

    ``inf`` for identical non-silent signals, ``-inf`` for a silent reference with a non-silent
    estimate, ``nan`` if both are silent or empty.
    """
    r, e = _pair(ref, est)
    return _ratio_db(float(np.dot(r, r)), float(np.sum((r - e) ** 2)))


def si_sdr_db(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019).

    Both signals are made zero-mean; the estimate is projected onto the reference,
    ``target = (<est, ref> / <ref, ref>) ref``, and the result is
    ``10 log10(|target|^2 / |est - target|^2)``. Unchanged by any non-zero gain on ``est``.
    ``nan`` for a constant (silent) reference.
    """
    r, e = _pair(ref, est)
    r = r - r.mean() if r.size else r
    e = e - e.mean() if e.size else e
    ref_energy = float(np.dot(r, r))
    if ref_energy == 0.0:
        return math.nan
    target = (float(np.dot(e, r)) / ref_energy) * r
    noise = e - target
    return _ratio_db(float(np.dot(target, target)), float(np.dot(noise, noise)))


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """HTK-scale triangular filters, no area normalisation, 0 Hz..Nyquist: ``[F, n_mels]`` with
    F = n_fft // 2 + 1. Filter m rises from 0 at edge m to 1 at edge m + 1 and falls to 0 at edge
    m + 2, the edges evenly spaced in mel (torchaudio's ``melscale_fbanks`` with ``norm=None,
    mel_scale="htk"``). Shared by this metric and the training loss; the array is cached, so
    callers must not modify it."""
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2))
    lower, centre, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def _log_mel(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """log10 mel magnitude spectrogram ``[frames, n_mels]``."""
    pad = _MEL_N_FFT // 2
    x = np.pad(x, (pad, pad))
    n_frames = 1 + (x.shape[0] - _MEL_N_FFT) // _MEL_HOP
    idx = np.arange(_MEL_N_FFT)[None, :] + _MEL_HOP * np.arange(n_frames)[:, None]
    window = np.hanning(_MEL_N_FFT + 1)[:-1]  # periodic Hann
    magnitude = np.abs(np.fft.rfft(x[idx] * window, axis=1))
    mel = magnitude @ mel_filterbank(sample_rate, _MEL_N_FFT, _MEL_BANDS)
    return np.log10(np.maximum(mel, _MEL_FLOOR))


def log_mel_distance(ref: np.ndarray, est: np.ndarray, sample_rate: int = 16000) -> float:
    """Mean absolute difference of log10 mel magnitude spectrograms.

    Spectrogram: periodic Hann window, n_fft 1024, hop 256, frames centred (zero padding of
    512 at both ends), magnitude (not power); 80 HTK-scale triangular mel filters from 0 Hz to
    Nyquist, without area normalisation; ``log10(max(mel, 1e-5))``. The value is the mean of
    ``|log_mel(ref) - log_mel(est)|`` over all frames and bands (0 for identical signals; a
    difference of 1.0 is a factor of 10 in magnitude, i.e. 20 dB). ``nan`` for empty input.
    """
    r, e = _pair(ref, est)
    if r.size == 0:
        return math.nan
    return float(np.mean(np.abs(_log_mel(r, sample_rate) - _log_mel(e, sample_rate))))


def _to_rate(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return x
    from speechcodec.audio import resample

    return resample(x, from_rate, to_rate).astype(np.float64)


def _pesq(ref: np.ndarray, est: np.ndarray, sample_rate: int, rate: int, mode: str) -> float:
    try:
        from pesq import pesq as pesq_fn

        r, e = _pair(ref, est)
        r = _to_rate(r, sample_rate, rate)
        e = _to_rate(e, sample_rate, rate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = pesq_fn(rate, r, e, mode)
        return float(value)
    except Exception:
        return math.nan


def pesq_wb(ref: np.ndarray, est: np.ndarray, sample_rate: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO about 1.0..4.64), computed at 16 kHz.

    Signals at another rate are resampled to 16 kHz first. Returns ``nan`` instead of raising
    when the ``pesq`` package is missing or PESQ cannot score the input (silence, < 0.25 s).
    """
    return _pesq(ref, est, sample_rate, 16000, "wb")


def pesq_nb(ref: np.ndarray, est: np.ndarray, sample_rate: int = 16000) -> float:
    """Narrow-band PESQ (ITU-T P.862, MOS-LQO about 1.0..4.5), computed at 8 kHz.

    Signals are resampled to 8 kHz first. ``nan`` when it cannot be computed (see ``pesq_wb``).
    """
    return _pesq(ref, est, sample_rate, 8000, "nb")


def stoi(ref: np.ndarray, est: np.ndarray, sample_rate: int = 16000) -> float:
    """Short-time objective intelligibility (Taal et al., 2011; ``pystoi``, not extended).

    About 0..1, higher is better. ``nan`` if ``pystoi`` is missing or fails on the input.
    """
    try:
        from pystoi import stoi as stoi_fn

        r, e = _pair(ref, est)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = stoi_fn(r, e, sample_rate, extended=False)
        return float(value)
    except Exception:
        return math.nan


def align(ref: np.ndarray, est: np.ndarray, max_delay_samples: int) -> tuple[int, np.ndarray]:
    """Find and undo a delay of ``est`` relative to ``ref`` by cross-correlation.

    The delay ``d`` (in samples, ``|d| <= max_delay_samples``) maximises
    ``sum_n est[n + d] * ref[n]``; positive ``d`` means ``est`` lags ``ref``.

    Returns:
        ``(d, aligned)`` where ``aligned[n] = est[n + d]`` (zeros where that index is out of
        range) has the length of ``est``, so ``aligned`` lines up with ``ref``.
    """
    if max_delay_samples < 0:
        raise ValueError(f"max_delay_samples must be >= 0, got {max_delay_samples}")
    r = np.asarray(ref, dtype=np.float64)
    e = np.asarray(est, dtype=np.float64)
    if r.ndim != 1 or e.ndim != 1:
        raise ValueError(f"expected mono signals [N], got shapes {r.shape} and {e.shape}")
    if r.size == 0 or e.size == 0:
        return 0, np.asarray(est).copy()
    size = 1 << math.ceil(math.log2(r.size + e.size))
    corr = np.fft.irfft(np.fft.rfft(e, size) * np.conj(np.fft.rfft(r, size)), size)
    max_pos = min(max_delay_samples, e.size - 1)
    max_neg = min(max_delay_samples, r.size - 1)
    lags = np.arange(-max_neg, max_pos + 1)
    delay = int(lags[int(np.argmax(corr[lags % size]))])

    src = np.asarray(est)
    aligned = np.zeros_like(src)
    if delay >= 0:
        aligned[: src.size - delay] = src[delay:]
    else:
        aligned[-delay:] = src[: src.size + delay]
    return delay, aligned


@dataclass(frozen=True)
class Quality:
    """Quality of an estimate against a reference (``nan`` where not computed)."""

    snr_db: float
    si_sdr_db: float
    mel_distance: float
    pesq_wb: float
    stoi: float

    def as_dict(self) -> dict[str, float]:
        """Field name -> value."""
        return asdict(self)


def compute_quality(
    ref: np.ndarray,
    est: np.ndarray,
    sample_rate: int = 16000,
    with_perceptual: bool = True,
) -> Quality:
    """All metrics at once; PESQ and STOI (slow) are ``nan`` unless ``with_perceptual``."""
    r, e = _pair(ref, est)
    return Quality(
        snr_db=snr_db(r, e),
        si_sdr_db=si_sdr_db(r, e),
        mel_distance=log_mel_distance(r, e, sample_rate),
        pesq_wb=pesq_wb(r, e, sample_rate) if with_perceptual else math.nan,
        stoi=stoi(r, e, sample_rate) if with_perceptual else math.nan,
    )


def kbps(num_bits: float, seconds: float) -> float:
    """Bitrate in kbit/s (1 kbit = 1000 bits)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return num_bits / seconds / 1000.0


def compression_ratio(
    num_bits: float, seconds: float, pcm_bits_per_second: float = PCM_BITS_PER_SECOND
) -> float:
    """How many times smaller than PCM (default 16-bit at 16 kHz, 256 kbit/s) the stream is.

    ``inf`` for zero bits.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if num_bits <= 0:
        return math.inf
    return pcm_bits_per_second * seconds / num_bits
