"""The `explain`, `embed`, `entropy`, `pca-fit` and `pca-eval` subcommands.

    speechcodec explain talk.wav --out explain_out/          # then open explain_out/index.html
    speechcodec embed talk.wav feats.npy                     # latents [frames, 64], 50 frames/s
    speechcodec entropy ../shared/data/valid.csv --table ../shared/data/train.csv
    speechcodec pca-fit ../shared/data/train.csv --out speechcodec/pretrained/pca_basis.npz -f
    speechcodec pca-eval ../shared/data/valid.csv            # neural vs PCA at 1.5 / 3 / 6 kbps
    speechcodec oracle ../shared/data/valid.csv --limit 20 --plot oracle.png   # what limits it
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cliutil import UserError, check_kbps, check_output, parse_kbps_list, print_json, print_table

__all__ = ["add_commands", "cmd_embed", "cmd_entropy", "cmd_explain", "cmd_oracle",
           "cmd_pca_eval", "cmd_pca_fit"]

DEFAULT_PCA_FILES = 600
DEFAULT_MAX_SECONDS = 20.0


def add_commands(subparsers) -> None:
    """Register the subcommands on an argparse subparsers object."""
    e = subparsers.add_parser(
        "explain", help="a page that shows what the autoencoder's bottleneck keeps",
        description="Write OUT/index.html: the bottleneck in numbers, the latents and codes "
                    "over time, codebook usage and entropy, reconstructions as codebooks are "
                    "added one at a time (player, spectrogram, spectral error each), and a "
                    "linear PCA codec at the same bitrates with PESQ/STOI. The figures are "
                    "also written as OUT/*.png and the numbers as OUT/summary.json.")
    e.add_argument("input", help="audio file (any format, rate and channel count)")
    e.add_argument("--out", required=True, help="output folder (created if missing)")
    e.add_argument("--model", help="shipped model name or release file (default: base model)")
    e.add_argument("--pca", help="PCA basis file from pca-fit (default: the shipped one)")
    e.add_argument("--no-pca", action="store_true", help="leave the PCA comparison out")
    e.add_argument("--kbps", default="1.5,3,6", help="comparison bitrates (default 1.5,3,6)")
    e.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help=f"use only the first N seconds (default {DEFAULT_MAX_SECONDS:g})")
    e.add_argument("--fast", action="store_true", help="skip PESQ and STOI")
    e.add_argument("--no-embed", action="store_true",
                   help="write clips and images beside index.html instead of inside it")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.add_argument("-f", "--force", action="store_true", help="overwrite an existing page")
    e.set_defaults(func=cmd_explain)

    m = subparsers.add_parser(
        "embed", help="the detached encoder: continuous latents of a recording as .npy",
        description="Run only the encoder and write its continuous latents (before "
                    "quantization) as a float32 .npy array of shape [frames, D]: one row per "
                    "20 ms (50 rows per second), row t summarising the input up to sample "
                    "(t + 1) * 320 at 16 kHz. Units are the encoder's own (the space the "
                    "codebooks quantize).")
    m.add_argument("input", help="audio file")
    m.add_argument("output", help=".npy file to write")
    m.add_argument("--model", help="shipped model name or release file (default: base model)")
    m.add_argument("--json", action="store_true", help="print shape and frame rate as JSON")
    m.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    m.set_defaults(func=cmd_embed)

    h = subparsers.add_parser(
        "entropy", help="empirical entropy of each codebook: what an entropy coder could save",
        description="Encode every file with all codebooks and measure, per codebook, the "
                    "entropy of its codes (bits per code). With --table, also the "
                    "cross-entropy with code frequencies counted on other files (what a range "
                    "coder with a fixed table would actually reach).")
    h.add_argument("inputs", nargs="+", help="audio files, folders or manifest .csv files")
    h.add_argument("--table", help="files to count the code table on (e.g. train.csv)")
    h.add_argument("--table-files", type=int, default=400,
                   help="use N table files, evenly spread (default 400)")
    h.add_argument("--limit", type=int, help="use only N inputs, evenly spread")
    h.add_argument("--model", help="shipped model name or release file (default: base model)")
    h.add_argument("--json", action="store_true", help="print the figures as JSON")
    h.set_defaults(func=cmd_entropy)

    p = subparsers.add_parser(
        "pca-fit", help="fit the linear (PCA) codec on training audio",
        description="Fit the PCA basis on 40 ms sine-windowed frames (20 ms hop) of the "
                    "training files and the quantizer step and error of every axis at every "
                    "bit count; write it as .npz. Deterministic: the same files and options "
                    "give the same file.")
    p.add_argument("inputs", nargs="+", help="audio files, folders or manifest .csv files")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.add_argument("--max-files", type=int, default=DEFAULT_PCA_FILES,
                   help=f"use N files, evenly spread over the list (default "
                        f"{DEFAULT_PCA_FILES}; 0 = all)")
    p.add_argument("--components", type=int, default=128, help="axes to keep (default 128)")
    p.add_argument("--window", choices=("sine", "rect"), default="sine",
                   help="sine: 40 ms lapped frames (default); rect: 20 ms blocks")
    p.add_argument("--seed", type=int, default=0, help="seed of the quantizer-fit frame draw")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_pca_fit)

    v = subparsers.add_parser(
        "pca-eval", help="neural vs PCA codec at the same bitrates on a set of files",
        description="PESQ-WB, STOI, log-mel distance and SNR (means with 95%% intervals) of "
                    "the neural codec and the PCA codec at each bitrate.")
    v.add_argument("inputs", nargs="+", help="audio files, folders or manifest .csv files")
    v.add_argument("--kbps", default="1.5,3,6", help="bitrates (default 1.5,3,6)")
    v.add_argument("--model", help="shipped model name or release file (default: base model)")
    v.add_argument("--pca", help="PCA basis file (default: the shipped one)")
    v.add_argument("--no-neural", action="store_true", help="the PCA codec only")
    v.add_argument("--limit", type=int, help="use only N inputs, evenly spread")
    v.add_argument("--csv", help="also write the per-file rows to this CSV file")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    v.add_argument("-f", "--force", action="store_true", help="overwrite an existing CSV")
    v.set_defaults(func=cmd_pca_eval)

    o = subparsers.add_parser(
        "oracle", help="which part of the decoded spectrum costs the most quality",
        description="Decode each file, then swap one part of the decoded STFT for the "
                    "original's (phase, magnitude, spectral envelope, or fine structure) and "
                    "score PESQ-WB and STOI again: the gain is what a decoder that got that "
                    "part right would buy.")
    o.add_argument("inputs", nargs="+", help="audio files, folders or manifest .csv files")
    o.add_argument("--kbps", type=float, default=3.0, help="bitrate (default 3)")
    o.add_argument("--model", help="shipped model name or release file (default: base model)")
    o.add_argument("--limit", type=int, help="use only N inputs, evenly spread")
    o.add_argument("--plot", help="also draw the PESQ-WB bars to this PNG file")
    o.add_argument("--json", action="store_true", help="print the summary as JSON")
    o.add_argument("-f", "--force", action="store_true", help="overwrite an existing plot")
    o.set_defaults(func=cmd_oracle)


# -- helpers ---------------------------------------------------------------------------------
def _codec(args):
    from .pretrained import load_codec

    return load_codec(getattr(args, "model", None))


def _pca(path):
    from .pca import DEFAULT_BASIS, load_pca

    p = Path(path) if path else DEFAULT_BASIS
    if not p.exists():
        hint = "" if path else " (refit it with speechcodec pca-fit)"
        raise UserError(f"{p}: PCA basis file not found{hint}")
    try:
        return load_pca(p)
    except ValueError as e:
        raise UserError(str(e)) from None


def _files(inputs: list[str], limit: int | None = None) -> list[Path]:
    from .compare import evenly_spread
    from .train import list_audio

    files: list[Path] = []
    for item in inputs:
        if not Path(item).exists():
            raise UserError(f"{item}: no such file or folder")
        try:
            files += list_audio(item)
        except ValueError as e:
            raise UserError(str(e)) from None
    return evenly_spread(files, limit)


def _kbps(text: str) -> list[float]:
    return parse_kbps_list(text)


# -- commands --------------------------------------------------------------------------------
def cmd_explain(args) -> int:
    from .audio import load_audio
    from .explain import explain, write_explain

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if (out / "index.html").exists() and not args.force:
        raise UserError(f"{out / 'index.html'}: already exists (use -f to overwrite)")
    if not out.parent.exists():
        raise UserError(f"{out}: folder '{out.parent}' does not exist")
    kbps = _kbps(args.kbps)
    codec = _codec(args)
    check_kbps(codec, *kbps)
    pca = False if args.no_pca else _pca(args.pca)
    audio = load_audio(args.input, codec.cfg.sample_rate)
    x = audio.samples
    notes = list(audio.notes)
    limit = round(args.max_seconds * codec.cfg.sample_rate)
    if args.max_seconds > 0 and len(x) > limit:
        x = x[:limit]
        notes.append(f"used the first {args.max_seconds:g} s of {audio.num_samples / 16000:.1f} s"
                     " (--max-seconds)")
    ex = explain(codec, x, pca, kbps, name=Path(args.input).name, perceptual=not args.fast)
    ex.notes[:0] = notes
    paths = write_explain(ex, out, pca if pca is not False else None, embed=not args.no_embed)
    summary = ex.summary()
    if args.json:
        print_json({"page": str(paths["page"]), **summary})
        return 0
    for note in ex.notes:
        print(f"note: {note}")
    rows = [s.metrics() for s in ex.stages] + [s.metrics() for s in ex.pca_stages]
    print_table(rows, [("codec", "codec", -1), ("codebooks", "K", 0), ("kbps", "kbps", 1),
                       ("bits_per_frame", "bits/frame", 0), ("compression", "ratio", 0),
                       ("latent_residual", "z error", 3), ("mel_distance", "mel dist", 3),
                       ("snr_db", "SNR dB", 1), ("pesq_wb", "PESQ-WB", 2), ("stoi", "STOI", 3)])
    print(f"wrote {paths['page']} (open it in a browser), figures and summary.json in {out}")
    return 0


def cmd_embed(args) -> int:
    import numpy as np

    from .audio import atomic_write_bytes
    from .explain import embed_file

    out = check_output(args.output, args.force)
    if out.suffix.lower() != ".npy":
        raise UserError(f"{out}: the output must be a .npy file")
    emb = embed_file(args.input, _codec(args))
    import io

    buf = io.BytesIO()
    np.save(buf, emb.latents)
    atomic_write_bytes(out, buf.getvalue())
    info = {"input": str(args.input), "output": str(out), "shape": list(emb.latents.shape),
            "dtype": "float32", "frame_rate": emb.frame_rate, "frame_size": emb.frame_size,
            "sample_rate": emb.sample_rate, "num_samples": emb.num_samples,
            "model_id": emb.model_id}
    if args.json:
        print_json(info)
    else:
        print(f"{out}: latents [{emb.num_frames} frames, {emb.dim} dims] float32, "
              f"{emb.frame_rate:g} frames/s (row t covers input up to "
              f"{1000 / emb.frame_rate:g} * (t + 1) ms)")
    return 0


def cmd_entropy(args) -> int:
    from .entropy import measure_entropy

    files = _files(args.inputs, args.limit)
    table = _files([args.table], args.table_files) if args.table else None
    codec = _codec(args)
    rep = measure_entropy(codec, files, table, progress=sys.stderr.isatty())
    rates = sorted({min(k, codec.cfg.num_codebooks) for k in (3, 6, codec.cfg.num_codebooks)})
    doc = rep.as_dict(rates)
    if args.json:
        print_json(doc)
        return 0
    print(f"{rep.files} files, {rep.seconds / 60:.1f} min, {rep.frames} frames; model "
          f"{codec.model_id}" + (f"; table from {rep.table_frames} frames" if table else ""))
    print_table(rep.rows(), [("codebook", "codebook", 0), ("bits", "bits", 0),
                             ("used", "used", 0), ("entropy", "entropy", 3),
                             ("cross_entropy", "cross-entropy", 3)])
    print()
    print_table(doc["rates"], [("codebooks", "K", 0), ("fixed_kbps", "kbps", 2),
                               ("entropy_kbps", "entropy kbps", 3),
                               ("cross_entropy_kbps", "x-entropy kbps", 3),
                               ("saving", "saving", 3), ("honest_saving", "honest saving", 3)])
    print(doc["verdict"])
    return 0


def cmd_pca_fit(args) -> int:
    from .pca import fit_pca

    out = check_output(args.out, args.force)
    files = _files(args.inputs, args.max_files or None)
    try:
        pca = fit_pca([str(f) for f in files], num_components=args.components,
                      window=args.window, seed=args.seed, progress=sys.stderr.isatty(),
                      info={"source": ", ".join(args.inputs), "max_files": args.max_files})
    except ValueError as e:
        raise UserError(str(e)) from None
    size = pca.save(out)
    print(f"{out}: {pca.num_components} axes of {pca.frame_length} samples ({pca.window} "
          f"window), fitted on {pca.info['files']} files, {pca.info['frames']} frames; "
          f"{size / 1024:.0f} KiB")
    for kbps in (1.5, 3.0, 6.0):
        alloc = pca.allocation(pca.bits_for_kbps(kbps))
        print(f"  {kbps:g} kbps: {int(alloc.sum())} bits over {int((alloc > 0).sum())} axes")
    return 0


def cmd_pca_eval(args) -> int:
    import csv
    import io

    from .audio import atomic_write_bytes
    from .explain import compare_on_files

    kbps = _kbps(args.kbps)
    csv_out = check_output(args.csv, args.force) if args.csv else None
    files = _files(args.inputs, args.limit)
    pca = _pca(args.pca)
    codec = None if args.no_neural else _codec(args)
    try:
        for r in kbps:
            pca.bits_for_kbps(r)
            if codec is not None:
                codec.cfg.codebooks_for_kbps(r)
    except ValueError as e:
        raise UserError(str(e)) from None
    rows, summary = compare_on_files(codec, pca, files, kbps, neural=codec is not None,
                                     progress=sys.stderr.isatty())
    if csv_out is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["file"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(csv_out, buf.getvalue().encode())
    model = {} if codec is None else {"model_id": codec.model_id,
                                      "weights_hash": codec.weights_hash}
    if args.json:
        print_json({"model": model, "files": len(files), "summary": summary})
        return 0
    print(f"{len(files)} files; model {model.get('model_id', '-')}; PCA "
          f"{pca.num_components} axes, {pca.window} window, fitted on {pca.info.get('files')} "
          "files")
    for s in summary:
        for m in ("pesq_wb", "stoi"):
            s[m + "_txt"] = _pm(s[m], s[m + "_ci"], 2 if m == "pesq_wb" else 3)
    print_table(summary, [("kbps", "kbps", 1), ("codec", "codec", -1), ("files", "files", 0),
                          ("pesq_wb_txt", "PESQ-WB", -1), ("stoi_txt", "STOI", -1),
                          ("mel_distance", "mel dist", 3), ("snr_db", "SNR dB", 1)])
    return 0


def cmd_oracle(args) -> int:
    from .oracle import oracle_on_files, plot_oracle

    plot = check_output(args.plot, args.force) if args.plot else None
    files = _files(args.inputs, args.limit)
    codec = _codec(args)
    check_kbps(codec, args.kbps)
    _, summary = oracle_on_files(codec, files, args.kbps, progress=sys.stderr.isatty())
    if not summary[0]["files"]:
        frame_ms = 1000 * codec.decoder.head.n_fft / codec.cfg.sample_rate
        raise UserError(f"no usable audio among the inputs (each must be readable and "
                        f"{frame_ms:g} ms or longer)")
    title = (f"{codec.model_id} at {args.kbps:g} kbps, {summary[0]['files']} files:\n"
             "the decoded STFT with one part taken from the original")
    if plot is not None:
        plot_oracle(summary, plot, title)
    if args.json:
        print_json({"model": {"model_id": codec.model_id, "weights_hash": codec.weights_hash},
                    "kbps": args.kbps, "summary": summary})
        return 0
    print(title.replace("\n", " "))
    for s in summary:
        s["pesq_txt"] = _pm(s["pesq_wb"], s["pesq_wb_ci"], 3)
        s["stoi_txt"] = _pm(s["stoi"], s["stoi_ci"], 3)
        s["gain_txt"] = ("" if s["variant"] == "decoded" else
                         _pm(s["pesq_wb_gain"], s["pesq_wb_gain_ci"], 3))
    print_table(summary, [("variant", "variant", -1),
                          ("pesq_txt", "PESQ-WB", -1), ("gain_txt", "PESQ-WB gain", -1),
                          ("stoi_txt", "STOI", -1)])
    if plot is not None:
        print(f"wrote {plot}")
    return 0


def _pm(mean: float, ci: float, digits: int) -> str:
    import math

    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f}"
