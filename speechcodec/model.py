"""The codec: causal encoder, residual VQ, decoder, and their streaming forms.

Shapes: waveforms `[B, T]` (T a multiple of `frame_size` inside the model), latents `[B, D, F]`,
codes `[B, K, F]` with F = T / frame_size frames and K codebooks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import CodecConfig
from .layers import (
    CausalConv1d,
    ConvNeXtBlock,
    FormantPostfilter,
    HarmonicSource,
    ISTFTHead,
    layer_scale_for,
    soft_limit,
)
from .quantizer import QuantizedResult, ResidualVQ


class Encoder(nn.Module):
    """`[B, T]` waveform -> `[B, D, T // frame_size]` continuous latents."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = cfg.encoder_width
        self.analysis = CausalConv1d(1, w, cfg.analysis_window, stride=cfg.frame_size)
        scale = layer_scale_for(cfg.encoder_blocks)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(w, cfg.kernel_size, cfg.ffn_ratio, scale)
            for _ in range(cfg.encoder_blocks))
        self.norm = nn.LayerNorm(w)
        self.proj = nn.Conv1d(w, cfg.latent_dim, 1)

    def forward(self, wav: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = self.analysis(wav[:, None], cache)
        for block in self.blocks:
            x = block(x, cache)
        return self.proj(self.norm(x.transpose(1, 2)).transpose(1, 2))


class Decoder(nn.Module):
    """`[B, D, F]` latents -> `[B, F * frame_size]` waveform, delayed by `output_delay`."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = cfg.decoder_width
        self.proj = nn.Conv1d(cfg.latent_dim, w, 1)
        n_blocks = cfg.decoder_blocks_low + cfg.decoder_blocks_high
        scale = layer_scale_for(n_blocks)
        self.low = nn.ModuleList(
            ConvNeXtBlock(w, cfg.kernel_size, cfg.ffn_ratio, scale)
            for _ in range(cfg.decoder_blocks_low))
        # Kernel == stride: each frame becomes two half-frames, no overlap, so no state.
        self.upsample = nn.ConvTranspose1d(w, w, 2, stride=2)
        self.high = nn.ModuleList(
            ConvNeXtBlock(w, cfg.kernel_size, cfg.ffn_ratio, scale)
            for _ in range(cfg.decoder_blocks_high))
        self.norm = nn.LayerNorm(w)
        self.head = ISTFTHead(w, cfg.n_fft, cfg.hop, cfg.phase_advance)
        self.harmonic = (HarmonicSource(w, cfg.n_fft, cfg.hop, cfg.sample_rate)
                         if cfg.harmonic else None)
        self.postfilter = FormantPostfilter(cfg.postfilter)

    def forward(self, z: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return self.synthesize(z, cache)[0]

    def synthesize(self, z: torch.Tensor, cache: dict | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like `forward`, also returning the decoded f0 `[B, 2 * F]` (None without the
        harmonic path)."""
        x = self.proj(z)
        for block in self.low:
            x = block(x, cache)
        x = self.upsample(x)
        for block in self.high:
            x = block(x, cache)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        spec = self.head.spectrum(x, cache)
        f0 = None
        if self.harmonic is not None:
            spec, f0 = self.harmonic.mix(x, spec, cache)
        if not self.training:  # trained without it: the losses would only learn to undo it
            spec = self.postfilter(spec, cache)
        wav = self.head.synthesize(spec, cache)
        # A loud input can decode a few peaks past full scale, which 16-bit PCM would clip.
        return (wav if self.training else soft_limit(wav)), f0


@dataclass(frozen=True)
class Latency:
    """Algorithmic latency, derived from the architecture (in samples at the codec rate)."""

    frame: int  # the encoder needs a whole frame before it can emit its code
    lookahead: int  # the decoder reproduces the input this many samples late
    sample_rate: int

    @property
    def samples(self) -> int:
        return self.frame + self.lookahead

    @property
    def ms(self) -> float:
        return 1000.0 * self.samples / self.sample_rate


class Codec(nn.Module):
    """Encoder + residual VQ + decoder.

    `encode` and `decode` work on whole signals; `stream_encoder()` / `stream_decoder()` give
    objects that take any number of frames at a time and return exactly the same values.
    """

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVQ(cfg.latent_dim, cfg.num_codebooks, cfg.codebook_size,
                                     cfg.codebook_dim)
        self.decoder = Decoder(cfg)
        self.model_id = "untrained"
        self.weights_hash = "0" * 16

    # -- derived properties -------------------------------------------------------------------
    @property
    def latency(self) -> Latency:
        """Latency from the architecture: the encoder's last input sample for code frame t is
        `(t + 1) * frame_size - 1` (its analysis conv ends there); the decoder's output for
        frame t is complete once frame t is decoded (the head emits only samples that no later
        window overlaps) and reproduces input `output_delay` samples earlier. So the first sample
        of a frame reaches the output `frame_size + output_delay` samples after it arrived."""
        a = self.encoder.analysis
        frame = a.stride[0]
        head = self.decoder.head
        # Frames 2t and 2t+1 of the head end the block at (t + 1) * frame_size: no extra wait.
        assert 2 * head.hop == frame
        return Latency(frame, self.cfg.output_delay, self.cfg.sample_rate)

    # -- whole-signal API ---------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, num_codebooks: torch.Tensor | int | None = None,
                bypass: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, QuantizedResult, torch.Tensor | None]:
        """Training pass: `wav [B, T]` -> (reconstruction `[B, T]` delayed, quantizer result,
        decoded f0 `[B, 2 * F]` or None).

        `bypass [B]` (bool) sends those examples' continuous latents to the decoder unquantized.
        Without it, latent directions the codebooks do not yet resolve reach the decoder only as
        quantization noise, so the decoder never learns to use them and the encoder stops
        filling them (we saw the latent collapse to 6 of 64 dimensions).
        """
        z = self.encoder(wav)
        q = self.quantizer(z, num_codebooks)
        zq = q.quantized
        if bypass is not None:
            zq = torch.where(bypass[:, None, None], z, zq)
        recon, f0 = self.decoder.synthesize(zq)
        return recon, q, f0

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """`wav [B, T]` (T a multiple of frame_size) -> codes `[B, K, T // frame_size]`."""
        return self.quantizer(self.encoder(wav), num_codebooks).codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`codes [B, K, F]` -> waveform `[B, F * frame_size]`, `output_delay` samples late."""
        return self.decoder(self.quantizer.decode(codes))

    @torch.no_grad()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """`wav [B, T]` -> continuous latents `[B, D, F]` (before quantization)."""
        return self.encoder(wav)

    # -- streaming ----------------------------------------------------------------------------
    def stream_encoder(self, num_codebooks: int) -> StreamEncoder:
        return StreamEncoder(self, num_codebooks)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def set_postfilter(self, strength: float) -> None:
        """Change the formant postfilter's strength (0: off; see `layers.FormantPostfilter`)."""
        if not 0 <= strength <= 2:
            raise ValueError(f"postfilter strength must be between 0 and 2, got {strength:g}")
        self.cfg = dataclasses.replace(self.cfg, postfilter=strength)
        self.decoder.postfilter.strength = strength

    # -- persistence --------------------------------------------------------------------------
    def export_state(self) -> dict:
        """Inference weights only (no EMA statistics, no optimizer), as float16."""
        sd = {}
        for k, v in self.state_dict().items():
            if k.endswith(("ema_count", "ema_sum", "initialised")):
                continue
            sd[k] = v.half() if v.is_floating_point() else v
        return sd

    def save_release(self, path: str | Path, model_id: str, card: dict | None = None,
                     int8: bool = True) -> str:
        """Write a small release file; returns its SHA-256 (hex). With `int8`, the encoder's
        and decoder's weight matrices are stored in 8 bits (see `quantize_rows`), which halves
        the file; everything else, the codebooks included, in float16."""
        state, packed = self.export_state(), {}
        if int8:
            for k in [k for k in state if _stored_in_8_bits(k, state[k])]:
                packed[k] = dict(zip(("q", "scale"), quantize_rows(state.pop(k).float())))
        buf = io.BytesIO()
        torch.save({"model_id": model_id, "config": self.cfg.to_dict(), "state_dict": state,
                    **({"int8": packed} if packed else {}), "card": card or {}}, buf)
        data = buf.getvalue()
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def from_release_bytes(cls, data: bytes) -> Codec:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = cls(CodecConfig.from_dict(blob["config"]))
        missing, unexpected = model.load_state_dict(release_state(blob), strict=False)
        # Only the training-only EMA buffers may be absent; anything else is an error.
        missing = [k for k in missing if not k.endswith(("ema_count", "ema_sum", "initialised"))]
        if missing or unexpected:
            raise ValueError(f"model file does not match its architecture: missing {missing}, "
                             f"unexpected {unexpected}")
        for layer in model.quantizer.layers:
            layer.initialised.fill_(True)
        model.model_id = blob["model_id"]
        model.weights_hash = hashlib.sha256(data).hexdigest()[:16]
        return model.eval()


def _stored_in_8_bits(name: str, t: torch.Tensor) -> bool:
    """Encoder and decoder weight matrices and kernels; not biases, norms, layer scales or the
    quantizer (its codebooks decide which code is sent, and are small)."""
    return (t.is_floating_point() and t.dim() >= 2 and t.numel() >= 4096
            and name.startswith(("encoder.", "decoder.")))


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`w [R, ...]` -> (int8 `q`, float16 `scale [R]`), symmetric per output row (per output
    channel): `w ~ q * scale`, the row's largest magnitude mapped to 127. The error is at most
    half a step, 1/254 of the row's largest weight."""
    peak = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = (peak / 127).clamp(min=1e-12).half()
    step = scale.float().reshape(-1, *[1] * (w.dim() - 1))
    return torch.round(w / step).clamp(-127, 127).to(torch.int8), scale


def release_state(blob: dict) -> dict:
    """A loaded release file -> its state dict in float32 (8-bit matrices expanded)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    for k, entry in blob.get("int8", {}).items():
        q, scale = entry["q"], entry["scale"]
        if q.dtype != torch.int8 or scale.shape != q.shape[:1]:
            raise ValueError(f"{k}: a malformed 8-bit tensor")
        state[k] = q.float() * scale.float().reshape(-1, *[1] * (q.dim() - 1))
    return state


class StreamEncoder:
    """Frame-in, codes-out encoder. `push(wav [B, n * frame_size]) -> codes [B, K, n]`."""

    def __init__(self, codec: Codec, num_codebooks: int) -> None:
        self.codec = codec
        self.num_codebooks = num_codebooks
        self.cache: dict = {}

    @torch.no_grad()
    def push(self, wav: torch.Tensor) -> torch.Tensor:
        z = self.codec.encoder(wav, self.cache)
        return self.codec.quantizer(z, self.num_codebooks).codes


class StreamDecoder:
    """Codes-in, frame-out decoder. `push(codes [B, K, n]) -> wav [B, n * frame_size]`.

    Also accepts latents directly (`push_latents`), which is how concealment feeds predicted
    frames through the same state.
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.cache: dict = {}

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        return self.push_latents(self.codec.quantizer.decode(codes))

    @torch.no_grad()
    def push_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.codec.decoder(z, self.cache)
