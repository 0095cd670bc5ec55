"""Coverage-guided fuzzing of the packet parser (and of the receiver's intake) with atheris.

Run through ``scripts/fuzz_packet`` (which installs atheris if needed)::

    scripts/fuzz_packet --minutes 5                  # the packet parser
    scripts/fuzz_packet --minutes 2 --target receiver  # Receiver.receive on datagram sequences

The parent process writes a seed corpus of valid packets (media and END, with and without an
authentication tag), runs libFuzzer in a child process for the given time, and prints the
executions, coverage and findings. A finding is any input that makes the target raise
something other than :class:`~speechcodec.packet.PacketError`, break an invariant, run longer
than ``--input-timeout`` seconds or use more than ``--rss-mb`` MB; libFuzzer saves it under the
output folder and the run exits with status 1.

Targets:

* ``packet``: the first input byte picks a mode (with or without a key; CRC and tag as sent or
  made correct, so the fuzzer also gets past the checksum); the rest is parsed. Checks: a
  PacketError has a one-line message; a parsed packet re-serializes to exactly the input (parse
  is canonical); ``is_end_packet`` agrees with the parse.
* ``receiver``: the input is a sequence of datagrams (length-prefixed), each with a source
  address and an arrival time, fed to a fresh :class:`~speechcodec.receiver.Receiver` of a
  small random model with a 64-frame buffer. Checks: a known status for every datagram, the
  counters add up, the buffer never holds more than its window, END only inside the window.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = b"fuzzing key, 32 bytes long......"
SOURCES = (("127.0.0.1", 40000), ("127.0.0.1", 40001), ("10.0.0.1", 40000))


# --------------------------------------------------------------------------------------------
# Targets (run in the worker)
# --------------------------------------------------------------------------------------------


def _fix(body: bytes, key: bytes | None) -> bytes:
    """``body`` (a packet without its CRC, and without its tag if it claims one) with a correct
    tag (if its AUTH flag is set and there is a key) and CRC appended."""
    from speechcodec.packet import FLAG_AUTH, auth_tag, crc16

    if key is not None and body and body[0] & FLAG_AUTH:
        body += auth_tag(key, body)
    return body + struct.pack(">H", crc16(body))


def packet_target(data: bytes) -> None:
    from speechcodec.packet import PacketError, is_end_packet, parse_packet, serialize_packet

    if not data:
        return
    mode, body = data[0], data[1:]
    key = KEY if mode & 1 else None
    if mode & 2:
        body = _fix(body, key)
    try:
        p = parse_packet(body, key)
    except PacketError as e:
        msg = str(e)
        if not msg or "\n" in msg:
            raise AssertionError(f"bad error message {msg!r}") from None
        return
    again = serialize_packet(p, key)
    if again != body:
        raise AssertionError(f"non-canonical packet accepted: {body.hex()} -> {p!r}")
    if p.is_end and not is_end_packet(body):
        raise AssertionError("an END packet that is_end_packet does not recognise")


_RX = {}


def _receiver_codec():
    if "codec" not in _RX:
        import torch

        from speechcodec.config import CodecConfig
        from speechcodec.model import Codec

        torch.manual_seed(0)
        cfg = CodecConfig(encoder_width=16, encoder_blocks=1, decoder_width=16,
                          decoder_blocks_low=1, decoder_blocks_high=1, latent_dim=8,
                          codebook_size=64, num_codebooks=4)
        _RX["codec"] = Codec(cfg).eval()
    return _RX["codec"]


_STATUSES = {"ok", "end", "oversized", "wrong_peer", "corrupted", "auth_failed", "malformed",
             "rejected", "out_of_window", "duplicate", "late"}


def receiver_target(data: bytes) -> None:
    """Datagrams: [flags u8][len u8][bytes]...; flags: bit 0-1 source, bit 2 fix CRC/tag,
    bits 3-7 time step in 5 ms. The first byte of the whole input picks the key (bit 0)."""
    from speechcodec.receiver import Receiver

    if not data:
        return
    key = KEY if data[0] & 1 else None
    rx = Receiver(_receiver_codec(), 0.04, key=key, max_buffer=64)
    pos, t, n = 1, 0.0, 0
    while pos + 2 <= len(data):
        flags, size = data[pos], data[pos + 1]
        body = data[pos + 2: pos + 2 + size]
        pos += 2 + size
        if flags & 4:
            body = _fix(body, key)
        t += (flags >> 3) * 0.005
        if int(t / 0.02) > rx.next_frame:  # time passes: frames are played
            before, rx.next_frame = rx.next_frame, int(t / 0.02)
            _skip_played(rx, before)
        status = rx.receive(body, t, SOURCES[flags & 3 if flags & 3 < 3 else 0])
        n += 1
        if status not in _STATUSES:
            raise AssertionError(f"unknown status {status!r}")
        if rx.buffered_frames > 64:
            raise AssertionError(f"jitter buffer holds {rx.buffered_frames} > 64 frames")
        if rx.end_frame is not None and abs(rx.end_frame - rx.next_frame) > 64 + 64 * 4:
            raise AssertionError(f"END at frame {rx.end_frame}, playout at {rx.next_frame}")
    s = rx.stats
    refused = (s.packets_used + s.packets_late + s.packets_duplicated + s.packets_corrupted
               + s.packets_malformed + s.packets_auth_failed + s.packets_rejected
               + s.packets_out_of_window + s.packets_oversized + s.packets_wrong_peer)
    if s.datagrams != n or refused > n:
        raise AssertionError(f"counters do not add up: {s}")


def _skip_played(rx, before: int) -> None:
    """Drop the frames the playout clock has passed since frame ``before``, as playing them
    would (without decoding: the intake logic is what is fuzzed here)."""
    for store in (rx._codes, rx._fec):
        for i in range(max(before, rx.next_frame - 64), rx.next_frame):
            store.pop(i)


TARGETS = {"packet": packet_target, "receiver": receiver_target}


def worker(target: str, libfuzzer_args: list[str]) -> None:
    import atheris
    import numpy  # noqa: F401 (imported first: only our own modules are instrumented)

    ours = ["speechcodec.bitstream", "speechcodec.packet"]
    if target == "receiver":
        _receiver_codec()  # torch and the model, uninstrumented
        ours.append("speechcodec.receiver")
    with atheris.instrument_imports(include=ours):
        import speechcodec.bitstream
        import speechcodec.packet
        if target == "receiver":
            import speechcodec.receiver  # noqa: F401
    atheris.Setup([sys.argv[0], *libfuzzer_args], TARGETS[target])
    atheris.Fuzz()


# --------------------------------------------------------------------------------------------
# Seeds and the parent process
# --------------------------------------------------------------------------------------------


def seed_corpus(folder: Path, target: str) -> int:
    """Valid packets in every shape, so the fuzzer starts past the checksum."""
    import numpy as np

    from speechcodec.packet import EndOfStream, Packet, serialize_packet

    rng = np.random.default_rng(0)
    packets = []
    for bits, k, c, f, d in ((10, 6, 3, 1, 1), (10, 3, 0, 1, 1), (6, 4, 2, 2, 1), (1, 1, 1, 1, 1),
                             (16, 2, 0, 3, 1), (10, 6, 3, 1, 2), (4, 3, 1, 2, 4)):
        codes = rng.integers(0, 1 << bits, (k, f))
        fec = rng.integers(0, 1 << bits, (d * c, f))
        packets.append(Packet(int(rng.integers(65536)), 320 * int(rng.integers(1000)), codes,
                              fec, codebook_bits=bits, fec_depth=d))
    packets.append(Packet(7, 3200, codebook_bits=10, end=EndOfStream(3000, 48000, 9000)))
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    if target == "packet":
        for p in packets:
            for key in (None, KEY):
                data = serialize_packet(p, key)
                mode = 1 if key else 0
                for fixed in (0, 2):
                    body = data if not fixed else data[:-2 - (10 if key else 0)]
                    (folder / f"seed-{n:03d}").write_bytes(bytes([mode | fixed]) + body)
                    n += 1
    else:
        small = [Packet(i, 320 * i, rng.integers(0, 64, (3, 1)), codebook_bits=6)
                 for i in range(6)]
        small.append(Packet(6, 320 * 6, codebook_bits=6, end=EndOfStream(1500, 16000, 1500)))
        for key in (None, KEY):
            stream = bytearray([1 if key else 0])
            for p in small:
                d = serialize_packet(p, key)
                stream += bytes([4 << 3, len(d)]) + d
            (folder / f"seed-{n:03d}").write_bytes(bytes(stream))
            n += 1
    return n


_STATS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+)")
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/fuzz_packet", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0, help="how long to fuzz (default 1)")
    p.add_argument("--runs", type=int, help="stop after this many inputs instead")
    p.add_argument("--target", choices=sorted(TARGETS), default="packet")
    p.add_argument("--corpus", type=Path, help="corpus folder, kept between runs (default: a "
                                               "temporary one, seeded anew)")
    p.add_argument("--out", type=Path, help="where findings are saved (default: a temporary "
                                            "folder, kept only if there are findings)")
    p.add_argument("--input-timeout", type=int, default=5,
                   help="seconds one input may take before it counts as a hang (default 5)")
    p.add_argument("--rss-mb", type=int, default=2048, help="memory limit (default 2048 MB)")
    p.add_argument("--seed", type=int, default=1, help="libFuzzer seed (default 1)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.worker:
        worker(args.target, rest)
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz_packet: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz_{args.target}_"))
    corpus = args.corpus or tmp / "corpus"
    out = args.out or tmp / "findings"
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed_corpus(corpus, args.target) if not any(corpus.glob("*")) else 0
    budget = max(1, round(args.minutes * 60))
    cmd = [sys.executable, __file__, "--worker", "--target", args.target, str(corpus),
           f"-max_total_time={budget}", f"-timeout={args.input_timeout}",
           f"-rss_limit_mb={args.rss_mb}", f"-seed={args.seed}",
           f"-max_len={4096 if args.target == 'packet' else 1024}",
           f"-artifact_prefix={out}{os.sep}", "-print_final_stats=1"]
    if args.runs:
        cmd.append(f"-runs={args.runs}")
    print(f"fuzzing the {args.target} target for "
          f"{f'{args.runs} runs' if args.runs else f'{args.minutes:g} min'}; corpus {corpus} "
          f"({seeds} seeds)", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    last, done, tail = None, None, []
    for line in proc.stdout:
        tail = [*tail[-40:], line]
        m = _STATS.match(line)
        if m:
            last = m
        d = _DONE.match(line)
        if d:
            done = d
    rc = proc.wait()
    wall = time.monotonic() - t0
    findings = sorted(f for f in out.iterdir() if f.is_file())
    execs = int(done.group(1)) if done else int(last.group(1)) if last else 0
    cov = f"coverage {last.group(3)} edges, {last.group(4)} features, corpus {last.group(5)}" \
        if last else "no coverage figures"
    print(f"executions   {execs} in {wall:.0f} s ({execs / max(wall, 1e-9):.0f}/s)")
    print(f"coverage     {cov}")
    if findings or rc != 0:
        print(f"findings     {len(findings)} (libFuzzer exit {rc}); saved in {out}:")
        for f in findings:
            print(f"  {f.name} ({f.stat().st_size} bytes)")
        print("".join(tail[-25:]), end="")
        return 1
    print("findings     0")
    if args.out is None and args.corpus is None:
        shutil.rmtree(tmp, ignore_errors=True)
    elif args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
