"""Recording a live session (book, trades, marks, liquidations from the fake venue) through the
journal into the datasets, and replaying it: exactly the events received live, in order."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import polars as pl
import pytest

from liqcli.core.events import AggTrade, BookSnapshot, BookTop, Liquidation, MarkPrice
from liqcli.sources.binance_market import BinanceMarketSource, MarketOptions
from liqcli.sources.recorder import RecordedSource, Recorder, recorded_events
from liqcli.store.parquet import Store
from tests.fakes.binance_depth import T0, FakeBinanceDepth
from tests.test_binance_market import ASKS, BIDS, TIMINGS, churn

pytestmark = pytest.mark.timeout(60)
SYMBOLS = ("BTCUSDT", "ETHUSDT")


async def record_session(
    fake: FakeBinanceDepth, store: Store, rounds: int, first_trade: int
) -> list[Any]:
    """Run a recorder over a live source while the venue plays ``rounds`` of every event kind;
    returns what the consumer received live."""
    source = BinanceMarketSource(
        SYMBOLS,
        MarketOptions(
            liquidations=True,
            depth_levels=3,
            snapshot_every_ms=300,
            timings=TIMINGS,
            http_retries=0,
        ),
        ws_url=fake.ws_url,
        rest_url=fake.rest_url,
    )
    received: list[Any] = []

    async def consume(recorder: Recorder) -> None:
        async for batch in recorder.batches():
            received.extend(batch)

    last_trade = first_trade + rounds - 1
    async with Recorder(source, store, flush_interval=0.05) as recorder:
        task = asyncio.create_task(consume(recorder))
        try:
            for i in range(rounds):
                for n, symbol in enumerate(SYMBOLS):
                    churn(fake, symbol, i + n)
                    fake.flush(symbol)
                    if i % 2 == 0:
                        fake.book_ticker(symbol)
                    fake.mark_price(
                        symbol, 100.0 + i / 100, 100.0, 0.0001 * (i % 3 - 1), 1_767_254_400_000
                    )
                fake.agg_trade("BTCUSDT", first_trade + i, 100.0 + i / 10, 0.1 + i, i % 2 == 0)
                if i % 3 == 1:
                    fake.force_order("ETHUSDT", "SELL" if i % 2 else "BUY", 99.0 - i / 10, 0.5)
                if i == 0:
                    await fake.wait_until(lambda: all(source.books[s].synced for s in SYMBOLS))
                await asyncio.sleep(0.002)  # let frames of different streams interleave
            await fake.wait_until(
                lambda: (
                    any(isinstance(e, AggTrade) and e.trade_id == last_trade for e in received)
                    and all(source.books[s].update_id == fake.books[s].update_id for s in SYMBOLS)
                )
            )
            await asyncio.sleep(0.05)  # the last marks and liquidations of other connections
        finally:
            await source.aclose()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return received


async def replay(store: Store, **kw: Any) -> list[Any]:
    out: list[Any] = []
    async with RecordedSource(store, batch_size=7, **kw) as source:
        async for batch in source.batches():
            out.extend(batch)
    return out


async def test_a_recorded_session_replays_exactly_as_received(tmp_path) -> None:
    store = Store(tmp_path)
    async with FakeBinanceDepth() as fake:
        for symbol in SYMBOLS:
            fake.set_book(symbol, BIDS, ASKS)
        live = await record_session(fake, store, rounds=20, first_trade=100)
    kinds = {type(e) for e in live}
    assert kinds == {BookTop, BookSnapshot, AggTrade, MarkPrice, Liquidation}
    assert sum(isinstance(e, BookSnapshot) for e in live) >= 4
    replayed = await replay(store)
    assert replayed == live  # same events, same order
    # The rows are plain datasets too: backtests read them directly.
    depth = store.read("book_depth", exchange="binance", symbol="BTCUSDT", source="live")
    assert set(depth["side"]) == {"bid", "ask"} and depth["level"].max() <= 3
    marks = store.read("mark_prices")
    assert marks.schema["next_funding_ts"] == pl.Datetime("ms", "UTC")
    assert store.read("agg_trades")["trade_id"].to_list() == list(range(100, 120))
    # Filters: one symbol, a time window (on event time).
    eth = await replay(store, symbols=["ETHUSDT"])
    assert eth == [e for e in live if e.symbol == "ETHUSDT"]
    middle = sorted(e.ts for e in live)[len(live) // 2]
    assert list(recorded_events(store, start=middle)) == [e for e in live if e.ts >= middle]


async def test_sessions_recorded_one_after_another_replay_in_order(tmp_path) -> None:
    store = Store(tmp_path)
    async with FakeBinanceDepth() as fake:
        for symbol in SYMBOLS:
            fake.set_book(symbol, BIDS, ASKS)
        first = await record_session(fake, store, rounds=4, first_trade=1)
    async with FakeBinanceDepth(t0=T0 + 3_600_000) as fake:  # an hour later
        for symbol in SYMBOLS:
            fake.set_book(symbol, BIDS, ASKS, update_id=5000)
        second = await record_session(fake, store, rounds=4, first_trade=50)
    assert await replay(store) == first + second
