"""``liq liquidations``: stored liquidations summed per interval and symbol/exchange/coin, as a
table, CSV, JSON and a PNG, read from a real store written by the Store API."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.services.liquidations import (
    OTHER,
    HistoryQuery,
    aggregate,
    coin_of,
    liquidation_history,
)
from liqcli.store.parquet import Store

runner = CliRunner()
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def row(exchange, symbol, venue_symbol, ts, side, usd) -> dict:
    return {
        "exchange": exchange,
        "symbol": symbol,
        "ts": ts,
        "side": side,
        "price": 100.0,
        "qty": usd / 100.0,
        "notional_usd": usd,
        "venue_symbol": venue_symbol,
        "received_ts": ts + 5,
    }


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows).with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("received_ts").cast(pl.Datetime("ms", "UTC")),
    )


ROWS = [
    # Hour 0: BTC on four contracts of three venues, and ETH.
    row("binance", "BTCUSDT", "BTCUSDT", T0 + 60_000, "long", 1_000_000.0),
    row("okx", "BTCUSDT", "BTC-USDT-SWAP", T0 + 120_000, "long", 250_000.0),
    row("okx", "BTCUSD", "BTC-USD-SWAP", T0 + 180_000, "short", 400_000.0),
    row("bybit", "BTCUSDT", "BTCUSDT", T0 + 240_000, "short", 100_000.0),
    row("binance", "ETHUSDT", "ETHUSDT", T0 + 300_000, "long", 50_000.0),
    # Hour 1: PEPE under two names, more ETH.
    row("binance", "1000PEPEUSDT", "1000PEPEUSDT", T0 + HOUR + 1, "short", 30_000.0),
    row("okx", "PEPEUSDT", "PEPE-USDT-SWAP", T0 + HOUR + 2, "short", 20_000.0),
    row("okx", "ETHUSDT", "ETH-USDT-SWAP", T0 + HOUR + 3, "short", 70_000.0),
    # Day 2: a late BTC long.
    row("binance", "BTCUSDT", "BTCUSDT", T0 + DAY + 5, "long", 5_000.0),
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    Store(tmp_path).write("liquidations", frame(ROWS))
    return tmp_path


def liq(data_dir: Path, *args: str):
    return runner.invoke(app, ["--data-dir", str(data_dir), "liquidations", *args])


def test_coin_is_the_same_across_venues_and_contracts() -> None:
    for symbol, venue_symbol, coin in [
        ("BTCUSDT", "BTCUSDT", "BTC"),
        ("BTCUSDT", "BTC-USDT-SWAP", "BTC"),
        ("BTCUSD", "BTC-USD-SWAP", "BTC"),
        ("BTCUSD_250328", "BTC-USD-250328", "BTC"),
        ("BTCUSDT_250328", "", "BTC"),
        ("BTCUSD_PERP", "", "BTC"),
        ("BTCPERP", "BTCPERP", "BTC"),
        ("ETHUSDC", "ETHUSDC", "ETH"),
        ("ETHFDUSD", "", "ETH"),
        ("1000PEPEUSDT", "1000PEPEUSDT", "PEPE"),
        ("PEPEUSDT", "PEPE-USDT-SWAP", "PEPE"),
        ("1INCHUSDT", "1INCHUSDT", "1INCH"),  # a name that starts with a digit keeps it
        ("USDT", "", "USDT"),  # nothing but a quote: the name itself
    ]:
        assert coin_of(symbol, venue_symbol) == coin, (symbol, venue_symbol)


def test_by_coin_adds_up_every_venue_and_contract(data_dir: Path) -> None:
    query = HistoryQuery(T0, T0 + 2 * DAY, "1h", "coin", top=0)
    history = liquidation_history(Store(data_dir), query)
    totals = {r["coin"]: r for r in history.totals.to_dicts()}
    assert totals["BTC"]["long_usd"] == 1_255_000.0 and totals["BTC"]["short_usd"] == 500_000.0
    assert totals["BTC"]["long_count"] == 3 and totals["BTC"]["short_count"] == 2
    assert totals["PEPE"]["short_usd"] == 50_000.0 and totals["PEPE"]["short_count"] == 2
    assert totals["ETH"]["total_usd"] == 120_000.0
    assert list(totals) == ["BTC", "ETH", "PEPE"]  # largest first
    first_hour = history.rows.filter(pl.col("ts").dt.epoch("ms") == T0)
    assert first_hour.select("coin", "long_usd", "short_usd").rows() == [
        ("BTC", 1_250_000.0, 500_000.0),
        ("ETH", 50_000.0, 0.0),
    ]
    # Symbols are kept apart by --by symbol; OKX's BTC-USDT-SWAP is stored as BTCUSDT.
    by_symbol = liquidation_history(Store(data_dir), HistoryQuery(T0, T0 + 2 * DAY, "1d", "symbol"))
    day0 = {r["symbol"]: r["total_usd"] for r in by_symbol.rows.to_dicts() if r["ts"].day == 1}
    assert day0["BTCUSDT"] == 1_350_000.0 and day0["BTCUSD"] == 400_000.0
    assert day0["1000PEPEUSDT"] == 30_000.0 and day0["PEPEUSDT"] == 20_000.0


def test_arguments_select_symbols_venue_symbols_or_coins(data_dir: Path) -> None:
    store = Store(data_dir)

    def total(*names: str, by: str = "coin") -> float:
        query = HistoryQuery(T0, T0 + 2 * DAY, "1d", by, names)
        return liquidation_history(store, query).totals["total_usd"].sum()

    assert total("BTC") == 1_755_000.0
    assert total("BTCUSDT", by="symbol") == 1_355_000.0  # three venues' BTCUSDT
    assert total("BTC-USD-SWAP", by="symbol") == 400_000.0  # one OKX contract by its own name
    assert total("PEPE", "ETH") == 170_000.0
    assert total("DOGE") == 0.0


def test_top_groups_are_named_and_the_rest_summed(data_dir: Path) -> None:
    query = HistoryQuery(T0, T0 + 2 * DAY, "1h", "exchange", top=1)
    history = liquidation_history(Store(data_dir), query)
    assert history.totals["exchange"].to_list() == ["binance", OTHER]
    assert history.totals["total_usd"].sum() == sum(r["notional_usd"] for r in ROWS)
    hour0 = history.rows.filter(pl.col("ts").dt.epoch("ms") == T0)
    assert dict(hour0.select("exchange", "total_usd").rows()) == {
        "binance": 1_050_000.0,
        OTHER: 750_000.0,
    }


def test_rows_that_are_not_amounts_are_left_out() -> None:
    bad = [
        row("binance", "BTCUSDT", "BTCUSDT", T0, "long", float("nan")),
        row("binance", "BTCUSDT", "BTCUSDT", T0 + 1, "long", float("inf")),
        row("binance", "BTCUSDT", "BTCUSDT", T0 + 2, "long", -5.0),
        row("binance", "BTCUSDT", "BTCUSDT", T0 + 3, "both", 5.0),
        row("binance", "BTCUSDT", "BTCUSDT", T0 + 4, "short", 7.0),
    ]
    _rows, totals = aggregate(frame(bad).lazy(), HistoryQuery(T0, T0 + HOUR, "1h"))
    assert totals.rows() == [("BTCUSDT", 0.0, 7.0, 7.0, 0, 1)]


def test_weeks_start_on_monday(data_dir: Path) -> None:
    history = liquidation_history(
        Store(data_dir), HistoryQuery(T0 - 7 * DAY, T0 + 7 * DAY, "1w", "coin")
    )
    assert {ts.weekday() for ts in history.rows["ts"].to_list()} == {0}


# -- the command ---------------------------------------------------------------------------------


def test_table_csv_and_json(data_dir: Path) -> None:
    span = ["--start", "2025-12-01", "--end", "2025-12-03"]
    table = liq(data_dir, "BTC", "ETH", "--by", "coin", *span)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ts", "coin", "long_usd", "short_usd", "total_usd", "long_count",
                                "short_count"]  # fmt: skip
    assert "2025-12-01T00:00:00.000Z  BTC" in table.stdout and "1,250,000.00" in table.stdout
    assert "Totals 2025-12-01T00:00:00.000Z .. 2025-12-03T00:00:00.000Z" in table.stdout
    assert table.stderr == ""

    result = liq(data_dir, "--by", "exchange", "--interval", "1d", "-f", "csv", *span)
    assert result.exit_code == 0, result.output
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {(r["ts"][:10], r["exchange"]) for r in parsed} == {
        ("2025-12-01", "binance"), ("2025-12-01", "okx"), ("2025-12-01", "bybit"),
        ("2025-12-02", "binance"),
    }  # fmt: skip
    assert float(next(r for r in parsed if r["exchange"] == "okx")["total_usd"]) == 740_000.0

    result = liq(data_dir, "-e", "okx", "--by", "coin", "-f", "json", *span)
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert doc["by"] == "coin" and doc["interval"] == "1h" and doc["exchanges"] == ["okx"]
    assert doc["start"] == "2025-12-01T00:00:00.000Z"
    assert {t["coin"]: t["total_usd"] for t in doc["totals"]} == {
        "BTC": 650_000.0, "ETH": 70_000.0, "PEPE": 20_000.0,
    }  # fmt: skip
    assert doc["rows"][0] == {
        "ts": "2025-12-01T00:00:00.000Z", "coin": "BTC", "long_usd": 250_000.0,
        "short_usd": 400_000.0, "total_usd": 650_000.0, "long_count": 1, "short_count": 1,
    }  # fmt: skip


def test_relative_start_counts_back_from_end(data_dir: Path) -> None:
    result = liq(data_dir, "--start", "1d", "--end", "2025-12-02", "-f", "json")
    doc = orjson.loads(result.stdout)
    assert doc["start"] == "2025-12-01T00:00:00.000Z" and doc["end"] == "2025-12-02T00:00:00.000Z"
    assert sum(t["total_usd"] for t in doc["totals"]) == 1_920_000.0


def test_an_empty_range_exits_0_and_says_what_is_stored(data_dir: Path) -> None:
    result = liq(data_dir, "--start", "2020-01-01", "--end", "2020-01-02", "-f", "json")
    assert result.exit_code == 0
    assert orjson.loads(result.stdout)["rows"] == []
    assert result.stderr.strip() == (
        "liq: no liquidations stored between 2020-01-01T00:00:00.000Z and "
        "2020-01-02T00:00:00.000Z (stored for this selection: 2025-12-01T00:01:00.000Z .. "
        "2025-12-02T00:00:00.005Z)"
    )
    table = liq(data_dir, "DOGE", "--start", "2025-12-01", "--end", "2025-12-02")
    assert table.exit_code == 0 and table.stdout == "(no rows)\n"
    assert "(none stored for this selection)" in table.stderr
    for args in ([], ["BTC", "--by", "coin"], ["-e", "okx", "ETHUSDT"]):
        empty = liq(data_dir / "nothing-here", "--start", "7d", *args)
        assert empty.exit_code == 0, empty.output
        assert "no liquidations stored" in empty.stderr
    assert not (data_dir / "nothing-here").exists()  # reading creates nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "30s"], "a whole number of minutes"),
        (["--interval", "abc"], "invalid duration"),
        (["--interval", "1m", "--start", "2020-01-01"], "more than 20,000 intervals"),
        (["--start", "2025-12-02", "--end", "2025-12-01"], "must be before --end"),
        (["--by", "venue"], "'venue' is not one of"),
        (["--top", "-1"], "--top must be >= 0"),
        (["-e", "kraken"], "unknown exchange kraken"),
        (["BTC/USDT"], "invalid symbol"),
        (["--chart", "out.svg"], "name it *.png"),
        (["--chart", "/nonexistent-dir/x.png"], "no such directory /nonexistent-dir"),
        (["--start", "yesterday"], "invalid date"),
    ],
)
def test_usage_errors_exit_2_in_one_line(data_dir: Path, args: list[str], message: str) -> None:
    result = liq(data_dir, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not Path("/nonexistent-dir").exists()


def test_chart_with_price_from_stored_klines(data_dir: Path, tmp_path: Path) -> None:
    closes = [95_000.0 + 40 * i for i in range(48)]
    klines = pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "interval": "1h",
            "ts": [T0 + i * HOUR for i in range(48)],
            "open": closes,
            "high": closes,
            "low": closes,
            "close": closes,
            "volume": 1.0,
            "quote_volume": 1.0,
            "trades": 1,
            "taker_buy_volume": 0.5,
            "taker_buy_quote_volume": 0.5,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
    Store(data_dir).write("klines", klines)
    ARTIFACTS.mkdir(exist_ok=True)
    with_price = ARTIFACTS / "liquidations-btc.png"
    result = liq(data_dir, "BTC", "--by", "coin", "--start", "2025-12-01", "--end", "2025-12-03",
                 "--chart", str(with_price))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"liq: chart written to {with_price}" in result.stderr
    store = Store(data_dir)
    from liqcli.services.liquidations import attach_price

    history = liquidation_history(store, HistoryQuery(T0, T0 + 2 * DAY, "1h", "coin", ["BTC"]))
    attach_price(store, history)
    assert history.price_label == "binance BTCUSDT 1h close" and history.price.height == 48
    without = ARTIFACTS / "liquidations-all.png"
    result = liq(data_dir, "--by", "exchange", "--start", "2025-12-01", "--end", "2025-12-01T03:00",
                 "--interval", "5m", "--chart", str(without), "-q")  # fmt: skip
    assert result.exit_code == 0 and result.stderr == ""
    for path, height in ((with_price, 715), (without, 528)):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] == 1210
            assert image.size[1] == height
    print(f"charts: {with_price} {without}")


def test_an_unwritable_chart_is_one_line_and_exit_1(data_dir: Path, tmp_path: Path) -> None:
    result = liq(data_dir, "--start", "2025-12-01", "--end", "2025-12-02",
                 "--chart", "/proc/liq-chart.png")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1].startswith("liq: error: cannot write chart /proc/")
    assert "Traceback" not in result.output
    plain_file = tmp_path / "file"
    plain_file.write_text("x")
    result = liq(data_dir, "--chart", str(plain_file / "x.png"))
    assert result.exit_code == 2 and "no such directory" in result.output


def test_help_has_examples() -> None:
    result = runner.invoke(app, ["liquidations", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and "--by coin --chart btc.png" in result.stdout


def test_a_damaged_file_is_skipped_with_a_warning(data_dir: Path, caplog) -> None:
    """Footer intact, pages damaged: the lazy query fails, the store's careful read skips it."""
    damaged = next((data_dir / "liquidations" / "exchange=okx" / "symbol=BTCUSD").glob("*.parquet"))
    data = bytearray(damaged.read_bytes())
    for i in range(64, len(data) // 3):  # the column chunks; the footer at the end stays
        data[i] ^= 0x5A
    damaged.write_bytes(bytes(data))
    result = liq(data_dir, "BTC", "--by", "coin", "--start", "2025-12-01", "--end", "2025-12-03",
                 "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"skipping corrupt Parquet file {damaged}" in caplog.text
    totals = orjson.loads(result.stdout)["totals"]
    assert totals == [{"coin": "BTC", "long_usd": 1_255_000.0, "short_usd": 100_000.0,
                       "total_usd": 1_355_000.0, "long_count": 3, "short_count": 1}]  # fmt: skip
