"""Where a strategy can act, found for a whole stored tape at once.

A backtest over a day of trades feeds millions of events, and an order-flow mode acts on very
few of them: it opens where the signal clears its threshold and closes where an exit condition
holds. The features of every event come from ``orderflow.feature_columns`` (numpy, bit for bit
the incremental ``OrderFlow``); from them a strategy names the next event at which it could do
anything (``next_wake``), and the driver steps the real Engine, strategies and brokers only at
those events, bringing the market state up to date before each (``backtest_flow``). The gates
err on waking: a woken strategy decides with its ordinary code, so a gate that wakes it for
nothing costs time, never a different decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from liqcli.trading.signal import score_columns

# The gates' scores (numpy's tanh) may differ from the strategy's (math.tanh) in the last bit:
# a threshold is lowered by this much so a score just above it always wakes the strategy.
SLACK = 1e-9


def next_true(mask: np.ndarray) -> np.ndarray:
    """``out[i]``: the first index ≥ i where ``mask`` holds, else ``len(mask)``; one more entry
    (``out[len(mask)] == len(mask)``) so any start in 0..n can be looked up."""
    n = mask.size
    idx = np.where(mask, np.arange(n, dtype=np.int64), n)
    out = np.empty(n + 1, dtype=np.int64)
    out[n] = n
    if n:
        out[:n] = np.minimum.accumulate(idx[::-1])[::-1]
    return out


def first_from(start: int, end: int, test, chunk: int = 4096) -> int:
    """The first index in [start, end) where ``test(lo, hi)`` (a boolean array for the rows
    lo..hi) holds, else ``end``; scanned in growing chunks, since the answer is usually near."""
    lo = start
    while lo < end:
        hi = min(end, lo + chunk)
        hits = np.flatnonzero(test(lo, hi))
        if hits.size:
            return lo + int(hits[0])
        lo, chunk = hi, chunk * 2
    return end


@dataclass
class Columns:
    """One tape's feature columns (``orderflow.feature_columns``: NaN where a field is None)
    and what the gates derive from them once: the mid the modes mark to, VPIN with None as 0,
    and the signal's long and short scores."""

    ts: np.ndarray
    features: dict[str, np.ndarray]
    mid: np.ndarray = field(init=False)
    vpin: np.ndarray = field(init=False)
    long: np.ndarray = field(init=False)
    short: np.ndarray = field(init=False)
    _next: dict[str, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        f = self.features
        bid, ask, last = f["bid"], f["ask"], f["last_price"]
        book = ~(np.isnan(bid) | np.isnan(ask))
        self.mid = np.where(book, (bid + ask) / 2, last)
        self.vpin = np.nan_to_num(f["vpin"], nan=0.0)
        self.long, self.short = score_columns(
            np.nan_to_num(f["obi"], nan=0.0),
            f["obi_velocity"],
            f["signed_volume"],
            f["micro_pressure"],
        )

    @property
    def size(self) -> int:
        return self.ts.size

    def next_where(self, name: str, mask_of) -> np.ndarray:
        """``next_true`` of a mask computed once per tape and kept under ``name``."""
        out = self._next.get(name)
        if out is None:
            out = self._next[name] = next_true(mask_of(self))
        return out
