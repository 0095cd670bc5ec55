"""Packet format v1: how code frames travel over a network, and 16-bit sequence arithmetic.

Like :mod:`speechcodec.bitstream` this module does not import torch; it needs only the standard
library and numpy, so a relay or a packet inspector starts quickly.

One packet carries ``F`` consecutive code frames (``F = 1``: one 20 ms frame per packet) of ``K``
codebooks, and optionally a coarse copy (the first ``C`` codebooks) of the frames of the previous
packet, or of the previous ``D`` packets, for forward error correction. All multi-byte integers
are big-endian (network order)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------+-------+---------------+-------------------------------+
    |version| flags | codebook_bits |        sequence number        |
    +-------+-------+---------------+-------------------------------+
    |                  timestamp (samples at 16 kHz)                |
    +---------------+---------------+---------------+---------------+
    | num_codebooks |  num_frames   | fec_codebooks |  (fec_depth)  |  <- only with
    +---------------+---------------+---------------+ - - - - - - - +     flag DEPTH
    |     payload: (K + D x C) x F codes, B bits each, MSB first    |
    +                               +-------------------------------+
    |                               |                               |
    +-------------------------------+                               +
    :    authentication tag (10 bytes, only with flag AUTH 0x2)     :
    +                               +-------------------------------+
    |                               |    CRC-16 of all bytes above  |
    +-------------------------------+-------------------------------+

    Offset  Size  Field          Meaning
    ------  ----  -------------  --------------------------------------------------------------
         0   4 b  version        1 (the high nibble of byte 0)
         0   4 b  flags          0x1 END: end of stream (no codes, see below);
                                 0x2 AUTH: an authentication tag follows the payload;
                                 0x4 DEPTH: the fec_depth byte follows the header;
                                 others reserved, 0
         1     1  codebook_bits  B, bits per code (1..16; 10 for 1024-entry codebooks)
         2     2  sequence       +1 per packet, wraps 65535 -> 0 (compare with seq_gt/seq_diff)
         4     4  timestamp      sample index of the packet's first frame, wraps at 2**32
         8     1  num_codebooks  K, codebooks per frame
         9     1  num_frames     F, frames in this packet
        10     1  fec_codebooks  C, codebooks of each FEC copy (0: no FEC; C <= K)
        11     1  fec_depth      DEPTH only: D, packets copied (2..4); without the flag D = 1
                                 and the byte is absent (E = 0; with the flag E = 1)
      11+E     P  payload        P = ceil((K + D * C) * F * B / 8) bytes
  11+E+P      10  tag            AUTH only: the first 10 bytes (80 bits) of
                                 HMAC-SHA256(key, bytes [0, 11 + E + P)); T = 10, else T = 0
  11+E+P+T     2  crc            CRC-16/CCITT-FALSE (binascii.crc_hqx, initial 0xFFFF) of
                                 bytes [0, 11 + E + P + T)

The payload is ``bitstream.pack_codes`` of the ``[K + D * C, F]`` array whose first K rows are
this packet's codes, followed by D blocks of C rows: block d (d = 1..D) holds the first C
codebooks of the F frames of the packet d before this one (frame f of block d belongs at
timestamp ``timestamp - (d * F - f) * frame_size``). A packet copies only as many earlier
packets as exist, so the first packets of a stream carry a smaller D. Frame-major, so each
frame's K codes are followed by its D x C FEC codes.

Why a depth: losses come in bursts. With D = 1 a burst of L packets leaves L - 1 frames to
concealment; with D = 2, L - 2. It costs D x C codes per frame and no delay beyond the
jitter buffer's, as long as the playout delay covers D packets.

An END packet (flag 0x1) has K = F = C = 0, its timestamp is the end of the coded frames
(``num_frames * frame_size``), and its 12-byte payload is three u32: ``num_samples`` (the signal
length at the codec rate), ``original_sample_rate`` and ``original_num_samples``, so a receiver
can trim its output to exactly the sender's input.

Authentication (optional, flag 0x2): sender and receiver share a secret key of at least 16
bytes; the tag is a truncated HMAC-SHA256 over the header and payload, as SRTP truncates its
HMAC to 80 bits. The flag bit is covered by the tag, so it cannot be stripped; a receiver with a
key refuses packets without it, and one without a key refuses packets with it. The version
stays 1: a packet without the flag is byte for byte what it was before authentication existed,
and an older reader refuses an authenticated packet as "unsupported packet flags 0x2" instead
of reading the tag as codes. DEPTH was added the same way: without it a packet is unchanged,
and an older reader refuses one with it. The tag says who made the packet, not when: replays
are caught by the receiver's sequence-number window, as in SRTP.

Overhead: 13 bytes per packet (11 header + 2 CRC), one more with DEPTH, 10 more with a tag. The
CRC, which covers the tag too, turns any corruption the channel causes into a lost packet
(:class:`ChecksumError`); a packet with a correct CRC but a wrong tag was made or altered by
someone without the key (:class:`AuthenticationError`). Every malformed, damaged or
unauthenticated packet raises a :class:`PacketError`, whose message says what is wrong.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

import numpy as np

from .bitstream import MAX_CODE_BITS, _int_field, pack_codes, packed_size, unpack_codes

__all__ = [
    "CRC_SIZE",
    "FLAG_AUTH",
    "FLAG_END",
    "FLAG_FEC_DEPTH",
    "HEADER_SIZE",
    "MAX_FEC_DEPTH",
    "MIN_KEY_BYTES",
    "MIN_PACKET_SIZE",
    "OVERHEAD_BYTES",
    "PACKET_VERSION",
    "RTP_UDP_IPV4_BYTES",
    "TAG_SIZE",
    "AuthenticationError",
    "ChecksumError",
    "EndOfStream",
    "Packet",
    "PacketError",
    "Packetizer",
    "auth_tag",
    "check_key",
    "is_end_packet",
    "max_packet_size",
    "nominal_rates",
    "packetize",
    "parse_packet",
    "seq_add",
    "seq_diff",
    "seq_gt",
    "serialize_packet",
    "ts_diff",
    "unwrap",
]

PACKET_VERSION: int = 1
FLAG_END: int = 0x1
FLAG_AUTH: int = 0x2
FLAG_FEC_DEPTH: int = 0x4
_KNOWN_FLAGS = FLAG_END | FLAG_AUTH | FLAG_FEC_DEPTH
#: The most earlier packets one packet may copy for FEC.
MAX_FEC_DEPTH: int = 4

#: version|flags, codebook_bits, sequence, timestamp, num_codebooks, num_frames, fec_codebooks
_HEADER = struct.Struct(">BBHIBBB")
_CRC = struct.Struct(">H")
_END = struct.Struct(">III")  # num_samples, original_sample_rate, original_num_samples

HEADER_SIZE: int = _HEADER.size  # 11
CRC_SIZE: int = _CRC.size  # 2
#: Bytes our format adds to the payload of every packet.
OVERHEAD_BYTES: int = HEADER_SIZE + CRC_SIZE  # 13
MIN_PACKET_SIZE: int = OVERHEAD_BYTES
#: Bytes of the authentication tag (80 bits of HMAC-SHA256, as SRTP's default tag).
TAG_SIZE: int = 10
#: Shortest pre-shared key accepted (128 bits).
MIN_KEY_BYTES: int = 16
#: Bytes the network would add per packet: RTP (12) + UDP (8) + IPv4 (20) headers.
RTP_UDP_IPV4_BYTES: int = 12 + 8 + 20

SEQ_BITS = 16
TS_BITS = 32
_U8, _U16, _U32 = 0xFF, 0xFFFF, 0xFFFF_FFFF


class PacketError(ValueError):
    """A byte string that is not a valid v1 packet (truncated, damaged, or invalid fields).

    The two subclasses say why when it matters to a receiver: :class:`ChecksumError` (damaged
    on the way: a lost packet) and :class:`AuthenticationError` (not made by a key holder).
    Anything else is a malformed packet: intact, but not a valid one.
    """


class ChecksumError(PacketError):
    """The CRC does not match: the packet was damaged on the way (or is random bytes)."""


class AuthenticationError(PacketError):
    """The packet's tag is missing, wrong, or unexpected: spoofed or altered, or the two ends
    do not share the same key."""


# --------------------------------------------------------------------------------------------
# Wrapping arithmetic (sequence numbers mod 2**16, timestamps mod 2**32)
# --------------------------------------------------------------------------------------------


def seq_add(seq: int, n: int, bits: int = SEQ_BITS) -> int:
    """``seq + n`` modulo ``2**bits``."""
    return (seq + n) & ((1 << bits) - 1)


def seq_diff(a: int, b: int, bits: int = SEQ_BITS) -> int:
    """Signed distance ``a - b`` on the circle, in ``[-2**(bits-1), 2**(bits-1))``.

    ``seq_diff(2, 65534) == 4``: 2 comes four packets after 65534 across the wrap.
    """
    half = 1 << (bits - 1)
    return ((a - b + half) & ((1 << bits) - 1)) - half


def seq_gt(a: int, b: int, bits: int = SEQ_BITS) -> bool:
    """Whether ``a`` comes after ``b`` (as RFC 1982 serial numbers; ``seq_gt(0, 65535)``)."""
    return seq_diff(a, b, bits) > 0


def ts_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 32-bit timestamps."""
    return seq_diff(a, b, TS_BITS)


def unwrap(value: int, reference: int, bits: int = SEQ_BITS) -> int:
    """The unbounded integer congruent to ``value`` mod ``2**bits`` that is nearest to
    ``reference`` (an unbounded, already unwrapped value): how a receiver turns wrapping
    sequence numbers or timestamps into a monotonic count."""
    return reference + seq_diff(value, reference & ((1 << bits) - 1), bits)


# --------------------------------------------------------------------------------------------
# Packets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndOfStream:
    """What an END packet tells the receiver: the lengths to restore."""

    num_samples: int  # signal length at the codec rate
    original_sample_rate: int
    original_num_samples: int


@dataclass(frozen=True, eq=False, repr=False)
class Packet:
    """One packet: ``codes [K, F]``, optional FEC copies ``fec [D * C, F]`` of the previous D
    packets' frames (first C codebooks each), or the END marker.

    Attributes:
        seq: 16-bit sequence number.
        timestamp: 32-bit sample index (codec rate) of the first frame.
        codes: int64 ``[K, F]`` (None or empty for END).
        fec: int64 ``[D * C, F]``: rows ``(d - 1) * C`` to ``d * C`` copy the packet d before
            this one (no rows: no FEC).
        codebook_bits: bits per code.
        end: set for an END packet (then ``codes`` and ``fec`` are empty).
        fec_depth: D, the number of earlier packets ``fec`` copies (1 without FEC).
    """

    seq: int
    timestamp: int
    codes: np.ndarray | None = None
    fec: np.ndarray | None = None
    codebook_bits: int = 10
    end: EndOfStream | None = None
    fec_depth: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq", _int_field("seq", self.seq, 0, _U16))
        object.__setattr__(self, "timestamp", _int_field("timestamp", self.timestamp, 0, _U32))
        object.__setattr__(self, "codebook_bits",
                           _int_field("codebook_bits", self.codebook_bits, 1, MAX_CODE_BITS))
        codes = np.zeros((0, 0), np.int64) if self.codes is None else np.asarray(self.codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must be [K, F], got shape {codes.shape}")
        fec = np.zeros((0, codes.shape[1]), np.int64) if self.fec is None else np.asarray(
            self.fec)
        if fec.ndim != 2 or (fec.shape[0] and fec.shape[1] != codes.shape[1]):
            raise ValueError(f"fec must be [D * C, F] with F = {codes.shape[1]}, got "
                             f"{fec.shape}")
        depth = _int_field("fec_depth", self.fec_depth, 1, MAX_FEC_DEPTH)
        if fec.shape[0] == 0:
            depth = 1
        elif fec.shape[0] % depth:
            raise ValueError(f"fec has {fec.shape[0]} rows, not a multiple of fec_depth {depth}")
        if fec.shape[0] // depth > codes.shape[0]:
            raise ValueError(f"fec has {fec.shape[0] // depth} codebooks per copy, more than the "
                             f"{codes.shape[0]} of the packet")
        object.__setattr__(self, "fec_depth", depth)
        fec = fec.reshape(fec.shape[0], codes.shape[1])
        for name, n in (("num_codebooks", codes.shape[0]), ("num_frames", codes.shape[1])):
            _int_field(name, n, 0, _U8)
        if self.end is not None and codes.size + fec.size:
            raise ValueError("an END packet carries no codes")
        if self.end is None and codes.size == 0:
            raise ValueError("a media packet needs at least one codebook and one frame")
        for arr in (codes, fec):
            if arr.size and arr.dtype.kind not in "iu":
                raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
        object.__setattr__(self, "codes", codes.astype(np.int64, copy=False))
        object.__setattr__(self, "fec", fec.astype(np.int64, copy=False))

    @property
    def num_codebooks(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    @property
    def fec_codebooks(self) -> int:
        """C, codebooks in each FEC copy."""
        return int(self.fec.shape[0]) // self.fec_depth

    def fec_copy(self, d: int) -> np.ndarray:
        """The FEC copy ``[C, F]`` of the packet ``d`` before this one (1 <= d <= fec_depth)."""
        if not 1 <= d <= self.fec_depth:
            raise ValueError(f"this packet copies packets 1..{self.fec_depth} back, not {d}")
        c = self.fec_codebooks
        return self.fec[(d - 1) * c: d * c]

    @property
    def is_end(self) -> bool:
        return self.end is not None

    @property
    def payload_bytes(self) -> int:
        if self.end is not None:
            return _END.size
        return packed_size(self.num_codebooks + self.fec.shape[0], self.num_frames,
                           self.codebook_bits)

    @property
    def size(self) -> int:
        """Serialized size in bytes (without an authentication tag)."""
        return OVERHEAD_BYTES + (self.fec_depth > 1) + self.payload_bytes

    def __repr__(self) -> str:
        if self.end is not None:
            return f"Packet(END seq={self.seq} ts={self.timestamp} samples={self.end.num_samples})"
        return (f"Packet(seq={self.seq} ts={self.timestamp} K={self.num_codebooks} "
                f"F={self.num_frames} fec={self.fec_codebooks}x{self.fec_depth} {self.size} B)")


def check_key(key: bytes | bytearray) -> bytes:
    """``key`` as bytes, if it is usable as a pre-shared key (at least 16 bytes).

    Raises:
        ValueError: too short, or not bytes.
    """
    if not isinstance(key, bytes | bytearray):
        raise ValueError(f"a key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a key must have at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return bytes(key)


def auth_tag(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """The 10-byte tag of ``data`` (header and payload): truncated HMAC-SHA256."""
    return hmac.new(key, data, hashlib.sha256).digest()[:TAG_SIZE]


def serialize_packet(packet: Packet, key: bytes | None = None) -> bytes:
    """``packet`` -> bytes; ``parse_packet(serialize_packet(p, key), key)`` equals ``p`` field
    by field. With ``key``, the AUTH flag is set and the tag appended (``TAG_SIZE`` bytes more).

    Raises:
        ValueError: a code does not fit in ``codebook_bits``, or the key is too short.
    """
    flags = FLAG_END if packet.end is not None else 0
    if packet.fec_depth > 1:
        flags |= FLAG_FEC_DEPTH
    if key is not None:
        key = check_key(key)
        flags |= FLAG_AUTH
    header = _HEADER.pack((PACKET_VERSION << 4) | flags, packet.codebook_bits, packet.seq,
                          packet.timestamp, packet.num_codebooks, packet.num_frames,
                          packet.fec_codebooks)
    if packet.fec_depth > 1:
        header += bytes([packet.fec_depth])
    if packet.end is not None:
        e = packet.end
        payload = _END.pack(_int_field("num_samples", e.num_samples, 0, _U32),
                            _int_field("original_sample_rate", e.original_sample_rate, 1, _U32),
                            _int_field("original_num_samples", e.original_num_samples, 0, _U32))
    else:
        payload = pack_codes(np.concatenate([packet.codes, packet.fec]), packet.codebook_bits)
    body = header + payload
    if key is not None:
        body += auth_tag(key, body)
    return body + _CRC.pack(crc16(body))


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF): ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


def is_end_packet(data: bytes | bytearray | memoryview) -> bool:
    """Cheap check for an intact END packet (version, flag, length and CRC), without parsing
    the rest and without checking an authentication tag (a relay has no key)."""
    view = memoryview(data).cast("B")
    if not view or view[0] >> 4 != PACKET_VERSION or not view[0] & FLAG_END:
        return False
    tag = TAG_SIZE if view[0] & FLAG_AUTH else 0
    return (len(view) == OVERHEAD_BYTES + _END.size + tag
            and _CRC.unpack_from(view, len(view) - CRC_SIZE)[0] == crc16(view[:-CRC_SIZE]))


def max_packet_size(num_codebooks: int, codebook_bits: int, authenticated: bool = False,
                    frames_per_packet: int = _U8) -> int:
    """The largest valid packet with at most ``num_codebooks`` codebooks (and FEC copies of as
    many, ``MAX_FEC_DEPTH`` deep) of ``codebook_bits`` bits and ``frames_per_packet`` frames:
    anything longer is not a packet a receiver for that model can use."""
    k = max(1, num_codebooks)
    payload = max(_END.size, packed_size((1 + MAX_FEC_DEPTH) * k, frames_per_packet,
                                         codebook_bits))
    return OVERHEAD_BYTES + 1 + payload + (TAG_SIZE if authenticated else 0)


def parse_packet(data: bytes | bytearray | memoryview, key: bytes | None = None) -> Packet:
    """Parse and validate one packet; with ``key``, also check its authentication tag.

    Checks, in order: length, CRC, version, the tag (required with a key, refused without),
    flags, fields, payload length, padding bits. The tag is checked before any field is
    interpreted, so with a key nothing a non-key-holder wrote gets further than that.

    Raises:
        ChecksumError: the CRC does not match (damaged; the message also names a version
            field that is not 1, since a newer format may check differently).
        AuthenticationError: with ``key``: no tag or a wrong one; without: a tag.
        PacketError: for anything else but exactly one intact v1 packet.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    if size < MIN_PACKET_SIZE:
        raise PacketError(f"packet truncated: {size} bytes, a packet is at least "
                          f"{MIN_PACKET_SIZE}")
    version = view[0] >> 4
    (stored,) = _CRC.unpack_from(view, size - CRC_SIZE)
    if stored != crc16(view[: size - CRC_SIZE]):
        if version != PACKET_VERSION:
            raise ChecksumError(f"packet damaged, or of unsupported packet version {version} "
                                f"(this build reads version {PACKET_VERSION}): checksum "
                                "mismatch")
        raise ChecksumError("packet damaged: checksum mismatch")
    if version != PACKET_VERSION:
        raise PacketError(f"unsupported packet version {version} (this build reads "
                          f"version {PACKET_VERSION})")
    # Intact from here on: anything wrong below was sent that way.
    vflags, bits, seq, ts, k, f, c = _HEADER.unpack_from(view, 0)
    flags = vflags & 0xF
    end = size - CRC_SIZE
    if key is not None:
        if not flags & FLAG_AUTH:
            raise AuthenticationError("packet not authenticated: no tag, and this receiver "
                                      "has a key")
        if end - HEADER_SIZE < TAG_SIZE:
            raise PacketError(f"packet truncated: {size} bytes, an authenticated packet is at "
                              f"least {MIN_PACKET_SIZE + TAG_SIZE}")
        end -= TAG_SIZE
        if not hmac.compare_digest(view[end: end + TAG_SIZE], auth_tag(check_key(key),
                                                                         view[:end])):
            raise AuthenticationError("packet authentication failed: wrong tag (spoofed or "
                                      "altered, or another key)")
    elif flags & FLAG_AUTH:
        raise AuthenticationError("packet is authenticated (flag 0x2), but no key was given")
    if flags & ~_KNOWN_FLAGS:
        raise PacketError(f"unsupported packet flags 0x{flags:x}")
    if not 1 <= bits <= MAX_CODE_BITS:
        raise PacketError(f"invalid packet: codebook_bits {bits} outside 1..{MAX_CODE_BITS}")
    start, depth = HEADER_SIZE, 1
    if flags & FLAG_FEC_DEPTH:
        if end <= start:
            raise PacketError("packet truncated: flag DEPTH but no fec_depth byte")
        depth, start = view[start], start + 1
        if not 2 <= depth <= MAX_FEC_DEPTH:
            raise PacketError(f"invalid packet: fec_depth {depth} outside 2..{MAX_FEC_DEPTH}")
        if c == 0:
            raise PacketError("invalid packet: fec_depth without FEC codebooks")
    payload = view[start: end]
    if flags & FLAG_END:
        if k or f or c or depth > 1:
            raise PacketError("invalid packet: END packet with codes")
        if len(payload) != _END.size:
            raise PacketError(f"invalid END packet: payload is {len(payload)} bytes, "
                              f"expected {_END.size}")
        n, rate, orig = _END.unpack_from(payload, 0)
        if rate == 0:
            raise PacketError("invalid END packet: original_sample_rate 0")
        return Packet(seq, ts, codebook_bits=bits, end=EndOfStream(n, rate, orig))
    if k == 0 or f == 0:
        raise PacketError(f"invalid packet: {k} codebooks x {f} frames")
    if c > k:
        raise PacketError(f"invalid packet: {c} FEC codebooks but only {k} codebooks")
    rows = k + depth * c
    expected = packed_size(rows, f, bits)
    if len(payload) != expected:
        fec = f"{depth}x{c}" if depth > 1 else f"{c}"
        raise PacketError(f"packet truncated or padded: payload is {len(payload)} bytes, "
                          f"{k}+{fec} codebooks x {f} frames x {bits} bits need {expected}")
    try:
        codes = unpack_codes(bytes(payload), rows, f, bits)
    except ValueError as exc:
        raise PacketError(f"invalid packet payload: {exc}") from None
    return Packet(seq, ts, codes[:k], codes[k:], codebook_bits=bits, fec_depth=depth)


# --------------------------------------------------------------------------------------------
# Sender side: frames -> packets
# --------------------------------------------------------------------------------------------


class Packetizer:
    """Groups code frames into packets as they are produced.

    ``push(codes [K, n])`` returns the packets completed so far (F frames each); ``flush()``
    returns a last, shorter packet for frames left over; ``end(...)`` the END packet. With
    ``fec_codebooks = C > 0`` every packet after the first also carries the first C codebooks of
    the previous packet's frames, or of the previous ``fec_depth`` packets' (as many as there
    are).
    """

    def __init__(self, codebook_bits: int, frame_size: int, frames_per_packet: int = 1,
                 fec_codebooks: int = 0, first_seq: int = 0, first_timestamp: int = 0,
                 fec_depth: int = 1) -> None:
        self.codebook_bits = _int_field("codebook_bits", codebook_bits, 1, MAX_CODE_BITS)
        self.frame_size = _int_field("frame_size", frame_size, 1, _U32)
        self.frames_per_packet = _int_field("frames_per_packet", frames_per_packet, 1, _U8)
        self.fec_codebooks = _int_field("fec_codebooks", fec_codebooks, 0, _U8)
        self.fec_depth = _int_field("fec_depth", fec_depth, 1, MAX_FEC_DEPTH)
        self.seq = _int_field("first_seq", first_seq, 0, _U16)
        self.timestamp = _int_field("first_timestamp", first_timestamp, 0, _U32)
        self.frames_sent = 0
        self._pending: list[np.ndarray] = []  # columns [K]
        self._previous: list[np.ndarray] = []  # the last fec_depth packets' codes, newest first

    def _emit(self, codes: np.ndarray) -> Packet:
        k = codes.shape[0]
        c = self.fec_codebooks
        if c > k:
            raise ValueError(f"fec_codebooks {c} exceeds the {k} codebooks sent")
        copies = []
        if c:
            for prev in self._previous:  # only consecutive packets of the same length
                if prev.shape[1] != codes.shape[1] or prev.shape[0] < c:
                    break
                copies.append(prev[:c])
        fec = np.concatenate(copies) if copies else None
        packet = Packet(self.seq, self.timestamp, codes, fec, self.codebook_bits,
                        fec_depth=max(1, len(copies)))
        self._previous = [codes, *self._previous][: self.fec_depth]
        self.seq = seq_add(self.seq, 1)
        self.timestamp = seq_add(self.timestamp, codes.shape[1] * self.frame_size, TS_BITS)
        self.frames_sent += codes.shape[1]
        return packet

    def push(self, codes: np.ndarray) -> list[Packet]:
        """Add frames ``codes [K, n]``; return the packets now complete."""
        arr = np.asarray(codes)
        if arr.ndim != 2:
            raise ValueError(f"codes must be [K, n], got shape {arr.shape}")
        self._pending.extend(arr.T)
        out = []
        f = self.frames_per_packet
        while len(self._pending) >= f:
            block, self._pending = self._pending[:f], self._pending[f:]
            out.append(self._emit(np.stack(block, axis=1)))
        return out

    def flush(self) -> list[Packet]:
        """Send any frames left over as one shorter packet (without FEC: its size differs)."""
        if not self._pending:
            return []
        block, self._pending = self._pending, []
        return [self._emit(np.stack(block, axis=1))]

    def end(self, num_samples: int, original_sample_rate: int,
            original_num_samples: int) -> Packet:
        """The END packet (does not advance the sequence number, so repeats are identical)."""
        return Packet(self.seq, self.timestamp, codebook_bits=self.codebook_bits,
                      end=EndOfStream(num_samples, original_sample_rate, original_num_samples))


def packetize(codes: np.ndarray, codebook_bits: int, frame_size: int, frames_per_packet: int = 1,
              fec_codebooks: int = 0, first_seq: int = 0, fec_depth: int = 1) -> list[Packet]:
    """All media packets for ``codes [K, F]`` (no END packet)."""
    p = Packetizer(codebook_bits, frame_size, frames_per_packet, fec_codebooks, first_seq,
                   fec_depth=fec_depth)
    return p.push(codes) + p.flush()


def nominal_rates(num_codebooks: int, fec_codebooks: int, frames_per_packet: int,
                  codebook_bits: int, frame_rate: float,
                  authenticated: bool = False, fec_depth: int = 1) -> dict[str, float]:
    """Bitrates in kbit/s of a stream of full packets: ``payload_kbps`` (the codes),
    ``fec_kbps`` (the FEC copies: ``fec_depth`` of ``fec_codebooks`` each), ``auth_kbps`` (the
    authentication tags, 0 without), ``packet_kbps`` (whole packets: our header, CRC and tag
    included) and ``rtp_udp_ipv4_kbps`` (what those headers would add on a real network)."""
    packets_per_s = frame_rate / frames_per_packet
    tag = TAG_SIZE if authenticated else 0
    fec_rows = fec_codebooks * fec_depth
    depth_byte = 1 if fec_rows and fec_depth > 1 else 0
    size = (OVERHEAD_BYTES + depth_byte + tag
            + packed_size(num_codebooks + fec_rows, frames_per_packet, codebook_bits))
    return {
        "payload_kbps": num_codebooks * codebook_bits * frame_rate / 1000,
        "fec_kbps": fec_rows * codebook_bits * frame_rate / 1000,
        "auth_kbps": tag * 8 * packets_per_s / 1000,
        "packet_kbps": size * 8 * packets_per_s / 1000,
        "rtp_udp_ipv4_kbps": RTP_UDP_IPV4_BYTES * 8 * packets_per_s / 1000,
    }
