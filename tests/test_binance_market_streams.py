"""Binance USDⓈ-M stream routing (/public vs /market, 200 per connection) and the depth,
bookTicker and markPrice parsers, on frames in the real format (TRADING-VENUES.md §6)."""

from __future__ import annotations

import pytest

from liqcli.core.endpoints import DEFAULTS
from liqcli.core.events import BookDelta, BookTop, MarkPrice
from liqcli.errors import DataError, UsageError
from liqcli.exchanges.binance import stream as binance

# Frames as Binance sends them (shapes of a 2021 capture; numbers as strings).
DEPTH = {
    "stream": "sushiusdt@depth@100ms",
    "data": {
        "e": "depthUpdate",
        "E": 1626992741037,
        "T": 1626992741024,
        "s": "SUSHIUSDT",
        "U": 600859599090,
        "u": 600859600917,
        "pu": 600859598061,
        "b": [["7.5040", "813"], ["7.6090", "0"], ["7.6110", "2"]],
        "a": [["7.6150", "1563"], ["7.6220", "3284"]],
    },
}
BOOK_TICKER = {
    "stream": "sushiusdt@bookTicker",
    "data": {
        "e": "bookTicker",
        "u": 600859600576,
        "s": "SUSHIUSDT",
        "b": "7.6110",
        "B": "2",
        "a": "7.6120",
        "A": "297",
        "T": 1626992741012,
        "E": 1626992741017,
    },
}
MARK = {
    "stream": "btcusdt@markPrice@1s",
    "data": {
        "e": "markPriceUpdate",
        "E": 1562305380000,
        "s": "BTCUSDT",
        "p": "11794.15000000",
        "i": "11784.62659091",
        "P": "11784.25641265",
        "r": "0.00038167",
        "T": 1562306400000,
    },
}


def test_routes_public_and_market() -> None:
    assert binance.route_of("btcusdt@depth@100ms") == "public"
    assert binance.route_of("btcusdt@depth") == "public"
    assert binance.route_of("btcusdt@depth20@100ms") == "public"
    assert binance.route_of("btcusdt@bookTicker") == "public"
    assert binance.route_of("!bookTicker") == "public"
    for stream in (
        "btcusdt@aggTrade",
        "btcusdt@markPrice@1s",
        "!forceOrder@arr",
        "btcusdt@kline_1m",
    ):
        assert binance.route_of(stream) == "market"


LOOPBACK = "ws://127.0.0.1:9"  # never dialled: these tests only build URLs


@pytest.mark.parametrize(
    "configured",
    [
        None,
        LOOPBACK,
        f"{LOOPBACK}/",
        f"{LOOPBACK}/market",
        f"{LOOPBACK}/public/",
    ],
)
def test_ws_url_is_the_host_root_and_old_values_still_work(monkeypatch, configured) -> None:
    if configured is None:
        monkeypatch.delenv("LIQ_BINANCE_WS_URL")  # the production default, from the registry
        root = DEFAULTS["LIQ_BINANCE_WS_URL"].rstrip("/")
    else:
        monkeypatch.setenv("LIQ_BINANCE_WS_URL", configured)
        root = LOOPBACK
    assert binance.combined_stream_url(binance.depth_streams(["BTCUSDT"])) == (
        f"{root}/public/stream?streams=btcusdt@depth@100ms"
    )
    assert binance.combined_stream_url(binance.mark_price_streams(["BTCUSDT"])) == (
        f"{root}/market/stream?streams=btcusdt@markPrice@1s"
    )


def test_streams_split_by_route_and_200_per_connection() -> None:
    symbols = [f"S{i}USDT" for i in range(150)]
    streams = (
        binance.depth_streams(symbols)
        + binance.book_ticker_streams(symbols)
        + binance.agg_trade_streams(symbols)
        + binance.mark_price_streams(symbols[:10])
    )
    urls = binance.stream_urls(streams, "ws://h:1")
    counts = [len(u.split("streams=")[1].split("/")) for u in urls]
    assert counts == [200, 100, 160]
    assert [u.split("/stream?")[0] for u in urls] == ["ws://h:1/public"] * 2 + ["ws://h:1/market"]
    carried = [s for u in urls for s in u.split("streams=")[1].split("/")]
    assert sorted(carried) == sorted(streams)  # each stream exactly once
    assert len(binance.protocols(streams, "ws://h:1")) == 3
    with pytest.raises(UsageError, match="separate connections"):
        binance.combined_stream_url(["btcusdt@depth", "btcusdt@aggTrade"], "ws://h:1")
    with pytest.raises(UsageError, match="200"):
        binance.combined_stream_url([f"s{i}@aggTrade" for i in range(201)], "ws://h")
    with pytest.raises(UsageError):
        binance.depth_streams(["BTCUSDT"], speed="10ms")
    assert binance.depth_streams(["BTCUSDT"], speed="250ms") == ["btcusdt@depth"]
    assert binance.mark_price_streams(["BTCUSDT"], every="3s") == ["btcusdt@markPrice"]


def test_parse_depth_book_ticker_and_mark_price() -> None:
    (delta,) = binance.parse_market_message(DEPTH, received_ts=5)
    assert delta == BookDelta(
        "binance",
        "SUSHIUSDT",
        1626992741037,
        600859599090,
        600859600917,
        600859598061,
        ((7.504, 813.0), (7.609, 0.0), (7.611, 2.0)),
        ((7.615, 1563.0), (7.622, 3284.0)),
        received_ts=5,
    )
    (top,) = binance.parse_market_message(BOOK_TICKER)
    assert top == BookTop(
        "binance", "SUSHIUSDT", 1626992741012, 7.611, 2.0, 7.612, 297.0, update_id=600859600576
    )
    (mark,) = binance.parse_market_message(MARK, received_ts=9)
    assert mark == MarkPrice(
        "binance", "BTCUSDT", 1562305380000, 11794.15, 11784.62659091, 0.00038167, 1562306400000, 9
    )
    # Numbers as JSON numbers work too; unknown kinds are ignored.
    as_numbers = {**DEPTH["data"], "b": [[7.5, 1]], "a": []}
    assert binance.parse_market_message(as_numbers)[0].bids == ((7.5, 1.0),)
    assert binance.parse_market_message({"data": {"e": "kline"}}) == []


@pytest.mark.parametrize(
    "frame",
    [
        {**DEPTH["data"], "b": [["7.5", "x"]]},
        {**DEPTH["data"], "b": [["-1", "1"]]},
        {**DEPTH["data"], "a": [["NaN", "1"]]},
        {**DEPTH["data"], "a": [["1", "-2"]]},
        {**DEPTH["data"], "a": [["1"]]},
        {k: v for k, v in DEPTH["data"].items() if k != "U"},
        {**BOOK_TICKER["data"], "b": "0"},
        {k: v for k, v in BOOK_TICKER["data"].items() if k != "u"},
        {**MARK["data"], "p": "inf"},
        {**MARK["data"], "T": "soon"},
    ],
)
def test_malformed_events_raise_data_error(frame) -> None:
    with pytest.raises(DataError, match="binance"):
        binance.parse_market_message({"data": frame})


def test_depth_snapshot() -> None:
    payload = {
        "lastUpdateId": 600859605926,
        "E": 1626992741264,
        "T": 1626992741261,
        "bids": [["7.6080", "161"], ["7.6110", "6"]],
        "asks": [["7.6130", "26"], ["7.6120", "290"]],
    }
    snap = binance.parse_depth_snapshot(payload, "sushiusdt")
    assert snap.update_id == 600859605926 and snap.ts == 1626992741261
    assert snap.bids == ((7.611, 6.0), (7.608, 161.0)) and snap.asks[0] == (7.612, 290.0)
    assert snap.symbol == "SUSHIUSDT"
    for bad in ([], {"bids": [], "asks": []}, {**payload, "bids": [["1", "nan"]]}):
        with pytest.raises(DataError):
            binance.parse_depth_snapshot(bad, "X")
