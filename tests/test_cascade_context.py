"""Cascade context in a run's first 30 seconds (issue 12.10): the price move uses the prices there
are and says how far back they reach; the dashboard counts the cascade on screen and keeps the
direction of a cascade that shutdown ended."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from liqcli.analytics.cascade import LiquidationCascadeDetector
from liqcli.core.events import AggTrade, Liquidation
from liqcli.render.cascade_view import CascadeViewInfo, render_cascade_view

T0 = 1_700_000_000_000


def liq(ts: int, usd: float, side: str = "long") -> Liquidation:
    return Liquidation("binance", "BTCUSDT", side, 100.0, usd / 100.0, usd, ts)


def trade(ts: int, price: float) -> AggTrade:
    return AggTrade("binance", "BTCUSDT", ts, ts, price, 1.0, False)


def drop_in_first_seconds() -> LiquidationCascadeDetector:
    """The process starts; in 4 s BTC falls 0.95 % while $12M of longs are liquidated."""
    d = LiquidationCascadeDetector("BTCUSDT", clock=lambda: T0)
    prices = [100.0, 99.8, 99.5, 99.3, 99.05]
    for i, price in enumerate(prices):
        d.feed(trade(T0 + i * 1_000, price))
        d.feed(liq(T0 + i * 1_000 + 10, 2_400_000))
    return d


def test_the_move_in_the_first_seconds_is_known_with_its_span() -> None:
    d = drop_in_first_seconds()
    state = d.state()
    assert state["level"] == "MAJOR" and state["phase"] == "early"
    assert state["price_change_30s_pct"] == pytest.approx(-0.95)
    assert state["price_change_30s_span_s"] == pytest.approx(4.01)
    assert state["signature"]["price_move_30s"] is True
    assert state["signature_matched"] == 1

    # Once 30 s of prices are known the usual 30-s change takes over.
    d.feed(trade(T0 + 31_000, 99.0))
    later = d.state()
    assert later["price_change_30s_span_s"] == 30.0
    assert later["price_change_30s_pct"] == pytest.approx(
        (99.0 / 99.8 - 1) * 100, abs=1e-4
    )  # close 30 s back


def test_without_any_trade_the_move_stays_unknown() -> None:
    d = LiquidationCascadeDetector("BTCUSDT", clock=lambda: T0)
    d.feed(liq(T0, 12_000_000))
    state = d.state()
    assert state["price_change_30s_pct"] is None and state["price_change_30s_span_s"] is None
    assert state["signature"]["price_move_30s"] is None


def render(states: list[dict], ended: int) -> str:
    info = CascadeViewInfo(["BTCUSDT"], ["binance"], "MINOR", "live", None, T0,
                           counters={"liquidations": 5, "cascades": ended})  # fmt: skip
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(render_cascade_view(states, [], {}, {}, info, now_ms=T0 + 4_000))
    return console.file.getvalue()


def test_dashboard_counts_the_cascade_on_screen_and_keeps_its_direction_after_shutdown() -> None:
    d = drop_in_first_seconds()
    text = render([d.state()], ended=0)
    assert "1 active / 0 ended cascades" in text  # was "0 cascades" beside a MAJOR row
    row = next(line for line in text.splitlines() if line.startswith("BTCUSDT"))
    assert "MAJOR" in row and "LONGS" in row and "-0.95% 4s" in row and "price✓" in row

    (end,) = d.finish()  # Ctrl-C: the cascade ends with reason "shutdown"
    assert end["type"] == "cascade_end" and end["reason"] == "shutdown"
    text = render([d.state()], ended=1)
    assert "0 active / 1 ended cascade " in text
    row = next(line for line in text.splitlines() if line.startswith("BTCUSDT"))
    assert "MAJOR" in row and "LONGS" in row and "ended" in row  # was MAJOR, "-", quiet
