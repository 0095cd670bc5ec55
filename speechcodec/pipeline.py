"""Signal-level encode/decode: numpy samples at the codec rate <-> numpy codes.

These wrap the model's streaming objects and feed them in chunks, so memory stays bounded for
long inputs and the whole-file path is the streaming path. The decoder reproduces its input
`output_delay` samples late; the encoder therefore codes `output_delay` samples of extra silence
at the end, and the decoder drops the first `output_delay` samples, so the output lines up with
the input sample for sample and has exactly its length.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .model import Codec

CHUNK_FRAMES = 1500  # 30 s per model call: bounded memory, negligible per-call overhead


def num_frames_for(codec: Codec, num_samples: int) -> int:
    """Code frames needed to reproduce `num_samples` samples (at the codec rate)."""
    cfg = codec.cfg
    return max(1, math.ceil((num_samples + cfg.output_delay) / cfg.frame_size))


def encode_samples(codec: Codec, samples: np.ndarray, num_codebooks: int,
                   progress=None) -> np.ndarray:
    """`samples [N]` float at the codec rate -> codes `[K, F]` int64."""
    cfg = codec.cfg
    frames = num_frames_for(codec, len(samples))
    padded = np.zeros(frames * cfg.frame_size, dtype=np.float32)
    padded[: len(samples)] = samples
    enc = codec.stream_encoder(num_codebooks)
    out = []
    step = CHUNK_FRAMES * cfg.frame_size
    for start in range(0, len(padded), step):
        chunk = torch.from_numpy(padded[start:start + step])[None]
        out.append(enc.push(chunk)[0].numpy())
        if progress is not None:
            progress(len(chunk[0]))
    return np.concatenate(out, axis=1)


def decode_codes(codec: Codec, codes: np.ndarray, num_samples: int, progress=None) -> np.ndarray:
    """codes `[K, F]` -> float32 samples `[num_samples]` at the codec rate, aligned with the
    encoder's input."""
    cfg = codec.cfg
    if codes.shape[1] < num_frames_for(codec, num_samples):
        raise ValueError(f"{codes.shape[1]} frames cannot hold {num_samples} samples")
    dec = codec.stream_decoder()
    out = []
    for start in range(0, codes.shape[1], CHUNK_FRAMES):
        chunk = torch.from_numpy(np.ascontiguousarray(codes[:, start:start + CHUNK_FRAMES]))
        out.append(dec.push(chunk.long()[None])[0].numpy())
        if progress is not None:
            progress(chunk.shape[1] * cfg.frame_size)
    wav = np.concatenate(out)
    d = cfg.output_delay
    return wav[d:d + num_samples].astype(np.float32)


def roundtrip_samples(codec: Codec, samples: np.ndarray, num_codebooks: int) -> np.ndarray:
    """Encode then decode `samples [N]`; returns `[N]`."""
    return decode_codes(codec, encode_samples(codec, samples, num_codebooks), len(samples))
