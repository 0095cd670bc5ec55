"""Packet format v1: round trips, every kind of damage, and 16-bit sequence arithmetic."""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from speechcodec.bitstream import packed_size
from speechcodec.packet import (
    CRC_SIZE,
    FLAG_AUTH,
    FLAG_FEC_DEPTH,
    HEADER_SIZE,
    MAX_FEC_DEPTH,
    OVERHEAD_BYTES,
    TAG_SIZE,
    AuthenticationError,
    ChecksumError,
    EndOfStream,
    Packet,
    PacketError,
    Packetizer,
    auth_tag,
    crc16,
    is_end_packet,
    max_packet_size,
    nominal_rates,
    packetize,
    parse_packet,
    seq_add,
    seq_diff,
    seq_gt,
    serialize_packet,
    ts_diff,
    unwrap,
)


@st.composite
def packets(draw):
    bits = draw(st.integers(1, 16))
    k = draw(st.integers(1, 12))
    f = draw(st.integers(1, 4))
    c = draw(st.integers(0, k))
    depth = draw(st.integers(1, MAX_FEC_DEPTH)) if c else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 1 << bits, size=(k, f))
    fec = rng.integers(0, 1 << bits, size=(depth * c, f))
    return Packet(draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 2**32 - 1)), codes, fec,
                  codebook_bits=bits, fec_depth=depth)


def _same(a: Packet, b: Packet) -> bool:
    return (a.seq, a.timestamp, a.codebook_bits, a.end, a.fec_depth) == (
        b.seq, b.timestamp, b.codebook_bits, b.end, b.fec_depth) and \
        np.array_equal(a.codes, b.codes) and np.array_equal(a.fec, b.fec)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack(">H", crc16(body))


def _media(k=6, f=1, c=3, bits=10) -> Packet:
    rng = np.random.default_rng(0)
    return Packet(7, 320, rng.integers(0, 1 << bits, (k, f)), rng.integers(0, 1 << bits, (c, f)),
                  codebook_bits=bits)


@settings(max_examples=60, deadline=None)
@given(packets())
def test_roundtrip_and_size(p):
    data = serialize_packet(p)
    assert len(data) == p.size == OVERHEAD_BYTES + (p.fec_depth > 1) + packed_size(
        p.num_codebooks + p.fec_depth * p.fec_codebooks, p.num_frames, p.codebook_bits)
    q = parse_packet(data)
    assert _same(p, q)
    assert serialize_packet(q) == data


def test_end_packet_roundtrip():
    p = Packet(65535, 2**32 - 320, end=EndOfStream(12345, 44100, 34000))
    data = serialize_packet(p)
    assert is_end_packet(data) and not is_end_packet(serialize_packet(_media()))
    q = parse_packet(data)
    assert q.is_end and q.end == p.end and q.seq == 65535 and q.num_frames == 0
    assert "END" in repr(q)


def test_layout_matches_the_diagram():
    p = Packet(0x1234, 0x01020304, np.array([[1], [2]]), np.array([[3]]), codebook_bits=10)
    data = serialize_packet(p)
    assert data[0] == 0x10 and data[1] == 10
    assert data[2:4] == b"\x12\x34" and data[4:8] == b"\x01\x02\x03\x04"
    assert tuple(data[8:11]) == (2, 1, 1)
    # codes 1, 2 then FEC 3, 10 bits each, MSB first: 0000000001 0000000010 0000000011 00
    assert data[HEADER_SIZE:-CRC_SIZE] == bytes([0x00, 0x40, 0x20, 0x0C])
    assert struct.unpack(">H", data[-2:])[0] == crc16(data[:-2])


def test_fec_depth_layout():
    """With two FEC copies: flag DEPTH, the depth byte after the header, then codes 1, 2, the
    copy of the packet before (3) and of the one before that (4)."""
    p = Packet(0x1234, 0x01020304, np.array([[1], [2]]), np.array([[3], [4]]), codebook_bits=10,
               fec_depth=2)
    data = serialize_packet(p)
    assert data[0] == 0x10 | FLAG_FEC_DEPTH and tuple(data[8:12]) == (2, 1, 1, 2)
    # 0000000001 0000000010 0000000011 0000000100: 40 bits, no padding
    assert data[HEADER_SIZE + 1:-CRC_SIZE] == bytes([0x00, 0x40, 0x20, 0x0C, 0x04])
    q = parse_packet(data)
    assert q.fec_depth == 2 and q.fec_codebooks == 1 and len(data) == p.size
    assert q.fec_copy(1).tolist() == [[3]] and q.fec_copy(2).tolist() == [[4]]
    with pytest.raises(ValueError, match=r"1\.\.2"):
        q.fec_copy(3)
    # Depth 1 is the packet without the flag and without the byte, as before the flag existed.
    one = serialize_packet(Packet(0x1234, 0x01020304, np.array([[1], [2]]), np.array([[3]]),
                                  codebook_bits=10, fec_depth=1))
    assert one[0] == 0x10 and len(one) == len(data) - 2  # one byte of header, one of payload


def test_bad_fec_depth_with_valid_crc():
    body = bytearray(serialize_packet(Packet(1, 0, np.array([[1], [2]]), np.array([[3], [4]]),
                                             fec_depth=2))[:-2])
    for depth in (0, 1, MAX_FEC_DEPTH + 1, 255):
        b = bytearray(body)
        b[HEADER_SIZE] = depth
        with pytest.raises(PacketError, match="fec_depth"):
            parse_packet(_with_crc(bytes(b)))
    b = bytearray(body)
    b[HEADER_SIZE] = 3  # the payload holds only two copies
    with pytest.raises(PacketError, match=r"2\+3x1 codebooks"):
        parse_packet(_with_crc(bytes(b)))
    b = bytearray(body)
    b[10] = 0  # DEPTH without FEC codebooks
    with pytest.raises(PacketError, match="without FEC"):
        parse_packet(_with_crc(bytes(b)))
    flagged = _with_crc(bytes([0x10 | FLAG_FEC_DEPTH]) + serialize_packet(_media())[1:HEADER_SIZE])
    with pytest.raises(PacketError, match="truncated"):  # the flag, and nothing after the header
        parse_packet(flagged)
    with pytest.raises(ValueError, match="multiple"):
        Packet(0, 0, np.zeros((2, 1), int), np.zeros((3, 1), int), fec_depth=2)
    with pytest.raises(ValueError):
        Packet(0, 0, np.zeros((2, 1), int), np.zeros((10, 1), int), fec_depth=5)


def test_crc16_check_value():
    assert crc16(b"123456789") == 0x29B1


def test_repr_is_short():
    r = repr(_media())
    assert r.startswith("Packet(seq=7") and "K=6" in r and len(r) < 80


def test_every_truncation_is_an_error():
    data = serialize_packet(_media())
    for n in range(len(data)):
        with pytest.raises(PacketError):
            parse_packet(data[:n])


def test_truncation_message():
    with pytest.raises(PacketError, match="truncated"):
        parse_packet(b"\x10\x0a")


def test_trailing_bytes_are_an_error():
    data = serialize_packet(_media())
    with pytest.raises(PacketError):
        parse_packet(data + b"\x00")
    # also when the CRC is recomputed over the longer packet
    with pytest.raises(PacketError, match="payload"):
        parse_packet(_with_crc(data[:-2] + b"\x00"))


def test_every_single_bit_flip_is_detected():
    data = serialize_packet(_media())
    for bit in range(8 * len(data)):
        bad = bytearray(data)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(PacketError):
            parse_packet(bytes(bad))


def test_bad_fields_with_valid_crc():
    good = serialize_packet(_media(k=2, f=1, c=1))
    body = bytearray(good[:-2])
    cases = {
        "version": (0, 0x20),
        "flags": (0, 0x14),
        "codebook_bits": (1, 0),
        "FEC": (10, 3),  # 3 FEC codebooks > 2 codebooks
        "codebooks x": (8, 0),  # K = 0
    }
    for offset, value in cases.values():
        b = bytearray(body)
        b[offset] = value
        with pytest.raises(PacketError):
            parse_packet(_with_crc(bytes(b)))
    # END packet that claims codes
    end = bytearray(serialize_packet(Packet(1, 0, end=EndOfStream(1, 16000, 1)))[:-2])
    end[8] = 1
    with pytest.raises(PacketError, match="END"):
        parse_packet(_with_crc(bytes(end)))


def test_version_error_names_the_version():
    data = bytearray(serialize_packet(_media()))
    data[0] = 0x20
    with pytest.raises(PacketError, match="version 2"):
        parse_packet(bytes(data))


def test_nonzero_padding_is_an_error():
    p = Packet(1, 0, np.array([[1]]), codebook_bits=10)  # 10 bits -> 2 bytes, 6 pad bits
    body = bytearray(serialize_packet(p)[:-2])
    body[-1] |= 0x01
    with pytest.raises(PacketError, match="padding"):
        parse_packet(_with_crc(bytes(body)))


def test_invalid_packets_cannot_be_built():
    with pytest.raises(ValueError):
        Packet(70000, 0, np.zeros((1, 1), int))
    with pytest.raises(ValueError):
        Packet(0, 0, np.zeros((2, 1), int), np.zeros((3, 1), int))  # FEC wider than codes
    with pytest.raises(ValueError):
        Packet(0, 0, np.zeros((0, 0), int))  # media packet without codes
    with pytest.raises(ValueError):
        serialize_packet(Packet(0, 0, np.array([[1024]]), codebook_bits=10))


# -- authentication ---------------------------------------------------------------------------

KEY = bytes(range(16, 48))
keys = st.binary(min_size=16, max_size=64)


def test_authenticated_layout():
    p = _media()
    plain, tagged = serialize_packet(p), serialize_packet(p, KEY)
    assert len(tagged) == len(plain) + TAG_SIZE
    assert tagged[0] == plain[0] | FLAG_AUTH and tagged[1:HEADER_SIZE] == plain[1:HEADER_SIZE]
    body = tagged[: -CRC_SIZE - TAG_SIZE]
    assert tagged[-CRC_SIZE - TAG_SIZE: -CRC_SIZE] == auth_tag(KEY, body)
    assert struct.unpack(">H", tagged[-2:])[0] == crc16(tagged[:-2])  # the CRC covers the tag
    with pytest.raises(ValueError, match="16 bytes"):
        serialize_packet(p, b"short key")


@st.composite
def end_packets(draw):
    return Packet(draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 2**32 - 1)),
                  codebook_bits=draw(st.integers(1, 16)),
                  end=EndOfStream(draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 2**32 - 1)),
                                  draw(st.integers(0, 2**32 - 1))))


@settings(max_examples=80, deadline=None)
@given(st.one_of(packets(), end_packets()), keys, keys)
def test_authenticated_roundtrip(p, key, other):
    """parse(serialize(p, key), key) == p, for media and END packets; the wrong key, no key,
    or a key for an untagged packet are authentication errors."""
    data = serialize_packet(p, key)
    assert len(data) == p.size + TAG_SIZE
    q = parse_packet(data, key)
    assert _same(p, q) and serialize_packet(q, key) == data
    assert is_end_packet(data) == p.is_end
    with pytest.raises(AuthenticationError):
        parse_packet(data)
    with pytest.raises(AuthenticationError):
        parse_packet(serialize_packet(p), key)
    if other != key:
        with pytest.raises(AuthenticationError):
            parse_packet(data, other)


@settings(max_examples=60, deadline=None)
@given(end_packets())
def test_end_roundtrip(p):
    data = serialize_packet(p)
    assert _same(p, parse_packet(data)) and is_end_packet(data)


# -- hostile bytes: every input parses or raises PacketError, quickly -------------------------

_BOUND_S = 0.05  # seconds for one parse, far above the real cost (well under 2 ms)


def _parse_or_error(data: bytes, key: bytes | None):
    """Parse within bounded time; a packet that parses must be the canonical encoding of what
    it parsed to (no two byte strings mean the same packet)."""
    t0 = time.perf_counter()
    try:
        p = parse_packet(data, key)
    except PacketError as e:
        assert str(e) and "\n" not in str(e)
        p = e
    assert time.perf_counter() - t0 < _BOUND_S
    if isinstance(p, Packet):
        assert serialize_packet(p, key) == data
    return p


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([None, KEY]))
def test_any_bytes_parse_or_raise(data, key):
    _parse_or_error(data, key)


@st.composite
def checksummed(draw):
    """Bytes with a version-1 header and a correct CRC (and mostly the tag a receiver with that
    key expects), but otherwise arbitrary fields and payload, biased towards values that get
    far into the parser: what is left once the checksum cannot catch anything."""
    key = draw(st.sampled_from([None, KEY]))
    tagged = (key is not None) == draw(st.sampled_from([True] * 9 + [False]))  # mostly right
    flags = draw(st.sampled_from([0, 0, 0, 1, 1, -1]))
    if flags < 0:
        flags = draw(st.integers(0, 15)) & ~FLAG_AUTH
    bits = draw(st.sampled_from([10, 6, 1, 16, -1]))
    if bits < 0:
        bits = draw(st.integers(0, 255))
    if flags & 1:
        k = f = c = draw(st.sampled_from([0, 0, 0, 1]))
        n = 12
    else:
        k, f = draw(st.integers(0, 13)), draw(st.integers(0, 5))
        c = draw(st.one_of(st.integers(0, k), st.integers(0, 255)))
        n = packed_size(k + c, f, bits if 1 <= bits <= 16 else 1)
    n += draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    payload = bytearray(draw(st.binary(min_size=max(0, n), max_size=max(0, n))))
    if payload and draw(st.booleans()) and not flags & 1 and 1 <= bits <= 16:
        pad = 8 * len(payload) - (k + c) * f * bits
        if 0 < pad < 8:
            payload[-1] &= 0xFF << pad & 0xFF  # zero padding bits, as a writer leaves them
    header = struct.pack(">BBHIBBB", 0x10 | flags | (FLAG_AUTH if tagged else 0), bits,
                         draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 2**32 - 1)), k, f, c)
    body = header + bytes(payload)
    if tagged:
        body += auth_tag(key or KEY, body)
    return body + struct.pack(">H", crc16(body)), key


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(checksummed())
def test_checksummed_bytes_parse_or_raise(case):
    data, key = case
    result = _parse_or_error(data, key)
    assert not isinstance(result, ChecksumError)


@st.composite
def mutations(draw):
    """A valid packet (tagged or not) and a mutation of it: bytes flipped, cut, added or
    overwritten, with the CRC then recomputed or not."""
    p = draw(st.one_of(packets(), end_packets()))
    key = draw(st.sampled_from([None, KEY]))
    data = bytearray(serialize_packet(p, key))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "add", "set"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut" and data:
            i = draw(st.integers(0, len(data) - 1))
            del data[i: i + draw(st.integers(1, 4))]
        elif op == "add":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()) and len(data) > CRC_SIZE:
        data[-CRC_SIZE:] = struct.pack(">H", crc16(data[:-CRC_SIZE]))
    return p, key, bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_packets(case):
    """A mutated packet is refused, or it is a valid packet in its own right (its bytes are its
    canonical encoding); with a key, any change at all is refused."""
    p, key, data = case
    assume(data != serialize_packet(p, key))
    result = _parse_or_error(data, key)
    if key is not None:
        assert isinstance(result, PacketError)


def test_parse_memory_is_bounded():
    """The largest packets a datagram can hold parse in bounded memory (about 140 bytes per
    input byte at 1 bit per code, where every bit becomes an int64 code)."""
    rng = np.random.default_rng(0)
    for bits, k, c, f in ((1, 255, 255, 255), (16, 100, 27, 255), (10, 12, 12, 255)):
        p = Packet(1, 0, rng.integers(0, 1 << bits, (k, f)), rng.integers(0, 1 << bits, (c, f)),
                   codebook_bits=bits)
        data = serialize_packet(p, KEY)
        assert len(data) < 65507  # fits in one UDP datagram
        tracemalloc.start()
        try:
            t0 = time.perf_counter()
            parse_packet(data, KEY)
            elapsed = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 200 * len(data) + (1 << 16) and elapsed < 0.5


def test_max_packet_size():
    # 12 codebooks and MAX_FEC_DEPTH copies of 12, 255 frames, and the fec_depth byte
    assert max_packet_size(12, 10) == OVERHEAD_BYTES + 1 + packed_size(
        12 * (1 + MAX_FEC_DEPTH), 255, 10)
    assert max_packet_size(12, 10, authenticated=True) == max_packet_size(12, 10) + TAG_SIZE
    assert max_packet_size(1, 1, frames_per_packet=1) == OVERHEAD_BYTES + 1 + 12  # room for END
    rng = np.random.default_rng(0)
    deepest = Packet(1, 0, rng.integers(0, 1024, (12, 255)),
                     rng.integers(0, 1024, (12 * MAX_FEC_DEPTH, 255)), fec_depth=MAX_FEC_DEPTH)
    assert len(serialize_packet(deepest, KEY)) == max_packet_size(12, 10, authenticated=True)


# -- sequence numbers -------------------------------------------------------------------------


def test_sequence_helpers_across_the_wrap():
    assert seq_add(65535, 1) == 0 and seq_add(0, -1) == 65535 and seq_add(65530, 10) == 4
    assert seq_diff(2, 65534) == 4 and seq_diff(65534, 2) == -4 and seq_diff(5, 5) == 0
    assert seq_gt(0, 65535) and not seq_gt(65535, 0) and not seq_gt(3, 3)
    assert seq_gt(100, 65000) and seq_gt(65000, 33000) and not seq_gt(65000, 32000)
    assert ts_diff(10, 2**32 - 10) == 20


@given(st.integers(0, 0xFFFF), st.integers(-32768, 32767))
def test_seq_diff_inverts_seq_add(a, n):
    b = seq_add(a, n)
    assert seq_diff(b, a) == n
    assert seq_gt(b, a) == (n > 0)


def test_unwrap_counts_through_the_wrap():
    ref = 65530
    out = []
    for i in range(20):
        ref = unwrap(seq_add(65530, i), ref)
        out.append(ref)
    assert out == list(range(65530, 65550))
    assert unwrap(65535, 65536 + 2) == 65535  # a late packet from before the wrap


# -- packetizer -------------------------------------------------------------------------------


def test_packetizer_seq_wrap_timestamps_and_fec():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 1024, (6, 7))
    pk = packetize(codes, 10, 320, frames_per_packet=2, fec_codebooks=2, first_seq=65534)
    assert [p.seq for p in pk] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in pk] == [0, 640, 1280, 1920]
    assert [p.num_frames for p in pk] == [2, 2, 2, 1]
    assert pk[0].fec_codebooks == 0  # nothing before the first packet
    for prev, p in itertools.pairwise(pk[:3]):
        assert np.array_equal(p.fec, prev.codes[:2])
    assert pk[3].fec_codebooks == 0  # the short last packet has no same-shaped predecessor
    assert np.array_equal(np.concatenate([p.codes for p in pk], axis=1), codes)


def test_packetizer_fec_depth():
    """Each packet copies the previous two (as many as exist; not the short last one's)."""
    codes = np.random.default_rng(4).integers(0, 1024, (6, 9))
    pk = packetize(codes, 10, 320, frames_per_packet=2, fec_codebooks=3, fec_depth=2)
    assert [p.fec_depth for p in pk] == [1, 1, 2, 2, 1]
    assert [p.fec_codebooks for p in pk] == [0, 3, 3, 3, 0]
    for i in (2, 3):
        for d in (1, 2):
            assert np.array_equal(pk[i].fec_copy(d), pk[i - d].codes[:3])
    assert all(_same(parse_packet(serialize_packet(p)), p) for p in pk)
    with pytest.raises(ValueError):
        Packetizer(10, 320, fec_codebooks=1, fec_depth=MAX_FEC_DEPTH + 1)


def test_packetizer_streams_like_packetize():
    codes = np.random.default_rng(0).integers(0, 1024, (3, 10))
    p = Packetizer(10, 320, 3, fec_codebooks=1)
    got = p.push(codes[:, :4]) + p.push(codes[:, 4:5]) + p.push(codes[:, 5:]) + p.flush()
    ref = packetize(codes, 10, 320, 3, 1)
    assert [serialize_packet(a) for a in got] == [serialize_packet(b) for b in ref]
    end = p.end(3000, 16000, 3000)
    assert end.timestamp == 10 * 320 and end.seq == 4 and end.is_end


def test_nominal_rates():
    r = nominal_rates(6, 3, 1, 10, 50.0)
    assert r["payload_kbps"] == pytest.approx(3.0) and r["fec_kbps"] == pytest.approx(1.5)
    assert r["packet_kbps"] == pytest.approx((13 + 12) * 8 * 50 / 1000)
    assert r["rtp_udp_ipv4_kbps"] == pytest.approx(16.0) and r["auth_kbps"] == 0
    a = nominal_rates(6, 3, 1, 10, 50.0, authenticated=True)
    assert a["auth_kbps"] == pytest.approx(4.0)
    assert a["packet_kbps"] == pytest.approx(r["packet_kbps"] + 4.0)
    assert nominal_rates(6, 0, 2, 10, 50.0, True)["auth_kbps"] == pytest.approx(2.0)
    d = nominal_rates(6, 3, 1, 10, 50.0, fec_depth=2)
    assert d["fec_kbps"] == pytest.approx(3.0)
    assert d["packet_kbps"] == pytest.approx((13 + 1 + 15) * 8 * 50 / 1000)  # 120 bits of codes
    assert nominal_rates(6, 0, 1, 10, 50.0, fec_depth=2) == nominal_rates(6, 0, 1, 10, 50.0)


def test_modules_do_not_import_torch():
    code = ("import sys, speechcodec.packet, speechcodec.channel; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("target,runs", [("packet", 3000), ("receiver", 300)])
def test_fuzz_harness_runs(target, runs):
    """scripts/fuzz_packet (coverage-guided, atheris) runs and reports executions and
    findings; the long runs are in the README."""
    pytest.importorskip("atheris")
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_packet.py"
    r = subprocess.run([sys.executable, str(script), "--target", target, "--runs", str(runs)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"executions   {runs} in" in r.stdout and "findings     0" in r.stdout
