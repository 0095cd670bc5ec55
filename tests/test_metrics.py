"""Tests for speechcodec.metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from speechcodec.audio import load_audio
from speechcodec.metrics import (
    Quality,
    align,
    compression_ratio,
    compute_quality,
    kbps,
    log_mel_distance,
    pesq_nb,
    pesq_wb,
    si_sdr_db,
    snr_db,
    stoi,
)

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A real speech clip if samples/ has been generated, else a crude speech-like signal."""
    clip = ROOT / "samples" / "espeak_male.wav"
    if clip.exists():
        return load_audio(clip).samples.astype(np.float64)
    return synthetic_speech()


def synthetic_speech(seconds: float = 3.0) -> np.ndarray:
    """Harmonic 'voiced' bursts with a moving pitch, separated by pauses."""
    rng = np.random.default_rng(7)
    t = np.arange(int(RATE * seconds)) / RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 1.5 * t), 0, None) ** 2
    return 0.3 * voiced * envelope + 0.003 * rng.standard_normal(t.size)


def white(n: int, std: float, seed: int = 0) -> np.ndarray:
    return std * np.random.default_rng(seed).standard_normal(n)


def tone(n: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / RATE)


# --- SNR / SI-SDR -------------------------------------------------------------------------


def test_snr_of_identical_signals_is_infinite() -> None:
    x = tone(1600)
    assert snr_db(x, x) == math.inf
    assert si_sdr_db(x, x) == math.inf


def test_snr_of_silence() -> None:
    z = np.zeros(100)
    assert math.isnan(snr_db(z, z))
    assert snr_db(z, z + 0.1) == -math.inf
    assert math.isnan(si_sdr_db(z, tone(100)))


def test_snr_matches_theory_for_white_noise() -> None:
    n, amp, std = 32000, 0.5, 0.05
    ref = tone(n, amp=amp)
    expected = 10 * math.log10((amp**2 / 2) / std**2)  # 16.99 dB
    assert snr_db(ref, ref + white(n, std)) == pytest.approx(expected, abs=0.5)
    # zero-mean signal and independent noise: SI-SDR is close to SNR
    assert si_sdr_db(ref, ref + white(n, std)) == pytest.approx(expected, abs=0.5)


def test_si_sdr_is_scale_invariant() -> None:
    ref = tone(8000)
    est = ref + white(8000, 0.05)
    base = si_sdr_db(ref, est)
    for gain in (0.01, 0.5, 3.0, -2.0):
        assert si_sdr_db(ref, gain * est) == pytest.approx(base, abs=1e-9)
    assert si_sdr_db(ref, 0.25 * ref) > 100  # pure gain is no distortion
    assert snr_db(ref, 0.25 * ref) < 3  # while SNR penalises it


def test_si_sdr_ignores_dc_offset() -> None:
    ref = tone(8000)
    est = ref + white(8000, 0.05)
    assert si_sdr_db(ref, est + 0.3) == pytest.approx(si_sdr_db(ref, est), abs=1e-9)


def test_lengths_are_trimmed_to_the_shorter_signal() -> None:
    ref = tone(4000)
    est = np.concatenate([ref, white(500, 1.0)])
    assert snr_db(ref, est) == math.inf
    assert log_mel_distance(est, ref) == 0.0


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        snr_db(np.zeros((2, 10)), np.zeros((2, 10)))


# --- mel distance -------------------------------------------------------------------------


def test_mel_distance_zero_for_identical_and_grows_with_noise(speech: np.ndarray) -> None:
    x = speech[: 2 * RATE]
    assert log_mel_distance(x, x) == 0.0
    distances = [log_mel_distance(x, x + white(x.size, std)) for std in (0.001, 0.01, 0.1)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_mel_distance_of_gain_change() -> None:
    # magnitude is linear in gain, so a gain of 10 shifts every log10 mel value by 1
    # (white noise: every band is well above the 1e-5 floor)
    x = white(RATE, 0.1)
    assert log_mel_distance(x, 10 * x) == pytest.approx(1.0, abs=1e-6)


def test_mel_distance_handles_short_and_empty_input() -> None:
    assert log_mel_distance(tone(10), tone(10)) == 0.0
    assert math.isnan(log_mel_distance(np.zeros(0), np.zeros(0)))


# --- PESQ / STOI --------------------------------------------------------------------------


def test_pesq_of_identical_speech_is_high(speech: np.ndarray) -> None:
    assert pesq_wb(speech, speech, RATE) > 4.0
    assert pesq_nb(speech, speech, RATE) > 4.0


def test_pesq_of_noise_is_low(speech: np.ndarray) -> None:
    noise = white(speech.size, 0.1, seed=3)
    assert pesq_wb(speech, noise, RATE) < 1.5
    assert pesq_nb(speech, noise, RATE) < 2.0


def test_pesq_decreases_with_noise(speech: np.ndarray) -> None:
    light = pesq_wb(speech, speech + white(speech.size, 0.001), RATE)
    heavy = pesq_wb(speech, speech + white(speech.size, 0.03), RATE)
    assert 1.0 <= heavy < light <= 4.65


def test_pesq_at_other_rates_resamples(speech: np.ndarray) -> None:
    from speechcodec.audio import resample

    s48 = resample(speech.astype(np.float32), RATE, 48000)
    assert pesq_wb(s48, s48, 48000) > 4.0


def test_pesq_never_raises_on_unscorable_input() -> None:
    silence = np.zeros(RATE)
    assert math.isnan(pesq_wb(silence, silence))
    assert math.isnan(pesq_nb(silence, silence))
    assert math.isnan(pesq_wb(tone(100), tone(100)))  # far too short


def test_stoi_identical_is_one_and_noise_lower(speech: np.ndarray) -> None:
    assert stoi(speech, speech, RATE) == pytest.approx(1.0, abs=1e-3)
    scores = [stoi(speech, speech + white(speech.size, std, seed=4), RATE) for std in (0.1, 0.3)]
    assert 0.99 > scores[0] > scores[1]
    assert scores[1] < 0.7
    assert stoi(speech, white(speech.size, 0.1, seed=4), RATE) < 0.5


# --- alignment ----------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0, 1, 37, 480, -25])
def test_align_recovers_known_delay(speech: np.ndarray, delay: int) -> None:
    ref = speech[:RATE]
    if delay >= 0:
        est = np.concatenate([np.zeros(delay), ref])[: ref.size]
    else:
        est = np.concatenate([ref[-delay:], np.zeros(-delay)])
    est = 0.7 * est + white(ref.size, 0.002, seed=5)

    found, aligned = align(ref, est, max_delay_samples=800)

    assert found == delay
    assert aligned.shape == est.shape
    keep = slice(max(0, -delay), ref.size - max(0, delay))
    assert si_sdr_db(ref[keep], aligned[keep]) > 30


def test_align_respects_max_delay() -> None:
    ref = white(4000, 0.3, seed=6)
    est = np.concatenate([np.zeros(300), ref])[:4000]
    found, _ = align(ref, est, max_delay_samples=100)
    assert abs(found) <= 100
    assert align(ref, est, max_delay_samples=300)[0] == 300


# --- summary and bitrate ------------------------------------------------------------------


def test_compute_quality(speech: np.ndarray) -> None:
    x = speech[: 2 * RATE]
    est = x + white(x.size, 0.01)
    q = compute_quality(x, est)
    assert isinstance(q, Quality)
    assert q.snr_db == pytest.approx(snr_db(x, est))
    assert q.si_sdr_db == pytest.approx(si_sdr_db(x, est))
    assert q.mel_distance == pytest.approx(log_mel_distance(x, est))
    assert 1.0 < q.pesq_wb < 4.65
    assert 0.5 < q.stoi <= 1.0
    d = q.as_dict()
    assert list(d) == ["snr_db", "si_sdr_db", "mel_distance", "pesq_wb", "stoi"]
    assert all(isinstance(v, float) for v in d.values())


def test_compute_quality_without_perceptual() -> None:
    x = tone(RATE)
    q = compute_quality(x, x, with_perceptual=False)
    assert math.isnan(q.pesq_wb) and math.isnan(q.stoi)
    assert q.snr_db == math.inf and q.mel_distance == 0.0


def test_bitrate_helpers() -> None:
    assert kbps(60_000, 10.0) == pytest.approx(6.0)
    assert compression_ratio(60_000, 10.0) == pytest.approx(256 / 6)
    assert compression_ratio(256_000, 1.0) == pytest.approx(1.0)
    assert compression_ratio(1000, 1.0, pcm_bits_per_second=8000) == pytest.approx(8.0)
    assert compression_ratio(0, 1.0) == math.inf
    with pytest.raises(ValueError):
        kbps(100, 0)
