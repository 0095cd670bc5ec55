"""The training losses' mel spectrogram and the augmentation's biquads, checked against their
formulas (they replaced torchaudio's MelSpectrogram, lowpass_biquad and equalizer_biquad)."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import freqz

from speechcodec.train import (
    CropSampler,
    MelSpectrogram,
    lowpass_coefficients,
    mel_filterbank,
    peaking_eq_coefficients,
)


def _hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _reference_mel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """Loops over frames, bins and filters: reflect-padded centred frames, periodic Hann window,
    |DFT|, triangles between HTK-mel-spaced edges from 0 Hz to sr / 2."""
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic
    frames = 1 + len(x) // hop
    edges = [_mel_to_hz(_hz_to_mel(0.0) + (_hz_to_mel(sr / 2) - _hz_to_mel(0.0)) * i
                        / (n_mels + 1)) for i in range(n_mels + 2)]
    bins = n_fft // 2 + 1
    freqs = [k * (sr / 2) / (bins - 1) for k in range(bins)]
    fb = np.zeros((n_mels, bins))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= mid:
                fb[m, k] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                fb[m, k] = (hi - f) / (hi - mid)
    out = np.zeros((n_mels, frames))
    for t in range(frames):
        seg = xp[t * hop: t * hop + n_fft] * window
        out[:, t] = fb @ np.abs(np.fft.rfft(seg))
    return out


@pytest.mark.parametrize("n_fft", [128, 512, 2048])
def test_mel_spectrogram_matches_the_formula(n_fft):
    n_mels = max(16, min(128, n_fft // 16))
    rng = np.random.default_rng(n_fft)
    x = (0.3 * rng.standard_normal((2, 6000))).astype(np.float32)
    mel = MelSpectrogram(16000, n_fft, n_fft // 4, n_mels)(torch.from_numpy(x)).numpy()
    assert mel.shape == (2, n_mels, 1 + 6000 // (n_fft // 4))
    for b in range(2):
        ref = _reference_mel(x[b], 16000, n_fft, n_fft // 4, n_mels)
        assert np.abs(mel[b] - ref).max() <= 1e-5 * np.abs(ref).max()


def test_mel_filterbank_triangles():
    fb = mel_filterbank(16000, 512, 32)
    assert fb.shape == (257, 32) and fb.min() >= 0 and fb.max() <= 1
    # Every filter has its peak at its centre edge and is nonzero over a contiguous band.
    centres = np.array([_mel_to_hz(_hz_to_mel(8000) * (m + 1) / 33) for m in range(32)])
    peaks = fb.argmax(axis=0) * 8000 / 256
    assert np.all(np.abs(peaks - centres) <= 8000 / 256)
    for m in range(32):
        nz = np.flatnonzero(fb[:, m])
        assert len(nz) and np.all(np.diff(nz) == 1)


def test_mel_spectrogram_keeps_leading_dimensions():
    mel = MelSpectrogram(16000, 256, 64, 16)
    x = torch.randn(3, 2, 4000)
    y = mel(x)
    assert y.shape == (3, 2, 16, 1 + 4000 // 64)
    assert torch.allclose(y[1, 0], mel(x[1, 0]), atol=1e-5)


def test_lowpass_biquad_response():
    """RBJ low-pass, Q = 0.707: unity at DC, |H| = Q at the cut-off, a zero at Nyquist."""
    b, a = lowpass_coefficients(16000, 3700.0, q=0.707)
    _, h = freqz(b, a, worN=[0.0, 3700.0, 7999.999], fs=16000)
    assert abs(h[0]) == pytest.approx(1.0, abs=1e-9)
    assert abs(h[1]) == pytest.approx(0.707, abs=1e-6)
    assert abs(h[2]) < 1e-3


@pytest.mark.parametrize("gain_db", [-6.0, 3.0, 12.0])
def test_peaking_eq_response(gain_db):
    """RBJ peaking EQ: `gain_db` at the centre, 0 dB at DC and Nyquist."""
    b, a = peaking_eq_coefficients(16000, 1000.0, gain_db, q=1.0)
    _, h = freqz(b, a, worN=[0.0, 1000.0, 8000.0], fs=16000)
    db = 20 * np.log10(np.abs(h))
    assert db == pytest.approx([0.0, gain_db, 0.0], abs=1e-6)


def test_eq_augmentation_changes_the_spectrum_around_its_centre():
    rng = np.random.default_rng(2)
    clips = [(0.1 * rng.standard_normal(16000)).astype(np.float32)]
    plain = CropSampler(clips, 8000, (0.0, 0.0), seed=5).batch(1)
    eq = CropSampler(clips, 8000, (0.0, 0.0), seed=5, eq_prob=1.0, eq_db=12.0).batch(1)
    assert eq.dtype == torch.float32 and eq.shape == plain.shape
    assert float((eq - plain).abs().max()) > 1e-3
