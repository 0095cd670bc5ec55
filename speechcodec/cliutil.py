"""Helpers shared by the command-line subcommands: user errors, output checks, reports."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 1, no traceback."""


def check_output(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing file without `-f`, and fail early on a missing folder."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: is a directory; give an output file name")
    if p.exists() and not force:
        raise UserError(f"{p}: already exists (use -f to overwrite)")
    if not p.parent.exists() if str(p.parent) else False:
        raise UserError(f"{p}: folder '{p.parent}' does not exist")
    return p


def parse_kbps_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--kbps expects numbers like 1.5,3,6, got '{text}'") from None
    if not values:
        raise UserError("--kbps needs at least one bitrate")
    return values


def check_kbps(codec, *rates: float) -> list[int]:
    """The codebook count for each bitrate; an unsupported one is a UserError that lists the
    rates the model offers."""
    try:
        return [codec.cfg.codebooks_for_kbps(r) for r in rates]
    except ValueError as e:
        raise UserError(str(e)) from None


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def print_json(obj) -> None:
    json.dump(_clean(obj), sys.stdout, indent=2)
    sys.stdout.write("\n")


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def print_table(rows: list[dict], columns: list[tuple[str, str, int]], file=None) -> None:
    """Print `rows` as an aligned text table; columns are (key, header, decimals)."""
    file = file or sys.stdout
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([fmt(row.get(k), d) if isinstance(row.get(k), (int, float)) and d >= 0
                      else str(row.get(k, "")) for k, _, d in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)), file=file)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=file)
