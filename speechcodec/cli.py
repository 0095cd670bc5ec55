"""Command-line interface: thin argparse subcommands over the library.

User mistakes (missing or unreadable files, damaged streams, existing outputs) are printed as one
line on stderr with exit code 1; outputs are written atomically, so a failed run leaves none.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from . import __version__
from .cliutil import (
    UserError,
    check_kbps,
    check_output,
    fmt,
    parse_kbps_list,
    print_json,
    print_table,
)
from .config import CodecConfig, TrainConfig
from .pretrained import DEFAULT_MODEL

PROGRESS_MIN_SECONDS = 30.0  # show a progress bar for inputs longer than this


def _parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """`key=value` pairs -> (CodecConfig overrides, TrainConfig overrides)."""
    codec_fields = {f.name for f in dataclasses.fields(CodecConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    codec_kw, train_kw = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got '{item}'")
        if key not in codec_fields | train_fields:
            raise UserError(f"unknown config key '{key}'")
        default = getattr(CodecConfig() if key in codec_fields else TrainConfig(), key)
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                parsed = value.lower() in ("true", "1")
            elif isinstance(default, tuple):
                kind = type(default[0]) if default else str
                parsed = tuple(kind(v) for v in value.split(","))
            else:
                parsed = type(default)(value)
        except ValueError:
            raise UserError(f"--set {key}: cannot read '{value}'") from None
        (codec_kw if key in codec_fields else train_kw)[key] = parsed
    return codec_kw, train_kw


def _progress(total_samples: int, sample_rate: int, desc: str):
    """A tqdm callback for long inputs on a terminal, or None. The bar is erased when done, so
    stderr keeps only notes and, on failure, the one-line error."""
    if total_samples < PROGRESS_MIN_SECONDS * sample_rate or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total_samples / sample_rate, desc=desc, unit="s audio", leave=False,
               file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}]")
    left = [total_samples]

    def update(n: int) -> None:  # the coded signal is padded to whole frames: stop at the end
        step = min(n, left[0])
        left[0] -= step
        bar.update(step / sample_rate)

    return update, bar


def _codec(args):
    from .pretrained import load_codec

    return load_codec(getattr(args, "model", None))


def _level_db(x) -> float:
    import numpy as np

    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


# -- commands --------------------------------------------------------------------------------
def _print_notes(path, notes) -> None:
    """What was done to an input (mixed down, resampled, ...): one line each, on stderr."""
    for note in notes:
        print(f"speechcodec: note: {path}: {note}", file=sys.stderr)


def cmd_encode(args) -> int:
    from .api import encode_reader
    from .audio import atomic_write_bytes, open_audio

    out = check_output(args.output, args.force)
    codec = _codec(args)
    check_kbps(codec, args.kbps)
    # Read, resample and encode block by block: memory stays bounded for long inputs.
    with open_audio(args.input, codec.cfg.sample_rate) as reader:
        progress, bar = _progress(reader.announced_num_samples, reader.sample_rate, "encoding")
        try:
            enc = encode_reader(codec, reader, args.kbps, progress)
        finally:
            if bar:
                bar.close()
    atomic_write_bytes(out, enc.data)
    info = {"input": str(args.input), "output": str(out), "notes": list(enc.notes),
            **enc.summary()}
    _print_notes(args.input, enc.notes)
    if args.json:
        print_json(info)
    else:
        print(f"{out}: {info['seconds']:.2f} s, {enc.header.num_codebooks} codebooks, "
              f"{enc.header.num_frames} frames, {len(enc.data)} bytes")
        print(f"payload {enc.payload_kbps:.3f} kbps, file {enc.file_kbps:.3f} kbps, "
              f"compression {enc.compression_ratio:.0f}:1 against 16-bit PCM at 16 kHz")
    return 0


def cmd_decode(args) -> int:
    from .api import codec_rate_length, decode_to_wav, quality
    from .audio import load_audio
    from .bitstream import parse_stream

    out = check_output(args.output, args.force)
    stream = parse_stream(_read_stream_bytes(args.input))  # damaged streams fail before torch
    codec = _codec(args)
    h = stream.header
    ref = None
    if args.ref:  # read the reference first: a bad one must not leave a decoded file behind
        ref_rate = h.original_sample_rate if args.original_rate else h.sample_rate
        ref = load_audio(args.ref, ref_rate).samples
    progress, bar = _progress(codec_rate_length(h), h.sample_rate, "decoding")
    try:
        # Decoded and written block by block to a temporary file, renamed when complete.
        dec = decode_to_wav(stream, out, codec, original_rate=args.original_rate,
                            progress=progress, keep_samples=bool(args.ref))
    finally:
        if bar:
            bar.close()
    clipped = dec.clipped
    info = {"input": str(args.input), "output": str(out), "sample_rate": dec.sample_rate,
            "num_samples": dec.num_samples, "seconds": round(h.duration_seconds, 3),
            "codebooks": h.num_codebooks, "payload_kbps": h.exact_kbps(),
            "file_kbps": h.exact_kbps(include_overhead=True), "clipped_samples": clipped,
            "level_dbfs": dec.level_dbfs}
    if ref is not None:
        info["quality"] = quality(ref, dec.samples, dec.sample_rate).as_dict()
    if args.json:
        print_json(info)
    else:
        print(f"{out}: {info['num_samples']} samples at {dec.sample_rate} Hz "
              f"({info['seconds']:.2f} s), level {fmt(info['level_dbfs'], 1)} dBFS"
              + (f", {clipped} samples clipped" if clipped else ""))
        print(f"payload {info['payload_kbps']:.3f} kbps, file {info['file_kbps']:.3f} kbps")
        if args.ref:
            _print_quality(info["quality"])
    return 0


def _read_stream_bytes(path) -> bytes:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, not a stream file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None


def _print_quality(q: dict) -> None:
    print(f"SNR {fmt(q['snr_db'], 1)} dB, SI-SDR {fmt(q['si_sdr_db'], 1)} dB, "
          f"log-mel distance {fmt(q['mel_distance'], 3)}, PESQ-WB {fmt(q['pesq_wb'])}, "
          f"STOI {fmt(q['stoi'], 3)}")


def cmd_info(args) -> int:
    from .bitstream import parse_stream
    from .pretrained import ModelError

    data = _read_stream_bytes(args.input)
    h, _ = parse_stream(data)
    info = {"file": str(args.input), "format_version": 1, "model": h.model_id,
            "weights_hash": h.weights_hash, "sample_rate": h.sample_rate,
            "frame_size": h.frame_size, "frame_ms": 1000 * h.frame_size / h.sample_rate,
            "codebooks": h.num_codebooks, "codebook_bits": h.codebook_bits,
            "frames": h.num_frames, "num_samples": h.num_samples,
            "original_sample_rate": h.original_sample_rate,
            "seconds": round(h.duration_seconds, 3), "nominal_kbps": h.payload_kbps,
            "payload_kbps": h.exact_kbps(), "file_kbps": h.exact_kbps(include_overhead=True),
            "file_bytes": len(data), "header_bytes": h.header_bytes}
    try:
        codec = _codec(args)
        if (codec.model_id, codec.weights_hash) == (h.model_id, h.weights_hash):
            info["latency_ms"] = codec.latency.ms
            info["decodable"] = True
        else:
            info["decodable"] = False
    except ModelError:
        info["decodable"] = False
    if args.json:
        print_json(info)
    else:
        print(f"{args.input}: speechcodec stream, format v1")
        print(f"  model        {h.model_id} (weights {h.weights_hash})"
              + ("" if info["decodable"] else "  [not the installed model: cannot decode]"))
        print(f"  audio        {h.duration_seconds:.2f} s, {h.num_samples} samples at "
              f"{h.original_sample_rate} Hz (coded at {h.sample_rate} Hz)")
        print(f"  frames       {h.num_frames} x {info['frame_ms']:g} ms, {h.num_codebooks} "
              f"codebooks x {h.codebook_bits} bits")
        print(f"  bitrate      {h.payload_kbps:g} kbps nominal, payload {info['payload_kbps']:.3f}"
              f" kbps, file {info['file_kbps']:.3f} kbps ({len(data)} bytes, header "
              f"{h.header_bytes})")
        if "latency_ms" in info:
            print(f"  latency      {info['latency_ms']:g} ms algorithmic (frame + lookahead)")
    return 0


def cmd_roundtrip(args) -> int:
    from .api import decode_bytes, encode_audio, quality
    from .audio import load_audio, write_wav

    codec = _codec(args)
    rates = parse_kbps_list(args.kbps)
    check_kbps(codec, *rates)
    out_dir = Path(args.out) if args.out else None
    wavs = {}
    if out_dir:  # refuse existing outputs before any work, so a run never stops half-written
        wavs = {k: out_dir / f"{Path(args.input).stem}_{k:g}kbps.wav" for k in rates}
        if out_dir.is_dir():
            for wav in wavs.values():
                check_output(wav, args.force)
    audio = load_audio(args.input, codec.cfg.sample_rate)
    if out_dir:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{out_dir}: cannot create output folder "
                            f"({e.strerror or e})") from None
    rows = []
    for kbps in rates:
        enc = encode_audio(codec, audio, kbps)
        dec = decode_bytes(enc.data, codec)
        q = quality(audio.samples, dec.samples, dec.sample_rate, perceptual=not args.fast)
        row = {"kbps": kbps, **enc.summary(), **q.as_dict(),
               "level_in_dbfs": _level_db(audio.samples),
               "level_out_dbfs": _level_db(dec.samples), "length_in": audio.num_samples,
               "length_out": len(dec.samples)}
        if out_dir:
            wav = wavs[kbps]
            write_wav(wav, dec.samples, dec.sample_rate)
            row["output"] = str(wav)
        rows.append(row)
    _print_notes(args.input, audio.notes)
    if args.json:
        print_json({"input": str(args.input), "notes": list(audio.notes),
                    "latency_ms": codec.latency.ms, "results": rows})
        return 0
    print(f"{args.input}: {audio.duration_s:.2f} s; model {codec.model_id}, "
          f"latency {codec.latency.ms:g} ms")
    print_table(rows, [("kbps", "kbps", 1), ("payload_kbps", "payload", 3),
                       ("file_kbps", "file", 3), ("compression_ratio", "ratio", 0),
                       ("snr_db", "SNR dB", 1), ("si_sdr_db", "SI-SDR", 1),
                       ("mel_distance", "mel", 3), ("pesq_wb", "PESQ-WB", 2),
                       ("stoi", "STOI", 3), ("level_out_dbfs", "level dB", 1)])
    print(f"input level {fmt(rows[0]['level_in_dbfs'], 1)} dBFS; output lengths "
          f"{'all equal' if all(r['length_out'] == r['length_in'] for r in rows) else 'DIFFER'}"
          f" to the input ({audio.num_samples} samples)")
    for r in rows:
        if "output" in r:
            print(f"wrote {r['output']}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate, format_summary, write_results
    from .train import list_audio

    codec = _codec(args)
    if args.postfilter is not None:
        import copy

        codec = copy.deepcopy(codec)  # not the cached shared model
        try:
            codec.set_postfilter(args.postfilter)
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        files = list_audio(args.data)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.limit:
        files = files[: args.limit]
    kbps = parse_kbps_list(args.kbps)
    try:
        rows, summary = evaluate(codec, files, kbps)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not rows:
        raise UserError(f"{args.data}: no readable audio files")
    meta = {"data": str(args.data), "model": codec.model_id, "weights_hash": codec.weights_hash,
            "postfilter": codec.cfg.postfilter}
    if args.out:
        write_results(Path(args.out), rows, summary, meta)
    if args.json:
        print_json({**meta, "summary": summary})
    else:
        pf = f", postfilter {codec.cfg.postfilter:g}" if codec.cfg.postfilter else ""
        print(f"{meta['model']} ({meta['weights_hash']}{pf}) on {args.data}: "
              "mean ± 95% interval")
        print(format_summary(summary))
        if args.out:
            print(f"wrote {args.out}/per_file.csv, summary.csv, summary.json")
    return 0


def cmd_train(args) -> int:
    from .train import train

    codec_kw, train_kw = _parse_overrides(args.set or [])
    if args.steps:
        train_kw["steps"] = args.steps
    if args.resume and codec_kw:
        raise UserError("--resume keeps the run's architecture; drop the CodecConfig --set keys")
    try:
        path = train(args.data, args.out, valid=args.valid,
                     cfg=None if args.resume else CodecConfig(**codec_kw), resume=args.resume,
                     init=args.init, max_minutes=args.max_minutes, train_overrides=train_kw)
    except ValueError as e:  # an --init of another architecture, a fast_params name not in it
        raise UserError(str(e)) from None
    print(f"checkpoint: {path}")
    return 0


def cmd_split(args) -> int:
    from .train import split_by_speaker

    try:
        train_csv, dev_csv, dev = split_by_speaker(args.manifest, args.holdout, args.seed, args.out)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {train_csv} and {dev_csv} ({len(dev)} held-out speakers: {', '.join(dev)})")
    return 0


def cmd_export(args) -> int:
    from .pretrained import HERE
    from .train import export_release

    try:
        path, digest = export_release(args.checkpoint, args.model_id, args.out or HERE,
                                      args.postfilter)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {digest[:16]}...)")
    return 0


# -- parser ----------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, writes: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--model", help="model name or release file (default: the shipped model)")
    if writes:
        p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechcodec",
                                description="A causal neural speech codec (16 kHz, 1.5-6 kbps).")
    p.add_argument("--version", action="version", version=f"speechcodec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("encode", help="audio file -> compact stream file")
    e.add_argument("input", help="audio file (WAV, FLAC, OGG; any rate and channel count)")
    e.add_argument("output", help="stream file to write (.spc)")
    e.add_argument("--kbps", type=float, default=3.0, help="1.5, 3 or 6 (default 3)")
    _common(e)
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="stream file -> 16-bit WAV")
    d.add_argument("input", help="stream file (.spc)")
    d.add_argument("output", help="WAV file to write")
    d.add_argument("--original-rate", action="store_true",
                   help="write at the encoder input's sample rate (default 16 kHz)")
    d.add_argument("--ref", help="reference audio: also print the reconstruction error")
    _common(d)
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="what a stream file holds: model, rate, frames, kbps")
    i.add_argument("input", help="stream file (.spc)")
    _common(i, writes=False)
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("roundtrip", help="encode + decode at several bitrates and score them")
    r.add_argument("input", help="audio file")
    r.add_argument("--kbps", default="1.5,3,6", help="comma-separated bitrates (default 1.5,3,6)")
    r.add_argument("--out", help="folder for the decoded WAVs (optional)")
    r.add_argument("--fast", action="store_true", help="skip PESQ and STOI")
    _common(r)
    r.set_defaults(func=cmd_roundtrip)

    v = sub.add_parser("eval", help="quality per bitrate on a manifest or folder")
    v.add_argument("data", help="manifest (.csv), folder or audio file")
    v.add_argument("--kbps", default="1.5,3,6", help="comma-separated bitrates (default 1.5,3,6)")
    v.add_argument("--out", help="folder for per_file.csv, summary.csv and summary.json")
    v.add_argument("--limit", type=int, help="only the first N files")
    v.add_argument("--postfilter", type=float, metavar="STRENGTH",
                   help="formant postfilter strength (0: off; default: the model's)")
    _common(v, writes=False)
    v.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="train a codec on a manifest or folder of speech")
    t.add_argument("--data", required=True, help="training manifest (.csv) or folder")
    t.add_argument("--valid", help="validation manifest or folder (periodic metrics)")
    t.add_argument("--out", required=True, help="run folder: checkpoints, logs")
    t.add_argument("--steps", type=int, help="total optimizer steps (with --max-minutes: the most)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--init", help="warm-start weights: a shipped model name or a file")
    t.add_argument("--max-minutes", type=float,
                   help="stop (with a checkpoint) after this long; the learning rate's cosine is "
                        "fitted to end then, at the steps the measured speed reaches (at most "
                        "--steps)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a CodecConfig or TrainConfig field (repeatable)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("split", help="hold out speakers of a training manifest as a dev set")
    s.add_argument("manifest", help="manifest CSV with 'path' and 'speaker' columns")
    s.add_argument("--holdout", type=int, default=12, help="speakers to hold out (default 12)")
    s.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    s.add_argument("--out", required=True, help="folder for train.csv and dev.csv")
    s.set_defaults(func=cmd_split)

    x = sub.add_parser("export", help="training checkpoint -> small hashed release file")
    x.add_argument("checkpoint", help="checkpoint.pt from `speechcodec train`, or a release "
                                      "file (to change its postfilter or storage)")
    x.add_argument("--model-id", default=DEFAULT_MODEL,
                   help=f"name to register (default {DEFAULT_MODEL})")
    x.add_argument("--out", help="folder (default: the package's pretrained/ folder)")
    x.add_argument("--postfilter", type=float, metavar="STRENGTH",
                   help="formant postfilter strength stored in the release (0: off; default: "
                        "the checkpoint's)")
    x.set_defaults(func=cmd_export)

    from . import cli_compare, cli_explain, cli_net

    cli_net.add_commands(sub)
    cli_compare.add_commands(sub)
    cli_explain.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .audio import AudioError
    from .bitstream import StreamError
    from .pretrained import ModelError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, AudioError, StreamError, ModelError) as e:
        msg = " ".join(str(e).split())
        prefix = f"{args.input}: " if isinstance(e, StreamError) and hasattr(args, "input") else ""
        print(f"speechcodec: error: {prefix}{msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("speechcodec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
