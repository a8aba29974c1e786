"""The market-making strategy on the SimBroker, driven by the Engine in event time."""

from __future__ import annotations

import pytest

from liqcli.core.events import AggTrade, BookTop
from liqcli.errors import UsageError
from liqcli.trading.costs import Fees
from liqcli.trading.engine import Engine
from liqcli.trading.model import Order, OrderSide
from liqcli.trading.sim import SimBroker, TopOfBook
from liqcli.trading.strategies.market_maker import MarketMaker, MarketRules, MMParams

SYM = "SOL_USDC_PERP"
RULES = MarketRules(tick=0.01, step=0.01, min_qty=0.01)


def top(ts, bid, ask, bq=10.0, aq=10.0):
    return BookTop("backpack", SYM, ts, bid, bq, ask, aq)


def sell_print(ts, price, qty):
    return AggTrade("backpack", SYM, ts, ts, price, qty, True)  # a seller hits bids


def buy_print(ts, price, qty):
    return AggTrade("backpack", SYM, ts, ts, price, qty, False)


def setup(**kw):
    params = MMParams(SYM, **{"spread": 0.2, "quantity": 0.5, "interval_s": 1.0, **kw})
    mm = MarketMaker(params, RULES)
    broker = SimBroker(10_000.0, fees=Fees(0.0002, 0.0005), slippage_bps=0, default_leverage=5)
    records = []
    engine = Engine(emit=records.append)
    engine.add(mm, broker, name="mm")
    return mm, broker, engine, records


def quotes(broker):
    return sorted((o.side.value, o.price, o.qty) for o in broker.open_orders(SYM))


def test_quotes_at_the_spread_with_levels_rounded_to_tick_and_step():
    _mm, broker, engine, _ = setup(max_orders=2, quantity=0.123)
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))  # first timer
    # mid 100, half-spread 0.1: 99.90 / 100.10, then 99.80 / 100.20; size 0.123 -> 0.12
    assert quotes(broker) == [
        ("buy", 99.8, 0.12),
        ("buy", 99.9, 0.12),
        ("sell", 100.1, 0.12),
        ("sell", 100.2, 0.12),
    ]


def test_below_min_size_is_skipped():
    mm = MarketMaker(MMParams(SYM, spread=0.2, quantity=0.004), RULES)
    broker = SimBroker(1_000.0)
    engine = Engine()
    engine.add(mm, broker)
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(6_000, 99.99, 100.01))
    assert broker.open_orders(SYM) == []


def test_orders_move_only_past_the_refresh_tolerance():
    mm, broker, engine, _ = setup(refresh_tolerance_bps=5)
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    first = {o.id for o in broker.open_orders(SYM)}
    submits = mm.stats.submits
    engine.step(top(1_500, 100.01, 100.03))  # mid +2 bps: kept
    engine.step(top(2_000, 100.01, 100.03))  # timer: still kept, no request
    assert {o.id for o in broker.open_orders(SYM)} == first and mm.stats.submits == submits
    engine.step(top(2_200, 100.09, 100.11))  # mid +10 bps: re-quoted at once
    # mid 100.10, half-spread 0.1001: 99.9999 -> 99.99 (bids down), 100.2001 -> 100.21 (asks up)
    assert quotes(broker) == [("buy", 99.99, 0.5), ("sell", 100.21, 0.5)]
    assert mm.stats.cancels == 2


def test_old_orders_are_refreshed_after_max_order_age():
    _mm, broker, engine, _ = setup(max_order_age_s=3)
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    first = {o.id for o in broker.open_orders(SYM)}
    engine.step(top(3_000, 99.99, 100.01))
    assert {o.id for o in broker.open_orders(SYM)} == first
    engine.step(top(4_000, 99.99, 100.01))  # 3 s old
    assert not ({o.id for o in broker.open_orders(SYM)} & first)


def test_inventory_skew_is_a_fraction_of_the_spread_and_never_crosses():
    _mm, broker, engine, _ = setup(
        inventory_skew=1.0, max_position=1.0, position_threshold=5, target_position=1
    )
    broker.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker.submit(Order(SYM, OrderSide.BUY, 0.5))  # long 0.5 of max 1: skew -0.5 x half-spread
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    # bid 99.90 - 0.05 = 99.85; ask 100.10 - 0.05 = 100.05
    assert quotes(broker) == [("buy", 99.85, 0.5), ("sell", 100.05, 0.5)]
    _mm2, broker2, engine2, _ = setup(
        inventory_skew=1.0, spread=4.0, max_position=1.0, position_threshold=5, target_position=1
    )
    broker2.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker2.submit(
        Order(SYM, OrderSide.BUY, 1.0)
    )  # full skew: -1 x 2.0 would put the ask at 100.00
    engine2.step(top(0, 99.99, 100.01))
    engine2.step(top(1_000, 99.99, 100.01))
    asks = [p for s, p, _ in quotes(broker2) if s == "sell"]
    assert asks == [100.0]  # clamped to one tick over the best bid, so never crossing


def test_position_table_three_cases():
    base = dict(target_position=0.0, position_threshold=0.5, max_position=2.0)
    # inside target + threshold: quotes only
    mm, broker, engine, _ = setup(**base)
    broker.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker.submit(Order(SYM, OrderSide.BUY, 0.4))
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    assert [o.tag for o in broker.open_orders(SYM)] == ["quote", "quote"]
    # above it: a reduce-only post-only order for the excess (1.2 - 0.5 = 0.7) at our best ask
    mm, broker, engine, _ = setup(**base)
    broker.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker.submit(Order(SYM, OrderSide.BUY, 1.2))
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    (reduce,) = [o for o in broker.open_orders(SYM) if o.tag == "reduce"]
    assert (reduce.side, reduce.qty, reduce.price, reduce.reduce_only, reduce.post_only) == (
        OrderSide.SELL,
        pytest.approx(0.7),
        100.01,
        True,
        True,
    )
    # above max: a reduce-only market order closes the excess over max (2.6 - 2.0 = 0.6)
    mm, broker, engine, _ = setup(**base)
    broker.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker.submit(Order(SYM, OrderSide.BUY, 2.6, leverage=5))
    broker.take_fills()
    fills = []
    mm.on_fill = lambda fill, ctx: fills.append(fill)
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    (closing,) = [f for f in fills if f.tag == "reduce_max"]
    assert (closing.side, closing.qty, closing.price, closing.liquidity) == (
        OrderSide.SELL,
        pytest.approx(0.6),
        99.99,
        "taker",
    )
    assert broker.position(SYM).qty == pytest.approx(2.0)


def test_max_position_holds_under_a_burst_of_fills():
    _mm, broker, engine, _ = setup(
        quantity=0.4, max_orders=3, max_position=1.0, position_threshold=5, target_position=1
    )
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    bids = [(p, q) for s, p, q in quotes(broker) if s == "buy"]
    assert sum(q for _, q in bids) == pytest.approx(1.0)  # 0.4 + 0.4 + 0.2: room for exactly max
    engine.step(sell_print(1_100, 99.0, 50.0))  # a sweep through every bid
    assert broker.position(SYM).qty == pytest.approx(1.0)
    engine.step(top(2_000, 99.0, 99.02))
    engine.step(sell_print(2_100, 98.0, 50.0))
    assert broker.position(SYM).qty <= 1.0 + 1e-9
    assert not [o for o in broker.open_orders(SYM) if o.side is OrderSide.BUY]


def test_stop_loss_and_take_profit_close_at_market_and_continue():
    mm, broker, engine, records = setup(
        stop_loss=-0.3, position_threshold=5, target_position=1, max_position=5
    )
    broker.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker.submit(Order(SYM, OrderSide.BUY, 1.0))  # long 1 @ 100.01
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.60, 99.62))  # mid 99.61: unrealised -0.40 <= -0.3
    assert broker.position(SYM).is_flat and mm.stats.stops == 1
    assert any(r["type"] == "order" and r["tag"] == "close" for r in records)
    engine.step(top(2_000, 99.60, 99.62))
    assert quotes(broker)  # quoting again
    mm, broker, engine, _ = setup(
        take_profit=0.5, position_threshold=5, target_position=1, max_position=5
    )
    broker.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker.submit(Order(SYM, OrderSide.BUY, 1.0))
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 100.60, 100.62))
    assert broker.position(SYM).is_flat and mm.stats.stops == 1


def test_post_only_rejection_is_requoted_one_tick_away():
    mm, broker, engine, _ = setup(spread=0.01)  # half-spread 0.005: quotes at the touch
    engine.step(top(0, 99.99, 100.01))
    # a race: the venue's best ask dropped to 99.99 before our view saw it, so our 99.99 bid
    # would take liquidity and the post-only order is rejected
    broker.update_book(SYM, TopOfBook(99.98, 10, 99.99, 10), 900)
    engine.step(top(1_000, 99.99, 100.01))  # our view is older than the venue's
    assert mm.stats.post_only_rejects == 1
    bids = [p for s, p, _ in quotes(broker) if s == "buy"]
    assert bids == [99.98]  # one tick further


def test_kill_switch_and_stale_or_crossed_books():
    mm, broker, engine, _records = setup(
        max_loss=0.2, position_threshold=5, target_position=1, max_position=5
    )
    broker.update_book(SYM, TopOfBook(99.99, 10, 100.01, 10), 0)
    broker.submit(Order(SYM, OrderSide.BUY, 1.0))
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.70, 99.72))
    assert mm.stats.halted.startswith("max loss") and broker.open_orders(SYM) == []
    assert broker.position(SYM).is_flat
    engine.step(top(5_000, 99.70, 99.72))
    assert broker.open_orders(SYM) == []  # halted for good
    # a crossed book cancels and pauses; a fresh one resumes
    mm, broker, engine, _ = setup()
    engine.step(top(0, 99.99, 100.01))
    engine.step(top(1_000, 99.99, 100.01))
    assert quotes(broker)
    engine.step(top(1_500, 100.02, 100.01))
    engine.step(top(2_000, 100.02, 100.01))
    assert broker.open_orders(SYM) == [] and mm.stats.paused.startswith("crossed")
    engine.step(top(2_500, 99.99, 100.01))
    engine.step(top(3_000, 99.99, 100.01))
    assert quotes(broker) and mm.stats.paused == ""
    # stale: no book update for longer than stale_book_s
    engine.step(sell_print(20_000, 50.0, 0.0001))  # only a trade; the book is 17 s old
    assert broker.open_orders(SYM) == [] and mm.stats.paused.startswith("stale")


def test_bad_parameters_are_usage_errors():
    for bad in (
        dict(spread=0),
        dict(quantity=-1),
        dict(inventory_skew=2),
        dict(stop_loss=5),
        dict(max_orders=0),
    ):
        with pytest.raises(UsageError):
            MarketMaker(MMParams(SYM, **{"spread": 0.2, "quantity": 1, **bad}), RULES)
