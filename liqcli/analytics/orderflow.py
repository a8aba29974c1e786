"""Order-flow features for ``liq paper``'s modes: incremental, O(1) per trade or book reading;
``feature_columns`` computes the same values for a whole tape at once (numpy), bit for bit.

Definitions (SEED-SYSTEMS.md "Paper-trading competition", TRADING-VENUES.md §6):
- OBI over the top N levels: (Σ bid qty − Σ ask qty) / (Σ bid qty + Σ ask qty), in [−1, 1].
- OBI velocity: this OBI reading minus the previous one.
- Signed volume: Σ over the last N trades of +qty (taker bought) or −qty (taker sold), taken as
  C_i − C_{i−N} with C the running Σ of ±qty (a difference of running sums: reproducible).
- Microprice: (bid·ask_qty + ask·bid_qty) / (bid_qty + ask_qty); the mid when both sizes are 0.
  Microprice pressure (the seed never filled it in): (microprice − mid) / half-spread, in [−1, 1].
- VPIN: trades laid end to end on a cumulative dollar axis (D = running Σ price·qty, B = running
  Σ buy dollars) fill buckets [k·V, (k+1)·V); bucket k closes at the first trade with
  D ≥ (k+1)·V (a large trade closes several); its buy dollars are B at its upper boundary
  (interpolated inside a buy trade) minus B at its lower one, its sell V − buy, its imbalance
  min(1, |buy − sell| / V); VPIN is the mean over the last N full buckets, (S_k − S_{k−N}) / n
  with S the running Σ of imbalances. Toxicity: < 0.3 SAFE, < 0.5 CAUTION, < 0.7 DANGER,
  else CRITICAL.
- Spread in bps: (ask − bid) / mid × 10⁴. Top-of-book depth: best bid qty + best ask qty (base).
- ATR ratio: the mean true range of the last N time bars (built from trades) over the last price.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

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
    """Σ of ±qty over the last ``window`` trades: C_i − C_{i−window}, C the running Σ of ±qty
    (C_{j<0} = 0). A difference of running sums, not ``total += s; total -= popleft()``, so the
    vectorised path (``feature_columns``: np.cumsum, sequential) gives the same floats."""

    __slots__ = ("_cums", "cum", "total", "window")

    def __init__(self, window: int = 100) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 trade")
        self.window = window
        self._cums: deque[float] = deque(maxlen=window)  # C_{i−window+1} .. C_i
        self.cum = 0.0
        self.total = 0.0

    def add(self, qty: float, taker_bought: bool) -> float:
        signed = qty if taker_bought else -qty
        cums = self._cums
        self.cum = cum = self.cum + signed
        total = cum - cums[0] if len(cums) == self.window else cum
        cums.append(cum)
        self.total = total
        return total


class Vpin:
    """Volume-synchronised probability of informed trading over dollar buckets.

    Trades lie end to end on a dollar axis: D = running Σ price·qty, B = running Σ buy dollars.
    Bucket k is [k·V, (k+1)·V) (boundary x = (k+1)*V); it closes at the first trade j with
    D_j ≥ x; the buy dollars up to x are B_{j−1} + (x − D_{j−1}) if j is a buy, else B_{j−1};
    the bucket's buy is their difference from the previous boundary's, its sell V − buy, its
    imbalance min(1, |buy − sell| / V). VPIN = (S_k − S_{k−window}) / n over the n ≤ window
    last buckets, S the running Σ of imbalances. Every step is a float operation that
    ``feature_columns`` does in the same order with numpy."""

    __slots__ = (
        "_b",
        "_bx",
        "_cum",
        "_cums",
        "_d",
        "_imbalances",
        "_next",
        "_sum",
        "_value",
        "bucket_usd",
        "buckets",
        "window",
    )

    def __init__(self, bucket_usd: float = 50_000.0, window: int = 50) -> None:
        if bucket_usd <= 0:
            raise ValueError("bucket size must be positive")
        if window < 1:
            raise ValueError("window must be at least 1 bucket")
        self.bucket_usd = bucket_usd
        self.window = window
        self._value: float | None = None  # mean of the window, updated as each bucket closes
        self._d = 0.0  # D: dollars of every trade so far
        self._b = 0.0  # B: buy dollars so far
        self._bx = 0.0  # buy dollars up to the last closed bucket's boundary
        self._next = bucket_usd  # the open bucket's boundary, (buckets + 1) * V
        self._imbalances: deque[float] = deque(maxlen=window)
        self._cum = 0.0  # S: Σ of every bucket's imbalance
        self._cums: deque[float] = deque(maxlen=window)  # S after each of the window's buckets
        self._sum = 0.0  # Σ of the window's imbalances, S_k − S_{k−window}
        self.buckets = 0

    def add(self, price: float, qty: float, taker_bought: bool) -> float | None:
        dollars = price * qty
        d0, b0 = self._d, self._b
        self._d = d = d0 + dollars
        if taker_bought:
            self._b = b0 + dollars
        if d >= self._next:
            self._close_buckets(d, d0, b0, taker_bought)
        return self._value

    def _close_buckets(self, d: float, d0: float, b0: float, taker_bought: bool) -> None:
        bucket, x = self.bucket_usd, self._next
        imbalances, cums = self._imbalances, self._cums
        while d >= x:
            bx = b0 + (x - d0) if taker_bought else b0
            buy = bx - self._bx
            self._bx = bx
            imbalance = abs(buy - (bucket - buy)) / bucket
            if imbalance > 1.0:  # rounding of the axis differences
                imbalance = 1.0
            imbalances.append(imbalance)
            self._cum = cum = self._cum + imbalance
            self._sum = cum - cums[0] if len(cums) == self.window else cum
            cums.append(cum)
            self.buckets += 1
            x = (self.buckets + 1) * bucket
        self._next = x
        self._value = self._sum / len(imbalances)

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


# FeatureSnapshot's float fields: the columns of ``feature_columns`` (NaN for None)
FLOAT_FIELDS = (
    "obi",
    "obi_velocity",
    "signed_volume",
    "microprice",
    "micro_pressure",
    "vpin",
    "spread_bps",
    "top_depth",
    "atr_ratio",
    "bid",
    "ask",
    "last_price",
)


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
        signed = qty if bought else -qty
        cums = volume._cums
        volume.cum = cum = volume.cum + signed
        total = cum - cums[0] if len(cums) == volume.window else cum
        cums.append(cum)
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


def _running_sum(values: np.ndarray) -> np.ndarray:
    """C_i = 0.0 + v_0 + … + v_i, added one by one as the incremental classes do (np.cumsum is
    sequential; the first 0.0 + v_0 only matters for −0.0)."""
    out = np.cumsum(values)
    if out.size:
        out[0] = 0.0 + values[0]
    return out


def _window_sum(cum: np.ndarray, window: int) -> np.ndarray:
    """C_i − C_{i−window} (C_{j<0} = 0: then C_i itself, as the incremental classes keep it)."""
    out = cum.copy()
    out[window:] -= cum[:-window]
    return out


def _carry(values: np.ndarray, count: np.ndarray, before: float) -> np.ndarray:
    """Row i gets values[count[i] − 1] (the latest reading at or before it), ``before`` if none."""
    return np.concatenate(([before], values))[count]


def _vpin_changes(price, qty, bought, bucket: float, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The trades at which VPIN changes (a bucket closes) and its value after each of them:
    ``Vpin.add``'s operations."""
    if bucket <= 0:
        raise ValueError("bucket size must be positive")
    if window < 1:
        raise ValueError("window must be at least 1 bucket")
    dollars = price * qty
    d = _running_sum(dollars)
    b = _running_sum(np.where(bought, dollars, 0.0))
    m = d.size
    if not m or not d[-1] >= bucket:
        return np.empty(0, np.int64), np.empty(0)
    boundaries = np.arange(1, int(d[-1] / bucket) + 3, dtype=np.float64) * bucket
    boundaries = boundaries[boundaries <= d[-1]]  # (k + 1) * V, every closed bucket's
    j = np.searchsorted(d, boundaries, side="left")  # the trade each bucket closes at
    d0 = np.where(j > 0, d[j - 1], 0.0)
    b0 = np.where(j > 0, b[j - 1], 0.0)
    bx = np.where(bought[j], b0 + (boundaries - d0), b0)
    buy = bx - np.concatenate(([0.0], bx[:-1]))
    imbalance = np.minimum(np.abs(buy - (bucket - buy)) / bucket, 1.0)
    k = imbalance.size
    value = _window_sum(_running_sum(imbalance), window) / np.minimum(
        np.arange(1, k + 1), window
    ).astype(np.float64)
    last = np.flatnonzero(np.append(j[1:] != j[:-1], True))  # a trade's last bucket
    return j[last], value[last]


def _atr_per_trade(ts, price, bar_ms: int, window: int) -> np.ndarray:
    """ATR ratio after each trade (NaN when None): ``AtrRatio``'s bar recurrence."""
    m = price.size
    if not m:
        return np.empty(0)
    start = ts - ts % bar_ms
    new = np.empty(m, bool)
    new[0] = True
    np.not_equal(start[1:], start[:-1], out=new[1:])
    first = np.flatnonzero(new)
    high = np.maximum.reduceat(price, first)
    low = np.minimum.reduceat(price, first)
    close = price[np.append(first[1:], m) - 1]
    # closed bars: all but the last; true range as AtrRatio._close_bar takes it
    h, lo = high[:-1], low[:-1]
    tr = h - lo
    if tr.size > 1:
        prev = close[:-2]
        tr[1:] = np.maximum(np.maximum(tr[1:], np.abs(h[1:] - prev)), np.abs(lo[1:] - prev))
    means = np.full(tr.size + 1, np.nan)  # means[g]: after g bars closed
    ranges: deque[float] = deque()
    total = 0.0
    for g, r in enumerate(tr.tolist(), 1):  # few bars: the recurrence as AtrRatio runs it
        ranges.append(r)
        total += r
        if len(ranges) > window:
            total -= ranges.popleft()
        if ranges:
            means[g] = total / len(ranges)
    mean = means[np.cumsum(new) - 1]
    out = np.full(m, np.nan)
    np.divide(mean, price, out=out, where=price != 0)
    return out


def feature_columns(
    ts: np.ndarray,
    kind: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    d: np.ndarray,
    *,
    trade_kind: int,
    top_kind: int,
    obi_depth: int = 20,
    volume_window: int = 100,
    vpin_bucket_usd: float = 50_000.0,
    vpin_window: int = 50,
    atr_bar_ms: int = 60_000,
    atr_window: int = 14,
) -> dict[str, np.ndarray]:
    """Every ``FeatureSnapshot`` field right after each row of a merged tape, at once.

    Rows sorted by time: ``kind == trade_kind`` (a price, b qty, c is_buyer_maker 1.0/0.0) is
    ``OrderFlow.on_trade``; ``kind == top_kind`` (a bid, b bid_qty, c ask, d ask_qty) is
    ``OrderFlow.on_book`` with a side present when its qty > 0; other rows change nothing.
    Float64 columns (NaN where the field is None) equal, bit for bit, an ``OrderFlow`` fed row
    by row: the same float operations in the same order (running sums are np.cumsum,
    sequential). ``ts`` (int64) is the snapshot's, 0 before any trade or top. Trade prices and
    quantities are taken non-negative (the dollar axis is searched as sorted)."""
    ts = np.asarray(ts, dtype=np.int64)
    kind = np.asarray(kind)
    a, b, c, d = (np.asarray(x, dtype=np.float64) for x in (a, b, c, d))
    if volume_window < 1:
        raise ValueError("window must be at least 1 trade")
    is_trade = kind == trade_kind
    is_top = kind == top_kind
    out: dict[str, np.ndarray] = {}
    event = is_trade | is_top
    out["ts"] = snap_ts = ts.copy()
    idle = np.flatnonzero(~event)  # few rows (funding, ...): the previous event's ts, or 0
    if idle.size:
        events = np.flatnonzero(event)
        before = np.searchsorted(events, idle) - 1
        seen = np.concatenate(([0], ts[events]))  # [0] for rows before any event
        snap_ts[idle] = seen[before + 1]

    # trades
    trade = np.flatnonzero(is_trade)
    trades = np.cumsum(is_trade)
    price, qty, t_ts = a[trade], b[trade], ts[trade]
    bought = c[trade] == 0.0  # not bool(is_buyer_maker)
    signed = np.where(bought, qty, -qty)
    volume = _window_sum(_running_sum(signed), volume_window)
    vpin_at, vpin = _vpin_changes(price, qty, bought, vpin_bucket_usd, vpin_window)
    atr = _atr_per_trade(t_ts, price, atr_bar_ms, atr_window)

    # book tops: OBI of one level a side (an empty side sums to 0)
    top = np.flatnonzero(is_top)
    tops = np.cumsum(is_top)
    bid, bid_qty, ask, ask_qty = a[top], b[top], c[top], d[top]
    has_bid, has_ask = bid_qty > 0, ask_qty > 0
    if obi_depth < 1:
        has_bid = has_ask = np.zeros(top.size, bool)
    bq = np.where(has_bid, bid_qty, 0.0)
    aq = np.where(has_ask, ask_qty, 0.0)
    total = bq + aq
    with np.errstate(divide="ignore", invalid="ignore"):
        book_obi = np.where(total > 0, (bq - aq) / total, 0.0)
    velocity = np.zeros(top.size)
    np.subtract(book_obi[1:], book_obi[:-1], out=velocity[1:])

    # both sides present: the top of book itself
    full = (bid_qty > 0) & (ask_qty > 0)
    fb, fbq, fa, faq = bid[full], bid_qty[full], ask[full], ask_qty[full]
    with np.errstate(divide="ignore", invalid="ignore"):
        micro = (fb * faq + fa * fbq) / (fbq + faq)
        half = (fa - fb) / 2
        value = (micro - (fb + fa) / 2) / half
        value = np.where(value < 1.0, value, 1.0)  # min(1.0, value)
        value = np.where(value > -1.0, value, -1.0)  # max(-1.0, ...)
        pressure = np.where(half <= 0, 0.0, value)
        mid = (fb + fa) / 2
        spread = np.where(mid > 0, (fa - fb) / mid * 10_000, 0.0)
    full_row = np.zeros(ts.size, bool)
    full_row[top[full]] = True
    fulls = np.cumsum(full_row)

    out["obi"] = _carry(book_obi, tops, np.nan)
    out["obi_velocity"] = _carry(velocity, tops, 0.0)
    out["signed_volume"] = _carry(volume, trades, 0.0)
    out["microprice"] = _carry(micro, fulls, np.nan)
    out["micro_pressure"] = _carry(pressure, fulls, 0.0)
    # VPIN changes at few trades: each value repeated until the next change
    changes = np.concatenate(([0], trade[vpin_at], [ts.size]))
    out["vpin"] = np.repeat(np.concatenate(([np.nan], vpin)), np.diff(changes))
    out["spread_bps"] = _carry(spread, fulls, np.nan)
    out["top_depth"] = _carry(fbq + faq, fulls, np.nan)
    out["atr_ratio"] = _carry(atr, trades, np.nan)
    out["bid"] = _carry(fb, fulls, np.nan)
    out["ask"] = _carry(fa, fulls, np.nan)
    out["last_price"] = _carry(price, trades, np.nan)
    return out
