"""Coverage-guided fuzzing of the stream-file parser (speechcodec/bitstream.py) with atheris.

Run it through ``scripts/fuzz_stream --minutes N``. This process writes a seed corpus of real
streams, runs libFuzzer in a child process (``--worker``) for the time given, and prints the
executions, the coverage reached and the findings.

The first input byte picks how the rest is used, so the fuzzer explores past the checksums:

* 0: the bytes as they are;
* 1: the bytes with the header CRC and the payload CRC recomputed where the header says they
  are (so the field, length and padding checks run on mutated headers);
* 2: fields, model id and payload drawn from the bytes and assembled with correct CRCs; a
  control byte picks which rules to break, so most of these streams are valid.

A finding is an input that makes the parser raise anything but ``StreamError``, give a
``StreamError`` whose message is not one short line, accept something that does not
re-serialize to exactly the same bytes (or that ``peek_header`` reads differently), run longer
than ``--input-timeout`` seconds, or use more than ``--rss-mb`` MB. libFuzzer saves each one
in the output folder, and the run exits with status 1.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = 3
FINDING_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


# --------------------------------------------------------------------------------------------
# The target (runs in the worker)
# --------------------------------------------------------------------------------------------


def _recompute_crcs(body: bytes) -> bytes:
    """Make the header CRC and the payload CRC of ``body`` right, where its header puts them."""
    out = bytearray(body)
    if len(out) < 8:
        return bytes(out)
    header_len = struct.unpack_from("<H", out, 6)[0]
    if 4 <= header_len <= len(out):
        struct.pack_into("<I", out, header_len - 4, zlib.crc32(bytes(out[:header_len - 4])))
        if len(out) >= header_len + 4:
            payload = bytes(out[header_len:-4])
            struct.pack_into("<I", out, len(out) - 4, zlib.crc32(payload))
    return bytes(out)


def _assemble(data: bytes) -> bytes:
    """A stream whose fields, model id and payload come from ``data``, with correct CRCs.

    The first byte says which rules to break, if it is 0xC0 or more (bit 0: model id bytes as
    they are, else mapped to printable ASCII; bit 1: rates and frame size as they are, else
    nonzero; bit 2: payload as it is, else sized as the fields require; bit 3: nonzero flags;
    bit 4: padding bits as they are, else cleared). Otherwise the stream is valid, so the fuzzer
    spends most of its time on streams that get all the way through the parser.
    """
    from speechcodec.bitstream import FORMAT_VERSION, MAGIC

    fields = data[:31].ljust(31, b"\0")
    (rules, k, bits, frames, num_samples, original_rate, sample_rate, frame_size,
     id_len) = struct.unpack("<BBBBQIIHB", fields[:23])
    weights_hash = fields[23:31]
    rest = data[31:]
    model_id = rest[:id_len % 48]
    payload = rest[id_len % 48:]
    bits %= 17
    if rules < 0xC0:  # three times in four: break nothing
        rules = 0
    if not rules & 1:
        model_id = bytes(0x20 + b % 95 for b in model_id) or b"m"
    if not rules & 2:
        sample_rate, frame_size = sample_rate or 1, frame_size or 1
        original_rate = original_rate or 1
    if not rules & 4:
        size = (k * bits * frames + 7) // 8
        payload = (payload * (size // max(1, len(payload)) + 1))[:size].ljust(size, b"\0")
        pad = size * 8 - k * bits * frames
        if pad and not rules & 16:
            payload = payload[:-1] + bytes([payload[-1] & (0xFF << pad) & 0xFF])
    header_len = 49 + len(model_id)
    body = (MAGIC + bytes([FORMAT_VERSION, (rules >> 3) & 1]) + struct.pack("<H", header_len)
            + struct.pack("<IHBBIQI", sample_rate, frame_size, k, bits, frames, num_samples,
                          original_rate)
            + weights_hash + struct.pack("<IB", len(payload), len(model_id)) + model_id)
    return (body + struct.pack("<I", zlib.crc32(body)) + payload
            + struct.pack("<I", zlib.crc32(payload)))


def stream_target(data: bytes) -> None:
    from speechcodec.bitstream import StreamError, parse_stream, peek_header, serialize_stream

    mode = data[0] % MODES if data else 0
    body = data[1:]
    if mode == 1:
        body = _recompute_crcs(body)
    elif mode == 2:
        body = _assemble(body)
    try:
        stream = parse_stream(body)
    except StreamError as exc:
        text = str(exc)
        if not text or "\n" in text or len(text) > 300:
            raise AssertionError(f"bad StreamError message: {text!r}") from None
        return
    if serialize_stream(stream.header, stream.codes) != body:
        raise AssertionError("accepted a stream that does not re-serialize to the same bytes")
    if peek_header(body) != stream.header:
        raise AssertionError("peek_header disagrees with parse_stream")


def worker(libfuzzer_args: list[str]) -> None:
    import atheris
    import numpy  # noqa: F401  (imported before instrumenting: only our code is traced)

    with atheris.instrument_imports(include=["speechcodec"]):
        import speechcodec.bitstream  # noqa: F401

    atheris.Setup([sys.argv[0], *libfuzzer_args], lambda data: stream_target(bytes(data)))
    atheris.Fuzz()


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def seed_corpus(folder: Path) -> int:
    """Real streams of several shapes, each under every mode byte."""
    import numpy as np

    from speechcodec.bitstream import StreamHeader, serialize_stream

    rng = np.random.default_rng(0)
    seeds = []
    for k, bits, frames, model_id in [(3, 10, 2, "speechcodec-base-v1"), (6, 10, 7, "m"),
                                      (12, 10, 1, "x" * 40), (1, 1, 5, "bits"),
                                      (2, 16, 3, "wide"), (5, 3, 0, "empty")]:
        header = StreamHeader(model_id=model_id, weights_hash="14aef8d43adcbe3b",
                              sample_rate=16000, frame_size=320, num_codebooks=k,
                              codebook_bits=bits, num_frames=frames, num_samples=frames * 137,
                              original_sample_rate=44100)
        codes = rng.integers(0, 1 << bits, size=(k, frames))
        seeds.append(serialize_stream(header, codes))
    count = 0
    for i, seed in enumerate(seeds):
        for mode in range(MODES):
            (folder / f"seed_{i}_{mode}").write_bytes(bytes([mode]) + seed)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="scripts/fuzz_stream", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    p.add_argument("--out", help="folder for the corpus and findings (default: a temporary one,"
                                 " kept only if something is found)")
    p.add_argument("--input-timeout", type=int, default=5,
                   help="seconds one input may take before it counts as a finding (default 5)")
    p.add_argument("--rss-mb", type=int, default=1024,
                   help="memory limit of the fuzzing process in MB (default 1024)")
    p.add_argument("--seed", type=int, default=1, help="libFuzzer seed (default 1)")
    args = p.parse_args(argv)

    temporary = args.out is None
    out = Path(args.out or tempfile.mkdtemp(prefix="fuzz_stream_"))
    corpus, findings_dir = out / "corpus", out / "findings"
    corpus.mkdir(parents=True, exist_ok=True)
    findings_dir.mkdir(exist_ok=True)
    seeds = seed_corpus(corpus)
    budget = max(1, round(args.minutes * 60))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(corpus),
           f"-max_total_time={budget}", f"-timeout={args.input_timeout}",
           f"-rss_limit_mb={args.rss_mb}", f"-seed={args.seed}", "-print_final_stats=1",
           f"-artifact_prefix={findings_dir}/", "-max_len=4096"]
    log = out / "libfuzzer.log"
    print(f"fuzzing the stream parser for {args.minutes:g} min ({seeds} seeds)", flush=True)
    started = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")

    def stat(name: str) -> str:
        m = re.findall(rf"stat::{name}:\s*(\d+)", text)
        return m[-1] if m else "?"

    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", text)
    findings = sorted(p for p in findings_dir.iterdir() if p.name.startswith(FINDING_PREFIXES))
    print(f"executions   {stat('number_of_executed_units')} in {elapsed:.0f} s "
          f"({stat('average_exec_per_sec')}/s)")
    if cov:
        edges, features, corp = cov[-1]
        print(f"coverage     {edges} edges, {features} features, corpus {corp} inputs")
    print(f"peak memory  {stat('peak_rss_mb')} MB")
    if findings:
        print(f"findings     {len(findings)} (libFuzzer exit {rc}), saved in {findings_dir}; "
              f"log {log}:")
        for path in findings:
            print(f"  {path.name}  ({path.stat().st_size} bytes)")
        for line in text.splitlines():
            if line.startswith(("==", "Traceback", " ===")) or "Error" in line:
                print(f"  | {line}")
        return 1
    if rc != 0:
        print(f"libFuzzer exited with status {rc} without a saved finding; see {log}")
        return 1
    print("findings     none")
    if temporary:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
