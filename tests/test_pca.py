"""The linear PCA codec: framing, quantizers, bit budget, packing, fitting and the shipped file."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechcodec.metrics import snr_db
from speechcodec.pca import (
    DEFAULT_BASIS,
    HOP,
    MAX_BITS,
    PCACodec,
    PCACodes,
    _frames,
    _overlap_add,
    allocate_bits,
    dequantize,
    fit_pca,
    load_pca,
    num_frames_for,
    quantize,
)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "train.csv"


def _signals(speech):
    rng = np.random.default_rng(3)
    return [speech, 0.5 * speech[::-1].copy(),
            (0.05 * rng.standard_normal(16000)).astype(np.float32)]


def _voiced(n: int = 21000) -> np.ndarray:
    """The same signal as conftest's `speech` fixture (fixtures cannot be module-scoped here)."""
    rng = np.random.default_rng(1)
    t = np.arange(n) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.2 * x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def small_pca():
    return fit_pca(_signals(_voiced()), num_components=48, frames_per_signal=32, seed=0)


@pytest.mark.parametrize("window", ["sine", "rect"])
@pytest.mark.parametrize("n", [1, 319, 320, 321, 5000])
def test_framing_with_every_axis_rebuilds_exactly(window, n):
    x = np.random.default_rng(n).standard_normal(n)
    frames = _frames(x, window, HOP)
    assert frames.shape[0] == num_frames_for(n, window)
    # sine: w^2 overlap-adds to 1, so analysis window * synthesis window is the identity
    np.testing.assert_allclose(_overlap_add(frames, n, window, HOP), x, atol=1e-12)


def test_full_basis_is_an_identity(speech):
    pca = fit_pca([speech, speech[::-1].copy()], num_components=640, frames_per_signal=4)
    comps = pca.components
    np.testing.assert_allclose(comps @ comps.T, np.eye(640), atol=2e-3)  # float16-rounded
    y = pca.inverse(pca.transform(speech), len(speech))
    assert snr_db(speech, y) > 45


def test_fit_is_deterministic_and_sorted(speech, small_pca):
    again = fit_pca(_signals(speech), num_components=48, frames_per_signal=32, seed=0)
    np.testing.assert_array_equal(again.components, small_pca.components)
    np.testing.assert_array_equal(again.steps, small_pca.steps)
    assert np.all(np.diff(small_pca.variances) <= 1e-12)
    assert 0 < small_pca.energy_kept(8) < small_pca.energy_kept(48) <= 1 + 1e-9


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=40), st.integers(1, MAX_BITS),
       st.floats(0.01, 3.0))
@settings(max_examples=60, deadline=None)
def test_quantizer_indices_fit_their_bits(values, bits, step):
    y = np.array(values)
    b = np.full(len(y), bits)
    idx = quantize(y, step, b)
    assert idx.min() >= 0 and idx.max() < 2 ** bits
    yq = dequantize(idx, step, b)
    inside = np.abs(y) < step * (2 ** (bits - 1) - 1)
    assert np.all(np.abs(yq - y)[inside] <= step / 2 + 1e-9)  # no overload: within half a step


def test_midtread_keeps_silence_silent():
    for b in range(2, MAX_BITS + 1):
        assert dequantize(quantize(np.zeros(1), 0.1, np.array([b])), 0.1, np.array([b]))[0] == 0
    # one bit is the sign
    y = dequantize(quantize(np.array([-0.3, 0.3]), 0.2, np.array([1, 1])), 0.2, np.array([1, 1]))
    np.testing.assert_allclose(y, [-0.1, 0.1])


def test_allocation_is_exact_and_nested():
    rng = np.random.default_rng(0)
    var = np.sort(rng.uniform(0.01, 10, 20))[::-1]
    dist = var[:, None] * 4.0 ** -np.arange(MAX_BITS + 1)[None]
    prev = allocate_bits(dist, 0)
    for total in range(1, 121):
        a = allocate_bits(dist, total)
        assert a.sum() == total and a.max() <= MAX_BITS
        assert np.all(a >= prev)  # B + 1 bits = B bits plus one
        prev = a
    with pytest.raises(ValueError):
        allocate_bits(dist, 20 * MAX_BITS + 1)


@pytest.mark.parametrize("kbps,bits", [(1.5, 30), (3.0, 60), (6.0, 120)])
def test_bit_budget_matches_the_neural_codec(small_pca, speech, kbps, bits):
    codes = small_pca.encode(speech, kbps)
    assert codes.bits_per_frame == bits
    assert codes.num_frames == num_frames_for(len(speech))
    data = codes.to_bytes()
    assert len(data) == -(-codes.num_frames * bits // 8)
    back = PCACodes.from_bytes(data, codes.bits, codes.components, codes.num_frames,
                               codes.num_samples)
    np.testing.assert_array_equal(back.indices, codes.indices)
    y = small_pca.decode(back)
    assert y.shape == speech.shape and y.dtype == np.float32
    with pytest.raises(ValueError):
        PCACodes.from_bytes(data[:-1], codes.bits, codes.components, codes.num_frames,
                            codes.num_samples)


def test_more_bits_less_error(small_pca, speech):
    snrs = [snr_db(speech, small_pca.roundtrip(speech, r)) for r in (1.5, 3.0, 6.0)]
    assert snrs[0] < snrs[1] < snrs[2]
    assert snrs[0] > 0


def test_bitrate_must_be_whole_bits(small_pca, speech):
    with pytest.raises(ValueError, match="whole number"):
        small_pca.encode(speech, 1.234)
    with pytest.raises(ValueError):
        small_pca.encode(speech)


def test_save_load_roundtrip(small_pca, speech, tmp_path):
    path = tmp_path / "basis.npz"
    size = small_pca.save(path)
    assert size == path.stat().st_size
    loaded = PCACodec.load(path)
    assert loaded.window == small_pca.window and loaded.info == small_pca.info
    np.testing.assert_allclose(loaded.roundtrip(speech, 3.0), small_pca.roundtrip(speech, 3.0),
                               atol=1e-5)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a PCA basis"):
        PCACodec.load(tmp_path / "junk.npz")


def test_shipped_basis_is_small_and_works():
    assert DEFAULT_BASIS.exists(), "refit with: speechcodec pca-fit ... --out " + str(
        DEFAULT_BASIS)
    assert DEFAULT_BASIS.stat().st_size < 1_000_000
    pca = load_pca()
    assert pca.window == "sine" and pca.frame_length == 2 * HOP
    assert "train" in pca.info.get("source", "")
    import soundfile as sf

    x, rate = sf.read(ROOT / "samples" / "flite_slt.wav", dtype="float32")
    x = x[:32000]
    assert rate == 16000
    snrs = [snr_db(x, pca.roundtrip(x, r)) for r in (1.5, 3.0, 6.0)]
    assert snrs[0] < snrs[1] < snrs[2]


@pytest.mark.skipif(not TRAIN.exists(), reason="needs ../shared/data/train.csv")
def test_fit_on_training_files():
    from speechcodec.train import list_audio

    files = list_audio(TRAIN)[:2]
    pca = fit_pca([str(f) for f in files], num_components=16, frames_per_signal=16)
    assert pca.info["files"] == 2 and pca.num_components == 16
    assert pca.allocation(30).sum() == 30
