"""A depth session in the real capture format (tests/data, synthetic values in the frames
Binance sends, TRADING-VENUES.md §6) replays through the parser and L2Book with zero gaps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from liqcli.sources.binance_market import BinanceMarketSource, MarketOptions
from tests.captures import http_responses, replay_depth, ws_frames
from tests.fakes.binance_depth import FakeBinanceDepth
from tests.test_binance_market import TIMINGS

DATA = Path(__file__).parent / "data"


def test_real_format_capture_replays_with_zero_gaps() -> None:
    replay = replay_depth(DATA / "binance_futures.ws.txt", DATA / "binance_futures.http.txt")
    assert set(replay.books) == {"BTCUSDT", "DOGEUSDT"}
    for symbol, book in replay.books.items():
        counters = book.counters
        assert counters.gaps == 0 and book.synced, symbol
        assert counters.loads == 1
        assert counters.stale > 0  # diffs buffered before the snapshot were dropped, not applied
        assert counters.applied + counters.stale == replay.deltas[symbol]
        (bid, _), (ask, _) = book.best_bid(), book.best_ask()
        assert bid < ask  # an uncrossed book
    # bookTicker's u shares the depth id space and runs ahead of the 100 ms diff.
    assert replay.tops > 0 and replay.tops_ahead == replay.tops


def test_a_lost_frame_in_the_capture_is_found(tmp_path) -> None:
    lines = (DATA / "binance_futures.ws.txt").read_text().splitlines()
    # Drop one BTCUSDT diff well after the snapshot: the chain breaks there.
    depth = [i for i, line in enumerate(lines) if "btcusdt@depth" in line]
    del lines[depth[-10]]
    broken = tmp_path / "ws.txt"
    broken.write_text("\n".join(lines) + "\n")
    replay = replay_depth(broken, DATA / "binance_futures.http.txt")
    assert replay.books["BTCUSDT"].counters.gaps == 1 and not replay.books["BTCUSDT"].synced
    assert replay.books["DOGEUSDT"].counters.gaps == 0


async def test_the_capture_served_by_a_fake_venue_syncs_the_live_source_without_gaps() -> None:
    """The same capture through the live path: frames pushed on their streams as recorded, the
    recorded snapshot served by ``/fapi/v1/depth``, the source syncing on its own."""
    async with FakeBinanceDepth() as fake:
        for url, _stamp, body in http_responses(DATA / "binance_futures.http.txt"):
            fake.canned_snapshot(parse_qs(urlsplit(url).query)["symbol"][0], body)
        source = BinanceMarketSource(
            ["BTCUSDT", "DOGEUSDT"],
            MarketOptions(agg_trades=False, mark_prices=False, timings=TIMINGS, http_retries=0),
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
        )
        frames = ws_frames(DATA / "binance_futures.ws.txt")
        last = {}
        for _stamp, frame in frames:
            if "@depth" in frame["stream"] or "@bookTicker" in frame["stream"]:
                fake.push_to(frame["stream"], frame["data"])
                if frame["data"]["e"] == "depthUpdate":
                    last[frame["data"]["s"]] = frame["data"]["u"]
        async with source:
            batches = source.batches()
            async with asyncio.timeout(10):
                while any(source.books[s].update_id != u for s, u in last.items()):
                    await anext(batches)
            await batches.aclose()
    for symbol, book in source.books.items():
        assert book.counters.gaps == 0 and book.counters.loads == 1 and book.synced, symbol
        assert book.counters.stale > 0  # the diffs before the recorded snapshot
    assert fake.snapshots_served == 2
