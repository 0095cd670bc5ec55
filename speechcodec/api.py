"""File-level API: audio file -> stream bytes -> audio, with the figures every command reports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import Audio, load_audio, resample_to_length, resampled_length
from .bitstream import StreamError, StreamHeader, parse_stream, serialize_stream
from .metrics import PCM_BITS_PER_SECOND, Quality, compute_quality
from .model import Codec
from .pipeline import decode_codes, encode_samples, num_frames_for
from .pretrained import load_codec


@dataclass(frozen=True)
class Encoded:
    """An encoded signal: the stream file's bytes and what they hold."""

    data: bytes
    header: StreamHeader
    codes: np.ndarray  # [K, F]

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


def encode_audio(codec: Codec, audio: Audio, kbps: float, progress=None) -> Encoded:
    """Encode `audio` (already at the codec rate) at `kbps` into a stream."""
    cfg = codec.cfg
    if audio.sample_rate != cfg.sample_rate:
        raise ValueError(f"audio is at {audio.sample_rate} Hz, the codec needs {cfg.sample_rate}")
    k = cfg.codebooks_for_kbps(kbps)
    codes = encode_samples(codec, audio.samples, k, progress)
    header = StreamHeader(
        model_id=codec.model_id, weights_hash=codec.weights_hash, sample_rate=cfg.sample_rate,
        frame_size=cfg.frame_size, num_codebooks=k, codebook_bits=cfg.bits_per_code,
        num_frames=codes.shape[1], num_samples=audio.original_num_samples,
        original_sample_rate=audio.original_sample_rate)
    return Encoded(serialize_stream(header, codes), header, codes)


def encode_file(path, kbps: float = 3.0, codec: Codec | None = None) -> Encoded:
    """Read any audio file and encode it. Raises AudioError for unreadable input."""
    codec = codec or load_codec()
    return encode_audio(codec, load_audio(path, codec.cfg.sample_rate), kbps)


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


def decode_bytes(data: bytes, codec: Codec | None = None, original_rate: bool = False,
                 progress=None) -> Decoded:
    """Stream bytes -> audio at the codec rate, or at the encoder input's rate and exact length.

    Raises StreamError for a damaged stream or one from another model or format version.
    """
    header, codes = parse_stream(data)
    codec = codec or load_codec()
    check_compatible(codec, header)
    samples = decode_codes(codec, codes, codec_rate_length(header), progress)
    rate = header.sample_rate
    if original_rate and header.original_sample_rate != rate:
        samples = resample_to_length(samples, rate, header.original_sample_rate,
                                     header.num_samples)
        rate = header.original_sample_rate
    return Decoded(samples, rate, header)


def decode_file(path, codec: Codec | None = None, original_rate: bool = False) -> Decoded:
    with open(path, "rb") as f:
        return decode_bytes(f.read(), codec, original_rate)


def quality(reference: np.ndarray, decoded: np.ndarray, sample_rate: int,
            perceptual: bool = True) -> Quality:
    """Reconstruction error of `decoded` against `reference` (same rate)."""
    return compute_quality(reference, decoded, sample_rate, with_perceptual=perceptual)
