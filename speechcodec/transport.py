"""Real UDP: a sender, a relay that plays the lossy network, and a receiver, on sockets.

::

    send talk.wav --> 127.0.0.1:5005 relay (channel model) --> 127.0.0.1:5004 receive out.wav

* The sender encodes and sends one packet per ``frames_per_packet`` frames, paced in real time
  (``fast=True``: as fast as it can encode), then an END packet, three times.
* The relay runs each packet through a :class:`~speechcodec.channel.Channel` and forwards what
  comes out at its arrival time. END packets are control, not media: the relay forwards them
  unharmed once it has delivered every media packet it holds, so the end of a call is never
  lost in the simulation (on a real network the receiver's timeout covers it).
* The receiver feeds a :class:`~speechcodec.receiver.Receiver` on its own clock and writes the
  WAV file as frames are played, rewriting the header's sizes after every write, so an
  interrupted or killed receiver leaves a valid file with everything played so far. It stops
  at the END packet, or ``timeout`` seconds after the last packet of the stream if the sender
  vanishes (datagrams it ignores do not keep it waiting).

Hardening of the receiver: it listens on 127.0.0.1 unless told otherwise; it reads at most
``READ_BATCH`` datagrams before it plays what is due, so a flood cannot starve the playout; it
reads each datagram into a buffer one byte longer than the largest packet of its model, so a
bigger one is seen as oversized without being read whole; everything else (peer, checksum,
authentication tag, windows, duplicates) is :class:`~speechcodec.receiver.Receiver`'s.

Keys (:func:`load_key`) come from a file or the ``SPEECHCODEC_KEY`` environment variable, never
from a command-line argument, which other users can read in the process list.

The relay needs neither torch nor a model. With ``garbage > 0`` it also plays a hostile network
and injects junk datagrams towards the receiver from its own address (see
:func:`garbage_datagram`).
"""

from __future__ import annotations

import heapq
import math
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .channel import Channel, Perfect
from .packet import (
    CRC_SIZE,
    MIN_KEY_BYTES,
    RTP_UDP_IPV4_BYTES,
    TAG_SIZE,
    TS_BITS,
    check_key,
    crc16,
    is_end_packet,
    max_packet_size,
    nominal_rates,
    seq_add,
    serialize_packet,
)

__all__ = [
    "DEFAULT_HOST",
    "KEY_ENV",
    "ReceiveResult",
    "RelayResult",
    "SendResult",
    "WavWriter",
    "garbage_datagram",
    "load_key",
    "parse_address",
    "parse_peer",
    "receive_udp",
    "relay_udp",
    "send_udp",
]

DEFAULT_HOST = "127.0.0.1"
MAX_DATAGRAM = 65535
END_REPEATS = 3
#: Datagrams the receiver reads before it plays what is due (a flood cannot starve playout).
READ_BATCH = 64
#: The environment variable a key may come from.
KEY_ENV = "SPEECHCODEC_KEY"
_MAX_KEY_FILE = 4096


def load_key(key_file: str | os.PathLike | None = None,
             environ: dict | None = None) -> tuple[bytes | None, str]:
    """The pre-shared key and where it came from: the file ``key_file`` if given, else the
    ``SPEECHCODEC_KEY`` environment variable if set and not empty, else ``(None, "")``.

    The key is the file's bytes (or the variable's UTF-8 bytes) with surrounding whitespace
    removed, at least 16 bytes: e.g. ``openssl rand -hex 32 > call.key``. Both ends must use
    the same bytes.

    Raises:
        ValueError: the file cannot be read, is too large, or the key is too short.
    """
    if key_file is not None:
        path = Path(key_file)
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_KEY_FILE + 1)
        except OSError as e:
            raise ValueError(f"{path}: cannot read the key file ({e.strerror or e})") from None
        if len(raw) > _MAX_KEY_FILE:
            raise ValueError(f"{path}: not a key file (more than {_MAX_KEY_FILE} bytes)")
        where = f"key file {path}"
    else:
        env = os.environ if environ is None else environ
        value = env.get(KEY_ENV, "")
        if not value.strip():
            return None, ""
        raw = value.encode("utf-8")
        where = f"environment variable {KEY_ENV}"
    key = raw.strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key in the {where} is too short: {len(key)} bytes, at least "
                         f"{MIN_KEY_BYTES} needed (e.g. openssl rand -hex 32)")
    return check_key(key), where


def parse_peer(text: str, family: int = socket.AF_INET) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"HOST"`` (any port, given as 0) -> (numeric host, port), resolved
    in address ``family`` (that of the listening socket) the way datagrams report their
    source."""
    t = str(text).strip()
    if t.startswith("[") and "]" in t:
        host, _, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif t.count(":") == 1:
        host, _, port = t.partition(":")
    else:
        host, port = t, ""
    if not host:
        raise ValueError(f"bad peer '{text}': expected HOST or HOST:PORT")
    try:
        number = int(port) if port else 0
    except ValueError:
        raise ValueError(f"bad peer '{text}': expected HOST or HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"bad peer '{text}': port must be in 0..65535")
    try:
        info = socket.getaddrinfo(host, number, family=family, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"bad peer '{text}': unknown host {host}") from None
    return info[0][4][0], number


def parse_address(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """``"HOST:PORT"``, ``":PORT"`` or ``"PORT"`` -> (host, port); the host defaults to
    loopback."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host = ""
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad address '{text}': expected HOST:PORT, e.g. 127.0.0.1:5004") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"bad address '{text}': port must be in 0..65535")
    return host, number


# Linux kernel receive timestamps (SO_TIMESTAMPNS, a struct timespec of two 64-bit fields): the
# time a datagram reached the host, not the time a busy process got round to reading it.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_KERNEL_TIMESTAMPS = sys.platform == "linux" and struct.calcsize("l") == 8


def _udp_socket(bind: tuple[str, int] | None = None) -> socket.socket:
    family = socket.AF_INET6 if bind and ":" in bind[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    except OSError:
        pass
    if bind is not None:
        sock.bind(bind)
        if _KERNEL_TIMESTAMPS:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:
                pass
    return sock


def _recv_pending(sock: socket.socket, bufsize: int = MAX_DATAGRAM,
                  limit: int | None = None) -> list[tuple[bytes, float, tuple]]:
    """The datagrams already queued on ``sock`` (at most ``limit``), each with its arrival
    time on the ``time.monotonic()`` clock (the kernel's receive timestamp where available)
    and its source address. A datagram longer than ``bufsize`` comes back cut to ``bufsize``
    bytes."""
    out = []
    while limit is None or len(out) < limit:
        try:
            data, anc, _flags, addr = sock.recvmsg(bufsize, 64, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return out
        now_mono, now_real = time.monotonic(), time.time()
        arrival = now_mono
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(value)
                arrival = min(now_mono, now_mono - (now_real - (sec + nsec * 1e-9)))
        out.append((data, arrival, addr))
    return out


def _wait_readable(sock: socket.socket, timeout: float) -> None:
    select.select([sock], [], [], max(0.0, timeout))


# --------------------------------------------------------------------------------------------
# A WAV file that is valid after every write
# --------------------------------------------------------------------------------------------


class WavWriter:
    """16-bit mono PCM WAV written as it goes.

    The 44-byte header's RIFF and data sizes are rewritten after every :meth:`write`, so the
    file on disk is always complete up to the last write, even if the process is killed.
    """

    _HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")

    def __init__(self, path: str | os.PathLike, sample_rate: int) -> None:
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self.num_samples = 0
        self._file = open(self.path, "wb")
        self._file.write(self._header(0))
        self._file.flush()

    def _header(self, n: int) -> bytes:
        data = 2 * n
        return self._HEADER.pack(b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1,
                                 self.sample_rate, 2 * self.sample_rate, 2, 16, b"data", data)

    def write(self, samples: np.ndarray) -> None:
        """Append float samples ``[n]`` (clipped to [-1, 1])."""
        from .audio import to_int16

        x = np.asarray(samples)
        if x.size == 0:
            return
        pcm, _ = to_int16(x)
        f = self._file
        f.seek(0, os.SEEK_END)
        f.write(pcm.astype("<i2").tobytes())
        self.num_samples += len(pcm)
        self._update()

    def truncate(self, num_samples: int) -> None:
        """Cut the file to its first ``num_samples`` samples."""
        if num_samples < self.num_samples:
            self.num_samples = max(0, int(num_samples))
            self._file.truncate(44 + 2 * self.num_samples)
            self._update()

    def _update(self) -> None:
        f = self._file
        f.seek(0)
        f.write(self._header(self.num_samples))
        f.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Sender
# --------------------------------------------------------------------------------------------


@dataclass
class SendResult:
    """What the sender did."""

    to: str
    duration_s: float
    num_codebooks: int
    fec_codebooks: int
    frames_per_packet: int
    packets_sent: int  # media packets
    bytes_sent: int  # media packets
    payload_kbps: float
    fec_kbps: float
    packet_kbps: float
    rtp_udp_ipv4_kbps: float
    wall_s: float
    realtime: bool
    authenticated: bool = False
    auth_kbps: float = 0.0  # the authentication tags (included in packet_kbps)
    interrupted: bool = False  # stopped early by Ctrl-C / SIGTERM (END still sent)
    fec_depth: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block has run, then deliver them to the handlers that
    were set (in the main thread; elsewhere Python delivers no signals anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    before = {k: signal.signal(k, lambda signum, frame: caught.append(signum)) for k in kinds}
    try:
        yield
    finally:
        for k, handler in before.items():
            if handler is not None:  # None: set outside Python, cannot be restored
                signal.signal(k, handler)
        for signum in caught[:1]:
            signal.raise_signal(signum)


def send_udp(codec, samples: np.ndarray, num_codebooks: int, to: tuple[str, int], *,
             fec_codebooks: int = 0, fec_depth: int = 1, frames_per_packet: int = 1,
             fast: bool = False, first_seq: int = 0, original_sample_rate: int | None = None,
             original_num_samples: int | None = None, key: bytes | None = None,
             sleep: Callable[[float], None] = time.sleep) -> SendResult:
    """Encode ``samples [N]`` (codec rate) frame by frame and send the packets to ``to``.

    In real time (the default) packet ``p`` leaves when its last frame would have been
    captured by a microphone; ``fast`` sends as soon as each packet is encoded. With ``key``
    every packet carries an authentication tag. A KeyboardInterrupt hangs up: END is sent for
    the frames already sent, and the result says ``interrupted``.
    """
    import torch

    from .packet import Packetizer
    from .pipeline import num_frames_for

    cfg = codec.cfg
    x = np.asarray(samples, dtype=np.float32)
    n = len(x)
    frames = num_frames_for(codec, n)
    padded = np.zeros(frames * cfg.frame_size, np.float32)
    padded[:n] = x
    dur = cfg.frame_size / cfg.sample_rate
    packetizer = Packetizer(cfg.bits_per_code, cfg.frame_size, frames_per_packet, fec_codebooks,
                            first_seq, fec_depth=fec_depth)
    encoder = codec.stream_encoder(num_codebooks)
    host, port = to
    sock = _udp_socket()
    sent = nbytes = payload_bits = fec_bits = sent_frames = 0
    interrupted = False
    after_last_sent = (packetizer.seq, packetizer.timestamp)
    start = time.monotonic()
    try:
        done = 0
        try:
            while done < frames:
                step = min(frames_per_packet, frames - done)
                chunk = torch.from_numpy(
                    padded[done * cfg.frame_size:(done + step) * cfg.frame_size])
                codes = encoder.push(chunk[None])[0].numpy()
                done += step
                packets = packetizer.push(codes)
                if done == frames:
                    packets += packetizer.flush()
                if not fast:
                    wait = start + done * dur - time.monotonic()
                    if wait > 0:
                        sleep(wait)
                for p in packets:
                    data = serialize_packet(p, key)
                    # A Ctrl-C between sending and counting would make END announce one
                    # packet fewer than went out: the signal waits for the count.
                    with _signals_held():
                        sock.sendto(data, (host, port))
                        sent += 1
                        sent_frames += p.num_frames
                        after_last_sent = (seq_add(p.seq, 1), seq_add(
                            p.timestamp, p.num_frames * cfg.frame_size, TS_BITS))
                    nbytes += len(data)
                    payload_bits += p.num_codebooks * p.num_frames * cfg.bits_per_code
                    fec_bits += p.fec.size * cfg.bits_per_code
        except KeyboardInterrupt:
            # Hang up properly: END follows the last packet sent (one made but not sent is not
            # announced) and gives only what was sent (and the same share of the original
            # file), so the receiver ends the call now and writes that length.
            interrupted = True
            packetizer.seq, packetizer.timestamp = after_last_sent
        length = min(n, sent_frames * cfg.frame_size)
        original = n if original_num_samples is None else original_num_samples
        if length < n:
            original = round(original * length / n)
        end = serialize_packet(packetizer.end(length, original_sample_rate or cfg.sample_rate,
                                              original), key)
        for i in range(END_REPEATS):
            if i and not fast:
                sleep(dur)
            sock.sendto(end, (host, port))
    finally:
        sock.close()
    seconds = max(sent_frames, 1) * dur
    return SendResult(
        to=f"{host}:{port}", duration_s=length / cfg.sample_rate, num_codebooks=num_codebooks,
        fec_codebooks=fec_codebooks, frames_per_packet=frames_per_packet, packets_sent=sent,
        bytes_sent=nbytes, payload_kbps=payload_bits / seconds / 1000,
        fec_kbps=fec_bits / seconds / 1000, packet_kbps=nbytes * 8 / seconds / 1000,
        rtp_udp_ipv4_kbps=sent * RTP_UDP_IPV4_BYTES * 8 / seconds / 1000,
        wall_s=time.monotonic() - start, realtime=not fast, authenticated=key is not None,
        auth_kbps=sent * TAG_SIZE * 8 / seconds / 1000 if key is not None else 0.0,
        fec_depth=fec_depth,
        interrupted=interrupted)


# --------------------------------------------------------------------------------------------
# Relay
# --------------------------------------------------------------------------------------------


@dataclass
class RelayResult:
    """What the relay did to the packets that passed through it."""

    listen: str
    to: str
    channel: str
    packets_in: int = 0  # media packets received
    packets_out: int = 0  # media packets forwarded (duplicates included)
    packets_dropped: int = 0
    packets_duplicated: int = 0
    packets_corrupted: int = 0  # forwarded with flipped bits
    end_forwarded: int = 0
    stopped_by: str = ""  # "end", "timeout" or "interrupt"
    garbage_sent: dict = field(default_factory=dict)  # junk datagrams injected, by kind

    def as_dict(self) -> dict:
        return asdict(self)


GARBAGE_KINDS = ("random", "oversized", "malformed", "replay", "far_future")
_REPLAY_DEPTH = 500


def garbage_datagram(rng: np.random.Generator, recent: list[bytes],
                     kind: str | None = None) -> tuple[str, bytes]:
    """One hostile datagram, of a random kind or of ``kind``, built from the real packets in
    ``recent`` (oldest first) where it needs one:

    * ``random``: 1-64 random bytes (a receiver sees a checksum error, or a truncated packet);
    * ``oversized``: random bytes, 1 to 2 times more than any packet of a 12-codebook model
      (19 kB, with the deepest FEC and a tag);
    * ``malformed``: the last packet with a header field made invalid and the CRC fixed;
    * ``replay``: a copy of a packet sent 50-500 packets ago, intact (a duplicate or late);
    * ``far_future``: the last packet moved 2**22 frames of 320 samples (23 hours) and 20000
      sequence numbers ahead, CRC fixed (out of window; with authentication, its tag no longer
      matches).
    """
    if kind is None:
        kind = GARBAGE_KINDS[int(rng.integers(len(GARBAGE_KINDS)))]
    if kind not in GARBAGE_KINDS:
        raise ValueError(f"garbage kind must be one of {', '.join(GARBAGE_KINDS)}, got {kind!r}")
    if kind in ("malformed", "replay", "far_future") and not recent:
        kind = "random"
    if kind == "random":
        return kind, rng.bytes(int(rng.integers(1, 65)))
    if kind == "oversized":
        least = max_packet_size(12, 10, authenticated=True) + 1
        return kind, rng.bytes(int(rng.integers(least, 2 * least)))
    if kind == "replay":
        back = int(rng.integers(50, _REPLAY_DEPTH + 1))
        return kind, recent[max(0, len(recent) - back)]
    body = bytearray(recent[-1][:-CRC_SIZE])
    if kind == "malformed":
        field_ = int(rng.integers(4))
        if field_ == 0:
            body[0] = (body[0] & 0xF0) | 0x8  # an unknown flag
        elif field_ == 1:
            body[1] = 0  # codebook_bits 0
        elif field_ == 2:
            body[8] = 0  # no codebooks
        else:
            body[10] = 255  # more FEC codebooks than codebooks
    else:
        seq = (int.from_bytes(body[2:4], "big") + 20000) & 0xFFFF
        ts = (int.from_bytes(body[4:8], "big") + 320 * (1 << 22)) & 0xFFFF_FFFF
        body[2:4] = seq.to_bytes(2, "big")
        body[4:8] = ts.to_bytes(4, "big")
    return kind, bytes(body) + crc16(body).to_bytes(2, "big")


def relay_udp(listen: tuple[str, int], to: tuple[str, int], channel: Channel | None = None, *,
              timeout: float = 5.0, wait: float | None = None, stop_after_end: bool = True,
              garbage: float = 0.0, seed: int = 0,
              on_ready: Callable[[tuple[str, int]], None] | None = None) -> RelayResult:
    """Forward datagrams from ``listen`` to ``to`` through ``channel``, in real time.

    Args:
        timeout: stop this many seconds after the last packet (once one has come).
        wait: stop if no packet comes this many seconds after start (None: wait forever).
        stop_after_end: stop once the END packets are forwarded (the call is over).
        garbage: for each media packet received, the probability of also sending one junk
            datagram (:func:`garbage_datagram`) to ``to``, at once, from the relay's address.
        seed: seed of the garbage.
        on_ready: called with the bound address once the socket listens.
    """
    channel = channel or Perfect()
    if not 0.0 <= garbage <= 1.0:
        raise ValueError(f"garbage must be a probability in [0, 1], got {garbage}")
    rng = np.random.default_rng(seed)
    recent: list[bytes] = []
    sock = _udp_socket(listen)
    bound = sock.getsockname()[:2]
    result = RelayResult(f"{bound[0]}:{bound[1]}", f"{to[0]}:{to[1]}", repr(channel))
    if on_ready:
        on_ready(bound)
    out = _udp_socket()
    queue: list[tuple[float, int, bytes]] = []
    ends: list[bytes] = []
    counter = 0
    start = time.monotonic()
    last = None
    try:
        while True:
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                out.sendto(heapq.heappop(queue)[2], to)
            if ends and not queue:
                for data in ends:
                    out.sendto(data, to)
                result.end_forwarded += len(ends)
                ends.clear()
                if stop_after_end:
                    result.stopped_by = "end"
                    break
            limit = (start + wait if wait is not None else math.inf) if last is None \
                else last + timeout
            if now >= limit:
                result.stopped_by = "timeout"
                break
            wake = min(limit, queue[0][0] if queue else math.inf)
            _wait_readable(sock, min(wake - now, 0.5))
            for data, arrival, _addr in _recv_pending(sock):
                last = arrival
                if is_end_packet(data):
                    ends.append(data)
                    continue
                result.packets_in += 1
                if garbage and rng.random() < garbage:
                    kind, junk = garbage_datagram(rng, recent)
                    result.garbage_sent[kind] = result.garbage_sent.get(kind, 0) + 1
                    out.sendto(junk, to)
                recent.append(data)
                if len(recent) > 2 * _REPLAY_DEPTH:
                    del recent[:_REPLAY_DEPTH]
                deliveries = channel.process(arrival, data)
                if not deliveries:
                    result.packets_dropped += 1
                result.packets_duplicated += max(0, len(deliveries) - 1)
                for d in deliveries:
                    result.packets_out += 1
                    result.packets_corrupted += d.data != data
                    heapq.heappush(queue, (d.time, counter, d.data))
                    counter += 1
    except KeyboardInterrupt:
        result.stopped_by = "interrupt"
    finally:
        sock.close()
        out.close()
    return result


# --------------------------------------------------------------------------------------------
# Receiver
# --------------------------------------------------------------------------------------------


class _interrupts_deferred:
    """Hold SIGINT and SIGTERM over a block and raise KeyboardInterrupt after it, if one came.

    A Ctrl-C that lands between counting frames as played and writing them would otherwise lose
    them from the file. Only Python handlers are held (a signal set to be ignored stays
    ignored); outside the main thread, where handlers cannot be set, it does nothing.
    """

    def __enter__(self):
        self.caught = False
        self.previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if callable(signal.getsignal(sig)):  # ignored or default stays so
                    self.previous[sig] = signal.signal(sig, self._hold)
        except ValueError:  # not the main thread
            self.previous = {}
        return self

    def _hold(self, signum, frame) -> None:
        self.caught = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.caught and exc[0] is None:
            raise KeyboardInterrupt


@dataclass
class ReceiveResult:
    """What the receiver got and wrote."""

    listen: str
    output: str
    stats: object  # receiver.ReceiverStats
    num_samples: int  # written, at the output rate
    sample_rate: int
    packets_sent: int | None  # known from the END packet
    packets_lost: int | None  # never arrived intact (lost or corrupted); late counted apart
    playout_delay_ms: float
    codec_latency_ms: float
    packetization_ms: float
    stopped_by: str  # "end", "timeout" or "interrupt"
    wall_s: float
    num_codebooks: int = 0
    fec_codebooks: int = 0
    fec_depth: int = 1
    frames_per_packet: int = 1
    rates: dict = field(default_factory=dict)  # packet.nominal_rates of the stream received
    quality: object = None  # metrics.Quality against a reference, if given
    quality_vs_clean: object = None
    authenticated: bool = False  # a key was set: only authenticated packets were accepted
    peer: str = ""  # the address packets were accepted from ("" if none came)
    max_buffered_frames: int = 0  # the most frames the jitter buffer held at once

    @property
    def latency_ms(self) -> float:
        """Codec latency + packetization + playout delay (the network's delay comes on top)."""
        return self.codec_latency_ms + self.packetization_ms + self.playout_delay_ms

    def as_dict(self) -> dict:
        d = asdict(self)
        d["latency_ms"] = self.latency_ms
        return d


def receive_udp(codec, listen: tuple[str, int], output: str | os.PathLike, *,
                playout_delay: float = 0.04, concealment: str = "interpolate",
                use_fec: bool = True,
                timeout: float = 5.0, wait: float | None = None,
                key: bytes | None = None, peer: tuple[str, int] | None = None,
                max_buffer: int | None = None,
                on_ready: Callable[[tuple[str, int]], None] | None = None) -> ReceiveResult:
    """Receive one stream on ``listen`` and write it to the WAV file ``output`` as it plays.

    Stops at the END packet (then the file has exactly the sender's input length, at the
    sender's input rate), ``timeout`` seconds after the last packet of the stream, ``wait``
    seconds after start if no packet of a stream came, or on KeyboardInterrupt (the file keeps
    what was received). ``key``, ``peer`` and ``max_buffer`` are the
    :class:`~speechcodec.receiver.Receiver`'s: accept only authenticated packets, only from
    that address (else from the source of the first valid packet), and buffer at most that
    many frames.
    """
    from .receiver import MAX_BUFFER_FRAMES, Receiver, StreamingDecoder

    cfg = codec.cfg
    rx = Receiver(codec, playout_delay, concealment, use_fec, key=key, peer=peer,
                  max_buffer=MAX_BUFFER_FRAMES if max_buffer is None else max_buffer)
    bufsize = rx.max_packet_size + 1  # one more byte: a longer datagram shows as oversized
    dec = StreamingDecoder(codec)
    # Warm the model up first: the first call of a fresh process is slow.
    warm = rx.concealer.silence()
    codec.stream_decoder().push_latents(warm.view(1, -1, 1).repeat(1, 1, 2))
    sock = _udp_socket(listen)
    bound = sock.getsockname()[:2]
    try:
        writer = WavWriter(output, cfg.sample_rate)
    except OSError:
        sock.close()
        raise
    if on_ready:
        on_ready(bound)
    start = time.monotonic()
    last = None
    stopped = "end"
    most = 0

    def take(batch):
        nonlocal last
        for data, arrival, addr in batch:
            # Only the stream's own packets keep the receiver waiting for more.
            if rx.receive(data, arrival, addr) in ("ok", "late", "end"):
                last = arrival

    try:
        while not rx.done:
            # Take in what has arrived before playing what is due, so a receiver that fell
            # behind (a slow decode) does not call packets in its queue late; but at most
            # READ_BATCH datagrams, so a flood cannot hold up the playout.
            take(_recv_pending(sock, bufsize, READ_BATCH))
            most = max(most, rx.buffered_frames)
            if rx.end is not None:
                break  # the sender is done and the relay has flushed: play the rest at once
            now = time.monotonic()
            with _interrupts_deferred():  # frames counted as played are also written
                writer.write(dec.push(rx.play_due(now)))
            limit = (start + wait if wait is not None else math.inf) if last is None \
                else last + timeout
            if now >= limit:
                stopped = "timeout"
                break
            deadline = rx.next_deadline()
            wake = min(limit, deadline if deadline is not None else math.inf)
            _wait_readable(sock, min(wake - time.monotonic(), 0.5))
    except KeyboardInterrupt:
        stopped = "interrupt"
    finally:
        try:
            if rx.end is None:  # keep what already arrived, even when interrupted
                take(_recv_pending(sock, bufsize, 4 * READ_BATCH))
        finally:
            sock.close()
        try:
            writer.write(dec.push(rx.finish()))
            if rx.end is not None:
                target = max(0, rx.end.num_samples - rx.start_frame * cfg.frame_size)
                pad, _ = dec.finish(target)
                writer.write(pad)
                writer.truncate(target)
        finally:
            writer.close()
    rate = cfg.sample_rate
    num_samples = writer.num_samples
    if rx.end is not None and rx.end.original_sample_rate != cfg.sample_rate:
        from .audio import load_audio, resample_to_length, write_wav

        x = load_audio(output).samples
        rate, num_samples = rx.end.original_sample_rate, rx.end.original_num_samples
        if rx.start_frame:  # joined late: the part it heard, at the original rate
            num_samples = round(len(x) * rate / cfg.sample_rate)
        write_wav(output, resample_to_length(x, cfg.sample_rate, rate, num_samples), rate)
    sent = lost = None
    st = rx.stats
    if rx.end_frame is not None:
        f = max(1, rx.frames_per_packet)
        sent = -(-rx.end_frame // f)
        lost = sent - st.packets_used - st.packets_late
    dur = cfg.frame_size / cfg.sample_rate
    return ReceiveResult(
        listen=f"{bound[0]}:{bound[1]}", output=str(output), stats=st, num_samples=num_samples,
        sample_rate=rate, packets_sent=sent, packets_lost=lost,
        playout_delay_ms=playout_delay * 1000, codec_latency_ms=codec.latency.ms,
        packetization_ms=(rx.frames_per_packet - 1) * dur * 1000, stopped_by=stopped,
        wall_s=time.monotonic() - start, num_codebooks=rx.num_codebooks,
        fec_codebooks=rx.fec_codebooks, fec_depth=rx.fec_depth,
        frames_per_packet=rx.frames_per_packet,
        rates=nominal_rates(rx.num_codebooks, rx.fec_codebooks, rx.frames_per_packet,
                            cfg.bits_per_code, cfg.frame_rate, key is not None, rx.fec_depth)
        if rx.num_codebooks else {},
        authenticated=key is not None,
        peer=f"{rx.peer[0]}:{rx.peer[1]}" if rx.peer is not None and rx.anchor else "",
        max_buffered_frames=most)
