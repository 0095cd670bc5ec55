"""The receiving end: jitter buffer, concealment, forward error correction, streaming decode.

Data flow, one 20 ms frame per tick::

    bytes --parse--> Packet --JitterBuffer--> codes [K] | FEC codes [C] | None
          (CRC error = lost)   (late, duplicate dropped)          |
                                                                  v
                        Concealer: codes -> latents; None -> repeat the last latents, fading
                        towards the latents of silence over a long gap
                                                                  |
                                                    latents [1, D, n] v
                        StreamingDecoder (state carried frame to frame) -> samples

A lost frame is ``None`` all the way down, never a separate code path: the decoder is fed
latents for every frame, real or concealed, so its state stays consistent and the output has
exactly one frame of audio per frame of time. :func:`simulate` runs a whole signal through
sender, channel and receiver in one process and reports what happened.

Time: packet ``p`` is sent when its last frame has been captured. The jitter buffer anchors
its playout clock on the first packet that arrives: frame ``i`` is played at
``t_first + playout_delay + (i - i_first) * frame_duration``. A packet arriving after its first
frame was played is late and dropped, as is a second copy of a sequence number.

Hostile input: every datagram goes through the same checks, in this order, and each kind of
refusal has its own counter in :class:`ReceiverStats`: not from the peer (wrong peer: the
configured one, else the source of the first valid packet), too large for this model's
packets (oversized), CRC mismatch (corrupted), no or wrong authentication tag when a key is set
(failed authentication), not a valid packet (malformed), another model's packet (rejected),
sequence number or timestamp far outside the window around the playout point (out of window),
a sequence number already received (duplicate or replay), and a frame already played (late).
The jitter buffer lives in fixed arrays of ``max_buffer`` frames, and a packet can only land
inside that window, so no sequence of datagrams makes it grow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .channel import Channel, Perfect
from .metrics import Quality, compute_quality
from .model import Codec
from .packet import (
    OVERHEAD_BYTES,
    RTP_UDP_IPV4_BYTES,
    TAG_SIZE,
    AuthenticationError,
    ChecksumError,
    EndOfStream,
    PacketError,
    Packetizer,
    check_key,
    max_packet_size,
    parse_packet,
    seq_add,
    serialize_packet,
    unwrap,
)
from .pipeline import CHUNK_FRAMES, decode_codes, encode_samples, num_frames_for

__all__ = [
    "CONCEALMENTS",
    "Concealer",
    "Receiver",
    "ReceiverStats",
    "SimulationResult",
    "StreamingDecoder",
    "format_comparison",
    "format_quality",
    "format_report",
    "simulate",
]

#: "none": lost frames become the latents of silence (no concealment);
#: "repeat": repeat the last good latents, then fade to silence over long gaps;
#: "interpolate": where the jitter buffer already holds a later frame (its codes or its FEC
#: copy), move from the last good latents towards that frame's across the gap; else "repeat".
CONCEALMENTS = ("none", "repeat", "interpolate")

_SEQ_WINDOW = 1 << 14  # remembered sequence numbers, for duplicate detection
_NO_SEQ = np.iinfo(np.int64).min
_EPSILON = 1e-9  # seconds: rounding of playout times
#: Frames the jitter buffer can hold ahead of the playout point (655 s, enough for a sender in
#: fast mode with a 10-minute file); a packet further ahead or behind is out of window.
MAX_BUFFER_FRAMES = 1 << 15
#: A sequence number further than this from the highest one accepted is out of window (unless
#: the next packet continues from it: then the sender restarted, and the window follows it).
SEQ_WINDOW = 1 << 13
#: If the first packet to arrive is further into the stream than this (10 s), the receiver joins
#: the stream there instead of conceal-playing everything before it.
MAX_LEAD_FRAMES = 500
#: The highest original sample rate an END packet may announce.
MAX_ORIGINAL_RATE = 384_000


class Concealer:
    """Turns each frame's codes, FEC copy or nothing into latents ``[D]``.

    Args:
        codec: the model (its quantizer maps codes to latents).
        mode: one of :data:`CONCEALMENTS`.
        hold_frames: with ``"repeat"``, lost frames repeat the last latents at full strength
            for this many frames (40 ms) ...
        fade_frames: ... and then move linearly to the latents of silence over this many
            (100 ms), so a long gap ends in silence, not a frozen vowel.
        max_bridge: with ``"interpolate"``, the longest stretch (frames from the last good
            one to the next known one, 200 ms) that is bridged by interpolation.
    """

    def __init__(self, codec: Codec, mode: str = "interpolate", hold_frames: int = 2,
                 fade_frames: int = 5, max_bridge: int = 10) -> None:
        if mode not in CONCEALMENTS:
            raise ValueError(f"concealment must be one of {', '.join(CONCEALMENTS)}, got {mode!r}")
        if hold_frames < 0 or fade_frames < 1:
            raise ValueError("hold_frames must be >= 0 and fade_frames >= 1")
        self.codec = codec
        self.mode = mode
        self.hold_frames = hold_frames
        self.fade_frames = fade_frames
        self.max_bridge = max_bridge
        self.num_codebooks = codec.cfg.num_codebooks
        self._silence: dict[int, torch.Tensor] = {}
        self._last: torch.Tensor | None = None
        self._gap = 0  # consecutive frames concealed so far

    @torch.no_grad()
    def silence(self, num_codebooks: int | None = None) -> torch.Tensor:
        """Latents ``[D]`` the encoder gives for digital silence (quantized with K codebooks)."""
        k = num_codebooks or self.num_codebooks
        if k not in self._silence:
            cfg = self.codec.cfg
            zeros = torch.zeros(1, 4 * max(cfg.frame_size, cfg.analysis_window))
            q = self.codec.quantizer(self.codec.embed(zeros), k).quantized
            self._silence[k] = q[0, :, -1].clone()
        return self._silence[k]

    @torch.no_grad()
    def latents(self, codes: np.ndarray) -> torch.Tensor:
        """codes ``[K]`` -> latents ``[D]``."""
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64)).view(1, -1, 1)
        return self.codec.quantizer.decode(c)[0, :, 0]

    def frame(self, codes: np.ndarray | None, fec: np.ndarray | None = None,
              ahead: tuple[int, np.ndarray] | None = None) -> tuple[torch.Tensor, str]:
        """Latents for one frame and how they were made: ``"codes"``, ``"fec"``,
        ``"interpolated"`` or ``"concealed"``.

        ``ahead`` is ``(d, codes)`` of the nearest later frame already received, d frames
        ahead (its own codes or its FEC copy), if any.
        """
        if codes is not None:
            z, kind = self.latents(codes), "codes"
            self.num_codebooks = len(codes)
        elif fec is not None and len(fec):
            z, kind = self.latents(fec), "fec"
        else:
            self._gap += 1
            silence = self.silence(self.num_codebooks)
            if self.mode == "none" or self._last is None:
                return silence, "concealed"
            if (self.mode == "interpolate" and ahead is not None
                    and self._gap + ahead[0] <= self.max_bridge):
                d, future = ahead
                w = self._gap / (self._gap + d)
                return self._last + w * (self.latents(future) - self._last), "interpolated"
            over = self._gap - self.hold_frames
            gain = 1.0 if over <= 0 else max(0.0, 1.0 - over / self.fade_frames)
            return silence + gain * (self._last - silence), "concealed"
        self._last = z
        self._gap = 0
        return z, kind


@dataclass
class ReceiverStats:
    """What a receiver saw. Packet counts are datagrams; frame counts are 20 ms frames.

    Each datagram is counted once in ``datagrams`` and, unless it was an END packet, in exactly
    one of the ``packets_*`` counters from ``packets_used`` on (``packets_arrived`` counts the
    ones of acceptable size from the peer, whatever happened to them next)."""

    datagrams: int = 0  # everything read from the socket, END packets included
    packets_arrived: int = 0  # from the peer, not oversized, whatever their state (END not counted)
    packets_used: int = 0  # intact, on time, first copy
    packets_late: int = 0
    packets_duplicated: int = 0  # a sequence number already received: a duplicate or a replay
    packets_corrupted: int = 0  # failed the CRC: damaged on the way, treated as lost
    packets_malformed: int = 0  # intact CRC but not a valid packet (or too short for one)
    packets_auth_failed: int = 0  # no tag or a wrong one (spoofed or altered), or a tag unasked
    packets_rejected: int = 0  # intact but not for this model (codebook bits or count)
    packets_out_of_window: int = 0  # sequence number or timestamp far from the playout point
    packets_oversized: int = 0  # longer than any packet of this model
    packets_wrong_peer: int = 0  # from another address than the peer's
    frames_played: int = 0
    frames_decoded: int = 0  # from their own codes
    frames_recovered_fec: int = 0  # from a FEC copy in a later packet
    frames_concealed: int = 0
    frames_interpolated: int = 0  # of the concealed: bridged towards a later frame received
    end_received: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class Receiver:
    """Jitter buffer + concealment: packets in, latents out, in playout order.

    Use ``receive(data, now)`` for every datagram, ``play_due(now)`` whenever time passes
    (it returns latents ``[1, D, n]`` for the frames whose playout time has come) and
    ``finish()`` at the end (plays everything left, up to the end of the stream). Times are
    seconds on any monotonic clock.

    Args:
        codec: the model the sender uses.
        playout_delay: seconds the first packet is held before its frame is played; packets
            delayed more than this relative to the first one are late.
        concealment: one of :data:`CONCEALMENTS`.
        use_fec: decode a lost frame from a FEC copy carried by a later packet (the next one,
            or one of the next D with FEC depth D), if that packet arrived in time.
        key: pre-shared key (at least 16 bytes): accept only packets with a valid
            authentication tag. None: accept only packets without one.
        peer: accept datagrams only from this source address, ``(host, port)`` with numeric
            host (port 0: any port of that host). None: from whichever source sends the first
            valid packet.
        max_buffer: frames the jitter buffer holds at most; packets further than this ahead of
            (or behind) the playout point are dropped as out of window.
    """

    def __init__(self, codec: Codec, playout_delay: float = 0.04,
                 concealment: str = "interpolate", use_fec: bool = True, *,
                 key: bytes | None = None, peer: tuple[str, int] | None = None,
                 max_buffer: int = MAX_BUFFER_FRAMES) -> None:
        if not playout_delay >= 0 or math.isinf(playout_delay):
            raise ValueError(f"playout delay must be >= 0 seconds, got {playout_delay}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1 frame, got {max_buffer}")
        cfg = codec.cfg
        self.cfg = cfg
        self.playout_delay = float(playout_delay)
        self.use_fec = use_fec
        self.key = None if key is None else check_key(key)
        self.peer = None if peer is None else (str(peer[0]), int(peer[1]))
        self.peer_fixed = peer is not None  # configured, or fixed by the first valid packet
        self.max_buffer = int(max_buffer)
        self.max_packet_size = max_packet_size(cfg.num_codebooks, cfg.bits_per_code,
                                               self.key is not None)
        self.frame_duration = cfg.frame_size / cfg.sample_rate
        self.concealer = Concealer(codec, concealment)
        self.stats = ReceiverStats()
        self.anchor: tuple[float, int] | None = None  # (arrival time, first frame index)
        self.start_frame = 0  # first frame played (> 0 if it joined a stream late)
        self.next_frame = 0
        self.end: EndOfStream | None = None
        self.end_frame: int | None = None
        self.last_frame = -1  # highest frame index received
        self.frames_per_packet = 1  # the most in one packet
        self.num_codebooks = 0  # of the last packet used
        self.fec_codebooks = 0
        self.fec_depth = 1
        self._codes = _FrameStore(self.max_buffer, cfg.num_codebooks)
        self._fec = _FrameStore(self.max_buffer, cfg.num_codebooks)
        # The last _SEQ_WINDOW sequence numbers received, in a fixed ring (slot seq % size),
        # like SRTP's replay list: memory does not grow over a long call.
        self._seen = np.full(_SEQ_WINDOW, _NO_SEQ, np.int64)
        self._seq_ref: int | None = None
        self._seq_resync: int | None = None  # an out-of-window seq a restart may continue

    # -- input ----------------------------------------------------------------------------
    def receive(self, data: bytes, now: float, source: tuple | None = None) -> str:
        """Take one datagram (from address ``source``, if known); returns what it was:
        ``"ok"``, ``"end"``, or why it was dropped: ``"wrong_peer"``, ``"oversized"``,
        ``"corrupted"``, ``"auth_failed"``, ``"malformed"``, ``"rejected"``,
        ``"out_of_window"``, ``"duplicate"`` or ``"late"``."""
        st = self.stats
        st.datagrams += 1
        if source is not None and self.peer is not None and not _same_peer(source, self.peer):
            st.packets_wrong_peer += 1
            return "wrong_peer"
        if len(data) > self.max_packet_size:
            st.packets_oversized += 1
            return "oversized"
        try:
            pkt = parse_packet(data, self.key)
        except ChecksumError:
            return self._count_arrived("corrupted")
        except AuthenticationError:
            return self._count_arrived("auth_failed")
        except PacketError:
            return self._count_arrived("malformed")
        if pkt.end is None:
            st.packets_arrived += 1
        if pkt.codebook_bits != self.cfg.bits_per_code or (
                pkt.num_codebooks > self.cfg.num_codebooks):
            st.packets_rejected += 1
            return "rejected"
        # The timestamp, unwrapped around the playout point: the window follows the receiver's
        # clock, not what packets claim, so no packet can move it.
        fs = self.cfg.frame_size
        ts = pkt.timestamp if self.anchor is None else unwrap(pkt.timestamp,
                                                              self.next_frame * fs, 32)
        if ts % fs:
            st.packets_rejected += 1
            return "rejected"
        frame = ts // fs
        if pkt.end is not None:
            return self._receive_end(pkt, frame)

        ahead = frame - self.next_frame
        if self.anchor is None and ahead > MAX_LEAD_FRAMES:
            ahead = 0  # the first packet, far into a stream: join it there
        if not -self.max_buffer < ahead <= self.max_buffer - pkt.num_frames:
            st.packets_out_of_window += 1
            return "out_of_window"
        seq = pkt.seq if self._seq_ref is None else unwrap(pkt.seq, self._seq_ref)
        if self._seq_ref is not None and abs(seq - self._seq_ref) > SEQ_WINDOW:
            # A sender that restarted continues from here; a stray packet does not.
            if self._seq_resync is None or pkt.seq != seq_add(self._seq_resync, 1):
                self._seq_resync = pkt.seq
                st.packets_out_of_window += 1
                return "out_of_window"
            self._seen.fill(_NO_SEQ)
            self._seq_ref = seq = pkt.seq
        self._seq_resync = None
        if self._seen[seq % _SEQ_WINDOW] == seq:
            st.packets_duplicated += 1
            return "duplicate"
        if frame < self.next_frame:
            self._remember(seq)
            st.packets_late += 1
            return "late"
        self._remember(seq)
        if self.anchor is None:
            self.anchor = (now, frame)
            if frame - self.next_frame > MAX_LEAD_FRAMES:
                self.next_frame = self.start_frame = frame
        if not self.peer_fixed and source is not None:
            self.peer = (str(source[0]), int(source[1]))
            self.peer_fixed = True
        st.packets_used += 1
        f = pkt.num_frames
        self.frames_per_packet = max(self.frames_per_packet, f)
        self.num_codebooks = pkt.num_codebooks
        self.fec_codebooks = max(self.fec_codebooks, pkt.fec_codebooks)
        self.fec_depth = max(self.fec_depth, pkt.fec_depth)
        for j in range(f):
            self._codes.put(frame + j, pkt.codes[:, j])
        self.last_frame = max(self.last_frame, frame + f - 1)
        if pkt.fec_codebooks:
            for d in range(1, pkt.fec_depth + 1):
                copy = pkt.fec_copy(d)
                for j in range(f):
                    i = frame - d * f + j
                    if i >= self.next_frame and i not in self._codes:
                        self._fec.put(i, copy[:, j])
        return "ok"

    def _count_arrived(self, kind: str) -> str:
        st = self.stats
        st.packets_arrived += 1
        name = {"corrupted": "packets_corrupted", "auth_failed": "packets_auth_failed",
                "malformed": "packets_malformed"}[kind]
        setattr(st, name, getattr(st, name) + 1)
        return kind

    def _receive_end(self, pkt, frame: int) -> str:
        """An END packet: believed only if it is consistent and inside the window, so a forged
        one cannot make the receiver play (or pad) hours of audio."""
        st = self.stats
        e = pkt.end
        rate = self.cfg.sample_rate
        if not abs(frame - self.next_frame) < self.max_buffer:
            st.packets_out_of_window += 1
            return "out_of_window"
        if (e.num_samples > frame * self.cfg.frame_size
                or e.original_sample_rate > MAX_ORIGINAL_RATE
                or e.original_num_samples > (e.num_samples + 1) * e.original_sample_rate
                // rate + 1):
            st.packets_malformed += 1
            return "malformed"
        if self.end is None:
            self.end = e
            self.end_frame = frame
            st.end_received = True
        return "end"

    def _remember(self, seq: int) -> None:
        self._seen[seq % _SEQ_WINDOW] = seq
        self._seq_ref = seq if self._seq_ref is None else max(self._seq_ref, seq)

    @property
    def buffered_frames(self) -> int:
        """Frames waiting in the jitter buffer (their own codes), at most ``max_buffer``."""
        return len(self._codes)

    # -- output ---------------------------------------------------------------------------
    def deadline(self, frame: int) -> float | None:
        """Playout time of ``frame`` (None before the first packet)."""
        if self.anchor is None:
            return None
        t0, f0 = self.anchor
        return t0 + self.playout_delay + (frame - f0) * self.frame_duration

    @property
    def done(self) -> bool:
        """Every frame up to the END packet's has been played."""
        return self.end_frame is not None and self.next_frame >= self.end_frame

    def next_deadline(self) -> float | None:
        return None if self.done else self.deadline(self.next_frame)

    def play_due(self, now: float) -> torch.Tensor | None:
        """Latents ``[1, D, n]`` for every frame whose playout time is before ``now`` (None if
        none). A packet that arrives exactly at its frame's playout time is in time."""
        out = []
        while not self.done:
            t = self.deadline(self.next_frame)
            if t is None or t >= now - _EPSILON:
                break
            out.append(self._play_one())
        return torch.stack(out, dim=1)[None] if out else None

    def finish(self) -> torch.Tensor | None:
        """Play every remaining frame now: up to the END packet's frame if it came, else up to
        the last frame received. Returns latents ``[1, D, n]`` or None."""
        stop = self.end_frame if self.end_frame is not None else self.last_frame + 1
        out = [self._play_one() for _ in range(self.next_frame, stop)]
        return torch.stack(out, dim=1)[None] if out else None

    def _play_one(self) -> torch.Tensor:
        i = self.next_frame
        self.next_frame += 1
        codes = self._codes.pop(i)
        fec = self._fec.pop(i)
        if not self.use_fec:
            fec = None
        ahead = None
        if codes is None and fec is None and self.concealer.mode == "interpolate":
            ahead = self._nearest_ahead(i)
        z, kind = self.concealer.frame(codes, fec, ahead)
        st = self.stats
        st.frames_played += 1
        if kind == "codes":
            st.frames_decoded += 1
        elif kind == "fec":
            st.frames_recovered_fec += 1
        else:
            st.frames_concealed += 1
            st.frames_interpolated += kind == "interpolated"
        return z

    def _nearest_ahead(self, i: int) -> tuple[int, np.ndarray] | None:
        """(distance, codes) of the first frame after ``i`` that is already in the buffer."""
        for d in range(1, self.concealer.max_bridge):
            codes = self._codes.get(i + d)
            if codes is None and self.use_fec:
                codes = self._fec.get(i + d)
            if codes is not None:
                return d, codes
        return None


def _same_peer(source: tuple, peer: tuple[str, int]) -> bool:
    return source[0] == peer[0] and (peer[1] == 0 or source[1] == peer[1])


class _FrameStore:
    """The codes of up to ``capacity`` frames, by frame index, in fixed memory: a ring of
    ``capacity`` rows, row ``i % capacity`` holding frame ``i``. The receiver only stores frames
    within ``capacity`` of its playout point, so two live frames never share a row."""

    _EMPTY = np.iinfo(np.int64).min  # no frame has this index

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = capacity
        self._frame = np.full(capacity, self._EMPTY, np.int64)
        self._count = np.zeros(capacity, np.uint8)
        self._codes = np.zeros((capacity, width), np.uint16)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, i: int) -> bool:
        return bool(self._frame[i % self.capacity] == i)

    def put(self, i: int, codes: np.ndarray) -> None:
        row = i % self.capacity
        self._size += self._frame[row] == self._EMPTY
        self._frame[row] = i
        self._count[row] = len(codes)
        self._codes[row, : len(codes)] = codes

    def get(self, i: int) -> np.ndarray | None:
        row = i % self.capacity
        if self._frame[row] != i:
            return None
        return self._codes[row, : self._count[row]].astype(np.int64)

    def pop(self, i: int) -> np.ndarray | None:
        codes = self.get(i)
        if codes is not None:
            self._frame[i % self.capacity] = self._EMPTY
            self._size -= 1
        return codes


class StreamingDecoder:
    """Latents ``[1, D, n]`` -> samples aligned with the sender's input.

    Drops the model's first ``output_delay`` samples (its lookahead), so sample ``j`` of the
    output lines up with sample ``j`` of the input, and ``finish(num_samples)`` returns what
    is needed to end at exactly ``num_samples`` (negative: how many already emitted samples are
    too many).
    """

    def __init__(self, codec: Codec) -> None:
        self.decoder = codec.stream_decoder()
        self.skip = codec.cfg.output_delay
        self.emitted = 0

    @torch.no_grad()
    def push(self, z: torch.Tensor | None) -> np.ndarray:
        if z is None or z.shape[-1] == 0:
            return np.zeros(0, np.float32)
        wav = self.decoder.push_latents(z)[0].numpy()
        if self.skip:
            cut = min(self.skip, len(wav))
            wav, self.skip = wav[cut:], self.skip - cut
        self.emitted += len(wav)
        return wav.astype(np.float32, copy=False)

    def finish(self, num_samples: int) -> tuple[np.ndarray, int]:
        """(zeros to append, samples to cut) so that the output is ``num_samples`` long."""
        missing = num_samples - self.emitted
        pad = np.zeros(max(0, missing), np.float32)
        self.emitted += len(pad)
        return pad, max(0, -missing)


# --------------------------------------------------------------------------------------------
# In-process simulation: sender -> channel -> receiver
# --------------------------------------------------------------------------------------------


@dataclass
class SimulationResult:
    """Report of one :func:`simulate` run. Rates are over the coded duration."""

    samples: np.ndarray = field(repr=False)  # float32 [N]: the received signal
    num_codebooks: int
    fec_codebooks: int
    fec_depth: int
    frames_per_packet: int
    concealment: str
    channel: str
    duration_s: float
    packets_sent: int
    packets_lost: int  # never arrived intact: lost by the channel or corrupted (not late)
    stats: ReceiverStats
    payload_kbps: float  # the codes themselves
    fec_kbps: float  # the FEC copies (all D of them)
    packet_kbps: float  # whole packets: payload, FEC and our 13-byte header
    rtp_udp_ipv4_kbps: float  # what RTP/UDP/IPv4 headers (40 bytes per packet) would add
    codec_latency_ms: float  # frame + lookahead
    packetization_ms: float  # waiting for the other frames of a packet
    network_delay_ms: float  # of the packet the playout clock anchored on
    playout_delay_ms: float
    quality: Quality | None  # against the original
    quality_vs_clean: Quality | None  # against the lossless-channel decode
    quality_clean: Quality | None  # lossless-channel decode against the original
    auth_kbps: float = 0.0  # the authentication tags, if the packets carried them

    @property
    def latency_ms(self) -> float:
        """End to end: codec latency + packetization + network + playout delay."""
        return (self.codec_latency_ms + self.packetization_ms + self.network_delay_ms
                + self.playout_delay_ms)

    @property
    def loss_rate(self) -> float:
        return self.packets_lost / self.packets_sent if self.packets_sent else 0.0

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "samples"}
        d["latency_ms"] = self.latency_ms
        d["loss_rate"] = self.loss_rate
        return d


def simulate(codec: Codec, samples: np.ndarray, kbps: float | None = None,
             channel: Channel | None = None, *, num_codebooks: int | None = None,
             fec_codebooks: int = 0, fec_depth: int = 1, frames_per_packet: int = 1,
             playout_delay: float = 0.04, concealment: str = "interpolate", first_seq: int = 0,
             quality: bool = True,
             perceptual: bool = True, codes: np.ndarray | None = None,
             clean: np.ndarray | None = None, key: bytes | None = None) -> SimulationResult:
    """Send ``samples`` through packets, ``channel`` and a receiver, all in this process.

    Args:
        codec: the model, at both ends.
        samples: float32 ``[N]`` at the codec rate.
        kbps: payload bitrate (or give ``num_codebooks``).
        channel: what happens to the packets (default: a perfect channel).
        fec_codebooks: C > 0 adds the first C codebooks of the previous packet to each packet
            (of the previous D packets with ``fec_depth = D``).
        fec_depth: D, how many earlier packets each packet copies.
        frames_per_packet: F, frames per packet.
        playout_delay: jitter buffer delay in seconds.
        concealment: one of :data:`CONCEALMENTS`.
        first_seq: sequence number of the first packet (to exercise the wrap).
        quality: compute the quality measures (``perceptual``: with PESQ and STOI).
        codes: the codes ``[K, F]`` of ``samples`` if already computed.
        clean: the lossless decode ``[N]`` if already computed.
        key: authenticate the packets with this pre-shared key (their tags count in the rates).

    Returns:
        A :class:`SimulationResult`; its ``samples`` always have exactly N samples.
    """
    cfg = codec.cfg
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"samples must be [N], got shape {x.shape}")
    n = len(x)
    if num_codebooks is None:
        if kbps is None:
            raise ValueError("give kbps or num_codebooks")
        num_codebooks = cfg.codebooks_for_kbps(kbps)
    if not 0 <= fec_codebooks <= num_codebooks:
        raise ValueError(f"fec_codebooks must be in 0..{num_codebooks}, got {fec_codebooks}")
    channel = channel or Perfect()
    if codes is None:
        codes = encode_samples(codec, x, num_codebooks)
    codes = np.asarray(codes)[:num_codebooks]
    if codes.shape[1] != num_frames_for(codec, n):
        raise ValueError(f"codes have {codes.shape[1]} frames, {n} samples need "
                         f"{num_frames_for(codec, n)}")

    dur = cfg.frame_size / cfg.sample_rate
    packetizer = Packetizer(cfg.bits_per_code, cfg.frame_size, frames_per_packet, fec_codebooks,
                            first_seq, fec_depth=fec_depth)
    packets = packetizer.push(codes) + packetizer.flush()
    sends, frame_end = [], 0
    for p in packets:
        frame_end += p.num_frames
        sends.append((frame_end * dur, serialize_packet(p, key)))
    deliveries = channel.transmit(sends)

    rx = Receiver(codec, playout_delay, concealment, key=key)
    latents = []
    for d in deliveries:
        latents.append(rx.play_due(d.time))
        rx.receive(d.data, d.time)
    # The END packet goes around the channel: the simulation knows when the stream ends.
    rx.receive(serialize_packet(packetizer.end(n, cfg.sample_rate, n), key), math.inf)
    latents.append(rx.finish())
    # The decoder is causal and streaming equals batch, so decoding the latents in large
    # chunks after the fact gives the same samples as decoding each frame at its playout time.
    z = torch.cat([t for t in latents if t is not None], dim=-1)
    out = StreamingDecoder(codec)
    pieces = [out.push(z[..., i:i + CHUNK_FRAMES]) for i in range(0, z.shape[-1], CHUNK_FRAMES)]
    pad, cut = out.finish(n)
    y = np.concatenate([*pieces, pad])
    y = y[: len(y) - cut] if cut else y
    assert len(y) == n

    network = 0.0
    if rx.anchor is not None:
        t0, f0 = rx.anchor
        sent_at = next((t for (t, _), p in zip(sends, packets)
                        if p.timestamp == f0 * cfg.frame_size % (1 << 32)), t0)
        network = t0 - sent_at
    seconds = codes.shape[1] * dur
    bits = cfg.bits_per_code
    payload = sum(p.num_codebooks * p.num_frames for p in packets) * bits
    fec = sum(p.fec.size for p in packets) * bits
    wire = sum(len(b) for _, b in sends) * 8
    q = qv = qc = None
    if quality:
        if clean is None:
            clean = decode_codes(codec, codes, n)
        q = compute_quality(x, y, cfg.sample_rate, perceptual)
        qv = compute_quality(clean, y, cfg.sample_rate, perceptual)
        qc = compute_quality(x, clean, cfg.sample_rate, perceptual)
    return SimulationResult(
        samples=y, num_codebooks=num_codebooks, fec_codebooks=fec_codebooks, fec_depth=fec_depth,
        frames_per_packet=frames_per_packet, concealment=concealment, channel=repr(channel),
        duration_s=n / cfg.sample_rate, packets_sent=len(packets),
        packets_lost=len(packets) - rx.stats.packets_used - rx.stats.packets_late, stats=rx.stats,
        payload_kbps=payload / seconds / 1000, fec_kbps=fec / seconds / 1000,
        packet_kbps=wire / seconds / 1000,
        rtp_udp_ipv4_kbps=len(packets) * RTP_UDP_IPV4_BYTES * 8 / seconds / 1000,
        codec_latency_ms=codec.latency.ms, packetization_ms=(frames_per_packet - 1) * dur * 1000,
        network_delay_ms=network * 1000, playout_delay_ms=playout_delay * 1000,
        quality=q, quality_vs_clean=qv, quality_clean=qc,
        auth_kbps=(len(packets) * TAG_SIZE * 8 / seconds / 1000) if key is not None else 0.0)


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def format_quality(q: Quality | None) -> str:
    if q is None:
        return "not measured"
    return (f"SNR {_fmt(q.snr_db, 1)} dB, SI-SDR {_fmt(q.si_sdr_db, 1)} dB, "
            f"mel {_fmt(q.mel_distance, 3)}, PESQ-WB {_fmt(q.pesq_wb)}, STOI {_fmt(q.stoi, 3)}")


def format_report(r: SimulationResult) -> str:
    """A few human-readable lines about one simulation."""
    s = r.stats
    fec = ""
    if r.fec_codebooks:
        depth = f" of each of {r.fec_depth} packets" if r.fec_depth > 1 else ""
        fec = f", FEC {r.fec_codebooks} codebooks{depth} (+{r.fec_kbps:.2f} kbps)"
    auth = f" + authentication {r.auth_kbps:.2f} kbps" if r.auth_kbps else ""
    overhead = OVERHEAD_BYTES + (r.fec_depth > 1 and r.fec_codebooks > 0)
    header = f"{overhead}-byte header+CRC" + (f", {TAG_SIZE}-byte tag" if auth else "")
    lines = [
        f"channel      {r.channel}",
        f"stream       {r.duration_s:.2f} s, {r.num_codebooks} codebooks, "
        f"{r.frames_per_packet} frame(s)/packet{fec}, concealment: {r.concealment}",
        f"packets      sent {r.packets_sent}, lost {r.packets_lost} ({r.loss_rate:.1%}; "
        f"late {s.packets_late}, corrupted {s.packets_corrupted}), "
        f"duplicated {s.packets_duplicated}",
        f"frames       {s.frames_played}: decoded {s.frames_decoded}, recovered by FEC "
        f"{s.frames_recovered_fec}, concealed {s.frames_concealed} ({s.frames_interpolated} "
        "bridged to a later frame)",
        f"rate         payload {r.payload_kbps:.2f} kbps + FEC {r.fec_kbps:.2f} kbps{auth}; "
        f"packets {r.packet_kbps:.2f} kbps ({header}); RTP/UDP/IPv4 would add "
        f"{r.rtp_udp_ipv4_kbps:.2f} kbps",
        f"latency      {r.latency_ms:.0f} ms = codec {r.codec_latency_ms:.0f} + packetization "
        f"{r.packetization_ms:.0f} + network {r.network_delay_ms:.0f} + playout "
        f"{r.playout_delay_ms:.0f}",
        f"vs original  {format_quality(r.quality)}",
        f"vs clean     {format_quality(r.quality_vs_clean)}",
        f"clean        {format_quality(r.quality_clean)} (lossless channel vs original)",
    ]
    return "\n".join(lines)


def format_comparison(results: list[tuple[str, SimulationResult]]) -> str:
    """Several runs side by side (e.g. a lossless and a lossy channel), one column each."""
    def q(r, attr, field, digits):
        v = getattr(getattr(r, attr), field) if getattr(r, attr) is not None else None
        return _fmt(v, digits)

    rows = [
        ("packets lost", lambda r: f"{r.packets_lost}/{r.packets_sent} ({r.loss_rate:.1%})"),
        ("late / duplicated", lambda r: f"{r.stats.packets_late} / {r.stats.packets_duplicated}"),
        ("corrupted", lambda r: str(r.stats.packets_corrupted)),
        ("frames concealed", lambda r: str(r.stats.frames_concealed)),
        ("frames from FEC", lambda r: str(r.stats.frames_recovered_fec)),
        ("payload kbps", lambda r: f"{r.payload_kbps + r.fec_kbps:.2f}"),
        ("packet kbps", lambda r: f"{r.packet_kbps:.2f}"),
        ("+ RTP/UDP/IPv4 kbps", lambda r: f"{r.rtp_udp_ipv4_kbps:.2f}"),
        ("latency ms", lambda r: f"{r.latency_ms:.0f}"),
        ("PESQ-WB", lambda r: q(r, "quality", "pesq_wb", 2)),
        ("STOI", lambda r: q(r, "quality", "stoi", 3)),
        ("SNR dB", lambda r: q(r, "quality", "snr_db", 1)),
        # Every frame decoded from its own packet: the clean decode itself (an SNR there would
        # only measure float rounding between streaming and whole-signal decoding).
        ("SNR vs clean dB", lambda r: "same" if r.stats.frames_decoded == r.stats.frames_played
         else q(r, "quality_vs_clean", "snr_db", 1)),
    ]
    table = [["", *(name for name, _ in results)]]
    table += [[label, *(f(r) for _, r in results)] for label, f in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
