"""A linear autoencoder for contrast: PCA on 20 ms frames, quantized to the neural codec's bitrate.

The neural codec is a nonlinear autoencoder, x -> z = E(x) -> codes = Q(z) -> x' = D(Q(z)). This
module is the same pipeline with every part made linear and fitted in closed form:

    frame   x_t = w * s[(t - 1) * 320 : (t + 1) * 320]      40 ms, sine window w, 20 ms hop
    encode  y_t = W (x_t - mu)                             W [C, 640]: top principal axes
    quant.  i_tc = uniform scalar quantizer of y_tc with b_c bits (sum_c b_c = bits per frame)
    decode  x'_t = mu + W^T y'_t ;   s' = overlap-add of w * x'_t

Framing. A sine window over 40 ms with a 20 ms hop is the same framing as the neural encoder's
analysis convolution (40 ms window, 20 ms hop), and it satisfies w[n]^2 + w[n + 320]^2 = 1, so
with every component kept the overlap-add rebuilds the input exactly; truncated, it fades one
frame into the next instead of leaving a click at every 20 ms boundary (which a rectangular
320-sample frame would). One coefficient vector is sent per 20 ms hop, so the bit budget per
frame is exactly the neural codec's: 30 / 60 / 120 bits at 1.5 / 3 / 6 kbps. Frame t covers
input samples [(t - 1) * 320, (t + 1) * 320); rebuilding N samples takes ceil(N / 320) + 1
frames (the last 20 ms of lookahead, the same one frame of delay the neural decoder has). The
decoded signal lines up with the input sample for sample and has exactly its length.

Bits. Each component c gets b_c bits and a uniform quantizer with step Delta_{c,b}. Both are
fitted on training frames: for every component and every b = 1..MAX_BITS the step that minimises
the mean squared error is found by search, giving a table D[c, b] of the error left (D[c, 0] is
the component's variance: not sent, decoded as 0). Bits are then handed out one at a time, each
to the component whose error it lowers most (greedy marginal-return allocation, the discrete form
of reverse water-filling). So the allocation for B + 1 bits is that for B bits plus one.
Quantizers with b >= 2 bits are mid-tread (zero is a level: silence decodes as silence); a 1-bit
quantizer is mid-rise (+-Delta/2: the sign).

The fitted basis ships as `pretrained/pca_basis.npz` (float16 components, < 1 MB) and is rebuilt
by `speechcodec pca-fit ../shared/data/train.csv --out speechcodec/pretrained/pca_basis.npz`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_BASIS",
    "HOP",
    "MAX_BITS",
    "PCACodec",
    "PCACodes",
    "allocate_bits",
    "fit_pca",
    "load_pca",
]

SAMPLE_RATE = 16000
HOP = 320  # 20 ms at 16 kHz, the neural codec's frame
MAX_BITS = 12  # most bits one component can get
DEFAULT_BASIS = Path(__file__).resolve().parent / "pretrained" / "pca_basis.npz"
FILE_VERSION = 1

# Step search: candidate steps are sigma * 2^(-b) * 2^g for g on a grid, refined once.
_COARSE = np.linspace(-1.0, 4.0, 21)


# --------------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------------


def _window(kind: str, length: int) -> np.ndarray:
    if kind == "sine":
        return np.sin(np.pi * (np.arange(length) + 0.5) / length)
    if kind == "rect":
        return np.ones(length)
    raise ValueError(f"unknown window '{kind}' (use 'sine' or 'rect')")


def _frame_length(window: str, hop: int) -> int:
    return 2 * hop if window == "sine" else hop


def num_frames_for(num_samples: int, window: str = "sine", hop: int = HOP) -> int:
    """Frames needed to rebuild `num_samples` samples."""
    blocks = max(1, math.ceil(num_samples / hop))
    return blocks + (_frame_length(window, hop) // hop - 1)


def _frames(samples: np.ndarray, window: str, hop: int) -> np.ndarray:
    """`samples [N]` -> windowed frames `[F, L]` float64, F = num_frames_for(N)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected samples of shape [N], got {x.shape}")
    length = _frame_length(window, hop)
    f = num_frames_for(len(x), window, hop)
    lead = length - hop  # frame 0 ends at sample hop: it sees (length - hop) samples of silence
    padded = np.zeros((f - 1) * hop + length)
    padded[lead:lead + len(x)] = x
    idx = np.arange(length)[None, :] + hop * np.arange(f)[:, None]
    return padded[idx] * _window(window, length)


def _overlap_add(frames: np.ndarray, num_samples: int, window: str, hop: int) -> np.ndarray:
    """Windowed overlap-add of `frames [F, L]`, trimmed to the `num_samples` they rebuild."""
    f, length = frames.shape
    out = np.zeros((f - 1) * hop + length)
    w = frames * _window(window, length)
    for j in range(length // hop):  # add all frames' j-th hop-sized piece at once
        out[j * hop:j * hop + f * hop] += w[:, j * hop:(j + 1) * hop].reshape(-1)
    lead = length - hop
    return out[lead:lead + num_samples]


# --------------------------------------------------------------------------------------------
# Scalar quantizers and bit allocation
# --------------------------------------------------------------------------------------------


def _offset(bits: np.ndarray | int) -> np.ndarray:
    """Index of the zero level: 2^(b-1) (mid-tread) for b >= 2, 0.5 (mid-rise) for b = 1."""
    b = np.asarray(bits)
    return np.where(b >= 2, np.exp2(np.maximum(b, 1) - 1.0), 0.5)


def quantize(y: np.ndarray, step: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Coefficients `y [..., C]` -> indices in [0, 2^b_c) (b_c >= 1 for every c)."""
    o = _offset(bits)
    i = np.floor(y / step + o + 0.5)
    return np.clip(i, 0, np.exp2(bits) - 1).astype(np.int64)


def dequantize(idx: np.ndarray, step: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Indices `[..., C]` -> reconstruction levels step * (i - offset)."""
    return step * (idx - _offset(bits))


def _best_step(y: np.ndarray, bits: int) -> tuple[float, float]:
    """The MSE-optimal uniform step for `bits` bits on samples `y [M]`: (step, mse)."""
    sigma = float(np.sqrt(np.mean(y * y))) or 1e-12

    b = np.array(bits)

    def mse(grid: np.ndarray) -> np.ndarray:
        steps = sigma * np.exp2(grid - bits)[:, None]  # [S, 1] candidates against y [1, M]
        yq = dequantize(quantize(y[None, :], steps, b), steps, b)
        return np.mean((y[None, :] - yq) ** 2, axis=1)

    e = mse(_COARSE)
    g0 = _COARSE[int(np.argmin(e))]
    d = _COARSE[1] - _COARSE[0]
    fine = g0 + np.linspace(-d, d, 9)
    e2 = mse(fine)
    j = int(np.argmin(e2))
    return float(sigma * np.exp2(fine[j] - bits)), float(e2[j])


def allocate_bits(distortion: np.ndarray, total_bits: int) -> np.ndarray:
    """Greedy allocation of `total_bits` over components.

    Args:
        distortion: `[C, MAX_BITS + 1]` mean squared error of each component at each bit count
            (column 0: the error when the component is not sent).
        total_bits: bits per frame to hand out.

    Returns:
        bits `[C]` int, summing to `total_bits`. Each bit goes to the component whose error it
        lowers most; ties go to the lower component index.
    """
    c, cols = distortion.shape
    if total_bits < 0 or total_bits > c * (cols - 1):
        raise ValueError(f"cannot allocate {total_bits} bits over {c} components of at most "
                         f"{cols - 1} bits")
    bits = np.zeros(c, dtype=np.int64)
    rows = np.arange(c)
    for _ in range(total_bits):
        nxt = np.minimum(bits + 1, cols - 1)
        gain = distortion[rows, bits] - distortion[rows, nxt]
        gain[bits >= cols - 1] = -np.inf
        bits[int(np.argmax(gain))] += 1
    return bits


# --------------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCACodes:
    """The PCA codec's output for one signal.

    Attributes:
        indices: `[F, C']` int64 quantizer indices, one row per 20 ms frame, one column per sent
            component (those with bits > 0, in component order).
        bits: `[C']` bits of each sent component; `bits.sum()` is the bits per frame.
        components: `[C']` which principal components were sent.
        num_samples: length of the signal to rebuild.
    """

    indices: np.ndarray
    bits: np.ndarray
    components: np.ndarray
    num_samples: int

    @property
    def num_frames(self) -> int:
        return int(self.indices.shape[0])

    @property
    def bits_per_frame(self) -> int:
        return int(self.bits.sum())

    @property
    def payload_bits(self) -> int:
        return self.num_frames * self.bits_per_frame

    def to_bytes(self) -> bytes:
        """Pack the indices frame by frame, each in its component's bit width, MSB first, with
        only the last byte padded: exactly ceil(F * bits_per_frame / 8) bytes."""
        cols = []
        for j, b in enumerate(self.bits):
            shifts = np.arange(int(b) - 1, -1, -1)
            cols.append((self.indices[:, j:j + 1] >> shifts) & 1)
        bitmat = np.concatenate(cols, axis=1) if cols else np.zeros((self.num_frames, 0), int)
        return np.packbits(bitmat.astype(np.uint8).reshape(-1)).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, bits: np.ndarray, components: np.ndarray,
                   num_frames: int, num_samples: int) -> PCACodes:
        """Inverse of `to_bytes` for a known allocation and frame count."""
        bits = np.asarray(bits, dtype=np.int64)
        per_frame = int(bits.sum())
        need = math.ceil(num_frames * per_frame / 8)
        if len(data) != need:
            raise ValueError(f"expected {need} bytes for {num_frames} frames of {per_frame} "
                             f"bits, got {len(data)}")
        flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: num_frames * per_frame]
        bitmat = flat.reshape(num_frames, per_frame).astype(np.int64)
        idx = np.zeros((num_frames, len(bits)), dtype=np.int64)
        pos = 0
        for j, b in enumerate(bits):
            for k in range(int(b)):
                idx[:, j] = (idx[:, j] << 1) | bitmat[:, pos + k]
            pos += int(b)
        return cls(idx, bits, np.asarray(components, dtype=np.int64), int(num_samples))


# --------------------------------------------------------------------------------------------
# The codec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PCACodec:
    """A fitted PCA basis with its quantizer tables; encodes and decodes samples at 16 kHz.

    Attributes:
        mean: `[L]` mean windowed frame.
        components: `[C, L]` principal axes (orthonormal rows), by decreasing variance.
        variances: `[C]` variance of each component on the training frames.
        total_variance: summed variance of all L dimensions (for the energy a basis keeps).
        steps: `[C, MAX_BITS + 1]` quantizer step per component and bit count (column 0 unused).
        distortion: `[C, MAX_BITS + 1]` training MSE per component and bit count.
        window: "sine" (40 ms lapped frames) or "rect" (20 ms blocks).
        hop: samples per frame sent (320 = 20 ms).
        info: how it was fitted (files, frames, seed, source).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    total_variance: float
    steps: np.ndarray
    distortion: np.ndarray
    window: str = "sine"
    hop: int = HOP
    sample_rate: int = SAMPLE_RATE
    info: dict = field(default_factory=dict)

    # -- derived ------------------------------------------------------------------------------
    @property
    def frame_length(self) -> int:
        return int(self.components.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def bits_for_kbps(self, kbps: float) -> int:
        """Bits per frame at `kbps` (must be a whole number: 1.5 kbps -> 30 bits)."""
        bits = kbps * 1000.0 / self.frame_rate
        if bits < 1 or not math.isclose(bits, round(bits), abs_tol=1e-6):
            raise ValueError(f"{kbps:g} kbps is not a whole number of bits per "
                             f"{1000 / self.frame_rate:g} ms frame")
        return round(bits)

    def allocation(self, bits_per_frame: int) -> np.ndarray:
        """bits `[C]` per component for a frame budget (see `allocate_bits`)."""
        return allocate_bits(self.distortion, bits_per_frame)

    def energy_kept(self, num_components: int) -> float:
        """Fraction of the training frames' variance in the first `num_components` axes."""
        return float(self.variances[:num_components].sum() / self.total_variance)

    # -- unquantized linear autoencoder -------------------------------------------------------
    def transform(self, samples: np.ndarray) -> np.ndarray:
        """`samples [N]` -> coefficients `[F, C]` (the linear encoder, no quantization)."""
        frames = _frames(samples, self.window, self.hop) - self.mean
        return frames @ self.components.T.astype(np.float64)

    def inverse(self, coeffs: np.ndarray, num_samples: int,
                components: np.ndarray | None = None) -> np.ndarray:
        """Coefficients `[F, C']` of `components` (default the first C') -> samples `[N]`."""
        comps = (np.arange(coeffs.shape[1]) if components is None else np.asarray(components))
        frames = self.mean + coeffs @ self.components[comps].astype(np.float64)
        return _overlap_add(frames, num_samples, self.window, self.hop).astype(np.float32)

    # -- the codec ----------------------------------------------------------------------------
    def encode(self, samples: np.ndarray, kbps: float | None = None,
               bits_per_frame: int | None = None) -> PCACodes:
        """`samples [N]` at 16 kHz -> codes at `kbps` (or `bits_per_frame`)."""
        if (kbps is None) == (bits_per_frame is None):
            raise ValueError("give exactly one of kbps and bits_per_frame")
        budget = self.bits_for_kbps(kbps) if kbps is not None else int(bits_per_frame)
        alloc = self.allocation(budget)
        sent = np.flatnonzero(alloc)
        bits = alloc[sent]
        y = self.transform(samples)[:, sent]
        idx = quantize(y, self.steps[sent, bits], bits)
        return PCACodes(idx, bits, sent, len(samples))

    def decode(self, codes: PCACodes) -> np.ndarray:
        """codes -> float32 samples `[num_samples]`, aligned with the encoder's input."""
        y = dequantize(codes.indices, self.steps[codes.components, codes.bits], codes.bits)
        return self.inverse(y, codes.num_samples, codes.components)

    def roundtrip(self, samples: np.ndarray, kbps: float) -> np.ndarray:
        return self.decode(self.encode(samples, kbps))

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> int:
        """Write the basis as a compressed .npz (components as float16); returns its size."""
        import io

        from .audio import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(
            buf, version=np.int64(FILE_VERSION), mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float16),
            variances=self.variances.astype(np.float32),
            total_variance=np.float64(self.total_variance),
            steps=self.steps.astype(np.float32), distortion=self.distortion.astype(np.float32),
            window=np.str_(self.window), hop=np.int64(self.hop),
            sample_rate=np.int64(self.sample_rate), info=np.str_(json.dumps(self.info)))
        data = buf.getvalue()
        atomic_write_bytes(path, data)
        return len(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCACodec:
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["version"])
                if version != FILE_VERSION:
                    raise ValueError(f"{path}: PCA basis file version {version}, "
                                     f"this speechcodec reads {FILE_VERSION}")
                return cls(
                    mean=z["mean"].astype(np.float64),
                    components=z["components"].astype(np.float64),
                    variances=z["variances"].astype(np.float64),
                    total_variance=float(z["total_variance"]),
                    steps=z["steps"].astype(np.float64),
                    distortion=z["distortion"].astype(np.float64),
                    window=str(z["window"]), hop=int(z["hop"]),
                    sample_rate=int(z["sample_rate"]), info=json.loads(str(z["info"])))
        except (OSError, KeyError, ValueError) as e:
            if isinstance(e, ValueError) and "version" in str(e):
                raise
            raise ValueError(f"{path}: not a PCA basis file ({e})") from None


@lru_cache(maxsize=4)
def _load_cached(path: str) -> PCACodec:
    return PCACodec.load(path)


def load_pca(path: str | os.PathLike | None = None) -> PCACodec:
    """The shipped PCA codec (`pretrained/pca_basis.npz`) or one fitted with `pca-fit`."""
    return _load_cached(os.fspath(path or DEFAULT_BASIS))


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def _sign_fix(vectors: np.ndarray) -> np.ndarray:
    """Make each row's largest-magnitude entry positive (eigenvectors have no fixed sign)."""
    rows = np.arange(vectors.shape[0])
    signs = np.sign(vectors[rows, np.argmax(np.abs(vectors), axis=1)])
    return vectors * np.where(signs == 0, 1.0, signs)[:, None]


def _eigh(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix, on one thread: for a 640 x 640 problem more
    threads only contend (20x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w, v = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(cov)))
    finally:
        torch.set_num_threads(threads)
    return w.numpy(), v.numpy()


def fit_pca(signals: Sequence[np.ndarray] | Sequence[str | os.PathLike],
            num_components: int = 128, window: str = "sine", hop: int = HOP,
            frames_per_signal: int = 64, seed: int = 0, progress: bool = False,
            info: dict | None = None) -> PCACodec:
    """Fit the basis and the quantizer tables.

    Args:
        signals: float arrays `[N]` at 16 kHz, or audio file paths (read with `load_audio`;
            unreadable files are skipped with a message).
        num_components: principal axes to keep (the rest are never sent).
        window: "sine" (40 ms lapped frames, the default) or "rect" (20 ms blocks).
        hop: samples per frame (320).
        frames_per_signal: frames drawn at random from each signal (seeded) to fit the quantizer
            steps; the covariance uses every frame.
        seed: seed of that draw; the same inputs and arguments give the same basis.
        progress: progress bar on stderr.
        info: extra provenance stored in the file.
    """
    from tqdm import tqdm

    from .audio import AudioError, load_audio

    length = _frame_length(window, hop)
    _window(window, length)  # validate
    if not 1 <= num_components <= length:
        raise ValueError(f"num_components must be in 1..{length}")
    rng = np.random.default_rng(seed)
    total = np.zeros(length)
    gram = np.zeros((length, length))
    count = 0
    kept: list[np.ndarray] = []
    used = 0
    seconds = 0.0
    for s in tqdm(signals, desc="PCA frames", unit="file", disable=not progress,
                  file=sys.stderr):
        if isinstance(s, (str, os.PathLike)):
            try:
                s = load_audio(s, SAMPLE_RATE).samples
            except AudioError as e:
                print(f"skipping {e}", file=sys.stderr)
                continue
        x = _frames(s, window, hop)
        total += x.sum(0)
        gram += x.T @ x
        count += len(x)
        pick = rng.choice(len(x), size=min(frames_per_signal, len(x)), replace=False)
        kept.append(x[np.sort(pick)])
        used += 1
        seconds += len(s) / SAMPLE_RATE
    if count < 2:
        raise ValueError("need at least two frames of audio to fit a PCA")
    mean = total / count
    cov = gram / count - np.outer(mean, mean)
    evals, evecs = _eigh(cov)
    order = np.argsort(evals)[::-1]
    evals = np.maximum(evals[order], 0.0)
    comps = _sign_fix(evecs[:, order[:num_components]].T)
    # Fit the quantizers to the basis as it will be stored (float16), so the file is
    # self-consistent.
    comps = comps.astype(np.float16).astype(np.float64)
    mean = mean.astype(np.float32).astype(np.float64)
    y = (np.concatenate(kept) - mean) @ comps.T
    steps = np.zeros((num_components, MAX_BITS + 1))
    dist = np.zeros((num_components, MAX_BITS + 1))
    for c in tqdm(range(num_components), desc="quantizer steps", unit="axis",
                  disable=not progress, file=sys.stderr):
        dist[c, 0] = float(np.mean(y[:, c] ** 2))
        for b in range(1, MAX_BITS + 1):
            steps[c, b], dist[c, b] = _best_step(y[:, c], b)
    meta = {"files": used, "frames": count, "seconds": round(seconds, 1),
            "quantizer_frames": len(y), "frames_per_signal": frames_per_signal, "seed": seed,
            "num_components": num_components, "window": window, **(info or {})}
    return PCACodec(mean=mean, components=comps, variances=evals[:num_components],
                    total_variance=float(evals.sum()), steps=steps, distortion=dist,
                    window=window, hop=hop, info=meta)
