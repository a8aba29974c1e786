"""``liq fetch`` end to end: the fetch service and the CLI against the fake Binance REST server (and
the fake data.binance.vision), reading back what was stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.exchanges.binance.rest import FETCH_DATASETS, binance_http
from liqcli.services.fetch import run_fetch
from liqcli.store.parquet import Store
from tests.fakes.archive_server import FakeArchiveServer, synthetic_trades
from tests.fakes.binance_rest import FakeBinanceRest

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
STEP = 5 * MIN
D = 1_795_046_400_000  # a UTC midnight (also on the 8-hour funding grid)
NOW = D + 2 * MIN
GRID = [d for d in FETCH_DATASETS if d != "funding"]
OI = "/futures/data/openInterestHist"
runner = CliRunner()


def read(store: Store, dataset: str, symbol: str, period: str = "5m") -> pl.DataFrame:
    partitions = {"exchange": "binance", "symbol": symbol}
    if dataset == "klines":
        partitions["interval"] = period
    elif dataset != "funding":
        partitions["period"] = period
    return store.read(dataset, **partitions)


def data_requests(server) -> list:
    """The server's requests but the symbol-list check (one exchangeInfo per fresh store)."""
    return [r for r in server.requests if r.path != "/fapi/v1/exchangeInfo"]


def utc_day(ts: int) -> date:
    return datetime.fromtimestamp(ts / 1000, tz=UTC).date()


def ms(df: pl.DataFrame) -> list[int]:
    return df["ts"].dt.epoch("ms").to_list()


def assert_contiguous(df: pl.DataFrame, first: int, last: int, step: int = STEP) -> None:
    ts = ms(df)
    assert ts[0] == first and ts[-1] == last
    assert len(ts) == (last - first) // step + 1  # no gap and no duplicate


class Recorder:
    def __init__(self) -> None:
        self.planned_pages = 0
        self.done_pages = 0
        self.rows = 0

    def planned(self, pages: int) -> None:
        self.planned_pages += pages

    def page_done(self, dataset: str, symbol: str, rows: int) -> None:
        self.done_pages += 1
        self.rows += rows


# ---------------------------------------------------------------------- the service


async def test_30_day_fetch_of_all_datasets_has_exact_row_counts(tmp_path):
    store = Store(tmp_path)
    progress = Recorder()
    with FakeBinanceRest(now_ms=NOW) as server:
        async with binance_http(server.url) as http:
            results = await run_fetch(
                store,
                ["BTCUSDT", "ETHUSDT"],
                list(FETCH_DATASETS),
                http=http,
                progress=progress,
                now=NOW,
            )
    assert [(r.dataset, r.symbol, r.status) for r in results] == [
        (d, s, "ok") for d in FETCH_DATASETS for s in ("BTCUSDT", "ETHUSDT")
    ]
    # The first period inside Binance's 30-day window up to the last finished period (klines: the
    # last closed candle; the one open at NOW is not stored).
    first, last = D - 30 * DAY + STEP, D - STEP
    for result in results:
        stored = read(store, result.dataset, result.symbol)
        if result.dataset == "funding":
            assert result.new_rows == stored.height == 90  # every 8 h, D - 30d + 8h .. D
        else:
            assert result.new_rows == stored.height == 8639
            assert_contiguous(stored, first, last)
            assert (result.first_ts, result.last_ts) == (first, last)
    # Pages of 500 (futures/data), 1000 (funding) and 1500 (klines): 18 + 1 + 6 per pair.
    assert sum(r.requests for r in results) == len(data_requests(server)) == 2 * (5 * 18 + 1 + 6)
    limits = {(r.path, r.params["limit"]) for r in data_requests(server)}
    assert {lim for path, lim in limits if path.startswith("/futures/data/")} == {"500"}
    assert {lim for path, lim in limits if path == "/fapi/v1/fundingRate"} == {"1000"}
    assert {lim for path, lim in limits if path == "/fapi/v1/klines"} == {"1500"}
    assert set(server.status_counts) == {200}  # zero 429s
    assert progress.planned_pages == progress.done_pages == len(data_requests(server))


async def test_second_run_fetches_only_what_is_new(tmp_path):
    store = Store(tmp_path)
    clock = [NOW]
    with FakeBinanceRest(now_ms=lambda: clock[0]) as server:
        async with binance_http(server.url) as http:
            await run_fetch(store, ["BTCUSDT"], list(FETCH_DATASETS), http=http, now=NOW)
            server.clear_log()
            again = await run_fetch(store, ["BTCUSDT"], list(FETCH_DATASETS), http=http, now=NOW)
            assert server.requests == [] and all(r.new_rows == 0 for r in again)
            clock[0] = NOW + HOUR
            later = await run_fetch(
                store, ["BTCUSDT"], list(FETCH_DATASETS), http=http, now=clock[0]
            )
    by_dataset = {r.dataset: r for r in later}
    assert by_dataset["funding"].new_rows == 0 and by_dataset["funding"].requests == 0
    for dataset in GRID:
        assert by_dataset[dataset].new_rows == 12  # D .. D + 55m
        assert by_dataset[dataset].first_ts == D
        stored = read(store, dataset, "BTCUSDT")
        assert_contiguous(stored, D - 30 * DAY + STEP, D + 55 * MIN)
    # One request per grid dataset, each starting right after the last stored row.
    assert len(server.requests) == len(GRID)
    assert {r.params["startTime"] for r in server.requests} == {str(D)}


async def test_holes_are_found_and_only_they_are_requested(tmp_path):
    store = Store(tmp_path)
    a, b, c, d = D - 3 * DAY, D - 2 * DAY, D - DAY, D
    with FakeBinanceRest(now_ms=NOW) as server:
        async with binance_http(server.url) as http:
            await run_fetch(
                store, ["BTCUSDT"], ["open_interest"], start=a, end=b, http=http, now=NOW
            )
            await run_fetch(
                store, ["BTCUSDT"], ["open_interest"], start=c, end=d, http=http, now=NOW
            )
            server.clear_log()
            (result,) = await run_fetch(
                store, ["BTCUSDT"], ["open_interest"], start=a, end=d, http=http, now=NOW
            )
    assert result.new_rows == 288 and (result.first_ts, result.last_ts) == (b, c - STEP)
    assert [(int(r.params["startTime"]), int(r.params["endTime"])) for r in server.requests] == [
        (b, c - 1)
    ]
    assert_contiguous(read(store, "open_interest", "BTCUSDT"), a, d - STEP)


async def test_funding_pages_by_start_time_and_limit(tmp_path):
    store = Store(tmp_path)
    with FakeBinanceRest(now_ms=NOW) as server:
        async with binance_http(server.url) as http:
            (result,) = await run_fetch(
                store, ["BTCUSDT"], ["funding"], start=D - 380 * DAY, http=http, now=NOW
            )
    assert result.new_rows == 380 * 3 + 1 and result.requests == 2
    first_page, second_page = data_requests(server)
    assert int(first_page.params["startTime"]) == D - 380 * DAY
    stored = ms(read(store, "funding", "BTCUSDT"))
    assert int(second_page.params["startTime"]) == stored[999] + 1  # right after the full page
    assert len(set(stored)) == len(stored) == 1141


async def test_beyond_30_days_is_explained_not_truncated(tmp_path):
    store = Store(tmp_path)
    with FakeBinanceRest(now_ms=NOW) as server:
        async with binance_http(server.url) as http:
            oi, klines = await run_fetch(
                store,
                ["BTCUSDT"],
                ["open_interest", "klines"],
                start=NOW - 40 * DAY,
                http=http,
                now=NOW,
            )
    assert oi.status == "partial" and "30 days" in oi.note and "--archive" in oi.note
    assert oi.new_rows == 8639  # everything Binance still has was fetched
    assert klines.status == "ok" and klines.new_rows == 40 * 288 - 1  # klines keep full history
    assert set(server.status_counts) == {200}  # no request was sent for what Binance refuses


async def test_429_and_418_are_waited_out_and_the_fetch_completes(tmp_path):
    store = Store(tmp_path)
    with FakeBinanceRest(now_ms=NOW) as server:
        server.inject("429", path=OI, retry_after=0.3)
        server.inject("418", path="/fapi/v1/klines", retry_after=0.5)
        server.inject("status", path="/fapi/v1/fundingRate", status=503)
        async with binance_http(server.url, backoff_s=0.05) as http:
            results = await run_fetch(
                store, ["BTCUSDT"], list(FETCH_DATASETS), start=NOW - 3 * DAY, http=http, now=NOW
            )
    assert all(r.status == "ok" for r in results)
    assert {r.dataset: r.new_rows for r in results} == {**{d: 863 for d in GRID}, "funding": 9}
    assert (http.stats.rate_limited, http.stats.banned, http.stats.server_errors) == (1, 1, 1)
    klines = server.requests_to("/fapi/v1/klines")
    banned = next(r for r in klines if r.status == 418)
    assert all(r.t - banned.t >= 0.5 for r in klines if r.t > banned.t)


async def test_malformed_response_fails_its_dataset_and_leaves_the_store_untouched(tmp_path):
    store = Store(tmp_path)
    with FakeBinanceRest(now_ms=NOW) as server:
        async with binance_http(server.url) as http:
            await run_fetch(
                store,
                ["BTCUSDT"],
                ["open_interest", "funding"],
                start=NOW - 3 * DAY,
                http=http,
                now=NOW - DAY,
            )
            files = sorted((store.root / "open_interest").rglob("*.parquet"))
            before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
            server.inject("malformed", path=OI)
            oi, funding = await run_fetch(
                store,
                ["BTCUSDT"],
                ["open_interest", "funding"],
                start=NOW - 3 * DAY,
                http=http,
                now=NOW,
            )
    assert oi.status == "error" and oi.new_rows == 0
    assert "malformed JSON from GET /futures/data/openInterestHist" in oi.error
    assert funding.status == "ok" and funding.new_rows == 3
    assert sorted((store.root / "open_interest").rglob("*.parquet")) == files
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before


async def test_a_failure_mid_range_keeps_the_pages_before_it(tmp_path):
    store = Store(tmp_path)
    with FakeBinanceRest(now_ms=NOW) as server:
        async with binance_http(server.url, max_retries=0) as http:
            # Requests 1-4 are in flight at once; the 5th page request fails for good.
            original = server._route

            async def fail_fifth(method, path, params, now):
                if path == OI and len(server.requests_to(OI)) == 5:
                    return await original(method, path, {**params, "symbol": "NOPE"}, now)
                return await original(method, path, params, now)

            server._route = fail_fifth
            (result,) = await run_fetch(
                store, ["BTCUSDT"], ["open_interest"], http=http, now=NOW, flush_rows=1
            )
    assert result.status == "error" and "unknown symbol" in result.error
    stored = read(store, "open_interest", "BTCUSDT")
    assert_contiguous(stored, D - 30 * DAY + STEP, D - 30 * DAY + 4 * 500 * STEP)


# ---------------------------------------------------------------------- --archive


def _metrics_rows(day: date) -> list[tuple]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rows = []
    for i in range(288):
        t = start + timedelta(minutes=5 * i)
        ratio = 1 + (i % 7) / 10
        rows.append(
            (
                t.strftime("%Y-%m-%d %H:%M:%S"),
                1000 + i,
                3e7 + i,
                ratio,
                ratio + 0.1,
                ratio + 0.2,
                0.9,
            )
        )
    return rows


async def test_archive_fills_history_older_than_30_days_from_daily_metrics(tmp_path):
    store = Store(tmp_path)
    start = D - 35 * DAY
    days = [utc_day(start + i * DAY) for i in range(7)]
    with FakeBinanceRest(now_ms=NOW) as server, FakeArchiveServer() as archive:
        for day in days:
            archive.add_binance_metrics("BTCUSDT", day, _metrics_rows(day))
        async with binance_http(server.url) as http:
            args = dict(start=start, archive=True, archive_url=archive.url, http=http, now=NOW)
            results = await run_fetch(
                store, ["BTCUSDT"], ["open_interest", "top_account_ratio", "taker_ratio"], **args
            )
            hits = sum(archive.hits.values())
            server.clear_log()
            again = await run_fetch(
                store, ["BTCUSDT"], ["open_interest", "top_account_ratio", "taker_ratio"], **args
            )
    assert all(r.status == "ok" for r in results)
    for r in results:
        assert_contiguous(read(store, r.dataset, "BTCUSDT"), start, D - STEP)  # archive + REST
    old = read(store, "top_account_ratio", "BTCUSDT").filter(
        pl.col("ts").dt.epoch("ms") < D - 30 * DAY
    )
    assert old["long_share"].to_list() == pytest.approx(
        (old["long_short_ratio"] / (1 + old["long_short_ratio"])).to_list()
    )
    taker_old = read(store, "taker_ratio", "BTCUSDT").filter(
        pl.col("ts").dt.epoch("ms") < D - 30 * DAY
    )
    assert taker_old["buy_vol"].null_count() == taker_old.height > 0  # the archive has no volumes
    # Second run: nothing missing, so no download and no request.
    assert all(r.new_rows == 0 for r in again)
    assert sum(archive.hits.values()) == hits and server.requests == []


async def test_archive_day_missing_is_skipped_with_a_partial_status(tmp_path):
    store = Store(tmp_path)
    start = D - 33 * DAY
    with FakeBinanceRest(now_ms=NOW) as server, FakeArchiveServer() as archive:
        for i in (0, 2):  # day 1 is missing (404)
            day = utc_day(start + i * DAY)
            archive.add_binance_metrics("BTCUSDT", day, _metrics_rows(day))
        async with binance_http(server.url) as http:
            (oi,) = await run_fetch(
                store,
                ["BTCUSDT"],
                ["open_interest"],
                start=start,
                archive=True,
                archive_url=archive.url,
                http=http,
                now=NOW,
            )
    # [start, the REST window) touches 4 UTC days; days 1 and 3 are not in the archive.
    assert oi.status == "partial" and "2 of 4 days" in oi.note and "(404)" in oi.note
    assert oi.new_rows == 2 * 288 + 8639


async def test_archive_agg_trades_are_stored_verified_and_cached(tmp_path):
    store = Store(tmp_path)
    day1 = date(2026, 11, 1)
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
    trades = [
        synthetic_trades(500, start + i * DAY, seed=i, step_ms=60_000).with_columns(
            pl.col("trade_id") + 500 * i  # ids run on across days, as Binance's do
        )
        for i in range(2)
    ]
    with FakeArchiveServer() as archive:
        for i, frame in enumerate(trades):
            archive.add_binance_agg_trades("BTCUSDT", day1 + timedelta(days=i), frame)
        args = dict(
            start=start, end=start + 3 * DAY, archive=True, archive_url=archive.url, now=NOW
        )
        async with binance_http("http://127.0.0.1:9") as http:
            (result,) = await run_fetch(store, ["BTCUSDT"], ["agg_trades"], http=http, **args)
            hits = dict(archive.hits)
            (again,) = await run_fetch(store, ["BTCUSDT"], ["agg_trades"], http=http, **args)
    assert result.status == "partial" and "2026-11-03" in result.note  # the third day is a 404
    assert result.new_rows == 1000 and again.new_rows == 0
    stored = store.read("agg_trades", exchange="binance", symbol="BTCUSDT")
    assert (
        stored["trade_id"].to_list()
        == trades[0]["trade_id"].to_list() + trades[1]["trade_id"].to_list()
    )
    # Stored days are not downloaded again; the zips sit where `liq map` looks for them.
    assert {p: n for p, n in archive.hits.items() if "2026-11-03" not in p} == {
        p: n for p, n in hits.items() if "2026-11-03" not in p
    }
    assert len(list((tmp_path / "_archive" / "binance").rglob("*.zip"))) == 2


async def test_archive_never_asks_for_the_day_that_has_not_ended(tmp_path):
    store = Store(tmp_path)
    day1 = date(2026, 11, 1)
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
    now = start + 2 * DAY + 10 * 3_600_000  # 2026-11-03 10:00: that day is not archived yet
    with FakeArchiveServer() as archive:
        for i in range(2):
            frame = synthetic_trades(50, start + i * DAY, seed=i, step_ms=60_000)
            archive.add_binance_agg_trades("BTCUSDT", day1 + timedelta(days=i), frame)
        async with binance_http("http://127.0.0.1:9") as http:
            (result,) = await run_fetch(
                store, ["BTCUSDT"], ["agg_trades"], http=http, start=start, end=now,
                archive=True, archive_url=archive.url, now=now,
            )  # fmt: skip
    assert result.status == "ok" and result.new_rows == 100, result
    assert "2026-11-03 is not archived before it ends" in result.note
    assert not any("2026-11-03" in p for p in archive.hits)


async def test_archive_agg_trades_day_stored_in_part_is_completed_from_the_cache(tmp_path):
    store = Store(tmp_path)
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
    trades = synthetic_trades(1440, start, step_ms=60_000)  # one a minute all day
    with FakeArchiveServer() as archive:
        path = archive.add_binance_agg_trades("BTCUSDT", date(2026, 11, 1), trades)
        async with binance_http("http://127.0.0.1:9") as http:
            args = dict(archive=True, archive_url=archive.url, http=http, now=NOW)
            (afternoon,) = await run_fetch(
                store, ["BTCUSDT"], ["agg_trades"], start=start + 12 * HOUR, end=start + DAY, **args
            )
            (whole,) = await run_fetch(
                store, ["BTCUSDT"], ["agg_trades"], start=start, end=start + DAY, **args
            )
    assert (afternoon.new_rows, whole.new_rows) == (720, 720)
    assert archive.hits[path] == 1  # the second run read the cached zip
    stored = store.read("agg_trades", exchange="binance", symbol="BTCUSDT")
    assert stored["trade_id"].to_list() == trades["trade_id"].to_list()


async def test_archive_checksum_mismatch_fails_the_dataset(tmp_path):
    store = Store(tmp_path)
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
    with FakeArchiveServer() as archive:
        archive.add_binance_agg_trades(
            "BTCUSDT", date(2026, 11, 1), synthetic_trades(50, start), corrupt_checksum=True
        )
        async with binance_http("http://127.0.0.1:9") as http:
            (result,) = await run_fetch(
                store,
                ["BTCUSDT"],
                ["agg_trades"],
                start=start,
                end=start + DAY,
                archive=True,
                archive_url=archive.url,
                http=http,
                now=NOW,
            )
    assert result.status == "error" and "checksum mismatch" in result.error
    assert not (tmp_path / "agg_trades").exists()


# ---------------------------------------------------------------------- the CLI


def _cli(data_dir: Path, url: str, *args: str):
    return runner.invoke(
        app, ["--data-dir", str(data_dir), "fetch", *args], env={"LIQ_BINANCE_REST_URL": url}
    )


def test_cli_exact_counts_json_document(tmp_path):
    day = now_ms() // DAY * DAY
    start, end = iso_ms(day - 3 * DAY), iso_ms(day - DAY)
    with FakeBinanceRest() as server:
        result = _cli(tmp_path, server.url, "BTCUSDT", "--start", start, "--end", end, "-f", "json")
    assert result.exit_code == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert (
        document["start"] == start and document["end"] == end and document["symbols"] == ["BTCUSDT"]
    )
    counts = {row["dataset"]: row["new_rows"] for row in document["results"]}
    assert counts == {**{d: 576 for d in GRID}, "funding": 6}
    assert document["new_rows"] == 5 * 576 + 576 + 6 and document["requests"] == len(
        data_requests(server)
    )
    assert {row["status"] for row in document["results"]} == {"ok"}


def test_cli_unknown_symbol_is_one_line_exit_2_before_any_data_request(tmp_path):
    with FakeBinanceRest() as server:
        args = ("BTCUSDT", "nopeusdt", "--since", "1d", "-d", "open_interest", "-d", "funding")
        result = _cli(tmp_path, server.url, *args)
        assert result.exit_code == 2, result.output
        assert result.stderr == (
            "liq: error: unknown symbol NOPEUSDT: not listed by Binance USDⓈ-M futures "
            "(e.g. BTCUSDT)\n"
        )
        assert result.stdout == "" and data_requests(server) == []
        # The list is cached: a second mistake costs no request at all.
        again = _cli(tmp_path, server.url, "FOOUSDT", "--since", "1d")
        assert again.exit_code == 2 and "FOOUSDT" in again.stderr
        assert len(server.requests_to("/fapi/v1/exchangeInfo")) == 2  # refreshed once for FOO
        ok = _cli(tmp_path, server.url, "BTCUSDT", "--since", "1d", "-d", "funding")
        assert ok.exit_code == 0 and len(server.requests_to("/fapi/v1/exchangeInfo")) == 2
    assert not (tmp_path / "open_interest").exists()


def test_cli_unknown_symbol_without_a_symbol_list_is_one_row_and_one_line(tmp_path):
    with FakeBinanceRest() as server:
        server.inject("status", path="/fapi/v1/exchangeInfo", status=404, count=10)
        result = _cli(
            tmp_path, server.url, "BTCUSDT", "nopeusdt", "--since", "1d",
            "-d", "open_interest", "-d", "funding", "-d", "klines",
        )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith("liq: error: binance: unknown symbol NOPEUSDT")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    nope_rows = [line for line in result.stdout.splitlines() if "NOPEUSDT" in line]
    assert len(nope_rows) == 1 and "error" in nope_rows[0]
    store = Store(tmp_path)
    assert read(store, "open_interest", "BTCUSDT").height >= 287
    assert read(store, "funding", "BTCUSDT").height >= 3
    assert not (tmp_path / "open_interest" / "exchange=binance" / "symbol=NOPEUSDT").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["BTCUSDT", "--period", "7m"], "invalid period '7m'"),
        (["BTCUSDT", "--start", "yesterday-ish"], "invalid date 'yesterday-ish'"),
        (["BTCUSDT", "--end", "2026-13-01"], "invalid date '2026-13-01'"),
        (["BTCUSDT", "--dataset", "liquidations"], "unknown dataset 'liquidations'"),
        (["BTCUSDT", "--dataset", "agg_trades"], "add --archive"),
        (["BTCUSDT", "--since", "30d", "--start", "2026-01-01"], "--since and --start"),
        (["BTCUSDT", "--since", "soon"], "invalid duration 'soon'"),
        (["BTCUSDT", "--start", "2026-11-02", "--end", "2026-11-01"], "empty range"),
        (["BTC/USDT"], "invalid symbol 'BTC/USDT'"),
    ],
)
def test_cli_usage_errors_exit_2_before_any_request(tmp_path, args, message):
    with FakeBinanceRest() as server:
        result = _cli(tmp_path, server.url, *args)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert server.requests == []


def test_cli_kill_9_midway_then_rerun_has_no_gaps_and_no_duplicates(tmp_path):
    day = now_ms() // DAY * DAY
    start, end = day - 25 * DAY, day - DAY
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    command = [
        sys.executable,
        "-m",
        "liqcli",
        "--data-dir",
        str(tmp_path),
        "fetch",
        *symbols,
        "--start",
        str(start),
        "--end",
        str(end),
        "--quiet",
    ]
    with FakeBinanceRest(latency_s=0.03) as server:
        env = {**os.environ, "LIQ_BINANCE_REST_URL": server.url}
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        # Kill once several series have written a chunk (and others are still being fetched).
        while (
            len(list(tmp_path.glob("*/exchange=binance/*/*/*.parquet"))) < 4
            and process.poll() is None
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        first_run_requests = len(server.requests)
        store = Store(tmp_path)
        partial_rows = sum(read(store, d, s).height for d in FETCH_DATASETS for s in symbols)
        server.latency_s = 0.0
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    expected_grid = (end - start) // STEP
    full = len(symbols) * (len(GRID) * expected_grid + 72)
    assert 0 < partial_rows < full  # the kill really landed mid-way
    for dataset in FETCH_DATASETS:
        for symbol in symbols:
            stored = read(store, dataset, symbol)
            if dataset == "funding":
                assert stored.height == 72 and stored["ts"].n_unique() == 72
            else:
                assert_contiguous(stored, start, end - STEP)
    assert store.corrupt_files == []
    # The rerun asked only for what was missing (plus pages fetched but not yet written).
    rows = (end - start) // STEP
    all_pages = len(symbols) * (5 * -(-rows // 500) + -(-rows // 1500) + 1)
    assert len(server.requests) - first_run_requests < all_pages


def test_cli_partial_result_warns_on_stderr_and_quiet_prints_nothing(tmp_path):
    command = [sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path), "fetch", "BTCUSDT"]
    command += ["-d", "open_interest", "--since", "35d"]
    with FakeBinanceRest() as server:
        env = {**os.environ, "LIQ_BINANCE_REST_URL": server.url}
        loud = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        quiet = subprocess.run(
            [*command, "--quiet"], env=env, capture_output=True, text=True, timeout=60
        )
        quiet_json = subprocess.run(
            [*command, "--quiet", "-f", "json"], env=env, capture_output=True, text=True
        )
    assert loud.returncode == 0 and quiet.returncode == 0
    assert "partial" in loud.stdout and "--archive" in loud.stdout
    assert "liq: warning:" in loud.stderr and "last 30 days of open_interest" in loud.stderr
    # What cron mails: nothing at all on success.
    assert quiet.stderr == "" and quiet.stdout == ""
    assert quiet_json.returncode == 0 and '"status":"partial"' in quiet_json.stdout


def test_cli_partial_with_nothing_stored_is_a_failure(tmp_path):
    # 35-40 days back: all older than the REST window, nothing can be stored without --archive.
    with FakeBinanceRest() as server:
        result = _cli(tmp_path, server.url, "BTCUSDT", "-d", "open_interest",
                      "--start", "40d", "--end", "35d", "--quiet")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "nothing stored" in result.stderr and "--archive" in result.stderr
    assert "error" in result.stdout  # the summary still shows on a failure


def test_cli_since_counts_back_from_end(tmp_path):
    end = now_ms() // DAY * DAY - 2 * DAY
    with FakeBinanceRest() as server:
        result = _cli(tmp_path, server.url, "BTCUSDT", "-d", "funding", "--since", "3d",
                      "--end", str(end), "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert doc["start"] == iso_ms(end - 3 * DAY) and doc["end"] == iso_ms(end)


def test_cli_unwritable_data_dir_is_reported_before_any_request(tmp_path):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    with FakeBinanceRest() as server:
        result = _cli(Path("/proc/liq-test-data"), server.url, "BTCUSDT", "--since", "1d")
        assert result.exit_code == 1 and server.requests == []
    assert result.stderr.startswith("liq: error: data dir /proc/liq-test-data is not writable")


def test_cli_ctrl_c_exits_130_and_keeps_what_was_fetched(tmp_path):
    command = [
        sys.executable,
        "-m",
        "liqcli",
        "--data-dir",
        str(tmp_path),
        "fetch",
        "BTCUSDT",
        "ETHUSDT",
    ]
    with FakeBinanceRest(latency_s=0.05) as server:
        env = {**os.environ, "LIQ_BINANCE_REST_URL": server.url}
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while len(server.requests) < 60:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr
    store = Store(tmp_path)
    kept = sum(read(store, d, s).height for d in FETCH_DATASETS for s in ("BTCUSDT", "ETHUSDT"))
    assert kept > 0 and store.corrupt_files == []


def test_cli_a_ban_on_the_symbol_list_ends_the_run_before_any_data_request(tmp_path):
    with FakeBinanceRest() as server:
        server.inject("418", path="/fapi/v1/exchangeInfo", count=5, retry_after=3_600)
        result = _cli(tmp_path, server.url, "BTCUSDT", "ETHUSDT", "--since", "1d")
        assert data_requests(server) == []
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("liq: error: binance:") and "Traceback" not in result.output
