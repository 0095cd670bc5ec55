"""A batched YIN pitch tracker in torch: the targets that teach the decoder's pitch path.

YIN (de Cheveigné and Kawahara, 2002): for each frame, the squared difference between the signal
and itself `tau` samples later, normalised by its running mean over smaller lags; the period is
the first lag whose normalised difference dips below a threshold (refined to the bottom of that
dip and interpolated between lags), and a frame with no such dip, or too quiet, is unvoiced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def track_pitch(wav: torch.Tensor, centres: torch.Tensor, sample_rate: int = 16000,
                f0_range: tuple[float, float] = (50.0, 600.0), window: int = 320,
                threshold: float = 0.25, min_rms: float = 1e-3
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """f0 in Hz and a voiced mask, both `[B, J]`, for frames of `wav [B, T]` centred on the
    sample indices `centres [J]` (which may lie outside the signal: zeros are assumed there).

    Each frame compares `window` samples from `centre - window // 2` with the same span up to
    `sample_rate / f0_range[0]` samples later. Unvoiced frames get f0 0.
    """
    wav = wav.detach().float()
    tau_min = int(sample_rate // f0_range[1])
    tau_max = int(-(-sample_rate // f0_range[0]))
    span = window + tau_max
    pad = span + int(centres.abs().max()) if len(centres) else 0
    padded = F.pad(wav, (pad, pad))
    starts = (centres.long() - window // 2 + pad)
    idx = starts[:, None] + torch.arange(span)
    frames = padded[:, idx]  # [B, J, span]
    n_fft = 1 << (span + window - 1).bit_length()
    head = frames[..., :window]
    # r(tau) = sum_n x[n] x[n + tau] for n < window, by FFT.
    r = torch.fft.irfft(torch.conj(torch.fft.rfft(head, n_fft)) * torch.fft.rfft(frames, n_fft),
                        n_fft)[..., : tau_max + 1]
    sq = F.pad(frames.pow(2).cumsum(-1), (1, 0))
    taus = torch.arange(tau_max + 1)
    energy_lag = sq[..., taus + window] - sq[..., taus]  # sum of x[n + tau]^2 for n < window
    diff = (energy_lag[..., :1] + energy_lag - 2 * r).clamp(min=0)
    # Cumulative-mean normalised difference; d'(0) = 1 by definition.
    running = diff[..., 1:].cumsum(-1) / taus[1:]
    full = torch.cat([torch.ones_like(diff[..., :1]),
                      diff[..., 1:] / running.clamp(min=1e-12)], dim=-1)
    norm = full.clone()
    norm[..., :tau_min] = float("inf")
    below = norm < threshold
    has_dip = below.any(-1)
    first = torch.where(has_dip, below.float().argmax(-1), norm.argmin(-1))
    # The bottom of the dip: the minimum over [first, 1.5 x first] (never a multiple period).
    reach = (taus >= first[..., None]) & (taus <= (first[..., None] * 3) // 2)
    tau = torch.where(reach, norm, torch.full_like(norm, float("inf"))).argmin(-1)
    # Parabolic interpolation between neighbouring lags.
    t = tau.clamp(1, tau_max - 1)
    a, b, c = (full.gather(-1, (t + o)[..., None])[..., 0] for o in (-1, 0, 1))
    denom = a - 2 * b + c
    shift = torch.where(denom.abs() > 1e-9, 0.5 * (a - c) / denom, torch.zeros_like(b))
    period = t.float() + shift.clamp(-0.5, 0.5)
    rms = (energy_lag[..., 0] / window).sqrt()
    voiced = has_dip & (rms > min_rms)
    f0 = torch.where(voiced, sample_rate / period, torch.zeros_like(period))
    return f0, voiced


def pitch_loss(f0: torch.Tensor, target: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in octaves over the voiced frames (0 when none is voiced)."""
    if not bool(voiced.any()):
        return f0.sum() * 0.0
    return (torch.log2(f0[voiced]) - torch.log2(target[voiced])).abs().mean()
