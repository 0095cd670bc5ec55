"""Speed, memory and size of the shipped codec: `scripts/benchmark` (figures, not a test).

Real-time factor = seconds of audio processed per second of wall time, on one thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .audio import load_audio
from .pipeline import decode_codes, encode_samples
from .pretrained import DEFAULT_MODEL, load_codec, model_path

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def speech_of_length(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """Concatenate the project's samples (or, without them, a synthetic voice) to `seconds`."""
    clips = [load_audio(p, sample_rate).samples for p in sorted(SAMPLES.glob("*.wav"))]
    if not clips:
        t = np.arange(sample_rate * 2) / sample_rate
        clips = [(0.1 * np.sin(2 * np.pi * 140 * t) * np.sin(2 * np.pi * 3 * t) ** 2)]
    n = int(seconds * sample_rate)
    reps = int(np.ceil(n / sum(len(c) for c in clips)))
    return np.concatenate(clips * reps)[:n].astype(np.float32)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(seconds: float, threads: int, repeats: int, model: str | None) -> dict:
    torch.set_num_threads(threads)
    codec = load_codec(model)
    cfg = codec.cfg
    x = speech_of_length(seconds, cfg.sample_rate)
    encode_samples(codec, x[: cfg.sample_rate], 12)  # warm-up
    results = {"model": codec.model_id, "weights_hash": codec.weights_hash,
               "parameters": sum(p.numel() for p in codec.parameters()),
               "model_file_mb": model_path(model or DEFAULT_MODEL)[0].stat().st_size / 1e6,
               "latency_ms": codec.latency.ms, "threads": threads, "audio_seconds": seconds,
               "rss_after_load_mb": peak_rss_mb(), "rates": []}
    for k in (3, 6, 12):
        t_enc, codes = _best_of(lambda k=k: encode_samples(codec, x, k), repeats)
        t_dec, _ = _best_of(lambda c=codes: decode_codes(codec, c, len(x)), repeats)
        results["rates"].append({"kbps": cfg.kbps(k), "encode_s": t_enc, "decode_s": t_dec,
                                 "encode_rtf": seconds / t_enc, "decode_rtf": seconds / t_dec})
    # Frame-by-frame streaming (the path a live call takes), on 10 s.
    n_frames = int(10 * cfg.frame_rate)
    xs = torch.from_numpy(x[: n_frames * cfg.frame_size])[None]
    enc, dec = codec.stream_encoder(6), codec.stream_decoder()
    t0 = time.perf_counter()
    for f in range(n_frames):
        codes = enc.push(xs[:, f * cfg.frame_size:(f + 1) * cfg.frame_size])
        dec.push(codes)
    per_frame = (time.perf_counter() - t0) / n_frames
    results["streaming_ms_per_frame"] = 1000 * per_frame
    results["streaming_rtf"] = (cfg.frame_size / cfg.sample_rate) / per_frame
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/benchmark", description=__doc__)
    p.add_argument("--seconds", type=float, default=60.0, help="input length (default 60)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="best of N runs (default 3)")
    p.add_argument("--model", help="model name or file (default: shipped model)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args.seconds, args.threads, args.repeats, args.model)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
        return 0
    print(f"model {r['model']} ({r['weights_hash']}): {r['parameters'] / 1e6:.2f} M parameters, "
          f"{r['model_file_mb']:.2f} MB file, latency {r['latency_ms']:g} ms")
    print(f"{r['audio_seconds']:g} s of speech, {r['threads']} thread(s), best of {args.repeats}:")
    print("  kbps   encode s   encode x RT   decode s   decode x RT")
    for row in r["rates"]:
        print(f"  {row['kbps']:4g}   {row['encode_s']:8.3f}   {row['encode_rtf']:11.1f}   "
              f"{row['decode_s']:8.3f}   {row['decode_rtf']:11.1f}")
    print(f"streaming, one 20 ms frame at a time (encode + decode): "
          f"{r['streaming_ms_per_frame']:.2f} ms per frame = {r['streaming_rtf']:.1f}x real time")
    print(f"peak memory (RSS): {r['peak_rss_mb']:.0f} MB "
          f"(of which {r['rss_after_load_mb']:.0f} MB after importing torch and loading the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
