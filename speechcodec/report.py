"""Offline HTML listening pages: sections of titled audio clips, spectrograms, tables, images.

`make_listen_page(sections, out_path)` writes one HTML page that works from the file system with
no network: by default every clip (16-bit WAV) and every image (PNG) is embedded as a base64
`data:` URL, so the page is a single file; with `embed=False` they are written beside it in
`<page name>_files/` and linked by relative paths (a smaller page; keep the folder with it).

A page is a list of `Section`s, each with an optional text, tables, images and clips::

    Section("Sample 1", text="...", tables=[Table(columns, rows)], images=[Image(...)],
            clips=[Clip("Original", samples, kbps=256, compression=1.0), Clip(...), ...])

Each clip gets an audio player, its bitrate and compression ratio beside the player, a caption,
and a spectrogram drawn on one fixed dB scale for all clips, so spectrograms side by side can be
compared by eye. Only one player plays at a time.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import DEFAULT_RATE, atomic_write_bytes, to_int16

__all__ = ["Clip", "Image", "Section", "Table", "make_listen_page", "spectrogram_png", "wav_bytes"]

SPEC_N_FFT = 512
SPEC_HOP = 128
SPEC_DB_RANGE = (-100.0, -10.0)  # dB relative to a full-scale sine


@dataclass
class Clip:
    """A titled audio clip.

    Attributes:
        title: shown above the player.
        samples: float `[N]` mono, nominal full scale [-1, 1].
        sample_rate: Hz.
        kbps: bitrate shown beside the player (None: not shown).
        compression: compression ratio shown beside the player (None: not shown).
        caption: a line under the spectrogram (metrics, notes).
        spectrogram: draw a spectrogram.
        images: further images under the clip (e.g. a codebook plot).
    """

    title: str
    samples: np.ndarray
    sample_rate: int = DEFAULT_RATE
    kbps: float | None = None
    compression: float | None = None
    caption: str = ""
    spectrogram: bool = True
    images: list[Image] = field(default_factory=list)


@dataclass
class Image:
    """A titled PNG: bytes, or the path of a PNG file."""

    title: str
    png: bytes | str | os.PathLike
    caption: str = ""


@dataclass
class Table:
    """Rows of dicts shown under `columns`: (key, header, decimals; -1 = as text)."""

    columns: list[tuple[str, str, int]]
    rows: list[dict]
    caption: str = ""


@dataclass
class Section:
    """A titled part of the page."""

    title: str
    text: str = ""
    clips: list[Clip] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def wav_bytes(samples: np.ndarray, sample_rate: int = DEFAULT_RATE) -> bytes:
    """A 16-bit PCM mono WAV file in memory."""
    buf = io.BytesIO()
    sf.write(buf, to_int16(np.asarray(samples))[0], sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _spectrogram_db(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """dB magnitude `[freq, frames]`; a full-scale sine peaks near 0 dB."""
    x = np.asarray(x, dtype=np.float64)
    window = np.hanning(SPEC_N_FFT + 1)[:-1]
    x = np.pad(x, (SPEC_N_FFT // 2, SPEC_N_FFT // 2))
    n = max(1, 1 + (len(x) - SPEC_N_FFT) // SPEC_HOP)
    x = np.pad(x, (0, max(0, SPEC_N_FFT - len(x))))
    idx = np.arange(SPEC_N_FFT)[None, :] + SPEC_HOP * np.arange(n)[:, None]
    mag = np.abs(np.fft.rfft(x[idx] * window, axis=1)) * (2.0 / window.sum())
    return 20.0 * np.log10(np.maximum(mag, 1e-7)).T


def spectrogram_png(samples: np.ndarray, sample_rate: int = DEFAULT_RATE,
                    width_px: int = 400, height_px: int = 170) -> bytes:
    """PNG spectrogram (0 Hz .. Nyquist, fixed dB scale `SPEC_DB_RANGE`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    db = _spectrogram_db(samples, sample_rate)
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    ax = fig.add_axes((0.1, 0.2, 0.88, 0.76))
    seconds = max(len(samples) / sample_rate, 1e-3)
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=SPEC_DB_RANGE[0],
              vmax=SPEC_DB_RANGE[1], extent=(0, seconds, 0, sample_rate / 2000),
              interpolation="nearest")
    ax.set_xlabel("s", fontsize=7, labelpad=1)
    ax.set_ylabel("kHz", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=7, length=2, pad=1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;
background:#f6f6f4}
header{background:#20232a;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px;font-size:22px}
header p{margin:2px 0;color:#d8d8d8;max-width:1100px}
nav{padding:8px 28px;background:#e9e9e5;font-size:13px}
nav a{margin-right:14px;color:#264d8c}
section{padding:10px 28px 18px;border-bottom:1px solid #ddd}
h2{font-size:18px;margin:14px 0 4px}
.text{color:#555;margin:0 0 10px;white-space:pre-wrap}
table{border-collapse:collapse;background:#fff;margin:8px 0 14px;font-size:13px}
th,td{padding:4px 9px;border-bottom:1px solid #e3e3e3;text-align:right}
th{background:#f0f0ec;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
caption{caption-side:bottom;text-align:left;color:#666;font-size:12px;padding-top:4px}
figure{margin:8px 0 14px;background:#fff;display:inline-block;padding:8px;
border:1px solid #e3e3e3}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#666;font-size:12px;margin-top:4px}
.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(410px,1fr));gap:12px}
.clip{background:#fff;border:1px solid #e0e0dc;border-radius:6px;padding:8px 10px}
.clip h3{font-size:14px;margin:0 0 4px;display:flex;justify-content:space-between;gap:8px}
.rate{font-weight:normal;color:#264d8c;white-space:nowrap;font-size:13px}
.clip audio{width:100%;height:34px}
.clip img{width:100%;height:auto;display:block;margin-top:4px}
.caption{color:#555;font-size:12px;margin:3px 0 0}
"""

# Pause every other player when one starts, so clips are heard one at a time.
_SCRIPT = """
document.addEventListener("play", function (e) {
  document.querySelectorAll("audio").forEach(function (a) { if (a !== e.target) a.pause(); });
}, true);
"""


def _fmt_cell(value, digits: int) -> str:
    if digits < 0 or not isinstance(value, (int, float)) or isinstance(value, bool):
        return html.escape("" if value is None else str(value))
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _rate_text(kbps: float | None, compression: float | None) -> str:
    parts = []
    if kbps is not None and math.isfinite(kbps):
        parts.append(f"{kbps:.2f} kbps" if kbps < 100 else f"{kbps:.0f} kbps")
    if compression is not None and math.isfinite(compression):
        parts.append(f"{compression:.0f}× smaller" if compression > 1.5 else
                     f"{compression:.1f}×")
    return " · ".join(parts)


_MARKER = ".speechcodec-page"


class _Assets:
    """Turns media bytes into URLs: data: URLs, or files in a folder beside the page."""

    def __init__(self, page: Path, embed: bool) -> None:
        self.embed = embed
        self.folder = page.parent / f"{page.stem}_files"
        self.count = 0
        if not embed:
            marker = self.folder / _MARKER
            if self.folder.exists():
                if not marker.exists():  # never delete a folder this module did not make
                    raise FileExistsError(f"{self.folder}: exists and was not made by a "
                                          "listening page; move it or choose another name")
                shutil.rmtree(self.folder)
            self.folder.mkdir()
            marker.write_text("media of a speechcodec listening page; rewritten with it\n")

    def url(self, data: bytes, mime: str, ext: str) -> str:
        if self.embed:
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        self.count += 1
        name = f"{self.count:04d}.{ext}"
        (self.folder / name).write_bytes(data)
        return f"{self.folder.name}/{name}"


def _image_bytes(png: bytes | str | os.PathLike) -> bytes:
    return png if isinstance(png, bytes) else Path(png).read_bytes()


def _image_html(img: Image, assets: _Assets) -> str:
    src = assets.url(_image_bytes(img.png), "image/png", "png")
    cap = f"<figcaption>{html.escape(img.caption)}</figcaption>" if img.caption else ""
    return (f'<figure><img src="{src}" alt="{html.escape(img.title)}" '
            f'title="{html.escape(img.title)}">{cap}</figure>')


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt_cell(r.get(k), d)}</td>" for k, _, d in t.columns)
                   + "</tr>" for r in t.rows)
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _clip_html(c: Clip, assets: _Assets) -> str:
    src = assets.url(wav_bytes(c.samples, c.sample_rate), "audio/wav", "wav")
    rate = _rate_text(c.kbps, c.compression)
    parts = [f'<div class="clip"><h3><span>{html.escape(c.title)}</span>'
             f'<span class="rate">{html.escape(rate)}</span></h3>',
             f'<audio controls preload="metadata" src="{src}"></audio>']
    if c.spectrogram:
        spec = assets.url(spectrogram_png(c.samples, c.sample_rate), "image/png", "png")
        parts.append(f'<img class="spec" src="{spec}" alt="spectrogram of '
                     f'{html.escape(c.title)}">')
    if c.caption:
        parts.append(f'<p class="caption">{html.escape(c.caption)}</p>')
    for img in c.images:
        parts.append(_image_html(img, assets))
    parts.append("</div>")
    return "".join(parts)


def make_listen_page(sections: list[Section], out_path: str | os.PathLike,
                     title: str = "speechcodec listening page", intro: str = "",
                     embed: bool = True) -> Path:
    """Write the page (atomically) and return its path.

    Args:
        sections: the page's parts, in order.
        out_path: the HTML file to write; its folder must exist.
        title: page heading.
        intro: text under the heading; each line becomes a paragraph.
        embed: put every clip and image inside the page (True) or in `<name>_files/`.
    """
    out = Path(out_path)
    assets = _Assets(out, embed)
    body = []
    for n, s in enumerate(sections):
        part = [f'<section id="s{n}"><h2>{html.escape(s.title)}</h2>']
        if s.text:
            part.append(f'<p class="text">{html.escape(s.text)}</p>')
        part += [_table_html(t) for t in s.tables]
        part += [_image_html(i, assets) for i in s.images]
        if s.clips:
            part.append('<div class="clips">' + "".join(_clip_html(c, assets) for c in s.clips)
                        + "</div>")
        part.append("</section>")
        body.append("".join(part))
    nav = "".join(f'<a href="#s{n}">{html.escape(s.title)}</a>' for n, s in enumerate(sections))
    intro_html = "".join(f"<p>{html.escape(line)}</p>" for line in intro.splitlines() if line)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<header><h1>{html.escape(title)}</h1>{intro_html}</header>"
        f"<nav>{nav}</nav>\n" + "\n".join(body) +
        f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
