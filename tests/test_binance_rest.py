"""Binance REST endpoints and parsers (liqcli.exchanges.binance.rest) and the fake server's fidelity
to Binance's documented behaviour (paging, caps, 30-day window, limits)."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import polars as pl
import pytest

from liqcli.core.schemas import dataset
from liqcli.errors import DataError, ExchangeError
from liqcli.exchanges.binance.rest import (
    ENDPOINTS,
    FETCH_DATASETS,
    binance_http,
    fetch_page,
    kline_weight,
    parse_rows,
)
from liqcli.exchanges.parsing import Refusals
from tests.fakes.binance_rest import FakeBinanceRest, FakeClock, Limits

MIN = 60_000
DAY = 86_400_000
NOW = 1_795_000_000_000 + 123_456  # a fixed instant, not on any grid


def ms_list(df: pl.DataFrame) -> list[int]:
    return df["ts"].dt.epoch("ms").to_list()


@pytest.fixture
def server():
    with FakeBinanceRest(now_ms=NOW) as srv:
        yield srv


async def test_every_dataset_parses_into_its_schema(server):
    async with binance_http(server.url) as http:
        for name in FETCH_DATASETS:
            df = await fetch_page(http, name, "ETHUSDT", period="1h", limit=4)
            assert df.schema == dataset(name).pl_schema
            assert df.height == 4 and df["exchange"].unique().to_list() == ["binance"]
            assert df["symbol"].unique().to_list() == ["ETHUSDT"]
            assert df.null_count().sum_horizontal().item() == 0


async def test_pages_respect_start_end_and_limit_in_ascending_order(server):
    step = 5 * MIN
    start = NOW - 2 * DAY + 17  # off-grid: the first row is the next grid point
    async with binance_http(server.url) as http:
        page = await fetch_page(
            http, "open_interest", "BTCUSDT", start=start, end=start + 10 * step
        )
        latest = await fetch_page(http, "open_interest", "BTCUSDT", limit=3)
        before = await fetch_page(http, "open_interest", "BTCUSDT", end=NOW - DAY, limit=2)
    ts = ms_list(page)
    assert ts == sorted(ts) and all(b - a == step for a, b in itertools.pairwise(ts))
    assert ts[0] == start - start % step + step and ts[-1] <= start + 10 * step and len(ts) == 10
    last_finished = NOW - NOW % step - step
    assert ms_list(latest) == [last_finished - 2 * step, last_finished - step, last_finished]
    assert ms_list(before)[-1] == (NOW - DAY) - (NOW - DAY) % step


async def test_more_rows_than_limit_anchor_at_start_or_end():
    step = 5 * MIN
    start, end = NOW - DAY, NOW - DAY + 100 * step
    for anchor, expected_first in (("start", start - start % step + step), ("end", None)):
        with FakeBinanceRest(now_ms=NOW, anchor=anchor) as srv:
            async with binance_http(srv.url) as http:
                df = await fetch_page(http, "taker_ratio", "BTCUSDT", start=start, end=end, limit=5)
        ts = ms_list(df)
        assert len(ts) == 5
        if expected_first is not None:
            assert ts[0] == expected_first
        else:
            assert ts[-1] == end - end % step


async def test_page_caps_are_enforced(server):
    async with binance_http(server.url) as http:
        assert (
            await fetch_page(http, "klines", "BTCUSDT", limit=1500, end=NOW - DAY)
        ).height == 1500
        assert (await fetch_page(http, "funding", "BTCUSDT", limit=1000)).height == 1000
        for name, too_many in (("taker_ratio", 501), ("funding", 1001), ("klines", 1501)):
            with pytest.raises(ExchangeError, match="limit") as info:
                await fetch_page(http, name, "BTCUSDT", limit=too_many)
            assert info.value.code == -1130
    assert {e.page_limit for e in ENDPOINTS.values()} == {500, 1000, 1500}


async def test_futures_data_serve_only_the_latest_30_days(server):
    async with binance_http(server.url) as http:
        with pytest.raises(ExchangeError, match="startTime") as info:
            await fetch_page(http, "global_account_ratio", "BTCUSDT", start=NOW - 31 * DAY)
        assert info.value.code == -1130
        oldest = await fetch_page(
            http, "global_account_ratio", "BTCUSDT", start=NOW - 30 * DAY, limit=1
        )
        # Klines and funding have no such window.
        old_klines = await fetch_page(http, "klines", "BTCUSDT", start=NOW - 90 * DAY, limit=2)
    assert ms_list(oldest)[0] >= NOW - 30 * DAY
    assert ms_list(old_klines)[0] >= NOW - 90 * DAY


async def test_klines_include_the_open_candle_and_funding_is_every_8_hours(server):
    async with binance_http(server.url) as http:
        klines = await fetch_page(http, "klines", "BTCUSDT", period="1h", limit=2)
        funding = await fetch_page(http, "funding", "BTCUSDT", start=NOW - 3 * DAY, limit=4)
    assert ms_list(klines)[-1] == NOW - NOW % 3_600_000
    funding_ts = ms_list(funding)
    assert len(funding_ts) == 4 and funding_ts[0] >= NOW - 3 * DAY
    hours = [t - t % 3_600_000 for t in funding_ts]
    assert all(b - a == 8 * 3_600_000 for a, b in itertools.pairwise(hours))
    assert all(0 <= t - h < 10 for t, h in zip(funding_ts, hours, strict=True))


async def test_weight_header_follows_the_klines_limit(server):
    async with httpx.AsyncClient(base_url=server.url) as client:
        used = []
        for limit in (50, 200, 1000, 1500):
            r = await client.get(
                "/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "5m", "limit": limit}
            )
            used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
        r = await client.get(
            "/futures/data/openInterestHist", params={"symbol": "BTCUSDT", "period": "5m"}
        )
        used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
    assert used == [1, 3, 8, 18, 18]
    assert [kline_weight(n) for n in (50, 200, 1000, 1500)] == [1, 2, 5, 10]


async def test_fake_server_bans_a_client_that_ignores_429():
    clock = FakeClock()
    limits = Limits(futures_data=5, futures_data_window_s=60.0, ban_after=3, ban_s=120.0)
    with FakeBinanceRest(clock=clock, limits=limits) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            params = {"symbol": "BTCUSDT", "period": "5m", "limit": 1}
            statuses = []
            for _ in range(10):
                r = await client.get("/futures/data/openInterestHist", params=params)
                statuses.append((r.status_code, r.headers.get("Retry-After")))
            other = await client.get(
                "/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "5m"}
            )
            clock.now += 121
            after_ban = await client.get(
                "/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "5m"}
            )
    codes = [s for s, _ in statuses]
    assert codes == [200] * 5 + [429] * 4 + [418]
    assert all(ra is not None and int(ra) >= 1 for s, ra in statuses if s != 200)
    assert statuses[-1][1] == "120"
    assert other.status_code == 418 and other.json()["code"] == -1003  # a ban covers every endpoint
    assert after_ban.status_code == 200


async def test_fake_server_answers_concurrent_requests_concurrently():
    with FakeBinanceRest(latency_s=0.2) as srv:
        async with binance_http(srv.url, max_concurrency=20) as http:
            await asyncio.gather(
                *(fetch_page(http, "taker_ratio", "BTCUSDT", limit=1) for _ in range(20))
            )
    assert srv.max_in_flight >= 10


def test_parsers_accept_strings_or_numbers_and_ignore_unknown_keys():
    payload = [
        {
            "buySellRatio": "1.5586",
            "buyVol": "387.33",
            "sellVol": 248.503,
            "timestamp": "1585614900000",
            "x": 1,
        },
        {"buySellRatio": 1.3104, "buyVol": 343, "sellVol": "248.503", "timestamp": 1585615200000},
    ]
    df = parse_rows("taker_ratio", payload, symbol="BTCUSDT", period="5m")
    assert ms_list(df) == [1585614900000, 1585615200000]
    assert df["buy_vol"].to_list() == [387.33, 343.0]
    assert df["period"].to_list() == ["5m", "5m"]
    kline = [
        [
            1499040000000,
            "0.0163",
            "0.8",
            "0.0157",
            "0.0157",
            "148976.11",
            1499644799999,
            "2434.19",
            308,
            "1756.87",
            "28.46",
            "0",
        ]
    ]
    k = parse_rows("klines", kline, symbol="BTCUSDT", period="1h").row(0, named=True)
    assert k["interval"] == "1h" and k["trades"] == 308 and k["taker_buy_quote_volume"] == 28.46


def test_old_funding_rows_without_mark_price_keep_a_null():
    payload = [
        {
            "symbol": "BTCUSDT",
            "fundingRate": "-0.03750000",
            "fundingTime": 1570608000000,
            "markPrice": "",
        }
    ]
    df = parse_rows("funding", payload, symbol="BTCUSDT")
    assert df["mark_price"].to_list() == [None] and df["funding_rate"].to_list() == [-0.0375]


T = 1_700_000_000_000
GOOD_ROWS = {
    "open_interest": {"sumOpenInterest": "10", "sumOpenInterestValue": "600", "timestamp": T},
    "taker_ratio": {"buySellRatio": "1.2", "buyVol": "3", "sellVol": "2.5", "timestamp": T},
    "top_account_ratio": {
        "longShortRatio": "1.5",
        "longAccount": "0.6",
        "shortAccount": "0.4",
        "timestamp": T,
    },
    "funding": {"fundingRate": "-0.0001", "fundingTime": T, "markPrice": "60000"},
    "klines": [T, "1", "2", "0.5", "1.5", "10", T + 1, "15", 3, "4", "6", "0"],
}


def test_a_response_that_is_not_a_list_of_rows_is_a_data_error_naming_the_endpoint():
    with pytest.raises(DataError, match="returned dict, expected a list") as info:
        parse_rows("taker_ratio", {"code": 0}, symbol="BTCUSDT")
    assert ENDPOINTS["taker_ratio"].path in str(info.value)


@pytest.mark.parametrize(
    ("name", "bad", "reason"),
    [
        ("open_interest", {"sumOpenInterest": "1", "timestamp": T}, "missing_field"),
        ("klines", [T, "1", "2"], "missing_field"),
        ("funding", ["not", "an", "object"], "bad_structure"),
        (
            "top_account_ratio",
            {**GOOD_ROWS["top_account_ratio"], "longShortRatio": "x"},
            "not_a_number",
        ),
        (
            "top_account_ratio",
            {**GOOD_ROWS["top_account_ratio"], "timestamp": "soon"},
            "not_a_number",
        ),
        ("open_interest", {**GOOD_ROWS["open_interest"], "sumOpenInterest": True}, "not_a_number"),
        ("funding", {**GOOD_ROWS["funding"], "fundingRate": None}, "missing_field"),
        ("taker_ratio", {**GOOD_ROWS["taker_ratio"], "buySellRatio": "NaN"}, "not_finite"),
        ("taker_ratio", {**GOOD_ROWS["taker_ratio"], "sellVol": "Infinity"}, "not_finite"),
        ("taker_ratio", {**GOOD_ROWS["taker_ratio"], "buySellRatio": "-1.5"}, "out_of_range"),
        (
            "top_account_ratio",
            {**GOOD_ROWS["top_account_ratio"], "longAccount": "1.5"},
            "out_of_range",
        ),
        (
            "open_interest",
            {**GOOD_ROWS["open_interest"], "sumOpenInterestValue": -3},
            "out_of_range",
        ),
        ("funding", {**GOOD_ROWS["funding"], "markPrice": "-1"}, "out_of_range"),
        ("klines", [T, "-1", "2", "0.5", "1.5", "10", T, "15", 3, "4", "6", "0"], "out_of_range"),
        ("open_interest", {**GOOD_ROWS["open_interest"], "timestamp": 1}, "ts_past"),
        (
            "open_interest",
            {**GOOD_ROWS["open_interest"], "timestamp": 253402300800000},
            "ts_future",
        ),
    ],
)
def test_a_malformed_row_is_refused_alone_and_counted_by_reason(name, bad, reason):
    good = GOOD_ROWS[name]
    refused = Refusals()
    df = parse_rows(name, [good, bad, good], symbol="BTCUSDT", period="5m", refused=refused)
    assert df.height == 2  # the good rows are kept, the bad one only is left out
    assert refused == {reason: 1}
    assert ENDPOINTS[name].path in (refused.last or "")
    assert df.schema == parse_rows(name, [good], symbol="BTCUSDT", period="5m").schema
