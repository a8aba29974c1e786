"""SimBroker caps leverage by position notional, as Binance does with its brackets.

From the BTCUSDT table in ``costs`` (floor, mmr, max leverage): (0, 0.4 %, 125x),
(50,000, 0.5 %, 100x), (500,000, 1 %, 50x), (8,000,000, 2.5 %, 20x), ... A bracket applies from
its floor up, so leverage L is allowed below the floor of the first bracket whose max is under L:
125x below 50,000 notional, 100x (and 60x) below 500,000, 50x below 8,000,000, 1x always.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.errors import LiqError
from liqcli.trading.bars import BarSettings, run_vectorised
from liqcli.trading.costs import BTCUSDT_BRACKETS, Fees, make_brackets, notional_cap
from liqcli.trading.model import Order, OrderSide, OrderStatus, OrderType
from liqcli.trading.sim import SimBroker, TopOfBook
from liqcli.trading.strategies.sma_cross import SmaCross

REFUSED = "leverage_exceeds_bracket"


def broker(symbol="BTCUSDT", price=50_000.0, balance=1_000_000.0, **kw) -> SimBroker:
    b = SimBroker(balance, fees=Fees(0, 0), slippage_bps=0, **kw)
    b.update_book(symbol, TopOfBook(price, 1e9, price, 1e9), 1)
    return b


def buy(b, qty, lev, symbol="BTCUSDT", **kw):
    return b.submit(Order(symbol, OrderSide.BUY, qty, leverage=lev, **kw))


def sell(b, qty, lev=None, symbol="BTCUSDT", **kw):
    return b.submit(Order(symbol, OrderSide.SELL, qty, leverage=lev, **kw))


def test_the_notional_caps_by_hand_from_the_bracket_table():
    caps = {125: 50_000, 101: 50_000, 100: 500_000, 60: 500_000, 50: 8_000_000, 20: 50_000_000}
    for lev, cap in caps.items():
        assert notional_cap(lev, BTCUSDT_BRACKETS) == cap, lev
    assert notional_cap(5, BTCUSDT_BRACKETS) == 100_000_000
    assert notional_cap(1, BTCUSDT_BRACKETS) == float("inf")


@pytest.mark.parametrize(
    ("lev", "below", "at"),
    [(125, 0.99998, 1.0), (100, 9.99998, 10.0), (60, 9.99998, 10.0), (50, 159.99998, 160.0)],
)
def test_an_order_at_the_cap_is_refused_one_just_below_fills(lev, below, at):
    # at 50,000 a qty of 1.0 is 50,000 notional (125x's cap), 10 is 500,000, 160 is 8,000,000
    ok = buy(broker(), below, lev)
    assert ok.status is OrderStatus.FILLED and ok.reject_reason == ""
    b = broker()
    refused = buy(b, at, lev)
    assert refused.status is OrderStatus.REJECTED and refused.reject_reason == REFUSED
    assert b.position("BTCUSDT").qty == 0 and b.account.balance == 1_000_000 and not b.fills


def test_the_resulting_position_counts_adding_flipping_and_reducing():
    b = broker()
    assert buy(b, 0.9, 125).status is OrderStatus.FILLED  # 45,000 at 125x
    # adding 0.1 makes 50,000 at the position's 125x (the order's leverage is not used)
    assert buy(b, 0.1, 10).reject_reason == REFUSED
    assert buy(b, 0.09, None).status is OrderStatus.FILLED  # 49,500
    # a flip to a short of 1.0 (50,000) at the order's 125x is refused; at 100x it fills
    assert sell(b, 1.99, 125).reject_reason == REFUSED
    assert sell(b, 1.99, 100).status is OrderStatus.FILLED
    assert b.position("BTCUSDT").qty == pytest.approx(-1.0)
    assert b.position("BTCUSDT").leverage == 100
    # reducing is never refused, with or without reduce_only
    b2 = broker()
    assert buy(b2, 9.9, 100).status is OrderStatus.FILLED  # 495,000 at 100x
    b2.update_book("BTCUSDT", TopOfBook(60_000, 1e9, 60_000, 1e9), 2)  # now 594,000 > 500,000
    assert sell(b2, 0.5).status is OrderStatus.FILLED
    assert sell(b2, 0.5, reduce_only=True).status is OrderStatus.FILLED


def test_the_price_is_the_limit_price_or_the_market_reference():
    b = broker()
    # a resting limit buy at 40,000: 1.2 is 48,000 there (fine), 1.25 is 50,000 (refused)
    assert buy(b, 1.25, 125, type=OrderType.LIMIT, price=40_000).reject_reason == REFUSED
    assert buy(b, 1.2, 125, type=OrderType.LIMIT, price=40_000).status is OrderStatus.NEW
    # no book: the last trade, else the mark
    c = SimBroker(1e6, fees=Fees(0, 0), slippage_bps=0)
    c.on_mark("BTCUSDT", 1, 50_000.0)
    assert buy(c, 1.0, 125).reject_reason == REFUSED
    c.on_trade("BTCUSDT", 2, 40_000.0, 0.1, False)
    assert buy(c, 1.0, 125).status is OrderStatus.FILLED  # 40,000 at the last trade


def test_only_symbols_with_known_brackets_are_capped_unless_the_broker_has_its_own():
    b = broker("ETHUSDT", 2_000.0)
    assert buy(b, 500, 125, symbol="ETHUSDT").status is OrderStatus.FILLED  # 1,000,000
    own = make_brackets([(0, 0.01, 20), (10_000, 0.02, 10)])
    c = broker("ETHUSDT", 2_000.0, brackets=own)
    assert buy(c, 5, 20, symbol="ETHUSDT").reject_reason == REFUSED  # 10,000 at 20x
    assert buy(c, 5, 10, symbol="ETHUSDT").status is OrderStatus.FILLED
    d = broker("ETHUSDT", 2_000.0, brackets=own)
    assert buy(d, 5, 20, symbol="ETHUSDT").reject_reason == REFUSED
    d.brackets = BTCUSDT_BRACKETS  # replaced: the cached caps follow (ETHUSDT: none known)
    assert buy(d, 5, 20, symbol="ETHUSDT").status is OrderStatus.FILLED


def _bars(n=400):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(3)
    close = 50_000 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    return pl.DataFrame(
        {
            "ts": 1_767_225_600_000 + 60_000 * np.arange(n),
            "open": open_,
            "high": np.maximum(open_, close) * 1.0005,
            "low": np.minimum(open_, close) * 0.9995,
            "close": close,
            "volume": np.ones(n),
        }
    )


def test_the_bar_backtest_says_when_the_whole_equity_at_its_leverage_is_refused():
    frame = _bars()
    # 10,000 at 100x is ~1,000,000 notional, above 100x's 500,000: Binance refuses the entry
    with pytest.raises(LiqError, match=r"BTCUSDT at 100x: .*below 500,000 \(leverage_exceeds"):
        run_vectorised(frame, SmaCross(5, 20), BarSettings(leverage=100, fees=Fees(0, 0)))
    # 1,000 at 100x (~100,000) trades as before
    ok = run_vectorised(frame, SmaCross(5, 20), BarSettings(capital=1_000, leverage=100))
    assert ok.trades


def test_the_command_exits_1_with_one_line(tmp_path):
    import polars as pl

    from liqcli.store.parquet import Store

    rows = _bars().with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        exchange=pl.lit("binance"),
        symbol=pl.lit("BTCUSDT"),
        interval=pl.lit("1m"),
        quote_volume=pl.lit(1.0),
        trades=pl.lit(1, pl.Int64),
        taker_buy_volume=pl.lit(0.5),
        taker_buy_quote_volume=pl.lit(0.5),
    )
    Store(tmp_path).write("klines", rows)
    args = ["--data-dir", str(tmp_path), "backtest", "sma_cross", "BTCUSDT", "--start",
            "2026-01-01", "--end", "2026-01-02", "--funding", "off", "-f", "json"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--leverage", "125"])
    assert result.exit_code == 1
    assert "liq: error: BTCUSDT at 125x" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "backtest_runs").exists()  # nothing stored
    fine = CliRunner().invoke(app, [*args, "--leverage", "2"])
    assert fine.exit_code == 0, fine.output
    assert json.loads(fine.stdout)["metrics"]["trades"] > 0


def test_a_seed_mode_sized_past_the_bracket_records_the_block_and_why():
    from liqcli.analytics.orderflow import OrderFlow
    from liqcli.core.events import AggTrade, BookTop
    from liqcli.trading.engine import Engine
    from liqcli.trading.strategies.seed import SeedMode, order_flow_observer

    def run(balance):
        records: list[dict] = []
        flow = OrderFlow(vpin_bucket_usd=1_000.0)
        engine = Engine(emit=records.append)
        engine.observers.append(order_flow_observer("BTCUSDT", flow))
        broker = SimBroker(balance)
        engine.add(SeedMode(0, "BTCUSDT", flow), broker, name="0")
        engine.run(
            [  # test_seed_modes' toxic flow: mode 0 goes long at 5x with 80 % of the balance
                BookTop("binance", "BTCUSDT", 1_000, 100.0, 5.0, 100.1, 5.0),
                AggTrade("binance", "BTCUSDT", 0, 1_100, 100.05, 200.0, False),
                BookTop("binance", "BTCUSDT", 1_200, 100.0, 9.0, 100.1, 1.0),
            ]
        )
        return broker, records

    # 24M x 0.8 x 5 / 1.005 = 95.5M notional at the ask, below 5x's cap (100M): it trades
    broker, records = run(24_000_000.0)
    assert broker.position("BTCUSDT").leverage == 5 and not broker.position("BTCUSDT").is_flat
    # 30M: 120M / 1.005 = 119,402,985 notional at 5x: refused, and the mode says why (block record, its stats)
    broker, records = run(30_000_000.0)
    assert broker.position("BTCUSDT").is_flat
    (order,) = [r for r in records if r["type"] == "order"]
    (block,) = [r for r in records if r["type"] == "block"]
    assert order["status"] == "rejected"
    assert block["reasons"] == ["leverage 5x above its bracket for 119,402,985 notional"]


def test_the_cascade_mode_sized_past_the_bracket_records_the_block_too():
    from liqcli.analytics.orderflow import OrderFlow
    from liqcli.trading.engine import Engine
    from liqcli.trading.strategies.cascade_mode import CascadeMode
    from liqcli.trading.strategies.seed import order_flow_observer
    from tests.test_paper_cascade import TAPE

    def run(balance):
        records: list[dict] = []
        flow = OrderFlow(vpin_bucket_usd=1e12)
        engine = Engine(emit=records.append)
        engine.observers.append(order_flow_observer("BTCUSDT", flow))
        broker = SimBroker(balance)
        engine.add(CascadeMode("BTCUSDT", flow), broker, name="cascade")
        engine.run(TAPE[:4])  # test_paper_cascade: follow_short at 3x with 30 % of the balance
        return broker, records

    # 300M x 0.3 x 3 / 1.003 = 269M at the bid, below 3x's cap (300M): the short opens
    assert run(300_000_000.0)[0].position("BTCUSDT").qty < 0
    # 400M: 360M / 1.003 = 358,923,230 at 3x: refused, and the block says why
    broker, records = run(400_000_000.0)
    assert broker.position("BTCUSDT").is_flat
    (block,) = [r for r in records if r["type"] == "block"]
    assert block["reasons"] == ["leverage 3x above its bracket for 358,923,230 notional"]


def test_resting_orders_that_fill_later_cannot_take_the_position_past_the_cap():
    # Each resting buy passes the check on its own (flat position), but together they would make
    # 60,000 at 125x: the fill that would cross the cap is refused at fill time and cancelled.
    b = broker()
    first = buy(b, 0.6, 125, type=OrderType.LIMIT, price=49_000, post_only=True)
    second = buy(b, 0.6, 125, type=OrderType.LIMIT, price=49_000, post_only=True)
    assert first.status is OrderStatus.NEW and second.status is OrderStatus.NEW
    b.on_trade("BTCUSDT", 2, 48_000.0, 5.0, True)  # prints through both
    pos = b.position("BTCUSDT")
    assert pos.qty == pytest.approx(0.6) and pos.notional < 50_000
    assert first.status is OrderStatus.FILLED
    assert second.status is OrderStatus.REJECTED and second.reject_reason == REFUSED
    assert not b.open_orders("BTCUSDT")
    # a resting order that stays inside the cap still fills
    c = broker()
    buy(c, 0.5, 125, type=OrderType.LIMIT, price=49_000)
    buy(c, 0.5, 125, type=OrderType.LIMIT, price=49_000)
    c.on_trade("BTCUSDT", 2, 48_000.0, 5.0, True)
    assert c.position("BTCUSDT").qty == pytest.approx(1.0)  # 49,000: below the cap
