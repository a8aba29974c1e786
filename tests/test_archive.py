"""Archive downloads against a local fake data.binance.vision / public.bybit.com, and the readers."""

from __future__ import annotations

import asyncio
import logging
from datetime import date

import polars as pl
import pytest

from liqcli.core.timeutil import parse_time
from liqcli.errors import DataError, ExchangeError, NetworkError, RateLimitError
from liqcli.exchanges.archive import ArchiveClient, parse_checksum
from liqcli.exchanges.binance.archive import (
    agg_trades_path,
    binance_archive_client,
    download_agg_trades,
    download_metrics,
    read_agg_trades,
    read_metrics,
)
from liqcli.exchanges.bybit.archive import bybit_archive_client, download_trades, read_trades
from liqcli.exchanges.retry import Backoff, RateLimitGate
from tests.fakes.archive_server import FakeArchiveServer, binance_agg_csv, synthetic_trades

DAY1, DAY2, DAY3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)
START = parse_time("2024-03-01")
END = parse_time("2024-03-04")


@pytest.fixture
def server():
    with FakeArchiveServer() as srv:
        yield srv


def _day_trades(day: date, n: int = 50, seed: int = 1) -> pl.DataFrame:
    return synthetic_trades(n, parse_time(day.isoformat()), seed=seed, step_ms=1000)


def _client(server, tmp_path, **kw) -> ArchiveClient:
    return binance_archive_client(tmp_path, base_url=server.url, **{"backoff": 0.001, **kw})


def _expected(trades: pl.DataFrame) -> pl.DataFrame:
    return trades.with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))


async def test_download_verifies_caches_and_skips_404_day(server, tmp_path, caplog):
    day1, day3 = _day_trades(DAY1, seed=1), _day_trades(DAY3, seed=3)
    server.add_binance_agg_trades("BTCUSDT", DAY1, day1)
    server.add_binance_agg_trades("BTCUSDT", DAY3, day3, header=False)
    caplog.set_level(logging.WARNING, logger="liq")
    async with _client(server, tmp_path) as client:
        paths = await download_agg_trades(client, "BTCUSDT", START, END)
        assert client.downloads == 2
    assert [p.name for p in paths] == [
        "BTCUSDT-aggTrades-2024-03-01.zip",
        "BTCUSDT-aggTrades-2024-03-03.zip",
    ]
    assert all(str(p).startswith(str(tmp_path / "_archive" / "binance")) for p in paths)
    assert "2024-03-02" in caplog.text and "404" in caplog.text

    got = read_agg_trades(paths).collect()
    assert got.equals(_expected(pl.concat([day1, day3])))
    # Each zip became a normalised Parquet file beside it; the extracted CSV is gone.
    folder = paths[0].parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "BTCUSDT-aggTrades-2024-03-01.trades.parquet",
        "BTCUSDT-aggTrades-2024-03-01.zip",
        "BTCUSDT-aggTrades-2024-03-03.trades.parquet",
        "BTCUSDT-aggTrades-2024-03-03.zip",
    ]
    assert read_agg_trades(paths).collect().equals(got)

    # Second run: everything cached, no request for the data files (the 404 day is asked again).
    before = dict(server.hits)
    async with _client(server, tmp_path) as client:
        again = await download_agg_trades(client, "BTCUSDT", START, END)
        assert client.downloads == 0
    assert again == paths
    changed = {p for p in server.hits if server.hits[p] != before.get(p, 0)}
    assert changed == {
        agg_trades_path("BTCUSDT", DAY2),
        agg_trades_path("BTCUSDT", DAY2) + ".CHECKSUM",
    }


async def test_checksum_mismatch_raises_and_caches_nothing(server, tmp_path):
    path = server.add_binance_agg_trades("BTCUSDT", DAY1, _day_trades(DAY1), corrupt_checksum=True)
    async with _client(server, tmp_path) as client:
        with pytest.raises(DataError, match="checksum mismatch"):
            await client.fetch(path, path + ".CHECKSUM")
    cached = tmp_path / "_archive" / "binance" / path
    assert not cached.exists()
    assert list(cached.parent.iterdir()) == []  # no temp file left behind either


async def test_one_bad_day_stops_the_other_downloads(server, tmp_path):
    server.add_binance_agg_trades("BTCUSDT", DAY1, _day_trades(DAY1), corrupt_checksum=True)
    for day in (DAY2, DAY3):
        path = server.add_binance_agg_trades("BTCUSDT", day, _day_trades(day))
        server.fail(path, 503, 503, 503)  # slow to succeed: still retrying when DAY1 fails
    async with _client(server, tmp_path, backoff=0.2) as client:
        with pytest.raises(DataError, match="checksum mismatch"):
            await download_agg_trades(client, "BTCUSDT", START, END)
        # Nothing keeps downloading behind the error's back.
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        # Requests already on the wire when the error came may still be counted by the server's
        # threads; after that, a retry loop left running would hit again within its 0.2 s backoff.
        await asyncio.sleep(0.3)
        hits = sum(server.hits.values())
        await asyncio.sleep(0.5)
        assert sum(server.hits.values()) == hits
    assert not list((tmp_path / "_archive").rglob("*.zip"))


async def test_missing_checksum_downloads_unverified_with_warning(server, tmp_path, caplog):
    server.add("data/x.zip", b"payload", checksum=False)
    caplog.set_level(logging.WARNING, logger="liq")
    async with _client(server, tmp_path) as client:
        got = await client.fetch("data/x.zip", "data/x.zip.CHECKSUM")
    assert got is not None and got.read_bytes() == b"payload"
    assert "no checksum" in caplog.text


async def test_5xx_and_429_are_retried(server, tmp_path):
    path = server.add_binance_agg_trades("BTCUSDT", DAY1, _day_trades(DAY1))
    server.fail(path + ".CHECKSUM", 503)
    server.fail(path, 500, 429)
    async with _client(server, tmp_path) as client:
        got = await client.fetch(path, path + ".CHECKSUM")
        assert client.retries == 3
    assert got is not None and server.hits[path] == 3


async def test_retries_exhausted_is_network_error(server, tmp_path):
    server.add("data/y.zip", b"z", checksum=False)
    server.fail("data/y.zip", 502, 502, 502)
    async with _client(server, tmp_path, max_retries=2) as client:
        with pytest.raises(NetworkError, match="HTTP 502"):
            await client.fetch("data/y.zip")
    assert server.hits["data/y.zip"] == 3


async def test_forbidden_is_exchange_error(server, tmp_path):
    server.add("data/z.zip", b"z", checksum=False)
    server.fail("data/z.zip", 403)
    async with _client(server, tmp_path) as client:
        with pytest.raises(ExchangeError, match="HTTP 403"):
            await client.fetch("data/z.zip")


async def test_connection_refused_is_network_error(tmp_path):
    client = ArchiveClient(
        "http://127.0.0.1:9", tmp_path, venue="binance", max_retries=1, backoff=0.001
    )
    async with client:
        with pytest.raises(NetworkError, match="binance"):
            await client.fetch("data/a.zip")


def test_parse_checksum():
    digest = "ab" * 32
    assert parse_checksum(f"{digest}  BTCUSDT-aggTrades-2024-03-01.zip\n") == digest
    with pytest.raises(DataError):
        parse_checksum("<html>oops</html>")


@pytest.mark.parametrize(
    ("header", "micros"), [(True, False), (False, False), (True, True), (False, True)]
)
def test_read_agg_trades_header_and_time_units(tmp_path, header, micros):
    trades = _day_trades(DAY1, n=20)
    csv = tmp_path / "t.csv"
    csv.write_bytes(binance_agg_csv(trades, header=header, micros=micros))
    got = read_agg_trades(csv).collect()
    assert got.equals(_expected(trades))
    assert got.schema["ts"] == pl.Datetime("ms", "UTC")


def test_read_agg_trades_rejects_foreign_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="3 columns"):
        read_agg_trades(bad)


def test_corrupt_zip_is_data_error(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        read_agg_trades(bad)


async def test_metrics_download_and_read(server, tmp_path):
    server.add_binance_metrics(
        "BTCUSDT",
        DAY1,
        [
            ("2024-03-01 00:05:00", 80000.5, 5.1e9, 1.9, 2.1, 2.3, 0.95),
            ("2024-03-01 00:00:00", 80001.0, 5.2e9, 1.8, 2.0, 2.2, 1.05),
        ],
    )
    async with _client(server, tmp_path) as client:
        paths = await download_metrics(client, "BTCUSDT", START, parse_time("2024-03-02"))
    df = read_metrics(paths)
    assert df.columns == [
        "ts",
        "symbol",
        "open_interest",
        "open_interest_value",
        "top_account_ratio",
        "top_position_ratio",
        "global_account_ratio",
        "taker_buy_sell_ratio",
    ]
    assert df["ts"].to_list()[0].isoformat() == "2024-03-01T00:00:00+00:00"
    assert df.row(1)[2:] == (80000.5, 5.1e9, 1.9, 2.1, 2.3, 0.95)


async def test_bybit_download_and_read(server, tmp_path):
    trades = _day_trades(DAY2, n=30)
    server.add_bybit_trades("BTCUSDT", DAY2, trades)
    client = bybit_archive_client(tmp_path, base_url=server.url, backoff=0.001)
    async with client:
        paths = await download_trades(client, "BTCUSDT", START, END)
    assert len(paths) == 1 and paths[0].name == "BTCUSDT2024-03-02.csv.gz"
    got = read_trades(paths).collect()
    want = _expected(trades).with_columns(pl.lit(None, dtype=pl.Int64).alias("trade_id"))
    assert got.equals(want)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [
        "BTCUSDT2024-03-02.csv.gz",
        "BTCUSDT2024-03-02.trades.parquet",
    ]


# ---------------------------------------------------------------------- hardening (issues #12, #13)


def _fast_gate() -> RateLimitGate:
    return RateLimitGate("binance", backoff=Backoff(0.02, 0.2))


async def test_a_trickling_download_hits_the_total_deadline(server, tmp_path):
    server.add("data/slow.zip", b"x" * 200, checksum=False)
    server.trickle("data/slow.zip", 0.02)  # 4 s for the whole file, each read quick
    async with _client(server, tmp_path, deadline=0.3, max_retries=1) as client:
        with pytest.raises(NetworkError, match=r"longer than its 0\.3s deadline"):
            await asyncio.wait_for(client.fetch("data/slow.zip"), 3)
    assert server.hits["data/slow.zip"] == 2
    assert not list((tmp_path / "_archive").rglob("slow.zip"))  # nothing torn left in place


async def test_a_second_ban_stops_every_download_of_the_venue(server, tmp_path):
    server.retry_after = None  # 418 without Retry-After: back off, probe once
    server.fault_delay_s = 0.2
    paths = [f"data/d{i}.zip" for i in range(4)]
    for path in paths:
        server.add(path, b"z", checksum=False)
        server.fail(path, *[418] * 10)
    async with _client(server, tmp_path, gate=_fast_gate()) as client:
        with pytest.raises(RateLimitError, match="banned again"):
            await client.fetch_many([(p, None) for p in paths])
        with pytest.raises(RateLimitError, match="banned again"):
            await client.fetch("data/other.zip")  # not even sent
    # Four in flight together (one ban), one probe (the second): nothing after that.
    assert sum(server.hits.values()) == 5


async def test_after_a_418_one_download_probes_before_the_rest(server, tmp_path):
    server.retry_after = "0.2"
    server.fault_delay_s = 0.2
    paths = [f"data/p{i}.zip" for i in range(4)]
    for path in paths:
        server.add(path, b"z" * 10, checksum=False)
        server.fail(path, 418)
        server.trickle(path, 0.005)  # each answer takes ~50 ms: overlapping requests would show
    async with _client(server, tmp_path, gate=_fast_gate()) as client:
        got = await client.fetch_many([(p, None) for p in paths])
    assert all(p is not None for p in got)
    statuses = [status for _, status, _ in server.log]
    assert statuses == [418] * 4 + [200] * 4
    first_ban = min(t for _, status, t in server.log if status == 418)
    probe, *rest = sorted(t for _, status, t in server.log if status == 200)
    assert probe - first_ban >= 0.2
    assert min(rest) - probe >= 0.04  # the others waited for the probe's answer
