"""The README's "Bad input" table, row by row, through the real command line.

Every case ends one of two ways: correct output (with a note on stderr saying what was done to
the input), or exit code 1 with one line on stderr that names the file and the problem, no
traceback, and no output file (not even a temporary one) left behind.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import event, given, settings
from hypothesis import strategies as st

from speechcodec import audio as audio_mod
from speechcodec.audio import load_audio, resample, resampled_length, to_int16
from speechcodec.cli import main
from speechcodec.resampler import Resampler

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "espeak_male.wav"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Real (synthetic) speech at 16 kHz, the sample clip."""
    x, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == 16000
    return x


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def no_leftovers(output: Path) -> None:
    assert not output.exists(), f"a failed run left {output}"
    folder = output.parent
    if folder.is_dir():
        temps = [p.name for p in folder.iterdir() if p.name.startswith(f".{output.name}.")]
        assert not temps, f"temporary files left behind: {temps}"


def expect_error(argv, capsys, path, fragment: str, output: Path | None = None) -> str:
    rc, _, err = run(argv, capsys)
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    if output is not None:
        no_leftovers(output)
    return lines[0]


def notes(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert all(line.startswith("speechcodec: note: ") for line in lines), err
    return lines


def level_db(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(10 * np.log10(np.mean(x * x) + 1e-30))


def encode_decode(src: Path, tmp: Path, capsys, *extra_decode: str):
    """`encode` then `decode`: (stream bytes, decoded samples, rate, encode stderr, decode info)."""
    spc, out = tmp / f"{src.stem}.spc", tmp / f"{src.stem}_out.wav"
    rc, _, err = run(["encode", src, spc, "-f"], capsys)
    assert rc == 0, err
    rc, out_text, derr = run(["decode", spc, out, "-f", "--json", *extra_decode], capsys)
    assert rc == 0, derr
    y, rate = sf.read(out, dtype="float32")
    assert sf.info(out).subtype == "PCM_16" and sf.info(out).channels == 1
    return spc.read_bytes(), y, rate, err, json.loads(out_text)


@pytest.fixture(scope="module")
def reference(speech, tmp_path_factory):
    """The clip encoded and decoded as it is (16 kHz mono 16-bit): stream and output level."""
    tmp = tmp_path_factory.mktemp("ref")
    src = tmp / "ref.wav"
    sf.write(src, speech, 16000, subtype="PCM_16")
    spc, out = tmp / "ref.spc", tmp / "ref_out.wav"
    assert main(["encode", str(src), str(spc)]) == 0
    assert main(["decode", str(spc), str(out)]) == 0
    y, _ = sf.read(out, dtype="float32")
    return {"stream": spc.read_bytes(), "level": level_db(y), "samples": y}


# --------------------------------------------------------------------------------------------
# Input files that cannot be read: exit 1, one line naming the file, nothing written
# (missing, directory, empty and non-audio inputs of `encode`: tests/test_cli.py)
# --------------------------------------------------------------------------------------------


def _wav_bytes(tmp_path: Path) -> bytes:
    full = tmp_path / "full.wav"
    sf.write(full, np.zeros(1600, np.float32), 16000, subtype="PCM_16")
    return full.read_bytes()


@pytest.mark.parametrize("command", ["encode", "roundtrip"])
@pytest.mark.parametrize(("cut", "problem"), [(30, "not a readable audio file"),
                                              (44, "no audio samples")])
def test_truncated_wav_header(tmp_path, capsys, command, cut, problem):
    src = tmp_path / "cut.wav"
    src.write_bytes(_wav_bytes(tmp_path)[:cut])
    out = tmp_path / "out.spc"
    argv = ["encode", src, out] if command == "encode" else ["roundtrip", src, "--fast",
                                                             "--out", tmp_path / "rt"]
    expect_error(argv, capsys, src, problem, out)
    assert not (tmp_path / "rt").exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "garbage"])
def test_unreadable_stream_file(tmp_path, capsys, kind):
    src = tmp_path / "in.spc"
    if kind == "directory":
        src.mkdir()
    elif kind == "empty":
        src.write_bytes(b"")
    elif kind == "garbage":
        src.write_bytes(b"\x00not a stream" * 20)
    out = tmp_path / "out.wav"
    fragment = {"missing": "file not found", "directory": "is a directory",
                "empty": "truncated", "garbage": "bad magic"}[kind]
    expect_error(["decode", src, out], capsys, src, fragment, out)


@pytest.mark.parametrize("rate", [200, 2_000_000])
def test_unsupported_sample_rate_in_header(tmp_path, capsys, rate):
    # A WAV header may claim any rate; an absurd one is refused rather than resampled.
    src = tmp_path / "odd.wav"
    sf.write(src, np.zeros(100, np.float32), 16000, subtype="PCM_16")
    data = bytearray(src.read_bytes())
    struct.pack_into("<II", data, 24, rate, 2 * rate)  # sample rate, byte rate
    src.write_bytes(bytes(data))
    out = tmp_path / "out.spc"
    expect_error(["encode", src, out], capsys, src, f"sample rate {rate} Hz is not supported",
                 out)


# --------------------------------------------------------------------------------------------
# Input files that are unusual but valid: correct output and a note of what was done
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", range(1, 9))
def test_channels_are_mixed_down(tmp_path, capsys, speech, reference, channels):
    # Identical channels: the mix is the clip itself, so the stream is the reference stream.
    same = tmp_path / "same.wav"
    sf.write(same, np.repeat(speech[:, None], channels, axis=1), 16000, subtype="PCM_16")
    data, y, rate, err, info = encode_decode(same, tmp_path, capsys)
    assert data == reference["stream"]
    assert rate == 16000 and len(y) == len(speech) == info["num_samples"]
    expected = [f"speechcodec: note: {same}: mixed {channels} channels to mono"]
    assert notes(err) == (expected if channels > 1 else [])

    # Channels at different gains: the output level follows the mean gain.
    gains = np.linspace(1.0, 0.25, channels, dtype=np.float32)
    mixed = tmp_path / "mixed.wav"
    sf.write(mixed, speech[:, None] * gains[None, :], 16000, subtype="FLOAT")
    _, y, _, _, _ = encode_decode(mixed, tmp_path, capsys)
    assert len(y) == len(speech)
    want = reference["level"] + 20 * np.log10(gains.mean())
    assert abs(level_db(y) - want) < 1.5, (level_db(y), want)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_sample_rates_are_resampled_and_restored(tmp_path, capsys, speech, reference, rate):
    x = resample(speech, 16000, rate)
    src = tmp_path / f"speech_{rate}.wav"
    sf.write(src, x, rate, subtype="PCM_16")
    _, y, out_rate, err, info = encode_decode(src, tmp_path, capsys)
    assert notes(err) == [f"speechcodec: note: {src}: resampled {rate} Hz -> 16000 Hz"]
    assert out_rate == 16000 and len(y) == resampled_length(len(x), rate, 16000)
    tolerance = 3.0 if rate == 8000 else 1.0  # 8 kHz has lost everything above 4 kHz
    assert abs(level_db(y) - reference["level"]) < tolerance
    assert info["level_dbfs"] == pytest.approx(level_db(y), abs=0.05)

    # --original-rate: back at the file's rate and exact length.
    _, y2, rate2, _, info2 = encode_decode(src, tmp_path, capsys, "--original-rate")
    assert rate2 == rate and len(y2) == len(x) == info2["num_samples"]
    assert abs(level_db(y2) - level_db(y)) < 0.5


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_sample_formats(tmp_path, capsys, speech, reference, subtype):
    src = tmp_path / f"speech_{subtype}.wav"
    sf.write(src, speech, 16000, subtype=subtype)
    assert sf.info(src).subtype == subtype
    data, y, rate, err, _ = encode_decode(src, tmp_path, capsys)
    assert notes(err) == []
    assert rate == 16000 and len(y) == len(speech)
    if subtype != "PCM_U8":  # the clip is 16-bit, so every wider format holds it exactly
        assert data == reference["stream"]
    assert abs(level_db(y) - reference["level"]) < (1.5 if subtype == "PCM_U8" else 0.3)


def test_nan_and_inf_samples_are_replaced_by_zeros(tmp_path, capsys, speech):
    """Decision: NaN/Inf input samples become 0 with a note (they are usually isolated
    glitches, and the rest of the recording is worth keeping)."""
    bad = speech.copy()
    where = [100, 5000, 5001, 40000]
    bad[where] = [np.nan, np.inf, -np.inf, np.nan]
    src = tmp_path / "glitch.wav"
    sf.write(src, bad, 16000, subtype="FLOAT")
    zeroed = speech.copy()
    zeroed[where] = 0.0
    clean = tmp_path / "zeroed.wav"
    sf.write(clean, zeroed, 16000, subtype="FLOAT")

    data, y, _, err, _ = encode_decode(src, tmp_path, capsys)
    assert notes(err) == [f"speechcodec: note: {src}: replaced 4 NaN/Inf samples with 0"]
    assert np.isfinite(y).all() and len(y) == len(speech)
    clean_data, *_ = encode_decode(clean, tmp_path, capsys)
    assert data == clean_data  # exactly as if the samples had been zeros

    # A file that is nothing but NaN is silence.
    src = tmp_path / "all_nan.wav"
    sf.write(src, np.full((8000, 2), np.nan, np.float32), 16000, subtype="FLOAT")
    _, y, _, err, _ = encode_decode(src, tmp_path, capsys)
    assert "replaced 16000 NaN/Inf samples with 0" in err
    assert len(y) == 8000 and level_db(y) < -60


def test_silence(tmp_path, capsys):
    src = tmp_path / "silence.wav"
    sf.write(src, np.zeros(3 * 16000, np.int16), 16000, subtype="PCM_16")
    _, y, _, err, info = encode_decode(src, tmp_path, capsys)
    assert notes(err) == []
    assert len(y) == 3 * 16000 and level_db(y) < -60
    assert info["clipped_samples"] == 0


def test_full_scale_clipping(tmp_path, capsys, speech):
    # Speech driven 26 dB into full-scale clipping, as 16-bit integers ...
    hot = np.clip(speech * 20, -1.0, 1.0)
    src = tmp_path / "clipped.wav"
    sf.write(src, hot, 16000, subtype="PCM_16")
    clipped_in = int(np.sum(np.abs(sf.read(src, dtype="int16")[0]) >= 32767))
    assert clipped_in > 0.05 * len(hot)
    _, y, _, err, info = encode_decode(src, tmp_path, capsys)
    assert notes(err) == []
    assert len(y) == len(speech) and np.isfinite(y).all()
    # The output may touch full scale where the input was flat-topped, but the codec must not
    # make the clipping worse (v3 clips about 1.2% of samples here, the input over 5%).
    assert -25 < level_db(y) < 0 and info["clipped_samples"] < 0.5 * clipped_in

    # ... and as floats beyond full scale: kept, noted, and the output clipped and counted.
    src = tmp_path / "over.wav"
    sf.write(src, speech * 20, 16000, subtype="FLOAT")
    _, y, _, err, info = encode_decode(src, tmp_path, capsys)
    assert len(notes(err)) == 1 and "exceeds full scale (not clipped)" in err
    assert len(y) == len(speech) and np.isfinite(y).all() and -25 < level_db(y) < 0
    at_full_scale = int(np.sum(np.abs(y) >= 32767 / 32768))
    assert info["clipped_samples"] <= at_full_scale


@pytest.mark.parametrize(("n", "rate"), [(1, 16000), (100, 16000), (319, 16000), (5, 44100),
                                         (1, 8000)])
def test_shorter_than_one_frame(tmp_path, capsys, speech, n, rate):
    src = tmp_path / "short.wav"
    sf.write(src, speech[20000:20000 + n], rate, subtype="PCM_16")
    _, y, _, _, _ = encode_decode(src, tmp_path, capsys)
    assert len(y) == resampled_length(n, rate, 16000)
    _, y, out_rate, _, _ = encode_decode(src, tmp_path, capsys, "--original-rate")
    assert (out_rate, len(y)) == (rate, n)
    rc, out, err = run(["roundtrip", src, "--kbps", "1.5", "--fast", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["results"][0]["length_out"] == resampled_length(n, rate, 16000)


# --------------------------------------------------------------------------------------------
# One hour long: bounded memory. Here: the streamed path equals the whole-file path on a file
# of several chunks and read blocks, and a 10-minute file stays far below its own size in
# memory. The one-hour figure is measured by scripts/benchmark.
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rates=st.sampled_from([(44100, 16000), (48000, 16000), (8000, 16000), (11025, 16000),
                           (16000, 44100), (16000, 22050), (44101, 16000), (16000, 96000)]),
    n=st.integers(0, 6000),
    cuts=st.lists(st.integers(0, 6000), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_resampler_blocks_equal_whole_signal(rates, n, cuts, seed):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    whole = resample(x, *rates)
    conv = Resampler(*rates)
    edges = [0, *sorted(c for c in cuts if c <= n), n]
    parts = [conv.push(x[a:b]) for a, b in itertools.pairwise(edges)] + [conv.flush()]
    assert len(whole) == resampled_length(n, *rates)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_long_file_streams_exactly_like_the_whole_file(tmp_path, capsys, speech, monkeypatch):
    import speechcodec.pipeline as pl
    from speechcodec.pipeline import decode_codes, encode_samples
    from speechcodec.pretrained import load_codec

    monkeypatch.setattr(audio_mod, "READ_BLOCK_FRAMES", 3001)  # many uneven read blocks
    monkeypatch.setattr(pl, "CHUNK_FRAMES", 97)  # several model chunks
    reps = 4
    stereo = np.stack([np.tile(speech, reps), 0.5 * np.tile(speech[::-1], reps)], axis=1)
    stereo44 = np.stack([resample(stereo[:, c], 16000, 44100) for c in range(2)], axis=1)
    src = tmp_path / "long.wav"
    sf.write(src, stereo44, 44100, subtype="FLOAT")

    data, y, _, err, _ = encode_decode(src, tmp_path, capsys)
    assert "mixed 2 channels" in err and "resampled 44100 Hz" in err

    # The whole-file path: read everything, mix, resample and encode in one go.
    whole, _ = sf.read(src, dtype="float32")
    x16 = resample(whole.mean(axis=1, dtype=np.float64).astype(np.float32), 44100, 16000)
    np.testing.assert_array_equal(load_audio(src).samples, x16)
    codec = load_codec()
    codes = encode_samples(codec, x16, 6)
    from speechcodec.bitstream import parse_stream

    np.testing.assert_array_equal(parse_stream(data).codes, codes)
    np.testing.assert_array_equal((y * 32768).astype(np.int16),
                                  to_int16(decode_codes(codec, codes, len(x16)))[0])


def test_ten_minute_file_in_bounded_memory(tmp_path):
    """encode + decode of 10 minutes of 44.1 kHz stereo (212 MB as float32) in a fresh
    process: the peak RSS above the post-load baseline stays far below the file's size."""
    from speechcodec.benchmark import write_long_file

    src = tmp_path / "ten.wav"
    write_long_file(src, 10.0)
    r = subprocess.run([sys.executable, "-m", "speechcodec.benchmark", "--memory-child",
                        str(src)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["rc"] == 0
    above = m["peak_rss_mb"] - m["rss_after_load_mb"]
    assert above < 150, m
    info = sf.info(str(src) + ".out.wav")
    assert info.frames == 10 * 60 * 16000 and info.samplerate == 16000


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return folder
    probe.unlink()  # root ignores permissions: use a file system that refuses new files
    folder.chmod(0o700)
    for candidate in (Path("/sys"), Path("/proc")):
        try:
            (candidate / "speechcodec_probe").write_bytes(b"")
        except OSError:
            return candidate
    pytest.skip("no unwritable folder available")


def test_unwritable_output_folder(tmp_path, capsys, speech):
    folder = _unwritable_folder(tmp_path)
    src = tmp_path / "in.wav"
    sf.write(src, speech[:8000], 16000, subtype="PCM_16")
    spc = folder / "out.spc"
    expect_error(["encode", src, spc], capsys, spc, "cannot write", spc)
    good = tmp_path / "good.spc"
    assert run(["encode", src, good], capsys)[0] == 0
    wav = folder / "out.wav"
    expect_error(["decode", good, wav], capsys, wav, "cannot write", wav)
    rt = folder / "sub"
    expect_error(["roundtrip", src, "--fast", "--out", rt], capsys, rt, "cannot create")


def test_write_failure_midway_leaves_nothing(tmp_path, capsys, speech, monkeypatch):
    src = tmp_path / "in.wav"
    sf.write(src, np.tile(speech, 6), 16000, subtype="PCM_16")
    spc = tmp_path / "in.spc"
    assert run(["encode", src, spc], capsys)[0] == 0
    out = tmp_path / "out.wav"
    out.write_bytes(b"previous")
    calls = []

    def full_disk(self, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return original(self, data)

    original = sf.SoundFile.write
    monkeypatch.setattr(sf.SoundFile, "write", full_disk)
    monkeypatch.setattr("speechcodec.pipeline.CHUNK_FRAMES", 50)
    expect_error(["decode", spc, out, "-f"], capsys, out, "No space left on device")
    assert len(calls) == 2 and out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.spc", "in.wav", "out.wav"]


def test_existing_output_without_force(tmp_path, capsys, speech):
    # (`encode` onto an existing file: tests/test_cli.py)
    src = tmp_path / "in.wav"
    sf.write(src, speech[:8000], 16000, subtype="PCM_16")
    spc = tmp_path / "in.spc"
    assert run(["encode", src, spc], capsys)[0] == 0
    out = tmp_path / "out.wav"
    out.write_bytes(b"keep me")
    expect_error(["decode", spc, out], capsys, out, "already exists (use -f")
    assert out.read_bytes() == b"keep me"
    assert run(["decode", spc, out, "-f"], capsys)[0] == 0
    assert sf.info(out).frames == 8000

    # roundtrip refuses before writing any of its outputs.
    folder = tmp_path / "rt"
    folder.mkdir()
    (folder / "in_3kbps.wav").write_bytes(b"keep me")
    expect_error(["roundtrip", src, "--kbps", "1.5,3", "--fast", "--out", folder], capsys,
                 folder / "in_3kbps.wav", "already exists")
    assert [p.name for p in folder.iterdir()] == ["in_3kbps.wav"]


# --------------------------------------------------------------------------------------------
# Stream files: every damage is caught before any decoding (tests/test_bitstream.py checks the
# parser itself on every offset and bit; here the command line does)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_stream(tmp_path_factory) -> bytes:
    """The smallest real stream: one sample at 1.5 kbps (2 frames, 8 payload bytes)."""
    tmp = tmp_path_factory.mktemp("small")
    src = tmp / "one.wav"
    sf.write(src, np.array([0.25], np.float32), 16000, subtype="PCM_16")
    assert main(["encode", str(src), str(tmp / "one.spc"), "--kbps", "1.5"]) == 0
    data = (tmp / "one.spc").read_bytes()
    assert len(data) < 100
    return data


def test_stream_truncated_at_every_offset(tmp_path, capsys, small_stream):
    bad, out = tmp_path / "cut.spc", tmp_path / "out.wav"
    for cut in range(len(small_stream)):
        bad.write_bytes(small_stream[:cut])
        line = expect_error(["decode", bad, out], capsys, bad, "", out)
        assert any(word in line for word in ("truncated", "bad magic")), line
        expect_error(["info", bad], capsys, bad, "")


def test_stream_every_single_bit_flip(tmp_path, capsys, small_stream):
    bad, out = tmp_path / "flip.spc", tmp_path / "out.wav"
    header_len = struct.unpack_from("<H", small_stream, 6)[0]
    for i in range(len(small_stream)):
        for bit in range(8):
            damaged = bytearray(small_stream)
            damaged[i] ^= 1 << bit
            bad.write_bytes(bytes(damaged))
            line = expect_error(["decode", bad, out], capsys, bad, "", out)
            if i >= header_len:
                assert "payload checksum mismatch" in line, (i, bit, line)


def _with_header(data: bytes, **fields) -> bytes:
    """Change fixed header fields of a stream and recompute the header CRC."""
    offsets = {"version": (4, "B"), "num_samples": (20, "Q"), "original_sample_rate": (28, "I"),
               "weights_hash": (32, "8s"), "model_id_len": (44, "B")}
    out = bytearray(data)
    for name, value in fields.items():
        offset, fmt = offsets[name]
        struct.pack_into("<" + fmt, out, offset, value)
    header_len = struct.unpack_from("<H", out, 6)[0]
    struct.pack_into("<I", out, header_len - 4, zlib.crc32(bytes(out[:header_len - 4])))
    return bytes(out)


def test_stream_wrong_magic_or_version(tmp_path, capsys, small_stream):
    bad, out = tmp_path / "bad.spc", tmp_path / "out.wav"
    bad.write_bytes(b"RIFF" + small_stream[4:])
    expect_error(["decode", bad, out], capsys, bad, "bad magic", out)
    for version in (0, 2, 255):
        bad.write_bytes(_with_header(small_stream, version=version))
        expect_error(["decode", bad, out], capsys, bad,
                     f"unsupported stream format version {version}", out)
        expect_error(["info", bad], capsys, bad, "unsupported stream format version")


def test_stream_from_another_model(tmp_path, capsys, small_stream):
    # Another model id: tests/test_cli.py. Same id, other weights:
    bad, out = tmp_path / "other.spc", tmp_path / "out.wav"
    bad.write_bytes(_with_header(small_stream, weights_hash=b"\x01" * 8))
    expect_error(["decode", bad, out], capsys, bad, "weights 0101010101010101", out)


def test_stream_with_unrestorable_original_rate(tmp_path, capsys, small_stream):
    # Valid checksums, but a rate no encoder writes: --original-rate refuses, 16 kHz works.
    bad, out = tmp_path / "odd.spc", tmp_path / "out.wav"
    bad.write_bytes(_with_header(small_stream, original_sample_rate=4_000_000_000,
                                 num_samples=250_000))
    expect_error(["decode", bad, out, "--original-rate"], capsys, bad,
                 "cannot restore the stream's original sample rate 4000000000 Hz", out)
    assert run(["decode", bad, out], capsys)[0] == 0
    assert sf.info(out).frames == 1


_TINY = {}


def _tiny():
    """A small random model (built once): decoding hostile headers needs no trained weights."""
    if not _TINY:
        import torch

        from speechcodec.config import CodecConfig
        from speechcodec.model import Codec

        torch.manual_seed(0)
        cfg = CodecConfig(encoder_width=32, encoder_blocks=1, decoder_width=32,
                          decoder_blocks_low=1, decoder_blocks_high=1, latent_dim=16,
                          codebook_size=1024, num_codebooks=12)
        _TINY["codec"] = Codec(cfg).eval()
    return _TINY["codec"]


@settings(max_examples=40, deadline=None)
@given(
    num_samples=st.integers(0, 30000),
    rate=st.sampled_from([8000, 16000, 44100, 96000, 1000, 768000, 999, 768001, 7, 2**32 - 1])
    | st.integers(1, 2**32 - 1),
    k=st.integers(1, 16),
    frames_off=st.sampled_from([0, 0, 0, -1, 1]),
    same_model=st.sampled_from([True, True, True, False]),
    original_rate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_checksummed_stream_decodes_exactly_or_fails_cleanly(
    tmp_path_factory, num_samples, rate, k, frames_off, same_model, original_rate, seed
):
    """Streams with valid checksums but arbitrary lengths, rates, codebook counts and model:
    decoding gives exactly the declared length, or a one-line StreamError and no file."""
    from speechcodec.api import codec_rate_length, decode_bytes, decode_to_wav
    from speechcodec.bitstream import StreamError, StreamHeader, serialize_stream
    from speechcodec.pipeline import num_frames_for

    codec = _tiny()
    n16 = resampled_length(num_samples, rate, 16000)
    frames = num_frames_for(codec, n16) + frames_off
    if frames < 0 or frames * k > 200_000:
        event("too long for a test")
        return
    header = StreamHeader(
        model_id=codec.model_id if same_model else "another-model", weights_hash=codec.weights_hash,
        sample_rate=16000, frame_size=320, num_codebooks=k, codebook_bits=10, num_frames=frames,
        num_samples=num_samples, original_sample_rate=rate)
    codes = np.random.default_rng(seed).integers(0, 1024, size=(k, frames))
    data = serialize_stream(header, codes)
    out = tmp_path_factory.mktemp("hostile") / "out.wav"
    try:
        dec = decode_bytes(data, codec, original_rate=original_rate)
    except StreamError as exc:
        event("refused")
        assert "\n" not in str(exc) and len(str(exc)) < 300
        with pytest.raises(StreamError):
            decode_to_wav(data, out, codec, original_rate=original_rate)
        no_leftovers(out)
        return
    event("decoded")
    assert same_model and frames_off == 0 and k <= 12
    want = num_samples if original_rate else codec_rate_length(header)
    assert len(dec.samples) == want and np.isfinite(dec.samples).all()
    written = decode_to_wav(data, out, codec, original_rate=original_rate)
    assert written.num_samples == want == sf.info(out).frames
