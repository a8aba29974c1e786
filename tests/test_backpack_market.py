"""The live Backpack market source on the fake: depth synced from the REST snapshot (stale diffs
dropped, contiguous ids), a lost diff resyncs (counted), bookTicker / trade / markPrice events,
periodic top-N snapshots, and the Engine's merged book built from them."""

from __future__ import annotations

import asyncio

from liqcli.core.events import AggTrade, BookSnapshot, BookTop, MarkPrice
from liqcli.exchanges.backpack import stream as bp
from liqcli.exchanges.backpack.rest import backpack_rest
from liqcli.sources.backpack_market import BackpackMarketSource, BackpackOptions
from liqcli.trading.engine import Engine
from tests.fakes.backpack import FakeBackpack

SYM = "SOL_USDC_PERP"


async def _collect(source, events: list, until, timeout: float = 3.0) -> None:
    async def pump():
        async for batch in source.batches():
            events.extend(batch)
            if until(events):
                return

    await asyncio.wait_for(pump(), timeout)


def test_trade_and_mark_parsers():
    trade = bp.parse(
        '{"stream":"trade.SOL_USDC","data":{"e":"trade","E":1694688638091000,"s":"SOL_USDC",'
        '"p":"18.68","q":"0.122","b":"111063114377265150","a":"111063114585735170","t":12345,'
        '"T":1694688638089000,"m":true}}'
    )
    assert trade == AggTrade("backpack", "SOL_USDC", 12345, 1694688638089, 18.68, 0.122, True)
    mark = bp.parse(
        '{"stream":"markPrice.SOL_USDC_PERP","data":{"e":"markPrice","E":1694687965941000,'
        '"s":"SOL_USDC_PERP","p":"18.70","f":"0.0001","i":"18.69","n":1694689200000000}}'
    )
    assert (mark.mark_price, mark.index_price, mark.funding_rate, mark.next_funding_ts) == (
        18.70, 18.69, 0.0001, 1694689200000,
    )  # fmt: skip
    assert bp.parse('{"stream":"trade.X","data":{"p":"1"}}') is None


async def test_depth_sync_gap_resync_and_events():
    async with FakeBackpack() as fake:
        fake.set_book([("99.99", "5"), ("99.98", "5")], [("100.01", "2"), ("100.02", "5")])
        rest = backpack_rest(None, fake.rest_url)
        source = BackpackMarketSource(
            [SYM], BackpackOptions(snapshot_every_ms=1), ws_url=fake.ws_url, rest=rest
        )
        events: list = []
        async with source:
            await fake.wait_subscribed(f"depth.{SYM}")
            # this diff is older than the snapshot the source will load: dropped as stale
            fake.update_id -= 1
            await fake.push_depth([("99.99", "5")], [])
            await _collect(source, events, lambda ev: any(isinstance(e, BookSnapshot) for e in ev))
            book = source.books[SYM]
            assert book.synced and book.counters.loads == 1
            await fake.push_depth([("99.99", "0"), ("99.97", "3")], [("100.01", "1")])
            await asyncio.sleep(0.01)
            await fake.push_depth([], [("100.03", "4")])
            await asyncio.sleep(0.05)
            assert book.levels("bid", 5) == [(99.98, 5.0), (99.97, 3.0)]
            assert book.levels("ask", 5) == [(100.01, 1.0), (100.02, 5.0), (100.03, 4.0)]
            await fake.push_depth([("99.96", "1")], [], skip=2)  # two diffs lost: a gap
            fake.set_book([("99.96", "1")], [("100.05", "1")])
            await asyncio.sleep(0.3)
            assert book.counters.gaps == 1 and book.counters.loads == 2 and book.synced
            assert book.levels("bid", 1) == [(99.96, 1.0)]
            await fake.push_book_ticker("99.96", "1", "100.05", "1")
            await fake.push_book_ticker("99.96", "1", "100.05", "1")  # same u: still delivered
            await fake.trade("100.00", "0.5")
            await fake.push_mark("100.01")
            await _collect(
                source,
                events,
                lambda ev: (
                    sum(isinstance(e, BookTop) for e in ev) == 2
                    and any(isinstance(e, AggTrade) for e in ev)
                    and any(isinstance(e, MarkPrice) for e in ev)
                ),
            )
        await rest.http.aclose()
    assert source.status.state == "closed"
    engine = Engine()
    engine.run(events)
    merged = engine.market.book(SYM)
    assert merged.levels("bid", 1) == [(99.96, 1.0)] and merged.levels("ask", 1) == [(100.05, 1.0)]
    assert engine.market.marks[SYM] == 100.01
