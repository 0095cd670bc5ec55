"""File-level API: audio file -> stream bytes -> audio, with the figures every command reports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import Audio, AudioError, AudioReader, WavWriter, open_audio, resampled_length
from .bitstream import Stream, StreamError, StreamHeader, parse_stream, serialize_stream
from .metrics import PCM_BITS_PER_SECOND, Quality, compute_quality
from .model import Codec
from .pipeline import ChunkedEncoder, encode_samples, iter_decode, num_frames_for
from .pretrained import load_codec
from .resampler import MAX_RATE, MIN_RATE, Resampler

#: Largest 16-bit mono WAV file (its sizes are 32-bit fields).
MAX_WAV_SAMPLES = (2**32 - 1 - 44) // 2


@dataclass(frozen=True)
class Encoded:
    """An encoded signal: the stream file's bytes and what they hold."""

    data: bytes
    header: StreamHeader
    codes: np.ndarray  # [K, F]
    notes: tuple[str, ...] = ()  # what was done to the input (mixed down, resampled, ...)

    @property
    def payload_kbps(self) -> float:
        """Code bits over the signal's duration (kbit/s)."""
        return self.header.exact_kbps()

    @property
    def file_kbps(self) -> float:
        """All bytes of the file, header and checksums included, over the duration (kbit/s)."""
        return self.header.exact_kbps(include_overhead=True)

    @property
    def compression_ratio(self) -> float:
        """16-bit PCM at the codec rate (256 kbit/s) against the payload rate."""
        return PCM_BITS_PER_SECOND / (1000.0 * self.payload_kbps)

    def summary(self) -> dict:
        h = self.header
        return {"model": h.model_id, "weights_hash": h.weights_hash,
                "codebooks": h.num_codebooks, "frames": h.num_frames,
                "seconds": round(h.duration_seconds, 3), "nominal_kbps": h.payload_kbps,
                "payload_kbps": self.payload_kbps, "file_kbps": self.file_kbps,
                "file_bytes": len(self.data), "compression_ratio": self.compression_ratio}


def _stream(codec: Codec, codes: np.ndarray, k: int, num_samples: int, rate: int,
            notes: tuple[str, ...] = ()) -> Encoded:
    cfg = codec.cfg
    header = StreamHeader(
        model_id=codec.model_id, weights_hash=codec.weights_hash, sample_rate=cfg.sample_rate,
        frame_size=cfg.frame_size, num_codebooks=k, codebook_bits=cfg.bits_per_code,
        num_frames=codes.shape[1], num_samples=num_samples, original_sample_rate=rate)
    return Encoded(serialize_stream(header, codes), header, codes, tuple(notes))


def encode_audio(codec: Codec, audio: Audio, kbps: float, progress=None) -> Encoded:
    """Encode `audio` (already at the codec rate) at `kbps` into a stream."""
    cfg = codec.cfg
    if audio.sample_rate != cfg.sample_rate:
        raise ValueError(f"audio is at {audio.sample_rate} Hz, the codec needs {cfg.sample_rate}")
    k = cfg.codebooks_for_kbps(kbps)
    codes = encode_samples(codec, audio.samples, k, progress)
    return _stream(codec, codes, k, audio.original_num_samples, audio.original_sample_rate,
                   audio.notes)


def encode_reader(codec: Codec, reader: AudioReader, kbps: float, progress=None) -> Encoded:
    """Encode an opened audio file block by block (bounded memory, however long it is).

    The result equals `encode_audio(codec, load_audio(path), kbps)`.
    """
    cfg = codec.cfg
    if reader.sample_rate != cfg.sample_rate:
        raise ValueError(f"reader gives {reader.sample_rate} Hz, the codec needs "
                         f"{cfg.sample_rate}")
    k = cfg.codebooks_for_kbps(kbps)
    enc = ChunkedEncoder(codec, k, progress)
    for block in reader.blocks():
        enc.push(block)
    codes = enc.finish()
    return _stream(codec, codes, k, reader.original_num_samples, reader.original_sample_rate,
                   reader.notes)


def encode_file(path, kbps: float = 3.0, codec: Codec | None = None, progress=None) -> Encoded:
    """Read any audio file and encode it, block by block. Raises AudioError for unreadable
    input and ValueError for an unsupported bitrate."""
    codec = codec or load_codec()
    codec.cfg.codebooks_for_kbps(kbps)  # an unsupported bitrate fails before reading
    with open_audio(path, codec.cfg.sample_rate) as reader:
        return encode_reader(codec, reader, kbps, progress)


def check_compatible(codec: Codec, header: StreamHeader) -> None:
    """Refuse a stream that this model cannot decode faithfully."""
    cfg = codec.cfg
    if (header.model_id, header.weights_hash) != (codec.model_id, codec.weights_hash):
        raise StreamError(
            f"stream was made by model '{header.model_id}' (weights {header.weights_hash}), "
            f"but the decoder has '{codec.model_id}' (weights {codec.weights_hash})")
    if (header.sample_rate, header.frame_size) != (cfg.sample_rate, cfg.frame_size):
        raise StreamError(f"stream uses {header.sample_rate} Hz / {header.frame_size}-sample "
                          f"frames, the model {cfg.sample_rate} Hz / {cfg.frame_size}")
    if header.num_codebooks > cfg.num_codebooks or header.codebook_bits != cfg.bits_per_code:
        raise StreamError(f"stream has {header.num_codebooks} codebooks of "
                          f"{header.codebook_bits} bits; the model has {cfg.num_codebooks} "
                          f"of {cfg.bits_per_code}")
    expected = num_frames_for(codec, codec_rate_length(header))
    if header.num_frames != expected:
        raise StreamError(f"stream holds {header.num_frames} frames but its length needs "
                          f"{expected}")


def codec_rate_length(header: StreamHeader) -> int:
    """Number of samples of the signal at the codec rate (as the encoder saw it)."""
    return resampled_length(header.num_samples, header.original_sample_rate, header.sample_rate)


@dataclass(frozen=True)
class Decoded:
    samples: np.ndarray  # [N] float32
    sample_rate: int
    header: StreamHeader


@dataclass(frozen=True)
class DecodedFile:
    """What `decode_to_wav` wrote."""

    path: object
    sample_rate: int
    num_samples: int
    clipped: int
    level_dbfs: float
    header: StreamHeader
    samples: np.ndarray | None = None  # only with keep_samples=True


def _prepare(data, codec: Codec | None, original_rate: bool):
    header, codes = data if isinstance(data, Stream) else parse_stream(data)
    if original_rate and not MIN_RATE <= header.original_sample_rate <= MAX_RATE:
        raise StreamError(f"cannot restore the stream's original sample rate "
                          f"{header.original_sample_rate} Hz (supported: {MIN_RATE}..{MAX_RATE} "
                          f"Hz); decode at {header.sample_rate} Hz instead")
    codec = codec or load_codec()
    check_compatible(codec, header)
    rate = header.original_sample_rate if original_rate else header.sample_rate
    length = header.num_samples if original_rate else codec_rate_length(header)
    return header, codes, codec, rate, length


def _blocks(codec: Codec, header: StreamHeader, codes: np.ndarray, rate: int, length: int,
            progress=None):
    """Decoded float32 blocks at `rate`, `length` samples in all."""
    blocks = iter_decode(codec, codes, codec_rate_length(header), progress)
    if rate == header.sample_rate:
        yield from blocks
        return
    # Back to the input's rate, block by block: the same samples as resampling the whole
    # signal, trimmed (or zero-padded) to exactly the input's length.
    converter = Resampler(header.sample_rate, rate)
    left = length
    for block in blocks:
        out = converter.push(block)[:left]
        left -= len(out)
        yield out
    out = converter.flush()[:left]
    left -= len(out)
    yield out
    if left > 0:
        yield np.zeros(left, dtype=np.float32)


def decode_bytes(data: bytes, codec: Codec | None = None, original_rate: bool = False,
                 progress=None) -> Decoded:
    """Stream bytes -> audio at the codec rate, or at the encoder input's rate and exact length.

    Raises StreamError for a damaged stream or one from another model or format version.
    """
    header, codes, codec, rate, length = _prepare(data, codec, original_rate)
    parts = [b for b in _blocks(codec, header, codes, rate, length, progress) if len(b)]
    samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return Decoded(samples, rate, header)


def decode_to_wav(data: bytes | Stream, path, codec: Codec | None = None,
                  original_rate: bool = False, progress=None,
                  keep_samples: bool = False) -> DecodedFile:
    """Stream bytes (or a parsed Stream) -> 16-bit WAV file, decoded and written block by
    block (bounded memory).

    The file is written to a temporary name and renamed when complete; on any error nothing is
    left behind. The samples written equal `decode_bytes(...).samples` (clipped to 16 bits).

    Raises:
        StreamError: damaged stream, another model, unrestorable original rate.
        AudioError: the output cannot be written, or would exceed the WAV size limit.
    """
    header, codes, codec, rate, length = _prepare(data, codec, original_rate)
    if length > MAX_WAV_SAMPLES:
        raise AudioError(f"{path}: {length} samples at {rate} Hz exceed the 4 GB limit of a "
                         f"16-bit WAV file")
    kept = []
    with WavWriter(path, rate) as out:
        for block in _blocks(codec, header, codes, rate, length, progress):
            out.write(block)
            if keep_samples and len(block):
                kept.append(block)
    samples = None
    if keep_samples:
        samples = np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)
    return DecodedFile(path, rate, out.frames, out.clipped, out.level_dbfs, header, samples)


def decode_file(path, codec: Codec | None = None, original_rate: bool = False) -> Decoded:
    with open(path, "rb") as f:
        return decode_bytes(f.read(), codec, original_rate)


def quality(reference: np.ndarray, decoded: np.ndarray, sample_rate: int,
            perceptual: bool = True) -> Quality:
    """Reconstruction error of `decoded` against `reference` (same rate)."""
    return compute_quality(reference, decoded, sample_rate, with_perceptual=perceptual)
