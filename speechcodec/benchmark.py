"""Speed, memory and size of the shipped codec: `scripts/benchmark` (figures, not a test).

Real-time factor = seconds of audio processed per second of wall time, on one thread.

Memory: `speechcodec encode` then `speechcodec decode` of a 1-minute and a 60-minute file
(44.1 kHz stereo 16-bit WAV, the samples tiled), each in a fresh process so that each peak is
its own. Reported are the peak RSS of that process in total and above its RSS right after
importing torch and loading the model (which a CUDA build of torch makes large).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS of this process image. Linux's VmHWM, not ru_maxrss: a child's ru_maxrss
    starts at its parent's size at fork time, which would count the parent's memory."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else float("nan")


def write_long_file(path: Path, minutes: float, rate: int = 44100, channels: int = 2) -> None:
    """A WAV of `minutes` of speech (the samples tiled), written block by block."""
    import soundfile as sf

    from .resampler import Resampler

    clip = speech_of_length(20.0)  # 16 kHz mono
    conv = Resampler(16000, rate)
    clip = np.concatenate([conv.push(clip), conv.flush()])
    gains = np.linspace(1.0, 0.5, channels, dtype=np.float32)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, subtype="PCM_16") as f:
        done = 0
        while done < total:
            n = min(len(clip), total - done)
            f.write(clip[:n, None] * gains[None, :])
            done += n


def _memory_child(wav: str, model: str | None) -> None:
    """In a fresh process: load, then encode and decode `wav` through the CLI; print JSON."""
    import torch  # noqa: F401  (the baseline includes it, as every real run does)

    from .cli import main as cli_main

    load_codec(model)
    base = current_rss_mb()
    spc, out = wav + ".spc", wav + ".out.wav"
    extra = ["--model", model] if model else []
    t0 = time.perf_counter()
    rc = cli_main(["encode", wav, spc, "-f", "--json", *extra])
    t1 = time.perf_counter()
    rc = rc or cli_main(["decode", spc, out, "-f", "--json", *extra])
    t2 = time.perf_counter()
    peak = peak_rss_mb()
    print(json.dumps({"rc": rc, "rss_after_load_mb": base, "peak_rss_mb": peak,
                      "encode_s": t1 - t0, "decode_s": t2 - t1}))


def memory(minutes_list: list[float], model: str | None) -> list[dict]:
    """Peak RSS of encode + decode of files of each length, each in its own process."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="speechcodec_bench_") as tmp:
        for minutes in minutes_list:
            wav = Path(tmp) / f"speech_{minutes:g}min.wav"
            write_long_file(wav, minutes)
            cmd = [sys.executable, "-m", "speechcodec.benchmark", "--memory-child", str(wav)]
            if model:
                cmd += ["--model", model]
            r = subprocess.run(cmd, capture_output=True, text=True, check=False,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
            lines = r.stdout.strip().splitlines()
            if r.returncode != 0 or not lines:
                raise RuntimeError(f"memory run failed: {r.stderr.strip()[-500:]}")
            row = json.loads(lines[-1])
            if row["rc"] != 0:
                raise RuntimeError(f"encode/decode failed: {r.stderr.strip()[-500:]}")
            row.update(minutes=minutes, file_mb=wav.stat().st_size / 1e6)
            rows.append(row)
            for p in Path(tmp).iterdir():
                p.unlink()
    return rows


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
    p.add_argument("--memory-minutes", default="1,60",
                   help="file lengths for the peak-RSS runs (default 1,60; '' to skip)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.memory_child:
        torch.set_num_threads(args.threads)
        _memory_child(args.memory_child, args.model)
        return 0
    r = run(args.seconds, args.threads, args.repeats, args.model)
    minutes = [float(m) for m in args.memory_minutes.split(",") if m.strip()]
    r["memory"] = memory(minutes, args.model) if minutes else []
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
    if r["memory"]:
        print("speechcodec encode + decode of a 44.1 kHz stereo 16-bit WAV, one process each:")
        print("  minutes   file MB   encode s   decode s   peak RSS MB   after load MB   "
              "peak above load MB")
        for m in r["memory"]:
            print(f"  {m['minutes']:7g}   {m['file_mb']:7.0f}   {m['encode_s']:8.1f}   "
                  f"{m['decode_s']:8.1f}   {m['peak_rss_mb']:11.0f}   "
                  f"{m['rss_after_load_mb']:13.0f}   "
                  f"{m['peak_rss_mb'] - m['rss_after_load_mb']:18.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
