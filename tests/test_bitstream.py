"""Tests for speechcodec.bitstream: bit packing and the v1 stream format."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from speechcodec.bitstream import (
    FORMAT_VERSION,
    HEADER_FIXED_SIZE,
    MAGIC,
    MIN_STREAM_SIZE,
    Stream,
    StreamError,
    StreamHeader,
    pack_codes,
    packed_size,
    parse_stream,
    peek_header,
    serialize_stream,
    unpack_codes,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_header(**overrides: object) -> StreamHeader:
    fields: dict[str, object] = {
        "model_id": "speechcodec-base-v1",
        "weights_hash": "0123456789abcdef",
        "sample_rate": 16000,
        "frame_size": 320,
        "num_codebooks": 3,
        "codebook_bits": 10,
        "num_frames": 4,
        "num_samples": 1234,
        "original_sample_rate": 16000,
    }
    fields.update(overrides)
    return StreamHeader(**fields)  # type: ignore[arg-type]


def random_codes(k: int, f: int, bits: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << bits, size=(k, f), dtype=np.int64)


def small_stream() -> tuple[StreamHeader, np.ndarray, bytes]:
    header = make_header()
    codes = random_codes(header.num_codebooks, header.num_frames, header.codebook_bits, seed=1)
    return header, codes, serialize_stream(header, codes)


def build_raw(
    *,
    version: int = FORMAT_VERSION,
    flags: int = 0,
    header_len: int | None = None,
    sample_rate: int = 16000,
    frame_size: int = 320,
    num_codebooks: int = 2,
    codebook_bits: int = 10,
    num_frames: int = 1,
    num_samples: int = 320,
    original_sample_rate: int = 16000,
    weights_hash: bytes = bytes(range(8)),
    payload_len: int | None = None,
    model_id: bytes = b"m",
    model_id_len: int | None = None,
    payload: bytes | None = None,
) -> bytes:
    """Build a stream by hand from the documented layout, with correct CRCs."""
    if payload is None:
        payload = bytes(packed_size(num_codebooks, num_frames, codebook_bits))
    body = (
        MAGIC
        + struct.pack("<BBH", version, flags, header_len or 49 + len(model_id))
        + struct.pack(
            "<IHBBIQI",
            sample_rate,
            frame_size,
            num_codebooks,
            codebook_bits,
            num_frames,
            num_samples,
            original_sample_rate,
        )
        + weights_hash
        + struct.pack(
            "<IB",
            len(payload) if payload_len is None else payload_len,
            len(model_id) if model_id_len is None else model_id_len,
        )
        + model_id
    )
    return (
        body
        + struct.pack("<I", zlib.crc32(body))
        + payload
        + struct.pack("<I", zlib.crc32(payload))
    )


# --------------------------------------------------------------------------------------------
# Bit packing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 6, 12])
@pytest.mark.parametrize("f", [0, 1, 2, 7, 50])
@pytest.mark.parametrize("bits", [1, 3, 7, 8, 10, 13, 16])
def test_pack_unpack_round_trip(k: int, f: int, bits: int) -> None:
    codes = random_codes(k, f, bits, seed=k * 1000 + f * 10 + bits)
    packed = pack_codes(codes, bits)
    assert isinstance(packed, bytes)
    assert len(packed) == (k * f * bits + 7) // 8 == packed_size(k, f, bits)
    out = unpack_codes(packed, k, f, bits)
    assert out.shape == (k, f)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, codes)


@SETTINGS
@given(
    k=st.integers(0, 16),
    f=st.integers(0, 64),
    bits=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_unpack_property(k: int, f: int, bits: int, seed: int) -> None:
    codes = random_codes(k, f, bits, seed)
    packed = pack_codes(codes, bits)
    assert len(packed) == -(-k * f * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, k, f, bits), codes)


def test_pack_extreme_values_and_dtypes() -> None:
    for bits in range(1, 17):
        top = (1 << bits) - 1
        codes = np.array([[0, top, top], [top, 0, 1]])
        for dtype in (np.uint16, np.int32, np.int64, np.uint64):
            packed = pack_codes(codes.astype(dtype), bits)
            np.testing.assert_array_equal(unpack_codes(packed, 2, 3, bits), codes)


def test_pack_known_answers() -> None:
    # 0000000001 0000000010 + 4 zero pad bits -> 00000000 01000000 00100000
    assert pack_codes(np.array([[1], [2]]), 10) == b"\x00\x40\x20"
    # 1111111111 0000000001 0000 -> 11111111 11000000 00010000
    assert pack_codes(np.array([[1023], [1]]), 10) == b"\xff\xc0\x10"
    # Frame-major: frame 0 (1, 2) then frame 1 (3, 4), nibble per code.
    assert pack_codes(np.array([[1, 3], [2, 4]]), 4) == b"\x12\x34"
    # A single 1-bit code is the top bit of the only byte.
    assert pack_codes(np.array([[1]]), 1) == b"\x80"
    assert pack_codes(np.array([[0xABCD]]), 16) == b"\xab\xcd"
    np.testing.assert_array_equal(unpack_codes(b"\x12\x34", 2, 2, 4), [[1, 3], [2, 4]])


def test_pack_frame_major_prefix_is_streamable() -> None:
    # The packing of the first n frames is a bit prefix of the packing of all frames.
    codes = random_codes(6, 9, 10, seed=3)
    full = np.unpackbits(np.frombuffer(pack_codes(codes, 10), np.uint8))
    for n in range(10):
        part = np.unpackbits(np.frombuffer(pack_codes(codes[:, :n], 10), np.uint8))
        np.testing.assert_array_equal(full[: n * 60], part[: n * 60])


@pytest.mark.parametrize(
    "codes, bits",
    [
        (np.array([[1024]]), 10),
        (np.array([[-1]]), 10),
        (np.array([[0, 2]]), 1),
        (np.array([[1 << 16]]), 16),
    ],
)
def test_pack_out_of_range_raises(codes: np.ndarray, bits: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(codes, bits)


@pytest.mark.parametrize(
    "bits, error",
    [(0, ValueError), (17, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_pack_bad_bits_raises(bits: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        pack_codes(np.zeros((1, 1), np.int64), bits)  # type: ignore[arg-type]
    with pytest.raises(error):
        unpack_codes(b"\x00", 1, 1, bits)  # type: ignore[arg-type]


def test_pack_bad_shape_or_dtype_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        pack_codes(np.zeros(4, np.int64), 10)
    with pytest.raises(ValueError, match="shape"):
        pack_codes(np.zeros((1, 2, 3), np.int64), 10)
    with pytest.raises(ValueError, match="integer"):
        pack_codes(np.zeros((2, 2), np.float32), 10)


def test_unpack_wrong_length_raises() -> None:
    packed = pack_codes(random_codes(3, 5, 10), 10)
    for bad in (packed[:-1], packed + b"\x00", b""):
        with pytest.raises(ValueError, match="expected"):
            unpack_codes(bad, 3, 5, 10)
    with pytest.raises(ValueError):
        unpack_codes(b"", -1, 0, 10)


def test_unpack_nonzero_padding_raises() -> None:
    with pytest.raises(ValueError, match="padding"):
        unpack_codes(b"\x00\x40\x21", 2, 1, 10)


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, kbps", [(3, 1.5), (6, 3.0), (12, 6.0)])
def test_header_derived_properties(k: int, kbps: float) -> None:
    header = make_header(
        num_codebooks=k, num_frames=100, num_samples=96000, original_sample_rate=48000
    )
    assert header.frame_rate == 50.0
    assert header.bits_per_frame == k * 10
    assert header.payload_bits == 100 * k * 10
    assert header.payload_bytes == (100 * k * 10 + 7) // 8
    assert header.duration_seconds == 2.0
    assert header.payload_kbps == pytest.approx(kbps)
    assert header.exact_kbps() == pytest.approx(kbps)  # 100 frames = exactly 2 s
    assert header.exact_kbps(include_overhead=True) == pytest.approx(
        header.stream_bytes * 8 / 2.0 / 1000
    )
    assert header.header_bytes == 49 + len("speechcodec-base-v1")
    assert header.stream_bytes == header.header_bytes + header.payload_bytes + 4


def test_header_payload_bytes_rounds_up_and_empty_duration() -> None:
    header = make_header(num_codebooks=1, codebook_bits=3, num_frames=3, num_samples=0)
    assert header.payload_bits == 9
    assert header.payload_bytes == 2
    assert header.exact_kbps() == 0.0


def test_header_normalises_weights_hash_and_ints() -> None:
    header = make_header(weights_hash="0123456789ABCDEF", num_frames=np.int64(4))
    assert header.weights_hash == "0123456789abcdef"
    assert type(header.num_frames) is int
    assert header == make_header()


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_id": ""},
        {"model_id": "x" * 256},
        {"model_id": "caf\u00e9"},
        {"model_id": "line\nbreak"},
        {"weights_hash": "0123456789abcde"},
        {"weights_hash": "0123456789abcdef0"},
        {"weights_hash": "0123456789abcdeg"},
        {"sample_rate": 0},
        {"sample_rate": 2**32},
        {"frame_size": 0},
        {"frame_size": 2**16},
        {"num_codebooks": 0},
        {"num_codebooks": 256},
        {"codebook_bits": 0},
        {"codebook_bits": 17},
        {"num_frames": -1},
        {"num_frames": 2**32},
        {"num_samples": -1},
        {"num_samples": 2**64},
        {"original_sample_rate": 0},
        # 2**32 - 1 frames of 12 x 10 bits do not fit a u32 payload length.
        {"num_frames": 2**32 - 1, "num_codebooks": 12},
    ],
)
def test_header_validation(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_header(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_id": b"bytes"},
        {"weights_hash": 12},
        {"num_frames": 3.0},
        {"num_codebooks": True},
        {"sample_rate": "16000"},
    ],
)
def test_header_wrong_types(overrides: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        make_header(**overrides)


def test_header_is_frozen() -> None:
    header = make_header()
    with pytest.raises(AttributeError):
        header.num_frames = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Stream round trip and layout
# --------------------------------------------------------------------------------------------

headers = st.builds(
    StreamHeader,
    model_id=st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255
    ),
    weights_hash=st.binary(min_size=8, max_size=8).map(bytes.hex),
    sample_rate=st.integers(1, 2**32 - 1),
    frame_size=st.integers(1, 2**16 - 1),
    num_codebooks=st.integers(1, 16),
    codebook_bits=st.integers(1, 16),
    num_frames=st.integers(0, 40),
    num_samples=st.integers(0, 2**64 - 1),
    original_sample_rate=st.integers(1, 2**32 - 1),
)


@SETTINGS
@given(header=headers, seed=st.integers(0, 2**32 - 1))
def test_serialize_parse_round_trip(header: StreamHeader, seed: int) -> None:
    codes = random_codes(header.num_codebooks, header.num_frames, header.codebook_bits, seed)
    data = serialize_stream(header, codes)
    assert len(data) == header.stream_bytes
    stream = parse_stream(data)
    assert isinstance(stream, Stream)
    assert stream.header == header
    assert stream.codes.shape == codes.shape
    np.testing.assert_array_equal(stream.codes, codes)
    assert peek_header(data) == header
    assert peek_header(data[: header.header_bytes]) == header
    # Also accepts other byte-like inputs.
    assert parse_stream(bytearray(data)).header == header
    assert parse_stream(memoryview(data)).header == header


def test_round_trip_unpacks_to_tuple() -> None:
    header, codes, data = small_stream()
    parsed_header, parsed_codes = parse_stream(data)
    assert parsed_header == header
    np.testing.assert_array_equal(parsed_codes, codes)


def test_layout_matches_documented_offsets() -> None:
    header = make_header(
        num_codebooks=2,
        num_frames=1,
        num_samples=0x0102030405060708,
        original_sample_rate=44100,
        weights_hash="a1b2c3d4e5f60718",
    )
    codes = np.array([[1], [2]])
    data = serialize_stream(header, codes)
    n = len(header.model_id)
    assert data[0:4] == b"SPCD"
    assert data[4] == 1 and data[5] == 0
    assert struct.unpack_from("<H", data, 6)[0] == 49 + n
    assert struct.unpack_from("<I", data, 8)[0] == 16000
    assert struct.unpack_from("<H", data, 12)[0] == 320
    assert data[14] == 2 and data[15] == 10
    assert struct.unpack_from("<I", data, 16)[0] == 1
    assert struct.unpack_from("<Q", data, 20)[0] == 0x0102030405060708
    assert struct.unpack_from("<I", data, 28)[0] == 44100
    assert data[32:40] == bytes.fromhex("a1b2c3d4e5f60718")
    assert struct.unpack_from("<I", data, 40)[0] == 3
    assert data[44] == n
    assert data[45 : 45 + n] == header.model_id.encode()
    assert struct.unpack_from("<I", data, 45 + n)[0] == zlib.crc32(data[: 45 + n])
    assert data[49 + n : 52 + n] == b"\x00\x40\x20"
    assert struct.unpack_from("<I", data, 52 + n)[0] == zlib.crc32(b"\x00\x40\x20")
    assert len(data) == 53 + n + 3
    assert HEADER_FIXED_SIZE == 45 and MIN_STREAM_SIZE == 54


def test_hand_built_stream_parses() -> None:
    raw = build_raw(payload=b"\x00\x40\x20", model_id=b"hand-made")
    header, codes = parse_stream(raw)
    assert header.model_id == "hand-made"
    assert header.weights_hash == "0001020304050607"
    np.testing.assert_array_equal(codes, [[1], [2]])


def test_serialize_rejects_bad_codes() -> None:
    header = make_header()
    good = random_codes(3, 4, 10)
    with pytest.raises(ValueError, match="out of range"):
        serialize_stream(header, np.full((3, 4), 1024))
    with pytest.raises(ValueError, match="out of range"):
        serialize_stream(header, np.full((3, 4), -1))
    with pytest.raises(ValueError, match="shape"):
        serialize_stream(header, good[:, :3])
    with pytest.raises(ValueError, match="shape"):
        serialize_stream(header, good.T)
    with pytest.raises(ValueError, match="integer"):
        serialize_stream(header, good.astype(np.float64))


# --------------------------------------------------------------------------------------------
# Corruption
# --------------------------------------------------------------------------------------------


def test_truncation_at_every_offset_raises() -> None:
    header, _, data = small_stream()
    for cut in range(len(data)):
        with pytest.raises(StreamError):
            parse_stream(data[:cut])
        if cut < header.header_bytes:
            with pytest.raises(StreamError):
                peek_header(data[:cut])
        else:
            assert peek_header(data[:cut]) == header


def test_truncation_messages() -> None:
    header, _, data = small_stream()
    with pytest.raises(StreamError, match="truncated"):
        parse_stream(b"")
    with pytest.raises(StreamError, match="truncated"):
        parse_stream(data[:30])
    with pytest.raises(StreamError, match=f"truncated: header says {header.payload_bytes} "):
        parse_stream(data[:-2])


def test_every_single_bit_flip_raises() -> None:
    _, _, data = small_stream()
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(StreamError):
                parse_stream(bytes(damaged))


def test_bit_flip_messages_by_region() -> None:
    header, _, data = small_stream()

    def flipped(offset: int) -> bytes:
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        return bytes(damaged)

    with pytest.raises(StreamError, match="bad magic"):
        parse_stream(flipped(0))
    with pytest.raises(StreamError, match="version"):
        parse_stream(flipped(4))
    with pytest.raises(StreamError, match="header checksum mismatch"):
        parse_stream(flipped(20))
    with pytest.raises(StreamError, match="header checksum mismatch"):
        parse_stream(flipped(header.header_bytes - 1))  # the stored CRC itself
    with pytest.raises(StreamError, match="payload checksum mismatch"):
        parse_stream(flipped(header.header_bytes))
    with pytest.raises(StreamError, match="payload checksum mismatch"):
        parse_stream(flipped(len(data) - 1))


def test_wrong_magic() -> None:
    _, _, data = small_stream()
    for bad in (b"RIFF" + data[4:], b"X", b"SPCX", b"\x00" * 100):
        with pytest.raises(StreamError, match="not a speechcodec stream \\(bad magic\\)"):
            parse_stream(bad)


def test_unsupported_version() -> None:
    _, _, data = small_stream()
    # The header CRC is left stale on purpose: the version must be reported first.
    future = data[:4] + bytes([7]) + data[5:]
    with pytest.raises(StreamError, match=r"unsupported stream format version 7 .*version 1"):
        parse_stream(future)
    with pytest.raises(StreamError, match="unsupported stream format version 2"):
        peek_header(build_raw(version=2))
    with pytest.raises(StreamError, match="version 0"):
        parse_stream(MAGIC + b"\x00")


def test_trailing_garbage() -> None:
    _, _, data = small_stream()
    for extra in (b"\x00", b"garbage", data):
        with pytest.raises(StreamError, match="trailing garbage"):
            parse_stream(data + extra)


@pytest.mark.parametrize(
    "raw, message",
    [
        (build_raw(flags=1), "unsupported stream flags"),
        (build_raw(header_len=48), "header length"),
        (build_raw(header_len=49 + 256), "header length"),
        (build_raw(model_id_len=2), "does not match model id length"),
        (build_raw(model_id=b""), "model_id must not be empty"),
        (build_raw(model_id=b"\xff"), "not ASCII"),
        (build_raw(model_id=b"a\tb"), "printable ASCII"),
        (build_raw(num_codebooks=0), "num_codebooks"),
        (build_raw(codebook_bits=0), "codebook_bits"),
        (build_raw(codebook_bits=17), "codebook_bits"),
        (build_raw(frame_size=0), "frame_size"),
        (build_raw(sample_rate=0), "sample_rate"),
        (build_raw(original_sample_rate=0), "original_sample_rate"),
        (build_raw(payload_len=2), "payload length 2 bytes"),
        (build_raw(payload_len=4), "payload length 4 bytes"),
        (build_raw(payload=b"\x00\x40\x21"), "padding"),
        # Valid CRCs but a payload far larger than the data: rejected before allocating.
        (
            build_raw(
                num_codebooks=1,
                codebook_bits=16,
                num_frames=2**31 - 1,
                payload_len=2**32 - 2,
                payload=b"",
            ),
            "truncated",
        ),
    ],
)
def test_invalid_headers_with_valid_crc(raw: bytes, message: str) -> None:
    with pytest.raises(StreamError, match=message):
        parse_stream(raw)


def test_stream_error_is_value_error_with_one_line_messages() -> None:
    assert issubclass(StreamError, ValueError)
    _, _, data = small_stream()
    samples = [b"", b"junk", data[:10], data[:60], data[:-1], data + b"!", MAGIC + b"\x09"]
    samples += [build_raw(flags=3), build_raw(num_codebooks=0), build_raw(payload_len=9)]
    for sample in samples:
        with pytest.raises(StreamError) as info:
            parse_stream(sample)
        text = str(info.value)
        assert text and "\n" not in text and len(text) < 200


# --------------------------------------------------------------------------------------------
# Fuzzing: every input parses or raises StreamError
# --------------------------------------------------------------------------------------------


def parses_or_stream_error(data: bytes) -> None:
    try:
        stream = parse_stream(data)
    except StreamError:
        return
    # Anything accepted must re-serialize to exactly the same bytes.
    assert serialize_stream(stream.header, stream.codes) == data


@SETTINGS
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    parses_or_stream_error(data)
    try:
        peek_header(data)
    except StreamError:
        pass


@SETTINGS
@given(st.binary(max_size=300))
def test_fuzz_bytes_after_magic_and_version(tail: bytes) -> None:
    parses_or_stream_error(MAGIC + bytes([FORMAT_VERSION]) + tail)


@SETTINGS
@given(st.binary(max_size=100), st.integers(0, 2**16 - 1))
def test_fuzz_bytes_after_plausible_fixed_header(tail: bytes, header_len: int) -> None:
    prefix = MAGIC + struct.pack("<BBH", FORMAT_VERSION, 0, header_len)
    parses_or_stream_error(prefix + tail)


@SETTINGS
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    extra=st.binary(max_size=8),
)
def test_fuzz_mutated_valid_stream(
    edits: list[tuple[int, int]], cut: int | None, extra: bytes
) -> None:
    _, _, data = small_stream()
    damaged = bytearray(data)
    for pos, value in edits:
        damaged[pos % len(damaged)] = value
    if cut is not None:
        del damaged[cut % (len(damaged) + 1) :]
    parses_or_stream_error(bytes(damaged) + extra)


@SETTINGS
@given(st.binary(max_size=40))
def test_fuzz_header_fields_with_recomputed_crc(fields: bytes) -> None:
    # Arbitrary fixed fields and model id, but a correct header CRC, so the field checks run.
    fields = fields.ljust(37, b"\x00")
    model_id_len = fields[36]
    model_id = (fields[37:] * 256)[:model_id_len] if len(fields) > 37 else b"a" * model_id_len
    body = (
        MAGIC
        + struct.pack("<BBH", FORMAT_VERSION, 0, 49 + model_id_len)
        + fields[:36]
        + bytes([model_id_len])
        + model_id
    )
    raw = body + struct.pack("<I", zlib.crc32(body))
    parses_or_stream_error(raw + b"\x00" * 8)
    try:
        peek_header(raw)
    except StreamError:
        pass


# --------------------------------------------------------------------------------------------
# Fuzzing past both checksums, in bounded time and memory
# --------------------------------------------------------------------------------------------

PARSE_SECONDS = 2.0  # generous: a parse of these inputs takes well under a millisecond


def parse_within_bounds(data: bytes) -> Stream | None:
    """Parse under tracemalloc: the result or a one-line StreamError, in bounded time, and with
    memory proportional to the input, never to what its header claims."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        stream: Stream | None = parse_stream(data)
        error = None
    except StreamError as exc:
        stream, error = None, exc
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < PARSE_SECONDS
    # Unpacking 1-bit codes into int64 is the worst honest case: 64 bytes per payload byte.
    assert peak <= 100 * len(data) + (1 << 20), (peak, len(data))
    if error is not None:
        text = str(error)
        assert text and "\n" not in text and len(text) < 300
        return None
    assert serialize_stream(stream.header, stream.codes) == data
    return stream


def with_crcs(fixed: bytes, model_id: bytes, payload: bytes) -> bytes:
    """A stream from raw fixed-header fields (after magic, version and flags), a model id and a
    payload, with both CRCs made correct so the checks behind them run."""
    body = MAGIC + bytes([FORMAT_VERSION, 0]) + fixed + model_id
    return (body + struct.pack("<I", zlib.crc32(body)) + payload
            + struct.pack("<I", zlib.crc32(payload)))


@SETTINGS
@given(
    k=st.integers(1, 12) | st.integers(0, 255),
    bits=st.integers(1, 16) | st.integers(0, 20),
    frames=st.integers(0, 64) | st.integers(0, 64) | st.integers(0, 2**32 - 1),
    num_samples=st.integers(0, 2**64 - 1),
    model_id=st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
        .map(str.encode),
        st.binary(max_size=40),
    ),
    payload=st.binary(max_size=600),
    payload_len=st.one_of(st.none(), st.none(), st.integers(0, 2**32 - 1)),
    model_id_len=st.one_of(st.none(), st.none(), st.integers(0, 255)),
    rates=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1),
                    st.integers(0, 2**32 - 1)).map(lambda r: tuple(v or 1 for v in r))
    | st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    fit=st.booleans(),
)
def test_fuzz_fields_and_payload_with_valid_checksums(
    k, bits, frames, num_samples, model_id, payload, payload_len, model_id_len, rates, fit
) -> None:
    sample_rate, frame_size, original_rate = rates
    if fit and 1 <= bits <= 16 and frames <= 64:
        # The payload the fields call for (its padding bits cleared half the time).
        size = packed_size(k, frames, bits)
        payload = (payload * (size // max(1, len(payload)) + 1))[:size] if payload else bytes(size)
        pad = size * 8 - k * frames * bits
        if pad and num_samples % 2:
            payload = payload[:-1] + bytes([payload[-1] & ~((1 << pad) - 1) & 0xFF])
    n = len(model_id) if model_id_len is None else model_id_len
    fixed = struct.pack(
        "<HIHBBIQI8sIB", 49 + n, sample_rate, frame_size, k, bits, frames, num_samples,
        original_rate, b"\x12" * 8, len(payload) if payload_len is None else payload_len, n)
    stream = parse_within_bounds(with_crcs(fixed, model_id, payload))
    event("parsed" if stream is not None else "refused")
    if stream is not None:
        h = stream.header
        assert stream.codes.shape == (h.num_codebooks, h.num_frames)
        assert int(stream.codes.max(initial=0)) < 1 << h.codebook_bits


@SETTINGS
@given(
    k=st.integers(1, 255),
    bits=st.integers(1, 16),
    frames=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
    pad_noise=st.integers(1, 255),
)
def test_fuzz_valid_payloads_and_nonzero_padding(k, bits, frames, seed, pad_noise) -> None:
    # Every codebook count the format allows (the round-trip test stops at 16), and the
    # padding rule with correct checksums: nonzero padding bits are refused.
    header = make_header(num_codebooks=k, codebook_bits=bits, num_frames=frames)
    codes = random_codes(k, frames, bits, seed)
    data = serialize_stream(header, codes)
    stream = parse_within_bounds(data)
    assert stream is not None and stream.header == header
    np.testing.assert_array_equal(stream.codes, codes)
    pad = header.payload_bytes * 8 - header.payload_bits
    if pad:
        payload = bytearray(data[header.header_bytes:-4])
        payload[-1] |= pad_noise & ((1 << pad) - 1) or 1
        damaged = data[: header.header_bytes] + bytes(payload)
        damaged += struct.pack("<I", zlib.crc32(bytes(payload)))
        with pytest.raises(StreamError, match="padding"):
            parse_stream(damaged)


@SETTINGS
@given(
    claim=st.tuples(st.integers(1, 255), st.integers(1, 16), st.integers(2**20, 2**32 - 1)),
    tail=st.binary(max_size=64),
)
def test_fuzz_huge_claims_fail_fast_without_allocating(claim, tail) -> None:
    # A header (with a correct CRC) claiming up to 2**32 frames of 255 codebooks: the parser
    # must compare with the bytes present before it allocates anything for them.
    k, bits, frames = claim
    total_bits = k * bits * frames
    payload_len = (total_bits + 7) // 8
    if payload_len > 2**32 - 1:
        payload_len = 2**32 - 1
    fixed = struct.pack("<HIHBBIQI8sIB", 50, 16000, 320, k, bits, frames, 0, 16000,
                        b"\0" * 8, payload_len, 1)
    assert parse_within_bounds(with_crcs(fixed, b"m", tail)) is None


@SETTINGS
@given(st.binary(max_size=400))
def test_fuzz_peek_header_agrees_with_parse(data: bytes) -> None:
    # Anything parse accepts, peek accepts with the same header; anything peek refuses, parse
    # refuses too. Seeded with a valid header so both outcomes occur.
    _, _, valid = small_stream()
    for candidate in (data, valid[: len(data)], valid[:50] + data):
        try:
            peeked = peek_header(candidate)
        except StreamError:
            with pytest.raises(StreamError):
                parse_stream(candidate)
            continue
        stream = parse_within_bounds(candidate)
        if stream is not None:
            assert stream.header == peeked


# --------------------------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------------------------


def test_import_does_not_pull_in_torch() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, speechcodec.bitstream; assert 'torch' not in sys.modules",
        ],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
