"""Classical speech codecs, run through their real implementations, for comparison.

Every codec here is the reference tool or library itself: `c2enc`/`c2dec` (Codec 2),
`opusenc`/`opusdec` (libopus), libopencore-amrnb (AMR-NB), libvo-amrwbenc + libopencore-amrwb
(AMR-WB, through ctypes: no command-line tool here encodes AMR-WB), `sox` (GSM 06.10 full rate
through libgsm, G.711 mu-law), `speexenc`/`speexdec` (Speex). Nothing is imitated: a codec
whose tool or library is missing reports what is missing (`Baseline.missing()`) and is skipped.

Conventions:

* `Baseline.run(samples)` takes float32 `samples [N]` at 16 kHz and returns `Coded`, whose
  `samples` are the decoded signal at 16 kHz with exactly `N` samples, *not* aligned: whatever
  delay the codec adds is still in it (measure it with `metrics.align`).
* Codecs that work at 8 kHz get the input resampled to 8 kHz, and their output resampled back to
  16 kHz, with the same band-limited resampler the codec pipeline uses (`audio.resample`).
* `Coded.payload_bits` is measured from the real encoded bytes, with container overhead
  excluded. How, for each codec (also in `Baseline.accounting`):

  ==========  ===================================================================================
  Codec 2     `c2enc` writes headerless frames (the output name does not end in `.c2`, so no
              header); every byte of the file counts. Each frame is padded to whole bytes
              (700C: 28 bits in 4 bytes), so 700C measures 0.80 kbit/s, not 0.70.
  Opus        Ogg pages are parsed; the header packets (OpusHead, OpusTags) and the page headers
              are left out; every audio packet counts in full, including its TOC byte.
  Speex       Ogg, as Opus: the Speex header, the comment packet and any extra header packets
              are left out.
  AMR-NB/WB   Storage format (RFC 4867): the file magic and the one table-of-contents byte in
              front of every frame are left out; the frame bytes count, including the padding of
              the speech bits to whole bytes (12.2: 244 bits in 31 bytes, 12.4 kbit/s). DTX is
              off, so every frame carries speech bits (`sox` would switch DTX on for AMR-NB).
  GSM-FR      Raw 33-byte frames (260 bits plus a 4-bit signature), every byte counts.
  G.711       Raw mu-law, one byte per 8 kHz sample.
  ==========  ===================================================================================

* `Coded.encode_s` / `decode_s` are wall-clock seconds of the tool or library calls alone
  (resampling excluded; for command-line tools, process start-up included).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import DEFAULT_RATE, resample, resample_to_length, to_int16

__all__ = [
    "Baseline",
    "BaselineError",
    "Coded",
    "all_baselines",
    "available_baselines",
    "ogg_packets",
    "select_baselines",
]


class BaselineError(RuntimeError):
    """A classical codec tool failed on an input; the message is one line."""


@dataclass(frozen=True)
class Coded:
    """One signal through one codec.

    Attributes:
        samples: decoded float32 `[N]` at 16 kHz, the input's length, not delay-compensated.
        payload_bits: bits of codec payload (see the module docstring for what is excluded).
        encode_s: seconds spent encoding.
        decode_s: seconds spent decoding.
    """

    samples: np.ndarray
    payload_bits: int
    encode_s: float
    decode_s: float


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _run(cmd: list[str]) -> float:
    """Run a tool; return its wall time in seconds. Raise BaselineError with its stderr."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as e:
        raise BaselineError(f"{cmd[0]}: cannot run ({e.strerror or e})") from None
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        err = _one_line(proc.stderr.decode(errors="replace"))[-300:]
        raise BaselineError(f"{cmd[0]} failed (exit {proc.returncode}): {err or 'no message'}")
    return elapsed


def _write_raw(path: Path, x: np.ndarray) -> None:
    path.write_bytes(to_int16(x)[0].astype("<i2").tobytes())


def _read_raw(path: Path) -> np.ndarray:
    data = path.read_bytes()
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


def _write_wav16(path: Path, x: np.ndarray, rate: int) -> None:
    sf.write(path, to_int16(x)[0], rate, subtype="PCM_16", format="WAV")


def _read_wav(path: Path, rate: int) -> np.ndarray:
    try:
        y, r = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise BaselineError(f"cannot read decoded file {path.name}: {_one_line(e)}") from None
    if r != rate:
        raise BaselineError(f"decoder wrote {r} Hz, expected {rate} Hz")
    return y.mean(axis=1)


def _pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
    n = -(-len(x) // multiple) * multiple
    return np.pad(x, (0, n - len(x))) if n != len(x) else x


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    return np.pad(x, (0, n - len(x)))


def ogg_packets(data: bytes) -> list[bytes]:
    """Split an Ogg stream (one logical stream) into its packets, page headers removed.

    Page layout (RFC 3533): "OggS", version, header type, granule (8), serial (4), sequence (4),
    CRC (4), segment count S (1), S lacing values, then the segments. A packet is the
    concatenation of segments up to and including one shorter than 255 bytes.
    """
    packets: list[bytes] = []
    partial = bytearray()
    pos = 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS" or pos + 27 > len(data):
            raise BaselineError(f"not an Ogg page at byte {pos}")
        nseg = data[pos + 26]
        lacing = data[pos + 27:pos + 27 + nseg]
        body = pos + 27 + nseg
        for size in lacing:
            partial += data[body:body + size]
            body += size
            if size < 255:
                packets.append(bytes(partial))
                partial.clear()
        if body > len(data):
            raise BaselineError("Ogg stream is truncated")
        pos = body
    return packets


def _load_library(names: tuple[str, ...]) -> ctypes.CDLL | None:
    for name in names:
        found = ctypes.util.find_library(name)
        for candidate in (found, f"lib{name}.so.0", f"lib{name}.so"):
            if not candidate:
                continue
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    return None


# --------------------------------------------------------------------------------------------
# The codecs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A classical codec at one setting.

    Attributes:
        key: short unique id, e.g. "opus-6" (used by `--codecs` and in file names).
        family: codec name, one line on the rate-quality plot, e.g. "Opus".
        label: what the listener reads, e.g. "Opus voip 6 kbps".
        nominal_kbps: the bitrate the codec declares for this setting.
        sample_rate: rate the codec works at (8000 or 16000).
        tools: command-line programs it needs.
        libraries: shared libraries it needs (ctypes names, without "lib").
        accounting: how `payload_bits` is measured.
    """

    key: str
    family: str
    label: str
    nominal_kbps: float
    sample_rate: int
    tools: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    accounting: str = ""
    options: dict = field(default_factory=dict, compare=False)

    def missing(self) -> list[str]:
        """Tools and libraries that are not installed (empty when the codec can run)."""
        gone = [t for t in self.tools if shutil.which(t) is None]
        gone += [f"lib{name}" for name in self.libraries if _load_library((name,)) is None]
        return gone

    def run(self, samples: np.ndarray, workdir: str | Path | None = None) -> Coded:
        """Encode and decode `samples [N]` (float32, 16 kHz); see `Coded`."""
        x16 = np.asarray(samples, dtype=np.float32)
        x = resample(x16, DEFAULT_RATE, self.sample_rate)
        with tempfile.TemporaryDirectory(prefix="speechcodec-", dir=workdir) as tmp:
            bits, enc_s, dec_s, y = _CODERS[self.family](self, x, Path(tmp))
        y = _fit(np.asarray(y, dtype=np.float32), len(x))
        y16 = resample_to_length(y, self.sample_rate, DEFAULT_RATE, len(x16))
        return Coded(y16.astype(np.float32), int(bits), enc_s, dec_s)


def _codec2(b: Baseline, x: np.ndarray, tmp: Path):
    mode = b.options["mode"]
    # c2enc drops a partial last frame; pad to whole 40 ms so the end of the speech is coded.
    _write_raw(tmp / "in.raw", _pad_to(x, 320))
    enc_s = _run(["c2enc", mode, str(tmp / "in.raw"), str(tmp / "out.bit")])
    payload = (tmp / "out.bit").stat().st_size  # headerless frames: every byte is payload
    dec_s = _run(["c2dec", mode, str(tmp / "out.bit"), str(tmp / "dec.raw")])
    return payload * 8, enc_s, dec_s, _read_raw(tmp / "dec.raw")


def _opus(b: Baseline, x: np.ndarray, tmp: Path):
    _write_wav16(tmp / "in.wav", x, b.sample_rate)
    # 4000 = OPUS_SET_APPLICATION_REQUEST, 2048 = OPUS_APPLICATION_VOIP (opus_defines.h)
    enc_s = _run(["opusenc", "--quiet", "--bitrate", f"{b.nominal_kbps:g}", "--framesize", "20",
                  "--set-ctl-int", "4000=2048", str(tmp / "in.wav"), str(tmp / "out.opus")])
    packets = ogg_packets((tmp / "out.opus").read_bytes())
    if len(packets) < 2 or not packets[0].startswith(b"OpusHead"):
        raise BaselineError("opusenc wrote no OpusHead packet")
    payload = sum(len(p) for p in packets[2:])  # skip OpusHead, OpusTags
    # opusdec resamples to 48 kHz unless told the rate; it trims the encoder's pre-skip.
    dec_s = _run(["opusdec", "--quiet", "--rate", str(b.sample_rate), str(tmp / "out.opus"),
                  str(tmp / "dec.wav")])
    return payload * 8, enc_s, dec_s, _read_wav(tmp / "dec.wav", b.sample_rate)


def _speex(b: Baseline, x: np.ndarray, tmp: Path):
    _write_wav16(tmp / "in.wav", x, b.sample_rate)
    enc_s = _run(["speexenc", "-w", "--quality", str(b.options["quality"]), str(tmp / "in.wav"),
                  str(tmp / "out.spx")])
    packets = ogg_packets((tmp / "out.spx").read_bytes())
    if not packets or not packets[0].startswith(b"Speex   ") or len(packets[0]) < 72:
        raise BaselineError("speexenc wrote no Speex header")
    extra_headers = struct.unpack_from("<i", packets[0], 68)[0]
    payload = sum(len(p) for p in packets[2 + extra_headers:])
    dec_s = _run(["speexdec", str(tmp / "out.spx"), str(tmp / "dec.wav")])
    return payload * 8, enc_s, dec_s, _read_wav(tmp / "dec.wav", b.sample_rate)


def _sox_codec(b: Baseline, x: np.ndarray, tmp: Path):
    """GSM-FR (.gsm: raw 33-byte frames) and G.711 mu-law (.ul: raw bytes), both at 8 kHz."""
    ext = b.options["ext"]
    _write_wav16(tmp / "in.wav", x, 8000)
    enc_s = _run(["sox", "-V1", str(tmp / "in.wav"), "-t", ext, str(tmp / f"out.{ext}")])
    payload = (tmp / f"out.{ext}").stat().st_size  # raw, no container
    dec_s = _run(["sox", "-V1", "-t", ext, "-r", "8000", "-c", "1", str(tmp / f"out.{ext}"),
                  "-b", "16", str(tmp / "dec.wav")])
    return payload * 8, enc_s, dec_s, _read_wav(tmp / "dec.wav", 8000)


# AMR storage format (RFC 4867 section 5): magic, then per frame a table-of-contents byte
# 0FFFFQ00 (F = frame type) followed by the speech bits padded to whole bytes.
#     +----------+--------+---------------+--------+---------------+--
#     | "#!AMR\n" | ToC 0  | frame 0 bytes | ToC 1  | frame 1 bytes | ...
#     +----------+--------+---------------+--------+---------------+--
# Frame bytes after the ToC, by frame type (RFC 4867 tables; 0 = no data / invalid).
_AMR_NB_BYTES = (12, 13, 15, 17, 19, 20, 26, 31, 5, 0, 0, 0, 0, 0, 0, 0)
_AMR_WB_BYTES = (17, 23, 32, 36, 40, 46, 50, 58, 60, 5, 0, 0, 0, 0, 0, 0)


def _amr_frames(data: bytes, magic: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    """Split an AMR storage-format file into frames (each with its ToC byte)."""
    if not data.startswith(magic):
        raise BaselineError("AMR stream does not start with its magic")
    frames, pos = [], len(magic)
    while pos < len(data):
        n = 1 + sizes[(data[pos] >> 3) & 0x0F]
        frames.append(data[pos:pos + n])
        pos += n
    return frames


def _amr(b: Baseline, x: np.ndarray, tmp: Path):
    wide = b.family == "AMR-WB"
    if wide:
        enc_lib = _load_library(("vo-amrwbenc",))
        dec_lib = _load_library(("opencore-amrwb",))
        init, encode, close = enc_lib.E_IF_init, enc_lib.E_IF_encode, enc_lib.E_IF_exit
        dinit, decode, dclose = dec_lib.D_IF_init, dec_lib.D_IF_decode, dec_lib.D_IF_exit
        frame, magic, sizes = 320, b"#!AMR-WB\n", _AMR_WB_BYTES
    else:
        enc_lib = dec_lib = _load_library(("opencore-amrnb",))
        init, encode = enc_lib.Encoder_Interface_init, enc_lib.Encoder_Interface_Encode
        close = enc_lib.Encoder_Interface_exit
        dinit, decode = dec_lib.Decoder_Interface_init, dec_lib.Decoder_Interface_Decode
        dclose = dec_lib.Decoder_Interface_exit
        frame, magic, sizes = 160, b"#!AMR\n", _AMR_NB_BYTES
    init.restype = dinit.restype = ctypes.c_void_p
    init.argtypes = [] if wide else [ctypes.c_int]  # Encoder_Interface_init(int dtx)
    dinit.argtypes = []
    encode.restype = ctypes.c_int
    encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                       ctypes.POINTER(ctypes.c_ubyte), ctypes.c_int]
    decode.restype = None
    decode.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ubyte),
                       ctypes.POINTER(ctypes.c_short), ctypes.c_int]
    close.argtypes = dclose.argtypes = [ctypes.c_void_p]

    pcm = to_int16(_pad_to(x, frame))[0]
    speech = (ctypes.c_short * frame)()
    out = (ctypes.c_ubyte * 64)()
    mode = b.options["mode"]
    chunks = [magic]
    t0 = time.perf_counter()
    state = init() if wide else init(0)  # AMR-NB: dtx = 0
    try:
        for start in range(0, len(pcm), frame):
            ctypes.memmove(speech, pcm[start:start + frame].ctypes.data, 2 * frame)
            # E_IF_encode(state, mode, speech, out, dtx = 0) /
            # Encoder_Interface_Encode(state, mode, speech, out, forceSpeech = 0)
            n = encode(state, mode, speech, out, 0)
            if n <= 0:
                raise BaselineError(f"{b.family} encoder returned {n}")
            chunks.append(bytes(out[:n]))
    finally:
        close(state)
    enc_s = time.perf_counter() - t0
    data = b"".join(chunks)
    (tmp / ("out.awb" if wide else "out.amr")).write_bytes(data)

    frames = _amr_frames(data, magic, sizes)
    payload = len(data) - len(magic) - len(frames)  # minus the magic and one ToC per frame
    synth = (ctypes.c_short * frame)()
    decoded = np.empty(len(frames) * frame, dtype=np.int16)
    t0 = time.perf_counter()
    state = dinit()
    try:
        for i, f in enumerate(frames):
            buf = (ctypes.c_ubyte * 64).from_buffer_copy(f.ljust(64, b"\0"))
            decode(state, buf, synth, 0)
            decoded[i * frame:(i + 1) * frame] = np.ctypeslib.as_array(synth)
    finally:
        dclose(state)
    dec_s = time.perf_counter() - t0
    return payload * 8, enc_s, dec_s, decoded.astype(np.float32) / 32768.0


_CODERS = {
    "Codec 2": _codec2,
    "Opus": _opus,
    "Speex-WB": _speex,
    "GSM-FR": _sox_codec,
    "G.711": _sox_codec,
    "AMR-NB": _amr,
    "AMR-WB": _amr,
}

_C2 = "headerless c2enc frames, whole file (frames padded to bytes)"
_OGG = "Ogg audio packets; Ogg page headers and the {} header packets excluded"
_AMR = "RFC 4867 frames without the file magic and the 1-byte ToC per frame; DTX off"


def all_baselines() -> list[Baseline]:
    """Every classical codec setting this module knows, installed or not."""
    c2 = dict(family="Codec 2", sample_rate=8000, tools=("c2enc", "c2dec"), accounting=_C2)
    opus = dict(family="Opus", sample_rate=16000, tools=("opusenc", "opusdec"),
                accounting=_OGG.format("OpusHead/OpusTags"))
    nb = dict(family="AMR-NB", sample_rate=8000, libraries=("opencore-amrnb",), accounting=_AMR)
    wb = dict(family="AMR-WB", sample_rate=16000, libraries=("vo-amrwbenc", "opencore-amrwb"),
              accounting=_AMR)
    spx = dict(family="Speex-WB", sample_rate=16000, tools=("speexenc", "speexdec"),
               accounting=_OGG.format("Speex header/comment"))
    return [
        Baseline("codec2-700c", label="Codec 2 700C", nominal_kbps=0.7,
                 options={"mode": "700C"}, **c2),
        Baseline("codec2-1600", label="Codec 2 1600", nominal_kbps=1.6,
                 options={"mode": "1600"}, **c2),
        Baseline("codec2-3200", label="Codec 2 3200", nominal_kbps=3.2,
                 options={"mode": "3200"}, **c2),
        Baseline("opus-6", label="Opus voip 6 kbps", nominal_kbps=6, **opus),
        Baseline("opus-8", label="Opus voip 8 kbps", nominal_kbps=8, **opus),
        Baseline("opus-12", label="Opus voip 12 kbps", nominal_kbps=12, **opus),
        Baseline("amrnb-4.75", label="AMR-NB 4.75", nominal_kbps=4.75, options={"mode": 0},
                 **nb),
        Baseline("amrnb-12.2", label="AMR-NB 12.2", nominal_kbps=12.2, options={"mode": 7},
                 **nb),
        Baseline("amrwb-6.6", label="AMR-WB 6.6", nominal_kbps=6.6, options={"mode": 0}, **wb),
        Baseline("amrwb-12.65", label="AMR-WB 12.65", nominal_kbps=12.65, options={"mode": 2},
                 **wb),
        Baseline("gsm-fr", family="GSM-FR", label="GSM-FR 13", nominal_kbps=13.0,
                 sample_rate=8000, tools=("sox",), options={"ext": "gsm"},
                 accounting="raw 33-byte GSM 06.10 frames (sox), whole file"),
        # Speex wideband quality 2 and 4: 7.75 and 12.8 kbit/s declared (Speex manual).
        Baseline("speex-wb-q2", label="Speex WB q2", nominal_kbps=7.75,
                 options={"quality": 2}, **spx),
        Baseline("speex-wb-q4", label="Speex WB q4", nominal_kbps=12.8,
                 options={"quality": 4}, **spx),
        Baseline("g711-ulaw", family="G.711", label="G.711 mu-law", nominal_kbps=64.0,
                 sample_rate=8000, tools=("sox",), options={"ext": "ul"},
                 accounting="raw mu-law bytes (sox), whole file"),
    ]


def available_baselines() -> tuple[list[Baseline], dict[str, list[str]]]:
    """(codecs that can run, {key: missing tools/libraries} for those that cannot)."""
    ok, skipped = [], {}
    for b in all_baselines():
        gone = b.missing()
        if gone:
            skipped[b.key] = gone
        else:
            ok.append(b)
    return ok, skipped


def select_baselines(names: list[str] | None) -> list[Baseline]:
    """Baselines by key or family (case-insensitive; "amrwb" matches both AMR-WB settings).

    None selects all. Raises ValueError for a name that matches nothing.
    """
    every = all_baselines()
    if names is None:
        return every

    def norm(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum() or ch == ".")

    chosen: list[Baseline] = []
    for name in names:
        n = norm(name)
        hits = [b for b in every if norm(b.key) == n or norm(b.family) == n
                or norm(b.key).startswith(n)]
        if not hits:
            keys = ", ".join(b.key for b in every)
            raise ValueError(f"unknown codec '{name}' (known: {keys})")
        chosen += [b for b in hits if b not in chosen]
    return chosen
