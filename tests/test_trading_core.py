"""The trading core against numbers worked out by hand."""

from __future__ import annotations

import itertools
import math

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from liqcli.core.events import AggTrade, BookTop
from liqcli.trading.costs import (
    BTCUSDT_BRACKETS,
    Fees,
    bracket_for,
    liquidation_price,
    liquidation_price_for_leverage,
    parse_fees,
)
from liqcli.trading.engine import Engine
from liqcli.trading.model import Order, OrderSide, OrderStatus, OrderType
from liqcli.trading.sim import SimBroker, TopOfBook
from liqcli.trading.strategy import BaseStrategy


class Book:
    def __init__(self, bids, asks):
        self.bids, self.asks = bids, asks

    def levels(self, side, depth):
        return (self.bids if side == "bid" else self.asks)[:depth]


def broker(balance=10_000.0, **kw) -> SimBroker:
    b = SimBroker(balance, **kw)
    b.update_book("BTCUSDT", Book([(99.0, 1.0), (98.0, 5.0)], [(100.0, 1.0), (101.0, 2.0)]), 1)
    return b


def test_market_order_walks_the_book_and_pays_slippage_and_taker_fee():
    b = broker()
    order = b.submit(Order("BTCUSDT", OrderSide.BUY, 2.0))
    assert order.status is OrderStatus.FILLED
    (fill,) = b.take_fills()
    # 1 @ 100 + 1 @ 101 = vwap 100.5, then 2 bps: 100.5 * 1.0002
    assert fill.price == pytest.approx(100.5201)
    assert fill.fee == pytest.approx(2 * 100.5201 * 0.0005)
    assert b.account.balance == pytest.approx(10_000 - fill.fee)
    pos = b.position("BTCUSDT")
    assert pos.qty == 2.0 and pos.entry_price == pytest.approx(100.5201)
    assert pos.margin == pytest.approx(2 * 100.5201)  # leverage 1


def test_market_order_past_known_depth_fills_rest_at_worst_level():
    b = broker(slippage_bps=0)
    b.submit(Order("BTCUSDT", OrderSide.SELL, 10.0))
    (fill,) = b.take_fills()
    # 1 @ 99, 5 @ 98, the remaining 4 at the worst known level 98
    assert fill.price == pytest.approx((99 + 5 * 98 + 4 * 98) / 10)


def test_post_only_that_would_cross_is_rejected_and_resting_one_is_not():
    b = broker()
    crossing = b.submit(
        Order("BTCUSDT", OrderSide.BUY, 1.0, OrderType.LIMIT, price=100.0, post_only=True)
    )
    assert crossing.status is OrderStatus.REJECTED
    assert crossing.reject_reason == "post_only_would_cross"
    resting = b.submit(
        Order("BTCUSDT", OrderSide.BUY, 1.0, OrderType.LIMIT, price=99.5, post_only=True)
    )
    assert resting.status is OrderStatus.NEW
    assert [o.id for o in b.open_orders("BTCUSDT")] == [resting.id]


def test_crossing_limit_fills_as_taker_up_to_its_price_and_rests_the_rest():
    b = broker(slippage_bps=0)
    order = b.submit(Order("BTCUSDT", OrderSide.BUY, 3.0, OrderType.LIMIT, price=100.0))
    (fill,) = b.take_fills()
    assert fill.qty == 1.0 and fill.price == 100.0 and fill.liquidity == "taker"
    assert order.status is OrderStatus.PARTIALLY_FILLED and order.remaining == 2.0
    assert b.open_orders() == [order]


def test_resting_limit_fills_only_when_trades_print_through_it():
    b = broker()
    order = b.submit(Order("BTCUSDT", OrderSide.BUY, 1.0, OrderType.LIMIT, price=98.5))
    b.on_trade("BTCUSDT", 2, 98.6, 5.0, True)  # above our bid: nothing
    assert b.take_fills() == []
    b.on_trade("BTCUSDT", 3, 98.4, 0.1, True)  # through: fully filled at our price, maker
    (fill,) = b.take_fills()
    assert (fill.qty, fill.price, fill.liquidity) == (1.0, 98.5, "maker")
    assert fill.fee == pytest.approx(98.5 * 0.0002)
    assert order.status is OrderStatus.FILLED and b.open_orders() == []


def test_resting_at_a_displayed_price_waits_for_the_queue_ahead():
    b = broker()
    # 5.0 displayed at 98 ahead of us
    order = b.submit(Order("BTCUSDT", OrderSide.BUY, 2.0, OrderType.LIMIT, price=98.0))
    b.on_trade("BTCUSDT", 2, 98.0, 4.0, True)  # consumes 4 of the 5 ahead
    assert b.take_fills() == []
    b.on_trade("BTCUSDT", 3, 98.0, 1.5, False)  # a buyer lifting at 98 does not hit bids
    assert b.take_fills() == []
    b.on_trade("BTCUSDT", 4, 98.0, 1.5, True)  # 1 left ahead, 0.5 fills us
    (fill,) = b.take_fills()
    assert fill.qty == pytest.approx(0.5)
    assert order.remaining == pytest.approx(1.5)


def test_round_trip_pnl_fees_and_roi():
    b = broker(slippage_bps=0)
    b.submit(Order("BTCUSDT", OrderSide.BUY, 1.0, OrderType.LIMIT, price=98.5, leverage=5))
    b.on_trade("BTCUSDT", 10, 98.0, 1.0, True)  # fills long 1 @ 98.5 maker
    b.update_book("BTCUSDT", Book([(110.0, 3.0)], [(111.0, 3.0)]), 20)
    b.submit(Order("BTCUSDT", OrderSide.SELL, 1.0, reduce_only=True))  # 1 @ 110 taker
    (trip,) = b.take_trades()
    fees = 98.5 * 0.0002 + 110.0 * 0.0005
    assert trip.side == "long" and trip.qty == 1.0 and trip.leverage == 5
    assert (trip.entry_ts, trip.exit_ts) == (10, 20)
    assert trip.fees == pytest.approx(fees)
    assert trip.pnl == pytest.approx(11.5 - fees)
    assert trip.roi == pytest.approx((11.5 - fees) / (98.5 / 5))
    assert b.account.balance == pytest.approx(10_000 + 11.5 - fees)
    assert b.position("BTCUSDT").is_flat and b.account.margin_used == 0


def test_flip_closes_the_trip_and_opens_the_other_side():
    b = broker(slippage_bps=0, fees=Fees(0, 0))
    b.submit(Order("BTCUSDT", OrderSide.BUY, 1.0))  # long 1 @ 100
    b.update_book("BTCUSDT", Book([(104.0, 10.0)], [(105.0, 10.0)]), 5)
    b.submit(Order("BTCUSDT", OrderSide.SELL, 3.0))  # close 1 @ 104, short 2 @ 104
    (trip,) = b.take_trades()
    assert trip.pnl == pytest.approx(4.0) and trip.side == "long"
    pos = b.position("BTCUSDT")
    assert pos.qty == -2.0 and pos.entry_price == 104.0


def test_reduce_only_never_increases():
    b = broker()
    order = b.submit(Order("BTCUSDT", OrderSide.SELL, 1.0, reduce_only=True))
    assert order.status is OrderStatus.REJECTED
    assert order.reject_reason == "reduce_only_would_increase"


def test_insufficient_margin_is_rejected():
    b = broker(balance=50.0)
    order = b.submit(Order("BTCUSDT", OrderSide.BUY, 1.0))  # needs ~100 at 1x
    assert order.status is OrderStatus.REJECTED and order.reject_reason == "insufficient_margin"
    assert b.account.balance == 50.0


def test_funding_is_settled_at_the_funding_time_from_the_real_rate():
    b = broker(slippage_bps=0, fees=Fees(0, 0))
    b.submit(Order("BTCUSDT", OrderSide.BUY, 2.0))  # long 1 @ 100 + 1 @ 101
    b.on_mark("BTCUSDT", 100, 100.0, funding_rate=0.0001, next_funding_ts=1_000)
    b.on_mark("BTCUSDT", 900, 102.0, funding_rate=0.0003, next_funding_ts=1_000)
    assert b.position("BTCUSDT").funding == 0.0
    b.on_mark("BTCUSDT", 1_000, 103.0, funding_rate=-0.0002, next_funding_ts=2_000)
    # settled at t=1000 with the rate announced for it (0.0003) and the mark before it (102)
    assert b.position("BTCUSDT").funding == pytest.approx(2 * 102.0 * 0.0003)
    assert b.account.balance == pytest.approx(10_000 - 2 * 102.0 * 0.0003)


def test_short_receives_positive_funding():
    b = broker(slippage_bps=0, fees=Fees(0, 0))
    b.submit(Order("BTCUSDT", OrderSide.SELL, 1.0))
    paid = b.settle_funding("BTCUSDT", 5, 0.0001, mark=99.0)
    assert paid == pytest.approx(-0.0099)
    assert b.account.balance == pytest.approx(10_000 + 0.0099)


def test_liquidation_when_the_mark_crosses_the_formula_price():
    b = broker(slippage_bps=0, fees=Fees(0, 0))
    b.submit(Order("BTCUSDT", OrderSide.BUY, 1.0, leverage=10))  # long 1 @ 100, margin 10
    lp = b.liquidation_price("BTCUSDT")
    # (WB + cum - Q*EP) / (Q*mmr - Q) = (10 - 100) / (0.004 - 1)
    assert lp == pytest.approx(90 / 0.996)
    b.on_mark("BTCUSDT", 10, 90.4)
    assert not b.position("BTCUSDT").is_flat
    b.on_mark("BTCUSDT", 11, 90.3)
    assert b.position("BTCUSDT").is_flat and b.liquidations == 1
    fills = b.take_fills()
    assert fills[-1].liquidation and fills[-1].price == pytest.approx(lp)
    (trip,) = b.take_trades()
    assert trip.liquidated and trip.pnl == pytest.approx(-10.0)  # the whole isolated margin
    assert b.account.balance == pytest.approx(10_000 - 10.0)


def test_liquidation_cancels_open_orders():
    b = broker(fees=Fees(0, 0), slippage_bps=0)
    b.submit(Order("BTCUSDT", OrderSide.SELL, 1.0, leverage=20))  # short @ 99
    b.submit(Order("BTCUSDT", OrderSide.BUY, 1.0, OrderType.LIMIT, price=95.0))
    b.on_mark("BTCUSDT", 5, 200.0)
    assert b.position("BTCUSDT").is_flat and b.open_orders() == []


@given(
    entry=st.floats(1, 1e6),
    lev=st.floats(1.01, 125),
    long=st.booleans(),
)
def test_leverage_form_equals_the_margin_form(entry, lev, long):
    qty = 1.0 if long else -1.0
    mmr = bracket_for(entry, BTCUSDT_BRACKETS).mmr
    general = liquidation_price(qty=qty, entry_price=entry, margin=entry / lev, mmr=mmr)
    assert liquidation_price_for_leverage(entry, lev, long=long, mmr=mmr) == pytest.approx(
        general, rel=1e-9
    )


def test_leverage_form_works_on_polars_expressions():
    frame = pl.DataFrame({"p": [100.0, 200.0]}).with_columns(
        liq=liquidation_price_for_leverage(pl.col("p"), 10, long=True, mmr=0.004)
    )
    assert frame["liq"].to_list() == pytest.approx([90 / 0.996, 180 / 0.996])


def test_brackets_keep_maintenance_margin_continuous():
    for low, high in itertools.pairwise(BTCUSDT_BRACKETS):
        at = high.floor
        assert at * low.mmr - low.cum == pytest.approx(at * high.mmr - high.cum)


def test_parse_fees():
    assert parse_fees("0.02%,0.05%") == Fees(0.0002, 0.0005)
    assert parse_fees("-0.0001,0.0004") == Fees(-0.0001, 0.0004)
    for bad in ("1,2", "0.02%", "a,b"):
        with pytest.raises(Exception, match="fees"):
            parse_fees(bad)


class BuyOnceThenSellOnTimer(BaseStrategy):
    timer_ms = 1_000

    def __init__(self):
        self.fills = []
        self.timers = []
        self.stopped = False

    def on_event(self, event, ctx):
        if isinstance(event, BookTop) and ctx.position("BTCUSDT").is_flat and not self.fills:
            ctx.market_order("BTCUSDT", OrderSide.BUY, 1.0, tag="entry")

    def on_fill(self, fill, ctx):
        self.fills.append(fill)

    def on_timer(self, ts, ctx):
        self.timers.append(ts)
        if not ctx.position("BTCUSDT").is_flat:
            ctx.market_order("BTCUSDT", OrderSide.SELL, 1.0, reduce_only=True, tag="time")

    def on_stop(self, ctx):
        self.stopped = True


def test_engine_drives_strategies_in_event_time_with_their_own_brokers():
    engine = Engine()
    strategies = [BuyOnceThenSellOnTimer(), BuyOnceThenSellOnTimer()]
    brokers = [SimBroker(1_000.0, slippage_bps=0), SimBroker(5_000.0, slippage_bps=0)]
    for i, (s, b) in enumerate(zip(strategies, brokers, strict=True)):
        engine.add(s, b, name=f"m{i}")
    events = [
        BookTop("binance", "BTCUSDT", 1_000, 99.0, 5.0, 100.0, 5.0),
        AggTrade("binance", "BTCUSDT", 1, 1_500, 100.0, 0.1, False),
        BookTop("binance", "BTCUSDT", 2_500, 109.0, 5.0, 110.0, 5.0),
    ]
    engine.run(events)
    engine.stop()
    for s in strategies:
        assert [f.tag for f in s.fills] == ["entry", "time"]
        assert s.timers == [2_000]
        assert s.fills[0].ts == 1_000 and s.fills[1].ts == 2_000
        # the timer at 2000 sold into the book as it was then (bid 99)
        assert s.fills[1].price == 99.0
        assert s.stopped
    # separate balances, same decisions
    assert brokers[0].account.balance == pytest.approx(1_000 - 1 - 100 * 0.0005 - 99 * 0.0005)
    assert brokers[1].account.balance == pytest.approx(5_000 - 1 - 100 * 0.0005 - 99 * 0.0005)


def test_top_of_book_view():
    top = TopOfBook(1.0, 2.0, 3.0, 0.0)
    assert top.levels("bid", 5) == [(1.0, 2.0)] and top.levels("ask", 5) == []
    assert math.isfinite(top.bid_price)


def test_engine_book_view_merges_book_ticker_over_depth_snapshots_and_marks_liquidate():
    from liqcli.core.events import BookSnapshot, MarkPrice

    engine = Engine()
    broker = SimBroker(1_000.0, slippage_bps=0, fees=Fees(0, 0))

    class Long(BaseStrategy):
        sent = False

        def on_event(self, event, ctx):
            if isinstance(event, BookTop) and not self.sent:
                self.sent = True
                ctx.market_order("BTCUSDT", OrderSide.BUY, 2.5, leverage=10)

    engine.add(Long(), broker)
    snap = BookSnapshot(
        "binance", "BTCUSDT", 1_000, 10, ((99.0, 1.0), (98.0, 2.0)), ((100.0, 1.0), (101.0, 2.0))
    )
    engine.step(snap)
    view = engine.market.book("BTCUSDT")
    assert view.levels("ask", 5) == [(100.0, 1.0), (101.0, 2.0)]
    # a fresher best ask (bookTicker) sits on top; deeper snapshot levels beyond it are kept
    engine.step(BookTop("binance", "BTCUSDT", 1_100, 99.5, 0.5, 100.5, 1.0, 11))
    assert view.levels("ask", 5) == [(100.5, 1.0), (101.0, 2.0)]
    assert view.levels("bid", 5) == [(99.5, 0.5), (99.0, 1.0), (98.0, 2.0)]
    # the market buy walked it: 1 @ 100.5 + 1.5 @ 101
    pos = broker.position("BTCUSDT")
    assert pos.qty == 2.5 and pos.entry_price == pytest.approx((100.5 + 1.5 * 101) / 2.5)
    lp = broker.liquidation_price("BTCUSDT")
    engine.step(MarkPrice("binance", "BTCUSDT", 2_000, lp + 0.01, lp, 0.0001, 3_000))
    assert not pos.is_flat
    engine.step(MarkPrice("binance", "BTCUSDT", 2_500, lp - 0.01, lp, 0.0001, 3_000))
    assert broker.position("BTCUSDT").is_flat and broker.liquidations == 1


def test_liquidation_price_matches_freqtrades_worked_binance_example():
    # TRADING-VENUES.md §5.3: 0.1 BTC @ 60,000, 10x, stake 600, first bracket (0.4 %, cum 0)
    assert liquidation_price(qty=0.1, entry_price=60_000, margin=600, mmr=0.004) == pytest.approx(
        54_216.87, abs=0.01
    )
    assert liquidation_price(qty=-0.1, entry_price=60_000, margin=600, mmr=0.004) == pytest.approx(
        65_737.05, abs=0.01
    )


def test_a_late_mark_naming_the_funding_time_just_settled_does_not_charge_it_twice():
    # The venue's mark stream names the new funding time a moment after the settlement: a mark
    # stamped past 1,000 that still says next_funding_ts=1,000 is not a second funding time.
    b = broker(slippage_bps=0, fees=Fees(0, 0))
    b.submit(Order("BTCUSDT", OrderSide.BUY, 2.0))
    b.on_mark("BTCUSDT", 900, 102.0, funding_rate=0.0003, next_funding_ts=1_000)
    b.on_mark("BTCUSDT", 1_000, 103.0, funding_rate=0.0003, next_funding_ts=1_000)  # late frame
    once = 2 * 102.0 * 0.0003
    assert b.position("BTCUSDT").funding == pytest.approx(once)
    b.on_mark("BTCUSDT", 1_500, 103.0, funding_rate=0.0001, next_funding_ts=2_000)
    b.on_trade("BTCUSDT", 1_600, 103.0, 0.1, False)
    assert b.position("BTCUSDT").funding == pytest.approx(once)  # not charged again
    b.on_mark("BTCUSDT", 2_000, 104.0, funding_rate=0.0001, next_funding_ts=3_000)
    assert b.position("BTCUSDT").funding == pytest.approx(once + 2 * 103.0 * 0.0001)
