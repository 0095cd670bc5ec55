"""Classical codecs through their real tools: accounting, lengths, delay, and skipping."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from speechcodec import baselines as bl
from speechcodec.audio import load_audio
from speechcodec.metrics import align, stoi

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """2.5 s of the male sample (speech, so the codecs behave as on real input)."""
    return load_audio(ROOT / "samples" / "espeak_male.wav").samples[: int(2.5 * RATE)]


def _page(packets: list[bytes], seq: int) -> bytes:
    lacing = bytearray()
    for p in packets:
        lacing += bytes([255] * (len(p) // 255) + [len(p) % 255])
    head = b"OggS" + struct.pack("<BBqIII", 0, 0, 0, 1, seq, 0) + bytes([len(lacing)])
    return head + bytes(lacing) + b"".join(packets)


def test_ogg_packets_split_pages_and_long_packets():
    long = bytes(range(256)) * 2  # 512 bytes: lacing 255, 255, 2
    data = _page([b"OpusHead" + b"\0" * 11], 0) + _page([b"OpusTags", long, b"x"], 1)
    packets = bl.ogg_packets(data)
    assert [len(p) for p in packets] == [19, 8, 512, 1]
    assert packets[2] == long
    with pytest.raises(bl.BaselineError):
        bl.ogg_packets(b"not ogg at all, no capture pattern")


def test_catalogue_is_consistent():
    every = bl.all_baselines()
    keys = [b.key for b in every]
    assert len(keys) == len(set(keys))
    families = {b.family for b in every}
    assert {"Codec 2", "Opus", "AMR-NB", "AMR-WB", "GSM-FR", "Speex-WB", "G.711"} <= families
    for b in every:
        assert b.sample_rate in (8000, 16000) and b.nominal_kbps > 0 and b.accounting
        assert b.tools or b.libraries


def test_select_by_key_family_and_prefix():
    assert [b.key for b in bl.select_baselines(["opus"])] == ["opus-6", "opus-8", "opus-12"]
    assert [b.key for b in bl.select_baselines(["amrwb", "codec2-3200", "AMR-WB"])] == [
        "amrwb-6.6", "amrwb-12.65", "codec2-3200"]
    assert len(bl.select_baselines(None)) == len(bl.all_baselines())
    with pytest.raises(ValueError, match="unknown codec 'mp3'"):
        bl.select_baselines(["mp3"])


def test_missing_tools_are_reported_not_faked():
    fake = bl.Baseline("nope", "G.711", "none", 64.0, 8000, tools=("no-such-tool-4711",),
                       libraries=("no-such-library-4711",))
    assert fake.missing() == ["no-such-tool-4711", "libno-such-library-4711"]
    ok, skipped = bl.available_baselines()
    assert {b.key for b in ok}.isdisjoint(skipped)
    assert len(ok) + len(skipped) == len(bl.all_baselines())


def _installed(key: str) -> bl.Baseline:
    b = next(b for b in bl.all_baselines() if b.key == key)
    if b.missing():
        pytest.skip(f"{key}: missing {', '.join(b.missing())}")
    return b


# bytes per frame and frame duration of the fixed-rate settings
CONSTANT_RATE = {"gsm-fr": (33, 0.02), "amrnb-12.2": (31, 0.02), "amrnb-4.75": (12, 0.02),
                 "amrwb-6.6": (17, 0.02), "amrwb-12.65": (32, 0.02), "codec2-3200": (8, 0.02),
                 "codec2-1600": (8, 0.04), "codec2-700c": (4, 0.04), "g711-ulaw": (1, 1 / 8000)}


# Measured payload rates differ from the declared ones by byte padding (Codec 2 700C: 28 bits
# in 4 bytes; AMR frames padded to octets) or rate control (Opus VBR).
@pytest.mark.parametrize("key", [b.key for b in bl.all_baselines()])
def test_each_codec_round_trip(key, clip):
    b = _installed(key)
    coded = b.run(clip)
    assert coded.samples.shape == clip.shape and coded.samples.dtype == np.float32
    assert np.all(np.isfinite(coded.samples))
    measured = coded.payload_bits / (len(clip) / RATE) / 1000
    assert abs(measured - b.nominal_kbps) / b.nominal_kbps < 0.2, measured
    delay, aligned = align(clip, coded.samples, 60 * RATE // 1000)
    assert -2 <= 1000 * delay / RATE <= 40
    assert stoi(clip, aligned) > 0.5  # it is still the same speech
    assert coded.encode_s > 0 and coded.decode_s > 0
    if key in CONSTANT_RATE:  # whole frames of a fixed size, one per frame period
        frame_bytes, frame_s = CONSTANT_RATE[key]
        frames = coded.payload_bits / 8 / frame_bytes
        assert frames == int(frames) and abs(frames - len(clip) / RATE / frame_s) <= 2


def test_narrowband_codecs_have_no_energy_above_4khz(clip):
    b = _installed("g711-ulaw")
    y = b.run(clip).samples
    spec = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / RATE)
    assert spec[freqs > 4300].sum() < 1e-3 * spec[freqs < 3800].sum()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
@pytest.mark.parametrize("key,name", [("amrwb-12.65", "out.awb"), ("amrnb-4.75", "out.amr")])
def test_amr_files_decode_with_an_independent_decoder(key, name, clip, tmp_path):
    """The AMR storage files written through ctypes are valid for ffmpeg's own decoders."""
    b = _installed(key)
    x = bl.resample(clip, RATE, b.sample_rate)
    _, _, _, ours = bl._amr(b, x, tmp_path)
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / name), "-f", "s16le",
                          "-ac", "1", "-"], capture_output=True, check=True).stdout
    theirs = np.frombuffer(out, dtype="<i2").astype(np.float32) / 32768
    assert abs(len(theirs) - len(ours)) <= b.sample_rate // 50
    n = min(len(theirs), len(ours))
    # Same bitstream, different decoder implementations: nearly the same waveform.
    corr = np.corrcoef(theirs[:n], ours[:n])[0, 1]
    assert corr > 0.9
