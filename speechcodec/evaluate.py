"""Quality of a codec on a set of files: per-bitrate means with 95% confidence intervals."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from .audio import AudioError, load_audio
from .metrics import compute_quality, pesq_nb
from .model import Codec
from .pipeline import roundtrip_samples

METRICS = ("pesq_wb", "pesq_nb", "stoi", "si_sdr_db", "mel_distance")


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% normal-approximation interval (nan-aware)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.nan
    return float(v.mean()), float(half)


def evaluate(codec: Codec, files: list[Path], kbps_list: list[float], progress: bool = True
             ) -> tuple[list[dict], list[dict]]:
    """Round-trip every file at every bitrate. Returns (per-file rows, per-bitrate summary)."""
    from tqdm import tqdm

    rate = codec.cfg.sample_rate
    ks = [codec.cfg.codebooks_for_kbps(k) for k in kbps_list]
    rows = []
    bar = tqdm(total=len(files) * len(ks), desc="evaluating", unit="run", file=sys.stderr,
               disable=not progress)
    for path in files:
        try:
            x = load_audio(path, rate).samples
        except AudioError as e:
            bar.write(f"skipping {e}")
            bar.update(len(ks))
            continue
        for kbps, k in zip(kbps_list, ks):
            y = roundtrip_samples(codec, x, k)
            q = compute_quality(x, y, rate).as_dict()
            rows.append({"file": str(path), "kbps": kbps, "seconds": len(x) / rate, **q,
                         "pesq_nb": pesq_nb(x, y, rate)})
            bar.update(1)
    bar.close()
    summary = []
    for kbps in kbps_list:
        sel = [r for r in rows if r["kbps"] == kbps]
        s = {"kbps": kbps, "files": len(sel)}
        for m in METRICS:
            s[m], s[m + "_ci95"] = mean_ci([r[m] for r in sel])
        summary.append(s)
    return rows, summary


def format_summary(summary: list[dict]) -> str:
    head = f"{'kbps':>5}  {'files':>5}" + "".join(f"  {m:>15}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for s in summary:
        cells = "".join(f"  {s[m]:>8.3f} ±{s[m + '_ci95']:5.3f}" for m in METRICS)
        lines.append(f"{s['kbps']:>5g}  {s['files']:>5}{cells}")
    return "\n".join(lines)


def write_results(out_dir: Path, rows: list[dict], summary: list[dict], meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "per_file.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    (out_dir / "summary.json").write_text(json.dumps({**meta, "summary": summary}, indent=2))
