import numpy as np
import pytest
import torch

from speechcodec.config import CodecConfig
from speechcodec.model import Codec

TINY = CodecConfig(encoder_width=32, encoder_blocks=2, decoder_width=32, decoder_blocks_low=1,
                   decoder_blocks_high=1, latent_dim=16, codebook_size=64, num_codebooks=12)


@pytest.fixture
def tiny_codec() -> Codec:
    """A small random model: fast, and enough for structural properties."""
    torch.manual_seed(0)
    codec = Codec(TINY)
    # Spread the codebooks so different inputs pick different codes.
    for layer in codec.quantizer.layers:
        layer.codebook.normal_(0, 0.5)
        layer.initialised.fill_(True)
    return codec.eval()


@pytest.fixture
def speech() -> np.ndarray:
    """A short synthetic voiced signal at 16 kHz (about 1.3 s)."""
    rng = np.random.default_rng(1)
    t = np.arange(21000) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.2 * x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def one_thread():
    """Frame-sized work: threads only add overhead (a lot of it on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model_file(tiny_codec, tmp_path):
    """The tiny model as a release file, for commands that take `--model`."""
    path = tmp_path / "tiny.pt"
    tiny_codec.save_release(path, "tiny-test")
    return path


@pytest.fixture
def talk(speech, tmp_path):
    """The synthetic speech as a 16-bit WAV file."""
    import soundfile as sf

    path = tmp_path / "talk.wav"
    sf.write(path, speech, 16000, subtype="PCM_16")
    return path
