"""The `compare` and `listen` subcommands.

    speechcodec compare my_recordings/*.wav --out cmp/      # then open cmp/index.html
    speechcodec listen talk.spc talk_out.wav --ref talk.wav --out page.html
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from .cliutil import UserError, check_kbps, check_output, parse_kbps_list, print_json, print_table

__all__ = ["add_commands", "cmd_compare", "cmd_listen"]


def add_commands(subparsers) -> None:
    """Register `compare` and `listen` on an argparse subparsers object."""
    c = subparsers.add_parser(
        "compare", help="the neural codec against classical codecs: table, plot, listening page",
        description="Encode and decode every input with the neural codec at each bitrate and "
                    "with every installed classical codec (Codec 2, Opus, AMR-NB/WB, GSM-FR, "
                    "Speex, G.711); write a table (terminal, CSV, JSON), a rate-quality plot "
                    "and OUT/index.html to listen.")
    c.add_argument("inputs", nargs="*",
                   help="audio files, folders, or manifest .csv files (column 'path')")
    c.add_argument("--out", help="output folder (created if missing); required")
    c.add_argument("--kbps", default="1.5,3,6", help="neural codec bitrates (default 1.5,3,6)")
    c.add_argument("--model", help="shipped model name or release file (default: base model)")
    c.add_argument("--codecs", help="classical codecs to run, comma-separated keys or families "
                   "(e.g. opus,amrwb,codec2-3200; 'none' for no classical codecs; default all)")
    c.add_argument("--no-neural", action="store_true", help="classical codecs only")
    c.add_argument("--limit", type=int, help="use only N inputs, evenly spread over the list")
    c.add_argument("--listen-files", type=int, default=3, metavar="N",
                   help="files (evenly spread) to put on the listening page (default 3)")
    c.add_argument("--max-delay-ms", type=float, default=60.0,
                   help="largest codec delay the alignment searches for (default 60)")
    c.add_argument("--jobs", type=int, help="worker processes (default: the CPU count, max 8)")
    c.add_argument("--no-embed", action="store_true",
                   help="write clips and images beside index.html instead of inside it")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("--list-codecs", action="store_true",
                   help="list classical codecs and whether they are installed, then exit")
    c.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    c.set_defaults(func=cmd_compare)

    s = subparsers.add_parser(
        "listen", help="a listening page for stream (.spc) or audio files",
        description="Write an offline HTML page with a player, bitrate, compression ratio and "
                    "spectrogram for each input. Stream files are decoded with the model.")
    s.add_argument("inputs", nargs="+", metavar="STREAM_OR_WAV", help=".spc streams or audio")
    s.add_argument("--out", required=True, help="HTML file to write")
    s.add_argument("--ref", help="the original recording: shown first, and every input is "
                   "scored against it (PESQ, STOI, SI-SDR, mel distance, delay)")
    s.add_argument("--model", help="model to decode streams with (default: base model)")
    s.add_argument("--title", default="speechcodec: listen", help="page title")
    s.add_argument("--no-embed", action="store_true",
                   help="write clips and images beside the page instead of inside it")
    s.add_argument("-f", "--force", action="store_true", help="overwrite an existing page")
    s.set_defaults(func=cmd_listen)


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def _list_codecs() -> int:
    from .baselines import all_baselines

    rows = []
    for b in all_baselines():
        gone = b.missing()
        rows.append({"key": b.key, "label": b.label, "kbps": b.nominal_kbps,
                     "rate": b.sample_rate, "status": "missing " + ", ".join(gone) if gone
                     else "installed"})
    print_table(rows, [("key", "key", -1), ("label", "codec", -1), ("kbps", "kbps", 2),
                       ("rate", "Hz", 0), ("status", "status", -1)])
    return 0


def _gather_inputs(inputs: list[str]) -> list[Path]:
    from .train import list_audio

    files: list[Path] = []
    for item in inputs:
        if not Path(item).exists():
            raise UserError(f"{item}: not found")
        try:
            files += list_audio(item)
        except ValueError as e:
            raise UserError(str(e)) from None
    return list(dict.fromkeys(files))


def cmd_compare(args) -> int:
    from .baselines import select_baselines
    from .compare import (
        COLUMNS,
        default_jobs,
        evenly_spread,
        run_comparison,
        write_outputs,
    )

    if args.list_codecs:
        return _list_codecs()
    if not args.inputs:
        raise UserError("compare needs input files, folders or manifests")
    if not args.out:
        raise UserError("compare needs --out FOLDER")
    files = _gather_inputs(args.inputs)
    if args.limit is not None:
        if args.limit < 1:
            raise UserError("--limit must be at least 1")
        files = evenly_spread(files, args.limit)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if not out.parent.exists():
        raise UserError(f"{out}: folder '{out.parent}' does not exist")
    if out.is_dir() and not args.force:
        for name in ("index.html", "summary.json", "summary.csv"):
            if (out / name).exists():
                raise UserError(f"{out / name}: already exists (use -f to overwrite)")
    if args.jobs is not None and args.jobs < 1:
        raise UserError("--jobs must be at least 1")

    if args.codecs is None:
        baselines = None
    elif args.codecs.strip().lower() == "none":
        baselines = []
    else:
        try:
            baselines = select_baselines([c for c in args.codecs.split(",") if c.strip()])
        except ValueError as e:
            raise UserError(str(e)) from None

    codec, kbps = None, []
    if not args.no_neural:
        codec = _load_model(args.model)
        kbps = parse_kbps_list(args.kbps)
        check_kbps(codec, *kbps)
    if codec is None and baselines == []:
        raise UserError("nothing to compare: --no-neural with --codecs none")

    cmp = run_comparison(files, codec, kbps, baselines, listen_files=args.listen_files,
                         max_delay_ms=args.max_delay_ms, jobs=args.jobs or default_jobs())
    if not cmp.contenders:
        raise UserError("no codec could run (see `speechcodec compare --list-codecs`)")
    try:
        paths = write_outputs(cmp, out, embed=not args.no_embed)
    except FileExistsError as e:
        raise UserError(str(e)) from None

    if args.json:
        import json

        print_json(json.loads(paths["summary.json"].read_text()))
    else:
        print_table(cmp.summary, COLUMNS)
        for key, gone in cmp.skipped.items():
            print(f"skipped {key}: missing {', '.join(gone)}", file=sys.stderr)
        for r in cmp.rows:
            if r["error"]:
                print(f"failed {r['codec']} on {r['file']}: {r['error']}", file=sys.stderr)
        print(f"\n{len(cmp.files)} files; table: {paths['summary.csv']}, "
              f"{paths['summary.json']}; plot: {paths['rate_quality.png']}")
        print(f"listening page: {paths['index.html']}")
    return 0


def _load_model(name: str | None):
    from .pretrained import ModelError, load_codec

    try:
        return load_codec(name)
    except ModelError as e:
        raise UserError(str(e)) from None


# --------------------------------------------------------------------------------------------
# listen
# --------------------------------------------------------------------------------------------


def _is_stream(path: Path) -> bool:
    from .bitstream import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _decode_stream(path: Path, codec_cache: dict, model: str | None):
    """(samples at 16 kHz, payload bits, seconds, note) for a stream file.

    Raises StreamError (one line) for a damaged stream or one made by another model."""
    import torch

    from .api import decode_bytes

    if "codec" not in codec_cache:
        codec_cache["codec"] = _load_model(model)
    with torch.inference_mode():
        dec = decode_bytes(path.read_bytes(), codec_cache["codec"])
    h = dec.header
    note = f"stream: {h.model_id}, {h.num_codebooks} codebooks, {h.num_frames} frames"
    return dec.samples, h.payload_bits, h.duration_seconds, note


def cmd_listen(args) -> int:
    from .audio import load_audio
    from .compare import COLUMNS, score
    from .metrics import PCM_BITS_PER_SECOND, compression_ratio
    from .report import Clip, Section, Table, make_listen_page

    out = check_output(args.out, args.force)
    cache: dict = {}
    clips, rows = [], []
    ref = None
    if args.ref:
        ref = load_audio(args.ref).samples
        clips.append(Clip(f"Original: {Path(args.ref).name}", ref,
                          kbps=PCM_BITS_PER_SECOND / 1000, compression=1.0,
                          caption="reference, as 16-bit PCM at 16 kHz"))
    for item in args.inputs:
        path = Path(item)
        if not path.is_file():
            raise UserError(f"{path}: not found" if not path.exists() else f"{path}: not a file")
        if _is_stream(path):
            samples, bits, seconds, note = _decode_stream(path, cache, args.model)
        else:
            audio = load_audio(path)
            samples, seconds = audio.samples, audio.duration_s
            bits = path.stat().st_size * 8
            note = f"audio file, {audio.original_sample_rate} Hz (its size gives the bitrate)"
        kbps = bits / seconds / 1000 if seconds > 0 else math.nan
        ratio = compression_ratio(bits, seconds) if seconds > 0 else math.nan
        caption = note
        if ref is not None:
            n = min(len(ref), len(samples))
            m = score(ref[:n], samples[:n])
            m.update(label=path.name, kbps=kbps, compression=ratio)
            rows.append(m)
            caption += (f" · PESQ-WB {m['pesq_wb']:.2f} · STOI {m['stoi']:.3f} · "
                        f"delay {m['delay_ms']:.1f} ms")
        clips.append(Clip(path.name, samples, kbps=kbps, compression=ratio, caption=caption))

    tables = []
    if rows:
        cols = [("label", "file", -1)] + [c for c in COLUMNS[1:]
                                          if c[0] not in ("encode_s_per_min", "decode_s_per_min")]
        tables.append(Table(cols, rows, caption=f"scored against {args.ref}; STOI, SI-SDR and "
                            "mel distance after alignment"))
    section = Section("Clips", text="Bitrate: payload bits of a stream, or the file's size for "
                      "an audio file. Compression: against 16-bit PCM at 16 kHz.",
                      clips=clips, tables=tables)
    try:
        page = make_listen_page([section], out, title=args.title, embed=not args.no_embed)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    print(f"listening page: {page}")
    return 0
