"""Channel models: what the network does to packets. Small, seeded, composable; no torch.

Every model has one method, :meth:`Channel.process`: a packet sent at ``time`` (seconds) goes in,
and what the far end receives comes out, as a list of :class:`Delivery` (arrival time, bytes):

* ``[]``  -- lost;
* one     -- delivered, maybe later (delay, jitter) or with flipped bits;
* several -- duplicated.

Models are stateful (a Gilbert-Elliott chain remembers its state, a fixed pattern counts packets)
and draw from their own ``random.Random(seed)``, so the same seed and the same packets always give
the same result. :class:`Chain` composes models left to right; :meth:`Channel.transmit` runs a
whole list of packets through and returns the deliveries in arrival order, which is how jitter
reorders packets.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "BernoulliLoss",
    "BitErrors",
    "Chain",
    "Channel",
    "Delay",
    "Delivery",
    "Duplicate",
    "FixedPattern",
    "GilbertElliott",
    "Perfect",
    "make_channel",
]


class Delivery(NamedTuple):
    """A packet as the receiver sees it: when it arrives (s) and its bytes."""

    time: float
    data: bytes


def _probability(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


class Channel:
    """Base class: a lossless, instantaneous channel (override :meth:`process`)."""

    def process(self, time: float, data: bytes) -> list[Delivery]:
        """One packet sent at ``time`` seconds -> what arrives (empty list: lost)."""
        return [Delivery(time, bytes(data))]

    def transmit(self, packets: Iterable[tuple[float, bytes]]) -> list[Delivery]:
        """Send ``(send_time, bytes)`` pairs in order; return all deliveries sorted by arrival
        (stable, so equal arrival times keep the sending order)."""
        out: list[Delivery] = []
        for time, data in packets:
            out.extend(self.process(time, data))
        return sorted(out, key=lambda d: d.time)

    def __add__(self, other: Channel) -> Chain:
        return Chain(self, other)


class Perfect(Channel):
    """Delivers every packet unchanged and at once."""

    def __repr__(self) -> str:
        return "Perfect()"


class _Loss(Channel):
    """A loss model: ``lose()`` decides each packet."""

    def lose(self) -> bool:
        raise NotImplementedError

    def process(self, time: float, data: bytes) -> list[Delivery]:
        return [] if self.lose() else [Delivery(time, bytes(data))]


class BernoulliLoss(_Loss):
    """Each packet is lost independently with probability ``loss``."""

    def __init__(self, loss: float, seed: int = 0) -> None:
        self.loss = _probability("loss", loss)
        self.rng = random.Random(seed)

    def lose(self) -> bool:
        return self.rng.random() < self.loss

    def __repr__(self) -> str:
        return f"BernoulliLoss(loss={self.loss:g})"


class GilbertElliott(_Loss):
    """Two-state Markov loss: bursts of losses.

    In the good state packets are lost with probability ``loss_good``, in the bad state with
    ``loss_bad``. Before each packet the chain moves good -> bad with probability ``p`` and
    bad -> good with probability ``r``. With the default ``loss_good = 0, loss_bad = 1`` (the
    Gilbert model) the mean loss is ``p / (p + r)`` and a burst lasts ``1 / r`` packets on
    average; :meth:`from_mean` takes those two as its knobs. The chain starts in its stationary
    distribution.
    """

    def __init__(self, p: float, r: float, loss_good: float = 0.0, loss_bad: float = 1.0,
                 seed: int = 0) -> None:
        self.p = _probability("p (good -> bad)", p)
        self.r = _probability("r (bad -> good)", r)
        self.loss_good = _probability("loss_good", loss_good)
        self.loss_bad = _probability("loss_bad", loss_bad)
        if self.p + self.r == 0.0:
            raise ValueError("p and r cannot both be 0 (the chain would never move)")
        self.rng = random.Random(seed)
        self.bad = self.rng.random() < self.stationary_bad

    @classmethod
    def from_mean(cls, loss: float, burst: float, seed: int = 0) -> GilbertElliott:
        """The Gilbert model with mean loss ``loss`` (fraction) and mean burst length ``burst``
        (packets, >= 1).

        ``r = 1 / burst`` and ``p = loss * r / (1 - loss)``; since ``p <= 1`` a mean loss of
        ``loss`` needs bursts of at least ``loss / (1 - loss)`` packets.
        """
        loss = float(loss)
        burst = float(burst)
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"mean loss must be in [0, 1), got {loss}")
        if not burst >= 1.0 or math.isinf(burst):
            raise ValueError(f"mean burst length must be a finite number >= 1 packet, got {burst}")
        r = 1.0 / burst
        p = loss * r / (1.0 - loss)
        if p > 1.0:
            raise ValueError(f"a mean loss of {loss:.0%} needs a mean burst of at least "
                             f"{loss / (1 - loss):.3g} packets, got {burst:g}")
        return cls(p, r, seed=seed)

    @property
    def stationary_bad(self) -> float:
        """Long-run fraction of packets in the bad state, ``p / (p + r)``."""
        return self.p / (self.p + self.r)

    @property
    def mean_loss(self) -> float:
        b = self.stationary_bad
        return (1.0 - b) * self.loss_good + b * self.loss_bad

    @property
    def mean_burst(self) -> float:
        """Mean number of consecutive packets spent in the bad state, ``1 / r``."""
        return math.inf if self.r == 0 else 1.0 / self.r

    def lose(self) -> bool:
        if self.bad:
            self.bad = self.rng.random() >= self.r
        else:
            self.bad = self.rng.random() < self.p
        return self.rng.random() < (self.loss_bad if self.bad else self.loss_good)

    def __repr__(self) -> str:
        return (f"GilbertElliott(p={self.p:.4g}, r={self.r:.4g}, loss_good={self.loss_good:g}, "
                f"loss_bad={self.loss_bad:g})")


class FixedPattern(_Loss):
    """Loses exactly the packets marked in ``pattern`` (by the order they are sent).

    ``pattern`` is a sequence of booleans (True = lost) or a string where ``x``/``X``/``1`` mark
    a lost packet and ``.``/``-``/``0`` a delivered one, e.g. ``"..xx.x"``. Packets past the end
    are delivered, or, with ``repeat=True``, the pattern starts over.
    """

    def __init__(self, pattern: str | Sequence[bool], repeat: bool = False) -> None:
        if isinstance(pattern, str):
            bad = set(pattern) - set("xX1.-0")
            if bad:
                raise ValueError(f"loss pattern may contain only x, 1 (lost) and ., -, 0 (kept), "
                                 f"got {''.join(sorted(bad))!r}")
            self.pattern = [ch in "xX1" for ch in pattern]
        else:
            self.pattern = [bool(v) for v in pattern]
        if repeat and not self.pattern:
            raise ValueError("a repeating pattern must not be empty")
        self.repeat = repeat
        self.index = 0

    def lose(self) -> bool:
        i = self.index
        self.index += 1
        if self.repeat:
            return self.pattern[i % len(self.pattern)]
        return i < len(self.pattern) and self.pattern[i]

    def __repr__(self) -> str:
        text = "".join("x" if v else "." for v in self.pattern)
        return f"FixedPattern({text[:40]!r}{'...' if len(text) > 40 else ''})"


class Delay(Channel):
    """Adds ``delay`` seconds plus a jitter drawn uniformly from ``[0, jitter]`` seconds.

    Jitter larger than the packet interval reorders packets (``transmit`` sorts by arrival).
    """

    def __init__(self, delay: float = 0.0, jitter: float = 0.0, seed: int = 0) -> None:
        if not delay >= 0.0 or not jitter >= 0.0 or math.isinf(delay + jitter):
            raise ValueError(f"delay and jitter must be finite and >= 0, got {delay}, {jitter}")
        self.delay = float(delay)
        self.jitter = float(jitter)
        self.rng = random.Random(seed)

    def process(self, time: float, data: bytes) -> list[Delivery]:
        extra = self.rng.uniform(0.0, self.jitter) if self.jitter else 0.0
        return [Delivery(time + self.delay + extra, bytes(data))]

    def __repr__(self) -> str:
        return f"Delay(delay={self.delay * 1000:g} ms, jitter={self.jitter * 1000:g} ms)"


class Duplicate(Channel):
    """Delivers each packet a second time with probability ``probability``, ``lag`` seconds
    later."""

    def __init__(self, probability: float, lag: float = 0.001, seed: int = 0) -> None:
        self.probability = _probability("duplication probability", probability)
        if not lag >= 0.0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.lag = float(lag)
        self.rng = random.Random(seed)

    def process(self, time: float, data: bytes) -> list[Delivery]:
        out = [Delivery(time, bytes(data))]
        if self.rng.random() < self.probability:
            out.append(Delivery(time + self.lag, bytes(data)))
        return out

    def __repr__(self) -> str:
        return f"Duplicate(probability={self.probability:g})"


class BitErrors(Channel):
    """Flips each bit independently with probability ``ber`` (bit error rate)."""

    def __init__(self, ber: float, seed: int = 0) -> None:
        self.ber = _probability("bit error rate", ber)
        self.rng = random.Random(seed)

    def process(self, time: float, data: bytes) -> list[Delivery]:
        if self.ber == 0.0 or not data:
            return [Delivery(time, bytes(data))]
        buf = bytearray(data)
        nbits = 8 * len(buf)
        if self.ber == 1.0:
            return [Delivery(time, bytes(b ^ 0xFF for b in buf))]
        # Jump from error to error with geometric gaps instead of drawing every bit.
        log_keep = math.log1p(-self.ber)
        pos = -1
        while True:
            pos += 1 + int(math.log(1.0 - self.rng.random()) / log_keep)
            if pos >= nbits:
                break
            buf[pos >> 3] ^= 0x80 >> (pos & 7)
        return [Delivery(time, bytes(buf))]

    def __repr__(self) -> str:
        return f"BitErrors(ber={self.ber:g})"


class Chain(Channel):
    """Models applied one after the other; each delivery of one stage goes through the next."""

    def __init__(self, *stages: Channel) -> None:
        self.stages: list[Channel] = []
        for s in stages:
            self.stages.extend(s.stages if isinstance(s, Chain) else [s])

    def process(self, time: float, data: bytes) -> list[Delivery]:
        current = [Delivery(time, bytes(data))]
        for stage in self.stages:
            current = [d for c in current for d in stage.process(c.time, c.data)]
        return current

    def __repr__(self) -> str:
        return " -> ".join(map(repr, self.stages)) if self.stages else "Perfect()"


def make_channel(loss: float = 0.0, burst: float = 1.0, delay: float = 0.0, jitter: float = 0.0,
                 duplicate: float = 0.0, ber: float = 0.0, seed: int = 0) -> Channel:
    """The usual composition: loss, then duplication, bit errors, delay and jitter.

    Args:
        loss: mean packet loss (fraction).
        burst: mean burst length in packets; 1 means independent (Bernoulli) loss, more uses
            the Gilbert-Elliott model.
        delay, jitter: seconds (jitter is uniform in ``[0, jitter]``).
        duplicate: probability that a packet arrives twice.
        ber: bit error rate.
        seed: each stage gets its own seed derived from this one.
    """
    stages: list[Channel] = []
    if loss > 0.0:
        if burst < 1.0:
            raise ValueError(f"mean burst length must be >= 1 packet, got {burst}")
        stages.append(BernoulliLoss(loss, seed) if burst == 1.0
                      else GilbertElliott.from_mean(loss, burst, seed))
    if duplicate > 0.0:
        stages.append(Duplicate(duplicate, seed=seed + 1))
    if ber > 0.0:
        stages.append(BitErrors(ber, seed + 2))
    if delay > 0.0 or jitter > 0.0:
        stages.append(Delay(delay, jitter, seed + 3))
    return Chain(*stages)
