"""Real UDP on 127.0.0.1: sender, relay and receiver as separate processes, timeouts,
interrupted calls, and the progressively written WAV file."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcodec.packet import packetize, serialize_packet
from speechcodec.pipeline import encode_samples
from speechcodec.transport import WavWriter, parse_address, receive_udp

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ignore_sigint() -> None:
    # As a shell's background job starts: SIGINT ignored, so Python installs no KeyboardInterrupt
    # handler of its own. The commands must still stop on SIGINT (see the interrupt test).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "speechcodec", *argv], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint)


def wait_for(proc: subprocess.Popen, word: str, timeout: float = 60.0) -> str:
    """Read the process's stderr until a line containing `word` (it is listening)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        if sel.select(timeout=0.5):
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if word in line:
                return line
    proc.kill()
    raise AssertionError(f"no '{word}' from {proc.args}: {''.join(seen)}")



def test_send_relay_receive_processes(model_file, talk, tmp_path):
    rx_port, relay_port = free_port(), free_port()
    out = tmp_path / "out.wav"
    procs = []
    try:
        rx = start("receive", str(out), "--listen", f"127.0.0.1:{rx_port}", "--model",
                   str(model_file), "--playout-delay", "60ms",
                   "--timeout", "5", "--wait", "90", "--json")
        procs.append(rx)
        relay = start("relay", "--listen", f"127.0.0.1:{relay_port}", "--to",
                      f"127.0.0.1:{rx_port}", "--loss", "10%", "--burst", "2", "--jitter",
                      "20ms", "--duplicate", "5%", "--seed", "3", "--timeout", "5", "--wait",
                      "90", "--json")
        procs.append(relay)
        wait_for(rx, "listening")
        wait_for(relay, "listening")
        send = subprocess.run(
            [sys.executable, "-m", "speechcodec", "send", str(talk), "--to",
             f"127.0.0.1:{relay_port}", "--model", str(model_file), "--kbps", "1.8", "--fec",
             "2", "--fec-depth", "2", "--fast", "--json"], cwd=ROOT, env=ENV, capture_output=True,
            text=True, timeout=120)
        assert send.returncode == 0, send.stderr
        sent = json.loads(send.stdout)
        rx_out, rx_err = rx.communicate(timeout=60)
        relay_out, relay_err = relay.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert rx.returncode == 0, rx_err
    assert relay.returncode == 0, relay_err
    got = json.loads(rx_out)
    hop = json.loads(relay_out)
    assert hop["stopped_by"] == "end" and hop["packets_in"] == sent["packets_sent"]
    assert hop["packets_dropped"] > 0
    assert got["stopped_by"] == "end" and got["packets_sent"] == sent["packets_sent"]
    assert got["packets_lost"] == hop["packets_dropped"]
    s = got["stats"]
    assert s["frames_played"] == sent["packets_sent"]
    assert s["frames_decoded"] + s["frames_recovered_fec"] + s["frames_concealed"] == \
        s["frames_played"]
    assert got["rates"]["payload_kbps"] == pytest.approx(1.8)
    # Two FEC copies of 2 codebooks each (of 6 sent): 1.2 kbps, on both ends.
    assert sent["fec_depth"] == got["fec_depth"] == 2
    assert got["rates"]["fec_kbps"] == pytest.approx(1.2)
    ref, rate = sf.read(talk)
    y, out_rate = sf.read(out)
    assert out_rate == rate and len(y) == len(ref) == got["num_samples"]


def _stream(tiny_codec, speech, frames: int | None = None) -> list[bytes]:
    codes = encode_samples(tiny_codec, speech, 3)
    pk = packetize(codes, tiny_codec.cfg.bits_per_code, 320)
    return [serialize_packet(p) for p in pk[:frames]]


def test_receiver_times_out_when_the_sender_vanishes(tiny_codec, speech, tmp_path):
    port = free_port()
    out = tmp_path / "cut.wav"
    ready = threading.Event()
    result = {}

    def run():
        result["r"] = receive_udp(tiny_codec, ("127.0.0.1", port), out, timeout=0.5, wait=30,
                                  on_ready=lambda _: ready.set())

    t = threading.Thread(target=run)
    t.start()
    assert ready.wait(30)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in _stream(tiny_codec, speech, frames=10):
            s.sendto(data, ("127.0.0.1", port))
    t.join(30)
    assert not t.is_alive()
    r = result["r"]
    assert r.stopped_by == "timeout" and r.packets_sent is None
    # Ten frames decoded; the frames that fell due while it waited were concealed.
    assert r.stats.frames_decoded == 10 and r.stats.frames_played >= 10
    y, rate = sf.read(out)
    assert rate == 16000
    assert len(y) == r.num_samples == r.stats.frames_played * 320 - 320  # minus the lookahead


def test_receiver_without_any_packet_stops_after_wait(tiny_codec, tmp_path):
    out = tmp_path / "nothing.wav"
    r = receive_udp(tiny_codec, ("127.0.0.1", free_port()), out, wait=0.2)
    assert r.stopped_by == "timeout" and r.num_samples == 0
    assert sf.info(out).frames == 0


def test_interrupted_receiver_keeps_what_arrived(model_file, tiny_codec, speech, tmp_path):
    port = free_port()
    out = tmp_path / "partial.wav"
    rx = start("receive", str(out), "--listen", f"127.0.0.1:{port}", "--model",
               str(model_file), "--playout-delay", "100ms", "--wait", "90", "--timeout", "90",
               "--json")  # only the interrupt may stop it, however busy the machine
    try:
        wait_for(rx, "listening")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            t0 = time.monotonic()
            for i, data in enumerate(_stream(tiny_codec, speech, frames=40)):  # in real time
                time.sleep(max(0.0, t0 + 0.02 * i - time.monotonic()))
                s.sendto(data, ("127.0.0.1", port))
        deadline = time.monotonic() + 30
        # Interrupt once all 40 frames are played (so all 40 packets were read): 39 frames'
        # samples after the 320-sample lookahead, as 16-bit PCM behind the 44-byte header.
        while out.stat().st_size < 44 + 2 * 39 * 320 and time.monotonic() < deadline:
            time.sleep(0.05)
        rx.send_signal(signal.SIGINT)
        stdout, stderr = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
    assert rx.returncode == 0, stderr
    got = json.loads(stdout)
    assert got["stopped_by"] == "interrupt"
    y, rate = sf.read(out)
    st = got["stats"]
    assert rate == 16000 and st["packets_arrived"] == 40
    assert st["frames_decoded"] + st["packets_late"] == 40 and st["frames_played"] >= 40
    assert len(y) == got["num_samples"] == got["stats"]["frames_played"] * 320 - 320


def test_interrupted_sender_hangs_up_and_the_receiver_keeps_what_was_sent(model_file, speech,
                                                                          tmp_path):
    """Ctrl-C on a real-time `send` (started as a background job, SIGINT ignored) still sends
    END for the frames already sent: the receiver ends the call at once ("end", not a timeout)
    and writes exactly that much audio."""
    talk = tmp_path / "long.wav"
    sf.write(talk, np.tile(speech, 6), 16000, subtype="PCM_16")  # about 8 s
    port = free_port()
    out = tmp_path / "cut.wav"
    rx = start("receive", str(out), "--listen", f"127.0.0.1:{port}", "--model",
               str(model_file), "--playout-delay", "60ms", "--wait", "90", "--timeout", "90",
               "--json")  # a timeout cannot end it in time: only END can
    tx = None
    try:
        wait_for(rx, "listening")
        tx = start("send", str(talk), "--to", f"127.0.0.1:{port}", "--model", str(model_file),
                   "--kbps", "3", "--json")
        deadline = time.monotonic() + 60
        while (not out.exists() or out.stat().st_size < 44 + 2 * 16000) and \
                time.monotonic() < deadline:  # a second of audio has arrived
            time.sleep(0.05)
        tx.send_signal(signal.SIGINT)
        tx_out, tx_err = tx.communicate(timeout=30)
        rx_out, rx_err = rx.communicate(timeout=30)
    finally:
        for p in (rx, tx):
            if p is not None and p.poll() is None:
                p.kill()
    assert tx.returncode == 0, tx_err
    assert rx.returncode == 0, rx_err
    sent, got = json.loads(tx_out), json.loads(rx_out)
    assert sent["interrupted"] and 1.0 <= sent["duration_s"] < 7.0
    assert sent["duration_s"] * 16000 == sent["packets_sent"] * 320
    # END counts only the packets sent (one made but not yet sent is not announced).
    assert got["stopped_by"] == "end" and got["packets_sent"] == sent["packets_sent"]
    assert got["packets_lost"] == 0
    y, rate = sf.read(out)
    assert rate == 16000 and len(y) == got["num_samples"] == sent["packets_sent"] * 320


def test_signals_held_until_the_block_ends():
    """Ctrl-C inside the sender's send-and-count block arrives after it, through the handler
    that was set before."""
    from speechcodec.transport import _signals_held

    steps = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with _signals_held():
            signal.raise_signal(signal.SIGINT)
            steps.append("counted")
    assert steps == ["counted"] and signal.getsignal(signal.SIGINT) is before
    with _signals_held():  # nothing caught: nothing raised
        steps.append("again")
    assert steps == ["counted", "again"]


def test_wav_writer_is_valid_after_every_write(tmp_path):
    path = tmp_path / "live.wav"
    w = WavWriter(path, 16000)
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (320, 1, 1000)]
    total = 0
    for c in chunks:
        w.write(c)
        total += len(c)
        # Read while the writer is still open (as after a crash): header sizes are right.
        y, rate = sf.read(path, dtype="int16")
        assert rate == 16000 and len(y) == total
    w.truncate(500)
    w.close()
    y, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(y, np.concatenate(chunks)[:500], atol=1 / 32768)


def test_parse_address():
    assert parse_address("127.0.0.1:5004") == ("127.0.0.1", 5004)
    assert parse_address(":6000") == ("127.0.0.1", 6000)
    assert parse_address("7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:5004") == ("::1", 5004)
    for bad in ("host:port", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_sender_paces_packets_in_real_time(tiny_codec, speech, monkeypatch):
    from speechcodec import transport

    now = [100.0]  # a fake clock that only moves when the sender sleeps
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(transport.time, "monotonic", lambda: now[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        r = transport.send_udp(tiny_codec, speech[:3200], 3, rx.getsockname(),
                               frames_per_packet=2, fec_codebooks=1, sleep=sleep)
        got = [rx.recv(2048) for _ in range(r.packets_sent + 3)]
    assert r.packets_sent == 6 and r.realtime  # 11 frames (10 + lookahead) in packets of 2
    # Each packet leaves when its last frame would have been captured; END repeats 20 ms apart.
    assert waits == pytest.approx([0.04] * 5 + [0.02] + [0.02, 0.02])
    assert sum(1 for d in got if d[0] & 0x1) == 3
    assert r.payload_kbps == pytest.approx(3 * tiny_codec.cfg.bits_per_code * 50 / 1000)
