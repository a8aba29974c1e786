"""Bar backtests on the SimBroker: orders decided at a bar's close fill at the next bar's open.

Two drivers share one broker and one set of rules, so their trades are identical (tested):

- ``run_vectorised``: for strategies that declare their indicators and their target exposure as
  Polars expressions (``VectorStrategy``), computed once over the whole frame. The loop then
  visits only the bars where something happens: a change of target, a funding settlement, the
  bar where a liquidation (or stop) price is first crossed, found with numpy over the segment.
- ``run_loop``: any ``Strategy`` fed one ``Bar`` event at a time through the ``Engine``.

Rules (README "liq backtest"):
- A strategy's target at bar i (known at its close) is executed at bar i+1's open: a market
  order at the open price, ``slippage_bps`` against the order, taker fee on the filled notional.
  A flip is a close then an open at the same price (fees on both).
- Size: the whole equity at the leverage: qty = balance × L / (price × (1 + L × taker)), so the
  margin plus the opening fee is exactly the balance.
- Inside a bar, the broker sees the bar's low (for longs) or high (for shorts) as the mark: a
  position whose liquidation price (Binance isolated formula, ``costs``) lies within the bar's
  range is liquidated at that price in that bar; the strategy, still wanting a position at that
  bar's close, re-enters at the next open.
- Limit orders (``run_loop``, Strategy protocol) are sent at the next open like market orders: if
  they cross the open they fill there (taker), else they rest and fill at their own price (maker)
  in the first bar whose range trades through them (low below a buy, high above a sell).
- Stop orders (``ctx.stop_order``; the SimBroker has none, this driver triggers them) become
  active at the next open: a sell stop fills as a market order at its trigger in the first bar
  whose low reaches it (a buy stop: whose high), or at the open when the open is already past it.
  Within a bar the path is open -> low -> high -> close (up bar) or open -> high -> low -> close.
- Funding (stored ``funding`` rows): settled at their real times, rate × mark (the row's mark
  price, else the bar's close) × signed qty, before the bar's range is checked.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl

from liqcli.trading.costs import Fees
from liqcli.trading.engine import Engine, register_event
from liqcli.trading.model import Order, OrderSide, OrderStatus, OrderType, Position
from liqcli.trading.sim import RoundTrip, SimBroker, TopOfBook
from liqcli.trading.strategy import BaseStrategy, Context, Strategy

DEPTH_INFINITE = math.inf


@dataclass(slots=True, frozen=True)
class Bar:
    exchange: str
    symbol: str
    ts: int  # open time, ms
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


class VectorStrategy(Protocol):
    """A bar strategy whose decisions are Polars expressions over the bar frame.

    ``target()`` is the exposure wanted at each bar's close: 1 long, −1 short, 0 flat, null to
    keep the previous one (before any opinion: flat). It may use only columns of the bar frame
    (ts, open, high, low, close, volume) and ``indicators()``, computed with causal (rolling,
    shifted) expressions, so a decision at bar i never depends on a later bar."""

    name: str

    def indicators(self) -> dict[str, pl.Expr]: ...

    def target(self) -> pl.Expr: ...


@dataclass(slots=True)
class BarSettings:
    capital: float = 10_000.0
    leverage: float = 1.0
    fees: Fees = field(default_factory=lambda: Fees(0.0002, 0.0005))
    slippage_bps: float = 0.0
    symbol: str = "BTCUSDT"
    exchange: str = "binance"


@dataclass(slots=True)
class BarResult:
    ts: np.ndarray  # bar open times, ms
    equity: np.ndarray  # at each bar's close
    trades: list[RoundTrip]
    fills: int
    fees: float
    funding: float
    liquidations: int
    exposure: float  # share of bars with a position at the close
    bars: int


def prepare(frame: pl.DataFrame | pl.LazyFrame, strategy: VectorStrategy) -> pl.DataFrame:
    """The bar frame with the strategy's indicators and its executed target (``exec``: the
    exposure wanted at the previous bar's close, i.e. what this bar's open executes)."""
    # bars are usually stored in order: checking is far cheaper than sorting again
    ordered = isinstance(frame, pl.DataFrame) and frame["ts"].is_sorted()
    lazy = frame.lazy() if ordered else frame.lazy().sort("ts")
    indicators = strategy.indicators()
    if indicators:
        lazy = lazy.with_columns(**indicators)
    wanted = strategy.target().forward_fill().fill_null(0).cast(pl.Int8)
    return (
        lazy.with_columns(wanted=wanted)
        .with_columns(exec=pl.col("wanted").shift(1).fill_null(0))
        .collect()
    )


def _broker(settings: BarSettings) -> SimBroker:
    return SimBroker(
        settings.capital,
        fees=settings.fees,
        slippage_bps=settings.slippage_bps,
        default_leverage=settings.leverage,
    )


def _quote(broker: SimBroker, symbol: str, ts: int, price: float) -> None:
    broker.update_book(symbol, TopOfBook(price, DEPTH_INFINITE, price, DEPTH_INFINITE), ts)


def _target_qty(broker: SimBroker, price: float, leverage: float, side: OrderSide) -> float:
    slip = broker.slippage_bps / 10_000
    fill = price * (1 + slip) if side is _BUY else price * (1 - slip)  # a global: see sim._BUY
    taker = broker.fees.taker
    return broker.account.balance * leverage / (fill * (1 + leverage * taker)) * (1 - 1e-12)


_BUY, _SELL, _MARKET = OrderSide.BUY, OrderSide.SELL, OrderType.MARKET


def rebalance(broker: SimBroker, symbol: str, target: int, price: float, leverage: float) -> None:
    """Bring the position to ``target`` (−1/0/1 × the whole equity) with market orders."""
    qty = broker.position(symbol).qty
    sign = 0 if qty == 0 else (1 if qty > 0 else -1)
    if sign == target:
        return
    # Order(symbol, side, qty, type, price, post_only, reduce_only, leverage, client_id, tag):
    # positional, this is the backtest's innermost call.
    if sign != 0:
        side = _SELL if sign > 0 else _BUY
        broker.submit(Order(symbol, side, abs(qty), _MARKET, None, False, True, None, "", "signal"))
    if target != 0:
        side = _BUY if target > 0 else _SELL
        qty = _target_qty(broker, price, leverage, side)
        order = Order(symbol, side, qty, _MARKET, None, False, False, leverage, "", "signal")
        if broker.submit(order).reject_reason == "leverage_exceeds_bracket":
            _refused_by_bracket(broker, order, price, leverage)


def _refused_by_bracket(broker: SimBroker, order: Order, price: float, leverage: float) -> None:
    """The whole equity at this leverage is a position the venue refuses: say so and stop,
    rather than run on flat or smaller than the rules say (README "liq backtest")."""
    from liqcli.core.timeutil import iso_ms
    from liqcli.errors import LiqError

    cap = broker._notional_cap(order.symbol, leverage)
    raise LiqError(
        f"{order.symbol} at {leverage:g}x: the position at {iso_ms(broker.now)} would be "
        f"{order.qty * price:,.0f} notional, and the venue's brackets allow {leverage:g}x only "
        f"below {cap:,.0f} (leverage_exceeds_bracket): lower --leverage or --capital"
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a run allocates tens of thousands of orders, fills and
    round trips, all acyclic and all kept until the end, so each collector pass (a quarter of
    the engine's time, walking them and every imported module's objects) frees nothing.
    Reference counting still frees everything else; the previous state comes back after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_vectorised(
    frame: pl.DataFrame | pl.LazyFrame,
    strategy: VectorStrategy,
    settings: BarSettings | None = None,
    *,
    funding: pl.DataFrame | None = None,
) -> BarResult:
    with _collector_paused():
        return _run_vectorised(frame, strategy, settings, funding)


def _run_vectorised(
    frame: pl.DataFrame | pl.LazyFrame,
    strategy: VectorStrategy,
    settings: BarSettings | None,
    funding: pl.DataFrame | None,
) -> BarResult:
    settings = settings or BarSettings()
    df = prepare(frame, strategy)
    n = df.height
    ts = df["ts"].cast(pl.Int64).to_numpy() if df["ts"].dtype != pl.Int64 else df["ts"].to_numpy()
    opens = df["open"].to_numpy()
    highs = df["high"].to_numpy()
    lows = df["low"].to_numpy()
    closes = df["close"].to_numpy()
    exec_target = df["exec"].to_numpy()
    broker = _broker(settings)
    sym = settings.symbol
    changes = (np.flatnonzero(np.diff(exec_target)) + 1).tolist() if n else []
    fund_bars, fund_rows = _funding_bars(ts, funding)
    # The extremes of the whole frame: a liquidation price beyond them cannot be hit in any
    # segment, so most segments skip the numpy scan.
    bounds = _extremes(lows, highs)
    snapshots: list[tuple[int, float, float, float]] = []  # (bar, balance, qty, entry) from then

    # The run's one Position object: an Account never replaces or drops one, so it is looked
    # up once rather than several times a segment.
    pos = broker.position(sym)
    account = broker.account

    def snap(bar: int) -> None:
        snapshots.append((bar, account.balance, pos.qty, pos.entry_price))

    snap(0)
    cursor = 0
    k = 0  # changes[k]: the first change after cursor (cursor only moves forward)
    n_changes = len(changes)
    while cursor < n:
        want = exec_target.item(cursor)  # .item(): a Python int, without a numpy scalar
        qty = pos.qty
        held = 0 if qty == 0 else (1 if qty > 0 else -1)
        if held != want:
            price = opens.item(cursor)
            _quote(broker, sym, ts.item(cursor), price)
            rebalance(broker, sym, want, price, settings.leverage)
            snap(cursor)
        while k < n_changes and changes[k] <= cursor:  # bisect_right(changes, cursor)
            k += 1
        end = changes[k] if k < n_changes else n
        cursor = _hold(
            broker,
            sym,
            cursor,
            end,
            ts,
            highs,
            lows,
            closes,
            fund_bars,
            fund_rows,
            snap,
            bounds,
            pos,
        )
    return _result(broker, ts, closes, snapshots, n)


def _hold(
    broker: SimBroker,
    sym: str,
    start: int,
    end: int,
    ts: np.ndarray,
    highs: np.ndarray,
    lows: np.ndarray,
    closes: np.ndarray,
    fund_bars: list[int],
    fund_rows: list[tuple[int, float, float | None]],
    snap: Callable[[int], None],
    bounds: tuple[float, float] = (-math.inf, math.inf),
    pos: Position | None = None,
) -> int:
    """Hold the position over bars [start, end); returns where the next decision happens.
    ``bounds``: (lowest low, highest high) of all bars, or any wider range; ``pos``: the
    broker's position of ``sym`` (looked up when not given)."""
    if pos is None:
        pos = broker.position(sym)
    a = start
    f = bisect.bisect_left(fund_bars, start) if fund_bars else 0
    while a < end:
        if pos.qty == 0:
            return end  # flat and no change wanted before ``end``
        b = fund_bars[f] if f < len(fund_bars) and fund_bars[f] < end else end
        if fund_bars and f < len(fund_bars) and fund_bars[f] == a:
            fts, rate, mark = fund_rows[f]
            broker.settle_funding(sym, fts, rate, mark if mark is not None else float(closes[a]))
            snap(a)
            f += 1
            b = fund_bars[f] if f < len(fund_bars) and fund_bars[f] < end else end
        lp = broker.liquidation_price(sym)
        if lp is not None and lp > 0 and (lp >= bounds[0] if pos.qty > 0 else lp <= bounds[1]):
            seg = lows[a:b] <= lp if pos.qty > 0 else highs[a:b] >= lp
            hit = np.flatnonzero(seg)
            if hit.size:
                k = a + int(hit[0])
                price = float(lows[k]) if pos.qty > 0 else float(highs[k])
                broker.on_mark(sym, int(ts[k]), price)
                snap(k)
                return k + 1  # the strategy re-enters at the next open if it still wants to
        a = b
    return end


def _extremes(lows: np.ndarray, highs: np.ndarray) -> tuple[float, float]:
    """(lowest low, highest high), widened to ±inf where unknown (no bars, NaN)."""
    lo = float(lows.min()) if lows.size else -math.inf
    hi = float(highs.max()) if highs.size else math.inf
    return (lo if lo == lo else -math.inf, hi if hi == hi else math.inf)


def _funding_bars(
    ts: np.ndarray, funding: pl.DataFrame | None
) -> tuple[list[int], list[tuple[int, float, float | None]]]:
    if funding is None or funding.height == 0 or ts.size == 0:
        return [], []
    f = funding.sort("ts")
    fts = f["ts"].cast(pl.Int64).to_numpy() if f["ts"].dtype != pl.Int64 else f["ts"].to_numpy()
    rates = f["funding_rate"].to_list()
    marks = f["mark_price"].to_list() if "mark_price" in f.columns else [None] * f.height
    bars, rows = [], []
    for t, rate, mark in zip(fts.tolist(), rates, marks, strict=True):
        if rate is None or t < ts[0] or t > ts[-1] + (ts[-1] - ts[-2] if ts.size > 1 else 0):
            continue
        bar = int(np.searchsorted(ts, t, side="right") - 1)
        bars.append(bar)
        rows.append((int(t), float(rate), float(mark) if mark else None))
    return bars, rows


def _result(
    broker: SimBroker,
    ts: np.ndarray,
    closes: np.ndarray,
    snapshots: list[tuple[int, float, float, float]],
    n: int,
) -> BarResult:
    if n == 0:
        return BarResult(ts, np.array([]), [], 0, 0.0, 0.0, 0, 0.0, 0)
    # Each snapshot holds from its bar until the next one's (the last of several at one bar
    # wins); the first is at bar 0.
    # bar, balance, qty, entry; fromiter over the flattened tuples: half np.array(snapshots)'s time
    flat = itertools.chain.from_iterable(snapshots)
    table = np.fromiter(flat, np.float64, 4 * len(snapshots)).reshape(-1, 4)
    idx = table[:, 0].astype(np.int64)
    span = np.diff(idx, append=n)
    balance, qty, entry = (np.repeat(table[:, c], span) for c in (1, 2, 3))
    equity = balance + qty * (closes - entry)
    trades = broker.take_trades()
    fills = len(broker.take_fills())
    return BarResult(
        ts=ts,
        equity=equity,
        trades=trades,
        fills=fills,
        fees=sum(t.fees for t in trades) + _open_fees(broker),
        funding=sum(t.funding for t in trades) + _open_funding(broker),
        liquidations=broker.liquidations,
        exposure=float(np.mean(qty != 0)),
        bars=n,
    )


def _open_fees(broker: SimBroker) -> float:
    return sum(p.fees for p in broker.account.positions.values() if p.qty)


def _open_funding(broker: SimBroker) -> float:
    return sum(p.funding for p in broker.account.positions.values() if p.qty)


# ---------------------------------------------------------------------------------- the loop


class NextOpen:
    """The broker a bar strategy talks to: orders sent at a bar's close wait for the next open."""

    def __init__(self, broker: SimBroker) -> None:
        self.broker = broker
        self.queued: list[Order] = []
        self.stops: list[Order] = []  # active stop orders (the SimBroker has none)
        self.stop_seq = 0
        # stored funding by bar open time, settled at that bar (any strategy, not only targets)
        self.funding_at: dict[int, list] = {}

    def submit(self, order: Order) -> Order:
        self.queued.append(order)
        return order

    def cancel(self, order_id: str) -> bool:
        before = len(self.queued) + len(self.stops)
        self.queued = [o for o in self.queued if o.id != order_id]
        for stop in [o for o in self.stops if o.id == order_id]:
            stop.status = OrderStatus.CANCELED
            self.stops.remove(stop)
        return len(self.queued) + len(self.stops) != before or self.broker.cancel(order_id)

    def cancel_all(self, symbol: str | None = None) -> list[Order]:
        gone = [o for o in self.queued + self.stops if symbol is None or o.symbol == symbol]
        self.queued = [o for o in self.queued if o not in gone]
        self.stops = [o for o in self.stops if o not in gone]
        for order in gone:
            order.status = OrderStatus.CANCELED
        return gone + self.broker.cancel_all(symbol)

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        stops = [o for o in self.stops if symbol is None or o.symbol == symbol]
        return stops + self.broker.open_orders(symbol)

    def trigger_stops(self, bar: Bar, price: float, *, at_open: bool) -> None:
        """Execute the stops this price reaches: at the open (a gap) at the open, else at their
        trigger price (the bar traded through it on its way to ``price``)."""
        for stop in list(self.stops):
            assert stop.price is not None
            buy = stop.side is OrderSide.BUY
            if not (price >= stop.price if buy else price <= stop.price):
                continue
            self.stops.remove(stop)
            fill = price if at_open else stop.price
            _quote(self.broker, bar.symbol, bar.ts, fill)
            done = self.broker.submit(
                Order(stop.symbol, stop.side, stop.qty, OrderType.MARKET,
                      reduce_only=stop.reduce_only, leverage=stop.leverage, tag=stop.tag)
            )  # fmt: skip
            stop.status, stop.filled_qty, stop.avg_price = (
                done.status,
                done.filled_qty,
                done.avg_price,
            )
            stop.reject_reason = done.reject_reason

    def position(self, symbol: str) -> Any:
        return self.broker.position(symbol)

    def take_fills(self) -> list:
        return self.broker.take_fills()

    @property
    def account(self) -> Any:
        return self.broker.account


def _on_bar(bar: Bar, market: Any, slots: Sequence[Any]) -> None:
    market.last_price[bar.symbol] = bar.close
    for slot in slots:
        wrapper = slot.broker
        if not isinstance(wrapper, NextOpen):
            continue
        broker = wrapper.broker
        _quote(broker, bar.symbol, bar.ts, bar.open)
        queued, wrapper.queued = wrapper.queued, []
        for order in queued:
            if order.tag == "rebalance":
                rebalance(broker, order.symbol, int(order.qty), bar.open, order.leverage or 1.0)
            elif order.type is OrderType.STOP:
                wrapper.stop_seq += 1
                order.id = order.id or f"stop-{wrapper.stop_seq}"
                order.created_ts = bar.ts
                wrapper.stops.append(order)
            else:
                broker.submit(order)
        if wrapper.stops:
            wrapper.trigger_stops(bar, bar.open, at_open=True)
        if wrapper.stops or broker.open_orders(bar.symbol):
            # resting limits fill at their price when the bar's range trades through them, stops
            # at theirs when it reaches them, on the path open -> low -> high -> close (up bar)
            # or open -> high -> low -> close
            path = (bar.low, bar.high) if bar.close >= bar.open else (bar.high, bar.low)
            for price in path:
                if wrapper.stops:
                    wrapper.trigger_stops(bar, price, at_open=False)
                if broker.open_orders(bar.symbol):
                    broker.on_trade(bar.symbol, bar.ts, price, 0.0, price == bar.low)
        funding = wrapper.funding_at
        if funding:
            for fts, rate, mark in funding.pop(bar.ts, ()):
                broker.settle_funding(
                    bar.symbol, fts, rate, mark if mark is not None else bar.close
                )
        pos = broker.position(bar.symbol)
        if pos.qty:
            broker.on_mark(bar.symbol, bar.ts, bar.low if pos.qty > 0 else bar.high)


register_event(Bar, _on_bar)


class TargetLoop(BaseStrategy):
    """Runs a VectorStrategy's target bar by bar (no vectorised skipping): the reference path."""

    def __init__(self, wanted: Sequence[int], leverage: float) -> None:
        self.wanted = list(wanted)
        self.leverage = leverage
        self.i = 0

    def on_event(self, event: Any, ctx: Context) -> None:
        if not isinstance(event, Bar):
            return
        target = self.wanted[self.i]
        self.i += 1
        # Ask for the target every close; the next open's rebalance is a no-op when it holds.
        ctx.submit(
            Order(
                event.symbol, OrderSide.BUY, float(target), leverage=self.leverage, tag="rebalance"
            )
        )


def run_loop(
    frame: pl.DataFrame | pl.LazyFrame,
    strategy: VectorStrategy | Strategy,
    settings: BarSettings | None = None,
    *,
    funding: pl.DataFrame | None = None,
) -> BarResult:
    """Every bar through the Engine (slow, general: any Strategy that handles ``Bar`` events)."""
    settings = settings or BarSettings()
    if hasattr(strategy, "target"):
        df = prepare(frame, strategy)  # type: ignore[arg-type]
        runner: Strategy = TargetLoop(df["wanted"].to_list(), settings.leverage)
    else:
        df = frame.lazy().sort("ts").collect()
        runner = strategy  # type: ignore[assignment]
    ts = df["ts"].cast(pl.Int64).to_numpy() if df["ts"].dtype != pl.Int64 else df["ts"].to_numpy()
    broker = _broker(settings)
    wrapper = NextOpen(broker)
    if funding is not None:
        bars, rows = _funding_bars(ts, funding)
        for bar, row in zip(bars, rows, strict=True):
            wrapper.funding_at.setdefault(int(ts[bar]), []).append(row)
    engine = Engine()
    engine.add(runner, wrapper)
    sym, exch = settings.symbol, settings.exchange
    snapshots: list[tuple[int, float, float, float]] = []
    rows = df.select("ts", "open", "high", "low", "close").rows()
    for i, (_, o, h, low, c) in enumerate(rows):
        engine.step(Bar(exch, sym, int(ts[i]), o, h, low, c))
        pos = broker.position(sym)
        snapshots.append((i, broker.account.balance, pos.qty, pos.entry_price))
    engine.stop()
    return _result(broker, ts, df["close"].to_numpy(), snapshots, df.height)
