"""Receiver: jitter buffer, concealment, FEC, and the in-process simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechcodec.channel import BitErrors, Channel, Delay, Delivery, Duplicate, FixedPattern
from speechcodec.packet import Packet, packetize, serialize_packet
from speechcodec.pipeline import encode_samples, num_frames_for, roundtrip_samples
from speechcodec.receiver import (
    Concealer,
    Receiver,
    StreamingDecoder,
    format_comparison,
    format_report,
    simulate,
)

K = 6
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


class DelayOne(Channel):
    """Delays packet number `index` by `extra` seconds."""

    def __init__(self, index: int, extra: float) -> None:
        self.index, self.extra, self.count = index, extra, 0

    def process(self, time, data):
        i, self.count = self.count, self.count + 1
        return [Delivery(time + (self.extra if i == self.index else 0.0), data)]


@pytest.fixture
def clip(speech) -> np.ndarray:
    return speech[:9000]  # about 0.56 s: 30 frames


def test_perfect_channel_equals_the_clean_decode(tiny_codec, clip):
    r = simulate(tiny_codec, clip, num_codebooks=K, quality=True, perceptual=False)
    clean = roundtrip_samples(tiny_codec, clip, K)
    assert len(r.samples) == len(clip)
    np.testing.assert_allclose(r.samples, clean, atol=1e-5)
    s = r.stats
    assert r.packets_lost == 0 and s.frames_concealed == 0 and s.frames_recovered_fec == 0
    assert s.frames_played == r.packets_sent == num_frames_for(tiny_codec, len(clip))
    assert r.quality_vs_clean.snr_db > 60


@pytest.mark.parametrize("n,fpp", [(1, 1), (319, 3), (320, 1), (321, 2), (5000, 3)])
def test_output_length_equals_input_length(tiny_codec, speech, n, fpp):
    for pattern in ["", "x", "x" * 100, "..xx"]:
        r = simulate(tiny_codec, speech[:n], num_codebooks=3, channel=FixedPattern(pattern),
                     frames_per_packet=fpp, fec_codebooks=1, quality=False)
        assert len(r.samples) == n and r.samples.dtype == np.float32
        assert np.isfinite(r.samples).all()


def test_lost_packet_recovered_by_fec(tiny_codec, clip):
    lose_5 = "....." + "x"
    no_fec = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern(lose_5),
                      concealment="repeat", quality=False)
    assert no_fec.packets_lost == 1 and no_fec.stats.frames_concealed == 1
    fec = simulate(tiny_codec, clip, num_codebooks=K, fec_codebooks=3,
                   channel=FixedPattern(lose_5), quality=False)
    assert fec.stats.frames_recovered_fec == 1 and fec.stats.frames_concealed == 0
    n = fec.packets_sent  # every packet but the first carries a copy
    assert fec.fec_kbps == pytest.approx(fec.payload_kbps / 2 * (n - 1) / n)
    assert fec.packet_kbps > no_fec.packet_kbps
    # The coarse copy is closer to the clean decode than the concealment is.
    clean = roundtrip_samples(tiny_codec, clip, K)
    err = [np.sum((r.samples - clean) ** 2) for r in (no_fec, fec)]
    assert err[1] < err[0]


def test_fec_depth_recovers_a_burst(tiny_codec, clip):
    """Two packets lost in a row: one FEC copy recovers the second frame only, two copies
    recover both, if the playout delay (40 ms) covers the two packets the oldest copy waits."""
    runs = {d: simulate(tiny_codec, clip, num_codebooks=K, fec_codebooks=2, fec_depth=d,
                        channel=FixedPattern(".....xx"), quality=False) for d in (1, 2)}
    assert (runs[1].stats.frames_recovered_fec, runs[1].stats.frames_concealed) == (1, 1)
    assert (runs[2].stats.frames_recovered_fec, runs[2].stats.frames_concealed) == (2, 0)
    n = runs[2].packets_sent  # the first packet copies nothing, the second one packet
    assert runs[2].fec_kbps == pytest.approx(runs[1].fec_kbps * (2 * n - 3) / (n - 1))
    assert runs[2].fec_depth == 2 and "of each of 2 packets" in format_report(runs[2])
    short = simulate(tiny_codec, clip, num_codebooks=K, fec_codebooks=2, fec_depth=2,
                     channel=FixedPattern(".....xx"), playout_delay=0.02, quality=False)
    assert (short.stats.frames_recovered_fec, short.stats.frames_concealed) == (1, 1)


def test_fec_needs_the_next_packet_in_time(tiny_codec, clip):
    # With no playout delay the packet carrying the FEC copy arrives after the lost frame's turn.
    r = simulate(tiny_codec, clip, num_codebooks=K, fec_codebooks=3, playout_delay=0.0,
                 channel=FixedPattern(".....x"), quality=False)
    assert r.stats.frames_recovered_fec == 0 and r.stats.frames_concealed == 1


def test_burst_at_the_start_and_the_end(tiny_codec, clip):
    frames = num_frames_for(tiny_codec, len(clip))
    pattern = "xxx" + "." * (frames - 6) + "xxx"
    r = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern(pattern), quality=False)
    assert len(r.samples) == len(clip)
    assert r.stats.frames_concealed == 6 and r.packets_lost == 6


def test_late_packet_is_dropped_and_concealed(tiny_codec, clip):
    r = simulate(tiny_codec, clip, num_codebooks=K, channel=DelayOne(8, 0.2),
                 playout_delay=0.04, quality=False)
    assert r.stats.packets_late == 1 and r.packets_lost == 0
    assert r.stats.frames_concealed == 1
    # A playout delay longer than the lateness keeps it.
    r = simulate(tiny_codec, clip, num_codebooks=K, channel=DelayOne(8, 0.2), playout_delay=0.25,
                 quality=False)
    assert r.stats.packets_late == 0 and r.stats.frames_concealed == 0


def test_jitter_within_the_playout_delay_is_lossless(tiny_codec, clip):
    clean = roundtrip_samples(tiny_codec, clip, K)
    r = simulate(tiny_codec, clip, num_codebooks=K, channel=Delay(0.03, 0.05, seed=2),
                 playout_delay=0.06, quality=False)
    assert r.stats.packets_late == 0 and r.stats.frames_concealed == 0
    np.testing.assert_allclose(r.samples, clean, atol=1e-5)
    assert r.network_delay_ms >= 30 and r.latency_ms == pytest.approx(
        40 + r.network_delay_ms + 60)


def test_duplicates_are_dropped(tiny_codec, clip):
    clean = roundtrip_samples(tiny_codec, clip, K)
    r = simulate(tiny_codec, clip, num_codebooks=K, channel=Duplicate(1.0), quality=False)
    assert r.stats.packets_duplicated == r.packets_sent
    np.testing.assert_allclose(r.samples, clean, atol=1e-5)


def test_corrupted_packets_become_losses(tiny_codec, clip):
    r = simulate(tiny_codec, clip, num_codebooks=K, channel=BitErrors(0.01, seed=1),
                 quality=False)
    s = r.stats
    assert s.packets_corrupted > 0 and r.packets_lost == s.packets_corrupted
    assert s.frames_concealed == s.packets_corrupted and len(r.samples) == len(clip)


def test_sequence_wrap_changes_nothing(tiny_codec, clip):
    a = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern("...x.x"),
                 quality=False)
    b = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern("...x.x"),
                 first_seq=65530, quality=False)
    assert np.array_equal(a.samples, b.samples)
    assert a.stats.as_dict() == b.stats.as_dict()


def test_frame_by_frame_playout_equals_the_simulation(tiny_codec, clip):
    """simulate() decodes its latents in chunks; a real-time receiver decodes each tick."""
    pattern = "..xx....x"
    sim = simulate(tiny_codec, clip, num_codebooks=K, fec_codebooks=2,
                   channel=FixedPattern(pattern), quality=False)
    codes = encode_samples(tiny_codec, clip, K)
    rx, dec = Receiver(tiny_codec), StreamingDecoder(tiny_codec)
    out = []
    for i, p in enumerate(packetize(codes, tiny_codec.cfg.bits_per_code, 320, 1, 2)):
        t = (i + 1) * 0.02
        out.append(dec.push(rx.play_due(t)))
        if not (i < len(pattern) and pattern[i] == "x"):
            rx.receive(serialize_packet(p), t)
    out.append(dec.push(rx.finish()))
    y = np.concatenate(out)[: len(clip)]
    np.testing.assert_allclose(y, sim.samples, atol=1e-5)


def test_concealer_interpolates_towards_a_known_later_frame(tiny_codec):
    c = Concealer(tiny_codec, "interpolate", max_bridge=6)
    a, b = np.array([5, 9, 1]), np.array([7, 2, 3])
    za, zb = c.latents(a), c.latents(b)
    c.frame(a)
    z1, kind = c.frame(None, ahead=(2, b))  # a, lost, lost, b
    z2, _ = c.frame(None, ahead=(1, b))
    assert kind == "interpolated"
    assert torch.allclose(z1, za + (zb - za) / 3, atol=1e-6)
    assert torch.allclose(z2, za + 2 * (zb - za) / 3, atol=1e-6)
    # Too long a gap to bridge, or nothing known ahead: repeat.
    assert c.frame(None, ahead=(4, b))[1] == "concealed"
    assert c.frame(None)[1] == "concealed"


def test_receiver_bridges_single_losses_with_the_next_packet(tiny_codec, clip):
    r = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern("....x...xx"),
                 quality=False)
    assert r.stats.frames_concealed == 3 and r.stats.frames_interpolated == 3
    # Without playout delay the next packet is not there yet.
    r0 = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern("....x...xx"),
                  playout_delay=0.0, quality=False)
    assert r0.stats.frames_interpolated == 0 and r0.stats.frames_concealed == 3
    rep = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern("....x...xx"),
                   concealment="repeat", quality=False)
    assert rep.stats.frames_interpolated == 0
    # With trained weights (a random model's latents mean nothing), bridging towards the next
    # packet lands closer to the clean decode than repeating the last frame. One clip and one
    # pattern can go either way (the decoder makes its own phases), so this sums the log-mel
    # distance over the three speech samples and three loss patterns.
    from speechcodec.audio import load_audio
    from speechcodec.metrics import log_mel_distance
    from speechcodec.pretrained import load_codec

    codec = load_codec()
    total = {"interpolate": 0.0, "repeat": 0.0}
    for name in ("espeak_male", "espeak_female", "flite_slt"):
        x = load_audio(ROOT / "samples" / f"{name}.wav").samples[:32000]
        clean = roundtrip_samples(codec, x, K)
        for pattern in ("....x...xx", "......x...", ".....xx........"):
            for how in total:
                r = simulate(codec, x, num_codebooks=K, channel=FixedPattern(pattern),
                             concealment=how, quality=False)
                total[how] += log_mel_distance(clean, r.samples)
    assert total["interpolate"] < 0.95 * total["repeat"]


def test_concealer_repeats_then_fades_to_silence(tiny_codec):
    c = Concealer(tiny_codec, "repeat", hold_frames=2, fade_frames=4)
    codes = np.array([5, 9, 1])
    z, kind = c.frame(codes)
    assert kind == "codes"
    silence = c.silence(3)
    got = [c.frame(None)[0] for _ in range(8)]
    assert torch.allclose(got[0], z) and torch.allclose(got[1], z)
    dist = [float((g - silence).norm()) for g in got]
    assert dist[2] < dist[1] and dist[3] < dist[2]
    assert dist[5] == pytest.approx(0.0, abs=1e-6) and dist[7] == pytest.approx(0.0, abs=1e-6)
    assert c.frame(codes)[1] == "codes"  # recovers at once
    assert torch.allclose(c.frame(None)[0], z)

    none = Concealer(tiny_codec, "none")
    none.frame(codes)
    assert torch.allclose(none.frame(None)[0], none.silence(3))
    with pytest.raises(ValueError):
        Concealer(tiny_codec, "magic")


def test_receiver_rejects_other_models_packets(tiny_codec):
    rx = Receiver(tiny_codec)
    other_bits = tiny_codec.cfg.bits_per_code + 1
    assert rx.receive(serialize_packet(Packet(0, 0, np.zeros((2, 1), int),
                                              codebook_bits=other_bits)), 0.0) == "rejected"
    assert rx.receive(b"\x10garbage", 0.0) == "malformed"  # too short to be a packet
    assert rx.receive(b"\x10garbage and more of it", 0.0) == "corrupted"  # CRC mismatch
    s = rx.stats
    assert s.packets_rejected == s.packets_malformed == s.packets_corrupted == 1
    assert rx.anchor is None


def test_report_and_json(tiny_codec, clip):
    r = simulate(tiny_codec, clip, num_codebooks=K, fec_codebooks=2,
                 channel=FixedPattern("..x"), perceptual=False)
    text = format_report(r)
    for word in ("sent", "lost", "late", "duplicated", "corrupted", "concealed", "FEC",
                 "payload", "RTP/UDP/IPv4", "latency", "vs original", "vs clean"):
        assert word in text
    d = json.loads(json.dumps(r.as_dict(), default=float))
    assert d["packets_lost"] == 1 and d["stats"]["frames_concealed"] == 0
    assert d["stats"]["frames_recovered_fec"] == 1 and "samples" not in d
    bits = tiny_codec.cfg.bits_per_code
    assert d["payload_kbps"] == pytest.approx(K * bits * 50 / 1000)
    assert d["rtp_udp_ipv4_kbps"] == pytest.approx(16.0)
    assert d["latency_ms"] == pytest.approx(40 + 40)


def test_simulate_validates(tiny_codec, clip):
    with pytest.raises(ValueError):
        simulate(tiny_codec, clip)  # neither kbps nor codebooks
    with pytest.raises(ValueError):
        simulate(tiny_codec, clip, num_codebooks=2, fec_codebooks=3)
    with pytest.raises(ValueError):
        simulate(tiny_codec, clip, kbps=2.75)


def test_stray_packets_far_ahead_are_rejected(tiny_codec):
    rx = Receiver(tiny_codec)
    p = Packet(0, 0, np.zeros((2, 1), int), codebook_bits=tiny_codec.cfg.bits_per_code)
    assert rx.receive(serialize_packet(p), 0.0) == "ok"
    far = Packet(1, (2**21 * 320) % 2**32, np.zeros((2, 1), int),
                 codebook_bits=tiny_codec.cfg.bits_per_code)
    assert rx.receive(serialize_packet(far), 0.01) == "out_of_window"
    assert rx.last_frame == 0 and rx.stats.packets_out_of_window == 1


def test_format_comparison(tiny_codec, clip):
    a = simulate(tiny_codec, clip, num_codebooks=K, perceptual=False)
    b = simulate(tiny_codec, clip, num_codebooks=K, channel=FixedPattern("..x"), perceptual=False)
    text = format_comparison([("lossless", a), ("10% bursty", b)])
    lines = text.splitlines()
    assert "lossless" in lines[0] and "10% bursty" in lines[0]
    assert any(line.startswith("packets lost") and "0/" in line for line in lines)
    assert len({len(line) for line in lines}) <= 2
    # The lossless column is the clean decode itself; the lossy one is measured against it.
    snr = next(line for line in lines if line.startswith("SNR vs clean")).split()
    assert snr[-2] == "same" and float(snr[-1]) < 60
