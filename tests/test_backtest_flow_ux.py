"""``liq backtest --data trades``: progress while a long tape is fed, signals during the run (exit
143/129/130, nothing stored), ``--quiet`` silencing the funding warning, missing-data messages
true for the venue asked for, walk-forward windows without bars, and the shared order-flow
features leaving every run's result unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from liqcli.store.parquet import Store
from tests.test_backtest_flow import RANGE, SYM, liq, write_tape

pytestmark = pytest.mark.timeout(90)
FLOW = ["0", SYM, "--data", "trades", *RANGE, "--param", "vpin_bucket_usd=1e9"]
TAPE_EVENTS = 12 * 9  # write_tape: 3 tops + 6 trades per cycle


def test_the_events_fed_are_shown_on_stderr_unless_quiet(tmp_path):
    write_tape(Store(tmp_path))
    shown = liq(tmp_path, *FLOW, "-f", "json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["bars"] == TAPE_EVENTS  # stdout stays the document
    lines = shown.stderr.splitlines()
    assert lines and all(line.startswith("liq: backtest: ") for line in lines), shown.stderr
    tape = TAPE_EVENTS + 3  # the tape's length: its 3 funding rows too
    assert lines[0].startswith(f"liq: backtest: computing the features of {tape} events (")
    assert f"{tape}/{tape} events fed" in lines[-1]
    quiet = liq(tmp_path, *FLOW, "-f", "json", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_long_tape_reports_about_every_tenth(tmp_path):
    from liqcli.cli.backtest import _SweepProgress
    from liqcli.services import backtest_flow as fsvc

    frame = pl.DataFrame({"ts": np.arange(300_000), "x": np.zeros(300_000)})
    seen: list[int] = []

    class Counting(_SweepProgress):
        def advance(self, n: int) -> None:
            super().advance(n)
            seen.append(self.done)

    progress = Counting("backtest events", "events fed")
    progress.planned(frame.height)
    rows = sum(1 for _ in fsvc._rows(frame, done=progress.advance))
    assert rows == 300_000 and seen == [65_536, 131_072, 196_608, 262_144, 300_000]


def test_quiet_silences_the_missing_funding_warning(tmp_path, caplog):
    write_tape(Store(tmp_path))
    (tmp_path / "funding").rename(tmp_path / "no-funding")
    loud = liq(tmp_path, *FLOW, "-f", "json")
    assert loud.exit_code == 0, loud.output
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "liq.backtest"]
    assert "no funding stored for BTCUSDT in the range: none is charged" in warning
    assert "`liq fetch BTCUSDT --dataset funding --start 2026-01-01 --end 2026-01-02`" in warning
    caplog.clear()
    quiet = liq(tmp_path, *FLOW, "-f", "json", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert not [r for r in caplog.records if r.name == "liq.backtest"]


def _as_venue(tmp_path: Path, venue: str) -> None:
    """The write_tape data re-stored as ``venue``'s, funding left out."""
    write_tape(Store(tmp_path / "binance"))
    for name in ("agg_trades", "book_tops"):
        frame = Store(tmp_path / "binance").read(name).with_columns(exchange=pl.lit(venue))
        Store(tmp_path).write(name, frame)


@pytest.mark.parametrize(
    ("venue", "stores"),
    [
        ("okx", "from okx liq stores only liquidations (`liq watch BTCUSDT -e okx`)"),
        ("bybit", "from bybit liq stores only liquidations (`liq watch BTCUSDT -e bybit`)"),
        ("backpack", "from backpack liq stores no market data"),
    ],
)
def test_missing_data_on_another_venue_says_what_liq_can_store_of_it(
    tmp_path, venue, stores, caplog
):
    for args in (FLOW, ["sma_cross", SYM, *RANGE]):  # the trades path and the bars path
        result = liq(tmp_path, *args, "-e", venue)
        assert result.exit_code == 1, result.output
        assert stores in result.output and "use --exchange binance" in result.output
        assert "get them with" not in result.output  # no Binance fetch for another venue's data
        assert len(result.output.strip().splitlines()) == 1
    _as_venue(tmp_path, venue)
    ran = liq(tmp_path, *FLOW, "-e", venue, "-f", "json", "-q")
    assert ran.exit_code == 0, ran.output
    liq(tmp_path, *FLOW, "-e", venue, "-f", "json")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "liq.backtest"]
    assert f"no funding stored for BTCUSDT on {venue}" in warning and stores in warning
    assert "`liq fetch" not in warning


def test_walk_forward_with_more_folds_than_bars_is_a_usage_error(tmp_path):
    from tests.test_backtest_cli import klines

    Store(tmp_path).write("klines", klines(n=40))
    args = ["sma_cross", SYM, "--start", "2026-01-01", "--end", "2026-01-02", "--grid",
            "fast=2,3", "--grid", "slow=5"]  # fmt: skip
    result = liq(tmp_path, *args, "--walk-forward", "50")
    assert result.exit_code == 2, result.output
    # 40 one-minute bars (39 min) in 51 windows of 45.9 s: the 5th (183.5-229.4 s) has no bar
    assert "--walk-forward 50: window 5 of 51 (2026-01-01T00:03:03.529Z" in result.output
    assert "holds no bar" in result.output
    assert "(40 bars in the range): give fewer folds" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "backtest_runs").exists()
    fine = liq(tmp_path, *args, "--walk-forward", "3", "-f", "json", "-q")
    assert fine.exit_code == 0, fine.output
    assert len(json.loads(fine.stdout)["runs"]) == 3


def test_a_gap_leaving_a_window_empty_is_a_usage_error_too(tmp_path):
    from tests.test_backtest_cli import klines

    bars = klines(n=400)
    Store(tmp_path).write("klines", pl.concat([bars.head(100), bars.tail(100)]))
    result = liq(tmp_path, "sma_cross", SYM, "--start", "2026-01-01", "--end", "2026-01-02",
                 "--grid", "fast=2,3", "--grid", "slow=5", "--walk-forward", "3")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "window 2 of 4" in result.output and "(200 bars in the range)" in result.output


# ------------------------------------------------------------------------------ signals


def synthetic_day(root: Path, n: int) -> None:
    """n agg_trades (a random walk) and a book top every 4th trade, on 2026-01-01."""
    rng = np.random.default_rng(3)
    t0 = 1_767_225_600_000
    ts = t0 + np.sort(rng.integers(0, 86_400_000, n))
    price = np.round(60_000 * np.exp(np.cumsum(rng.normal(0, 4e-5, n))), 1)
    base = {"exchange": pl.lit("binance"), "symbol": pl.lit(SYM)}
    store = Store(root)
    store.write(
        "agg_trades",
        pl.DataFrame(
            {
                "trade_id": np.arange(n),
                "ts": ts,
                "price": price,
                "qty": np.round(rng.exponential(0.05, n), 3) + 0.001,
                "is_buyer_maker": rng.random(n) < 0.5,
            }
        ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")), **base),
    )
    every = np.arange(0, n, 4)
    store.write(
        "book_tops",
        pl.DataFrame(
            {
                "ts": ts[every],
                "update_id": np.arange(every.size),
                "bid": price[every] - 0.1,
                "bid_qty": np.round(rng.lognormal(1.0, 1.2, every.size), 3),
                "ask": price[every],
                "ask_qty": np.round(rng.lognormal(1.0, 1.2, every.size), 3),
            }
        ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")), **base),
    )


@pytest.fixture(scope="module")
def day_of_trades(tmp_path_factory):
    root = tmp_path_factory.mktemp("day")
    synthetic_day(root, 1_000_000)  # the gated feed takes about a second for these
    return root


@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_signal_during_an_order_flow_run_exits_in_one_line_and_stores_nothing(
    day_of_trades, signame, code
):
    import os
    import signal
    import subprocess
    import sys

    tmp_path = day_of_trades
    cmd = [sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path), "backtest", "all", SYM,
           "--data", "trades", *RANGE, "--compare-leverage", "--funding", "off", "-f", "json"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stage = proc.stderr.readline()  # the tape is read (not logged: it may fail in one line)
        assert re.match(r"liq: backtest: computing the features of 1,250,000", stage), stage
        first = proc.stderr.readline()  # the first chunk of events is fed: mid-run
        assert re.match(r"liq: backtest: [\d,]+/1,250,000 events fed", first), (
            first + proc.stderr.read()
        )
        if signame == "SIGINT":  # Ctrl-C: to the whole process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if "events fed" not in line]
    assert lines == [f"liq: warning: received {signame}: stopped, no run stored"], err
    assert out == ""
    assert not (tmp_path / "backtest_runs").exists()
    assert not (tmp_path / "backtest_trades").exists()


# ------------------------------------------------------------------------------ shared features


def test_compare_leverage_on_one_shared_engine_equals_each_engine_run_alone(tmp_path):
    from liqcli.services import backtest_flow as fsvc

    synthetic_day(tmp_path, 100_000)
    args = ["all", SYM, "--data", "trades", *RANGE, "--funding", "off", "-f", "json", "-q"]
    compared = liq(tmp_path, *args, "--compare-leverage")
    assert compared.exit_code == 0, compared.output
    runs = json.loads(compared.stdout)["runs"]
    assert len(runs) == 16 and sum(r["metrics"]["trades"] for r in runs) > 50
    for dynamic in fsvc.DYNAMIC:  # each leverage engine alone: its own Engine and OrderFlow
        alone = liq(tmp_path, *args, "--dynamic-leverage", dynamic)
        assert alone.exit_code == 0, alone.output
        mine = [r for r in runs if r["params"]["dynamic_leverage"] == dynamic]
        assert json.loads(alone.stdout)["runs"] == mine  # every number, bit for bit
    settings = fsvc.FlowSettings(SYM, ("0", "1"), 0, 1, "trades")
    driver = fsvc._Driver(settings, fsvc.DYNAMIC)
    assert len({id(r.session.flow) for r in driver.runs}) == 1  # features computed once
    assert len(driver.engine.observers) == 1 and len(driver.engine.slots) == 8
