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
  at the END packet, or ``timeout`` seconds after the last packet if the sender vanishes.

The relay needs neither torch nor a model.
"""

from __future__ import annotations

import heapq
import math
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .channel import Channel, Perfect
from .packet import RTP_UDP_IPV4_BYTES, is_end_packet, nominal_rates, serialize_packet

__all__ = [
    "DEFAULT_HOST",
    "ReceiveResult",
    "RelayResult",
    "SendResult",
    "WavWriter",
    "parse_address",
    "receive_udp",
    "relay_udp",
    "send_udp",
]

DEFAULT_HOST = "127.0.0.1"
MAX_DATAGRAM = 65535
END_REPEATS = 3


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


def _recv_pending(sock: socket.socket) -> list[tuple[bytes, float]]:
    """Every datagram already queued on ``sock``, each with its arrival time on the
    ``time.monotonic()`` clock (the kernel's receive timestamp where available)."""
    out = []
    while True:
        try:
            data, anc, _flags, _addr = sock.recvmsg(MAX_DATAGRAM, 64, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return out
        now_mono, now_real = time.monotonic(), time.time()
        arrival = now_mono
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(value)
                arrival = min(now_mono, now_mono - (now_real - (sec + nsec * 1e-9)))
        out.append((data, arrival))


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

    def as_dict(self) -> dict:
        return asdict(self)


def send_udp(codec, samples: np.ndarray, num_codebooks: int, to: tuple[str, int], *,
             fec_codebooks: int = 0, frames_per_packet: int = 1, fast: bool = False,
             first_seq: int = 0, original_sample_rate: int | None = None,
             original_num_samples: int | None = None,
             sleep: Callable[[float], None] = time.sleep) -> SendResult:
    """Encode ``samples [N]`` (codec rate) frame by frame and send the packets to ``to``.

    In real time (the default) packet ``p`` leaves when its last frame would have been
    captured by a microphone; ``fast`` sends as soon as each packet is encoded.
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
                            first_seq)
    encoder = codec.stream_encoder(num_codebooks)
    host, port = to
    sock = _udp_socket()
    sent = nbytes = payload_bits = fec_bits = 0
    start = time.monotonic()
    try:
        done = 0
        while done < frames:
            step = min(frames_per_packet, frames - done)
            chunk = torch.from_numpy(padded[done * cfg.frame_size:(done + step) * cfg.frame_size])
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
                data = serialize_packet(p)
                sock.sendto(data, (host, port))
                sent += 1
                nbytes += len(data)
                payload_bits += p.num_codebooks * p.num_frames * cfg.bits_per_code
                fec_bits += p.fec_codebooks * p.num_frames * cfg.bits_per_code
        end = serialize_packet(packetizer.end(n, original_sample_rate or cfg.sample_rate,
                                              n if original_num_samples is None
                                              else original_num_samples))
        for i in range(END_REPEATS):
            if i and not fast:
                sleep(dur)
            sock.sendto(end, (host, port))
    finally:
        sock.close()
    seconds = frames * dur
    return SendResult(
        to=f"{host}:{port}", duration_s=n / cfg.sample_rate, num_codebooks=num_codebooks,
        fec_codebooks=fec_codebooks, frames_per_packet=frames_per_packet, packets_sent=sent,
        bytes_sent=nbytes, payload_kbps=payload_bits / seconds / 1000,
        fec_kbps=fec_bits / seconds / 1000, packet_kbps=nbytes * 8 / seconds / 1000,
        rtp_udp_ipv4_kbps=sent * RTP_UDP_IPV4_BYTES * 8 / seconds / 1000,
        wall_s=time.monotonic() - start, realtime=not fast)


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

    def as_dict(self) -> dict:
        return asdict(self)


def relay_udp(listen: tuple[str, int], to: tuple[str, int], channel: Channel | None = None, *,
              timeout: float = 5.0, wait: float | None = None, stop_after_end: bool = True,
              on_ready: Callable[[tuple[str, int]], None] | None = None) -> RelayResult:
    """Forward datagrams from ``listen`` to ``to`` through ``channel``, in real time.

    Args:
        timeout: stop this many seconds after the last packet (once one has come).
        wait: stop if no packet comes this many seconds after start (None: wait forever).
        stop_after_end: stop once the END packets are forwarded (the call is over).
        on_ready: called with the bound address once the socket listens.
    """
    channel = channel or Perfect()
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
            for data, arrival in _recv_pending(sock):
                last = arrival
                if is_end_packet(data):
                    ends.append(data)
                    continue
                result.packets_in += 1
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
    frames_per_packet: int = 1
    rates: dict = field(default_factory=dict)  # packet.nominal_rates of the stream received
    quality: object = None  # metrics.Quality against a reference, if given
    quality_vs_clean: object = None

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
                on_ready: Callable[[tuple[str, int]], None] | None = None) -> ReceiveResult:
    """Receive one stream on ``listen`` and write it to the WAV file ``output`` as it plays.

    Stops at the END packet (then the file has exactly the sender's input length, at the
    sender's input rate), ``timeout`` seconds after the last packet, ``wait`` seconds after
    start if nothing came, or on KeyboardInterrupt (the file keeps what was received).
    """
    from .receiver import Receiver, StreamingDecoder

    cfg = codec.cfg
    rx = Receiver(codec, playout_delay, concealment, use_fec)
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
    try:
        while not rx.done:
            # Take in everything that has arrived before playing what is due, so a receiver
            # that fell behind (a slow decode) does not call packets in its queue late.
            for data, arrival in _recv_pending(sock):
                rx.receive(data, arrival)
                last = arrival
            if rx.end is not None:
                break  # the sender is done and the relay has flushed: play the rest at once
            now = time.monotonic()
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
                for data, arrival in _recv_pending(sock):
                    rx.receive(data, arrival)
        finally:
            sock.close()
        try:
            writer.write(dec.push(rx.finish()))
            if rx.end is not None:
                pad, _ = dec.finish(rx.end.num_samples)
                writer.write(pad)
                writer.truncate(rx.end.num_samples)
        finally:
            writer.close()
    rate = cfg.sample_rate
    num_samples = writer.num_samples
    if rx.end is not None and rx.end.original_sample_rate != cfg.sample_rate:
        from .audio import load_audio, resample_to_length, write_wav

        x = load_audio(output).samples
        rate, num_samples = rx.end.original_sample_rate, rx.end.original_num_samples
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
        fec_codebooks=rx.fec_codebooks, frames_per_packet=rx.frames_per_packet,
        rates=nominal_rates(rx.num_codebooks, rx.fec_codebooks, rx.frames_per_packet,
                            cfg.bits_per_code, cfg.frame_rate) if rx.num_codebooks else {})
