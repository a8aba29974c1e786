"""SimBroker's shortcuts for a backtest's hot path give what its full bookkeeping gives: the clock
skips the funding scan until the earliest known funding time (``_due``), and the once-per-second
mark check remembers the liquidation price of an unchanged position. ``FullPath`` below is the
broker without them (the code before they existed)."""

from __future__ import annotations

import random

import pytest

from liqcli.trading.costs import Fees
from liqcli.trading.model import Order, OrderSide, OrderType
from liqcli.trading.sim import SimBroker, TopOfBook

SYM = "BTCUSDT"


class FullPath(SimBroker):
    """Every clock advance scans every market's funding time; every mark recomputes the
    liquidation price."""

    def set_time(self, ts: int) -> None:
        if ts > self.now:
            self.now = ts
            self._settle_due_funding()

    def on_trade(self, symbol, ts, price, qty, is_buyer_maker) -> None:
        self.set_time(ts)
        market = self._market(symbol)
        market.last_trade = price
        if not market.resting:
            return
        self._due, saved = float("-inf"), self._due  # keep SimBroker.on_trade's fill loop
        try:
            SimBroker.on_trade(self, symbol, ts, price, qty, is_buyer_maker)
        finally:
            self._due = saved

    def _check_liquidation(self, symbol, market) -> None:
        pos = self.account.positions.get(symbol)
        if pos is None or pos.qty == 0 or market.mark is None:
            return
        lp = self.liquidation_price(symbol)
        if lp is None:
            return
        if (pos.qty > 0 and market.mark <= lp) or (pos.qty < 0 and market.mark >= lp):
            self._liquidate(symbol, pos, lp)


def _state(broker: SimBroker) -> tuple:
    pos = broker.position(SYM)
    fills = [
        (f.order_id, f.side, f.qty, f.price, f.fee, f.liquidity, f.ts, f.realized_pnl, f.tag)
        for f in broker.take_fills()
    ]
    trades = [
        (t.side, t.entry_ts, t.exit_ts, t.qty, t.pnl, t.fees, t.funding, t.liquidated)
        for t in broker.take_trades()
    ]
    return (
        fills,
        trades,
        broker.account.balance,
        (pos.qty, pos.entry_price, pos.margin, pos.funding, pos.fees),
        broker.liquidations,
        broker.rejections,
        broker.now,
    )


def _tape(seed: int, n: int = 4000):
    """Trades, book tops, marks with funding (rate, next time) and orders, in time order."""
    rng = random.Random(seed)
    ts, price, next_funding = 1_000, 60_000.0, 7_000
    events = []
    for _ in range(n):
        ts += rng.choice((0, 1, 3, 50, 400))
        price = round(price * (1 + rng.gauss(0, 1e-3)), 1)
        r = rng.random()
        if r < 0.6:
            events.append(("trade", ts, price, round(rng.expovariate(20), 3) + 0.001, r < 0.3))
        elif r < 0.75:
            events.append(("top", ts, price - 0.1, rng.uniform(0.1, 5), price, rng.uniform(0.1, 5)))
        elif r < 0.85:
            if ts >= next_funding - 2_000:
                next_funding += rng.choice((3_000, 5_000, 8_000))
            rate = rng.choice((None, 0.0001, -0.0003, 0.002))
            nxt = rng.choice((None, next_funding))
            events.append(("mark", ts, price * (1 + rng.gauss(0, 1e-4)), rate, nxt))
        elif r < 0.9:
            side = rng.choice((OrderSide.BUY, OrderSide.SELL))
            off = rng.choice((-0.2, -0.1, 0.0, 0.1, 0.2))
            events.append(("limit", ts, side, round(rng.uniform(0.01, 0.2), 3), price + off))
        elif r < 0.93:
            side = rng.choice((OrderSide.BUY, OrderSide.SELL))
            lev = rng.choice((None, 5.0, 20.0, 75.0))
            events.append(("market", ts, side, round(rng.uniform(0.01, 0.3), 3), lev))
        elif r < 0.96:
            events.append(("cancel_all", ts))
        elif r < 0.98:
            events.append(("funding", ts, rng.choice((0.0001, -0.0005)), price))
        else:
            events.append(("time", ts))
    return events


def _run(broker: SimBroker, events, book=TopOfBook) -> list[tuple]:
    states = []
    for e in events:
        kind = e[0]
        if kind == "trade":
            broker.on_trade(SYM, e[1], e[2], e[3], e[4])
        elif kind == "top":
            broker.update_book(SYM, book(e[2], e[3], e[4], e[5]), e[1])
        elif kind == "mark":
            broker.on_mark(SYM, e[1], e[2], e[3], e[4])
        elif kind == "limit":
            broker.submit(Order(SYM, e[2], e[3], OrderType.LIMIT, price=e[4], tag="l"))
        elif kind == "market":
            broker.submit(Order(SYM, e[2], e[3], OrderType.MARKET, leverage=e[4], tag="m"))
        elif kind == "reduce":
            broker.submit(Order(SYM, e[2], e[3], OrderType.MARKET, reduce_only=True, tag="r"))
        elif kind == "cancel_all":
            broker.cancel_all(SYM)
        elif kind == "funding":
            broker.settle_funding(SYM, e[1], e[2], e[3])
        else:
            broker.set_time(e[1])
        states.append(_state(broker))
    return states


@pytest.mark.parametrize("seed", range(6))
def test_fast_paths_equal_the_full_path_on_a_random_tape(seed):
    events = _tape(seed)
    make = dict(balance=1_000.0, fees=Fees(0.0002, 0.0005), default_leverage=20.0)
    fast, full = _run(SimBroker(**make), events), _run(FullPath(**make), events)
    assert fast == full
    # the tape exercises what the shortcuts skip: funding settled, liquidations, maker fills
    fills = [f for s in fast for f in s[0]]
    assert any(s[3][3] != 0 for s in fast), "no funding charged"
    assert fast[-1][4] > 0, "no liquidation"
    assert any(f[5].value == "maker" for f in fills), "no maker fill"


class Levels:
    """A one-level book that is not a ``TopOfBook``: the broker reads it through ``levels()``, its
    general path (``_check``, ``_check_bracket`` and ``_take`` read a ``TopOfBook`` directly)."""

    def __init__(self, bid_price, bid_qty, ask_price, ask_qty) -> None:
        self.top = TopOfBook(bid_price, bid_qty, ask_price, ask_qty)

    def levels(self, side: str, depth: int):
        return self.top.levels(side, depth)


def _market_tape(seed: int, n: int = 3000):
    """Market orders (some reduce-only, some larger than the book, some refused for margin or
    leverage) against one-level books: empty, thin, infinite, as the bar driver quotes."""
    rng = random.Random(seed)
    ts, price = 1_000, 60_000.0
    buy, sell = OrderSide.BUY, OrderSide.SELL
    events = [  # no price yet: no book, an empty one, one with bids only
        ("market", ts, buy, 0.1, None),
        ("top", ts, price, 0.0, price, 0.0),
        ("market", ts, sell, 0.1, None),
        ("top", ts, price, 1.0, price, 0.0),
        ("market", ts, sell, 0.1, None),
    ]
    for _ in range(n):
        ts += rng.choice((0, 1, 60))
        price = round(price * (1 + rng.gauss(0, 2e-3)), 1)
        r = rng.random()
        if r < 0.3:
            bid_qty, ask_qty = (rng.choice((0.0, 0.05, 0.3, 2.0, float("inf"))) for _ in "ba")
            events.append(("top", ts, price - rng.choice((0.0, 0.1)), bid_qty, price, ask_qty))
        elif r < 0.65:
            side = rng.choice((OrderSide.BUY, OrderSide.SELL))
            lev = rng.choice((None, 1.0, 20.0, 125.0, 200.0))
            events.append(("market", ts, side, rng.choice((0.01, 0.1, 0.5, 3.0, 40.0)), lev))
        elif r < 0.8:
            side = rng.choice((OrderSide.BUY, OrderSide.SELL))
            events.append(("reduce", ts, side, rng.choice((0.01, 0.2, 5.0))))
        elif r < 0.85:
            events.append(("limit", ts, rng.choice(list(OrderSide)), 0.05, price))
        elif r < 0.9:
            events.append(("trade", ts, price, 0.1, r < 0.87))
        elif r < 0.95 and ts > 20_000:  # the first orders find no mark and no trade
            events.append(("mark", ts, price * (1 + rng.gauss(0, 1e-2)), None, None))
        else:
            events.append(("time", ts))
    return events


@pytest.mark.parametrize("seed", range(6))
def test_a_top_of_book_read_directly_equals_its_levels(seed):
    events = _market_tape(seed)
    make = dict(balance=5_000.0, fees=Fees(0.0002, 0.0005), default_leverage=10.0)
    fast = _run(SimBroker(**make, slippage_bps=2.0), events)
    general = _run(SimBroker(**make, slippage_bps=2.0), events, book=Levels)
    assert fast == general
    # the tape reaches the paths the direct reads replace: fills, refusals of each kind
    broker = SimBroker(**make, slippage_bps=2.0)
    orders = []
    original = broker.submit
    broker.submit = lambda o: orders.append(original(o)) or o
    _run(broker, events)
    reasons = {o.reject_reason for o in orders}
    assert {"no_price", "insufficient_margin", "leverage_exceeds_bracket"} <= reasons
    assert "reduce_only_would_increase" in reasons


def test_a_funding_time_crossed_inside_a_quiet_stretch_of_trades_is_settled():
    """No mark arrives after the funding time: the first trade past it settles it."""
    for cls in (SimBroker, FullPath):
        b = cls(10_000.0, fees=Fees(0.0, 0.0))
        b.on_mark(SYM, 1_000, 60_000.0, 0.001, 5_000)
        b.on_trade(SYM, 1_001, 60_000.0, 0.1, False)
        b.submit(Order(SYM, OrderSide.BUY, 0.1, leverage=2.0))
        for ts in range(1_002, 5_000, 7):
            b.on_trade(SYM, ts, 60_000.0, 0.01, False)
        assert b.position(SYM).funding == 0.0
        b.on_trade(SYM, 5_000, 60_000.0, 0.01, False)
        assert b.position(SYM).funding == pytest.approx(0.1 * 60_000 * 0.001)
        b.on_trade(SYM, 9_000, 60_000.0, 0.01, False)  # settled once, not again
        assert b.position(SYM).funding == pytest.approx(6.0)


def test_a_restored_funding_time_is_due_on_the_next_trade():
    b = SimBroker(10_000.0, fees=Fees(0.0, 0.0))
    b.on_trade(SYM, 1_000, 50_000.0, 0.1, False)
    b.submit(Order(SYM, OrderSide.SELL, 0.2, leverage=2.0))
    b.restore_market(
        SYM,
        {
            "mark": 50_000.0,
            "last_trade": 50_000.0,
            "funding_rate": 0.0002,
            "next_funding_ts": 2_000,
        },
    )
    b.on_trade(SYM, 1_999, 50_000.0, 0.1, False)
    assert b.position(SYM).funding == 0.0
    b.on_trade(SYM, 2_000, 50_000.0, 0.1, False)
    assert b.position(SYM).funding == pytest.approx(-0.2 * 50_000 * 0.0002)


def test_the_mark_check_sees_margin_lost_to_funding():
    """The remembered liquidation price is dropped when funding takes margin: the same mark
    that was safe before the settlement liquidates after it."""
    b = SimBroker(10_000.0, fees=Fees(0.0, 0.0))
    b.on_trade(SYM, 1_000, 60_000.0, 0.1, False)
    b.submit(Order(SYM, OrderSide.BUY, 1.0, leverage=50.0))
    before = b.liquidation_price(SYM)
    mark = before + 5.0
    b.on_mark(SYM, 2_000, mark)
    assert b.position(SYM).qty == 1.0  # safe
    b.settle_funding(SYM, 2_500, 0.0002, 60_000.0)  # 12 USDT out of the margin
    assert b.liquidation_price(SYM) > mark
    b.on_mark(SYM, 3_000, mark)
    assert b.position(SYM).qty == 0.0 and b.liquidations == 1
