"""The shipped model keeps levels and lengths: quiet and loud input, a high (child-like) voice,
and telephone-band audio upsampled to 16 kHz come back at their own level, never clipped."""

from pathlib import Path

import numpy as np
import pytest

from speechcodec.audio import resample
from speechcodec.pipeline import roundtrip_samples
from speechcodec.pretrained import load_codec

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _speech(name: str) -> np.ndarray:
    import soundfile as sf

    x, sr = sf.read(SAMPLES / name, dtype="float32")
    assert sr == 16000
    return x


def active_level_db(x: np.ndarray, frame: int = 320) -> float:
    """RMS level (dBFS) over the 20 ms frames within 40 dB of the loudest frame."""
    n = len(x) // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    active = db > db.max() - 40
    return float(10 * np.log10(np.mean(rms[active] ** 2)))


def _high_voice(x: np.ndarray) -> np.ndarray:
    """Read 1.3x faster: pitch and formants 30% higher, like a child's voice."""
    return resample(x, 13000, 10000)


def _telephone(x: np.ndarray) -> np.ndarray:
    """Down to 8 kHz and back up: nothing above 4 kHz."""
    return resample(resample(x, 16000, 8000), 8000, 16000)[: len(x)]


CASES = {
    "loud": lambda x: x / np.abs(x).max() * 0.97,
    "quiet": lambda x: x / np.abs(x).max() * 10 ** (-35 / 20),
    "high voice": lambda x: _high_voice(x) / np.abs(x).max() * 0.5,
    "telephone band": lambda x: _telephone(x) / np.abs(x).max() * 0.5,
}


@pytest.fixture(scope="module")
def codec():
    return load_codec()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kbps", [1.5, 6])
def test_level_length_and_no_clipping(codec, case, kbps):
    x = CASES[case](_speech("flite_slt.wav")).astype(np.float32)
    y = roundtrip_samples(codec, x, codec.cfg.codebooks_for_kbps(kbps))
    assert len(y) == len(x)
    assert np.isfinite(y).all()
    drift = active_level_db(y) - active_level_db(x)
    assert abs(drift) < 3.0, f"{case} at {kbps} kbps: level drifts {drift:+.1f} dB"
    # Never clipped: the output stays within full scale (written as 16-bit PCM it would clip).
    assert np.mean(np.abs(y) >= 0.999) < 1e-4
    assert np.abs(y).max() < 1.2


def test_telephone_band_input_stays_band_limited(codec):
    """The decoder does not invent a high band that the input did not have."""
    x = _telephone(_speech("espeak_male.wav"))
    y = roundtrip_samples(codec, x.astype(np.float32), codec.cfg.codebooks_for_kbps(6))

    def high_share(s):
        spec = np.abs(np.fft.rfft(s)) ** 2
        return spec[len(spec) * 4500 // 8000:].sum() / spec.sum()

    assert high_share(y) < 0.05


def test_soft_limit_passes_the_body_and_bends_the_peaks_below_full_scale():
    import torch

    from speechcodec.layers import soft_limit

    x = torch.linspace(-3.0, 3.0, 6001)
    y = soft_limit(x)
    body = x.abs() <= 0.9
    assert torch.equal(y[body], x[body])  # untouched up to the knee
    assert (y.abs() <= 1.0).all() and torch.equal(soft_limit(-x), -y)  # bounded and odd
    assert (y.diff() >= 0).all()  # monotone: it never folds a peak back
    # continuous with slope 1 at the knee, so the bend adds no step or kink there
    k = torch.tensor([0.9, 0.9 + 1e-4])
    assert abs(float((soft_limit(k)[1] - soft_limit(k)[0]) / 1e-4) - 1.0) < 1e-3
    # a peak 15% over full scale comes back under 0.999
    assert float(soft_limit(torch.tensor(1.15))) < 0.999
