"""Tests for speechcodec.audio: loading, resampling, framing and atomic writing."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from speechcodec import audio
from speechcodec.audio import (
    Audio,
    AudioError,
    atomic_write_bytes,
    load_audio,
    pad_to_frames,
    resample,
    resample_to_length,
    resampled_length,
    write_wav,
)

ROOT = Path(__file__).resolve().parent.parent


def sine(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def assert_one_line_error(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert path.name in message
    assert "\n" not in message and "\r" not in message
    assert len(message) < 300


# --- loading ------------------------------------------------------------------------------


def test_stereo_44100_int16_becomes_mono_16k(tmp_path: Path) -> None:
    n = 22050  # 0.5 s
    left = sine(44100, 0.5, 440.0, 0.6)
    right = sine(44100, 0.5, 440.0, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")

    a = load_audio(path)

    assert a.samples.dtype == np.float32 and a.samples.ndim == 1
    assert a.sample_rate == 16000
    assert abs(a.samples.shape[0] - round(n * 16000 / 44100)) <= 1
    assert a.original_sample_rate == 44100
    assert a.original_num_samples == n
    assert a.original_channels == 2
    assert "mixed 2 channels to mono" in a.notes
    assert "resampled 44100 Hz -> 16000 Hz" in a.notes
    # average of the channels is a 440 Hz sine of amplitude 0.4
    expected = sine(16000, 0.5, 440.0, 0.4)[: a.samples.shape[0]]
    middle = slice(400, -400)
    np.testing.assert_allclose(a.samples[middle], expected[middle], atol=3e-3)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 48000, 96000])
def test_common_rates_are_resampled_to_16k(tmp_path: Path, rate: int) -> None:
    x = sine(rate, 0.4, 1000.0)
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, x, rate, subtype="PCM_16")

    a = load_audio(path)

    assert a.sample_rate == 16000
    assert a.original_sample_rate == rate
    assert a.original_num_samples == x.size
    assert a.samples.shape[0] == resampled_length(x.size, rate, 16000)
    assert abs(a.samples.shape[0] - round(x.size * 16000 / rate)) <= 1
    assert f"resampled {rate} Hz -> 16000 Hz" in a.notes
    assert dominant_frequency(a.samples, 16000) == pytest.approx(1000.0, abs=10.0)
    rms = float(np.sqrt(np.mean(a.samples[200:-200] ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize(
    ("subtype", "tolerance"),
    [("PCM_16", 2**-15), ("PCM_24", 2**-23), ("PCM_32", 2**-30), ("FLOAT", 0), ("DOUBLE", 0)],
)
def test_sample_formats_load_without_change(tmp_path: Path, subtype: str, tolerance: float):
    x = sine(16000, 0.25, 300.0, 0.7)
    path = tmp_path / f"tone_{subtype}.wav"
    sf.write(path, x, 16000, subtype=subtype)

    a = load_audio(path)

    assert a.notes == ()
    assert a.samples.dtype == np.float32
    assert a.samples.shape == x.shape
    np.testing.assert_allclose(a.samples, x, atol=tolerance + 1e-7)


def test_flac_loads_losslessly(tmp_path: Path) -> None:
    x = np.round(sine(16000, 0.3) * 32768) / 32768
    path = tmp_path / "tone.flac"
    sf.write(path, x, 16000, format="FLAC", subtype="PCM_16")

    a = load_audio(path)

    np.testing.assert_array_equal(a.samples, x.astype(np.float32))


def test_ogg_vorbis_loads(tmp_path: Path) -> None:
    x = sine(48000, 0.5, 500.0)
    path = tmp_path / "tone.ogg"
    sf.write(path, x, 48000, format="OGG", subtype="VORBIS")

    a = load_audio(path)

    assert a.original_sample_rate == 48000
    assert a.original_num_samples == x.size
    assert a.samples.shape[0] == 8000
    assert dominant_frequency(a.samples, 16000) == pytest.approx(500.0, abs=10.0)


def test_float_values_beyond_full_scale_are_kept_and_noted(tmp_path: Path) -> None:
    x = sine(16000, 0.1, 200.0, 1.5)
    path = tmp_path / "hot.wav"
    sf.write(path, x, 16000, subtype="FLOAT")

    a = load_audio(path)

    assert float(np.max(np.abs(a.samples))) == pytest.approx(1.5, rel=1e-3)
    assert any("exceeds full scale" in note for note in a.notes)


def test_nan_and_inf_samples_are_replaced_and_noted(tmp_path: Path) -> None:
    x = sine(16000, 0.1, 200.0)
    x[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")

    a = load_audio(path)

    assert np.isfinite(a.samples).all()
    assert a.samples[[10, 20, 30]].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(a.samples[:10], x[:10])
    assert "replaced 3 NaN/Inf samples with 0" in a.notes


def test_all_nan_file_loads_as_silence(tmp_path: Path) -> None:
    path = tmp_path / "all_nan.wav"
    sf.write(path, np.full(800, np.nan, dtype=np.float32), 16000, subtype="FLOAT")

    a = load_audio(path)

    np.testing.assert_array_equal(a.samples, np.zeros(800, dtype=np.float32))
    assert "replaced 800 NaN/Inf samples with 0" in a.notes


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.wav"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.wav"
    path.mkdir()
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.flac"
    path.write_text("this is not audio\nsecond line\n")
    return path


def _truncated_header(tmp_path: Path) -> Path:
    full = tmp_path / "full.wav"
    sf.write(full, sine(16000, 0.1), 16000, subtype="PCM_16")
    path = tmp_path / "truncated.wav"
    path.write_bytes(full.read_bytes()[:30])
    return path


def _header_only(tmp_path: Path) -> Path:
    full = tmp_path / "full.wav"
    sf.write(full, sine(16000, 0.1), 16000, subtype="PCM_16")
    path = tmp_path / "header_only.wav"
    path.write_bytes(full.read_bytes()[:44])
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_missing, "not found"),
        (_directory, "directory"),
        (_empty, "empty"),
        (_random_bytes, "not a readable audio file"),
        (_text, "not a readable audio file"),
        (_truncated_header, "not a readable audio file"),
        (_header_only, "no audio samples"),
    ],
)
def test_bad_input_raises_one_line_audio_error(tmp_path: Path, make, problem: str) -> None:
    path = make(tmp_path)
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    assert_one_line_error(exc, path)
    assert str(exc.value).startswith(str(path))
    assert problem in str(exc.value)


def test_audio_is_frozen(tmp_path: Path) -> None:
    a = Audio(np.zeros(4, np.float32), 16000, 16000, 4, 1)
    with pytest.raises(FrozenInstanceError):
        a.sample_rate = 8000  # type: ignore[misc]
    assert a.duration_s == pytest.approx(4 / 16000)


def test_import_does_not_load_torch() -> None:
    code = "import sys, speechcodec.audio; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# --- resampling and framing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_rate", "to_rate", "n", "target"),
    [
        (16000, 44100, 16000, 44100),
        (16000, 44100, 12345, 34023),
        (16000, 22050, 1, 1),
        (16000, 8000, 321, 7),
        (16000, 48000, 320, 1000),
        (16000, 16000, 100, 0),
    ],
)
def test_resample_to_length_is_exact(from_rate: int, to_rate: int, n: int, target: int) -> None:
    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    y = resample_to_length(x, from_rate, to_rate, target)
    assert y.dtype == np.float32
    assert y.shape == (target,)


def test_resample_to_length_pads_with_zeros() -> None:
    x = np.ones(160, dtype=np.float32)
    y = resample_to_length(x, 16000, 16000, 200)
    np.testing.assert_array_equal(y[:160], x)
    np.testing.assert_array_equal(y[160:], 0.0)


def test_round_trip_through_16k_keeps_length_and_content() -> None:
    x = sine(44100, 0.3, 440.0)
    down = resample(x, 44100, 16000)
    back = resample_to_length(down, 16000, 44100, x.size)
    assert back.shape == x.shape
    np.testing.assert_allclose(back[500:-500], x[500:-500], atol=5e-3)


def test_resample_handles_rates_with_large_ratio() -> None:
    # gcd(44101, 16000) == 1: too big for a dense sinc kernel, falls back to polyphase
    x = sine(44101, 0.1, 440.0)
    y = resample(x, 44101, 16000)
    assert y.shape == (resampled_length(x.size, 44101, 16000),)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[100:-100], sine(16000, 0.1, 440.0)[100:-100], atol=5e-3)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 3000),
    from_rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
    to_rate=st.sampled_from([8000, 16000, 24000, 44100]),
)
def test_resample_length_matches_formula(n: int, from_rate: int, to_rate: int) -> None:
    y = resample(np.zeros(n, dtype=np.float32), from_rate, to_rate)
    assert y.shape == (resampled_length(n, from_rate, to_rate),)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 2000), frame=st.integers(1, 400))
def test_pad_to_frames(n: int, frame: int) -> None:
    x = np.arange(n, dtype=np.float32) + 1
    y = pad_to_frames(x, frame)
    assert y.shape[0] % frame == 0
    assert n <= y.shape[0] < n + frame
    np.testing.assert_array_equal(y[:n], x)
    assert not y[n:].any()


def test_pad_to_frames_default_is_20ms() -> None:
    assert pad_to_frames(np.zeros(321, np.float32)).shape == (640,)
    assert pad_to_frames(np.zeros(320, np.float32)).shape == (320,)
    with pytest.raises(ValueError):
        pad_to_frames(np.zeros(3), 0)


# --- writing ------------------------------------------------------------------------------


def test_int16_round_trip_is_exact(tmp_path: Path) -> None:
    pcm = np.random.default_rng(1).integers(-32768, 32768, 4000).astype(np.int16)
    pcm[:2] = [-32768, 32767]
    src = tmp_path / "src.wav"
    sf.write(src, pcm, 16000, subtype="PCM_16")

    out = tmp_path / "out.wav"
    clipped = write_wav(out, load_audio(src).samples, 16000)

    back, rate = sf.read(out, dtype="int16")
    assert rate == 16000
    assert clipped == 0
    assert sf.info(out).subtype == "PCM_16"
    np.testing.assert_array_equal(back, pcm)


def test_write_wav_clips_and_counts(tmp_path: Path) -> None:
    x = np.array([0.0, 0.5, 1.0, 1.5, -1.0, -2.0, np.nan], dtype=np.float32)
    path = tmp_path / "clip.wav"

    clipped = write_wav(path, x, 16000)

    back, _ = sf.read(path, dtype="int16")
    assert clipped == 2
    assert back.tolist() == [0, 16384, 32767, 32767, -32768, -32768, 0]


def test_write_wav_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    write_wav(path, sine(16000, 0.1), 16000)
    write_wav(path, sine(16000, 0.2), 16000)  # replaces the existing file

    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    assert sf.info(path).frames == 3200


def test_write_wav_failure_keeps_existing_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.wav"
    write_wav(path, sine(16000, 0.1), 16000)
    before = path.read_bytes()

    def broken_write(fileobj, *args, **kwargs):
        fileobj.write(b"RIFF partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.sf, "write", broken_write)
    with pytest.raises(AudioError) as exc:
        write_wav(path, sine(16000, 0.2), 16000)

    assert_one_line_error(exc, path)
    assert "No space left on device" in str(exc.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_write_wav_into_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "no_such_folder" / "out.wav"
    with pytest.raises(AudioError) as exc:
        write_wav(path, sine(16000, 0.1), 16000)
    assert_one_line_error(exc, path)
    assert "does not exist" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_write_wav_onto_directory(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    path.mkdir()
    with pytest.raises(AudioError) as exc:
        write_wav(path, sine(16000, 0.1), 16000)
    assert_one_line_error(exc, path)
    assert path.is_dir()


def test_write_wav_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    path = tmp_path / "file" / "out.wav"
    with pytest.raises(AudioError) as exc:
        write_wav(path, sine(16000, 0.1), 16000)
    assert_one_line_error(exc, path)


def test_atomic_write_bytes(tmp_path: Path) -> None:
    path = tmp_path / "stream.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"\x00\x01second")
    assert path.read_bytes() == b"\x00\x01second"
    assert [p.name for p in tmp_path.iterdir()] == ["stream.bin"]

    with pytest.raises(AudioError) as exc:
        atomic_write_bytes(tmp_path / "missing" / "stream.bin", b"data")
    assert_one_line_error(exc, tmp_path / "missing" / "stream.bin")


def test_sample_clips_are_valid() -> None:
    clips = sorted((ROOT / "samples").glob("*.wav"))
    if not clips:
        pytest.skip("samples/ not generated (run scripts/make_samples)")
    assert sum(p.stat().st_size for p in clips) < 1_000_000
    for path in clips:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 4.0 <= info.duration <= 8.0
        a = load_audio(path)
        peak_db = 20 * np.log10(np.max(np.abs(a.samples)))
        assert peak_db == pytest.approx(-3.0, abs=0.1)
        assert a.notes == ()
