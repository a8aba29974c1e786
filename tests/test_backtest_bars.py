"""Bar backtests: sma_cross equals an independent loop written here; funding, liquidation, no
look-ahead, and the vectorised driver equals the bar-by-bar Engine."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liqcli.analytics import metrics
from liqcli.trading.bars import BarSettings, run_loop, run_vectorised
from liqcli.trading.costs import Fees, liquidation_price
from liqcli.trading.strategies.sma_cross import SmaCross

MIN = 60_000


def bars(closes, start=1_700_000_000_000, step=MIN, spread=0.002):
    closes = np.asarray(closes, dtype=float)
    opens = np.concatenate(([closes[0]], closes[:-1]))
    hi = np.maximum(opens, closes) * (1 + spread)
    lo = np.minimum(opens, closes) * (1 - spread)
    return pl.DataFrame(
        {
            "ts": start + step * np.arange(len(closes)),
            "open": opens,
            "high": hi,
            "low": lo,
            "close": closes,
            "volume": np.ones(len(closes)),
        }
    )


def walk(n, seed=1, vol=0.003):
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0, vol, n)))


def independent_loop(frame, fast, slow, capital, fee, leverage=1.0):
    """The spec, written out plainly: decide at close i, fill at open i+1, whole equity."""
    o, c = frame["open"].to_list(), frame["close"].to_list()
    balance, qty, entry = capital, 0.0, 0.0
    trades, want = [], 0
    for i in range(len(c)):
        if i > 0 and want != (0 if qty == 0 else (1 if qty > 0 else -1)):
            price = o[i]
            if qty:
                pnl = qty * (price - entry)
                close_fee = abs(qty) * price * fee
                balance += pnl - close_fee
                trades[-1]["pnl"] += pnl - close_fee
                trades[-1]["exit"] = price
                qty = 0.0
            if want:
                q = balance * leverage / (price * (1 + leverage * fee)) * (1 - 1e-12)
                open_fee = q * price * fee
                balance -= open_fee
                qty, entry = q * want, price
                trades.append({"side": want, "entry": price, "pnl": -open_fee, "exit": None})
        if i + 1 >= slow:
            f = sum(c[i + 1 - fast : i + 1]) / fast
            s = sum(c[i + 1 - slow : i + 1]) / slow
            if f > s:
                want = 1
            elif f < s:
                want = -1
    equity = balance + qty * (c[-1] - entry)
    return trades, equity


@pytest.mark.parametrize("fee", [0.0, 0.0005])
def test_sma_cross_equals_an_independent_loop(fee):
    frame = bars(walk(3_000, seed=7))
    result = run_vectorised(
        frame, SmaCross(20, 50), BarSettings(capital=10_000, fees=Fees(0.0, fee))
    )
    expected, final = independent_loop(frame, 20, 50, 10_000, fee)
    assert len(result.trades) == len([t for t in expected if t["exit"] is not None])
    for got, want in zip(result.trades, expected, strict=False):
        assert got.side == ("long" if want["side"] > 0 else "short")
        assert got.entry_price == pytest.approx(want["entry"])
        assert got.exit_price == pytest.approx(want["exit"])
        assert got.pnl == pytest.approx(want["pnl"], rel=1e-9, abs=1e-9)
    assert result.equity[-1] == pytest.approx(final, rel=1e-9)
    assert len(result.trades) > 20


def test_the_vectorised_driver_equals_the_bar_by_bar_engine():
    frame = bars(walk(1_500, seed=3, vol=0.01))
    funding = pl.DataFrame(
        {
            "ts": [frame["ts"][k] + 17 for k in range(0, 1_500, 480)],
            "funding_rate": [0.0001, -0.0002, 0.0003, 0.0001],
            "mark_price": [None, 101.0, None, 99.0],
        }
    )
    s = BarSettings(capital=1_000, leverage=25, fees=Fees(0.0002, 0.0005), slippage_bps=1)
    fast = run_vectorised(frame, SmaCross(10, 30), s, funding=funding)
    assert fast.liquidations >= 10  # the comparison covers liquidations and re-entries
    slow = run_loop(frame, SmaCross(10, 30), s, funding=funding)
    assert [(t.entry_ts, t.exit_ts, t.side, t.liquidated) for t in fast.trades] == [
        (t.entry_ts, t.exit_ts, t.side, t.liquidated) for t in slow.trades
    ]
    assert [t.pnl for t in fast.trades] == pytest.approx([t.pnl for t in slow.trades])
    np.testing.assert_allclose(fast.equity, slow.equity, rtol=1e-9)
    assert fast.liquidations == slow.liquidations
    assert fast.funding == pytest.approx(slow.funding)


def test_funding_is_charged_at_the_settlement_times():
    # a steady rise: SMA 2/3 goes long at bar 3's open and stays long
    closes = [100, 100, 101, 102, 103, 104, 105, 106]
    frame = bars(closes, spread=0.0)
    t = frame["ts"].to_list()
    funding = pl.DataFrame(
        {
            "ts": [t[1] + 5, t[5] + 5, t[7] + 5],
            "funding_rate": [0.01, 0.001, -0.002],
            "mark_price": [None, 104.5, None],
        }
    )
    r = run_vectorised(
        frame, SmaCross(2, 3), BarSettings(capital=1_000, fees=Fees(0, 0)), funding=funding
    )
    qty = 1_000 / frame["open"][3] * (1 - 1e-12)
    # the first settlement was before the entry: nothing; then qty x mark x rate at each later one
    assert r.funding == pytest.approx(qty * 104.5 * 0.001 + qty * 106 * -0.002)
    assert r.equity[-1] == pytest.approx(1_000 + qty * (106 - frame["open"][3]) - r.funding)


def test_a_leveraged_position_is_liquidated_at_the_formula_price():
    closes = [100.0] * 3 + [101.0, 102.0, 103.0, 90.0, 80.0]
    frame = bars(closes, spread=0.0)
    s = BarSettings(capital=1_000, leverage=20, fees=Fees(0, 0))
    r = run_vectorised(frame, SmaCross(2, 3), s)
    entry = frame["open"][4]  # long decided at bar 3's close
    qty = 1_000 * 20 / entry * (1 - 1e-12)
    lp = liquidation_price(qty=qty, entry_price=entry, margin=qty * entry / 20, mmr=0.004)
    liquidated = [t for t in r.trades if t.liquidated]
    assert len(liquidated) == 1 and liquidated[0].exit_price == pytest.approx(lp)
    assert liquidated[0].pnl == pytest.approx(-qty * entry / 20)  # the whole isolated margin
    assert r.liquidations == 1


@settings(max_examples=25, deadline=None)
@given(st.integers(60, 400), st.integers(0, 10_000))
def test_no_look_ahead_truncation_never_changes_earlier_decisions(n, seed):
    frame = bars(walk(500, seed=seed, vol=0.01))
    full = run_vectorised(frame, SmaCross(5, 20), BarSettings(leverage=3))
    cut = run_vectorised(frame.head(n), SmaCross(5, 20), BarSettings(leverage=3))
    end = frame["ts"][n - 1]
    closed_before = [(t.entry_ts, t.exit_ts, t.side) for t in full.trades if t.exit_ts <= end]
    assert [(t.entry_ts, t.exit_ts, t.side) for t in cut.trades] == closed_before
    np.testing.assert_allclose(cut.equity, full.equity[:n], rtol=1e-9)


def test_metrics_definitions_on_a_hand_series():
    day = metrics.DAY_MS
    ts = np.array([0, day // 2, day, 2 * day, 3 * day])
    equity = np.array([100.0, 120.0, 110.0, 99.0, 121.0])
    r = metrics.daily_returns(ts, equity, 100.0)
    assert r == pytest.approx([120 / 100 - 1, 110 / 120 - 1, 99 / 110 - 1, 121 / 99 - 1])
    dd, days = metrics.drawdown(ts, equity)
    assert dd == pytest.approx(1 - 99 / 120)
    assert days == pytest.approx(2.5)  # from the 120 peak at 0.5 d until 3 d
    m = metrics.compute(
        ts=ts,
        equity=equity,
        capital=100.0,
        trades=[],
        fees=0,
        funding=0,
        liquidations=0,
        exposure=1.0,
        first_open=100.0,
        last_close=121.0,
    )
    assert m["sharpe"] == pytest.approx(np.mean(r) / np.std(r, ddof=1) * math.sqrt(365))
    assert m["total_return"] == pytest.approx(0.21)
