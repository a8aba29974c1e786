"""The source layer's pieces: the Source protocol (live and replay conform), clocks, the ticker,
the deduper and the future guard, and the one row -> event conversion."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import polars as pl
import pytest

from liqcli.core.events import AggTrade, BookTop, Liquidation
from liqcli.services.streams import binance_events, liquidation_stream
from liqcli.sources.base import Clock, Counters, Source
from liqcli.sources.clock import EventClock, LiveClock, Ticker, WallClock
from liqcli.sources.dedup import Deduper, FutureGuard
from liqcli.sources.replay import LIQUIDATION, TRADE, ReplaySource, rows_to_events

T0 = 1_764_000_000_000


def liq(ts: int, usd: float = 100.0, received: int = 0) -> Liquidation:
    return Liquidation("binance", "BTCUSDT", "long", 100.0, usd / 100, usd, ts, "", received)


def test_live_and_replay_sources_follow_the_protocol() -> None:
    for source in (
        liquidation_stream(["binance", "okx"], ["BTCUSDT"], trades_from=["binance"]),
        binance_events(["BTCUSDT"]),
        ReplaySource([]),
    ):
        assert isinstance(source, Source) and isinstance(source.clock, Clock)
    assert liquidation_stream(["okx"]).clock.live and not ReplaySource([]).clock.live


async def test_replay_source_batches_in_order_on_event_time() -> None:
    events = [liq(T0 + i) for i in range(2_500)]
    source = ReplaySource(events, batch=1_000)
    seen: list[int] = []
    clocks: list[int] = []
    async for batch in source.batches():
        assert batch  # never empty
        seen += [e.ts for e in batch]
        clocks.append(source.clock())
    assert seen == [e.ts for e in events]
    assert clocks == [T0 + 999, T0 + 1_999, T0 + 2_499]
    closed = ReplaySource(events)
    await closed.aclose()
    assert [b async for b in closed.batches()] == []


def test_clocks() -> None:
    wall = [T0]
    assert WallClock(lambda: wall[0])() == T0
    events = EventClock()
    events.observe(T0 + 5)
    events.observe(T0 + 1)  # never backwards
    assert events() == T0 + 5 == events.now
    live = LiveClock(lambda: wall[0], lag_ms=2_000, max_ahead_ms=60_000)
    live.observe(T0 + 61_000)  # too far ahead of the wall clock: not observed
    assert live() == T0 - 2_000
    live.observe(T0 + 30_000)
    assert live() == T0 + 30_000


async def test_ticker_ticks_on_the_clock_and_survives_a_failing_callback(caplog) -> None:
    now = [T0]
    ticks: list[int] = []

    def tick(at: int) -> None:
        ticks.append(at)
        now[0] += 1_000
        if len(ticks) == 2:
            raise RuntimeError("bad tick")

    ticker = Ticker(lambda: now[0], 0.001, tick).start()
    async with asyncio.timeout(5):
        while len(ticks) < 4:
            await asyncio.sleep(0.001)
    await ticker.stop()
    assert ticks[:4] == [T0, T0 + 1_000, T0 + 2_000, T0 + 3_000]
    assert "tick failed" in caplog.text
    with pytest.raises(ValueError):
        Ticker(lambda: 0, 0, tick)


def test_deduper_drops_resends_within_its_capacity() -> None:
    dedup = Deduper(capacity=3)
    a, b, c, d = liq(T0), liq(T0 + 1), liq(T0 + 2), liq(T0 + 3)
    trade = AggTrade("binance", "BTCUSDT", 7, T0, 100.0, 1.0, False)
    top = BookTop("binance", "BTCUSDT", T0, 99.0, 1.0, 101.0, 1.0)
    assert dedup.fresh([a, b, a, trade, replace(trade, price=101.0), top, top]) == [
        a,
        b,
        trade,
        top,
        top,  # book tops are never dropped
    ]
    assert dedup.duplicates == 2
    assert dedup.fresh([c, d]) == [c, d]  # a and b are forgotten past the capacity
    assert dedup.is_new(a) and not dedup.is_new(d)


def test_future_guard_judges_by_receive_time() -> None:
    guard = FutureGuard(60_000, wall_clock=lambda: T0)
    batch = [liq(T0, received=T0), liq(T0 + 61_000, received=T0), liq(T0 + 59_000)]
    assert guard.admit(batch) == [batch[0], batch[2]] and guard.refused == 1
    ok = [liq(T0, received=T0)]
    assert guard.admit(ok) is ok  # the common case costs no copy
    replay = FutureGuard(60_000, wall_clock=None)  # rows without a receive time: kept
    assert replay.admit([liq(T0 * 2)]) == [liq(T0 * 2)]


def test_rows_to_events_converts_liquidation_and_trade_rows() -> None:
    frame = pl.DataFrame(
        {
            "kind": [TRADE, LIQUIDATION],
            "exchange": ["binance", "okx"],
            "symbol": ["BTCUSDT", "BTCUSDT"],
            "ts": [T0, T0],
            "price": [100.0, 99.0],
            "qty": [1.0, 2.0],
            "side": [None, "short"],
            "notional_usd": [None, 198.0],
            "venue_symbol": [None, "BTC-USDT-SWAP"],
            "received_ts": [None, T0 + 5],
            "trade_id": [42, None],
            "is_buyer_maker": [True, None],
        }
    )
    assert list(rows_to_events(frame)) == [
        AggTrade("binance", "BTCUSDT", 42, T0, 100.0, 1.0, True),
        Liquidation("okx", "BTCUSDT", "short", 99.0, 2.0, 198.0, T0, "BTC-USDT-SWAP", T0 + 5),
    ]


def test_counters() -> None:
    counters = Counters(received=0, duplicates=0)
    counters.received += 3
    assert counters.to_dict() == {"received": 3, "duplicates": 0}
