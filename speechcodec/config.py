"""Frozen configuration dataclasses.

A `CodecConfig` is saved inside every checkpoint and shipped model, so a model file always rebuilds
the exact architecture it was trained with. Everything else (frame rate, bits per code, bitrate,
latency) is derived from it in one place rather than restated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CodecConfig:
    """Architecture of the codec.

    Encoder: a learned analysis conv (`analysis_window` samples, hop `frame_size`), then
    `encoder_blocks` causal ConvNeXt-1D blocks of `encoder_width` channels at frame rate, then a
    projection to `latent_dim`. Quantizer: residual VQ with `num_codebooks` codebooks of
    `codebook_size` entries, each matched in its own `codebook_dim`-d projection. Decoder:
    `decoder_blocks_low` blocks at frame rate, a 2x upsampling, `decoder_blocks_high` blocks at
    twice the frame rate, and an inverse-STFT head (`n_fft`,
    hop `frame_size // 2`). The decoder is trained to reproduce the input delayed by
    `output_delay` samples; that delay is the model's lookahead and counts in its latency.
    """

    sample_rate: int = 16000
    frame_size: int = 320
    analysis_window: int = 640
    encoder_width: int = 192
    encoder_blocks: int = 5
    decoder_width: int = 192
    decoder_blocks_low: int = 3
    decoder_blocks_high: int = 4
    kernel_size: int = 7
    ffn_ratio: int = 3
    latent_dim: int = 64
    num_codebooks: int = 12
    codebook_size: int = 1024
    # Each residual stage matches codewords in its own learned `codebook_dim`-d projection.
    codebook_dim: int = 8
    n_fft: int = 480
    output_delay: int = 320
    # The head accumulates a predicted per-bin phase advance across frames (see ISTFTHead).
    phase_advance: bool = False
    # An explicit pitch path in the decoder (see layers.HarmonicSource).
    harmonic: bool = False
    # Strength of the decoder's formant postfilter (`layers.FormantPostfilter`), applied outside
    # training only; 0 turns it off. It changes no weights: `speechcodec export --postfilter`
    # sets it in a release.
    postfilter: float = 0.0

    def __post_init__(self) -> None:
        if self.frame_size % 2:
            raise ValueError("frame_size must be even (the decoder upsamples 2x)")
        if self.analysis_window < self.frame_size or self.analysis_window % self.frame_size:
            raise ValueError("analysis_window must be a multiple of frame_size")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError("codebook_size must be a power of two")
        if self.codebook_dim < 1:
            raise ValueError("codebook_dim must be >= 1")
        if self.n_fft % 2 or self.n_fft < self.hop:
            raise ValueError("n_fft must be even and at least the hop")
        if not self.output_delay >= 0:
            raise ValueError("output_delay must be >= 0")

    @property
    def hop(self) -> int:
        """Inverse-STFT hop in samples (the decoder runs at twice the frame rate)."""
        return self.frame_size // 2

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.sample_rate / self.frame_size

    @property
    def bits_per_code(self) -> int:
        return int(math.log2(self.codebook_size))

    def kbps(self, num_codebooks: int) -> float:
        """Nominal payload bitrate in kbit/s when `num_codebooks` codebooks are sent."""
        return num_codebooks * self.bits_per_code * self.frame_rate / 1000.0

    def codebooks_for_kbps(self, kbps: float) -> int:
        """The number of codebooks whose nominal bitrate is `kbps` (must match exactly)."""
        per_codebook = self.kbps(1)
        k = round(kbps / per_codebook)
        exact = math.isclose(k * per_codebook, kbps, rel_tol=1e-6)
        if k < 1 or k > self.num_codebooks or not exact:
            rates = ", ".join(f"{self.kbps(n):g}" for n in range(1, self.num_codebooks + 1))
            raise ValueError(f"unsupported bitrate {kbps:g} kbps; this model offers {rates}")
        return k

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CodecConfig:
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; saved in checkpoints next to the CodecConfig."""

    steps: int = 20000
    batch_size: int = 16
    segment_seconds: float = 1.0
    lr: float = 5e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    # Parameters under these module names (for example `decoder.low.7`) learn at `fast_lr_mult`
    # times `lr`: blocks grown in late start at zero and, at the shared rate, stayed 5-20x
    # smaller than the blocks trained from the start.
    fast_params: tuple[str, ...] = ()
    fast_lr_mult: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    # Quantizer dropout: each training example uses one of these codebook counts (half of them
    # all 12, as DAC trains, so the finer stages get as much use as the coarse ones).
    codebook_choices: tuple[int, ...] = (3, 6, 12, 12)
    # Fraction of examples whose latents skip quantization (as Mimi trains): keeps every latent
    # dimension useful to the decoder, so the encoder does not collapse onto a few of them.
    bypass_prob: float = 0.0
    ema_decay: float = 0.99
    # EMA count below which a codeword is restarted. The EMA count is the mean number of
    # vectors a codeword wins per step (about batch * frames / codebook_size = 0.8 here), so
    # the threshold must sit well below that or live codewords are thrown away every step.
    dead_code_threshold: float = 0.03
    # Loss weights (kept here, never hidden in the loss function).
    mel_log_weight: float = 1.0
    mel_linear_weight: float = 0.25
    commit_weight: float = 0.25
    latent_weight: float = 1.0
    # L1 between log10 RMS levels of 20 ms frames: the log-mel loss weighs every mel band alike,
    # so it barely notices the few low bands that carry most of the energy, and the output came
    # out 3-7 dB quiet.
    level_weight: float = 1.0
    mel_windows: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    # Log-magnitude L1 on linear-frequency STFTs: above about 1.5 kHz mel bands are wider than
    # the spacing of voice harmonics, so a mel loss alone lets the decoder smear them.
    stft_weight: float = 1.0
    stft_windows: tuple[int, ...] = (512, 1024, 2048)
    # Weight of the decoded f0's error (octaves, voiced frames) against a pitch tracker's, for
    # a model with the harmonic path (`CodecConfig.harmonic`).
    pitch_weight: float = 1.0
    # A new harmonic path's gate is held at zero (the path changes nothing) for the first
    # `harmonic_warmup` steps, while its f0 projection learns from the tracker, then set to
    # `harmonic_gate` for all bins: mixing in pulse trains of a still random f0 would only
    # teach the voicing to stay shut.
    harmonic_warmup: int = 500
    harmonic_gate: float = 1.0
    # `LoudnessLoss` (a PESQ-shaped disturbance between loudness spectra; off at 0) and the
    # weight of its added-energy term. Its gradients are about 100x those of the L1 terms, so
    # 0.005 gives it about the pull of one of them (the model card gives each release's weight).
    loudness_weight: float = 0.0
    loudness_asym: float = 1.0
    # `IntelligibilityLoss` (one minus a STOI-shaped correlation of band envelopes; off at 0).
    intelligibility_weight: float = 0.0
    # Weight and STFT window of `PhaseLoss` (instantaneous-frequency and group-delay error).
    phase_weight: float = 0.0
    phase_window: int = 512
    # Adversarial training (off at 0): weights of the hinge and feature-matching terms from a
    # multi-resolution STFT discriminator (`speechcodec.discriminator`), which sees `disc_batch`
    # crops of `disc_seconds` per step, and learns alone for its first `disc_warmup` steps.
    adv_weight: float = 0.0
    feat_weight: float = 0.0
    disc_windows: tuple[int, ...] = (256, 512, 1024)
    disc_channels: int = 16
    disc_lr: float = 2e-4
    disc_batch: int = 8
    disc_seconds: float = 0.5
    disc_warmup: int = 0
    # Augmentation: random gain in dB applied to each training segment (then capped so the
    # peak stays below full scale): quiet to loud input.
    gain_db_range: tuple[float, float] = (-20.0, 20.0)
    # Fraction of segments band-limited to a telephone band (cut-off drawn from 3.4-4 kHz), and
    # fraction given a random peaking EQ of up to +-`eq_db` dB: the codec must keep 8 kHz-band
    # audio upsampled to 16 kHz, and other microphones, as they are.
    bandlimit_prob: float = 0.1
    eq_prob: float = 0.3
    eq_db: float = 6.0
    log_every: int = 50
    valid_every: int = 2000
    valid_files: int = 12
    checkpoint_every: int = 500
    threads: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        for k in ("betas", "codebook_choices", "mel_windows", "stft_windows", "gain_db_range",
                  "disc_windows", "fast_params"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
