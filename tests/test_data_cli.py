"""``liq data``: the store inventory, from Parquet footers, with gaps and sizes."""

from __future__ import annotations

import time

import orjson
import polars as pl
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.timeutil import iso_ms
from liqcli.store.parquet import Store
from tests.test_pressure_cli import STEP, store_liquidations, store_market

runner = CliRunner()
LAST = 1_790_000_000_000 - 1_790_000_000_000 % STEP


def liq(data_dir, *args):
    return runner.invoke(app, ["--data-dir", str(data_dir), "data", *args])


def test_inventory_lists_every_series_with_range_rows_gaps_and_size(tmp_path):
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", LAST, 500)
    store_market(store, "ETHUSDT", LAST, 100, seed=2)
    store_liquidations(store, "BTCUSDT", LAST - 50 * STEP, LAST, n=40)
    # A hole of 30 steps in BTCUSDT open interest.
    oi = next(
        (tmp_path / "open_interest" / "exchange=binance" / "symbol=BTCUSDT").rglob("*.parquet")
    )
    months = sorted(oi.parent.glob("*.parquet"))
    for path in months:
        frame = pl.read_parquet(path)
        ts = pl.col("ts").dt.epoch("ms")
        frame.filter(~ts.is_between(LAST - 100 * STEP, LAST - 71 * STEP)).write_parquet(path)
    (tmp_path / "_archive" / "binance").mkdir(parents=True)  # a cache, not a dataset

    result = liq(tmp_path, "-f", "json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    series = {(d["dataset"], d["symbol"]): d for d in doc["datasets"] if d["exchange"] == "binance"}
    liquidations = [d for d in doc["datasets"] if d["dataset"] == "liquidations"]
    assert {d for d, _ in series} >= {"open_interest", "funding", "taker_ratio", "liquidations"}
    assert "_archive" not in {d for d, _ in series}
    btc_oi = series[("open_interest", "BTCUSDT")]
    assert btc_oi["rows"] == 470 and btc_oi["gaps"] == 30 and btc_oi["period"] == "5m"
    assert btc_oi["first_ts"] == iso_ms(LAST - 499 * STEP) and btc_oi["last_ts"] == iso_ms(LAST)
    assert btc_oi["exchange"] == "binance" and btc_oi["bytes"] > 0
    assert series[("top_position_ratio", "ETHUSDT")]["gaps"] == 0
    assert all(d["gaps"] is None for d in liquidations)  # not on a grid
    assert liquidations and all(d["rows"] == 40 for d in liquidations)  # 40 per venue
    assert doc["total_bytes"] == sum(d["bytes"] for d in doc["datasets"])

    table = liq(tmp_path)
    assert table.exit_code == 0 and "open_interest" in table.stdout and "KB" in table.stdout
    only = orjson.loads(liq(tmp_path, "open_interest", "--symbol", "ethusdt", "-f", "json").stdout)
    assert [(d["dataset"], d["symbol"]) for d in only["datasets"]] == [("open_interest", "ETHUSDT")]
    csv = liq(tmp_path, "-f", "csv").stdout.splitlines()
    assert (
        csv[0].startswith("dataset,exchange,symbol,period") and len(csv) == len(doc["datasets"]) + 1
    )


def test_a_corrupt_file_is_counted_not_fatal(tmp_path):
    store = Store(tmp_path)
    store_market(store, "BTCUSDT", LAST, 50)
    victim = next((tmp_path / "funding").rglob("*.parquet"))
    victim.write_bytes(b"PAR1 this is not a parquet file")
    result = liq(tmp_path, "-f", "json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert doc["corrupt_files"] == [str(victim)]
    funding = next(d for d in doc["datasets"] if d["dataset"] == "funding")
    assert funding["corrupt_files"] == 1 and funding["rows"] == 0


def test_an_empty_or_missing_store_says_so(tmp_path):
    result = liq(tmp_path / "nothing-here")
    assert result.exit_code == 0
    assert "nothing stored" in result.stderr and "liq fetch" in result.stderr
    assert orjson.loads(liq(tmp_path, "-f", "json").stdout)["datasets"] == []


def test_inventory_is_fast_on_many_files(tmp_path):
    """Footers only: 60 months x 20 symbols stays well under a second or two."""
    store = Store(tmp_path)
    for i in range(20):
        store_market(store, f"S{i}USDT", LAST, 300, seed=i)
    started = time.perf_counter()
    result = liq(tmp_path, "-f", "json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0 and len(orjson.loads(result.stdout)["datasets"]) >= 100
    print(f"liq data: {elapsed:.2f}s for {len(list(tmp_path.rglob('*.parquet')))} files")
