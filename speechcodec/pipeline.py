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

# 10 s per model call: the per-call overhead is negligible (10 s chunks run as fast as 30 s
# ones), and the decoder's activations for a chunk stay near 15 MB (about 65 MB at 30 s).
CHUNK_FRAMES = 500


def num_frames_for(codec: Codec, num_samples: int) -> int:
    """Code frames needed to reproduce `num_samples` samples (at the codec rate)."""
    cfg = codec.cfg
    return max(1, math.ceil((num_samples + cfg.output_delay) / cfg.frame_size))


class ChunkedEncoder:
    """Samples in blocks of any size -> codes, through the model's streaming encoder.

    Blocks are gathered into chunks of ``CHUNK_FRAMES`` frames from the start of the signal,
    whatever their sizes, so the codes equal :func:`encode_samples` on the whole signal.
    Memory: one chunk of samples plus the codes (``finish`` returns them as int64 ``[K, F]``).
    """

    def __init__(self, codec: Codec, num_codebooks: int, progress=None) -> None:
        self.codec = codec
        self.num_samples = 0
        self._enc = codec.stream_encoder(num_codebooks)
        self._chunk = CHUNK_FRAMES * codec.cfg.frame_size
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._codes: list[np.ndarray] = []
        self._progress = progress

    def _push(self, samples: np.ndarray) -> None:
        chunk = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
        codes = self._enc.push(chunk)[0].numpy()
        self._codes.append(codes.astype(np.int16 if codes.max(initial=0) < 2**15 else np.int64))
        if self._progress is not None:
            self._progress(len(samples))

    def _drain(self, final: bool) -> None:
        if not self._pending:
            return
        buf = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        cut = len(buf) if final else len(buf) - len(buf) % self._chunk
        for start in range(0, cut, self._chunk):
            self._push(buf[start:start + self._chunk])
        rest = buf[cut:]
        self._pending = [rest] if len(rest) else []
        self._pending_len = len(rest)

    def push(self, samples: np.ndarray) -> None:
        """Add samples `[n]` at the codec rate."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return
        self.num_samples += x.size
        self._pending.append(x)
        self._pending_len += x.size
        if self._pending_len >= self._chunk:
            self._drain(final=False)

    def finish(self) -> np.ndarray:
        """Pad to whole frames (plus the decoder's delay) and return all codes `[K, F]`."""
        cfg = self.codec.cfg
        frames = num_frames_for(self.codec, self.num_samples)
        pad = frames * cfg.frame_size - self.num_samples
        self._pending.append(np.zeros(pad, dtype=np.float32))
        self._pending_len += pad
        self._drain(final=True)
        codes = np.concatenate(self._codes, axis=1).astype(np.int64)
        assert codes.shape[1] == frames
        return codes


def encode_samples(codec: Codec, samples: np.ndarray, num_codebooks: int,
                   progress=None) -> np.ndarray:
    """`samples [N]` float at the codec rate -> codes `[K, F]` int64."""
    enc = ChunkedEncoder(codec, num_codebooks, progress)
    enc.push(samples)
    return enc.finish()


def iter_decode(codec: Codec, codes: np.ndarray, num_samples: int, progress=None):
    """codes `[K, F]` -> float32 blocks (one per chunk) that together are the `num_samples`
    samples at the codec rate, aligned with the encoder's input."""
    cfg = codec.cfg
    if codes.shape[1] < num_frames_for(codec, num_samples):
        raise ValueError(f"{codes.shape[1]} frames cannot hold {num_samples} samples")
    dec = codec.stream_decoder()
    skip, left = cfg.output_delay, num_samples
    for start in range(0, codes.shape[1], CHUNK_FRAMES):
        if left <= 0:
            break
        chunk = torch.from_numpy(np.ascontiguousarray(codes[:, start:start + CHUNK_FRAMES]))
        wav = dec.push(chunk.long()[None])[0].numpy()
        if progress is not None:
            progress(chunk.shape[1] * cfg.frame_size)
        if skip:
            drop = min(skip, len(wav))
            wav, skip = wav[drop:], skip - drop
        wav = wav[:left].astype(np.float32)
        left -= len(wav)
        yield wav


def decode_codes(codec: Codec, codes: np.ndarray, num_samples: int, progress=None) -> np.ndarray:
    """codes `[K, F]` -> float32 samples `[num_samples]` at the codec rate, aligned with the
    encoder's input."""
    parts = list(iter_decode(codec, codes, num_samples, progress))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def roundtrip_samples(codec: Codec, samples: np.ndarray, num_codebooks: int) -> np.ndarray:
    """Encode then decode `samples [N]`; returns `[N]`."""
    return decode_codes(codec, encode_samples(codec, samples, num_codebooks), len(samples))
