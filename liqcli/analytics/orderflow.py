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


def _continued_sum(start: float, values: np.ndarray) -> np.ndarray:
    """start + v_0, (start + v_0) + v_1, …: a running sum carried on from ``start``, added one
    by one as the incremental classes do (np.cumsum is sequential; from 0.0 the first element
    is 0.0 + v_0, which only matters for −0.0)."""
    return np.cumsum(np.concatenate(([start], values)))[1:]


def _window_sum(cum: np.ndarray, window: int, tail: deque[float] | None = None) -> np.ndarray:
    """C_i − C_{i−window} (C_{j<0} = 0: then C_i itself, as the incremental classes keep it),
    where ``tail`` holds the latest min(window, seen) values of C before ``cum``."""
    before = len(tail) if tail else 0
    if before:
        cum = np.concatenate((np.fromiter(tail, np.float64, before), cum))
    out = cum.copy()
    out[window:] -= cum[:-window]
    return out[before:]


def _carry(values: np.ndarray, at: np.ndarray, n: int, before: float) -> np.ndarray:
    """Row i (of n) gets the latest of ``values`` (each read at row ``at[k]``, ascending) at or
    before it, ``before`` if none: each value repeated until the next one's row."""
    spans = np.diff(at, prepend=0, append=n)
    return np.repeat(np.concatenate(([before], values)), spans)


def _vpin_changes(price, qty, bought, vpin: Vpin) -> tuple[np.ndarray, np.ndarray]:
    """The trades at which VPIN changes (a bucket closes) and its value after each of them:
    ``Vpin.add``'s operations carried on from ``vpin``, whose state is then what adding the
    trades one by one would have left."""
    bucket, window = vpin.bucket_usd, vpin.window
    d_before, b_before = vpin._d, vpin._b
    dollars = price * qty
    d = _continued_sum(d_before, dollars)
    b = _continued_sum(b_before, np.where(bought, dollars, 0.0))
    if not d.size:
        return np.empty(0, np.int64), np.empty(0)
    vpin._d, vpin._b = float(d[-1]), float(b[-1])
    if not d[-1] >= vpin._next:
        return np.empty(0, np.int64), np.empty(0)
    closed = vpin.buckets
    number = np.arange(closed + 1, int(d[-1] / bucket) + 3, dtype=np.float64)
    boundaries = number * bucket  # (k + 1) * V, as Vpin computes its next boundary
    keep = boundaries <= d[-1]
    boundaries, number = boundaries[keep], number[keep]
    j = np.searchsorted(d, boundaries, side="left")  # the trade each bucket closes at
    prev = np.maximum(j - 1, 0)
    d0 = np.where(j > 0, d[prev], d_before)
    b0 = np.where(j > 0, b[prev], b_before)
    bx = np.where(bought[j], b0 + (boundaries - d0), b0)
    buy = bx - np.concatenate(([vpin._bx], bx[:-1]))
    imbalance = np.minimum(np.abs(buy - (bucket - buy)) / bucket, 1.0)
    cum = _continued_sum(vpin._cum, imbalance)
    window_sum = _window_sum(cum, window, vpin._cums)
    value = window_sum / np.minimum(number, window)
    vpin._bx = float(bx[-1])
    vpin.buckets = closed + imbalance.size
    vpin._next = (vpin.buckets + 1) * bucket
    vpin._cum = float(cum[-1])
    vpin._cums.extend(cum[-window:].tolist())
    vpin._imbalances.extend(imbalance[-window:].tolist())
    vpin._sum = float(window_sum[-1])
    vpin._value = float(value[-1])
    last = np.flatnonzero(np.append(j[1:] != j[:-1], True))  # a trade's last bucket
    return j[last], value[last]


def _atr_per_trade(ts, price, atr: AtrRatio) -> np.ndarray:
    """ATR ratio after each trade (NaN when None): ``AtrRatio``'s bar recurrence carried on from
    ``atr``, whose state is then what adding the trades one by one would have left."""
    m = price.size
    if not m:
        return np.empty(0)
    bar_ms = atr.bar_ms
    start = ts - ts % bar_ms
    carried = atr._bar_start is not None
    new = np.empty(m, bool)
    new[0] = not carried or int(start[0]) != atr._bar_start
    np.not_equal(start[1:], start[:-1], out=new[1:])
    first = np.flatnonzero(new)
    segments = first if new[0] else np.concatenate(([0], first))
    high = np.maximum.reduceat(price, segments)
    low = np.minimum.reduceat(price, segments)
    close = price[np.append(segments[1:], m) - 1]
    if carried and not new[0]:  # the open bar goes on: max/min of a set are exact in any order
        high[0] = max(atr._h, float(high[0]))
        low[0] = min(atr._l, float(low[0]))
    elif carried:  # the open bar closes at the first trade
        high = np.concatenate(([atr._h], high))
        low = np.concatenate(([atr._l], low))
        close = np.concatenate(([atr._c], close))
    # closed bars: all but the last; true range as AtrRatio._close_bar takes it
    h, lo = high[:-1], low[:-1]
    tr = h - lo
    prev_close = np.concatenate(([np.nan], close[:-2]))
    if atr._prev_close is not None:
        prev_close[0] = atr._prev_close
    has_prev = ~np.isnan(prev_close)
    tr = np.where(
        has_prev,
        np.maximum(np.maximum(tr, np.abs(h - prev_close)), np.abs(lo - prev_close)),
        tr,
    )
    means = np.full(tr.size + 1, np.nan)  # means[g]: after g bars closed in these trades
    if atr._mean is not None:
        means[0] = atr._mean
    ranges = atr._ranges
    total = atr._sum
    window = atr.window
    for g, r in enumerate(tr.tolist(), 1):  # few bars: the recurrence as AtrRatio runs it
        ranges.append(r)
        total += r
        if len(ranges) > window:
            total -= ranges.popleft()
        if ranges:
            means[g] = total / len(ranges)
    closes = np.cumsum(new) - (0 if carried else 1)  # bars closed up to each trade
    mean = means[closes]
    out = np.full(m, np.nan)
    np.divide(mean, price, out=out, where=price != 0)
    atr._sum = total
    if tr.size:
        last_mean = float(means[-1])
        atr._mean = None if last_mean != last_mean else last_mean  # no ranges kept: None
        atr._prev_close = float(close[-2])
    if first.size:  # a bar opened in these trades: the last one is the open bar
        atr._o = float(price[first[-1]])
    atr._bar_start = int(start[-1])
    atr._h, atr._l, atr._c = float(high[-1]), float(low[-1]), float(price[-1])
    atr.last = float(price[-1])
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
    flow: OrderFlow | None = None,
) -> dict[str, np.ndarray]:
    """Every ``FeatureSnapshot`` field right after each row of a merged tape, at once.

    Rows sorted by time: ``kind == trade_kind`` (a price, b qty, c is_buyer_maker 1.0/0.0) is
    ``OrderFlow.on_trade``; ``kind == top_kind`` (a bid, b bid_qty, c ask, d ask_qty) is
    ``OrderFlow.on_book`` with a side present when its qty > 0; other rows change nothing.
    Float64 columns (NaN where the field is None) equal, bit for bit, an ``OrderFlow`` fed row
    by row: the same float operations in the same order (running sums are np.cumsum,
    sequential). ``ts`` (int64) is the snapshot's, 0 before any trade or top. Trade prices and
    quantities are taken non-negative (the dollar axis is searched as sorted).

    ``flow``: carry on from this ``OrderFlow`` (its parameters and state; the others are then
    ignored) and leave it as feeding the rows would, so a long tape can be taken a part at a
    time: the parts' columns, one after the other, are the whole tape's."""
    if flow is None:
        flow = OrderFlow(
            obi_depth=obi_depth,
            volume_window=volume_window,
            vpin_bucket_usd=vpin_bucket_usd,
            vpin_window=vpin_window,
            atr_bar_ms=atr_bar_ms,
            atr_window=atr_window,
        )
    ts = np.asarray(ts, dtype=np.int64)
    kind = np.asarray(kind)
    a, b, c, d = (np.asarray(x, dtype=np.float64) for x in (a, b, c, d))
    n = ts.size
    snap = flow.snapshot
    is_trade = kind == trade_kind
    is_top = kind == top_kind
    out: dict[str, np.ndarray] = {}
    event = np.flatnonzero(is_trade | is_top)
    # rows other than trades and tops (funding, ...): the previous event's ts, or the snapshot's
    out["ts"] = _carry(ts[event], event, n, snap.ts)

    # trades
    trade = np.flatnonzero(is_trade)
    price, qty, t_ts = a[trade], b[trade], ts[trade]
    bought = c[trade] == 0.0  # not bool(is_buyer_maker)
    volume = flow.volume
    cum = _continued_sum(volume.cum, np.where(bought, qty, -qty))
    signed_volume = _window_sum(cum, volume.window, volume._cums)
    if trade.size:
        volume.cum, volume.total = float(cum[-1]), float(signed_volume[-1])
        volume._cums.extend(cum[-volume.window :].tolist())
    vpin_at, vpin = _vpin_changes(price, qty, bought, flow.vpin)
    atr = _atr_per_trade(t_ts, price, flow.atr)

    # book tops: OBI of one level a side (an empty side sums to 0)
    top = np.flatnonzero(is_top)
    bid, bid_qty, ask, ask_qty = a[top], b[top], c[top], d[top]
    has_bid, has_ask = bid_qty > 0, ask_qty > 0
    tracker = flow.obi
    if tracker.depth < 1:
        has_bid = has_ask = np.zeros(top.size, bool)
    bq = np.where(has_bid, bid_qty, 0.0)
    aq = np.where(has_ask, ask_qty, 0.0)
    total = bq + aq
    with np.errstate(divide="ignore", invalid="ignore"):
        book_obi = np.where(total > 0, (bq - aq) / total, 0.0)
    velocity = np.zeros(top.size)
    np.subtract(book_obi[1:], book_obi[:-1], out=velocity[1:])
    if top.size:
        if tracker.value is not None:
            velocity[0] = book_obi[0] - tracker.value
        tracker.value, tracker.velocity = float(book_obi[-1]), float(velocity[-1])
        tracker.readings += top.size

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
    full_at = top[full]

    def before(name: str) -> float:
        value = getattr(snap, name)
        return np.nan if value is None else value

    out["obi"] = _carry(book_obi, top, n, before("obi"))
    out["obi_velocity"] = _carry(velocity, top, n, snap.obi_velocity)
    out["signed_volume"] = _carry(signed_volume, trade, n, snap.signed_volume)
    out["microprice"] = _carry(micro, full_at, n, before("microprice"))
    out["micro_pressure"] = _carry(pressure, full_at, n, snap.micro_pressure)
    # VPIN changes at few trades: each value repeated until the next change
    out["vpin"] = _carry(vpin, trade[vpin_at], n, before("vpin"))
    out["spread_bps"] = _carry(spread, full_at, n, before("spread_bps"))
    out["top_depth"] = _carry(fbq + faq, full_at, n, before("top_depth"))
    out["atr_ratio"] = _carry(atr, trade, n, before("atr_ratio"))
    out["bid"] = _carry(fb, full_at, n, before("bid"))
    out["ask"] = _carry(fa, full_at, n, before("ask"))
    out["last_price"] = _carry(price, trade, n, before("last_price"))
    if n:  # the snapshot after the last row, as OrderFlow leaves it
        snap.ts = int(out["ts"][-1])
        for name in FLOAT_FIELDS:
            value = float(out[name][-1])
            setattr(snap, name, None if value != value else value)
        snap.toxicity = toxicity(snap.vpin)
    return out
