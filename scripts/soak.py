"""Soak test: a long call over UDP on 127.0.0.1 through a lossy, jittery, hostile network.

Run through ``scripts/soak``::

    scripts/soak                 # 10 minutes of speech, in real time (about 10.5 min)
    scripts/soak --minutes 0.2   # a short run
    scripts/soak --fast          # the sender does not wait for real time

The clips in ``samples/`` are tiled to the requested duration and sent by ``speechcodec send``
(3 kbps, FEC 3 codebooks, authenticated with a key from the environment) to a ``speechcodec
relay`` (20 % Gilbert-Elliott loss with mean bursts of 3 packets, 30 ms jitter, and junk
datagrams from its own address: the peer's), which forwards to ``speechcodec receive`` (key from
a file). Meanwhile a stranger's socket sends the receiver junk and forged packets. The
receiver's resident memory is sampled all along.

It passes when every process exits 0 without a traceback, the receiver stops at the end of the
stream, the output has exactly the input's length, every junk datagram is refused, and the
receiver's memory at the end is within ``--rss-slack`` MB of its memory once the call is under
way. Everything is killed, and the soak fails, if it runs past its time bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechcodec.audio import load_audio  # noqa: E402
from speechcodec.cli_net import parse_duration, parse_fraction  # noqa: E402
from speechcodec.packet import Packet, serialize_packet  # noqa: E402
from speechcodec.transport import KEY_ENV  # noqa: E402

RATE = 16000


def build_input(minutes: float, path: Path) -> int:
    """The samples/ clips, 0.3 s apart, tiled to exactly `minutes`; written as 16-bit WAV."""
    clips = [load_audio(p).samples for p in sorted((ROOT / "samples").glob("*.wav"))]
    gap = np.zeros(int(0.3 * RATE), np.float32)
    one = np.concatenate([x for c in clips for x in (c, gap)])
    n = max(1, round(minutes * 60 * RATE))
    x = np.tile(one, -(-n // len(one)))[:n]
    sf.write(path, x, RATE, subtype="PCM_16")
    return n


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Proc:
    """A speechcodec subprocess whose stdout and stderr are collected by threads."""

    def __init__(self, name: str, argv: list[str], env: dict) -> None:
        self.name = name
        self.p = subprocess.Popen([sys.executable, "-m", "speechcodec", *argv], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_for(self, word: str, deadline: float) -> bool:
        while time.monotonic() < deadline and self.p.poll() is None:
            if any(word in line for line in self.err):
                return True
            time.sleep(0.05)
        return any(word in line for line in self.err)

    def finish(self, deadline: float) -> int | None:
        try:
            self.p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None
        for t in self._threads:
            t.join(5)
        return self.p.returncode

    def json(self) -> dict:
        try:
            return json.loads("".join(self.out))
        except ValueError:
            return {}

    def traceback(self) -> bool:
        return any("Traceback" in line for line in self.err)


def stranger(addr: tuple[str, int], rate: float, stop: threading.Event, start: threading.Event,
             counts: dict, seed: int) -> None:
    """Junk from another socket: random bytes, oversized datagrams and well-formed packets
    (no tag) for about the current frame, `rate` per second, once `start` is set, until `stop`
    is set or the receiver has closed its socket (loopback then answers "connection
    refused")."""
    rng = np.random.default_rng(seed + 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.connect(addr)
        if not start.wait() or stop.is_set():
            return
        t0 = time.monotonic()
        nxt = t0
        while not stop.is_set():
            nxt += rng.exponential(1 / rate)
            if stop.wait(max(0.0, nxt - time.monotonic())):
                break
            kind = ("random", "oversized", "forged")[int(rng.integers(3))]
            if kind == "random":
                data = rng.bytes(int(rng.integers(1, 100)))
            elif kind == "oversized":
                data = rng.bytes(int(rng.integers(9000, 30000)))
            else:
                frame = int((time.monotonic() - t0) * 50) + 50
                data = serialize_packet(Packet(int(rng.integers(65536)), frame * 320 % 2**32,
                                               rng.integers(0, 1024, (6, 1)), codebook_bits=10))
            try:
                s.send(data)
            except ConnectionRefusedError:  # the receiver is gone (the last one was lost)
                counts["refused_at"] = time.monotonic()
                return
            except OSError:
                counts["send_failed"] = counts.get("send_failed", 0) + 1
                continue
            counts[kind] = counts.get(kind, 0) + 1
            counts.setdefault("times", []).append(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="speech to send (default 10)")
    p.add_argument("--fast", action="store_true",
                   help="the sender sends as fast as it encodes (the receiver still plays in "
                        "real time until the end of the stream arrives)")
    p.add_argument("--kbps", default="3")
    p.add_argument("--fec", default="3")
    p.add_argument("--fec-depth", default="1", help="FEC copies of this many packets (default 1)")
    p.add_argument("--loss", default="20%")
    p.add_argument("--burst", default="3")
    p.add_argument("--jitter", default="30ms")
    p.add_argument("--playout-delay", default="80ms")
    p.add_argument("--garbage", default="1%",
                   help="junk datagrams per packet sent, half from the peer's address (the "
                        "relay), half from a stranger (default 1%%)")
    p.add_argument("--no-auth", action="store_true", help="send without authentication")
    p.add_argument("--model", help="model name or file (default: the shipped model)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rss-slack", type=float, default=24.0,
                   help="MB the receiver's memory may grow between the early and the last "
                        "sample (default 24)")
    p.add_argument("--out", type=Path, help="keep the input, output and logs in this folder")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    args = p.parse_args(argv)
    garbage = parse_fraction(args.garbage, "--garbage")
    parse_duration(args.jitter)

    t_start = time.monotonic()
    work = args.out or Path(tempfile.mkdtemp(prefix="soak_"))
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "input.wav", work / "output.wav"
    n = build_input(args.minutes, src)
    duration = n / RATE
    # A bound on the whole run: the call itself, the start of three processes, the tail.
    bound = (duration / (4 if args.fast else 1)) + 120 + 0.1 * duration
    deadline = t_start + bound

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(KEY_ENV, None)
    key_args, send_env = [], dict(env)
    if not args.no_auth:
        key = secrets.token_hex(32)
        key_file = work / "call.key"
        key_file.touch(mode=0o600)
        key_file.write_text(key + "\n")
        key_args = ["--key-file", str(key_file)]
        send_env[KEY_ENV] = key
    model = ["--model", args.model] if args.model else []
    rx_port, relay_port = free_port(), free_port()
    print(f"soak: {duration / 60:.2f} min of speech, {'fast' if args.fast else 'real-time'} "
          f"sender, bound {bound:.0f} s, in {work}", flush=True)

    procs: list[Proc] = []
    stop, started, quiet = threading.Event(), threading.Event(), threading.Event()
    junk: dict = {}
    samples: list[tuple[float, float]] = []
    result: dict = {"failures": []}

    def fail(why: str) -> None:
        result["failures"].append(why)
        print(f"soak: FAIL: {why}", flush=True)

    try:
        rx = Proc("receiver", ["receive", str(out), "-f", "--listen", f"127.0.0.1:{rx_port}",
                               "--playout-delay", args.playout_delay, "--timeout", "5",
                               "--wait", "180", "--json", *key_args, *model], env)
        procs.append(rx)
        relay = Proc("relay", ["relay", "--listen", f"127.0.0.1:{relay_port}", "--to",
                               f"127.0.0.1:{rx_port}", "--loss", args.loss, "--burst",
                               args.burst, "--jitter", args.jitter, "--garbage",
                               f"{garbage / 2:.6f}", "--seed", str(args.seed), "--timeout",
                               "5", "--wait", "180", "--json"], env)
        procs.append(relay)
        if not (rx.wait_for("listening", deadline) and relay.wait_for("listening", deadline)):
            fail("receiver or relay did not start")
            raise SystemExit
        t_call = time.monotonic()

        def sample_rss():
            every = max(0.5, duration / 240)
            while not stop.is_set() and rx.p.poll() is None:
                v = rss_mb(rx.p.pid)
                if v is not None:
                    samples.append((time.monotonic() - t_call, v))
                if not started.is_set() and out.exists() and out.stat().st_size > 44 + 3200:
                    started.set()  # the receiver is playing: its peer is fixed
                stop.wait(every)

        threads = [threading.Thread(target=sample_rss, daemon=True),
                   threading.Thread(target=stranger, args=(("127.0.0.1", rx_port),
                                                          garbage / 2 * 50, quiet, started,
                                                          junk, args.seed), daemon=True)]
        for t in threads:
            t.start()
        send = Proc("sender", ["send", str(src), "--to", f"127.0.0.1:{relay_port}", "--kbps",
                               args.kbps, "--fec", args.fec, "--fec-depth", args.fec_depth,
                               "--json",
                               *(["--fast"] if args.fast else []), *model], send_env)
        procs.append(send)
        while send.p.poll() is None and rx.p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        quiet.set()  # the stranger stops when the call is over
        t_quiet = time.monotonic()
        codes = {pr.name: pr.finish(deadline) for pr in (send, relay, rx)}
        stop.set()
        started.set()
        for t in threads:
            t.join(10)
    except SystemExit:
        codes = {pr.name: None for pr in procs}
    finally:
        stop.set()
        quiet.set()
        started.set()
        for pr in procs:
            if pr.p.poll() is None:
                pr.p.kill()
                pr.p.wait()
    wall = time.monotonic() - t_start

    # -- checks -------------------------------------------------------------------------------
    for name, rc in codes.items():
        if rc is None:
            fail(f"{name} did not finish within the bound of {bound:.0f} s")
        elif rc != 0:
            fail(f"{name} exited with {rc}")
    for pr in procs:
        if pr.traceback():
            fail(f"{pr.name} printed a traceback:\n{''.join(pr.err[-15:])}")
    r, hop, sent = rx.json() if procs else {}, {}, {}
    if len(procs) > 1:
        hop = relay.json()
    if len(procs) > 2:
        sent = send.json()
    st = r.get("stats", {})
    got = sf.info(out).frames if out.exists() and out.stat().st_size > 44 else 0
    if r and r.get("stopped_by") != "end":
        fail(f"receiver stopped by {r.get('stopped_by')}, not by the end of the stream")
    if got != n:
        fail(f"output has {got} samples, input {n}")
    relay_junk = sum(hop.get("garbage_sent", {}).values())
    times = junk.pop("times", [])
    t_last = junk.pop("refused_at", None) or (t_quiet if "t_quiet" in locals() else math.inf)
    stranger_junk = sum(v for k, v in junk.items() if k != "send_failed")
    # What the stranger sent in the last second before it noticed the receiver had closed its
    # socket may have been queued behind the END packet, never read.
    unsure = sum(1 for t in times if t > t_last - 1)
    from_peer = sum(st.get(k, 0) for k in (
        "packets_oversized", "packets_malformed", "packets_corrupted", "packets_auth_failed",
        "packets_duplicated", "packets_out_of_window", "packets_rejected"))
    used = st.get("packets_used", 0)
    if st and not stranger_junk - unsure <= st.get("packets_wrong_peer", 0) <= stranger_junk:
        fail(f"{stranger_junk} datagrams from the stranger, {st.get('packets_wrong_peer')} "
             "refused as from the wrong peer")
    if st and from_peer + st.get("packets_late", 0) < relay_junk:
        fail(f"{relay_junk} junk datagrams from the peer's address, only "
             f"{from_peer + st.get('packets_late', 0)} refused")
    if sent and used > sent.get("packets_sent", 0):
        fail(f"{used} packets used, only {sent.get('packets_sent')} sent")
    # The receiver's memory during the call: from 5 % in (start-up and warm-up are over) to two
    # seconds before the sender finished (before the receiver winds up).
    t_stop = t_quiet - t_call - 2.0 if "t_quiet" in locals() else math.inf
    during = [(t, v) for t, v in samples if t <= t_stop]
    mem = {}
    if during:
        times = [t for t, _ in during]
        rss = [v for _, v in during]
        t_end = times[-1]

        def at(frac: float) -> float:
            i = min(range(len(times)), key=lambda j: abs(times[j] - frac * t_end))
            return rss[i]

        mem = {"start_mb": at(0.05), "middle_mb": at(0.5), "end_mb": rss[-1],
               "max_mb": max(rss), "after_mb": samples[-1][1], "samples": len(rss),
               "series": [(round(t, 1), round(v, 1)) for t, v in during[:: max(1, len(during)
                                                                               // 24)]]}
        if mem["end_mb"] - mem["start_mb"] > args.rss_slack:
            fail(f"receiver memory grew {mem['end_mb'] - mem['start_mb']:.1f} MB during the "
                 f"call (more than {args.rss_slack:g} MB)")
    else:
        fail("no memory samples of the receiver")

    summary = {
        "duration_s": duration, "input_samples": n, "output_samples": got, "wall_s": wall,
        "bound_s": bound, "fast": args.fast, "authenticated": not args.no_auth,
        "sender": sent, "relay": hop, "receiver": r, "stranger_junk": junk, "rss": mem,
        "failures": result["failures"], "passed": not result["failures"],
        "exit_codes": codes,
    }
    print_summary(summary, args)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    return 0 if summary["passed"] else 1


def print_summary(s: dict, args) -> None:
    sent, hop, r = s["sender"], s["relay"], s["receiver"]
    st = r.get("stats", {})
    rates = r.get("rates", {})
    total = sent.get("packets_sent", 0)
    dropped = hop.get("packets_dropped", 0)
    junk_relay = hop.get("garbage_sent", {})
    junk_stranger = {k: v for k, v in s["stranger_junk"].items() if k != "send_failed"}
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(junk_relay.items())) or "none"
    skinds = ", ".join(f"{k} {v}" for k, v in sorted(junk_stranger.items())) or "none"
    m = s["rss"]
    lines = [
        f"soak         {s['duration_s'] / 60:.2f} min of speech (samples/*.wav tiled), "
        f"{'fast' if s['fast'] else 'real-time'} sender, "
        f"{'authenticated' if s['authenticated'] else 'no authentication'}",
        f"channel      {hop.get('channel', '?')}, jitter {args.jitter}, "
        f"playout delay {args.playout_delay}",
        f"packets      sent {total}; relay dropped {dropped} "
        f"({dropped / max(total, 1):.1%}); receiver used {st.get('packets_used', 0)}, lost "
        f"{r.get('packets_lost')}, late {st.get('packets_late', 0)}",
        f"junk         {sum(junk_relay.values())} from the peer's address ({kinds}); "
        f"{sum(junk_stranger.values())} from a stranger ({skinds})",
        f"refused      wrong peer {st.get('packets_wrong_peer', 0)}, oversized "
        f"{st.get('packets_oversized', 0)}, malformed {st.get('packets_malformed', 0)}, "
        f"corrupted {st.get('packets_corrupted', 0)}, failed authentication "
        f"{st.get('packets_auth_failed', 0)}, replayed/duplicate "
        f"{st.get('packets_duplicated', 0)}, out of window "
        f"{st.get('packets_out_of_window', 0)}",
        f"frames       {st.get('frames_played', 0)}: decoded {st.get('frames_decoded', 0)}, "
        f"recovered by FEC {st.get('frames_recovered_fec', 0)}, concealed "
        f"{st.get('frames_concealed', 0)}; jitter buffer held at most "
        f"{r.get('max_buffered_frames', 0)} frames",
        f"rate         payload {rates.get('payload_kbps', 0):.2f} + FEC "
        f"{rates.get('fec_kbps', 0):.2f} + authentication {rates.get('auth_kbps', 0):.2f} kbps; "
        f"packets {rates.get('packet_kbps', 0):.2f} kbps",
        f"output       {s['output_samples'] / RATE:.3f} s ({s['output_samples']} samples); "
        f"input {s['duration_s']:.3f} s ({s['input_samples']} samples)",
        "memory       receiver RSS " + (f"start {m['start_mb']:.1f} MB, middle "
                                        f"{m['middle_mb']:.1f} MB, end {m['end_mb']:.1f} MB "
                                        f"(max {m['max_mb']:.1f} MB, {m['samples']} samples; "
                                        f"{m['after_mb']:.1f} MB at exit)"
                                        if m else "not measured"),
        f"processes    exit codes {', '.join(f'{k} {v}' for k, v in s['exit_codes'].items())}; "
        f"crashes {sum(1 for v in s['exit_codes'].values() if v != 0)}",
        f"wall         {s['wall_s']:.0f} s (bound {s['bound_s']:.0f} s)",
        f"result       {'PASS' if s['passed'] else 'FAIL: ' + '; '.join(s['failures'])}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
