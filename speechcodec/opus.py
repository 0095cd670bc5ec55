"""Opus through libopus (ctypes), for comparisons under exactly the same packet losses.

One Opus packet per 20 ms frame, so packet ``i`` of Opus and packet ``i`` of speechcodec
(one frame per packet) carry the same stretch of speech and can be lost together. A lost
packet is decoded as ``opus_decode_float(dec, NULL, 0, ...)``: Opus's own concealment. No
torch, no subprocesses; needs the shared library ``libopus.so.0`` (Debian: libopus0).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["OpusDecoder", "OpusEncoder", "OpusError", "OpusResult", "available", "opus_under_loss"]

_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_VBR = 4006
_SET_COMPLEXITY = 4010
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_SET_SIGNAL = 4024
_GET_LOOKAHEAD = 4027
_SIGNAL_VOICE = 3001
_MAX_PACKET = 1500


class OpusError(RuntimeError):
    """libopus is missing or returned an error."""


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise OpusError(f"libopus not found ({e}); install libopus0") from None
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_encode_float.restype = ctypes.c_int32
    lib.opus_encode_float.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                      ctypes.c_int, ctypes.c_char_p, ctypes.c_int32]
    lib.opus_decode_float.restype = ctypes.c_int
    lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                      ctypes.POINTER(ctypes.c_float), ctypes.c_int, ctypes.c_int]
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    # opus_encoder_ctl is variadic; its arguments are passed as plain ints / pointers.
    lib.opus_encoder_ctl.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether libopus can be loaded."""
    try:
        _lib()
    except OpusError:
        return False
    return True


def _check(code: int, what: str) -> int:
    if code < 0:
        raise OpusError(f"{what}: {_lib().opus_strerror(code).decode()}")
    return code


class OpusEncoder:
    """Mono Opus encoder (VOIP application) at ``bitrate`` bit/s."""

    def __init__(self, sample_rate: int = 16000, bitrate: int = 6000, complexity: int = 10,
                 vbr: bool = True, inband_fec: bool = False, loss_percent: int = 0) -> None:
        lib = _lib()
        err = ctypes.c_int(0)
        self._st = lib.opus_encoder_create(sample_rate, 1, _APPLICATION_VOIP, ctypes.byref(err))
        _check(err.value, "opus_encoder_create")
        for request, value in ((_SET_BITRATE, int(bitrate)), (_SET_COMPLEXITY, complexity),
                               (_SET_VBR, int(vbr)), (_SET_SIGNAL, _SIGNAL_VOICE),
                               (_SET_INBAND_FEC, int(inband_fec)),
                               (_SET_PACKET_LOSS_PERC, int(loss_percent))):
            _check(lib.opus_encoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(request),
                                        ctypes.c_int(value)), f"opus_encoder_ctl({request})")
        look = ctypes.c_int(0)
        _check(lib.opus_encoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(_GET_LOOKAHEAD),
                                    ctypes.byref(look)), "OPUS_GET_LOOKAHEAD")
        self.lookahead = look.value  # samples the decoded output lags the input
        self._buf = ctypes.create_string_buffer(_MAX_PACKET)

    def encode(self, frame: np.ndarray) -> bytes:
        """One frame (float32 ``[n]``, n = 2.5..60 ms of samples) -> one packet."""
        x = np.ascontiguousarray(frame, dtype=np.float32)
        n = _check(_lib().opus_encode_float(
            self._st, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(x), self._buf,
            _MAX_PACKET), "opus_encode_float")
        return self._buf.raw[:n]

    def __del__(self) -> None:
        if getattr(self, "_st", None):
            _lib().opus_encoder_destroy(self._st)
            self._st = None


class OpusDecoder:
    """Mono Opus decoder; ``decode(None, n)`` conceals a lost packet."""

    def __init__(self, sample_rate: int = 16000) -> None:
        err = ctypes.c_int(0)
        self._st = _lib().opus_decoder_create(sample_rate, 1, ctypes.byref(err))
        _check(err.value, "opus_decoder_create")

    def decode(self, packet: bytes | None, frame_samples: int, fec: bool = False) -> np.ndarray:
        """Decode ``packet`` (None: conceal). With ``fec``, ``packet`` is the one *after* the
        lost frame, and its in-band FEC data (if any) rebuilds the lost frame."""
        out = np.zeros(frame_samples, np.float32)
        data, size = (None, 0) if packet is None else (packet, len(packet))
        n = _check(_lib().opus_decode_float(
            self._st, data, size, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            frame_samples, int(fec)), "opus_decode_float")
        return out[:n]

    def __del__(self) -> None:
        if getattr(self, "_st", None):
            _lib().opus_decoder_destroy(self._st)
            self._st = None


@dataclass
class OpusResult:
    samples: np.ndarray  # float32 [N], aligned with the input
    packets: int
    packets_lost: int
    payload_kbps: float  # measured: Opus packet bytes (TOC included) over the coded duration


def num_packets_for(num_samples: int, lookahead: int, frame_samples: int = 320) -> int:
    """Opus packets needed so that the output, after dropping ``lookahead``, covers the input."""
    return max(1, -(-(num_samples + lookahead) // frame_samples))


def opus_under_loss(samples: np.ndarray, kbps: float, lost: Sequence[bool] = (),
                    sample_rate: int = 16000, frame_samples: int = 320,
                    inband_fec: bool = False, loss_percent: int = 0) -> OpusResult:
    """Encode ``samples [N]`` with Opus at ``kbps``, lose the packets marked True in ``lost``
    (packet i covers frame i; missing entries are delivered), conceal them with Opus's PLC, and
    return the decoded signal trimmed to exactly N samples and aligned with the input.

    With ``inband_fec`` the encoder adds Opus's in-band FEC (tuned for ``loss_percent``) and a
    lost frame whose next packet arrived is rebuilt from that packet's FEC data, as a receiver
    with one packet of jitter buffer would."""
    x = np.asarray(samples, dtype=np.float32)
    enc = OpusEncoder(sample_rate, round(kbps * 1000), inband_fec=inband_fec,
                      loss_percent=loss_percent)
    dec = OpusDecoder(sample_rate)
    count = num_packets_for(len(x), enc.lookahead, frame_samples)
    padded = np.zeros(count * frame_samples, np.float32)
    padded[: len(x)] = x
    packets = [enc.encode(padded[i * frame_samples:(i + 1) * frame_samples])
               for i in range(count)]
    gone = [i < len(lost) and bool(lost[i]) for i in range(count)]
    out = []
    for i, packet in enumerate(packets):
        if not gone[i]:
            out.append(dec.decode(packet, frame_samples))
        elif inband_fec and i + 1 < count and not gone[i + 1]:
            out.append(dec.decode(packets[i + 1], frame_samples, fec=True))
        else:
            out.append(dec.decode(None, frame_samples))
    nbytes, nlost = sum(map(len, packets)), sum(gone)
    y = np.concatenate(out)[enc.lookahead: enc.lookahead + len(x)]
    return OpusResult(y.astype(np.float32), count, nlost,
                      nbytes * 8 / (count * frame_samples / sample_rate) / 1000)
