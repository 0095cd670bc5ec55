"""The hardened receiver: peer filter, size limit, malformed, replayed and out-of-window
packets, a bounded jitter buffer under a flood, packet authentication and where its key comes
from. Unit tests drive a Receiver directly; the UDP tests run on 127.0.0.1 with short
timeouts."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechcodec.cli_net import add_commands
from speechcodec.cliutil import UserError
from speechcodec.packet import (
    MAX_FEC_DEPTH,
    TAG_SIZE,
    EndOfStream,
    Packet,
    crc16,
    max_packet_size,
    packetize,
    serialize_packet,
)
from speechcodec.pipeline import encode_samples
from speechcodec.receiver import SEQ_WINDOW, Receiver
from speechcodec.transport import (
    KEY_ENV,
    garbage_datagram,
    load_key,
    parse_peer,
    receive_udp,
    relay_udp,
    send_udp,
)

ROOT = Path(__file__).resolve().parents[1]
KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
K = 3
SENDER = ("127.0.0.1", 40000)
STRANGER = ("127.0.0.1", 40001)
STATUSES = {"ok", "end", "oversized", "wrong_peer", "corrupted", "auth_failed", "malformed",
            "rejected", "out_of_window", "duplicate", "late"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def clip(speech) -> np.ndarray:
    return speech[:8000]  # 0.5 s, 26 frames


@pytest.fixture
def codes(tiny_codec, clip) -> np.ndarray:
    return encode_samples(tiny_codec, clip, K)


def stream(codec, codes, key=None, fec=0, first_seq=0) -> list[bytes]:
    """The packets of `codes`, then END."""
    pk = packetize(codes, codec.cfg.bits_per_code, codec.cfg.frame_size, 1, fec, first_seq)
    n = codes.shape[1] * codec.cfg.frame_size - codec.cfg.output_delay
    end = Packet(pk[-1].seq + 1 & 0xFFFF, codes.shape[1] * codec.cfg.frame_size,
                 codebook_bits=codec.cfg.bits_per_code, end=EndOfStream(n, 16000, n))
    return [serialize_packet(p, key) for p in pk] + [serialize_packet(end, key)]


def play(rx: Receiver, datagrams) -> torch.Tensor:
    """Feed (data, time, source) triples; the latents played, [D, n]."""
    out = []
    for data, t, src in datagrams:
        z = rx.play_due(t)
        if z is not None:
            out.append(z)
        assert rx.receive(data, t, src) in STATUSES
    z = rx.finish()
    if z is not None:
        out.append(z)
    return torch.cat(out, dim=-1)[0]


def media(codec, seq, ts, value=1, k=K) -> Packet:
    return Packet(seq, ts, np.full((k, 1), value), codebook_bits=codec.cfg.bits_per_code)


def with_crc(body: bytes | bytearray) -> bytes:
    return bytes(body) + crc16(body).to_bytes(2, "big")


# -- peer -------------------------------------------------------------------------------------


def test_first_valid_packet_fixes_the_peer(tiny_codec, codes):
    rx = Receiver(tiny_codec)
    data = stream(tiny_codec, codes)
    # Junk before the stream does not fix anything.
    assert rx.receive(b"junk from a stranger", 0.0, STRANGER) == "corrupted"
    assert rx.peer is None
    assert rx.receive(data[0], 0.0, SENDER) == "ok"
    assert rx.peer == SENDER
    # Now a valid packet from anyone else is refused before it is parsed, and the sender's
    # own next packet is still welcome.
    assert rx.receive(data[1], 0.01, STRANGER) == "wrong_peer"
    assert rx.receive(data[1], 0.01, ("127.0.0.1", SENDER[1] + 7)) == "wrong_peer"
    assert rx.receive(data[1], 0.01, SENDER) == "ok"
    assert rx.stats.packets_wrong_peer == 2 and rx.stats.packets_used == 2


def test_configured_peer(tiny_codec, codes):
    data = stream(tiny_codec, codes)
    rx = Receiver(tiny_codec, peer=SENDER)
    assert rx.receive(data[0], 0.0, STRANGER) == "wrong_peer"  # even the very first packet
    assert rx.anchor is None
    assert rx.receive(data[0], 0.0, SENDER) == "ok"
    any_port = Receiver(tiny_codec, peer=("127.0.0.1", 0))
    assert any_port.receive(data[0], 0.0, STRANGER) == "ok"
    assert any_port.receive(data[1], 0.0, ("127.0.0.2", 40001)) == "wrong_peer"


def test_parse_peer():
    assert parse_peer("127.0.0.1:5005") == ("127.0.0.1", 5005)
    assert parse_peer("localhost") == ("127.0.0.1", 0)
    assert parse_peer("[::1]:7", socket.AF_INET6) == ("::1", 7)
    for bad in ("", ":5", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_peer(bad)


# -- size, damage, replay, windows --------------------------------------------------------------


def test_oversized_datagrams_are_refused_unparsed(tiny_codec):
    rx = Receiver(tiny_codec)
    limit = rx.max_packet_size
    cfg = tiny_codec.cfg
    assert limit == max_packet_size(cfg.num_codebooks, cfg.bits_per_code)
    # The largest packet this model can use is accepted...
    k = cfg.num_codebooks
    big = Packet(0, 0, np.ones((k, 255), int), np.ones((k * MAX_FEC_DEPTH, 255), int),
                 codebook_bits=cfg.bits_per_code, fec_depth=MAX_FEC_DEPTH)
    assert len(serialize_packet(big)) == limit
    assert rx.receive(serialize_packet(big), 0.0) == "ok"
    # ... and one byte more is refused before parsing.
    assert rx.receive(bytes(limit + 1), 0.0) == "oversized"
    assert rx.receive(os.urandom(60000), 0.0) == "oversized"
    assert rx.stats.packets_oversized == 2 and rx.stats.packets_arrived == 1


def test_malformed_and_corrupted_are_counted_apart(tiny_codec, codes):
    rx = Receiver(tiny_codec)
    good = stream(tiny_codec, codes)[0]
    bad_field = bytearray(good[:-2])
    bad_field[1] = 0  # codebook_bits 0, with a valid CRC
    flipped = bytearray(good)
    flipped[12] ^= 0x10
    # (A zero byte appended keeps a CRC-16 without final XOR valid: the length check catches it.)
    cases = [(b"", "malformed"), (good[:5], "malformed"), (with_crc(bad_field), "malformed"),
             (good + b"\x00", "malformed"), (good + b"\x01", "corrupted"),
             (bytes(flipped), "corrupted")]
    for data, kind in cases:
        assert rx.receive(data, 0.0, SENDER) == kind
    s = rx.stats
    assert (s.packets_malformed, s.packets_corrupted, s.packets_used) == (4, 2, 0)
    assert rx.peer is None  # no valid packet yet


def test_replayed_packets_are_dropped_and_change_nothing(tiny_codec, codes):
    data = stream(tiny_codec, codes)
    clean = play(Receiver(tiny_codec), [(d, 0.02 * (i + 1), SENDER) for i, d in enumerate(data)])
    rx = Receiver(tiny_codec, playout_delay=0.1)
    feed = []
    for i, d in enumerate(data[:-1]):
        t = 0.02 * (i + 1)
        feed.append((d, t, SENDER))
        if i >= 3:  # replay the packets sent 1 and 3 packets ago
            feed += [(data[i - 1], t, SENDER), (data[i - 3], t, SENDER)]
    feed.append((data[-1], 0.02 * len(data), SENDER))
    got = play(rx, feed)
    n = len(data) - 1
    s = rx.stats
    assert s.packets_duplicated == 2 * (n - 3) and s.packets_used == n
    assert s.frames_decoded == n and s.frames_concealed == 0
    assert torch.equal(got, clean)


def test_replay_window_has_a_fixed_size(tiny_codec):
    """Sequence numbers are remembered in a fixed ring, as SRTP's replay list: a long call
    does not grow it, and a replay of a recent packet is still caught after the wrap."""
    fs = tiny_codec.cfg.frame_size
    rx = Receiver(tiny_codec)
    size = rx._seen.nbytes
    packets = [serialize_packet(media(tiny_codec, i % 65536, i * fs)) for i in range(20000)]
    for d in packets:
        assert rx.receive(d, 0.0) == "ok"
    assert rx._seen.nbytes == size
    assert rx.receive(packets[19990], 0.0) == "duplicate"
    assert rx.receive(packets[15000], 0.0) == "duplicate"
    assert rx.receive(packets[5000], 0.0) == "out_of_window"  # beyond the sequence window


def test_out_of_window_sequence_numbers_and_timestamps(tiny_codec):
    fs = tiny_codec.cfg.frame_size
    rx = Receiver(tiny_codec, max_buffer=100)
    assert rx.receive(serialize_packet(media(tiny_codec, 10, 0)), 0.0) == "ok"
    far_ahead = media(tiny_codec, 11, 100 * fs)  # frame 100: just past the 100-frame buffer
    assert rx.receive(serialize_packet(far_ahead), 0.0) == "out_of_window"
    assert rx.receive(serialize_packet(media(tiny_codec, 11, 99 * fs)), 0.0) == "ok"
    # The timestamp is in the window but the sequence number is not.
    wild = media(tiny_codec, 11 + SEQ_WINDOW + 5, 2 * fs)
    assert rx.receive(serialize_packet(wild), 0.0) == "out_of_window"
    # A stream that restarts with new sequence numbers is followed from its second packet on.
    assert rx.receive(serialize_packet(media(tiny_codec, 30000, 3 * fs)), 0.0) == "out_of_window"
    assert rx.receive(serialize_packet(media(tiny_codec, 30001, 4 * fs)), 0.0) == "ok"
    assert rx.receive(serialize_packet(media(tiny_codec, 30002, 5 * fs)), 0.0) == "ok"
    # Far behind the playout point: not late, out of window.
    rx.play_due(10.0)  # 10 s of playout: frame 500 is next
    assert rx.next_frame > 400
    assert rx.receive(serialize_packet(media(tiny_codec, 30003, 6 * fs)), 10.0) == \
        "out_of_window"
    late = media(tiny_codec, 30004, (rx.next_frame - 1) * fs)
    assert rx.receive(serialize_packet(late), 10.0) == "late"
    assert rx.stats.packets_out_of_window == 4 and rx.stats.packets_late == 1


def test_window_ignores_a_forged_far_packet(tiny_codec, codes):
    """A far-off packet does not move the window: the real stream carries on untouched."""
    data = stream(tiny_codec, codes)
    clean = play(Receiver(tiny_codec), [(d, 0.02 * (i + 1), SENDER) for i, d in enumerate(data)])
    rx = Receiver(tiny_codec)
    feed = [(d, 0.02 * (i + 1), SENDER) for i, d in enumerate(data)]
    forged = [serialize_packet(media(tiny_codec, s, ts)) for s, ts in
              ((20000, 320 * 6_000_000), (5, 320 * 2**21), (40000, 2**32 - 320 * 5))]
    for j, f in enumerate(forged):
        feed.insert(3 + 2 * j, (f, feed[2 + 2 * j][1], SENDER))
    got = play(rx, feed)
    assert rx.stats.packets_out_of_window == 3
    assert torch.equal(got, clean)


def test_end_packets_are_checked(tiny_codec, codes):
    fs = tiny_codec.cfg.frame_size
    rx = Receiver(tiny_codec)
    assert rx.receive(serialize_packet(media(tiny_codec, 0, 0)), 0.0) == "ok"

    def end(ts, n, rate=16000, orig=None):
        e = EndOfStream(n, rate, n if orig is None else orig)
        return serialize_packet(Packet(1, ts, codebook_bits=tiny_codec.cfg.bits_per_code, end=e))

    assert rx.receive(end(fs * 6_000_000, 10), 0.0) == "out_of_window"  # hours away
    assert rx.receive(end(10 * fs, 10 * fs + 1), 0.0) == "malformed"  # more samples than frames
    assert rx.receive(end(10 * fs, 3000, 10**7), 0.0) == "malformed"  # absurd original rate
    assert rx.receive(end(10 * fs, 3000, 48000, 10**9), 0.0) == "malformed"  # absurd length
    assert rx.end is None
    assert rx.receive(end(10 * fs, 3000, 48000, 9000), 0.0) == "end"
    assert rx.end_frame == 10 and rx.stats.packets_malformed == 3


def test_a_first_packet_far_into_a_stream_joins_it_there(tiny_codec):
    """Instead of conceal-playing hours of audio before it."""
    fs = tiny_codec.cfg.frame_size
    rx = Receiver(tiny_codec)
    start = 1_000_000
    for i in range(3):
        assert rx.receive(serialize_packet(media(tiny_codec, i, (start + i) * fs)), 0.0) == "ok"
    assert rx.start_frame == start
    t0 = time.monotonic()
    z = rx.finish()
    assert time.monotonic() - t0 < 5 and z.shape[-1] == 3


def test_frame_store_has_no_phantom_frames():
    """Regression (found by scripts/fuzz_packet --target receiver): the ring marked empty rows
    with -1, so asking for frame -1 found a phantom frame and popping it made the size
    negative."""
    from speechcodec.receiver import _FrameStore

    store = _FrameStore(8, 3)
    for i in (-1, -9, 7, 0):
        assert i not in store and store.get(i) is None and store.pop(i) is None
    assert len(store) == 0
    store.put(3, np.array([1, 2]))
    store.put(11, np.array([4, 5, 6]))  # the same row: replaces frame 3
    assert len(store) == 1 and 3 not in store and store.get(11).tolist() == [4, 5, 6]
    assert store.pop(11).dtype == np.int64 and len(store) == 0 and store.pop(11) is None


# -- a flood ----------------------------------------------------------------------------------


def test_flood_keeps_the_buffer_bounded(tiny_codec, codes):
    """Tens of thousands of datagrams, valid-looking ones included: the jitter buffer never holds
    more than its window, each datagram costs little, and the real stream still plays."""
    cap = 200
    data = stream(tiny_codec, codes)
    clean = play(Receiver(tiny_codec), [(d, 0.02 * (i + 1), SENDER) for i, d in enumerate(data)])
    rx = Receiver(tiny_codec, max_buffer=cap)
    rng = np.random.default_rng(0)
    bits = tiny_codec.cfg.bits_per_code
    fs = tiny_codec.cfg.frame_size
    most = 0
    out = []
    t0 = time.monotonic()
    flood = 0
    for i, d in enumerate(data):
        t = 0.02 * (i + 1)
        z = rx.play_due(t)
        if z is not None:
            out.append(z)
        assert rx.receive(d, t, SENDER) in ("ok", "end")
        for _ in range(1000):  # a thousand junk datagrams per real packet
            kind = rng.integers(4)
            if kind == 0:
                junk = rng.bytes(int(rng.integers(0, 80)))
            elif kind == 1:  # valid packets with random timestamps, from a stranger
                junk = serialize_packet(Packet(int(rng.integers(65536)), int(
                    rng.integers(2**32)) // fs * fs, rng.integers(0, 2**bits, (K, 1)),
                    codebook_bits=bits))
            else:  # valid packets far ahead or behind, from the peer's address
                off = int(rng.integers(cap, 2**20)) * (1 if kind == 2 else -1)
                junk = serialize_packet(Packet(int(rng.integers(65536)),
                                               ((i + off) * fs) % 2**32,
                                               rng.integers(0, 2**bits, (K, 1)),
                                               codebook_bits=bits))
            status = rx.receive(junk, t, STRANGER if kind == 1 else SENDER)
            assert status != "ok"
            flood += 1
            most = max(most, rx.buffered_frames)
    z = rx.finish()
    if z is not None:
        out.append(z)
    elapsed = time.monotonic() - t0
    s = rx.stats
    assert s.datagrams == flood + len(data)
    assert most <= cap and rx._codes._codes.shape[0] == cap
    assert s.packets_wrong_peer > 0 and s.packets_out_of_window > 0
    assert s.packets_used == len(data) - 1 and s.frames_decoded == len(data) - 1
    assert torch.equal(torch.cat(out, dim=-1)[0], clean)
    assert elapsed / flood < 2e-3  # well under 2 ms a datagram


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.binary(max_size=120), st.booleans()), max_size=40),
       st.sampled_from([None, KEY]))
def test_any_datagrams_are_classified_never_raise(tiny_codec, datagrams, key):
    rx = Receiver(tiny_codec, key=key, max_buffer=64)
    t = 0.0
    for data, stranger in datagrams:
        t += 0.005
        rx.play_due(t)
        assert rx.receive(data, t, STRANGER if stranger else SENDER) in STATUSES
        assert rx.buffered_frames <= 64
    s = rx.stats
    assert s.datagrams == len(datagrams)
    assert s.packets_used == 0  # random bytes are never a valid packet


# -- authentication ---------------------------------------------------------------------------


def test_spoofed_and_altered_packets_never_reach_the_decoder(tiny_codec, codes):
    data = stream(tiny_codec, codes, KEY)
    clean = play(Receiver(tiny_codec, key=KEY),
                 [(d, 0.02 * (i + 1), SENDER) for i, d in enumerate(data)])
    bits = tiny_codec.cfg.bits_per_code

    def attack(i, d):
        """Forgeries of packet i, all sent before it, from the sender's own address."""
        seq, ts = int.from_bytes(d[2:4], "big"), int.from_bytes(d[4:8], "big")
        other = Packet(seq, ts, np.full((K, 1), 5), codebook_bits=bits)
        altered = bytearray(d[:-2])
        altered[11] ^= 0xFF  # the first payload byte, with the CRC made right again
        return [serialize_packet(other),  # no tag
                serialize_packet(other, OTHER_KEY),  # another key
                with_crc(serialize_packet(other)[:-2] + d[-2 - TAG_SIZE:-2]),  # a stolen tag
                with_crc(altered)]

    feed = []
    for i, d in enumerate(data[:-1]):
        t = 0.02 * (i + 1)
        feed += [(f, t, SENDER) for f in attack(i, d)] + [(d, t, SENDER)]
    feed.append((data[-1], 0.02 * len(data), SENDER))
    rx = Receiver(tiny_codec, key=KEY)
    got = play(rx, feed)
    n = len(data) - 1
    s = rx.stats
    assert s.packets_auth_failed == 4 * n and s.packets_used == n and s.packets_duplicated == 0
    assert torch.equal(got, clean)
    # Without authentication the first forgery would have been played instead of the packet.
    plain = stream(tiny_codec, codes)
    feed = []
    for i, d in enumerate(plain[:-1]):
        t = 0.02 * (i + 1)
        feed += [(attack(i, data[i])[0], t, SENDER), (d, t, SENDER)]
    plain_rx = Receiver(tiny_codec)
    forged = play(plain_rx, [*feed, (plain[-1], 0.02 * len(plain), SENDER)])
    assert plain_rx.stats.packets_used == plain_rx.stats.packets_duplicated == n
    assert not torch.equal(forged, clean)


def test_a_receiver_and_sender_must_agree_on_a_key(tiny_codec, codes):
    tagged, plain = stream(tiny_codec, codes, KEY), stream(tiny_codec, codes)
    for key, data in ((None, tagged), (KEY, plain), (OTHER_KEY, tagged)):
        rx = Receiver(tiny_codec, key=key)
        assert {rx.receive(d, 0.0) for d in data} == {"auth_failed"}
        assert rx.anchor is None and rx.end is None
    with pytest.raises(ValueError, match="16 bytes"):
        Receiver(tiny_codec, key=b"short")


def test_simulate_reports_the_tag_overhead(tiny_codec, clip):
    from speechcodec.receiver import format_report, simulate

    plain = simulate(tiny_codec, clip, num_codebooks=K, quality=False)
    auth = simulate(tiny_codec, clip, num_codebooks=K, quality=False, key=KEY)
    assert np.array_equal(plain.samples, auth.samples)
    assert auth.auth_kbps == pytest.approx(TAG_SIZE * 8 * 50 / 1000)  # 4 kbps at 50 packets/s
    assert auth.packet_kbps - plain.packet_kbps == pytest.approx(auth.auth_kbps)
    assert "authentication 4.00 kbps" in format_report(auth)
    assert "authentication" not in format_report(plain)


# -- keys -------------------------------------------------------------------------------------


def test_key_from_file_and_environment(tmp_path):
    f = tmp_path / "call.key"
    f.write_bytes(KEY + b"\n")
    assert load_key(f, environ={}) == (KEY, f"key file {f}")
    # The file wins over the environment; the environment is used when there is no file.
    assert load_key(f, environ={KEY_ENV: OTHER_KEY.decode()})[0] == KEY
    key, where = load_key(None, environ={KEY_ENV: f" {OTHER_KEY.decode()}\n"})
    assert key == OTHER_KEY and KEY_ENV in where
    assert load_key(None, environ={}) == (None, "")
    assert load_key(None, environ={KEY_ENV: "  "}) == (None, "")
    (tmp_path / "short.key").write_bytes(b"tooshort")
    with pytest.raises(ValueError, match="too short"):
        load_key(tmp_path / "short.key", environ={})
    with pytest.raises(ValueError, match="too short"):
        load_key(None, environ={KEY_ENV: "tooshort"})
    with pytest.raises(ValueError, match="cannot read"):
        load_key(tmp_path / "missing.key", environ={})
    (tmp_path / "big.key").write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="not a key file"):
        load_key(tmp_path / "big.key", environ={})


def _parse(argv):
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    return p.parse_args([str(a) for a in argv])


@pytest.mark.parametrize("command", [["send", "x.wav"], ["receive", "out.wav"],
                                     ["simulate", "x.wav", "out.wav"]])
def test_a_key_on_the_command_line_is_refused(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(KEY_ENV, raising=False)
    for argv in ([*command, "--key", KEY.decode()], [*command, f"--key={KEY.decode()}"]):
        args = _parse(argv)
        with pytest.raises(UserError, match="command line"):
            args.func(args)
    assert not (tmp_path / "out.wav").exists()


def test_receiver_listens_on_loopback_by_default():
    args = _parse(["receive", "out.wav"])
    assert args.listen.startswith("127.0.0.1:")
    assert _parse(["relay"]).listen.startswith("127.0.0.1:")
    from speechcodec.transport import parse_address

    assert parse_address(":5004")[0] == parse_address("5004")[0] == "127.0.0.1"


# -- over UDP on 127.0.0.1 ---------------------------------------------------------------------


def _receive_in_thread(codec, out, **kw):
    ready = threading.Event()
    box = {}

    def run():
        box["r"] = receive_udp(codec, ("127.0.0.1", 0), out, on_ready=lambda a: (
            box.setdefault("addr", a), ready.set()), **kw)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(30)
    return t, box


def test_udp_flood_wrong_peer_and_oversized(tiny_codec, clip, codes, tmp_path):
    """A real stream over UDP while a stranger floods the port with junk, forged valid packets
    and oversized datagrams: the output is exactly the clean one."""
    key_free = stream(tiny_codec, codes)
    out = tmp_path / "out.wav"
    t, box = _receive_in_thread(tiny_codec, out, playout_delay=0.1, timeout=2, wait=30)
    addr = box["addr"]
    stop = threading.Event()
    sent = {"n": 0}

    def flood():
        rng = np.random.default_rng(1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            while not stop.is_set():
                for _ in range(50):
                    r = rng.integers(3)
                    junk = (rng.bytes(30000) if r == 0 else key_free[int(rng.integers(
                        len(key_free) - 1))] if r == 1 else rng.bytes(int(rng.integers(1, 60))))
                    try:
                        s.sendto(junk, addr)
                        sent["n"] += 1
                    except OSError:
                        pass
                time.sleep(0.001)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        sender.sendto(key_free[0], addr)  # the first packet fixes the peer
        big = 0
        time.sleep(0.05)
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        t0 = time.monotonic()
        for i, d in enumerate(key_free[1:], 1):
            time.sleep(max(0.0, t0 + 0.02 * i - time.monotonic()))
            sender.sendto(d, addr)
            if i % 5 == 0:  # oversized junk from the peer's own address
                sender.sendto(os.urandom(20000), addr)
                big += 1
        time.sleep(0.3)
        stop.set()
        flooder.join(10)
        sender.sendto(key_free[-1], addr)  # END again, in case the flood crowded it out
    t.join(30)
    assert not t.is_alive()
    r = box["r"]
    s = r.stats
    assert r.stopped_by == "end" and sent["n"] > 1000
    assert s.packets_wrong_peer > 500 and s.packets_oversized == big > 0
    # Every real packet was used (or, on a very busy machine, came too late to be).
    assert s.packets_used + s.packets_late == len(key_free) - 1
    assert s.frames_decoded == s.packets_used
    assert r.peer.startswith("127.0.0.1:") and r.max_buffered_frames <= 10
    y, _ = sf.read(out, dtype="float32")
    assert len(y) == len(clip)
    if s.packets_late:
        return
    # The decode equals the one without any flood.
    ref = tmp_path / "ref.wav"
    t2, box2 = _receive_in_thread(tiny_codec, ref, playout_delay=0.1, timeout=2, wait=30)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for d in key_free:
            sender.sendto(d, box2["addr"])
    t2.join(30)
    # (Frames decoded in other batches round differently: a 16-bit step at most.)
    np.testing.assert_allclose(y, sf.read(ref, dtype="float32")[0], atol=2 / 32768)


def test_udp_authenticated_send_relay_receive_with_garbage(tiny_codec, clip, tmp_path):
    """send -> relay (which injects junk, replays and far-future packets) -> receive, with a
    key: every junk datagram is counted, and the stream arrives whole."""
    out = tmp_path / "out.wav"
    t, box = _receive_in_thread(tiny_codec, out, playout_delay=0.06, timeout=2, wait=30,
                                key=KEY)
    relay_box = {}
    ready = threading.Event()

    def run_relay():
        relay_box["r"] = relay_udp(("127.0.0.1", 0), box["addr"], garbage=0.5, seed=2, wait=30,
                                   timeout=2, on_ready=lambda a: (relay_box.setdefault("a", a),
                                                                  ready.set()))

    rt = threading.Thread(target=run_relay, daemon=True)
    rt.start()
    assert ready.wait(30)
    long = np.tile(clip, 4)
    sent = send_udp(tiny_codec, long, K, relay_box["a"], fec_codebooks=1, key=KEY)
    rt.join(30)
    t.join(30)
    r, hop = box["r"], relay_box["r"]
    s = r.stats
    junk = sum(hop.garbage_sent.values())
    assert sent.authenticated and sent.auth_kbps == pytest.approx(4.0, rel=0.05)
    assert r.stopped_by == "end" and junk > 10 and len(hop.garbage_sent) >= 3
    # Every real packet was used (or, on a very busy machine, came too late to be), and every
    # junk datagram refused (replays are duplicates: no original was lost).
    assert s.packets_used + s.packets_late == sent.packets_sent
    assert s.frames_decoded == s.packets_used
    ignored = (s.packets_oversized + s.packets_malformed + s.packets_corrupted
               + s.packets_auth_failed + s.packets_duplicated + s.packets_out_of_window)
    assert ignored == junk
    assert s.packets_oversized == hop.garbage_sent.get("oversized", 0)
    assert s.packets_auth_failed >= hop.garbage_sent.get("far_future", 0)
    assert r.rates["auth_kbps"] == pytest.approx(4.0)
    y, _ = sf.read(out)
    assert len(y) == len(long)


def test_garbage_kinds():
    rng = np.random.default_rng(0)
    real = [serialize_packet(Packet(i, 320 * i, np.full((3, 1), i % 8), codebook_bits=10))
            for i in range(600)]
    for kind in ("random", "oversized", "malformed", "replay", "far_future"):
        got_kind, _data = garbage_datagram(rng, real, kind)
        assert got_kind == kind
    assert garbage_datagram(rng, [], "replay")[0] == "random"  # nothing to replay yet
    assert len(garbage_datagram(rng, real, "oversized")[1]) > 9000
    assert garbage_datagram(rng, real, "replay")[1] in real
    with pytest.raises(ValueError):
        garbage_datagram(rng, real, "nice")


def test_garbage_is_refused_by_a_receiver_without_a_key(tiny_codec, codes):
    """Each kind of junk lands in its own counter, and none of it is played."""
    data = stream(tiny_codec, codes)[:-1]
    rng = np.random.default_rng(3)
    expect = {"random": {"corrupted", "malformed"}, "oversized": {"oversized"},
              "malformed": {"malformed"}, "replay": {"duplicate"},
              "far_future": {"out_of_window"}}
    rx = Receiver(tiny_codec, playout_delay=1.0)
    for i, d in enumerate(data):
        assert rx.receive(d, 0.001 * i, SENDER) == "ok"
    for kind, statuses in expect.items():
        for _ in range(5):
            assert rx.receive(garbage_datagram(rng, data, kind)[1], 0.05, SENDER) in statuses
    assert rx.stats.packets_used == len(data)


# -- the commands, as separate processes ---------------------------------------------------------


def test_cli_key_from_file_and_environment(tiny_codec, speech, tmp_path):
    """receive with --key-file, send with the key in the environment: the stream arrives,
    authenticated, and both report the tags' overhead."""
    model = tmp_path / "tiny.pt"
    tiny_codec.save_release(model, "tiny-test")
    talk = tmp_path / "talk.wav"
    sf.write(talk, speech[:8000], 16000, subtype="PCM_16")
    keyfile = tmp_path / "call.key"
    keyfile.write_bytes(KEY + b"\n")
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.wav"
    rx = subprocess.Popen(
        [sys.executable, "-m", "speechcodec", "receive", str(out), "--listen", f":{port}",
         "--model", str(model), "--timeout", "2", "--wait", "60", "--key-file", str(keyfile)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        t0 = time.monotonic()
        while not (lines and "listening" in lines[-1]) and time.monotonic() - t0 < 60:
            lines.append(rx.stderr.readline())
        assert "listening on 127.0.0.1:" in lines[-1]
        assert any("key file" in line for line in lines)
        send = subprocess.run(
            [sys.executable, "-m", "speechcodec", "send", str(talk), "--to",
             f"127.0.0.1:{port}", "--model", str(model), "--kbps", "0.9", "--fast"],
            cwd=ROOT, env={**env, KEY_ENV: KEY.decode()}, capture_output=True, text=True,
            timeout=120)
        assert send.returncode == 0, send.stderr
        assert KEY_ENV in send.stderr and "authentication 4.00 kbps" in send.stdout
        stdout, stderr = rx.communicate(timeout=60)
    finally:
        if rx.poll() is None:
            rx.kill()
    assert rx.returncode == 0, stderr
    assert "stopped by end" in stdout and "authentication 4.00 kbps" in stdout
    assert "failed authentication 0" in stdout
    assert sf.info(out).frames == 8000
