"""The end-to-end demo on samples/: encode, decode and score each clip at each bitrate.

Run by `scripts/demo`. Writes the stream files and reconstructions into `demo_out/` (replacing
the previous demo's outputs) and prints where they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .api import decode_bytes, encode_audio, quality
from .audio import load_audio, write_wav
from .cliutil import print_table
from .pretrained import load_codec

ROOT = Path(__file__).resolve().parents[1]


def level_db(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    p.add_argument("--samples", default=str(ROOT / "samples"), help="folder of WAV clips")
    p.add_argument("--out", default=str(ROOT / "demo_out"), help="output folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codec = load_codec()
    n_params = sum(p.numel() for p in codec.parameters())
    print(f"model {codec.model_id} (weights {codec.weights_hash}), {n_params / 1e6:.1f} M "
          f"parameters, {codec.cfg.frame_rate:g} frames/s, latency {codec.latency.ms:g} ms")
    rows = []
    files = sorted(Path(args.samples).glob("*.wav"))
    if not files:
        print(f"no .wav files in {args.samples}", file=sys.stderr)
        return 1
    for path in files:
        audio = load_audio(path, codec.cfg.sample_rate)
        for kbps in (1.5, 3.0, 6.0):
            enc = encode_audio(codec, audio, kbps)
            stem = f"{path.stem}_{kbps:g}kbps"
            (out / f"{stem}.spc").write_bytes(enc.data)
            dec = decode_bytes(enc.data, codec)
            write_wav(out / f"{stem}.wav", dec.samples, dec.sample_rate)
            q = quality(audio.samples, dec.samples, dec.sample_rate)
            rows.append({"clip": path.stem, "kbps": kbps, "payload_kbps": enc.payload_kbps,
                         "bytes": len(enc.data), "ratio": enc.compression_ratio, **q.as_dict(),
                         "in_db": level_db(audio.samples), "out_db": level_db(dec.samples),
                         "same_length": "yes" if len(dec.samples) == audio.num_samples
                         else "NO"})
    print_table(rows, [("clip", "clip", -1), ("kbps", "kbps", 1), ("payload_kbps", "payload", 3),
                       ("bytes", "bytes", 0), ("ratio", "ratio", 0), ("snr_db", "SNR", 1),
                       ("si_sdr_db", "SI-SDR", 1), ("mel_distance", "mel", 3),
                       ("pesq_wb", "PESQ-WB", 2), ("stoi", "STOI", 3), ("in_db", "in dB", 1),
                       ("out_db", "out dB", 1), ("same_length", "length ok", -1)])
    print(f"\nstreams and reconstructions: {out}/<clip>_<kbps>kbps.spc / .wav")
    print(f"listen, e.g.: {out}/{files[0].stem}_3kbps.wav next to {files[0]}")

    from .channel import make_channel
    from .receiver import format_comparison, simulate

    clip = load_audio(files[0], codec.cfg.sample_rate).samples
    print(f"\nthe network: {files[0].name} at 3 kbps, 20 ms packets, 40 ms playout delay")
    lossless = simulate(codec, clip, 3.0)
    lossy = simulate(codec, clip, 3.0, make_channel(loss=0.10, burst=2.5, jitter=0.03, seed=1),
                     fec_codebooks=3)
    print(format_comparison([("lossless", lossless),
                             ("10% bursty loss + 30 ms jitter, concealment + FEC", lossy)]))
    seconds = len(clip) / codec.cfg.sample_rate
    print(f"(10% is the channel's long-run mean loss; losses come in bursts, so a {seconds:.0f} s "
          f"clip draws more or less than that: this one lost {lossy.loss_rate:.0%})")
    write_wav(out / f"{files[0].stem}_3kbps_10pct_loss.wav", lossy.samples,
              codec.cfg.sample_rate)
    print(f"lossy call: {out / (files[0].stem + '_3kbps_10pct_loss.wav')}")

    from .compare import write_demo_page

    print("\nlistening page: the codec at each bitrate next to the installed classical codecs")
    page = write_demo_page(files, out / "listen", codec)
    print(f"open {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
