"""Stream file format v1 for speechcodec, and the bit packing of codes.

This module is deliberately free of torch: it only needs the standard library and numpy, so
tools that inspect or validate streams (``info``, format checks) load quickly.

A stream is a fixed little-endian header, the model id, a header CRC-32, the bit-packed codes
and a payload CRC-32. All multi-byte integers are little-endian and unsigned. ``N`` is the
length of the model id and ``P`` the length of the payload, both in bytes::

        Offset  Size  Type   Field                 Meaning
    ----------  ----  -----  --------------------  ---------------------------------------------
             0     4  bytes  magic                 b"SPCD"
             4     1  u8     version               format version, 1
             5     1  u8     flags                 reserved, must be 0
             6     2  u16    header_len            49 + N: bytes from offset 0 to the end of
                                                   header_crc (= offset of the payload)
             8     4  u32    sample_rate           codec sample rate in Hz (16000)
            12     2  u16    frame_size            samples per frame at sample_rate (320)
            14     1  u8     num_codebooks         K, codebooks used (>= 1)
            15     1  u8     codebook_bits         B, bits per code (1..16, normally 10)
            16     4  u32    num_frames            F, frames in the payload
            20     8  u64    num_samples           length to restore, at original_sample_rate
            28     4  u32    original_sample_rate  sample rate of the encoder's input in Hz
            32     8  bytes  weights_hash          first 8 bytes of the weights' SHA-256
            40     4  u32    payload_len           P = ceil(F * K * B / 8)
            44     1  u8     model_id_len          N (1..255)
            45     N  ascii  model_id              e.g. "speechcodec-base-v1"
        45 + N     4  u32    header_crc            CRC-32 of bytes [0, 45 + N)
        49 + N     P  bits   payload               codes, frame-major, MSB-first (see below)
    49 + N + P     4  u32    payload_crc           CRC-32 of the P payload bytes
    53 + N + P                                     end of stream, nothing may follow

Payload: the K * F codes of ``codes[k, f]`` are written frame by frame (frame 0 codebooks
0..K-1, then frame 1, ...), each as B bits, most significant bit first, back to back with no
padding between codes; bit 7 of payload byte 0 is the top bit of ``codes[0, 0]``. Only the last
byte is padded, with zero bits. For example K = 2, F = 1, B = 10, codes [[1], [2]]::

    bits   0000000001 0000000010 0000
           |-code 0-| |-code 1-| pad
    bytes  00000000 01000000 00100000  =  00 40 20

CRC-32 is ``zlib.crc32`` (IEEE 802.3 polynomial, as in zip and PNG). A reader checks, in
order: magic, version, header length, header CRC, flags and header fields, payload length,
total length, payload CRC, padding bits. Every failure raises :class:`StreamError`.
"""

from __future__ import annotations

import operator
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "HEADER_FIXED_SIZE",
    "MAGIC",
    "MAX_CODE_BITS",
    "MAX_MODEL_ID_BYTES",
    "MIN_STREAM_SIZE",
    "Stream",
    "StreamError",
    "StreamHeader",
    "pack_codes",
    "packed_size",
    "parse_stream",
    "peek_header",
    "serialize_stream",
    "unpack_codes",
]

MAGIC: bytes = b"SPCD"
FORMAT_VERSION: int = 1

#: magic, version, flags, header_len, sample_rate, frame_size, num_codebooks, codebook_bits,
#: num_frames, num_samples, original_sample_rate, weights_hash, payload_len, model_id_len
_FIXED = struct.Struct("<4sBBHIHBBIQI8sIB")
_CRC = struct.Struct("<I")

#: Size of the fixed part of the header, up to and including ``model_id_len``.
HEADER_FIXED_SIZE: int = _FIXED.size  # 45
#: Longest model id the format can store.
MAX_MODEL_ID_BYTES: int = 255
#: Most bits a single code may use.
MAX_CODE_BITS: int = 16
#: Smallest possible stream: fixed header, 1-byte model id, two CRCs, empty payload.
MIN_STREAM_SIZE: int = HEADER_FIXED_SIZE + 1 + 2 * _CRC.size  # 54

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_WEIGHTS_HASH_BYTES = 8


class StreamError(ValueError):
    """Raised for any byte string that is not a valid speechcodec stream.

    The message is a single line saying what is wrong, suitable for showing to a user.
    """


# --------------------------------------------------------------------------------------------
# Bit packing
# --------------------------------------------------------------------------------------------


def _check_bits(bits_per_code: int) -> int:
    if isinstance(bits_per_code, bool):
        raise TypeError(f"bits_per_code must be an integer, got {bits_per_code!r}")
    try:
        bits = operator.index(bits_per_code)
    except TypeError:
        raise TypeError(f"bits_per_code must be an integer, got {bits_per_code!r}") from None
    if not 1 <= bits <= MAX_CODE_BITS:
        raise ValueError(f"bits_per_code must be in 1..{MAX_CODE_BITS}, got {bits}")
    return bits


def packed_size(num_codebooks: int, num_frames: int, bits_per_code: int) -> int:
    """Bytes needed to pack ``num_codebooks * num_frames`` codes of ``bits_per_code`` bits."""
    return (num_codebooks * num_frames * bits_per_code + 7) // 8


def pack_codes(codes: np.ndarray, bits_per_code: int) -> bytes:
    """Pack integer codes into a byte string, frame-major and MSB-first.

    Args:
        codes: integer array of shape ``[K, F]`` (K codebooks, F frames), every value in
            ``[0, 2**bits_per_code)``.
        bits_per_code: bits per code, 1..16.

    Returns:
        ``ceil(K * F * bits_per_code / 8)`` bytes: ``codes[:, 0]`` then ``codes[:, 1]`` ...,
        each code as ``bits_per_code`` bits, most significant bit first, with no padding
        between codes; the unused low bits of the last byte are zero.

    Raises:
        ValueError: if ``codes`` is not a 2-D integer array, a code is out of range, or
            ``bits_per_code`` is not in 1..16.
    """
    bits = _check_bits(bits_per_code)
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must have shape [K, F], got an array of shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {arr.dtype}")
    if arr.size == 0:
        return b""
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= 1 << bits:
        bad = low if low < 0 else high
        raise ValueError(f"code {bad} out of range for {bits}-bit codes [0, {1 << bits})")

    flat = np.ascontiguousarray(arr.T).reshape(-1).astype(np.uint32)  # frame-major order
    bit_matrix = np.empty((flat.size, bits), dtype=np.uint8)
    for j in range(bits):
        bit_matrix[:, j] = (flat >> np.uint32(bits - 1 - j)) & np.uint32(1)
    return np.packbits(bit_matrix.reshape(-1)).tobytes()


def unpack_codes(
    data: bytes, num_codebooks: int, num_frames: int, bits_per_code: int
) -> np.ndarray:
    """Inverse of :func:`pack_codes`.

    Args:
        data: exactly ``ceil(num_codebooks * num_frames * bits_per_code / 8)`` bytes.
        num_codebooks: K, number of codebooks (>= 0).
        num_frames: F, number of frames (>= 0).
        bits_per_code: bits per code, 1..16.

    Returns:
        int64 array of shape ``[K, F]``.

    Raises:
        ValueError: if ``data`` has the wrong length, its padding bits are not zero, or an
            argument is out of range.
    """
    bits = _check_bits(bits_per_code)
    k = operator.index(num_codebooks)
    f = operator.index(num_frames)
    if k < 0 or f < 0:
        raise ValueError(f"num_codebooks and num_frames must be >= 0, got {k} and {f}")
    buf = np.frombuffer(data, dtype=np.uint8)
    expected = packed_size(k, f, bits)
    if buf.size != expected:
        raise ValueError(
            f"packed codes have {buf.size} bytes, expected {expected} "
            f"for {k} codebooks x {f} frames x {bits} bits"
        )
    count = k * f
    if count == 0:
        return np.zeros((k, f), dtype=np.int64)
    used_bits = count * bits
    pad = expected * 8 - used_bits
    if pad and int(buf[-1]) & ((1 << pad) - 1):
        raise ValueError("packed codes have nonzero padding bits in the last byte")

    bit_matrix = np.unpackbits(buf)[:used_bits].reshape(count, bits)
    values = np.zeros(count, dtype=np.int64)
    for j in range(bits):
        values <<= 1
        values |= bit_matrix[:, j]
    return np.ascontiguousarray(values.reshape(f, k).T)


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------


def _int_field(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {number}")
    return number


@dataclass(frozen=True)
class StreamHeader:
    """Everything a decoder needs besides the codes themselves.

    Attributes:
        model_id: printable ASCII name of the model, 1..255 characters.
        weights_hash: 16 hex digits, the first 8 bytes of the SHA-256 of the model weights
            (``hashlib.sha256(weights).hexdigest()[:16]``); stored lower-case.
        sample_rate: codec sample rate in Hz (16000).
        frame_size: samples per frame at ``sample_rate`` (320).
        num_codebooks: K, codebooks used, 1..255.
        codebook_bits: bits per code, 1..16 (10 for 1024-entry codebooks).
        num_frames: F, number of frames, 0..2**32 - 1.
        num_samples: length of the original signal in samples at ``original_sample_rate``;
            the decoder outputs exactly this many samples.
        original_sample_rate: sample rate of the encoder's input in Hz.
    """

    model_id: str
    weights_hash: str
    sample_rate: int
    frame_size: int
    num_codebooks: int
    codebook_bits: int
    num_frames: int
    num_samples: int
    original_sample_rate: int

    def __post_init__(self) -> None:
        model_id = self.model_id
        if not isinstance(model_id, str):
            raise TypeError(f"model_id must be a str, got {type(model_id).__name__}")
        if not model_id:
            raise ValueError("model_id must not be empty")
        if not all(" " <= ch <= "~" for ch in model_id):
            raise ValueError("model_id must be printable ASCII")
        if len(model_id) > MAX_MODEL_ID_BYTES:
            raise ValueError(
                f"model_id is {len(model_id)} bytes, at most {MAX_MODEL_ID_BYTES} allowed"
            )

        digest = self.weights_hash
        if not isinstance(digest, str):
            raise TypeError(f"weights_hash must be a hex str, got {type(digest).__name__}")
        if len(digest) != 2 * _WEIGHTS_HASH_BYTES or not set(digest) <= _HEX_DIGITS:
            raise ValueError(
                f"weights_hash must be exactly {2 * _WEIGHTS_HASH_BYTES} hex digits, got {digest!r}"
            )
        object.__setattr__(self, "weights_hash", digest.lower())

        for name, low, high in (
            ("sample_rate", 1, _U32),
            ("frame_size", 1, _U16),
            ("num_codebooks", 1, _U8),
            ("codebook_bits", 1, MAX_CODE_BITS),
            ("num_frames", 0, _U32),
            ("num_samples", 0, _U64),
            ("original_sample_rate", 1, _U32),
        ):
            object.__setattr__(self, name, _int_field(name, getattr(self, name), low, high))

        if self.payload_bytes > _U32:
            raise ValueError(
                f"payload of {self.payload_bytes} bytes does not fit the format (max {_U32})"
            )

    # -- sizes --------------------------------------------------------------------------------

    @property
    def bits_per_frame(self) -> int:
        """Payload bits per frame, ``num_codebooks * codebook_bits``."""
        return self.num_codebooks * self.codebook_bits

    @property
    def payload_bits(self) -> int:
        """Bits of code data, ``num_frames * num_codebooks * codebook_bits``."""
        return self.num_frames * self.bits_per_frame

    @property
    def payload_bytes(self) -> int:
        """Bytes of packed code data, ``ceil(payload_bits / 8)``."""
        return (self.payload_bits + 7) // 8

    @property
    def header_bytes(self) -> int:
        """Bytes before the payload (fixed header, model id and header CRC)."""
        return HEADER_FIXED_SIZE + len(self.model_id) + _CRC.size

    @property
    def stream_bytes(self) -> int:
        """Total size of the serialized stream in bytes."""
        return self.header_bytes + self.payload_bytes + _CRC.size

    # -- rates --------------------------------------------------------------------------------

    @property
    def frame_rate(self) -> float:
        """Frames per second, ``sample_rate / frame_size`` (50.0 for 16000 / 320)."""
        return self.sample_rate / self.frame_size

    @property
    def duration_seconds(self) -> float:
        """Duration of the original signal, ``num_samples / original_sample_rate``."""
        return self.num_samples / self.original_sample_rate

    @property
    def payload_kbps(self) -> float:
        """Nominal code rate in kbit/s, ``bits_per_frame * frame_rate / 1000``.

        1.5, 3.0 and 6.0 for 3, 6 and 12 codebooks of 10 bits at 50 frames/s.
        """
        return self.bits_per_frame * self.frame_rate / 1000.0

    def exact_kbps(self, include_overhead: bool = False) -> float:
        """Actual rate over the signal's duration in kbit/s.

        Args:
            include_overhead: count the whole stream (header and CRCs) instead of only the
                payload bits.

        Returns:
            ``bits / duration_seconds / 1000``, or 0.0 for an empty signal.
        """
        duration = self.duration_seconds
        if duration <= 0.0:
            return 0.0
        bits = self.stream_bytes * 8 if include_overhead else self.payload_bits
        return bits / duration / 1000.0


class Stream(NamedTuple):
    """A parsed stream: its header and codes shaped ``[K, F]`` (int64)."""

    header: StreamHeader
    codes: np.ndarray


# --------------------------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------------------------


def _crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & _U32


def _encode_header(header: StreamHeader) -> bytes:
    model_id = header.model_id.encode("ascii")
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        header.header_bytes,
        header.sample_rate,
        header.frame_size,
        header.num_codebooks,
        header.codebook_bits,
        header.num_frames,
        header.num_samples,
        header.original_sample_rate,
        bytes.fromhex(header.weights_hash),
        header.payload_bytes,
        len(model_id),
    )
    body = fixed + model_id
    return body + _CRC.pack(_crc32(body))


def serialize_stream(header: StreamHeader, codes: np.ndarray) -> bytes:
    """Serialize a header and its codes into a v1 stream.

    Args:
        header: stream header; ``num_codebooks``, ``num_frames`` and ``codebook_bits``
            describe ``codes``.
        codes: integer array of shape ``[K, F]`` = ``[header.num_codebooks,
            header.num_frames]``, values in ``[0, 2**header.codebook_bits)``.

    Returns:
        The stream bytes, ``header.stream_bytes`` long.

    Raises:
        ValueError: if ``codes`` has the wrong shape or dtype or a code is out of range.
    """
    if not isinstance(header, StreamHeader):
        raise TypeError(f"header must be a StreamHeader, got {type(header).__name__}")
    arr = np.asarray(codes)
    expected_shape = (header.num_codebooks, header.num_frames)
    if arr.shape != expected_shape:
        raise ValueError(
            f"codes have shape {arr.shape}, header expects [K, F] = {list(expected_shape)}"
        )
    payload = pack_codes(arr, header.codebook_bits)
    return b"".join((_encode_header(header), payload, _CRC.pack(_crc32(payload))))


def _parse_header(data: bytes | bytearray | memoryview) -> tuple[StreamHeader, int, int]:
    """Validate the header at the start of ``data``; return (header, header_len, payload_len)."""
    view = memoryview(data).cast("B")
    size = len(view)

    head = bytes(view[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        raise StreamError("not a speechcodec stream (bad magic)")
    if size < len(MAGIC) + 1:
        raise StreamError(
            f"stream truncated: {size} bytes, a stream is at least {MIN_STREAM_SIZE} bytes"
        )
    version = view[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise StreamError(
            f"unsupported stream format version {version} "
            f"(this build reads version {FORMAT_VERSION})"
        )
    if size < HEADER_FIXED_SIZE:
        raise StreamError(
            f"stream truncated: {size} bytes, a stream is at least {MIN_STREAM_SIZE} bytes"
        )

    (
        _magic,
        _version,
        flags,
        header_len,
        sample_rate,
        frame_size,
        num_codebooks,
        codebook_bits,
        num_frames,
        num_samples,
        original_sample_rate,
        weights_hash,
        payload_len,
        model_id_len,
    ) = _FIXED.unpack_from(view, 0)

    min_len = HEADER_FIXED_SIZE + _CRC.size
    max_len = min_len + MAX_MODEL_ID_BYTES
    if not min_len <= header_len <= max_len:
        raise StreamError(
            f"stream damaged: header length {header_len} outside {min_len}..{max_len}"
        )
    if size < header_len:
        raise StreamError(f"stream truncated: header is {header_len} bytes, found {size}")
    crc_at = header_len - _CRC.size
    (stored_crc,) = _CRC.unpack_from(view, crc_at)
    if stored_crc != _crc32(view[:crc_at]):
        raise StreamError("stream damaged: header checksum mismatch")

    # The header is intact from here on; anything wrong was written that way.
    if header_len != HEADER_FIXED_SIZE + model_id_len + _CRC.size:
        raise StreamError(
            f"invalid stream header: header length {header_len} does not match "
            f"model id length {model_id_len}"
        )
    if flags != 0:
        raise StreamError(f"unsupported stream flags 0x{flags:02x} (this build reads flags 0)")
    raw_model_id = bytes(view[HEADER_FIXED_SIZE:crc_at])
    try:
        model_id = raw_model_id.decode("ascii")
        header = StreamHeader(
            model_id=model_id,
            weights_hash=weights_hash.hex(),
            sample_rate=sample_rate,
            frame_size=frame_size,
            num_codebooks=num_codebooks,
            codebook_bits=codebook_bits,
            num_frames=num_frames,
            num_samples=num_samples,
            original_sample_rate=original_sample_rate,
        )
    except UnicodeDecodeError:
        raise StreamError("invalid stream header: model id is not ASCII") from None
    except ValueError as exc:
        raise StreamError(f"invalid stream header: {exc}") from None
    if payload_len != header.payload_bytes:
        raise StreamError(
            f"invalid stream header: payload length {payload_len} bytes, but "
            f"{num_frames} frames x {num_codebooks} codebooks x {codebook_bits} bits "
            f"need {header.payload_bytes}"
        )
    return header, header_len, payload_len


def peek_header(data: bytes | bytearray | memoryview) -> StreamHeader:
    """Parse and validate only the header of a stream (magic, version, header CRC, fields).

    ``data`` may be the whole stream or just its first ``header_bytes`` bytes; the payload is
    not checked.

    Raises:
        StreamError: if the header is missing, truncated, damaged or invalid.
    """
    return _parse_header(data)[0]


def parse_stream(data: bytes | bytearray | memoryview) -> Stream:
    """Parse and fully validate a v1 stream.

    Args:
        data: the complete stream bytes.

    Returns:
        ``Stream(header, codes)`` with ``codes`` int64 shaped ``[K, F]``;
        ``parse_stream(serialize_stream(h, c))`` gives back ``h`` and ``c``.

    Raises:
        StreamError: for any byte string that is not exactly one valid stream (bad magic,
            other version, truncation, checksum mismatch, trailing bytes, invalid fields).
    """
    header, header_len, payload_len = _parse_header(data)
    view = memoryview(data).cast("B")
    size = len(view)
    end = header_len + payload_len + _CRC.size
    if size < end:
        raise StreamError(
            f"stream truncated: header says {payload_len} payload bytes plus a "
            f"{_CRC.size}-byte checksum, found {size - header_len} bytes after the header"
        )
    if size > end:
        raise StreamError(
            f"trailing garbage: {size - end} unexpected bytes after the end of the stream"
        )
    payload = view[header_len : header_len + payload_len]
    (stored_crc,) = _CRC.unpack_from(view, header_len + payload_len)
    if stored_crc != _crc32(payload):
        raise StreamError("stream damaged: payload checksum mismatch")
    try:
        codes = unpack_codes(payload, header.num_codebooks, header.num_frames, header.codebook_bits)
    except ValueError as exc:
        raise StreamError(f"invalid stream payload: {exc}") from None
    return Stream(header, codes)
