"""``liq backtest`` end to end on a store written here: output shapes, stored runs, errors,
grids, walk-forward, user strategies, and the same sweep on a local Dask cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.store.parquet import Store
from liqcli.trading.bars import BarSettings, run_vectorised
from liqcli.trading.costs import Fees
from liqcli.trading.strategies.sma_cross import SmaCross

START = 1_767_225_600_000  # 2026-01-01
N = 4_000
REPO = Path(__file__).resolve().parents[1]


def klines(n=N, seed=5):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    return pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "interval": "1m",
            "ts": START + 60_000 * np.arange(n),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": 1.0,
            "quote_volume": 1.0,
            "trades": 1,
            "taker_buy_volume": 0.5,
            "taker_buy_quote_volume": 0.5,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))


@pytest.fixture
def data_dir(tmp_path):
    store = Store(tmp_path)
    store.write("klines", klines())
    return tmp_path


def liq(data_dir, *args):
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), "backtest", *args])


RANGE = ["--start", "2026-01-01", "--end", "2026-01-04"]


def test_json_document_matches_the_engine_and_the_run_is_stored(data_dir):
    result = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "-f", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # the README's shape and nothing else (a stray "_": [] once rode along)
    assert set(doc) == {"strategy", "symbol", "params", "start", "end", "bars", "metrics",
                        "trades", "run_id"}  # fmt: skip
    assert doc["strategy"] == "sma_cross" and doc["params"] == {"fast": 20, "slow": 50}
    assert doc["bars"] == N and doc["start"] == "2026-01-01T00:00:00.000Z"
    frame = klines().select(pl.col("ts").dt.epoch("ms"), "open", "high", "low", "close", "volume")
    direct = run_vectorised(frame, SmaCross(), BarSettings(fees=Fees(0.0002, 0.0005)))
    assert doc["metrics"]["final_equity"] == pytest.approx(direct.equity[-1])
    assert doc["metrics"]["trades"] == len(direct.trades) == len(doc["trades"])
    for key in (
        "total_return",
        "cagr",
        "sharpe",
        "sortino",
        "max_drawdown",
        "win_rate",
        "profit_factor",
        "fees",
        "funding",
        "liquidations",
    ):
        assert key in doc["metrics"]
    assert set(doc["trades"][0]) >= {
        "side",
        "entry_ts",
        "entry_price",
        "exit_ts",
        "exit_price",
        "qty",
        "pnl",
        "fees",
    }
    runs = Store(data_dir).read("backtest_runs")
    assert runs["run_id"].to_list() == [doc["run_id"]]
    trades = Store(data_dir).read("backtest_trades")
    assert trades.height == len(doc["trades"])
    # the same run again is the same key: no duplicate
    assert liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "-f", "json").exit_code == 0
    assert Store(data_dir).read("backtest_runs").height == 1


def test_table_and_csv(data_dir):
    table = liq(
        data_dir, "sma_cross", "BTCUSDT", *RANGE, "--param", "fast=10", "--param", "slow=30"
    )
    assert table.exit_code == 0, table.output
    assert "fast=10 slow=30" in table.stdout and "sharpe" in table.stdout
    csv = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "-f", "csv")
    assert csv.stdout.splitlines()[0].startswith("side,entry_ts,entry_price")


def test_the_table_shows_fractions_as_percentages_and_json_keeps_fractions(data_dir):
    doc = json.loads(liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "-f", "json").stdout)
    table = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE).stdout
    lines = {line.split()[0]: line.split(None, 1)[1].strip() for line in table.splitlines()[3:]}
    m = doc["metrics"]
    assert lines["total_return"] == f"{m['total_return'] * 100:,.2f} %"
    assert lines["max_drawdown"] == f"{m['max_drawdown'] * 100:,.2f} %"
    assert lines["exposure"] == f"{m['exposure'] * 100:,.2f} %"
    assert lines["trades"] == str(m["trades"])  # counts and ratios stay plain numbers
    assert "%" not in lines["sharpe"]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["sma_cross", "ETHUSDT", *RANGE], "liq fetch ETHUSDT --dataset klines --period 1m", 1),
        (["sma_cross", "BTCUSDT", *RANGE, "--param", "fast=50"], "fast < slow", 2),
        (["sma_cross", "BTCUSDT", *RANGE, "--param", "speed=1"], "no parameter 'speed'", 2),
        (["nope", "BTCUSDT", *RANGE], "unknown strategy 'nope'", 2),
        (["sma_cross", "BTCUSDT", *RANGE, "--leverage", "0"], "--leverage", 2),
        (["sma_cross", "BTCUSDT", *RANGE, "--capital", "-5"], "--capital", 2),
        (["sma_cross", "BTCUSDT", *RANGE, "--data", "ticks"], "invalid --data", 2),
        (["sma_cross", "BTCUSDT", *RANGE, "--fees", "1,2"], "fees", 2),
        (
            ["sma_cross", "BTCUSDT", "--start", "2026-01-04", "--end", "2026-01-01"],
            "before --end",
            2,
        ),
        (["x", "BTCUSDT", *RANGE, "--strategy", "missing.py:X"], "no file missing.py", 2),
        (["sma_cross", "BTCUSDT", *RANGE, "--chart", "/nonexistent/x.png"], "does not exist", 2),
    ],
)
def test_bad_input_is_one_line_and_the_right_exit_code(data_dir, args, message, code):
    result = liq(data_dir, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_user_strategy_from_a_file(data_dir):
    example = REPO / "examples" / "breakout.py"
    result = liq(
        data_dir,
        "breakout",
        "BTCUSDT",
        *RANGE,
        "--strategy",
        f"{example}:Breakout",
        "--param",
        "lookback=30",
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["strategy"] == "Breakout" and doc["params"] == {"lookback": 30}
    assert doc["metrics"]["trades"] > 0


def test_grid_and_walk_forward(data_dir):
    grid = liq(
        data_dir,
        "sma_cross",
        "BTCUSDT",
        *RANGE,
        "--grid",
        "fast=5,10",
        "--grid",
        "slow=30,60",
        "-f",
        "json",
    )
    assert grid.exit_code == 0, grid.output
    runs = json.loads(grid.stdout)["runs"]
    assert [r["params"] for r in runs] == [
        {"fast": 5, "slow": 30},
        {"fast": 5, "slow": 60},
        {"fast": 10, "slow": 30},
        {"fast": 10, "slow": 60},
    ]
    wf = liq(
        data_dir,
        "sma_cross",
        "BTCUSDT",
        *RANGE,
        "--grid",
        "fast=5,10",
        "--walk-forward",
        "3",
        "-f",
        "json",
    )
    assert wf.exit_code == 0, wf.output
    assert set(json.loads(grid.stdout)) == {"runs"}
    assert set(json.loads(wf.stdout)) == {"runs", "out_of_sample"}
    folds = json.loads(wf.stdout)["runs"]
    assert [f["fold"] for f in folds] == [1, 2, 3]
    # each out-of-sample window starts where its training window ended
    for f in folds:
        assert f["trained_on"]["end"] < f["start"]
    # the folds chained into one account: each starts with the previous one's final equity
    oos = json.loads(wf.stdout)["out_of_sample"]
    growth = np.prod([1 + f["metrics"]["total_return"] for f in folds])
    assert oos["total_return"] == pytest.approx(growth - 1, rel=1e-12)
    assert oos["final_equity"] == pytest.approx(10_000 * growth, rel=1e-12)
    assert oos["trades"] == sum(f["metrics"]["trades"] for f in folds)
    assert oos["max_drawdown"] >= max(f["metrics"]["max_drawdown"] for f in folds) - 1e-12
    assert (oos["start"], oos["end"], oos["folds"]) == (folds[0]["start"], folds[-1]["end"], 3)
    table = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10",
                "--walk-forward", "3", "--quiet").stdout.splitlines()  # fmt: skip
    assert table[-1].startswith("out of sample, the 3 folds chained (")
    assert f"total_return {oos['total_return'] * 100:,.2f} %" in table[-1]


def test_the_same_sweep_on_a_local_dask_cluster(data_dir):
    distributed = pytest.importorskip("distributed")
    args = [*RANGE, "--grid", "fast=5,10", "--walk-forward", "2", "-f", "json"]
    local = json.loads(liq(data_dir, "sma_cross", "BTCUSDT", *args).stdout)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        address = cluster.scheduler_address.replace("tcp://", "dask://")
        remote = liq(data_dir, "sma_cross", "BTCUSDT", *args, "--executor", address)
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout) == local


def test_the_real_command_in_a_subprocess(data_dir):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "liqcli",
            "--data-dir",
            str(data_dir),
            "backtest",
            "sma_cross",
            "BTCUSDT",
            *RANGE,
            "--chart",
            str(data_dir / "eq.png"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert (data_dir / "eq.png").stat().st_size > 10_000


def test_a_sweep_table_names_a_parameter_shared_by_every_run_once(data_dir):
    table = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10", "--quiet")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0] == "in every run: slow=50"
    header = lines[1].split()
    assert header[0] == "fast" and "slow" not in header and "sharpe" in header
    assert [line.split()[0] for line in lines[3:]] == ["5", "10"]
    both = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10",
               "--grid", "slow=30,60", "--quiet")  # fmt: skip
    assert both.stdout.splitlines()[0].split()[:2] == ["fast", "slow"]  # nothing shared


def test_a_walk_forward_chart_draws_the_folds_chained(data_dir, tmp_path, monkeypatch):
    from liqcli.render import backtest_chart

    drawn = {}
    real = backtest_chart.draw_equity
    monkeypatch.setattr(backtest_chart, "draw_equity",
                        lambda *a, **k: (drawn.update(args=a, kw=k), real(*a, **k))[1])  # fmt: skip
    png = tmp_path / "wf.png"
    args = ["sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10", "--walk-forward", "3"]
    result = liq(data_dir, *args, "--chart", str(png), "-f", "json", "--quiet")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    _, ts, equity, closes = drawn["args"]
    folds = json.loads(result.stdout)["runs"]
    oos = json.loads(result.stdout)["out_of_sample"]
    assert equity[-1] == pytest.approx(oos["final_equity"], rel=1e-12)  # the chained account
    assert len(drawn["kw"]["splits"]) == 2 and "walk-forward, 3 folds" in drawn["kw"]["title"]
    assert ts.size == sum(f["bars"] for f in folds) == closes.size  # buy-and-hold: tested range
    grid_only = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10",
                    "--chart", str(png))  # fmt: skip
    assert grid_only.exit_code == 2 and "--chart draws one run" in grid_only.output
