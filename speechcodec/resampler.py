"""Band-limited sample-rate conversion that runs block by block with state (numpy only).

A :class:`Resampler` takes a signal in blocks of any size and gives the same output, block
boundaries or not, as converting the whole signal at once (the whole-signal function,
``speechcodec.audio.resample``, is this class fed one block). Memory is bounded by the block
size and the filter, so an hour of audio converts in a few megabytes.

The filter is a Kaiser-windowed sinc. Output sample ``n`` sits at input time
``t = n * from_rate / to_rate`` (sample 0 on sample 0), samples before the start and after the
end of the input count as zero, and the output has ``ceil(N * to_rate / from_rate)`` samples:

    y[n] = sum_k x[k] h(t - k),   h(u) = 2 fc sinc(2 fc u) w(u / half_width)

with the cut-off ``fc`` just below the lower of the two Nyquist frequencies and the weights of
each phase normalised to sum to 1 (so a constant stays exactly constant). For the usual rate
pairs the weights of every phase are computed once (a polyphase bank); for rate pairs with very
many phases (e.g. 44101 -> 16000 Hz) they are interpolated from a finely sampled kernel table.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["MAX_RATE", "MIN_RATE", "Resampler"]

#: Rates the codec reads and restores, in Hz (the converter itself accepts 1 .. 2**31 - 1).
MIN_RATE = 1000
MAX_RATE = 768_000

ZERO_CROSSINGS = 16  # per side, at the lower of the two rates
ROLLOFF = 0.945  # cut-off as a fraction of the lower Nyquist frequency
KAISER_BETA = 8.6
_MAX_BANK = 1 << 21  # coefficients (8 MB as float32) before falling back to the table
_TABLE_STEPS = 512  # table points per input sample in the fallback
_CHUNK_TAPS = 1 << 20  # outputs x taps evaluated per vectorised step (4 MB as float32)


def _kernel(u: np.ndarray, fc: float, half_width: float) -> np.ndarray:
    """The windowed-sinc weight at distance ``u`` (in input samples) from an output sample."""
    window = np.zeros_like(u)
    inside = np.abs(u) < half_width
    r = u[inside] / half_width
    window[inside] = np.i0(KAISER_BETA * np.sqrt(1.0 - r * r)) / np.i0(KAISER_BETA)
    return 2.0 * fc * np.sinc(2.0 * fc * u) * window


class Resampler:
    """Stateful sample-rate converter for one mono signal.

    ``push(block)`` returns the output samples that are complete so far; ``flush()`` ends the
    signal and returns the rest. The concatenated outputs equal ``resample`` of the whole
    signal, to float32 rounding, whatever the block sizes.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        for name, rate in (("from_rate", from_rate), ("to_rate", to_rate)):
            if isinstance(rate, bool) or int(rate) != rate or not 1 <= rate < 2**31:
                raise ValueError(f"{name} must be a positive integer number of Hz, got {rate!r}")
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        g = math.gcd(self.from_rate, self.to_rate)
        self.up, self.down = self.to_rate // g, self.from_rate // g
        self.identity = self.up == self.down
        self.fc = 0.5 * ROLLOFF * min(1.0, self.up / self.down)  # cycles per input sample
        self.half_width = ZERO_CROSSINGS / (2.0 * self.fc)  # input samples
        self.reach = math.ceil(self.half_width)  # taps k = floor(t) - reach + 1 .. floor(t) + reach
        self.taps = 2 * self.reach
        self._offsets = np.arange(1 - self.reach, self.reach + 1, dtype=np.int64)
        self._bank: np.ndarray | None = None
        self._table: np.ndarray | None = None
        if not self.identity:
            if self.up * self.taps <= _MAX_BANK:
                phases = (np.arange(self.up, dtype=np.float64) * self.down % self.up) / self.up
                self._bank = self._weights(phases)
            else:
                steps = np.arange(-(self.reach + 1) * _TABLE_STEPS,
                                  (self.reach + 1) * _TABLE_STEPS + 1) / _TABLE_STEPS
                self._table = _kernel(steps, self.fc, self.half_width)
        # Input kept from absolute index `_start` on; indices below 0 are zeros.
        self._buf = np.zeros(self.reach, dtype=np.float32)
        self._start = -self.reach
        self._in = 0  # input samples pushed
        self._out = 0  # output samples produced
        self._done = False

    def _weights(self, phases: np.ndarray) -> np.ndarray:
        """Normalised weights ``[len(phases), taps]`` for outputs at fractional offsets."""
        u = phases[:, None] - self._offsets[None, :].astype(np.float64)
        if self._table is not None:
            pos = (u + self.reach + 1) * _TABLE_STEPS
            i = np.floor(pos).astype(np.int64)
            frac = pos - i
            w = self._table[i] * (1.0 - frac) + self._table[i + 1] * frac
        else:
            w = _kernel(u, self.fc, self.half_width)
        w /= w.sum(axis=1, keepdims=True)
        return w.astype(np.float32)

    @property
    def num_out(self) -> int:
        """Output samples produced so far."""
        return self._out

    def output_length(self, num_in: int) -> int:
        """Output length for ``num_in`` input samples: ``ceil(num_in * to_rate / from_rate)``."""
        return -(-int(num_in) * self.up // self.down)

    def _floor_time(self, n: np.ndarray) -> np.ndarray:
        """floor(n * down / up) without overflow."""
        q, r = np.divmod(n, self.up)
        return q * self.down + (r * self.down) // self.up

    def _compute(self, n0: int, n1: int) -> np.ndarray:
        out = np.empty(n1 - n0, dtype=np.float32)
        rows = sliding_window_view(self._buf, self.taps)  # rows[i] = buf[i : i + taps]
        step = max(1, _CHUNK_TAPS // self.taps)
        for a in range(n0, n1, step):
            n = np.arange(a, min(n1, a + step), dtype=np.int64)
            base = self._floor_time(n)
            window = rows[base - (self._start - 1 + self.reach)]
            if self._bank is not None:
                w = self._bank[n % self.up]
            else:
                w = self._weights((n % self.up * self.down % self.up) / self.up)
            out[a - n0:a - n0 + n.size] = np.einsum("ij,ij->i", window, w)
        return out

    def _run(self, limit: int) -> np.ndarray:
        """Produce outputs up to index ``limit`` (exclusive) and drop input no longer needed."""
        if limit <= self._out:
            return np.zeros(0, dtype=np.float32)
        y = self._compute(self._out, limit)
        self._out = limit
        keep_from = int(self._floor_time(np.array([limit]))[0]) - self.reach + 1
        if keep_from > self._start:
            self._buf = self._buf[keep_from - self._start:]
            self._start = keep_from
        return y

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add input samples; returns the output samples that are now complete."""
        if self._done:
            raise RuntimeError("push() after flush()")
        x = np.asarray(block, dtype=np.float32).reshape(-1)
        self._in += x.size
        if self.identity:
            self._out += x.size
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        # Output n is complete once input floor(n * down / up) + reach has arrived.
        last_in = self._in - 1 - self.reach
        limit = 0 if last_in < 0 else (last_in * self.up + self.up - 1) // self.down + 1
        return self._run(min(limit, self.output_length(self._in)))

    def flush(self) -> np.ndarray:
        """End of input (followed by zeros): returns the remaining output samples."""
        if self._done:
            return np.zeros(0, dtype=np.float32)
        self._done = True
        if self.identity:
            return np.zeros(0, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self.reach + 1, dtype=np.float32)])
        return self._run(self.output_length(self._in))
