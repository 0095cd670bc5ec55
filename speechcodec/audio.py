"""Audio input/output for the codec.

Everything the codec touches goes through this module: reading any file that soundfile
understands (WAV, FLAC, OGG, ...; any sample rate, channel count and sample format),
converting it to mono float32 at the model rate, and writing results back atomically.

Conventions used throughout:

* samples are ``np.float32`` arrays of shape ``[N]`` (mono), nominal full scale is [-1, 1];
* sample rates are integers in Hz;
* lengths are counted in samples.

``import speechcodec.audio`` is cheap: it never imports torch.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .resampler import MAX_RATE, MIN_RATE, Resampler

__all__ = [
    "DEFAULT_RATE",
    "FRAME_SIZE",
    "Audio",
    "AudioError",
    "AudioReader",
    "WavWriter",
    "atomic_write_bytes",
    "load_audio",
    "open_audio",
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


READ_BLOCK_FRAMES = 1 << 16
"""Frames read from a file per block (1.4 s at 48 kHz; 2 MB for 8 float32 channels, and fewer
frames for more channels)."""


class AudioReader:
    """An audio file opened for reading block by block as mono float32 at ``target_rate``.

    Opening checks the file (it exists, is a readable audio file with a supported rate);
    :meth:`blocks` then yields the converted signal piece by piece, so memory stays bounded
    whatever the file's length, and the concatenated blocks are exactly what
    :func:`load_audio` returns. Channels are averaged, NaN/Inf samples become 0, nothing is
    clipped, and the rate is converted with a stateful :class:`Resampler`.

    After :meth:`blocks` is exhausted, :attr:`original_num_samples`, :attr:`num_samples` and
    :attr:`notes` describe the whole file.

    Raises:
        AudioError: on opening or while reading; one line naming the file.
    """

    def __init__(self, path: str | os.PathLike, target_rate: int = DEFAULT_RATE,
                 block_frames: int | None = None) -> None:
        self.path = Path(path)
        self.sample_rate = _check_rate(target_rate, "target_rate")
        self.block_frames = max(1, int(block_frames or READ_BLOCK_FRAMES))
        p = self.path
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
            self._file = sf.SoundFile(p)
        except PermissionError as exc:
            raise _error(p, "cannot open file (permission denied)") from exc
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            raise _error(p, f"not a readable audio file ({_read_failure(exc)})") from exc
        rate, channels = int(self._file.samplerate), int(self._file.channels)
        if rate <= 0 or channels <= 0:
            self.close()
            raise _error(p, f"invalid header (sample rate {rate}, {channels} channels)")
        if not MIN_RATE <= rate <= MAX_RATE:
            self.close()
            raise _error(p, f"sample rate {rate} Hz is not supported "
                            f"({MIN_RATE}..{MAX_RATE} Hz)")
        self.original_sample_rate = rate
        self.original_channels = channels
        if block_frames is None:  # keep a block near 2 MB however many channels there are
            self.block_frames = max(1, min(self.block_frames, READ_BLOCK_FRAMES * 8 // channels))
        #: Frames the header announces (for progress bars; the count read is authoritative).
        self.announced_frames = max(0, int(self._file.frames))
        self.original_num_samples = 0
        self.num_samples = 0
        self._bad = 0
        self._peak = 0.0
        self._finished = False

    @property
    def announced_num_samples(self) -> int:
        """Expected length at ``sample_rate`` from the header's frame count."""
        return resampled_length(self.announced_frames, self.original_sample_rate,
                                self.sample_rate)

    @property
    def notes(self) -> tuple[str, ...]:
        """What was done to the input, in order (complete once :meth:`blocks` is exhausted)."""
        notes = []
        if self._bad:
            noun = "sample" if self._bad == 1 else "samples"
            notes.append(f"replaced {self._bad} NaN/Inf {noun} with 0")
        if self.original_channels > 1:
            notes.append(f"mixed {self.original_channels} channels to mono")
        if self._peak > 1.0:
            notes.append(f"peak {self._peak:.3g} exceeds full scale (not clipped)")
        if self.original_sample_rate != self.sample_rate:
            notes.append(f"resampled {self.original_sample_rate} Hz -> {self.sample_rate} Hz")
        return tuple(notes)

    def _read(self) -> np.ndarray:
        try:
            return self._file.read(self.block_frames, dtype="float32", always_2d=True)
        except MemoryError as exc:
            raise _error(self.path, "out of memory while reading") from exc
        except (sf.SoundFileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            raise _error(self.path, f"cannot read audio data ({_read_failure(exc)})") from exc

    def blocks(self):
        """Yield the signal as mono float32 blocks at ``sample_rate`` (some may be empty)."""
        if self._finished:
            raise RuntimeError("AudioReader.blocks() can only be iterated once")
        self._finished = True
        converter = None
        if self.original_sample_rate != self.sample_rate:
            converter = Resampler(self.original_sample_rate, self.sample_rate)
        try:
            while True:
                data = self._read()
                if data.shape[0] == 0:
                    break
                self.original_num_samples += int(data.shape[0])
                finite = np.isfinite(data)
                if not finite.all():
                    self._bad += int(data.size - np.count_nonzero(finite))
                    data = np.where(finite, data, np.float32(0.0))
                if self.original_channels > 1:
                    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
                else:
                    mono = np.ascontiguousarray(data[:, 0], dtype=np.float32)
                self._peak = max(self._peak, float(np.max(np.abs(mono))))
                out = converter.push(mono) if converter else mono
                self.num_samples += int(out.shape[0])
                yield out
            if self.original_num_samples == 0:
                raise _error(self.path, "contains no audio samples (0 frames)")
            if converter:
                out = converter.flush()
                self.num_samples += int(out.shape[0])
                yield out
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_audio(path: str | os.PathLike, target_rate: int = DEFAULT_RATE) -> AudioReader:
    """Open an audio file for block-by-block reading; see :class:`AudioReader`."""
    return AudioReader(path, target_rate)


def load_audio(path: str | os.PathLike, target_rate: int = DEFAULT_RATE) -> Audio:
    """Read an audio file and return it as mono float32 at ``target_rate``.

    Channels are averaged. NaN/Inf samples are replaced by 0 (and noted). Nothing is
    clipped: float files may exceed [-1, 1] (this is noted). The resampled length is
    ``ceil(original_num_samples * target_rate / original_sample_rate)``. The samples are the
    concatenated blocks of :class:`AudioReader`, which reads long files piece by piece.

    Args:
        path: file in any format soundfile can read.
        target_rate: output sample rate in Hz.

    Raises:
        AudioError: missing file, directory, empty or non-audio file, corrupt header,
            unsupported sample rate, file with no samples. The message is one line and names
            the file.
    """
    with AudioReader(path, target_rate) as reader:
        parts = [b for b in reader.blocks() if b.size]
    samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return Audio(
        samples=samples,
        sample_rate=reader.sample_rate,
        original_sample_rate=reader.original_sample_rate,
        original_num_samples=reader.original_num_samples,
        original_channels=reader.original_channels,
        notes=reader.notes,
    )


def resampled_length(num_samples: int, from_rate: int, to_rate: int) -> int:
    """Length after resampling: ``ceil(num_samples * to_rate / from_rate)`` (exact integers)."""
    return -(-int(num_samples) * int(to_rate) // int(from_rate))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling of a mono signal (Kaiser-windowed sinc, numpy only).

    The same converter as :class:`speechcodec.resampler.Resampler` fed the whole signal at
    once, so block-by-block conversion of a long file gives the same samples.

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
    if from_rate == to_rate:
        return x.copy()
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    converter = Resampler(from_rate, to_rate)
    return np.concatenate([converter.push(x), converter.flush()])


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


def _open_temp(p: Path) -> tuple[int, str]:
    """Check the target and create a temporary file next to it; returns (fd, name)."""
    folder = p.parent
    if not folder.exists():
        raise _error(p, f"cannot write: folder {os.fspath(folder)!r} does not exist")
    if not folder.is_dir():
        raise _error(p, f"cannot write: {os.fspath(folder)!r} is not a folder")
    if p.is_dir():
        raise _error(p, "cannot write: is a directory")
    try:
        return tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    except PermissionError as exc:
        raise _error(p, f"cannot write: folder {os.fspath(folder)!r} is not writable") from exc
    except OSError as exc:
        raise _error(p, f"cannot write ({exc.strerror or exc})") from exc


def _publish(fileobj, tmp_name: str, p: Path) -> None:
    """Flush, sync and close ``fileobj``, then move the temporary file onto ``p``."""
    fileobj.flush()
    os.fsync(fileobj.fileno())
    fileobj.close()
    os.chmod(tmp_name, _file_mode(p))
    os.replace(tmp_name, p)


def _discard(tmp_name: str) -> None:
    try:
        os.unlink(tmp_name)
    except OSError:
        pass


def _atomic_write(path: str | os.PathLike, write) -> None:
    p = Path(path)
    fd, tmp_name = _open_temp(p)
    try:
        with os.fdopen(fd, "wb") as fileobj:
            write(fileobj)
            _publish(fileobj, tmp_name, p)
    except BaseException as exc:
        _discard(tmp_name)
        if isinstance(exc, OSError):
            raise _error(p, f"cannot write ({exc.strerror or exc})") from exc
        raise


class WavWriter:
    """A 16-bit mono WAV file written block by block, atomically.

    The samples go to a temporary file in the target folder; leaving the ``with`` block
    normally (or :meth:`commit`) renames it onto ``path``, and any exception (or
    :meth:`abort`) deletes it, so a failed or interrupted run never leaves a partial file and an
    existing ``path`` stays untouched. Samples are clipped to [-1, 1] as in :func:`write_wav`.

    Attributes:
        frames: samples written so far.
        clipped: samples that had to be clipped.
        sum_squares: sum of the squared (unclipped) samples, for the level.

    Raises:
        AudioError: the folder does not exist or is not writable, or writing fails (e.g. disk
            full); one line naming ``path``.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int) -> None:
        self.path = Path(path)
        self.sample_rate = _check_rate(sample_rate, "sample_rate")
        self.frames = 0
        self.clipped = 0
        self.sum_squares = 0.0
        fd, self._tmp = _open_temp(self.path)
        self._fileobj = os.fdopen(fd, "wb")
        self._sf = None
        self._closed = False
        try:
            self._sf = sf.SoundFile(self._fileobj, mode="w", samplerate=self.sample_rate,
                                    channels=1, subtype="PCM_16", format="WAV")
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException):
        """Throw the temporary file away and re-raise, as an AudioError if it is an I/O error."""
        self.abort()
        if isinstance(exc, (OSError, RuntimeError, sf.SoundFileError)):
            reason = getattr(exc, "strerror", None) or _one_line(exc)
            raise _error(self.path, f"cannot write ({reason})") from exc
        raise exc

    @property
    def level_dbfs(self) -> float:
        """RMS level of what was written (before clipping), dB re full scale."""
        if self.frames == 0 or self.sum_squares <= 0.0:
            return float("-inf")
        return 10.0 * math.log10(self.sum_squares / self.frames)

    def write(self, samples: np.ndarray) -> None:
        x = np.asarray(samples).reshape(-1)
        if x.size == 0:
            return
        pcm, clipped = to_int16(x)
        try:
            self._sf.write(pcm)
        except BaseException as exc:
            self._fail(exc)
        self.frames += int(x.size)
        self.clipped += clipped
        finite = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
        self.sum_squares += float(np.dot(finite, finite))

    def commit(self) -> Path:
        """Finish the file and move it onto ``path``."""
        if self._closed:
            raise RuntimeError("WavWriter already closed")
        try:
            self._sf.close()
            _publish(self._fileobj, self._tmp, self.path)
        except BaseException as exc:
            self._fail(exc)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Throw the temporary file away (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for closer in (self._sf, self._fileobj):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        _discard(self._tmp)

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _file_mode(p: Path) -> int:
    """Mode for a new file: that of the file being replaced, else 0o666 minus the umask."""
    try:
        return p.stat().st_mode & 0o777
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
