"""Oracle swaps: each variant takes exactly the named part of the spectrum from the original."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcodec.cli import main
from speechcodec.oracle import VARIANTS, oracle_swaps

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "flite_slt.wav"


def _voice(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    """A vowel-like harmonic complex at 140 Hz with a falling spectrum, plus a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 50) if 140 * k < rate / 2)
    return (0.1 * x + 0.001 * rng.standard_normal(len(t))).astype(np.float32)


def _log_spectrum(x: np.ndarray) -> np.ndarray:
    """Long-term log power spectrum (dB) over 512-point Hann frames."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
    return 10 * np.log10((np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0) + 1e-12)


def _trim(x: np.ndarray) -> np.ndarray:
    return x[480:-480]  # away from the edges, where the STFT frames are incomplete


def test_swapping_everything_from_itself_changes_nothing():
    x = _voice()
    out = oracle_swaps(x, x)
    assert list(out) == list(VARIANTS)
    for name, y in out.items():
        assert y.shape == x.shape and y.dtype == np.float32
        assert np.max(np.abs(_trim(y - x))) < 1e-5, name


def test_envelope_carries_level_and_tilt_fine_structure_does_not():
    """A decoded signal 12 dB quiet and tilted (zero-phase 3-tap filter): taking the original's
    envelope restores level and tilt; taking only its fine structure keeps both errors."""
    x = _voice()
    y = 0.25 * np.convolve(x, [-0.3, 1.0, -0.3], mode="same").astype(np.float32)
    out = oracle_swaps(x, y)
    ref = _log_spectrum(_trim(x))
    err = {name: np.mean(np.abs(_log_spectrum(_trim(s)) - ref)) for name, s in out.items()}
    assert err["decoded"] > 8.0
    assert err["original envelope"] < 0.15 * err["decoded"]
    assert err["original magnitude"] < 0.15 * err["decoded"]
    assert err["original fine structure"] > 0.8 * err["decoded"]
    level = {name: 20 * np.log10(np.std(_trim(s)) / np.std(_trim(x))) for name, s in out.items()}
    assert level["original envelope"] == pytest.approx(0.0, abs=1.0)
    assert level["original fine structure"] == pytest.approx(level["decoded"], abs=1.0)


def test_phase_swap_keeps_decoded_magnitude():
    """The decoded signal delayed by half a hop: its own magnitudes with the original's phases
    line up with the original again; the original's magnitudes with its phases do not."""
    x = _voice()
    y = np.roll(x, 80)
    out = oracle_swaps(x, y)

    def snr(s):
        s, r = _trim(s), _trim(x)
        return 10 * np.log10(np.sum(r ** 2) / np.sum((s - r) ** 2))

    assert snr(out["decoded"]) < 0
    assert snr(out["original phase"]) > 20
    assert snr(out["original magnitude"]) < 3


def test_oracle_rejects_mismatched_lengths_and_bad_lifter():
    x = _voice(0.2)
    with pytest.raises(ValueError, match="samples"):
        oracle_swaps(x, x[:-1])
    with pytest.raises(ValueError, match="lifter"):
        oracle_swaps(x, x, lifter=0)
    with pytest.raises(ValueError, match="shorter than one"):
        oracle_swaps(x[:100], x[:100])


def test_oracle_command_prints_every_variant_and_draws(tmp_path, capsys):
    png = tmp_path / "oracle.png"
    assert main(["oracle", str(SAMPLE), "--kbps", "3", "--plot", str(png), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert [s["variant"] for s in summary] == list(VARIANTS)
    assert all(s["files"] == 1 and 1.0 <= s["pesq_wb"] <= 4.7 for s in summary)
    # The original magnitude (all of it) is worth more than either of its two halves.
    gain = {s["variant"]: s["pesq_wb_gain"] for s in summary}
    assert gain["decoded"] == 0.0
    assert gain["original magnitude"] > max(gain["original envelope"],
                                            gain["original fine structure"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["oracle", str(SAMPLE), "--kbps", "2.2"]) == 1
    assert "unsupported bitrate" in capsys.readouterr().err
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, dtype=np.float32), 16000)
    assert main(["oracle", str(short)]) == 1
    err = capsys.readouterr().err
    assert "shorter than 30 ms" in err and "no usable audio" in err
