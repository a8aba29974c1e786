"""``liq fetch --archive --dataset book_depth|book_ticker``: data.binance.vision daily bookDepth
and bookTicker zips (real layouts) into ``book_depth`` (source=archive) and ``book_tops``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from liqcli.errors import DataError, UsageError
from liqcli.exchanges.binance.archive import read_book_depth, read_book_ticker
from liqcli.exchanges.binance.rest import binance_http
from liqcli.services.fetch import run_fetch
from liqcli.store.parquet import Store
from tests.fakes.archive_server import FakeArchiveServer, zip_bytes

DAY = 86_400_000
START = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
NOW = START + 10 * DAY
PERCENTAGES = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)


def book_depth_csv(day: date, snapshots: int) -> str:
    """Rows as the archive has them: a text timestamp every ~30 s, ten bands each."""
    lines = ["timestamp,percentage,depth,notional"]
    base = datetime(day.year, day.month, day.day, tzinfo=UTC)
    for n in range(snapshots):
        stamp = (base + timedelta(seconds=30 * n + 8)).strftime("%Y-%m-%d %H:%M:%S")
        for pct in PERCENTAGES:
            depth = 100.0 * abs(pct) + n
            lines.append(f"{stamp},{pct:.2f},{depth:.3f},{depth * 87000:.5f}")
    return "\n".join(lines) + "\n"


def book_ticker_csv(day_start: int, count: int, *, header: bool = True) -> str:
    lines = (
        [
            "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time"
        ]
        if header
        else []
    )
    for n in range(count):
        t = day_start + n * 1000
        lines.append(f"{9_000_000 + n},87000.{n % 10},1.{n % 7},87000.{n % 10 + 1},2.5,{t},{t + 3}")
    return "\n".join(lines) + "\n"


def add(archive: FakeArchiveServer, kind: str, day: date, text: str) -> str:
    name = f"BTCUSDT-{kind}-{day.isoformat()}"
    path = f"data/futures/um/daily/{kind}/BTCUSDT/{name}.zip"
    archive.add(path, zip_bytes(name + ".csv", text.encode()))
    return path


async def test_book_depth_and_ticker_from_the_archive(tmp_path) -> None:
    store = Store(tmp_path)
    day1 = date(2026, 11, 1)
    with FakeArchiveServer() as archive:
        for i in range(2):
            add(
                archive,
                "bookDepth",
                day1 + timedelta(days=i),
                book_depth_csv(day1 + timedelta(days=i), 2880),
            )
        add(archive, "bookTicker", day1, book_ticker_csv(START, 500))  # day 2 not published
        args = dict(
            start=START, end=START + 2 * DAY, archive=True, archive_url=archive.url, now=NOW
        )
        async with binance_http("http://127.0.0.1:9") as http:
            depth, ticker = await run_fetch(
                store, ["BTCUSDT"], ["book_depth", "book_ticker"], http=http, **args
            )
            hits = sum(archive.hits.values())
            again = await run_fetch(store, ["BTCUSDT"], ["book_depth"], http=http, **args)
    assert depth.status == "ok" and depth.new_rows == 2 * 2880 * 10
    assert ticker.status == "partial" and "2026-11-02" in ticker.note and ticker.new_rows == 500
    assert again[0].new_rows == 0 and sum(archive.hits.values()) == hits  # stored days skipped
    bands = store.read("book_depth", exchange="binance", symbol="BTCUSDT", source="archive")
    first = bands.filter(pl.col("ts") == bands["ts"].min()).sort("side", "level")
    assert first["side"].to_list() == ["ask"] * 5 + ["bid"] * 5
    assert first["level"].to_list() == [100, 200, 300, 400, 500] * 2
    assert first["percentage"].to_list() == [1.0, 2.0, 3.0, 4.0, 5.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    assert first["depth"][0] == 100.0 and first["price"].null_count() == 10
    assert first["ts"][0] == datetime(2026, 11, 1, 0, 0, 8, tzinfo=UTC)
    tops = store.read("book_tops", exchange="binance", symbol="BTCUSDT")
    assert tops.height == 500 and tops["update_id"][0] == 9_000_000
    assert tops.row(1, named=True)["bid"] == 87000.1 and tops["seq"].null_count() == 500


def test_readers_parse_and_refuse(tmp_path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text(book_ticker_csv(START, 3, header=False))  # older files have no header
    frame = read_book_ticker(csv)
    assert frame["update_id"].to_list() == [9_000_000, 9_000_001, 9_000_002]
    assert frame["ts"].dt.epoch("ms").to_list() == [START, START + 1000, START + 2000]
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,percentage,depth,notional\n2026-11-01 00:00:08,-1.00,abc,1\n")
    with pytest.raises(DataError, match=r"bad\.csv"):
        read_book_depth(bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks"):
        read_book_depth(wrong)
    assert read_book_depth([]).height == 0


async def test_book_archives_need_archive(tmp_path) -> None:
    with pytest.raises(UsageError, match="--archive"):
        await run_fetch(Store(tmp_path), ["BTCUSDT"], ["book_depth"], now=NOW)
