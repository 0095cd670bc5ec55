"""Residual vector quantizer with EMA codebooks, data initialisation and dead-code restart.

Stage k quantizes what stages 0..k-1 left over, so the first K codebooks alone already give a
complete (coarser) reconstruction. Training with a random K per example (quantizer dropout) makes
one model serve every bitrate: K codebooks of 2^bits entries cost K * bits bits per frame.
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

    quantized: `[B, D, F]` the sum of the selected codewords (straight-through in training).
    codes: `[B, K, F]` int64 codeword indices, K = number of codebooks computed.
    commit_loss: scalar, mean squared distance between latents and their quantized value.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class VectorQuantizer(nn.Module):
    """One codebook `[N, D]` updated by exponential moving averages of its assignments."""

    def __init__(self, dim: int, size: int, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay = decay
        self.eps = eps
        self.register_buffer("codebook", torch.randn(size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """`x [M, D]` -> indices `[M]` of the nearest codewords (squared Euclidean)."""
        cb = self.codebook
        dist2 = (x.pow(2).sum(1, keepdim=True) - 2 * x @ cb.t() + cb.pow(2).sum(1)[None])
        return dist2.argmin(dim=1)

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        n = self.codebook.shape[0]
        idx = torch.randint(0, x.shape[0], (n,), device=x.device)
        cb = x[idx] + 1e-3 * torch.randn_like(x[idx])
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(cb, 0)
        self.codebook.copy_(cb)
        self.ema_sum.copy_(cb)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, x: torch.Tensor, idx: torch.Tensor, dead_threshold: float) -> None:
        """EMA step from the vectors `x [M, D]` assigned to `idx [M]` (all processes pooled)."""
        n = self.codebook.shape[0]
        onehot = F.one_hot(idx, n).type_as(x)
        count = _all_reduce(onehot.sum(0))
        total = _all_reduce(onehot.t() @ x)
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
            source = x if x.shape[0] else self.codebook[~dead] if (~dead).any() else self.codebook
            pick = torch.randint(0, source.shape[0], (num_dead,), device=x.device)
            fresh = source[pick] + 1e-3 * torch.randn(num_dead, x.shape[1], device=x.device)
            replacement = self.codebook.clone()
            replacement[dead] = fresh
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(replacement, 0)
            self.codebook.copy_(replacement)
            self.ema_sum[dead] = replacement[dead]
            self.ema_count[dead] = 1.0


class ResidualVQ(nn.Module):
    """`num_codebooks` stages of `VectorQuantizer` on `[B, D, F]` latents."""

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int,
                 decay: float = 0.99) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            VectorQuantizer(dim, codebook_size, decay) for _ in range(num_codebooks))
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
        x = z.detach().transpose(1, 2).reshape(b * f, d)
        residual = x.clone()
        quantized = torch.zeros_like(x)
        codes = []
        for k, layer in enumerate(self.layers[:stages]):
            if self.training and not bool(layer.initialised):
                layer._init_from(residual)
            idx = layer.nearest(residual)
            q = layer.codebook[idx]
            active = (per_example > k).repeat_interleave(f)
            if self.training:
                layer.update(residual[active], idx[active], self.dead_threshold)
            quantized = quantized + q * active[:, None]
            residual = residual - q
            codes.append(idx.view(b, f))
        quantized = quantized.view(b, f, d).transpose(1, 2)
        commit = F.mse_loss(z, quantized)
        out = z + (quantized - z).detach()
        return QuantizedResult(out, torch.stack(codes, dim=1), commit)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`codes [B, K, F]` -> `[B, D, F]` sum of the first K codebooks' codewords."""
        if codes.shape[1] > self.num_codebooks:
            raise ValueError(f"got {codes.shape[1]} codebooks, model has {self.num_codebooks}")
        out = 0
        for k in range(codes.shape[1]):
            out = out + F.embedding(codes[:, k], self.layers[k].codebook)
        return out.transpose(1, 2)
