"""Quality under packet loss: ``scripts/benchmark --channel [MANIFEST]``.

For every file of the manifest and every loss rate, one Gilbert-Elliott loss pattern (bursts of
``--burst`` packets on average, seeded by file and rate) is drawn over 20 ms packets and applied,
packet for packet, to five receivers:

* ``no concealment``   -- speechcodec, lost frames decoded as the latents of silence;
* ``repeat + fade``    -- lost frames repeat the last latents, fading to silence after 40 ms;
* ``concealment``      -- where the jitter buffer already holds a later frame, lost frames are
  interpolated between the last good latents and that frame's; otherwise repeat + fade;
* ``concealment + FEC``-- as above, and each packet carries the first ``--fec`` codebooks of the
  previous frame;
* ``concealment + D-deep FEC`` (with ``--fec-depth D`` > 1) -- the same codebooks of each of the
  previous D frames;
* ``Opus``             -- libopus at about the same rate, its own concealment for lost packets.

All speechcodec rows use a 40 ms playout delay. It prints PESQ-WB and STOI against the
original, averaged over the files, and with ``--plcmos`` the PLCMOS v2 estimate of each output
(``pip install speechmos onnxruntime``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT.parent / "shared" / "data" / "valid.csv"

__all__ = ["format_table", "loss_pattern", "main", "plcmos", "run"]


def _receivers(fec: int, fec_depth: int) -> list[tuple[str, str, int, int]]:
    """(row name, concealment, FEC codebooks, FEC depth) of the speechcodec rows."""
    rows = [("no concealment", "none", 0, 1), ("repeat + fade", "repeat", 0, 1),
            ("concealment", "interpolate", 0, 1), ("concealment + FEC", "interpolate", fec, 1)]
    if fec_depth > 1:
        rows.append((f"concealment + {fec_depth}-deep FEC", "interpolate", fec, fec_depth))
    return rows


def loss_pattern(loss: float, burst: float, num_packets: int, seed: int) -> list[bool]:
    """``num_packets`` draws of the Gilbert model with mean ``loss`` and mean burst ``burst``."""
    from .channel import GilbertElliott

    if loss <= 0:
        return [False] * num_packets
    ge = GilbertElliott.from_mean(loss, burst, seed)
    return [ge.lose() for _ in range(num_packets)]


def _mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


@lru_cache(maxsize=1)
def _plcmos_model():
    from speechmos.plcmos import PLCMOS

    return PLCMOS()


def plcmos(samples: np.ndarray) -> float:
    """PLCMOS v2 (``speechmos``, ONNX) of a 16 kHz signal; about 1..5, higher is better.

    Its rater embeddings are random draws; they are seeded here so a score is repeatable."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        return float(_plcmos_model().get_mos(np.asarray(samples, dtype=np.float32)))
    except Exception:
        return math.nan
    finally:
        np.random.set_state(state)


def plcmos_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import speechmos.plcmos  # noqa: F401
    except ImportError:
        return False
    return True


def _bench_file(codec, fi: int, path, k: int, fec: int, losses, burst: float, seed: int,
                opus_kbps: float | None, playout_delay: float,
                with_plcmos: bool = False, fec_depth: int = 1) -> list[dict]:
    """The rows of one file: one per loss rate, with every condition's scores and rates."""
    from . import opus
    from .audio import load_audio
    from .channel import FixedPattern
    from .metrics import pesq_wb, stoi
    from .pipeline import decode_codes, encode_samples
    from .receiver import simulate

    cfg = codec.cfg
    x = load_audio(path, cfg.sample_rate).samples
    codes = encode_samples(codec, x, k)
    clean = decode_codes(codec, codes, len(x))
    lookahead = opus.OpusEncoder(cfg.sample_rate, round(opus_kbps * 1000)).lookahead \
        if opus_kbps else 0
    n_pk = max(codes.shape[1], opus.num_packets_for(len(x), lookahead))
    clean_score = None

    def score(y) -> dict:
        out = {"pesq_wb": pesq_wb(x, y, cfg.sample_rate), "stoi": stoi(x, y, cfg.sample_rate)}
        if with_plcmos:
            out["plcmos"] = plcmos(y)
        return out

    rows = []
    for li, loss in enumerate(losses):
        pattern = loss_pattern(loss, burst, n_pk, seed * 1_000_003 + fi * 101 + li)
        row = {"file": str(path), "loss": loss,
               "measured_loss": float(np.mean(pattern[:codes.shape[1]]))}
        for name, conceal, c, depth in _receivers(fec, fec_depth):
            r = simulate(codec, x, channel=FixedPattern(pattern), num_codebooks=k,
                         fec_codebooks=c, fec_depth=depth, playout_delay=playout_delay,
                         concealment=conceal, quality=False, codes=codes)
            if any(pattern[:codes.shape[1]]):
                row[name] = score(r.samples)
            else:  # nothing lost: every receiver gives the clean decode
                clean_score = clean_score or score(clean)
                row[name] = dict(clean_score)
            row[name].update(kbps=r.payload_kbps + r.fec_kbps, packet_kbps=r.packet_kbps)
        if opus_kbps:
            o = opus.opus_under_loss(x, opus_kbps, pattern, cfg.sample_rate, cfg.frame_size)
            row["Opus"] = {**score(o.samples), "kbps": o.payload_kbps, "packet_kbps": None}
        rows.append(row)
    return rows


_WORKER: dict = {}


def _init_worker(model: str | None, params: dict) -> None:
    import torch

    from .pretrained import load_codec

    torch.set_num_threads(1)
    _WORKER.update(codec=load_codec(model), params=params)


def _work(fi: int, path) -> tuple[int, list[dict], float]:
    t0 = time.perf_counter()
    rows = _bench_file(_WORKER["codec"], fi, path, **_WORKER["params"])
    return fi, rows, time.perf_counter() - t0


def run(files, codec, kbps: float = 3.0, fec: int = 3, losses=(0.0, 0.05, 0.10, 0.20),
        burst: float = 2.5, seed: int = 0, opus_kbps: float | None = None,
        playout_delay: float = 0.04, progress=None, jobs: int = 1,
        model: str | None = None, with_plcmos: bool = False, fec_depth: int = 1) -> dict:
    """Run the benchmark on ``files``; returns ``{"rows": per-file results, "summary": ...}``.

    With ``jobs > 1`` files are scored in that many worker processes, each loading ``model``
    (the name or path ``codec`` was loaded from).
    """
    from . import opus

    cfg = codec.cfg
    k = cfg.codebooks_for_kbps(kbps)
    if opus_kbps is None:  # Opus's useful floor is about 6 kbps
        opus_kbps = max(6.0, math.ceil(cfg.kbps(k + fec * fec_depth)))
    if not opus.available():
        opus_kbps = None
    params = dict(k=k, fec=fec, losses=tuple(losses), burst=burst, seed=seed,
                  opus_kbps=opus_kbps, playout_delay=playout_delay, with_plcmos=with_plcmos,
                  fec_depth=fec_depth)
    per_file: dict[int, list[dict]] = {}
    if jobs <= 1:
        for fi, path in enumerate(files):
            t0 = time.perf_counter()
            per_file[fi] = _bench_file(codec, fi, path, **params)
            if progress:
                progress(fi, path, time.perf_counter() - t0)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(model, params)) as pool:
            futures = [pool.submit(_work, fi, path) for fi, path in enumerate(files)]
            for fut in futures:
                fi, rows, seconds = fut.result()
                per_file[fi] = rows
                if progress:
                    progress(fi, files[fi], seconds)
    rows = [r for fi in sorted(per_file) for r in per_file[fi]]
    conditions = [name for name, *_ in _receivers(fec, fec_depth)]
    if opus_kbps:
        conditions.append("Opus")
    summary = {"files": len(files), "kbps": kbps, "fec_codebooks": fec, "fec_depth": fec_depth,
               "burst": burst, "losses": list(losses), "model": codec.model_id,
               "opus_kbps": opus_kbps,
               "plcmos": with_plcmos,
               "measured_loss": [_mean(r["measured_loss"] for r in rows if r["loss"] == loss)
                                 for loss in losses],
               "conditions": {}}
    for name in conditions:
        summary["conditions"][name] = {
            key: _mean(r[name][key] for r in rows) if rows and rows[0][name][key] is not None
            else None for key in ("kbps", "packet_kbps")}
        for key in ("pesq_wb", "stoi", "plcmos") if with_plcmos else ("pesq_wb", "stoi"):
            summary["conditions"][name][key] = [
                _mean(r[name][key] for r in rows if r["loss"] == loss) for loss in losses]
    return {"rows": rows, "summary": summary}


def format_table(summary: dict) -> str:
    """A Markdown table: one row per condition, PESQ-WB / STOI per loss rate."""
    losses = summary["losses"]
    head = ["condition", "kbps"] + [f"{100 * loss:g}% loss" for loss in losses]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in summary["conditions"].items():
        rate = f"{c['kbps']:.1f}"
        if c.get("packet_kbps"):
            rate += f" ({c['packet_kbps']:.1f})"
        cells = [f"{p:.2f} / {s:.3f}" for p, s in zip(c["pesq_wb"], c["stoi"])]
        if "plcmos" in c:
            cells = [f"{cell} / {m:.2f}" for cell, m in zip(cells, c["plcmos"])]
        lines.append("| " + " | ".join([name, rate, *cells]) + " |")
    measured = ", ".join(f"{100 * m:.1f}%" for m in summary["measured_loss"])
    lines += [
        "",
        ("PESQ-WB / STOI against the original / PLCMOS of the output alone"
         if summary.get("plcmos") else "PESQ-WB / STOI against the original")
        + f", mean over {summary['files']} files; model "
        f"`{summary['model']}` at {summary['kbps']:g} kbps, FEC = first "
        f"{summary['fec_codebooks']} codebooks of the previous frame"
        + (f" (the {depth}-deep row: of each of the previous {depth} frames)"
           if (depth := summary.get("fec_depth", 1)) > 1 else "") + "; Gilbert-Elliott loss "
        f"with mean burst {summary['burst']:g} packets (measured loss {measured}), the same "
        "pattern for every row. kbps: payload (with FEC), and in brackets whole packets with our "
        "13-byte header (14 with a FEC depth); Opus: measured packet bytes.",
    ]
    cond = summary["conditions"]
    if 0.0 in losses and 0.10 in losses:
        i0, i10 = losses.index(0.0), losses.index(0.10)
        for name in (n for n in cond if "FEC" in n):
            f = cond[name]["pesq_wb"]
            note = f"At 10% loss, {name} loses {f[i0] - f[i10]:.2f} PESQ-WB against no loss"
            if "Opus" in cond:
                note += (f"; Opus under the same loss scores {cond['Opus']['pesq_wb'][i10]:.2f} "
                         f"against our {f[i10]:.2f}")
            lines.append(note + ".")
    if "Opus" not in cond:
        lines.append("Opus: not measured, libopus was not found (Debian: libopus0; "
                     "scripts/install_baselines installs it).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/benchmark --channel", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", default=str(DEFAULT_MANIFEST),
                   help="manifest (.csv), folder or audio file (default ../shared/data/valid.csv)")
    p.add_argument("--limit", type=int, help="use only N files, spread over the manifest")
    p.add_argument("--model", help="shipped model name or model file")
    p.add_argument("--kbps", type=float, default=3.0, help="payload bitrate (default 3)")
    p.add_argument("--fec", type=int, default=3, help="FEC codebooks (default 3)")
    p.add_argument("--fec-depth", type=int, default=2,
                   help="also a row whose FEC copies this many previous frames (default 2; "
                        "1: no such row)")
    p.add_argument("--burst", type=float, default=2.5, help="mean loss burst (default 2.5)")
    p.add_argument("--losses", default="0,5,10,20", help="loss rates in %% (default 0,5,10,20)")
    p.add_argument("--opus-kbps", type=float, help="Opus bitrate (default: max(6, ours + FEC))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--plcmos", action="store_true",
                   help="also score PLCMOS (needs the speechmos and onnxruntime packages; slow)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--rows", help="also write the per-file results to this JSON file")
    args = p.parse_args(argv)

    import torch

    from .compare import evenly_spread
    from .packet import MAX_FEC_DEPTH
    from .pretrained import ModelError, load_codec
    from .train import list_audio

    if args.plcmos and not plcmos_available():
        print("benchmark: error: --plcmos needs: pip install speechmos onnxruntime",
              file=sys.stderr)
        return 1
    try:
        files = evenly_spread(list_audio(args.manifest), args.limit)
        losses = [float(v) / 100 for v in args.losses.split(",") if v.strip()]
        codec = load_codec(args.model)
        codec.cfg.codebooks_for_kbps(args.kbps)
        if not 1 <= args.fec_depth <= MAX_FEC_DEPTH:
            raise ValueError(f"--fec-depth must be in 1..{MAX_FEC_DEPTH}")
    except (ValueError, OSError, ModelError) as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 1

    torch.set_num_threads(1)  # small model, short files: threads cost more than they bring

    def progress(i, path, seconds):
        print(f"[{i + 1}/{len(files)}] {Path(path).name} {seconds:.1f} s", file=sys.stderr,
              flush=True)

    result = run(files, codec, args.kbps, args.fec, losses, args.burst, args.seed,
                 args.opus_kbps, progress=progress, jobs=args.jobs, model=args.model,
                 with_plcmos=args.plcmos, fec_depth=args.fec_depth)
    if args.rows:
        Path(args.rows).write_text(json.dumps(result["rows"], indent=1))
    if args.json:
        from .cliutil import print_json

        print_json(result["summary"])
    else:
        print(format_table(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
