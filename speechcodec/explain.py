"""Make the autoencoder visible: what the bottleneck keeps, stage by stage, next to linear PCA.

`explain(codec, samples, pca)` measures one recording; `write_explain(ex, out_dir)` writes an
offline page (`index.html`, built with `report.make_listen_page`), its figures as PNGs and the
numbers as `summary.json`:

1. the bottleneck in numbers: 20 ms of 16-bit PCM (5,120 bits) against the latents and the
   30 / 60 / 120 bits of codes at 1.5 / 3 / 6 kbps;
2. the latents z = E(x) `[D, F]` and the codes `[K, F]` over time, per codebook;
3. codebook usage and entropy on this recording;
4. reconstructions x' = D(Q_k(z)) as codebooks are added one at a time: a player, a spectrogram
   and a spectral-error image each, and the error falling stage by stage;
5. the linear autoencoder (`speechcodec.pca`) at the same bitrates, with PESQ / STOI and players.

Also the detached encoder: `embed_samples` / `embed_file` give the continuous latents
`[frames, D]` (see `Embedding`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .metrics import PCM_BITS_PER_SECOND, log_mel_distance, pesq_wb, snr_db, stoi

__all__ = [
    "Embedding",
    "Explanation",
    "Stage",
    "embed_file",
    "embed_samples",
    "explain",
    "write_explain",
]

PCM_BITS = 16
EMBED_CHUNK_FRAMES = 1500
ERROR_DB_RANGE = 30.0  # the spectral-error images run from -30 dB (blue) to +30 dB (red)
_SPEC_N_FFT = 512  # as the listening page's spectrograms
_SPEC_HOP = 128


# --------------------------------------------------------------------------------------------
# The detached encoder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedding:
    """Continuous latents of a recording, straight from the encoder (before quantization).

    Attributes:
        latents: `[frames, D]` float32. Row t summarises the input up to sample
            `(t + 1) * frame_size` (the encoder is causal; its analysis window is
            `analysis_window` samples, 40 ms, ending there). Units: the encoder's own; the
            quantizer's codebooks live in the same space, and squared Euclidean distance in it
            is what the residual quantizer minimises.
        frame_rate: rows per second (50: one per 20 ms).
        frame_size: input samples per row at `sample_rate` (320).
        sample_rate: Hz of the samples that were encoded (16000).
        num_samples: input length at `sample_rate`; frames = ceil(num_samples / frame_size).
        model_id: the model that made them.
    """

    latents: np.ndarray
    frame_rate: float
    frame_size: int
    sample_rate: int
    num_samples: int
    model_id: str

    @property
    def num_frames(self) -> int:
        return int(self.latents.shape[0])

    @property
    def dim(self) -> int:
        return int(self.latents.shape[1])


def embed_samples(codec, samples: np.ndarray) -> np.ndarray:
    """`samples [N]` float at the codec rate -> latents `[ceil(N / frame_size), D]` float32.

    Runs the encoder in chunks with its streaming state, so memory stays bounded and the result
    equals one whole-signal `codec.embed` on the zero-padded input."""
    import torch

    fs = codec.cfg.frame_size
    frames = max(1, math.ceil(len(samples) / fs))
    padded = np.zeros(frames * fs, dtype=np.float32)
    padded[: len(samples)] = samples
    cache: dict = {}
    out = []
    step = EMBED_CHUNK_FRAMES * fs
    with torch.inference_mode():
        for start in range(0, len(padded), step):
            chunk = torch.from_numpy(padded[start:start + step])[None]
            out.append(codec.encoder(chunk, cache)[0].numpy())
    return np.ascontiguousarray(np.concatenate(out, axis=1).T, dtype=np.float32)


def embed_file(path: str | os.PathLike, codec=None) -> Embedding:
    """Read any audio file (mixed to mono, resampled to the codec rate) and embed it."""
    from .audio import load_audio

    if codec is None:
        from .pretrained import load_codec

        codec = load_codec()
    cfg = codec.cfg
    audio = load_audio(path, cfg.sample_rate)
    return Embedding(embed_samples(codec, audio.samples), cfg.frame_rate, cfg.frame_size,
                     cfg.sample_rate, audio.num_samples, codec.model_id)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """Reconstruction from the first `codebooks` codebooks (or a PCA codec at `kbps`)."""

    codec: str  # "neural" or "pca"
    codebooks: int  # 0 for PCA
    kbps: float
    bits_per_frame: int
    compression: float
    snr_db: float
    mel_distance: float
    pesq_wb: float
    stoi: float
    # ||z - Q_k(z)||^2 / ||z - mean_t(z)||^2: the quantization error as a share of what varies
    # in z over time (1 = no better than a constant latent); neural only
    latent_residual: float = math.nan
    samples: np.ndarray | None = field(default=None, repr=False)

    def metrics(self) -> dict:
        d = asdict(self)
        d.pop("samples")
        return d


@dataclass
class Explanation:
    """Everything `write_explain` shows, measured by `explain`."""

    name: str
    samples: np.ndarray  # the input [N] at the codec rate
    sample_rate: int
    latents: np.ndarray  # [D, F]
    codes: np.ndarray  # [K, F]
    stages: list[Stage]  # neural, 1..K codebooks
    pca_stages: list[Stage]  # PCA at each comparison bitrate
    kbps: list[float]  # the comparison bitrates
    bottleneck: list[dict]
    usage: list[dict]
    model: dict
    pca_info: dict
    notes: list[str] = field(default_factory=list)

    def stage_for(self, kbps: float) -> Stage | None:
        for s in self.stages:
            if math.isclose(s.kbps, kbps):
                return s
        return None

    def summary(self) -> dict:
        return {"name": self.name, "seconds": len(self.samples) / self.sample_rate,
                "model": self.model, "bottleneck": self.bottleneck,
                "stages": [s.metrics() for s in self.stages],
                "pca": {"info": self.pca_info, "stages": [s.metrics() for s in self.pca_stages]},
                "usage": self.usage, "notes": self.notes}


def _quality(ref: np.ndarray, est: np.ndarray, rate: int, perceptual: bool) -> dict:
    return {"snr_db": snr_db(ref, est), "mel_distance": log_mel_distance(ref, est, rate),
            "pesq_wb": pesq_wb(ref, est, rate) if perceptual else math.nan,
            "stoi": stoi(ref, est, rate) if perceptual else math.nan}


def _bottleneck_rows(cfg, kbps_list: list[float]) -> list[dict]:
    frame_bits = cfg.frame_size * PCM_BITS
    ms = 1000.0 * cfg.frame_size / cfg.sample_rate
    rows = [{"what": "16-bit PCM input x", "numbers": cfg.frame_size, "bits": frame_bits,
             "kbps": frame_bits * cfg.frame_rate / 1000, "ratio": 1.0},
            {"what": f"latents z = E(x), {cfg.latent_dim} float32", "numbers": cfg.latent_dim,
             "bits": 32 * cfg.latent_dim, "kbps": 32 * cfg.latent_dim * cfg.frame_rate / 1000,
             "ratio": frame_bits / (32 * cfg.latent_dim)}]
    for kbps in kbps_list:
        k = cfg.codebooks_for_kbps(kbps)
        bits = k * cfg.bits_per_code
        rows.append({"what": f"codes Q(z): {k} codebooks x {cfg.bits_per_code} bits",
                     "numbers": k, "bits": bits, "kbps": cfg.kbps(k), "ratio": frame_bits / bits})
    for r in rows:
        r["ms"] = ms
    return rows


def _usage_rows(codes: np.ndarray, codebook_size: int) -> list[dict]:
    from .entropy import entropy_bits

    k, f = codes.shape
    counts = np.stack([np.bincount(codes[j], minlength=codebook_size) for j in range(k)])
    h = entropy_bits(counts)
    cap = math.log2(max(1, min(codebook_size, f)))
    changes = (np.diff(codes, axis=1) != 0).mean(axis=1) if f > 1 else np.zeros(k)
    return [{"codebook": j + 1, "used": int((counts[j] > 0).sum()), "entropy": float(h[j]),
             "max_entropy": cap, "bits": math.log2(codebook_size),
             "top_share": float(counts[j].max() / f), "changes": float(changes[j])}
            for j in range(k)]


def explain(codec, samples: np.ndarray, pca=None, kbps: list[float] | tuple = (1.5, 3.0, 6.0),
            name: str = "input", perceptual: bool = True) -> Explanation:
    """Measure everything the explain page shows for one recording.

    Args:
        codec: the neural `Codec`.
        samples: float `[N]` at the codec rate.
        pca: a `PCACodec` (None: the shipped one; False: leave the comparison out).
        kbps: bitrates for the bottleneck table and the neural-vs-PCA comparison.
        name: shown on the page.
        perceptual: compute PESQ-WB and STOI (the slow metrics).
    """
    import torch

    from .pipeline import decode_codes, encode_samples, num_frames_for

    cfg = codec.cfg
    rate = cfg.sample_rate
    x = np.asarray(samples, dtype=np.float32)
    notes = []
    usable = []
    for r in kbps:
        try:
            cfg.codebooks_for_kbps(r)
            usable.append(float(r))
        except ValueError as e:
            notes.append(str(e))
    k_all = cfg.num_codebooks
    codes = encode_samples(codec, x, k_all)
    # the latents the codes quantize: the same padded input as encode_samples
    padded = np.zeros(num_frames_for(codec, len(x)) * cfg.frame_size, dtype=np.float32)
    padded[: len(x)] = x
    with torch.inference_mode():
        z = codec.embed(torch.from_numpy(padded)[None])
        z_energy = float((z - z.mean(dim=2, keepdim=True)).pow(2).sum())
        stages = []
        for k in range(1, k_all + 1):
            zq = codec.quantizer.decode(torch.from_numpy(codes[:k])[None])
            resid = float((z - zq).pow(2).sum()) / z_energy if z_energy > 0 else math.nan
            y = decode_codes(codec, codes[:k], len(x))
            bits = k * cfg.bits_per_code
            stages.append(Stage("neural", k, cfg.kbps(k), bits,
                                cfg.frame_size * PCM_BITS / bits,
                                **_quality(x, y, rate, perceptual), latent_residual=resid,
                                samples=y))
    pca_stages: list[Stage] = []
    pca_info: dict = {}
    if pca is not False:
        from .pca import load_pca

        pca = pca if pca is not None else load_pca()
        for r in usable:
            pc = pca.encode(x, r)
            y = pca.decode(pc)
            pca_stages.append(Stage("pca", 0, r, pc.bits_per_frame,
                                    cfg.frame_size * PCM_BITS / pc.bits_per_frame,
                                    **_quality(x, y, rate, perceptual), samples=y))
        pca_info = {"window": pca.window, "frame_length": pca.frame_length, "hop": pca.hop,
                    "num_components": pca.num_components, "fit": pca.info,
                    "allocations": {f"{r:g}": _alloc_info(pca, r) for r in usable}}
    model = {"model_id": codec.model_id, "weights_hash": codec.weights_hash,
             "latent_dim": cfg.latent_dim, "num_codebooks": k_all,
             "codebook_size": cfg.codebook_size, "frame_size": cfg.frame_size,
             "frame_rate": cfg.frame_rate, "latency_ms": codec.latency.ms}
    return Explanation(name, x, rate, z[0].numpy(), codes, stages, pca_stages, usable,
                       _bottleneck_rows(cfg, usable), _usage_rows(codes, cfg.codebook_size),
                       model, pca_info, notes)


def _alloc_info(pca, kbps: float) -> dict:
    alloc = pca.allocation(pca.bits_for_kbps(kbps))
    sent = np.flatnonzero(alloc)
    return {"bits_per_frame": int(alloc.sum()), "components_sent": len(sent),
            "highest_axis": int(sent.max()) + 1 if len(sent) else 0,
            "bits": [int(b) for b in alloc[: int(sent.max()) + 1]] if len(sent) else [],
            "energy_kept": float(pca.variances[sent].sum() / pca.total_variance),
            "peak_hz_max": _peak_hz(pca, sent)}


def _peak_hz(pca, axes: np.ndarray) -> float:
    """The highest of the axes' spectral peaks (Hz): how far up the band PCA reaches."""
    if len(axes) == 0:
        return 0.0
    spec = np.abs(np.fft.rfft(pca.components[axes], axis=1))
    freqs = np.fft.rfftfreq(pca.frame_length, 1.0 / pca.sample_rate)
    return float(freqs[spec.argmax(axis=1)].max())


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _figure(width_px: int, height_px: int):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / 100, height_px / 100), dpi=100)


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _stft_db(x: np.ndarray) -> np.ndarray:
    x = np.pad(np.asarray(x, dtype=np.float64), (_SPEC_N_FFT // 2, _SPEC_N_FFT // 2))
    x = np.pad(x, (0, max(0, _SPEC_N_FFT - len(x))))
    n = 1 + (len(x) - _SPEC_N_FFT) // _SPEC_HOP
    win = np.hanning(_SPEC_N_FFT + 1)[:-1]
    idx = np.arange(_SPEC_N_FFT)[None, :] + _SPEC_HOP * np.arange(n)[:, None]
    mag = np.abs(np.fft.rfft(x[idx] * win, axis=1)) * (2.0 / win.sum())
    return 20 * np.log10(np.maximum(mag, 1e-5)).T  # floor at -100 dB


def spectral_error_png(ref: np.ndarray, est: np.ndarray, sample_rate: int,
                       width_px: int = 400, height_px: int = 170) -> bytes:
    """The reconstruction's spectrogram minus the original's, in dB: red where it has too much
    energy, blue where too little, white where it matches (+-`ERROR_DB_RANGE`).

    Drawn straight to pixels (no axes, so it is cheap to make one per stage), inside the same
    plot area as `report.spectrogram_png`, so it lines up with the spectrogram above it: time
    left to right, 0 Hz at the bottom to Nyquist at the top."""
    import matplotlib

    diff = _stft_db(est) - _stft_db(ref)  # [freq, frames]
    # the listening page's spectrogram axes: (left 0.1, bottom 0.2, width 0.88, height 0.76)
    x0, x1 = round(0.1 * width_px), round(0.98 * width_px)
    y0, y1 = round(0.04 * height_px), round(0.8 * height_px)
    cols = np.minimum((np.arange(x1 - x0) + 0.5) * diff.shape[1] / (x1 - x0), diff.shape[1] - 1)
    rows = np.minimum((np.arange(y1 - y0) + 0.5) * diff.shape[0] / (y1 - y0), diff.shape[0] - 1)
    patch = diff[rows.astype(int)[::-1]][:, cols.astype(int)]
    rgba = matplotlib.colormaps["RdBu_r"]((patch + ERROR_DB_RANGE) / (2 * ERROR_DB_RANGE))
    canvas = np.ones((height_px, width_px, 4))
    canvas[y0:y1, x0:x1] = rgba
    canvas[y0 - 1:y1 + 1, [x0 - 1, x1]] = (0.3, 0.3, 0.3, 1)  # frame
    canvas[[y0 - 1, y1], x0 - 1:x1 + 1] = (0.3, 0.3, 0.3, 1)
    return _rgba_png(canvas)


def _rgba_png(rgba: np.ndarray) -> bytes:
    import io

    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, np.clip(rgba, 0, 1), format="png")
    return buf.getvalue()


def codes_png(ex: Explanation, width_px: int = 1100) -> bytes:
    """Waveform, latents `[D, F]` and codes `[K, F]` on one time axis."""
    fig = _figure(width_px, 560)
    rate = ex.sample_rate
    f = ex.codes.shape[1]
    frame_s = ex.model["frame_size"] / rate
    t_end = f * frame_s
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2, 1.6]})
    t = np.arange(len(ex.samples)) / rate
    axes[0].plot(t, ex.samples, lw=0.4, color="#264d8c")
    axes[0].set_ylabel("x", fontsize=8)
    axes[0].set_title("input x: 320 samples per 20 ms frame", fontsize=9, loc="left")
    lim = float(np.percentile(np.abs(ex.latents), 99)) or 1.0
    im = axes[1].imshow(ex.latents, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim,
                        vmax=lim, extent=(0, t_end, 0.5, ex.latents.shape[0] + 0.5),
                        interpolation="nearest")
    axes[1].set_ylabel("latent dim", fontsize=8)
    axes[1].set_title(f"latents z = E(x): {ex.latents.shape[0]} numbers per frame "
                      "(continuous, before quantization)", fontsize=9, loc="left")
    fig.colorbar(im, ax=axes[1], pad=0.01, fraction=0.02)
    im2 = axes[2].imshow(ex.codes, aspect="auto", origin="lower", cmap="viridis",
                         vmin=0, vmax=ex.model["codebook_size"] - 1,
                         extent=(0, t_end, 0.5, ex.codes.shape[0] + 0.5),
                         interpolation="nearest")
    axes[2].set_ylabel("codebook", fontsize=8)
    axes[2].set_xlabel("time (s)", fontsize=8)
    axes[2].set_title(f"codes Q(z): one index of {ex.model['codebook_size']} per codebook per "
                      "frame (colour = index, an arbitrary label)", fontsize=9, loc="left")
    fig.colorbar(im2, ax=axes[2], pad=0.01, fraction=0.02)
    for ax in axes:
        ax.tick_params(labelsize=7)
    axes[0].set_xlim(0, t_end)
    fig.subplots_adjust(left=0.06, right=0.95, top=0.95, bottom=0.08, hspace=0.35)
    return _png(fig)


def usage_png(ex: Explanation) -> bytes:
    fig = _figure(900, 260)
    ax1, ax2 = fig.subplots(1, 2)
    k = [u["codebook"] for u in ex.usage]
    ax1.bar(k, [u["entropy"] for u in ex.usage], color="#3b7dd8", label="entropy on this clip")
    ax1.axhline(ex.usage[0]["bits"], color="k", lw=1, ls="--", label="bits spent per code")
    ax1.axhline(ex.usage[0]["max_entropy"], color="#c0392b", lw=1, ls=":",
                label="log2(frames): most a clip this long can show")
    ax1.set_xlabel("codebook", fontsize=8)
    ax1.set_ylabel("bits per code", fontsize=8)
    ax1.set_ylim(0, 1.45 * ex.usage[0]["bits"])
    ax1.legend(fontsize=6.5, loc="upper left", ncol=2)
    ax1.set_xticks(k)
    ax2.bar(k, [u["used"] for u in ex.usage], color="#7aa95c")
    ax2.set_xlabel("codebook", fontsize=8)
    ax2.set_ylabel("distinct codes used", fontsize=8)
    ax2.set_xticks(k)
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.95, bottom=0.17, wspace=0.2)
    return _png(fig)


def stages_png(ex: Explanation) -> bytes:
    """Error against the number of codebooks: latent residual, mel distance, PESQ and STOI."""
    fig = _figure(900, 280)
    ax1, ax2 = fig.subplots(1, 2)
    k = [s.codebooks for s in ex.stages]
    ax1.plot(k, [100 * s.latent_residual for s in ex.stages], "o-", color="#7aa95c",
             label="latent error ||z - Q(z)||², % of z's variation")
    ax1.set_ylabel("latent error (%)", fontsize=8)
    ax1b = ax1.twinx()
    ax1b.plot(k, [s.mel_distance for s in ex.stages], "s-", color="#c0392b",
              label="log-mel distance")
    ax1b.set_ylabel("log-mel distance", fontsize=8)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    pesq = [s.pesq_wb for s in ex.stages]
    ax2.plot(k, pesq, "o-", color="#264d8c", label="PESQ-WB")
    ax2.set_ylabel("PESQ-WB", fontsize=8)
    ax2b = ax2.twinx()
    ax2b.plot(k, [s.stoi for s in ex.stages], "s-", color="#e67e22", label="STOI")
    ax2b.set_ylabel("STOI", fontsize=8)
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax2b.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    for ax in (ax1, ax2):
        ax.set_xlabel("codebooks (x 0.5 kbps)", fontsize=8)
        ax.set_xticks(k)
    for ax in (ax1, ax1b, ax2, ax2b):
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.07, right=0.93, top=0.95, bottom=0.16, wspace=0.4)
    return _png(fig)


def pca_png(pca, kbps: list[float]) -> bytes:
    """The linear autoencoder: its first basis vectors, the energy they keep, the bits."""
    fig = _figure(1100, 280)
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1, 1.2]})
    t = 1000 * np.arange(pca.frame_length) / pca.sample_rate
    for c in range(min(6, pca.num_components)):
        ax1.plot(t, pca.components[c] - 0.25 * c, lw=0.8, label=f"axis {c + 1}")
    ax1.set_xlabel("ms within the 40 ms window", fontsize=8)
    ax1.set_yticks([])
    ax1.set_title("first principal axes (the linear 'features')", fontsize=9)
    n = np.arange(1, pca.num_components + 1)
    kept = np.cumsum(pca.variances) / pca.total_variance
    ax2.semilogx(n, 100 * kept, color="#264d8c")
    for r, color in zip(kbps, ("#c0392b", "#e67e22", "#7aa95c", "#8e44ad")):
        alloc = pca.allocation(pca.bits_for_kbps(r))
        m = int(np.flatnonzero(alloc).max()) + 1 if alloc.any() else 1
        ax2.axvline(m, color=color, ls="--", lw=1,
                    label=f"{r:g} kbps: {int((alloc > 0).sum())} of axes 1-{m}")
    ax2.set_xlabel("axes kept", fontsize=8)
    ax2.set_ylabel("training energy kept (%)", fontsize=8)
    ax2.legend(fontsize=7, loc="lower right")
    ax2.set_title("energy in the first axes", fontsize=9)
    top = 1
    allocs = [pca.allocation(pca.bits_for_kbps(r)) for r in kbps]
    for alloc in allocs:
        top = max(top, int(np.flatnonzero(alloc).max()) + 1 if alloc.any() else 1)
    axis = np.arange(1, top + 1)
    for r, alloc in zip(kbps, allocs):
        ax3.step(axis, alloc[:top], where="mid", lw=1.3,
                 label=f"{r:g} kbps = {int(alloc.sum())} bits")
    ax3.set_ylim(0, None)
    ax3.set_xlabel("axis", fontsize=8)
    ax3.set_ylabel("bits per frame", fontsize=8)
    ax3.legend(fontsize=7)
    ax3.set_title("bit allocation per axis", fontsize=9)
    for ax in (ax1, ax2, ax3):
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.03, right=0.99, top=0.9, bottom=0.17, wspace=0.25)
    return _png(fig)


def rate_quality_png(ex: Explanation) -> bytes:
    fig = _figure(700, 250)
    ax1, ax2 = fig.subplots(1, 2)
    neural = [ex.stage_for(r) for r in ex.kbps]
    for ax, key, label in ((ax1, "pesq_wb", "PESQ-WB"), (ax2, "stoi", "STOI")):
        ax.plot(ex.kbps, [getattr(s, key) for s in neural], "o-", color="#264d8c",
                label="neural (nonlinear autoencoder)")
        ax.plot(ex.kbps, [getattr(s, key) for s in ex.pca_stages], "s--", color="#c0392b",
                label="PCA (linear autoencoder)")
        ax.set_xlabel("kbps", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks(ex.kbps)
        # a fixed floor (PESQ starts at 1, STOI near 0.4 is unintelligible), so small gaps
        # are not blown up to fill the plot
        vals = [v for s in (*neural, *ex.pca_stages) if math.isfinite(v := getattr(s, key))]
        lo, top = (1.0, 0.5) if key == "pesq_wb" else (0.4, 0.1)
        ax.set_ylim(min([lo, *vals]), max([lo, *vals]) + top)
        ax.tick_params(labelsize=7)
    ax1.legend(fontsize=7)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.95, bottom=0.18, wspace=0.3)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def _f(v: float, d: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{d}f}"


def _versus(n: Stage, p: Stage) -> str:
    return (f"at {p.kbps:g} kbps PESQ {_f(n.pesq_wb)} (neural) vs {_f(p.pesq_wb)} (PCA), "
            f"STOI {_f(n.stoi, 2)} vs {_f(p.stoi, 2)}")


def _stage_caption(s: Stage, prev: Stage | None) -> str:
    text = (f"PESQ {_f(s.pesq_wb)} · STOI {_f(s.stoi, 3)} · mel dist {_f(s.mel_distance, 3)} · "
            f"SNR {_f(s.snr_db, 1)} dB")
    if s.codec == "neural":
        text += f" · latent error {_f(100 * s.latent_residual, 1)}%"
    if prev is not None:
        text += (f". This stage adds: PESQ {s.pesq_wb - prev.pesq_wb:+.2f}, mel dist "
                 f"{s.mel_distance - prev.mel_distance:+.3f}, latent error "
                 f"{100 * (s.latent_residual - prev.latent_residual):+.1f} points")
    return text


FIGURES = ("codes", "usage", "stages", "pca", "rate_quality")


def figures(ex: Explanation, pca=None) -> dict[str, bytes]:
    """The page's figures as PNG bytes, by name (see `FIGURES`)."""
    out = {"codes": codes_png(ex), "usage": usage_png(ex), "stages": stages_png(ex)}
    if ex.pca_stages:
        from .pca import load_pca

        out["pca"] = pca_png(pca or load_pca(), ex.kbps)
        out["rate_quality"] = rate_quality_png(ex)
    return out


def page_sections(ex: Explanation, figs: dict[str, bytes]) -> list:
    from .report import Clip, Image, Section, Table

    cfg_m = ex.model
    rate = ex.sample_rate
    pcm_kbps = PCM_BITS_PER_SECOND / 1000
    sections = []

    # 1. the bottleneck in numbers
    b_rows = [dict(r, ratio=f"{r['ratio']:.0f}:1" if r["ratio"] >= 1.5 else
                   f"{r['ratio']:.1f}:1") for r in ex.bottleneck]
    codes_rows = ex.bottleneck[2:]
    text = (f"Every {1000 * cfg_m['frame_size'] / rate:.0f} ms the encoder turns "
            f"{cfg_m['frame_size']} samples (16 bits each: "
            f"{cfg_m['frame_size'] * PCM_BITS:,} bits) into {cfg_m['latent_dim']} continuous "
            f"numbers z = E(x); the residual quantizer replaces z by K codebook indices of "
            f"{int(math.log2(cfg_m['codebook_size']))} bits. ")
    if codes_rows:
        text += ("So a frame costs " + " / ".join(f"{r['bits']}" for r in codes_rows)
                 + " bits at " + " / ".join(f"{r['kbps']:g}" for r in codes_rows)
                 + " kbps: " + " / ".join(f"{r['ratio']:.0f}" for r in codes_rows)
                 + " times less than the PCM. The decoder must rebuild the speech from those "
                 "bits alone: x' = D(Q(E(x))).")
    sections.append(Section(
        "The bottleneck in numbers", text=text,
        tables=[Table([("what", "per 20 ms frame", -1), ("numbers", "numbers", 0),
                       ("bits", "bits", 0), ("kbps", "kbps", 1), ("ratio", "vs PCM", -1)],
                      b_rows)],
        clips=[Clip("Original", ex.samples, rate, kbps=pcm_kbps, compression=1.0,
                    caption=f"{ex.name}: {len(ex.samples) / rate:.2f} s")]))

    # 2. latents and codes over time
    change = float(np.mean([u["changes"] for u in ex.usage]))
    sections.append(Section(
        "Latents and codes over time",
        text="Top: the input. Middle: the encoder's output z, one column per 20 ms frame, one "
             "row per latent dimension. Bottom: what is actually sent, the index chosen in "
             "each codebook for each frame. Codebook 1 quantizes z, codebook 2 what codebook "
             "1 left over, and so on. Pauses show in the latents as quiet columns; the codes "
             f"change from one frame to the next {100 * change:.0f}% of the time on average "
             "(per codebook in the table below).",
        images=[Image("codes over time", figs["codes"],
                      "latents and codes per frame; codes are labels, so their colour order "
                      "means nothing, only changes do")]))

    # 3. usage and entropy
    usage_rows = [dict(u, changes=100 * u["changes"], top_share=100 * u["top_share"])
                  for u in ex.usage]
    sections.append(Section(
        "Codebook usage and entropy",
        text=f"How many of the {cfg_m['codebook_size']} entries each codebook uses on this "
             "recording, and the entropy of its codes (bits an entropy coder would need per "
             "code if this clip's frequencies were known). A short clip has only "
             f"{ex.codes.shape[1]} frames, so its entropy cannot exceed "
             f"{ex.usage[0]['max_entropy']:.1f} bits: measure a whole data set with "
             "`speechcodec entropy` for the real figure.",
        tables=[Table([("codebook", "codebook", 0), ("used", "codes used", 0),
                       ("entropy", "entropy bits", 2), ("max_entropy", "max for clip", 2),
                       ("bits", "bits spent", 0), ("top_share", "commonest code %", 1),
                       ("changes", "frames that change %", 1)], usage_rows)],
        images=[Image("codebook usage", figs["usage"])]))

    # 4. stage by stage
    clips = []
    prev = None
    for s in ex.stages:
        err = spectral_error_png(ex.samples, s.samples, rate)
        clips.append(Clip(f"{s.codebooks} codebook{'s' if s.codebooks > 1 else ''}",
                          s.samples, rate, kbps=s.kbps, compression=s.compression,
                          caption=_stage_caption(s, prev),
                          images=[Image("spectral error", err,
                                        f"error: this spectrogram minus the original's; red: "
                                        f"up to {ERROR_DB_RANGE:.0f} dB too much, blue: too "
                                        "little, white: right")]))
        prev = s
    stage_rows = [dict(s.metrics(), latent_residual=100 * s.latent_residual) for s in ex.stages]
    sections.append(Section(
        "Adding codebooks one at a time",
        text="Residual quantization: Q_k(z) = c_1 + c_2 + ... + c_k, each codeword c_j chosen "
             "to be nearest to what the previous j - 1 left over. Decoding the first k "
             "codebooks gives a complete, coarser reconstruction, so one model serves every "
             "bitrate. Each stage below adds 0.5 kbps; the caption says what it added. The "
             "waveform SNR stays low even when the sound is good: the decoder is trained on "
             "spectra, not on matching the waveform sample by sample.",
        tables=[Table([("codebooks", "codebooks", 0), ("kbps", "kbps", 1),
                       ("bits_per_frame", "bits/frame", 0), ("compression", "ratio", 0),
                       ("latent_residual", "latent error %", 1),
                       ("mel_distance", "mel dist", 3), ("snr_db", "SNR dB", 1),
                       ("pesq_wb", "PESQ-WB", 2), ("stoi", "STOI", 3)], stage_rows)],
        images=[Image("error by stage", figs["stages"])], clips=clips))

    # 5. the linear autoencoder
    if ex.pca_stages:
        info = ex.pca_info
        fit = info.get("fit", {})
        rows, clips = [], []
        for p in ex.pca_stages:
            n = ex.stage_for(p.kbps)
            alloc = info["allocations"][f"{p.kbps:g}"]
            for s, label in ((n, f"neural, {n.codebooks} codebooks"),
                             (p, f"PCA, {alloc['components_sent']} axes")):
                rows.append({"kbps": s.kbps, "bits": s.bits_per_frame, "codec": label,
                             "pesq_wb": s.pesq_wb, "stoi": s.stoi,
                             "mel_distance": s.mel_distance, "snr_db": s.snr_db})
            clips.append(Clip(f"Neural {p.kbps:g} kbps", n.samples, rate, kbps=n.kbps,
                              compression=n.compression, caption=_stage_caption(n, None)))
            clips.append(Clip(f"PCA {p.kbps:g} kbps", p.samples, rate, kbps=p.kbps,
                              compression=p.compression,
                              caption=_stage_caption(p, None) +
                              f" · {alloc['components_sent']} axes sent, keeping "
                              f"{100 * alloc['energy_kept']:.0f}% of the training energy"))
        top_hz = max(a["peak_hz_max"] for a in info["allocations"].values())
        text = ("The same autoencoder with everything linear: each 40 ms sine-windowed frame "
                f"(hop 20 ms) is projected onto the top principal axes of "
                f"{fit.get('frames', 0):,} training frames ({fit.get('files', 0)} files of "
                "the training set), y = W(x - mu); the coefficients are quantized with "
                "uniform scalar quantizers, the bits handed out to the axes where they lower "
                "the squared error most; the decoder is x' = mu + W^T y', overlap-added. It "
                "spends exactly the neural codec's bits per frame. PCA is the best linear "
                "code for the squared error ||x - x'||², so it tends to win on waveform SNR; "
                "but at these rates it can afford only a few axes, windowed sinusoids that "
                f"all peak at or below {top_hz:.0f} Hz, so what it keeps is a muffled low band. On "
                "this recording: "
                + "; ".join(_versus(ex.stage_for(p.kbps), p) for p in ex.pca_stages) + ".")
        sections.append(Section(
            "A linear autoencoder (PCA) at the same bitrate", text=text,
            tables=[Table([("kbps", "kbps", 1), ("bits", "bits/frame", 0),
                           ("codec", "codec", -1), ("pesq_wb", "PESQ-WB", 2),
                           ("stoi", "STOI", 3), ("mel_distance", "mel dist", 3),
                           ("snr_db", "SNR dB", 1)], rows)],
            images=[Image("neural vs PCA", figs["rate_quality"]),
                    Image("the PCA codec", figs["pca"])],
            clips=clips))
    return sections


def write_explain(ex: Explanation, out_dir: str | os.PathLike, pca=None,
                  embed: bool = True) -> dict[str, Path]:
    """Write `index.html`, `summary.json` and the figures (`<name>.png`) into `out_dir`
    (created if missing). Returns the written paths by name."""
    from .audio import atomic_write_bytes
    from .report import make_listen_page

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(ex, pca)
    paths: dict[str, Path] = {}
    for name, png in figs.items():
        paths[name] = out / f"{name}.png"
        atomic_write_bytes(paths[name], png)
    m = ex.model
    intro = (f"{ex.name}, {len(ex.samples) / ex.sample_rate:.2f} s · model {m['model_id']} "
             f"(weights {m['weights_hash'][:8]}), {m['latent_dim']}-d latents, "
             f"{m['num_codebooks']} codebooks of {m['codebook_size']}, "
             f"{m['latency_ms']:.0f} ms latency\n"
             "An autoencoder squeezes each 20 ms frame through a bottleneck of a few codes and "
             "must rebuild the speech from them alone. This page shows what passes through.")
    for note in ex.notes:
        intro += f"\nnote: {note}"
    paths["page"] = make_listen_page(page_sections(ex, figs), out / "index.html",
                                     title="speechcodec explain", intro=intro, embed=embed)
    paths["summary"] = out / "summary.json"
    atomic_write_bytes(paths["summary"],
                       (json.dumps(_json_clean(ex.summary()), indent=2) + "\n").encode())
    return paths


def _json_clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_clean(x) for x in v]
    if isinstance(v, np.generic):
        return _json_clean(v.item())
    return v


# --------------------------------------------------------------------------------------------
# Neural vs PCA on a data set
# --------------------------------------------------------------------------------------------


def compare_on_files(codec, pca, files, kbps=(1.5, 3.0, 6.0), neural: bool = True,
                     progress: bool = False) -> tuple[list[dict], list[dict]]:
    """PESQ-WB, STOI, log-mel distance and SNR of the neural and the PCA codec on every file.

    Both codecs' outputs are sample-aligned with their input by construction, so no alignment
    search is needed. Returns (per-file rows, summary rows with means and 95% intervals)."""
    import sys

    import torch
    from tqdm import tqdm

    from .audio import AudioError, load_audio
    from .evaluate import mean_ci
    from .pipeline import decode_codes, encode_samples

    cfg = codec.cfg if codec is not None else None
    rows = []
    for path in tqdm(files, desc="neural vs PCA", unit="file", disable=not progress,
                     file=sys.stderr):
        try:
            x = load_audio(path, pca.sample_rate).samples
        except AudioError as e:
            print(f"skipping {e}", file=sys.stderr)
            continue
        codes = None
        if neural:
            with torch.inference_mode():
                codes = encode_samples(codec, x, max(cfg.codebooks_for_kbps(r) for r in kbps))
        for r in kbps:
            outs = [("pca", pca.roundtrip(x, r))]
            if neural:
                k = cfg.codebooks_for_kbps(r)
                with torch.inference_mode():
                    outs.insert(0, ("neural", decode_codes(codec, codes[:k], len(x))))
            for name, y in outs:
                rows.append({"file": str(path), "seconds": len(x) / pca.sample_rate,
                             "codec": name, "kbps": r,
                             **_quality(x, y, pca.sample_rate, perceptual=True)})
    summary = []
    for r in kbps:
        for name in (("neural", "pca") if neural else ("pca",)):
            sel = [row for row in rows if row["codec"] == name and row["kbps"] == r]
            s = {"codec": name, "kbps": r, "files": len(sel)}
            for m in ("pesq_wb", "stoi", "mel_distance", "snr_db"):
                s[m], s[m + "_ci"] = mean_ci([row[m] for row in sel])
            summary.append(s)
    return rows, summary
