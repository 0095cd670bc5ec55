"""Where does the decoded signal lose its quality? Oracle swaps.

Take the decoded signal's STFT, replace one part of it with the original's, resynthesize and
score again. The rise in PESQ-WB is what a decoder that got that part exactly right would buy,
so the parts can be ranked:

- **phase**: the decoded magnitudes with the original's phases;
- **magnitude**: the original magnitudes with the decoded phases;
- **envelope**: the decoded log-magnitude with its smooth spectral envelope (the first
  `lifter` cepstral coefficients: formants, spectral tilt, level) swapped for the original's;
- **fine structure**: the decoded envelope with the original's detail on top of it (voice
  harmonics and their spacing, the noisiness between them).

Envelope and fine structure together are the magnitude. The STFT uses the decoder head's own
framing (480-point Hann window, 160-sample hop at 16 kHz), so the swaps act on the frames the
decoder actually predicts.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["VARIANTS", "oracle_on_files", "oracle_swaps", "plot_oracle"]

#: The signals scored for each file: the decoded one, then one swap each.
VARIANTS = ("decoded", "original phase", "original magnitude", "original envelope",
            "original fine structure")


def _envelope(logmag: torch.Tensor, n_fft: int, lifter: int) -> torch.Tensor:
    """Cepstrally smoothed log-magnitude `[bins, frames]`: quefrencies below `lifter` samples."""
    cep = torch.fft.irfft(logmag, n=n_fft, dim=0)
    cep[lifter:n_fft - lifter + 1] = 0
    return torch.fft.rfft(cep, dim=0).real


def oracle_swaps(ref: np.ndarray, dec: np.ndarray, n_fft: int = 480, hop: int = 160,
                 lifter: int = 30) -> dict[str, np.ndarray]:
    """`ref`, `dec` float `[N]` (aligned, same rate) -> {variant: float32 `[N]`} for every name
    in :data:`VARIANTS`. `lifter` (samples of quefrency, 30 = 1.9 ms at 16 kHz) must sit below
    the shortest pitch period, so that harmonics belong to the fine structure."""
    n = len(ref)
    if len(dec) != n:
        raise ValueError(f"reference has {n} samples, decoded {len(dec)}")
    if n < n_fft:
        raise ValueError(f"{n} samples is shorter than one {n_fft}-point STFT frame")
    if not 0 < lifter < n_fft // 2:
        raise ValueError(f"lifter must be between 1 and {n_fft // 2 - 1}")
    window = torch.hann_window(n_fft, dtype=torch.float64)

    def stft(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(x, dtype=np.float64))
        return torch.stft(t, n_fft, hop, window=window, return_complex=True)

    def istft(spec: torch.Tensor) -> np.ndarray:
        return torch.istft(spec, n_fft, hop, window=window, length=n).numpy().astype(np.float32)

    x, y = stft(ref), stft(dec)
    tiny = 1e-9
    lx, ly = torch.log(x.abs() + tiny), torch.log(y.abs() + tiny)
    ex, ey = _envelope(lx, n_fft, lifter), _envelope(ly, n_fft, lifter)
    phase_x, phase_y = torch.exp(1j * x.angle()), torch.exp(1j * y.angle())
    return {
        "decoded": np.asarray(dec, dtype=np.float32),
        "original phase": istft(y.abs() * phase_x),
        "original magnitude": istft(x.abs() * phase_y),
        "original envelope": istft(torch.exp(ex + ly - ey) * phase_y),
        "original fine structure": istft(torch.exp(ey + lx - ex) * phase_y),
    }


def oracle_on_files(codec, files: list[Path], kbps: float, progress: bool = True
                    ) -> tuple[list[dict], list[dict]]:
    """Round-trip each file at `kbps`, score every variant (PESQ-WB, STOI) against the input.
    Returns (per-file rows, one summary row per variant with means, 95% intervals and the
    mean paired gain over the decoded signal)."""
    from tqdm import tqdm

    from .audio import AudioError, load_audio
    from .evaluate import mean_ci
    from .metrics import compute_quality
    from .pipeline import roundtrip_samples

    rate = codec.cfg.sample_rate
    k = codec.cfg.codebooks_for_kbps(kbps)
    head = codec.decoder.head
    rows: list[dict] = []
    for path in tqdm(files, desc="oracle swaps", unit="file", file=sys.stderr,
                     disable=not progress):
        try:
            x = load_audio(path, rate).samples
        except AudioError as e:
            print(f"skipping {e}", file=sys.stderr)
            continue
        if len(x) < head.n_fft:
            print(f"skipping {path}: shorter than {1000 * head.n_fft / rate:g} ms", file=sys.stderr)
            continue
        y = roundtrip_samples(codec, x, k)
        for name, sig in oracle_swaps(x, y, head.n_fft, head.hop).items():
            q = compute_quality(x, sig, rate)
            rows.append({"file": str(path), "variant": name, "pesq_wb": q.pesq_wb,
                         "stoi": q.stoi})
    base = {r["file"]: r for r in rows if r["variant"] == "decoded"}
    summary = []
    for name in VARIANTS:
        sel = [r for r in rows if r["variant"] == name]
        s: dict = {"variant": name, "files": len(sel)}
        for m in ("pesq_wb", "stoi"):
            s[m], s[m + "_ci"] = mean_ci([r[m] for r in sel])
            s[m + "_gain"], s[m + "_gain_ci"] = mean_ci(
                [r[m] - base[r["file"]][m] for r in sel])
        summary.append(s)
    return rows, summary


def plot_oracle(summary: list[dict], path: str | Path, title: str) -> None:
    """Horizontal bars of mean PESQ-WB per variant, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["variant"] for s in summary][::-1]
    means = [s["pesq_wb"] for s in summary][::-1]
    cis = [s["pesq_wb_ci"] if math.isfinite(s["pesq_wb_ci"]) else 0.0 for s in summary][::-1]
    colours = ["#888888" if n == "decoded" else "#3a7dc9" for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    ax.barh(names, means, xerr=cis, color=colours, capsize=3, ecolor="#222222")
    base = summary[0]["pesq_wb"]
    ax.axvline(base, color="#444444", lw=0.8, ls="--")
    for i, (name, m) in enumerate(zip(names, means)):
        label = f"{m:.2f}" if name == "decoded" else f"{m:.2f} (+{m - base:.2f})"
        ax.text(1.02, i, label, va="center", ha="left", fontsize=9, color="white",
                fontweight="bold")
    ax.set_xlim(1.0, max(m + c for m, c in zip(means, cis)) + 0.2)
    ax.set_xlabel("PESQ-WB (mean, 95% interval)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
