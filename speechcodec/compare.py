"""Compare the neural codec with classical codecs: files x codecs -> table, plot, listening page.

For every input file and every contender (the neural codec at each requested bitrate, and each
installed classical codec from `baselines`), the file is encoded and decoded, the decoded signal
is aligned to the reference by cross-correlation (`metrics.align`), and scored:

* PESQ-WB and PESQ-NB on the decoded signal as it is (PESQ aligns by itself);
* STOI, SI-SDR and log-mel distance on the aligned signal;
* the delay that alignment found (positive: the output lags the input).

Per contender the summary holds: kbps measured from the payload (total bits / total seconds),
the compression ratio against 16-bit 16 kHz PCM, the mean of every metric over the files, the
median delay, and encode/decode seconds per minute of audio.

Work is spread over `jobs` worker processes, one task per (file, contender), with one progress
bar over all of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .audio import DEFAULT_RATE, atomic_write_bytes, load_audio
from .baselines import Baseline, BaselineError, Coded, available_baselines
from .metrics import (
    PCM_BITS_PER_SECOND,
    align,
    compression_ratio,
    log_mel_distance,
    pesq_nb,
    pesq_wb,
    si_sdr_db,
    stoi,
)

__all__ = [
    "COLUMNS",
    "Comparison",
    "Contender",
    "NeuralContender",
    "evenly_spread",
    "plot_rate_quality",
    "run_comparison",
    "score",
    "write_demo_page",
    "write_outputs",
]

DEFAULT_KBPS = (1.5, 3.0, 6.0)
DEFAULT_MAX_DELAY_MS = 60.0
NEURAL_FAMILY = "speechcodec"

#: Summary table: (key, header, decimals); used for the terminal, the CSV order and the page.
COLUMNS: list[tuple[str, str, int]] = [
    ("label", "codec", -1),
    ("kbps", "kbps", 2),
    ("compression", "ratio", 0),
    ("pesq_wb", "PESQ-WB", 2),
    ("pesq_nb", "PESQ-NB", 2),
    ("stoi", "STOI", 3),
    ("si_sdr_db", "SI-SDR dB", 1),
    ("mel_distance", "mel dist", 3),
    ("delay_ms", "delay ms", 1),
    ("encode_s_per_min", "enc s/min", 2),
    ("decode_s_per_min", "dec s/min", 2),
]

_METRICS = ("pesq_wb", "pesq_nb", "stoi", "si_sdr_db", "mel_distance")


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One column of the comparison: a codec at one setting, with a `run(samples) -> Coded`."""

    key: str
    family: str
    label: str
    nominal_kbps: float
    accounting: str
    baseline: Baseline | None = None
    num_codebooks: int = 0

    def run(self, samples: np.ndarray, codec=None) -> Coded:
        if self.baseline is not None:
            return self.baseline.run(samples)
        return _run_neural(codec, self.num_codebooks, samples)


def NeuralContender(codec, kbps: float) -> Contender:
    """The neural codec at `kbps` (must be one of the model's bitrates)."""
    k = codec.cfg.codebooks_for_kbps(kbps)
    return Contender(
        key=f"{NEURAL_FAMILY}-{kbps:g}", family=NEURAL_FAMILY,
        label=f"{NEURAL_FAMILY} {kbps:g} kbps", nominal_kbps=float(kbps),
        accounting=f"codes x {codec.cfg.bits_per_code} bits ({k} codebooks); stream header "
                   "excluded", num_codebooks=k)


def _baseline_contender(b: Baseline) -> Contender:
    return Contender(b.key, b.family, b.label, b.nominal_kbps, b.accounting, baseline=b)


def _run_neural(codec, num_codebooks: int, samples: np.ndarray) -> Coded:
    import torch

    from .pipeline import decode_codes, encode_samples

    with torch.inference_mode():
        t0 = time.perf_counter()
        codes = encode_samples(codec, samples, num_codebooks)
        t1 = time.perf_counter()
        out = decode_codes(codec, codes, len(samples))
        t2 = time.perf_counter()
    return Coded(out, int(codes.size) * codec.cfg.bits_per_code, t1 - t0, t2 - t1)


# --------------------------------------------------------------------------------------------
# Scoring one file through one contender
# --------------------------------------------------------------------------------------------


def score(ref: np.ndarray, est: np.ndarray, max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
          sample_rate: int = DEFAULT_RATE) -> dict[str, float]:
    """Metrics of `est [N]` against `ref [N]`; STOI, SI-SDR and mel distance after alignment."""
    delay, aligned = align(ref, est, round(max_delay_ms * sample_rate / 1000))
    return {
        "delay_ms": 1000.0 * delay / sample_rate,
        "pesq_wb": pesq_wb(ref, est, sample_rate),
        "pesq_nb": pesq_nb(ref, est, sample_rate),
        "stoi": stoi(ref, aligned, sample_rate),
        "si_sdr_db": si_sdr_db(ref, aligned),
        "mel_distance": log_mel_distance(ref, aligned, sample_rate),
    }


_WORKER: dict = {}


def _init_worker(codec, contenders, max_delay_ms, threads) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(codec=codec, contenders=contenders, max_delay_ms=max_delay_ms)


@lru_cache(maxsize=2)
def _load(path: str) -> np.ndarray:
    return load_audio(path).samples


def _task(file_index: int, path: str, contender_index: int, keep_audio: bool) -> dict:
    """One (file, contender) pair -> a per-file row (plus decoded samples if asked)."""
    c = _WORKER["contenders"][contender_index]
    row = {"file": path, "file_index": file_index, "codec": c.key, "label": c.label,
           "family": c.family, "error": ""}
    try:
        ref = _load(path)
    except Exception as e:  # AudioError: reported per file, never fatal
        row["error"] = str(e)
        return row
    row["seconds"] = len(ref) / DEFAULT_RATE
    try:
        coded = c.run(ref, _WORKER["codec"])
    except BaselineError as e:
        row["error"] = str(e)
        return row
    row.update(payload_bits=coded.payload_bits, encode_s=coded.encode_s, decode_s=coded.decode_s)
    row["kbps"] = coded.payload_bits / row["seconds"] / 1000.0 if row["seconds"] else math.nan
    row.update(score(ref, coded.samples, _WORKER["max_delay_ms"]))
    if keep_audio:
        row["_samples"] = coded.samples
    return row


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """What `run_comparison` measured.

    Attributes:
        files: inputs, in order.
        contenders: every contender that ran.
        skipped: classical codecs not run, key -> missing tools/libraries.
        rows: one dict per (file, contender): metrics, bits, seconds, "error" ("" if none).
        summary: one dict per contender (see COLUMNS), in contender order.
        audio: {file index: {contender key: decoded samples}} for the listening files.
        model: description of the neural model (id, weights hash, latency).
    """

    files: list[Path]
    contenders: list[Contender]
    skipped: dict[str, list[str]]
    rows: list[dict]
    summary: list[dict]
    audio: dict[int, dict[str, np.ndarray]]
    model: dict


def evenly_spread(items: Sequence, n: int | None) -> list:
    """`n` items spread evenly over `items` (first and last included), or all of them."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    if n <= 0:
        return []
    if n == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _nanmean(values: list[float]) -> float:
    v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def summarize(contenders: list[Contender], rows: list[dict]) -> list[dict]:
    """Per-contender summary of per-file rows (see the module docstring)."""
    out = []
    for c in contenders:
        ok = [r for r in rows if r["codec"] == c.key and not r["error"]]
        seconds = sum(r["seconds"] for r in ok)
        bits = sum(r["payload_bits"] for r in ok)
        s = {"codec": c.key, "label": c.label, "family": c.family,
             "nominal_kbps": c.nominal_kbps, "files": len(ok),
             "failed": sum(1 for r in rows if r["codec"] == c.key and r["error"]),
             "seconds": seconds, "payload_bits": bits, "accounting": c.accounting}
        if seconds > 0:
            s["kbps"] = bits / seconds / 1000.0
            s["compression"] = compression_ratio(bits, seconds)
            s["encode_s_per_min"] = 60.0 * sum(r["encode_s"] for r in ok) / seconds
            s["decode_s_per_min"] = 60.0 * sum(r["decode_s"] for r in ok) / seconds
            s["delay_ms"] = statistics.median(r["delay_ms"] for r in ok)
        else:
            for k in ("kbps", "compression", "encode_s_per_min", "decode_s_per_min", "delay_ms"):
                s[k] = math.nan
        for m in _METRICS:
            s[m] = _nanmean([r[m] for r in ok])
        out.append(s)
    return out


def _contenders(codec, kbps: Sequence[float], baselines: list[Baseline] | None
                ) -> tuple[list[Contender], dict[str, list[str]]]:
    contenders = [NeuralContender(codec, k) for k in kbps] if codec is not None else []
    installed, skipped = available_baselines()
    if baselines is not None:
        wanted = {b.key for b in baselines}
        installed = [b for b in installed if b.key in wanted]
        skipped = {k: v for k, v in skipped.items() if k in wanted}
    contenders += [_baseline_contender(b) for b in sorted(installed, key=lambda b: b.nominal_kbps)]
    return contenders, skipped


def run_comparison(files: Sequence[str | Path], codec=None, kbps: Sequence[float] = DEFAULT_KBPS,
                   baselines: list[Baseline] | None = None, listen_files: int = 3,
                   max_delay_ms: float = DEFAULT_MAX_DELAY_MS, jobs: int = 1,
                   progress: bool = True) -> Comparison:
    """Run every contender on every file.

    Args:
        files: audio files (any format `load_audio` reads).
        codec: the neural `Codec` (None: classical codecs only).
        kbps: the neural codec's bitrates.
        baselines: classical codecs to try (None: all known; missing ones are skipped).
        listen_files: how many files (evenly spread) keep their decoded audio for the page.
        max_delay_ms: largest delay alignment searches for, either way.
        jobs: worker processes (1: run in this process).
        progress: show a progress bar on stderr.
    """
    from tqdm import tqdm

    files = [Path(f) for f in files]
    contenders, skipped = _contenders(codec, kbps, baselines)
    keep = {files.index(f) for f in evenly_spread(files, listen_files)}
    tasks = [(i, str(f), j, i in keep) for i, f in enumerate(files) for j in range(len(contenders))]
    rows: list[dict] = []
    bar = tqdm(total=len(tasks), desc="comparing", unit="run", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    init = (codec, contenders, max_delay_ms)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            _init_worker(*init, threads=_torch_threads())
            for t in tasks:
                rows.append(_task(*t))
                bar.set_postfix_str(contenders[t[2]].key, refresh=False)
                bar.update()
        else:
            import multiprocessing as mp

            # spawn, not fork: forking a process whose torch thread pools are running can hang
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(*init, 1)) as pool:
                # files in order, so each worker's audio cache is hit for the next contender
                for row in pool.map(_task, *zip(*tasks), chunksize=1):
                    rows.append(row)
                    bar.set_postfix_str(row["codec"], refresh=False)
                    bar.update()
    finally:
        bar.close()
        _WORKER.clear()
    audio: dict[int, dict[str, np.ndarray]] = {}
    for r in rows:
        if "_samples" in r:
            audio.setdefault(r["file_index"], {})[r["codec"]] = r.pop("_samples")
    model = {}
    if codec is not None:
        model = {"model_id": codec.model_id, "weights_hash": codec.weights_hash,
                 "latency_ms": codec.latency.ms}
    return Comparison(files, contenders, skipped, rows, summarize(contenders, rows), audio, model)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# --------------------------------------------------------------------------------------------
# Outputs: CSV, JSON, plot, page
# --------------------------------------------------------------------------------------------


def _csv_bytes(rows: list[dict], keys: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().encode()


def plot_rate_quality(summary: list[dict]) -> bytes:
    """PNG: PESQ-WB (left) and STOI (right) against measured kbps, one line per codec family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), dpi=100)
    families = list(dict.fromkeys(s["family"] for s in summary))
    for family in families:
        pts = sorted((s for s in summary if s["family"] == family and math.isfinite(s["kbps"])),
                     key=lambda s: s["kbps"])
        if not pts:
            continue
        neural = family == NEURAL_FAMILY
        style = dict(marker="o" if neural else "s", linewidth=2.6 if neural else 1.4,
                     markersize=7 if neural else 5, label=family, zorder=3 if neural else 2)
        if neural:
            style["color"] = "black"
        for ax, metric in zip(axes, ("pesq_wb", "stoi")):
            ax.plot([p["kbps"] for p in pts], [p[metric] for p in pts], **style)
    for ax, name in zip(axes, ("PESQ-WB (MOS-LQO)", "STOI")):
        ax.set_xscale("log")
        ax.set_xlabel("measured payload bitrate, kbit/s (log scale)")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("Rate-quality: PESQ-WB")
    axes[1].set_title("Rate-intelligibility: STOI")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _caption(s: dict | None) -> str:
    if not s:
        return ""
    parts = []
    if math.isfinite(s.get("pesq_wb", math.nan)):
        parts.append(f"PESQ-WB {s['pesq_wb']:.2f}")
    if math.isfinite(s.get("stoi", math.nan)):
        parts.append(f"STOI {s['stoi']:.3f}")
    if math.isfinite(s.get("delay_ms", math.nan)):
        parts.append(f"delay {s['delay_ms']:.1f} ms")
    return " · ".join(parts)


def _page_sections(cmp: Comparison, plot_png: bytes) -> list:
    from .report import Clip, Image, Section, Table

    sections = [Section(
        "Results",
        text=f"{len(cmp.files)} files, {_total_seconds(cmp) / 60:.1f} minutes of audio. "
             "Means over files; delay is the median over files.",
        tables=[Table(COLUMNS, cmp.summary)],
        images=[Image("Rate-quality", plot_png,
                      "Measured payload bitrate against mean PESQ-WB and STOI.")])]
    for i in sorted(cmp.audio):
        path = cmp.files[i]
        ref = _load(str(path))
        by_key = {r["codec"]: r for r in cmp.rows if r["file_index"] == i}
        clips = [Clip("Original", ref, kbps=PCM_BITS_PER_SECOND / 1000, compression=1.0,
                      caption="16-bit PCM, 16 kHz")]
        for c in cmp.contenders:
            if c.key not in cmp.audio[i]:
                continue
            r = by_key[c.key]
            clips.append(Clip(c.label, cmp.audio[i][c.key], kbps=r["kbps"],
                              compression=PCM_BITS_PER_SECOND / 1000 / r["kbps"]
                              if r["kbps"] else None, caption=_caption(r)))
        sections.append(Section(path.name, text=str(path), clips=clips))
    return sections


def write_outputs(cmp: Comparison, out_dir: str | Path, title: str = "speechcodec comparison",
                  embed: bool = True) -> dict[str, Path]:
    """Write per_file.csv, summary.csv, summary.json, rate_quality.png and index.html."""
    from .report import make_listen_page

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in
             ("per_file.csv", "summary.csv", "summary.json", "rate_quality.png", "index.html")}
    per_file_keys = ["file", "codec", "seconds", "payload_bits", "kbps", "delay_ms", *_METRICS,
                     "encode_s", "decode_s", "error"]
    atomic_write_bytes(paths["per_file.csv"], _csv_bytes(cmp.rows, per_file_keys))
    summary_keys = ["codec", "label", "family", "nominal_kbps", *[k for k, _, _ in COLUMNS[1:]],
                    "files", "failed", "seconds", "payload_bits", "accounting"]
    atomic_write_bytes(paths["summary.csv"], _csv_bytes(cmp.summary, summary_keys))
    atomic_write_bytes(paths["summary.json"], (json.dumps(_json_doc(cmp), indent=2) + "\n")
                       .encode())
    png = plot_rate_quality(cmp.summary)
    atomic_write_bytes(paths["rate_quality.png"], png)
    intro = _intro(cmp)
    make_listen_page(_page_sections(cmp, png), paths["index.html"], title=title, intro=intro,
                     embed=embed)
    return paths


def _intro(cmp: Comparison) -> str:
    lines = []
    if cmp.model:
        lines.append(f"Neural model: {cmp.model['model_id']} (weights "
                     f"{cmp.model['weights_hash']}), algorithmic latency "
                     f"{cmp.model['latency_ms']:g} ms; its decoder returns the output already "
                     "delay-compensated, so the delay column does not show that latency.")
    lines.append("Bitrates are measured from the encoded bytes, container overhead excluded. "
                 "STOI, SI-SDR and mel distance are computed after aligning each output to its "
                 "original by cross-correlation.")
    if cmp.skipped:
        gone = "; ".join(f"{k} (missing {', '.join(v)})" for k, v in cmp.skipped.items())
        lines.append(f"Not installed, skipped: {gone}.")
    failed = [s for s in cmp.summary if s["failed"]]
    if failed:
        lines.append("Failures: " + "; ".join(f"{s['label']}: {s['failed']} files"
                                               for s in failed) + ".")
    return "\n".join(lines)


def _total_seconds(cmp: Comparison) -> float:
    """Duration of the inputs that could be read."""
    return sum({r["file_index"]: r["seconds"] for r in cmp.rows if "seconds" in r}.values())


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _json_doc(cmp: Comparison) -> dict:
    return _clean({
        "files": len(cmp.files),
        "seconds": _total_seconds(cmp),
        "model": cmp.model,
        "skipped": cmp.skipped,
        "summary": cmp.summary,
        "errors": [{"file": r["file"], "codec": r["codec"], "error": r["error"]}
                   for r in cmp.rows if r["error"]],
    })


def default_jobs() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def write_demo_page(sample_paths: Sequence[str | Path], out_dir: str | Path, codec,
                    progress: bool = True) -> Path:
    """The demo's listening page: `codec` at 1.5/3/6 kbps and every installed classical codec
    on `sample_paths`, all of them on the page. Returns the path of index.html."""
    cmp = run_comparison(sample_paths, codec, DEFAULT_KBPS, listen_files=len(sample_paths),
                         jobs=1, progress=progress)
    return write_outputs(cmp, out_dir, title="speechcodec demo: listen and compare")["index.html"]
