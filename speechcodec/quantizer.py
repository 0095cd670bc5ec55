"""Residual vector quantizer with factorized, cosine-matched EMA codebooks.

Stage k quantizes what stages 0..k-1 left over, so the first K codebooks alone already give a
complete (coarser) reconstruction. Training with a random K per example (quantizer dropout) makes
one model serve every bitrate: K codebooks of 2^bits entries cost K * bits bits per frame.

Each stage works in a small space of its own (as DAC does): a learned projection takes the
`[B, D, F]` residual down to `codebook_dim` numbers per frame, the nearest codeword is found by
cosine similarity there, and a second projection brings the codeword back to D. Why: with 1,024
codewords spread over 64 dimensions, Euclidean k-means resolves only the few directions of largest
variance, and the commitment loss then teaches the encoder to switch the others off (the first
model collapsed to 6 of 64 dimensions). In 8 dimensions 1,024 codewords cover the space densely,
each stage chooses through its projection which directions of the residual to refine, and every
codeword stays in use.

Codewords are centroids of the (raw, un-normalized) projected vectors they win, kept by
exponential moving averages, with data initialisation and dead-code restart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizedResult:
    """What the quantizer returns in training and in inference.

    quantized: `[B, D, F]` the sum of the selected stages' outputs (straight-through in training).
    codes: `[B, K, F]` int64 codeword indices, K = number of codebooks computed.
    commit_loss: scalar, mean squared distance between each active stage's projected input and
        its codeword (summed over stages).
    latent_loss: scalar, how far each active stage's output is from the residual it stands for,
        relative to the energy of z (mean over stages); it trains only the output projections.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    latent_loss: torch.Tensor | None = None


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class VectorQuantizer(nn.Module):
    """One stage: `in_proj` D -> d, a codebook `[N, d]` matched by cosine, `out_proj` d -> D."""

    def __init__(self, dim: int, size: int, codebook_dim: int = 8, decay: float = 0.99,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.decay = decay
        self.eps = eps
        self.in_proj = nn.Linear(dim, codebook_dim)
        self.out_proj = nn.Linear(codebook_dim, dim)
        self.register_buffer("codebook", torch.randn(size, codebook_dim))
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, e: torch.Tensor) -> torch.Tensor:
        """Projected vectors `e [M, d]` -> indices `[M]` of the codewords closest in angle."""
        sim = F.normalize(e, dim=1) @ F.normalize(self.codebook, dim=1).t()
        return sim.argmax(dim=1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices `[...]` -> this stage's contribution `[..., D]` in latent space."""
        return self.out_proj(F.embedding(idx, self.codebook))

    @torch.no_grad()
    def _init_from(self, e: torch.Tensor) -> None:
        n = self.codebook.shape[0]
        idx = torch.randint(0, e.shape[0], (n,), device=e.device)
        cb = e[idx] + 1e-3 * torch.randn_like(e[idx])
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(cb, 0)
        self.codebook.copy_(cb)
        self.ema_sum.copy_(cb)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, e: torch.Tensor, idx: torch.Tensor, dead_threshold: float) -> None:
        """EMA step from the projected vectors `e [M, d]` assigned to `idx [M]` (all processes
        pooled)."""
        n = self.codebook.shape[0]
        onehot = F.one_hot(idx, n).type_as(e)
        count = _all_reduce(onehot.sum(0))
        total = _all_reduce(onehot.t() @ e)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        m = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (m + n * self.eps) * m
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        # Dead-code restart: codewords that (almost) never win are moved onto random inputs.
        # The counts are pooled over processes, so every process takes the same branch here
        # (and joins the same collectives); the new codewords come from process 0.
        dead = self.ema_count < dead_threshold
        num_dead = int(dead.sum())
        if num_dead:
            source = e if e.shape[0] else self.codebook[~dead] if (~dead).any() else self.codebook
            pick = torch.randint(0, source.shape[0], (num_dead,), device=e.device)
            fresh = source[pick] + 1e-3 * torch.randn(num_dead, e.shape[1], device=e.device)
            replacement = self.codebook.clone()
            replacement[dead] = fresh
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(replacement, 0)
            self.codebook.copy_(replacement)
            self.ema_sum[dead] = replacement[dead]
            self.ema_count[dead] = 1.0


class ResidualVQ(nn.Module):
    """`num_codebooks` stages of `VectorQuantizer` on `[B, D, F]` latents."""

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int, codebook_dim: int = 8,
                 decay: float = 0.99) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            VectorQuantizer(dim, codebook_size, codebook_dim, decay)
            for _ in range(num_codebooks))
        self.dead_threshold = 0.03

    @property
    def num_codebooks(self) -> int:
        return len(self.layers)

    def forward(self, z: torch.Tensor, num_codebooks: torch.Tensor | int | None = None
                ) -> QuantizedResult:
        """Quantize `z [B, D, F]`.

        `num_codebooks` is an int, or in training a `[B]` tensor giving each example its own
        count (quantizer dropout). Codebooks are updated by EMA when the module is training.
        """
        b, d, f = z.shape
        n_q = self.num_codebooks if num_codebooks is None else num_codebooks
        if isinstance(n_q, int):
            if not 1 <= n_q <= self.num_codebooks:
                raise ValueError(f"num_codebooks must be in 1..{self.num_codebooks}, got {n_q}")
            per_example = torch.full((b,), n_q, dtype=torch.long, device=z.device)
            stages = n_q
        else:
            per_example = n_q.to(z.device)
            # In training every stage runs (and updates from its active examples), so that all
            # data-parallel processes take part in the same collectives.
            stages = self.num_codebooks if self.training else int(per_example.max())
        residual = z.transpose(1, 2).reshape(b * f, d)
        quantized = torch.zeros_like(residual)
        commit = z.new_zeros(())
        latent = z.new_zeros(())
        energy = residual.detach().pow(2).mean().clamp(min=1e-8)
        codes = []
        for k, layer in enumerate(self.layers[:stages]):
            e = layer.in_proj(residual)  # [M, d]
            if self.training and not bool(layer.initialised):
                layer._init_from(e.detach())
            idx = layer.nearest(e.detach())
            c = layer.codebook[idx]
            active = (per_example > k).repeat_interleave(f)
            if self.training:
                layer.update(e.detach()[active], idx[active], self.dead_threshold)
                err = (e - c).pow(2).mean(1)
                commit = commit + (err * active).sum() / active.sum().clamp(min=1)
                # The codeword, brought back to D, must approximate the residual it stands for,
                # so that stage k refines what stages < k left over and the first K stages
                # give the best K-stage estimate of z. Without this the later stages' outputs
                # drifted away from any residual and the decoder learnt to ignore them (3, 6
                # and 12 codebooks scored alike). Only `out_proj` learns from this term.
                miss = (layer.out_proj(c) - residual.detach()).pow(2).mean(1) / energy
                latent = latent + (miss * active).sum() / active.sum().clamp(min=1)
            # Straight-through: the decoder's gradient reaches the projection and the encoder.
            out = layer.out_proj(e + (c - e).detach())
            quantized = quantized + out * active[:, None]
            residual = residual - out
            codes.append(idx.view(b, f))
        quantized = quantized.view(b, f, d).transpose(1, 2)
        return QuantizedResult(quantized, torch.stack(codes, dim=1), commit, latent / stages)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`codes [B, K, F]` -> `[B, D, F]` sum of the first K stages' outputs."""
        if codes.shape[1] > self.num_codebooks:
            raise ValueError(f"got {codes.shape[1]} codebooks, model has {self.num_codebooks}")
        out = 0
        for k in range(codes.shape[1]):
            out = out + self.layers[k].lookup(codes[:, k])
        return out.transpose(1, 2)
