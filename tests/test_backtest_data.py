"""The data ``liq backtest`` reads: 1-minute klines fetched by ``liq fetch`` (1m and 3m exist for
klines only), then backtested."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.store.parquet import Store
from tests.fakes.binance_rest import FakeBinanceRest

DAY = 86_400_000
runner = CliRunner()


def _fetch(data_dir, url, *args):
    return runner.invoke(
        app, ["--data-dir", str(data_dir), "fetch", *args], env={"LIQ_BINANCE_REST_URL": url}
    )


def test_klines_1m_are_fetched_and_backtested(tmp_path):
    day = now_ms() // DAY * DAY
    start, end = iso_ms(day - 2 * DAY), iso_ms(day - DAY)
    with FakeBinanceRest() as server:
        args = ["BTCUSDT", "--dataset", "klines", "--period", "1m", "--start", start, "--end", end]
        result = _fetch(tmp_path, server.url, *args, "-f", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["new_rows"] == 1440
        three = _fetch(tmp_path, server.url, *args[:4], "3m", *args[5:], "-f", "json")
        assert three.exit_code == 0 and json.loads(three.stdout)["new_rows"] == 480
    stored = Store(tmp_path).read("klines", interval="1m")
    assert stored.height == 1440
    bt = runner.invoke(
        app,
        ["--data-dir", str(tmp_path), "backtest", "sma_cross", "BTCUSDT", "--start", start,
         "--end", end, "--data", "bars:1m", "-f", "json"],
    )  # fmt: skip
    assert bt.exit_code == 0, bt.output
    assert json.loads(bt.stdout)["bars"] == 1440


def test_1m_is_refused_for_the_ratio_series_before_any_request(tmp_path):
    with FakeBinanceRest() as server:
        for args in (["BTCUSDT", "--period", "1m"], ["BTCUSDT", "-d", "taker_ratio", "-p", "3m"]):
            result = _fetch(tmp_path, server.url, *args)
            assert result.exit_code == 2, result.output
            assert "exists for klines only" in result.stderr
        assert server.requests == []
