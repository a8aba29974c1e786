"""Order-flow features for ``liq paper``'s modes: incremental, O(1) per trade or book reading.

Definitions (SEED-SYSTEMS.md "Paper-trading competition", TRADING-VENUES.md §6):
- OBI over the top N levels: (Σ bid qty − Σ ask qty) / (Σ bid qty + Σ ask qty), in [−1, 1].
- OBI velocity: this OBI reading minus the previous one.
- Signed volume: Σ over the last N trades of +qty (taker bought) or −qty (taker sold).
- Microprice: (bid·ask_qty + ask·bid_qty) / (bid_qty + ask_qty); the mid when both sizes are 0.
  Microprice pressure (the seed never filled it in): (microprice − mid) / half-spread, in [−1, 1].
- VPIN: trades fill dollar-volume buckets of a fixed size (a trade larger than what a bucket
  lacks is split across buckets); each full bucket's imbalance is |buy − sell| / (buy + sell);
  VPIN is the mean over the last N full buckets. Toxicity: < 0.3 SAFE, < 0.5 CAUTION,
  < 0.7 DANGER, else CRITICAL.
- Spread in bps: (ask − bid) / mid × 10⁴. Top-of-book depth: best bid qty + best ask qty (base).
- ATR ratio: the mean true range of the last N time bars (built from trades) over the last price.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

Level = tuple[float, float]
_qty = itemgetter(1)


def obi(bids: Sequence[Level], asks: Sequence[Level], depth: int = 20) -> float:
    bid = sum(map(_qty, bids if len(bids) <= depth else bids[:depth]))
    ask = sum(map(_qty, asks if len(asks) <= depth else asks[:depth]))
    total = bid + ask
    return (bid - ask) / total if total > 0 else 0.0


def microprice(bid: float, bid_qty: float, ask: float, ask_qty: float) -> float:
    total = bid_qty + ask_qty
    if total <= 0:
        return (bid + ask) / 2
    return (bid * ask_qty + ask * bid_qty) / total


def microprice_pressure(bid: float, bid_qty: float, ask: float, ask_qty: float) -> float:
    return _pressure(microprice(bid, bid_qty, ask, ask_qty), bid, ask)


def _pressure(micro: float, bid: float, ask: float) -> float:
    half = (ask - bid) / 2
    if half <= 0:
        return 0.0
    value = (micro - (bid + ask) / 2) / half
    return max(-1.0, min(1.0, value))


def spread_bps(bid: float, ask: float) -> float:
    mid = (bid + ask) / 2
    return (ask - bid) / mid * 10_000 if mid > 0 else 0.0


def toxicity(vpin: float | None) -> str:
    if vpin is None:
        return "UNKNOWN"
    if vpin < 0.3:
        return "SAFE"
    if vpin < 0.5:
        return "CAUTION"
    if vpin < 0.7:
        return "DANGER"
    return "CRITICAL"


class ObiTracker:
    """OBI readings and their velocity (change since the previous reading)."""

    __slots__ = ("depth", "readings", "value", "velocity")

    def __init__(self, depth: int = 20) -> None:
        self.depth = depth
        self.value: float | None = None
        self.velocity = 0.0
        self.readings = 0

    def update(self, bids: Sequence[Level], asks: Sequence[Level]) -> float:
        value = obi(bids, asks, self.depth)
        self.velocity = 0.0 if self.value is None else value - self.value
        self.value = value
        self.readings += 1
        return value


class SignedVolume:
    """Σ of ±qty over the last ``window`` trades (ring buffer and running sum)."""

    __slots__ = ("_q", "total", "window")

    def __init__(self, window: int = 100) -> None:
        self.window = window
        self._q: deque[float] = deque()
        self.total = 0.0

    def add(self, qty: float, taker_bought: bool) -> float:
        signed = qty if taker_bought else -qty
        q = self._q
        q.append(signed)
        total = self.total + signed
        if len(q) > self.window:
            total -= q.popleft()
        if not q:
            total = 0.0
        self.total = total
        return total

    def exact(self) -> float:
        """The sum recomputed (the running one drifts by float rounding only)."""
        return sum(self._q)


class Vpin:
    """Volume-synchronised probability of informed trading over dollar buckets."""

    __slots__ = (
        "_buy",
        "_imbalances",
        "_sell",
        "_sum",
        "_value",
        "bucket_usd",
        "buckets",
        "window",
    )

    def __init__(self, bucket_usd: float = 50_000.0, window: int = 50) -> None:
        if bucket_usd <= 0:
            raise ValueError("bucket size must be positive")
        self.bucket_usd = bucket_usd
        self.window = window
        self._value: float | None = None  # mean of the window, updated as each bucket closes
        self._buy = 0.0
        self._sell = 0.0
        self._imbalances: deque[float] = deque()
        self._sum = 0.0
        self.buckets = 0

    def add(self, price: float, qty: float, taker_bought: bool) -> float | None:
        dollars = price * qty
        buy, sell, bucket = self._buy, self._sell, self.bucket_usd
        full = bucket * (1 - 1e-12)  # a bucket this full is closed (float slack)
        while dollars > 0:
            room = bucket - buy - sell
            take = dollars if dollars < room else room  # min(room, dollars)
            if taker_bought:
                buy += take
            else:
                sell += take
            dollars -= take
            if buy + sell >= full:
                self._buy, self._sell = buy, sell
                self._close_bucket()
                buy = sell = 0.0
        self._buy, self._sell = buy, sell
        return self._value

    def _close_bucket(self) -> None:
        total = self._buy + self._sell
        imbalance = abs(self._buy - self._sell) / total if total > 0 else 0.0
        self._imbalances.append(imbalance)
        self._sum += imbalance
        if len(self._imbalances) > self.window:
            self._sum -= self._imbalances.popleft()
        self._buy = self._sell = 0.0
        self.buckets += 1
        n = len(self._imbalances)
        self._value = self._sum / n if n else None

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def level(self) -> str:
        return toxicity(self.value)


class AtrRatio:
    """Mean true range of the last ``window`` bars of ``bar_ms`` over the last price."""

    __slots__ = (
        "_bar_start",
        "_c",
        "_h",
        "_l",
        "_mean",
        "_o",
        "_prev_close",
        "_ranges",
        "_sum",
        "bar_ms",
        "last",
        "window",
    )

    def __init__(self, bar_ms: int = 60_000, window: int = 14) -> None:
        self.bar_ms = bar_ms
        self.window = window
        self._bar_start: int | None = None
        self._o = self._h = self._l = self._c = 0.0
        self._prev_close: float | None = None
        self._ranges: deque[float] = deque()
        self._sum = 0.0
        self._mean: float | None = None  # mean true range of the window, updated per bar
        self.last: float | None = None

    def add(self, ts: int, price: float) -> float | None:
        start = ts - ts % self.bar_ms
        if start != self._bar_start:  # the first trade, or a new bar
            if self._bar_start is not None:
                self._close_bar()
            self._bar_start = start
            self._o = self._h = self._l = self._c = price
        else:
            if price > self._h:  # max(high, price)
                self._h = price
            if price < self._l:
                self._l = price
            self._c = price
        self.last = price
        mean = self._mean
        return None if mean is None or not price else mean / price

    def _close_bar(self) -> None:
        tr = self._h - self._l
        if self._prev_close is not None:
            tr = max(tr, abs(self._h - self._prev_close), abs(self._l - self._prev_close))
        self._prev_close = self._c
        self._ranges.append(tr)
        self._sum += tr
        if len(self._ranges) > self.window:
            self._sum -= self._ranges.popleft()
        n = len(self._ranges)
        self._mean = self._sum / n if n else None

    @property
    def value(self) -> float | None:
        if self._mean is None or not self.last:
            return None
        return self._mean / self.last


@dataclass(slots=True)
class FeatureSnapshot:
    """Every feature at one instant: what a mode decides on and what a trade records."""

    ts: int = 0
    obi: float | None = None
    obi_velocity: float = 0.0
    signed_volume: float = 0.0
    microprice: float | None = None
    micro_pressure: float = 0.0
    vpin: float | None = None
    toxicity: str = "UNKNOWN"
    spread_bps: float | None = None
    top_depth: float | None = None
    atr_ratio: float | None = None
    bid: float | None = None
    ask: float | None = None
    last_price: float | None = None

    @property
    def mid(self) -> float | None:
        if self.bid is None or self.ask is None:
            return self.last_price
        return (self.bid + self.ask) / 2


class OrderFlow:
    """All features for one symbol, fed by book readings and trades."""

    def __init__(
        self,
        *,
        obi_depth: int = 20,
        volume_window: int = 100,
        vpin_bucket_usd: float = 50_000.0,
        vpin_window: int = 50,
        atr_bar_ms: int = 60_000,
        atr_window: int = 14,
    ) -> None:
        self.obi = ObiTracker(obi_depth)
        self.volume = SignedVolume(volume_window)
        self.vpin = Vpin(vpin_bucket_usd, vpin_window)
        self.atr = AtrRatio(atr_bar_ms, atr_window)
        self.snapshot = FeatureSnapshot()

    def on_book(self, ts: int, bids: Sequence[Level], asks: Sequence[Level]) -> FeatureSnapshot:
        s = self.snapshot
        s.ts = ts
        s.obi = self.obi.update(bids, asks)
        s.obi_velocity = self.obi.velocity
        if bids and asks:
            (b, bq), (a, aq) = bids[0], asks[0]
            s.bid, s.ask = b, a
            s.microprice = micro = microprice(b, bq, a, aq)
            s.micro_pressure = _pressure(micro, b, a)
            s.spread_bps = spread_bps(b, a)
            s.top_depth = bq + aq
        return s

    def on_trade(self, ts: int, price: float, qty: float, is_buyer_maker: bool) -> FeatureSnapshot:
        s = self.snapshot
        s.ts = ts
        bought = not is_buyer_maker
        # SignedVolume.add, inlined (this runs for every trade of a backtest)
        volume = self.volume
        q = volume._q
        signed = qty if bought else -qty
        q.append(signed)
        total = volume.total + signed
        if len(q) > volume.window:
            total -= q.popleft()
        if not q:
            total = 0.0
        volume.total = s.signed_volume = total
        vpin = self.vpin.add(price, qty, bought)
        if vpin != s.vpin:  # VPIN moves only when a bucket closes
            s.vpin = vpin
            s.toxicity = toxicity(vpin)
        atr = self.atr
        if ts - ts % atr.bar_ms == atr._bar_start:  # AtrRatio.add inside the current bar, inlined
            if price > atr._h:
                atr._h = price
            if price < atr._l:
                atr._l = price
            atr._c = atr.last = price
            mean = atr._mean
            s.atr_ratio = None if mean is None or not price else mean / price
        else:
            s.atr_ratio = atr.add(ts, price)
        s.last_price = price
        return s
