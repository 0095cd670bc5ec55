"""Channel models: rates, bursts, reproducibility, validation, composition."""

from __future__ import annotations

import numpy as np
import pytest

from speechcodec.channel import (
    BernoulliLoss,
    BitErrors,
    Chain,
    Channel,
    Delay,
    Duplicate,
    FixedPattern,
    GilbertElliott,
    Perfect,
    make_channel,
)
from speechcodec.packet import Packet, PacketError, parse_packet, serialize_packet


def _send(channel: Channel, n: int, interval: float = 0.02) -> list:
    return channel.transmit((i * interval, i.to_bytes(4, "big")) for i in range(n))


def _lost_mask(model, n: int) -> np.ndarray:
    got = {int.from_bytes(d.data, "big") for d in _send(model, n)}
    return np.array([i not in got for i in range(n)])


def _bursts(mask: np.ndarray) -> list[int]:
    runs, run = [], 0
    for lost in mask:
        if lost:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    return runs + ([run] if run else [])


def test_perfect_delivers_everything_in_order():
    out = _send(Perfect(), 10)
    assert [int.from_bytes(d.data, "big") for d in out] == list(range(10))


def test_bernoulli_rate_and_seed():
    mask = _lost_mask(BernoulliLoss(0.1, seed=1), 20000)
    assert mask.mean() == pytest.approx(0.1, abs=0.01)
    assert np.mean(_bursts(mask)) < 1.3  # independent losses are mostly single
    assert np.array_equal(mask, _lost_mask(BernoulliLoss(0.1, seed=1), 20000))
    assert not np.array_equal(mask, _lost_mask(BernoulliLoss(0.1, seed=2), 20000))
    assert not _lost_mask(BernoulliLoss(0.0), 100).any()
    assert _lost_mask(BernoulliLoss(1.0), 100).all()


@pytest.mark.parametrize("loss,burst", [(0.05, 2.0), (0.1, 3.0), (0.2, 2.5)])
def test_gilbert_elliott_mean_loss_and_burst(loss, burst):
    ge = GilbertElliott.from_mean(loss, burst, seed=4)
    assert ge.mean_loss == pytest.approx(loss) and ge.mean_burst == pytest.approx(burst)
    mask = _lost_mask(ge, 60000)
    assert mask.mean() == pytest.approx(loss, rel=0.1)
    assert np.mean(_bursts(mask)) == pytest.approx(burst, rel=0.1)


def test_gilbert_elliott_validates():
    for bad in [dict(loss=1.0, burst=3), dict(loss=-0.1, burst=3), dict(loss=0.1, burst=0.5),
                dict(loss=0.9, burst=1.0), dict(loss=0.1, burst=float("inf"))]:
        with pytest.raises(ValueError):
            GilbertElliott.from_mean(**bad)
    with pytest.raises(ValueError, match="at least 9"):
        GilbertElliott.from_mean(0.9, 2)
    with pytest.raises(ValueError):
        GilbertElliott(0.0, 0.0)
    with pytest.raises(ValueError):
        GilbertElliott(1.5, 0.2)
    with pytest.raises(ValueError):
        GilbertElliott(0.1, 0.2, loss_bad=2.0)


def test_gilbert_elliott_with_partial_loss_states():
    ge = GilbertElliott(0.05, 0.2, loss_good=0.01, loss_bad=0.5, seed=0)
    expected = 0.8 * 0.01 + 0.2 * 0.5
    assert ge.mean_loss == pytest.approx(expected)
    assert _lost_mask(ge, 60000).mean() == pytest.approx(expected, rel=0.1)


def test_fixed_pattern():
    assert _lost_mask(FixedPattern("..x.xx"), 8).tolist() == [0, 0, 1, 0, 1, 1, 0, 0]
    assert _lost_mask(FixedPattern([True, False], repeat=True), 5).tolist() == [1, 0, 1, 0, 1]
    assert _lost_mask(FixedPattern("1-0X"), 4).tolist() == [1, 0, 0, 1]
    with pytest.raises(ValueError, match="pattern"):
        FixedPattern("..y")
    with pytest.raises(ValueError):
        FixedPattern("", repeat=True)


def test_delay_and_jitter_reorder():
    out = _send(Delay(0.05, 0.06, seed=3), 200)
    times = [d.time for d in out]
    assert times == sorted(times)
    order = [int.from_bytes(d.data, "big") for d in out]
    assert sorted(order) == list(range(200)) and order != list(range(200))
    delays = [d.time - 0.02 * int.from_bytes(d.data, "big") for d in out]
    assert min(delays) >= 0.05 - 1e-12 and max(delays) <= 0.11 + 1e-12
    with pytest.raises(ValueError):
        Delay(-1.0)


def test_duplicate():
    out = _send(Duplicate(0.3, seed=5), 5000)
    ids = [int.from_bytes(d.data, "big") for d in out]
    assert sorted(set(ids)) == list(range(5000))
    assert (len(ids) - 5000) / 5000 == pytest.approx(0.3, abs=0.03)
    with pytest.raises(ValueError):
        Duplicate(1.5)


def test_bit_errors_rate_and_crc():
    ber = 0.01
    be = BitErrors(ber, seed=6)
    payload = bytes(1000)
    flipped = sum(bin(b).count("1") for b in be.process(0.0, payload)[0].data)
    assert flipped / 8000 == pytest.approx(ber, rel=0.25)
    assert BitErrors(0.0).process(0.0, payload)[0].data == payload
    assert BitErrors(1.0).process(0.0, b"\x0f")[0].data == b"\xf0"
    # A damaged packet never parses: corruption becomes loss.
    data = serialize_packet(Packet(1, 0, np.arange(6).reshape(6, 1)))
    damaged = 0
    for d in BitErrors(0.02, seed=7).transmit((i * 0.02, data) for i in range(300)):
        if d.data != data:
            damaged += 1
            with pytest.raises(PacketError):
                parse_packet(d.data)
    assert damaged > 50


def test_chain_composes_in_order():
    ch = FixedPattern("x.") + Duplicate(1.0, lag=0.001) + Delay(0.1)
    assert isinstance(ch, Chain) and len(ch.stages) == 3
    out = ch.process(1.0, b"a")
    assert out == []
    out = ch.process(2.0, b"b")
    assert [d.time for d in out] == pytest.approx([2.1, 2.101]) and {d.data for d in out} == {b"b"}
    assert "FixedPattern" in repr(ch) and "Delay" in repr(ch)


def test_make_channel_is_seeded():
    def run(seed):
        return [(round(d.time, 9), d.data) for d in
                _send(make_channel(0.1, 3, delay=0.01, jitter=0.03, duplicate=0.05, ber=1e-3,
                                   seed=seed), 500)]

    assert run(1) == run(1) and run(1) != run(2)
    assert isinstance(make_channel(0.1, 1.0).stages[0], BernoulliLoss)
    assert isinstance(make_channel(0.1, 2.0).stages[0], GilbertElliott)
    assert repr(make_channel()) == "Perfect()"
    with pytest.raises(ValueError):
        make_channel(0.1, 0.5)
