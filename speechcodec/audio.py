"""Audio input/output for the codec.

Everything the codec touches goes through this module: reading any file that soundfile
understands (WAV, FLAC, OGG, ...; any sample rate, channel count and sample format),
converting it to mono float32 at the model rate, and writing results back atomically.

Conventions used throughout:

* samples are ``np.float32`` arrays of shape ``[N]`` (mono), nominal full scale is [-1, 1];
* sample rates are integers in Hz;
* lengths are counted in samples.

``import speechcodec.audio`` is cheap: torch is only imported when resampling is needed.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "DEFAULT_RATE",
    "FRAME_SIZE",
    "Audio",
    "AudioError",
    "atomic_write_bytes",
    "load_audio",
    "pad_to_frames",
    "resample",
    "resample_to_length",
    "resampled_length",
    "to_int16",
    "write_wav",
]

DEFAULT_RATE = 16000
"""Sample rate of the codec, Hz."""

FRAME_SIZE = 320
"""Samples per 20 ms frame at ``DEFAULT_RATE``."""

# Above this many kernel coefficients torchaudio's sinc resampler would need too much memory
# (it builds a dense [new, orig] kernel from the gcd-reduced rates), so use a polyphase filter.
_MAX_TORCH_KERNEL = 20_000_000


class AudioError(Exception):
    """Unreadable, invalid or unwritable audio; the message is one line naming the file."""


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono audio ready for the codec, plus what is needed to restore the original shape.

    Immutable; compared and hashed by identity (``==`` on numpy arrays is element-wise).

    Attributes:
        samples: float32 array ``[N]``, mono, at ``sample_rate``; not clipped.
        sample_rate: rate of ``samples`` in Hz.
        original_sample_rate: rate of the file in Hz.
        original_num_samples: length of the file in samples (frames) at its own rate.
        original_channels: channel count of the file.
        notes: human-readable notes of what was done to the input, in order.
    """

    samples: np.ndarray
    sample_rate: int
    original_sample_rate: int
    original_num_samples: int
    original_channels: int
    notes: tuple[str, ...] = ()

    @property
    def num_samples(self) -> int:
        """Length of ``samples``."""
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        """Duration of the original file in seconds."""
        return self.original_num_samples / self.original_sample_rate


def _one_line(text: object) -> str:
    """Collapse whitespace (including newlines) so a message fits on one line."""
    return " ".join(str(text).split())


def _error(path: str | os.PathLike, problem: str) -> AudioError:
    return AudioError(_one_line(f"{os.fspath(path)}: {problem}"))


def _read_failure(exc: BaseException) -> str:
    """Why soundfile could not read a file, without the path it repeats in its message."""
    reason = _one_line(getattr(exc, "error_string", "") or exc) or type(exc).__name__
    if "does not exist or is not a regular file" in reason:
        # libsndfile's last guess (MPEG) failed on data it does not recognise at all
        return "format not recognised or data corrupt"
    return reason.rstrip(".")


def _check_rate(rate: int, what: str) -> int:
    if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
        raise ValueError(f"{what} must be a positive integer number of Hz, got {rate!r}")
    return int(rate)


def load_audio(path: str | os.PathLike, target_rate: int = DEFAULT_RATE) -> Audio:
    """Read an audio file and return it as mono float32 at ``target_rate``.

    Channels are averaged. NaN/Inf samples are replaced by 0 (and noted). Nothing is
    clipped: float files may exceed [-1, 1] (this is noted). The resampled length is
    ``ceil(original_num_samples * target_rate / original_sample_rate)``.

    Args:
        path: file in any format soundfile can read.
        target_rate: output sample rate in Hz.

    Raises:
        AudioError: missing file, directory, empty or non-audio file, corrupt header,
            file with no samples. The message is one line and names the file.
    """
    target_rate = _check_rate(target_rate, "target_rate")
    p = Path(path)
    if not p.exists():
        raise _error(p, "file not found")
    if p.is_dir():
        raise _error(p, "is a directory, not an audio file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise _error(p, f"cannot access file ({exc.strerror or exc})") from exc
    if size == 0:
        raise _error(p, "file is empty (0 bytes)")

    try:
        with sf.SoundFile(p) as f:
            rate = int(f.samplerate)
            channels = int(f.channels)
            data = f.read(dtype="float32", always_2d=True)
    except PermissionError as exc:
        raise _error(p, "cannot open file (permission denied)") from exc
    except MemoryError as exc:
        raise _error(p, "file is too large to load into memory") from exc
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise _error(p, f"not a readable audio file ({_read_failure(exc)})") from exc

    if rate <= 0 or channels <= 0:
        raise _error(p, f"invalid header (sample rate {rate}, {channels} channels)")
    num_samples = int(data.shape[0])
    if num_samples == 0:
        raise _error(p, "contains no audio samples (0 frames)")

    notes: list[str] = []
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        data = np.where(finite, data, np.float32(0.0))
        noun = "sample" if bad == 1 else "samples"
        notes.append(f"replaced {bad} NaN/Inf {noun} with 0")

    if channels > 1:
        mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
        notes.append(f"mixed {channels} channels to mono")
    else:
        mono = np.ascontiguousarray(data[:, 0], dtype=np.float32)

    peak = float(np.max(np.abs(mono)))
    if peak > 1.0:
        notes.append(f"peak {peak:.3g} exceeds full scale (not clipped)")

    if rate != target_rate:
        mono = resample(mono, rate, target_rate)
        notes.append(f"resampled {rate} Hz -> {target_rate} Hz")

    return Audio(
        samples=mono,
        sample_rate=target_rate,
        original_sample_rate=rate,
        original_num_samples=num_samples,
        original_channels=channels,
        notes=tuple(notes),
    )


def resampled_length(num_samples: int, from_rate: int, to_rate: int) -> int:
    """Length after resampling: ``ceil(num_samples * to_rate / from_rate)`` (exact integers)."""
    return -(-int(num_samples) * int(to_rate) // int(from_rate))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling of a mono signal.

    Uses ``torchaudio.functional.resample`` (windowed sinc). For rate pairs whose reduced
    ratio is so large that its kernel would not fit in memory (e.g. 44101 -> 16000 Hz) a
    polyphase FIR (``scipy.signal.resample_poly``) is used instead.

    Args:
        samples: float array ``[N]``.
        from_rate: input rate in Hz.
        to_rate: output rate in Hz.

    Returns:
        float32 array of length ``resampled_length(N, from_rate, to_rate)``.
    """
    from_rate = _check_rate(from_rate, "from_rate")
    to_rate = _check_rate(to_rate, "to_rate")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples of shape [N], got shape {x.shape}")
    out_len = resampled_length(x.shape[0], from_rate, to_rate)
    if from_rate == to_rate:
        return x.copy()
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)

    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    if up * (down + 2 * math.ceil(6 * down / min(up, down))) <= _MAX_TORCH_KERNEL:
        import torch
        import torchaudio.functional as taf

        with torch.no_grad():
            y = taf.resample(torch.from_numpy(x).unsqueeze(0), down, up)
        y = y.squeeze(0).numpy()
    else:
        from scipy.signal import resample_poly

        y = resample_poly(x.astype(np.float64), up, down)
    return _fit_length(np.asarray(y, dtype=np.float32), out_len)


def resample_to_length(
    samples: np.ndarray, from_rate: int, to_rate: int, num_samples: int
) -> np.ndarray:
    """Resample, then trim or zero-pad at the end to exactly ``num_samples``.

    Use this to return decoded audio to the original rate and length.

    Returns:
        float32 array ``[num_samples]``.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return _fit_length(resample(samples, from_rate, to_rate), int(num_samples))


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[0] == n:
        return x
    if x.shape[0] > n:
        return x[:n].copy()
    out = np.zeros(n, dtype=x.dtype)
    out[: x.shape[0]] = x
    return out


def pad_to_frames(samples: np.ndarray, frame_size: int = FRAME_SIZE) -> np.ndarray:
    """Zero-pad at the end to a whole number of frames.

    Args:
        samples: array ``[N]``.
        frame_size: samples per frame (> 0).

    Returns:
        array ``[ceil(N / frame_size) * frame_size]`` of the same dtype (an empty input stays
        empty). The input is returned unchanged if already a whole number of frames.
    """
    if frame_size <= 0:
        raise ValueError(f"frame_size must be positive, got {frame_size}")
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected samples of shape [N], got shape {x.shape}")
    remainder = x.shape[0] % frame_size
    if remainder == 0:
        return x
    return np.concatenate([x, np.zeros(frame_size - remainder, dtype=x.dtype)])


def to_int16(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """Convert float samples to 16-bit PCM.

    Values are clipped to [-1, 1] and scaled by 32768 (the scale soundfile uses when it reads
    PCM_16 as float), so int16 -> float -> int16 is exact. NaN/Inf become 0.

    Returns:
        (int16 array of the same shape, number of samples that were clipped).
    """
    x = np.nan_to_num(np.asarray(samples, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    clipped = int(np.count_nonzero(np.abs(x) > 1.0))
    y = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    return y, clipped


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> int:
    """Atomically write a 16-bit PCM WAV file.

    The data go to a temporary file in the target folder which then replaces ``path``, so
    readers never see a half-written file and an existing file is left untouched on failure.

    Args:
        path: output file.
        samples: float array ``[N]`` (mono) or ``[N, C]``; clipped to [-1, 1].
        sample_rate: rate in Hz.

    Returns:
        Number of samples that had to be clipped.

    Raises:
        AudioError: the folder does not exist or is not writable, or ``path`` is a folder.
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    x = np.asarray(samples)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected samples of shape [N] or [N, C], got shape {x.shape}")
    pcm, clipped = to_int16(x)

    def write(fileobj) -> None:
        sf.write(fileobj, pcm, sample_rate, subtype="PCM_16", format="WAV")

    _atomic_write(path, write)
    return clipped


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` (temporary file in the same folder + rename).

    Raises:
        AudioError: the folder does not exist or is not writable, or ``path`` is a folder.
    """
    payload = bytes(data)
    _atomic_write(path, lambda fileobj: fileobj.write(payload))


def _atomic_write(path: str | os.PathLike, write) -> None:
    p = Path(path)
    folder = p.parent
    if not folder.exists():
        raise _error(p, f"cannot write: folder {os.fspath(folder)!r} does not exist")
    if not folder.is_dir():
        raise _error(p, f"cannot write: {os.fspath(folder)!r} is not a folder")
    if p.is_dir():
        raise _error(p, "cannot write: is a directory")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    except PermissionError as exc:
        raise _error(p, f"cannot write: folder {os.fspath(folder)!r} is not writable") from exc
    except OSError as exc:
        raise _error(p, f"cannot write ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as fileobj:
            write(fileobj)
            fileobj.flush()
            os.fsync(fileobj.fileno())
        os.chmod(tmp_name, _file_mode(p))
        os.replace(tmp_name, p)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _error(p, f"cannot write ({exc.strerror or exc})") from exc
        raise


def _file_mode(p: Path) -> int:
    """Mode for a new file: that of the file being replaced, else 0o666 minus the umask."""
    try:
        return p.stat().st_mode & 0o777
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
