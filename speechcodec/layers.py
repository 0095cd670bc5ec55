"""Causal building blocks that run either on a whole signal or chunk by chunk.

Every layer with memory takes an optional `cache` dict. With `cache=None` the layer sees the whole
signal and pads its past with zeros. With a dict, the layer keeps what it needs of the past under
its own key, so the same layer can be fed one chunk after another and produce exactly the output
it would give on the concatenated signal. Separate dicts are separate streams, so one model can
serve several streams at once (a sender and a receiver in one process, for instance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Conv1d):
    """Conv1d whose output frame t depends only on input up to the end of hop t.

    Input `[B, C_in, T]` with T a multiple of `stride`; output `[B, C_out, T // stride]`. The
    receptive field of output t is input samples `[t*stride + stride - kernel, t*stride + stride)`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        if kernel_size < stride:
            raise ValueError("kernel_size must be >= stride")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups,
                         bias=bias)
        self.context = kernel_size - stride

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if x.shape[-1] % self.stride[0]:
            raise ValueError(f"input length {x.shape[-1]} is not a multiple of {self.stride[0]}")
        if self.context:
            if cache is None:
                x = F.pad(x, (self.context, 0))
            else:
                past = cache.get(self)
                if past is None:
                    past = x.new_zeros(x.shape[0], x.shape[1], self.context)
                x = torch.cat([past, x], dim=-1)
                cache[self] = x[..., x.shape[-1] - self.context:]
        return super().forward(x)


class ConvNeXtBlock(nn.Module):
    """Causal ConvNeXt-1D block: depthwise causal conv, LayerNorm, pointwise MLP, residual.

    `[B, C, F] -> [B, C, F]`.
    """

    def __init__(self, dim: int, kernel_size: int, ffn_ratio: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, dim * ffn_ratio)
        self.pw2 = nn.Linear(dim * ffn_ratio, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        y = self.dwconv(x, cache).transpose(1, 2)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class ISTFTHead(nn.Module):
    """Predicts a complex spectrum per frame and overlap-adds its inverse FFT.

    `[B, C, J] -> [B, J * hop]` samples. Frame j is placed at samples `[j*hop, j*hop + n_fft)`;
    after frame j, samples before `(j + 1) * hop` are complete and are emitted, the rest of the
    window is held (as `cache` state, or dropped at the end of a whole signal).

    With `advance`, the phase of bin k in frame j is `acc[k, j] + offset[k, j]`, where
    `acc[k, j] = acc[k, j - 1] + advance[k, j]` runs across frames (streaming state) like a
    phase vocoder's: a harmonic keeps a coherent phase by predicting how far it turns per hop
    (its frequency), a local quantity, instead of its absolute phase, which depends on the
    whole past. Without it, each frame's phase is predicted on its own.
    """

    def __init__(self, dim: int, n_fft: int, hop: int, advance: bool = False) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        self.bins = n_fft // 2 + 1
        self.advance = advance
        self.proj = nn.Conv1d(dim, (3 if advance else 2) * self.bins, 1)
        window = torch.hann_window(n_fft, periodic=True)
        # Sum of the squared window over all overlapping frames: a constant for these hops.
        envelope = (window**2).sum() / hop
        self.register_buffer("window", window / envelope, persistent=False)

    def spectrum(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """`[B, C, J]` features -> complex spectra `[B, bins, J]`."""
        parts = self.proj(x).float()
        log_mag, phase = parts[:, : self.bins], parts[:, self.bins: 2 * self.bins]
        if self.advance:
            # Wrap each step to [-pi, pi) and accumulate in float64, so the accumulated phase
            # stays exact over hours of streaming (it is wrapped again after every call).
            step = parts[:, 2 * self.bins:].double()
            step = step - 2 * math.pi * torch.round(step / (2 * math.pi))
            start = cache.get((self, "phase")) if cache is not None else None
            acc = torch.cumsum(step, dim=2)
            if self.training:
                # Each step learns only from its own frame (the accumulated past is taken as
                # given): through the whole sum, the gradients of all later frames piled onto
                # every step, the gradient norm tripled and clipping starved the rest of
                # the model.
                acc = acc.detach() - step.detach() + step
            if start is not None:
                acc = acc + start[:, :, None]
            if cache is not None:
                cache[(self, "phase")] = torch.remainder(acc[:, :, -1], 2 * math.pi)
            phase = phase + torch.remainder(acc, 2 * math.pi).float()
        mag = torch.exp(log_mag.clamp(max=8.0))
        return torch.polar(mag, phase)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return self.synthesize(self.spectrum(x, cache), cache)

    def synthesize(self, spec: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """Complex spectra `[B, bins, J]` -> `[B, J * hop]` samples (windowed overlap-add)."""
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[:, None]
        num_frames = frames.shape[-1]
        length = (num_frames - 1) * self.hop + self.n_fft
        ola = F.fold(frames, output_size=(1, length), kernel_size=(1, self.n_fft),
                     stride=(1, self.hop))[:, 0, 0]  # [B, length]
        tail_len = self.n_fft - self.hop
        if cache is not None:
            tail = cache.get(self)
            if tail is not None:
                ola = torch.cat([ola[:, :tail_len] + tail, ola[:, tail_len:]], dim=1)
            cache[self] = ola[:, num_frames * self.hop:]
        return ola[:, : num_frames * self.hop]


class HarmonicSource(nn.Module):
    """An explicit pitch path: a decoded f0 drives a band-limited pulse train, and a decoded
    per-bin voicing mixes its spectrum into the head's.

    `mix(x, spec)`: features `[B, C, J]` and the head's spectra `[B, bins, J]` -> (mixed spectra,
    f0 `[B, J]` in Hz). Per bin, with voicing v in [0, 1] and A the head's magnitude:
    `(1 - v) * spec + v * c * A * P`, where P is the pulse train's spectrum scaled to unit RMS
    over the bins and c a learned per-bin level. So a voiced bin keeps the head's envelope but
    takes its fine structure (harmonic peaks and troughs) and its phase from the pulse train.
    Mixing rather than adding matters: a pulse train added to a noisy spectrum at random phase
    changes its magnitude only to second order, so the gradient never finds it; turning v up
    carves the troughs at once.

    Frame j of the pulse train holds the f0 of frame j for its whole `n_fft` window and starts at
    the phase where frame j - 1's would be one hop later; that running phase is streaming state,
    so a voiced harmonic stays coherent across frames by construction, which a per-frame phase
    prediction under magnitude losses does not learn (it draws noise above about 1 kHz instead).
    f0 is learned from a pitch tracker's targets (`pitch.track_pitch`), not through the
    oscillator, whose gradient with respect to frequency is useless. v is `gate` (per bin) times
    a sigmoid of the features; with `gate` at zero the path changes nothing, so a model without
    it can be grown into one with it and first sounds exactly the same.
    """

    def __init__(self, dim: int, n_fft: int, hop: int, sample_rate: int,
                 f0_range: tuple[float, float] = (50.0, 600.0)) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        self.sample_rate = sample_rate
        self.f0_min, self.f0_max = f0_range
        bins = n_fft // 2 + 1
        self.pitch = nn.Conv1d(dim, 1, 1)
        self.voicing = nn.Conv1d(dim, bins, 1)
        nn.init.constant_(self.voicing.bias, -2.0)  # v about 0.12 once the gate opens
        self.level = nn.Parameter(torch.zeros(bins))  # log c
        self.gate = nn.Parameter(torch.zeros(bins))
        # The analysis window that `ISTFTHead.synthesize` inverts: unscaled, the spectra are
        # those of the pulse train itself.
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True),
                             persistent=False)

    def f0(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, J]` -> f0 `[B, J]` in Hz, log-uniform over `f0_range`."""
        u = torch.sigmoid(self.pitch(x)[:, 0].float())
        return self.f0_min * (self.f0_max / self.f0_min) ** u

    def excitation(self, f0: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """f0 `[B, J]` -> spectra `[B, bins, J]` of windowed unit-amplitude pulse-train frames."""
        f = f0.detach().double()
        step = 2 * math.pi * f * self.hop / self.sample_rate
        start = cache.get(self) if cache is not None else None
        if start is None:
            start = f.new_zeros(f.shape[0])
        acc = torch.cumsum(step, dim=1)
        phase = start[:, None] + acc - step  # phase at each frame's first sample
        if cache is not None:
            cache[self] = torch.remainder(start + acc[:, -1], 2 * math.pi)
        m = torch.arange(self.n_fft, dtype=torch.float64)
        theta = phase[..., None] + (2 * math.pi / self.sample_rate) * f[..., None] * m
        theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
        # sum_{h=1..H} cos(h theta) in closed form, H the harmonics below 0.95 x Nyquist (in
        # float64: near theta = 0 the sum is steep, and float32 phases would make a stream
        # decoded in pieces differ from one decoded whole).
        harmonics = torch.floor(0.475 * self.sample_rate / f)[..., None]
        half = torch.sin(theta / 2)
        small = half.abs() < 1e-6
        pulses = torch.where(small, harmonics,
                             torch.sin((harmonics + 0.5) * theta)
                             / (2 * torch.where(small, torch.ones_like(half), half)) - 0.5)
        return torch.fft.rfft(pulses.float() * self.window, dim=-1).transpose(1, 2)

    def mix(self, x: torch.Tensor, spec: torch.Tensor, cache: dict | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.f0(x)
        pulses = self.excitation(f0, cache)
        pulses = pulses / pulses.abs().pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-6)
        v = self.gate[:, None] * torch.sigmoid(self.voicing(x).float())
        voiced = spec.abs() * torch.exp(self.level)[:, None] * pulses
        return spec + v * (voiced - spec), f0


class FormantPostfilter(nn.Module):
    """A formant postfilter on the head's complex spectra `[B, bins, J]` -> the same shape.

    A decoder trained on L1 spectral losses predicts a smoothed spectral envelope: formant peaks
    too low and the valleys between them too full, as in the output of classical CELP decoders,
    which carry a postfilter for it. Each frame's log-magnitude gains `strength` times its formant
    structure: the part of its cepstrum between `quefrency` samples (0.5-1.9 ms at 16 kHz: above
    the spectral tilt, below the shortest pitch period, so tilt and harmonics stay as they are).
    Phases are kept.

    Sharpening raises a peaky (voiced) frame's energy more than a flat one's. An automatic gain
    control takes the overall level back: the output is scaled by the square root of the ratio of
    the frame energies' running means before and after (one-pole averages, `smoothing` per frame,
    about 0.5 s), so the level of speech is kept while a voiced frame may stand out from the
    noise around it a little more than before. The running means are streaming state (`cache`).
    No parameters: it is set by `CodecConfig.postfilter` and changes no weights.
    """

    def __init__(self, strength: float = 0.0, quefrency: tuple[int, int] = (8, 30),
                 smoothing: float = 0.02) -> None:
        super().__init__()
        self.strength = strength
        self.quefrency = quefrency
        self.smoothing = smoothing

    def forward(self, spec: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if self.strength == 0:
            return spec
        mag = spec.abs().clamp(min=1e-7)
        n_fft = 2 * (spec.shape[1] - 1)
        cep = torch.fft.irfft(mag.log(), n=n_fft, dim=1)
        q = torch.arange(n_fft, device=spec.device)
        q = torch.minimum(q, n_fft - q)
        band = ((q >= self.quefrency[0]) & (q < self.quefrency[1])).to(cep.dtype)
        gain = torch.exp(self.strength * torch.fft.rfft(cep * band[:, None], dim=1).real)
        energy = torch.stack([mag.double().square().sum(dim=1),
                              (mag * gain).double().square().sum(dim=1)], dim=1)  # [B, 2, J]
        state = cache.get(self) if cache is not None else None
        means = running_mean(energy, self.smoothing, state)
        if cache is not None:
            cache[self] = means[..., -1]
        agc = (means[:, 0] / means[:, 1].clamp(min=1e-30)).sqrt().float()
        return spec * (gain * agc[:, None, :])


def running_mean(x: torch.Tensor, rate: float, state: torch.Tensor | None = None,
                 block: int = 256) -> torch.Tensor:
    """One-pole average along the last axis, `y[t] = (1 - rate) y[t - 1] + rate x[t]`, from
    `state` (`y[-1]`, zero if None), in float64. Blocks of `block` steps, each in closed form
    through a cumulative sum, so any split of `x` into calls gives the same values."""
    keep = 1.0 - rate
    y_prev = x.new_zeros(x.shape[:-1]) if state is None else state.to(x.dtype)
    out = []
    for i in range(0, x.shape[-1], block):
        chunk = x[..., i:i + block]
        decay = keep ** torch.arange(1, chunk.shape[-1] + 1, dtype=x.dtype, device=x.device)
        y = decay * (y_prev[..., None] + rate * torch.cumsum(chunk / decay, dim=-1))
        out.append(y)
        y_prev = y[..., -1]
    return torch.cat(out, dim=-1) if out else x.clone()


def soft_limit(x: torch.Tensor, knee: float = 0.9) -> torch.Tensor:
    """Keep a waveform inside full scale without a hard clip: samples within `knee` pass
    unchanged; above it, `knee + (1 - knee) tanh((|x| - knee) / (1 - knee))` bends them
    smoothly (same value and slope at the knee) towards, never past, 1. Sample by sample, so
    it costs no latency and streams exactly."""
    over = x.abs() - knee
    bent = knee + (1.0 - knee) * torch.tanh(over.clamp(min=0.0) / (1.0 - knee))
    return torch.where(over > 0, x.sign() * bent, x)


def layer_scale_for(num_blocks: int) -> float:
    return 1.0 / math.sqrt(max(num_blocks, 1))
