"""How many bits the codes really need: the empirical entropy of each codebook.

The stream file spends log2(codebook_size) = 10 bits on every code. If some codewords are used
far more often than others, an entropy coder (arithmetic / range coding with a fixed table of
code probabilities) could spend fewer. Two figures per codebook k, in bits per code:

* ``entropy``: H_k = -sum_i p_k(i) log2 p_k(i) with p_k the code frequencies on the measured
  files themselves. This is the plug-in estimate; it is optimistic, because the table is fitted
  to the very data it is scored on (with few frames per codeword it is biased low).
* ``cross_entropy``: -mean log2 q_k(code) over the measured files, with q_k a table fitted on
  *other* files (e.g. the training set) and smoothed (add-1/2, so unseen codes still cost a
  finite number of bits). This is what a range coder shipping that table would actually reach
  (within a fraction of a bit per frame).

Both are zeroth-order (each code on its own, no context from the previous frame or the
previous codebook). The saving at K codebooks is 1 - sum_{k<K} H_k / (K * bits_per_code).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CodebookEntropy",
    "EntropyReport",
    "code_counts",
    "cross_entropy_bits",
    "entropy_bits",
    "measure_entropy",
]

#: Range coding is worth a new stream format version only above this saving.
WORTHWHILE_SAVING = 0.10


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Plug-in entropy in bits of each row of `counts [K, N]` (a row of zeros gives nan)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c / total
        terms = np.where(c > 0, -p * np.log2(np.where(c > 0, p, 1.0)), 0.0)
    out = terms.sum(axis=-1)
    return np.where(total[..., 0] > 0, out, np.nan)


def cross_entropy_bits(counts: np.ndarray, table_counts: np.ndarray,
                       alpha: float = 0.5) -> np.ndarray:
    """Mean bits per code of data `counts [K, N]` coded with the smoothed frequencies of
    `table_counts [K, N]`: q(i) = (t(i) + alpha) / (sum t + alpha N)."""
    c = np.asarray(counts, dtype=np.float64)
    t = np.asarray(table_counts, dtype=np.float64)
    if c.shape != t.shape:
        raise ValueError(f"shape mismatch: {c.shape} vs {t.shape}")
    q = (t + alpha) / (t.sum(axis=-1, keepdims=True) + alpha * t.shape[-1])
    total = c.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, -(c * np.log2(q)).sum(axis=-1) / total, np.nan)


@dataclass(frozen=True)
class CodeCounts:
    """Histograms of codes: `counts [K, codebook_size]`, over `frames` frames, `seconds` s."""

    counts: np.ndarray
    frames: int
    seconds: float
    files: int


def code_counts(codec, sources: Sequence[np.ndarray | str | os.PathLike],
                num_codebooks: int | None = None, progress: bool = False) -> CodeCounts:
    """Encode every signal (float `[N]` at the codec rate, or an audio file) with all (or
    `num_codebooks`) codebooks and count how often each code occurs in each codebook."""
    import torch
    from tqdm import tqdm

    from .audio import AudioError, load_audio
    from .pipeline import encode_samples

    cfg = codec.cfg
    k = num_codebooks or cfg.num_codebooks
    counts = np.zeros((k, cfg.codebook_size), dtype=np.int64)
    frames, seconds, files = 0, 0.0, 0
    with torch.inference_mode():
        for s in tqdm(sources, desc="counting codes", unit="file", disable=not progress,
                      file=sys.stderr):
            if isinstance(s, (str, os.PathLike)):
                try:
                    s = load_audio(s, cfg.sample_rate).samples
                except AudioError as e:
                    print(f"skipping {e}", file=sys.stderr)
                    continue
            codes = encode_samples(codec, s, k)
            for j in range(k):
                counts[j] += np.bincount(codes[j], minlength=cfg.codebook_size)
            frames += codes.shape[1]
            seconds += len(s) / cfg.sample_rate
            files += 1
    return CodeCounts(counts, frames, seconds, files)


@dataclass(frozen=True)
class CodebookEntropy:
    """One codebook's figures, in bits per code."""

    codebook: int  # 1-based, as on the page
    bits: int  # what the stream file spends: log2(codebook_size)
    used: int  # distinct codes seen
    entropy: float  # plug-in, on the measured files
    cross_entropy: float  # with a table from other files (nan without one)
    max_entropy: float  # log2(min(codebook_size, frames)): the most the plug-in can show


@dataclass(frozen=True)
class EntropyReport:
    """Per-codebook entropy and what an entropy coder could save at each bitrate."""

    codebooks: list[CodebookEntropy]
    frames: int
    seconds: float
    files: int
    table_frames: int  # frames behind the cross-entropy table (0: none)
    model: dict

    def saving(self, num_codebooks: int, honest: bool = True) -> float:
        """Fraction of the fixed-length payload an entropy coder could save with the first
        `num_codebooks` codebooks; `honest` uses the cross-entropy where available."""
        cbs = self.codebooks[:num_codebooks]
        fixed = sum(c.bits for c in cbs)
        coded = sum(c.cross_entropy if honest and math.isfinite(c.cross_entropy) else c.entropy
                    for c in cbs)
        return 1.0 - coded / fixed

    def rows(self) -> list[dict]:
        return [asdict(c) for c in self.codebooks]

    def rate_rows(self, rates: Sequence[int]) -> list[dict]:
        """Per codebook count K: fixed and entropy-coded bits per frame and kbps, saving."""
        out = []
        frame_rate = self.model.get("frame_rate", 50.0)
        for k in rates:
            cbs = self.codebooks[:k]
            fixed = sum(c.bits for c in cbs)
            h = sum(c.entropy for c in cbs)
            ce = sum(c.cross_entropy for c in cbs)
            out.append({"codebooks": k, "fixed_bits": fixed, "fixed_kbps": fixed * frame_rate / 1e3,
                        "entropy_bits": h, "entropy_kbps": h * frame_rate / 1e3,
                        "cross_entropy_bits": ce, "cross_entropy_kbps": ce * frame_rate / 1e3,
                        "saving": self.saving(k, honest=False),
                        "honest_saving": self.saving(k, honest=True)})
        return out

    def verdict(self, rates: Sequence[int]) -> str:
        best = max(self.saving(k) for k in rates)
        if best >= WORTHWHILE_SAVING:
            return (f"an entropy coder would save up to {100 * best:.1f}% (>= "
                    f"{100 * WORTHWHILE_SAVING:.0f}%): range coding is worth a format version")
        return (f"an entropy coder would save at most {100 * best:.1f}% (< "
                f"{100 * WORTHWHILE_SAVING:.0f}%): fixed-length codes stay")

    def as_dict(self, rates: Sequence[int] = (3, 6, 12)) -> dict:
        return {"model": self.model, "files": self.files, "frames": self.frames,
                "seconds": self.seconds, "table_frames": self.table_frames,
                "codebooks": self.rows(), "rates": self.rate_rows(rates),
                "verdict": self.verdict(rates)}


def report_from_counts(codec, data: CodeCounts, table: CodeCounts | None = None) -> EntropyReport:
    cfg = codec.cfg
    h = entropy_bits(data.counts)
    ce = (cross_entropy_bits(data.counts, table.counts) if table is not None
          else np.full(len(h), np.nan))
    used = (data.counts > 0).sum(axis=1)
    cap = math.log2(max(1, min(cfg.codebook_size, data.frames)))
    cbs = [CodebookEntropy(k + 1, cfg.bits_per_code, int(used[k]), float(h[k]), float(ce[k]),
                           cap) for k in range(len(h))]
    model = {"model_id": codec.model_id, "weights_hash": codec.weights_hash,
             "frame_rate": cfg.frame_rate, "codebook_size": cfg.codebook_size}
    return EntropyReport(cbs, data.frames, data.seconds, data.files,
                         table.frames if table is not None else 0, model)


def measure_entropy(codec, sources: Sequence, table_sources: Sequence | None = None,
                    progress: bool = False) -> EntropyReport:
    """Entropy of each codebook on `sources`; cross-entropy with a table from `table_sources`
    (e.g. training files; None: plug-in entropy only)."""
    data = code_counts(codec, sources, progress=progress)
    table = code_counts(codec, table_sources, progress=progress) if table_sources else None
    return report_from_counts(codec, data, table)
