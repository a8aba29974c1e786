"""The live Binance market source against a fake venue that speaks the real protocol: routed
combined streams, ``/fapi/v1/depth`` snapshots, ``U``/``u``/``pu`` diffs, injected gaps."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import pytest

from liqcli.core.events import AggTrade, BookDelta, BookSnapshot, BookTop, Liquidation, MarkPrice
from liqcli.errors import UsageError
from liqcli.exchanges.ws import WsTimings
from liqcli.sources.binance_market import BinanceMarketSource, MarketOptions
from tests.fakes.binance_depth import FakeBinanceDepth
from tests.fakes.ws_servers import DROP

pytestmark = pytest.mark.timeout(30)

TIMINGS = WsTimings(
    stale_timeout=2.0, backoff_initial=0.01, backoff_max=0.05, open_timeout=2.0, close_timeout=0.2
)
BIDS = {100.0: 1.0, 99.9: 2.0, 99.8: 3.0, 99.5: 8.0}
ASKS = {100.1: 1.5, 100.2: 2.5, 100.4: 4.0, 101.0: 9.0}


def options(**kw: Any) -> MarketOptions:
    base = dict(
        book_ticker=False, agg_trades=False, mark_prices=False, timings=TIMINGS, http_retries=0
    )
    return MarketOptions(**{**base, **kw})


class Collector:
    """Consumes a source in the background, keeping every event in order."""

    def __init__(self, source: BinanceMarketSource) -> None:
        self.source = source
        self.events: list[Any] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.source.batches():
            self.events.extend(batch)

    async def until(self, predicate, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.task.done():
                    self.task.result()
                    raise AssertionError("source ended")
                await asyncio.sleep(0.005)

    async def stop(self) -> None:
        await self.source.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def churn(fake: FakeBinanceDepth, symbol: str, i: int) -> None:
    """One realistic diff: a few levels change, one is deleted, one reappears."""
    fake.update(
        symbol,
        bids=[(100.0, 1.0 + i % 3), (99.7, 0.0 if i % 2 else 5.0)],
        asks=[(100.1, 1.0 + i % 4), (100.3, 0.0 if i % 3 == 0 else 2.0)],
    )


async def test_gap_forces_a_resync_and_the_book_equals_the_server(monkeypatch) -> None:
    async with FakeBinanceDepth() as fake:
        fake.set_book("BTCUSDT", BIDS, ASKS)
        source = BinanceMarketSource(
            ["BTCUSDT"], options(), ws_url=fake.ws_url, rest_url=fake.rest_url
        )
        book = source.books["BTCUSDT"]
        collector = Collector(source)
        try:
            for i in range(5):
                churn(fake, "BTCUSDT", i)
                fake.flush("BTCUSDT")
            await collector.until(
                lambda: book.synced and book.update_id == fake.books["BTCUSDT"].update_id
            )
            assert (book.bids, book.asks) == fake.book("BTCUSDT")
            assert book.counters.loads == 1 and book.counters.gaps == 0
            # The injected gap: one diff never sent; the next one's pu points at it.
            churn(fake, "BTCUSDT", 5)
            fake.flush("BTCUSDT", lose=True)
            for i in range(6, 9):
                churn(fake, "BTCUSDT", i)
                fake.flush("BTCUSDT")
            await collector.until(
                lambda: (
                    book.counters.loads == 2
                    and book.synced
                    and book.update_id == fake.books["BTCUSDT"].update_id
                )
            )
            assert book.counters.gaps == 1 and book.counters.resyncs == 1
            assert (book.bids, book.asks) == fake.book("BTCUSDT")
            assert fake.snapshots_served == 2
            assert all("limit=1000" in r and "symbol=BTCUSDT" in r for r in fake.rest.requests)
            assert fake.misrouted == [] and fake.paths[0].startswith(
                "/public/stream?streams=btcusdt@depth@100ms"
            )
        finally:
            await collector.stop()


async def test_snapshot_older_than_the_buffer_and_failed_requests_are_retried() -> None:
    async with FakeBinanceDepth() as fake:
        fake.set_book("ETHUSDT", BIDS, ASKS)
        fake.stale_snapshots(1)  # the first answer predates the first diff received
        fake.rest.fail_next(1, 503)  # and before it, an upstream error
        source = BinanceMarketSource(
            ["ETHUSDT"], options(), ws_url=fake.ws_url, rest_url=fake.rest_url
        )
        book = source.books["ETHUSDT"]
        collector = Collector(source)
        try:
            churn(fake, "ETHUSDT", 0)
            fake.flush("ETHUSDT")
            await collector.until(lambda: book.synced)
            for i in range(1, 4):
                churn(fake, "ETHUSDT", i)
                fake.flush("ETHUSDT")
            await collector.until(lambda: book.update_id == fake.books["ETHUSDT"].update_id)
            assert (book.bids, book.asks) == fake.book("ETHUSDT")
            assert len(fake.rest.requests) == 3  # 503, stale snapshot, good snapshot
            assert book.counters.loads == 2 and book.counters.gaps == 1
        finally:
            await collector.stop()


async def test_periodic_top_n_snapshots_show_the_book_at_each_boundary() -> None:
    async with FakeBinanceDepth() as fake:
        fake.set_book("BTCUSDT", BIDS, ASKS)
        source = BinanceMarketSource(
            ["BTCUSDT"],
            options(depth_levels=2, snapshot_every_ms=300, deltas=True),
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
        )
        collector = Collector(source)
        published = []  # (E, true book after the diff)
        try:
            for i in range(12):  # the fake's clock moves 100 ms per diff
                churn(fake, "BTCUSDT", i)
                event = fake.flush("BTCUSDT")
                published.append((event["E"], fake.book("BTCUSDT")))
                if i == 0:
                    await collector.until(lambda: source.books["BTCUSDT"].synced)
            await collector.until(
                lambda: source.books["BTCUSDT"].update_id == fake.books["BTCUSDT"].update_id
            )
        finally:
            await collector.stop()
    tops = [e for e in collector.events if isinstance(e, BookSnapshot) and len(e.bids) <= 2]
    assert len(tops) >= 3
    for top in tops:
        assert top.ts % 300 == 0
        # The book as of the boundary: after the last diff published before it.
        bids, asks = [b for e, b in published if e < top.ts][-1]
        assert top.bids == tuple(sorted(bids.items(), reverse=True)[:2])
        assert top.asks == tuple(sorted(asks.items())[:2])
    deltas = [e for e in collector.events if isinstance(e, BookDelta)]
    # deltas=True: the applied chain, pu-linked, ending at the venue's last update.
    assert all(b.prev_update_id == a.update_id for a, b in itertools.pairwise(deltas))
    assert deltas[-1].update_id == fake.books["BTCUSDT"].update_id


async def test_every_kind_of_event_from_the_right_route_without_duplicates() -> None:
    async with FakeBinanceDepth() as fake:
        fake.set_book("BTCUSDT", BIDS, ASKS)
        source = BinanceMarketSource(
            ["BTCUSDT"],
            MarketOptions(liquidations=True, timings=TIMINGS, http_retries=0),
            ws_url=fake.ws_url + "/market",  # an old-style value: the route is replaced
            rest_url=fake.rest_url,
        )
        collector = Collector(source)
        try:
            fake.book_ticker("BTCUSDT")
            fake.mark_price("BTCUSDT", 100.05, 100.0, 0.0001, 1_767_254_400_000)
            fake.agg_trade("BTCUSDT", 7, 100.1, 0.5, False)
            fake.force_order("BTCUSDT", "SELL", 99.0, 0.2)
            await collector.until(lambda: len(collector.events) >= 4)
            # A reconnect that replays the last trade: it is dropped.
            fake.push_to("btcusdt@aggTrade", DROP)
            await fake.wait_until(lambda: fake.connections >= 3)
            fake.agg_trade("BTCUSDT", 7, 100.1, 0.5, False)
            fake.agg_trade("BTCUSDT", 8, 100.2, 0.1, True)
            await collector.until(
                lambda: any(getattr(e, "trade_id", 0) == 8 for e in collector.events)
            )
        finally:
            await collector.stop()
    kinds = [type(e) for e in collector.events]
    assert kinds.count(BookTop) == 1 and kinds.count(MarkPrice) == 1
    assert kinds.count(Liquidation) == 1
    assert [e.trade_id for e in collector.events if isinstance(e, AggTrade)] == [7, 8]
    mark = next(e for e in collector.events if isinstance(e, MarkPrice))
    assert (mark.funding_rate, mark.next_funding_ts) == (0.0001, 1_767_254_400_000)
    routes = sorted(p.split("?")[0] for p in fake.paths[:2])
    assert routes == ["/market/stream", "/public/stream"] and fake.misrouted == []
    assert source.statuses["binance"].reconnects >= 1


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        BinanceMarketSource([])
    with pytest.raises(UsageError):
        BinanceMarketSource(["BTCUSDT"], MarketOptions(snapshot_limit=7))
    with pytest.raises(UsageError):
        BinanceMarketSource(
            ["BTCUSDT"],
            MarketOptions(depth=False, book_ticker=False, agg_trades=False, mark_prices=False),
        )
    many = BinanceMarketSource([f"S{i}USDT" for i in range(120)], MarketOptions(), ws_url="ws://h")
    assert len(many.protocols) == 4  # 240 /public streams on 2 connections, 240 /market on 2
