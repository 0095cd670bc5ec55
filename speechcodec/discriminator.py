"""Multi-resolution STFT discriminator and the adversarial losses (training only).

Spectral L1 losses pull the decoder towards the average of every spectrum the codes could stand
for. Where the exact pitch is uncertain, that average is smooth: the voice harmonics above about
1 kHz wash out into noise-like, jagged spectra. A discriminator that looks at the output's complex
STFT penalises exactly that, since a smeared spectrum is easy to tell from a real one.

Each sub-discriminator is a small 2-D conv net over (time, frequency) of the real and imaginary
parts of one STFT resolution, striding along frequency only and dilating along time. It returns
its logits and the activations of every layer: the generator is trained to fool the logits
(hinge loss) and to match the activations of real speech (feature matching).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class STFTDiscriminator(nn.Module):
    """One resolution: complex STFT (`window` samples, hop `window // 4`) -> 2-D convs."""

    def __init__(self, window: int, channels: int) -> None:
        super().__init__()
        self.window = window
        self.register_buffer("win", torch.hann_window(window), persistent=False)
        c = channels
        self.convs = nn.ModuleList(weight_norm(conv) for conv in (
            nn.Conv2d(2, c, (3, 9), padding=(1, 4)),
            nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(2, 1), padding=(2, 4)),
            nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(4, 1), padding=(4, 4)),
            nn.Conv2d(c, c, (3, 3), padding=(1, 1)),
        ))
        self.out = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(x, self.window, self.window // 4, window=self.win, return_complex=True)
        h = torch.view_as_real(spec).permute(0, 3, 2, 1)  # [B, 2, frames, bins]
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        return self.out(h), feats


class MultiSTFTDiscriminator(nn.Module):
    """Sub-discriminators at several STFT resolutions; ``x [B, T]`` -> one (logits, features)
    pair per resolution."""

    def __init__(self, windows: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.discs = nn.ModuleList(STFTDiscriminator(w, channels) for w in windows)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(x) for d in self.discs]


def discriminator_loss(real: list, fake: list) -> torch.Tensor:
    """Hinge loss: real logits pushed above +1, generated ones below -1."""
    total = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean()
                for (r, _), (f, _) in zip(real, fake))
    return total / len(real)


def generator_loss(fake: list) -> torch.Tensor:
    """Hinge loss for the generator: its logits pushed above +1."""
    return sum(F.relu(1 - f).mean() for f, _ in fake) / len(fake)


def feature_matching_loss(real: list, fake: list) -> torch.Tensor:
    """L1 between the discriminator activations for real and generated audio, each layer
    relative to the mean magnitude of the real activations (so every layer counts alike)."""
    total, n = 0.0, 0
    for (_, rf), (_, ff) in zip(real, fake):
        for r, f in zip(rf, ff):
            r = r.detach()
            total = total + (f - r).abs().mean() / r.abs().mean().clamp(min=1e-5)
            n += 1
    return total / n
