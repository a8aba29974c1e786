"""Audit of ``liq backtest`` (#15): usage errors before any data is read, user strategies from a
file failing in one line, the metrics recomputed by hand, missing funding named, sweep progress
and SIGTERM during a sweep."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from liqcli.store.parquet import Store
from tests.test_backtest_cli import RANGE, klines, liq

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "breakout.py"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--capital", "inf"], "--capital must be a positive number, got inf"),
        (["--data", "bars:7x"], "invalid --data bars:7x: stored kline intervals are 1m 3m"),
        (["--grid", "fast=60,70"], "fast < slow"),
        (["--grid", "fast=a,b"], "fast < slow"),
        (["--grid", "speed=1,2"], "no parameter 'speed'"),
        (["--grid", "fast=5,10", "--walk-forward", "0"], "--walk-forward needs K >= 1"),
        (["--grid", "fast=5,10", "--walk-forward", "-3"], "--walk-forward needs K >= 1"),
        (["--walk-forward", "2"], "give at least one --grid"),
        (["--grid", "fast=5,10", "--executor", "bogus"], "invalid --executor 'bogus'"),
        (["--grid", "fast=5,10", "--executor", "dask://nohost"], "invalid --executor"),
        (["--executor", "ftp://h:1"], "invalid --executor"),
        (["--strategy", f"{EXAMPLE}:Breakout", "--param", "lookback=abc"], "lookback must be"),
        (["--strategy", f"{EXAMPLE}:Breakout", "--param", "lookback=0"], "lookback must be"),
        (["--strategy", f"{EXAMPLE}:Breakout", "--param", "x=1"], "unexpected keyword"),
        (["--strategy", f"{EXAMPLE}:Nope"], "has no class 'Nope'"),
        (["--strategy", str(EXAMPLE)], "name the class too"),
    ],
)
def test_usage_errors_come_before_any_data_is_read(tmp_path, args, message):
    # an empty store: an error found only after reading would say "no klines" and exit 1
    result = liq(tmp_path, "sma_cross", "BTCUSDT", *RANGE, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


USER = """
import polars as pl

class NoColumn:
    def target(self):
        return pl.col("nope")

class Crashes:
    def on_event(self, event, ctx):
        raise ValueError("my bug\\nsecond line")

class OnlyOnEvent:  # the protocol: implement the callbacks you need
    def __init__(self):
        self.seen = 0
    def on_event(self, event, ctx):
        from liqcli.trading.model import OrderSide
        self.seen += 1
        if self.seen == 100:
            ctx.market_order(event.symbol, OrderSide.BUY, 1.0)

class CrashesAtTwo:
    def __init__(self, n=1):
        self.n = n
    def on_event(self, event, ctx):
        if self.n == 2:
            raise ValueError("boom at n=2")

class LimitBelow:  # at bar 100's close: a buy limit 0.3 % under the close
    def __init__(self):
        self.seen = 0
    def on_event(self, event, ctx):
        from liqcli.trading.model import OrderSide
        self.seen += 1
        if self.seen == 100:
            ctx.limit_order(event.symbol, OrderSide.BUY, 1.0, round(event.close * 0.997, 6))

class StopBelow:  # buys 1.0 at bar 100's open, then a sell stop 0.3 % under the entry
    def __init__(self):
        self.seen = 0
    def on_event(self, event, ctx):
        from liqcli.trading.model import OrderSide
        self.seen += 1
        if self.seen == 100:
            ctx.market_order(event.symbol, OrderSide.BUY, 1.0)
        if self.seen == 101:
            entry = ctx.position(event.symbol).entry_price
            ctx.stop_order(event.symbol, OrderSide.SELL, 1.0, round(entry * 0.997, 6),
                           reduce_only=True)

class TargetOnly:  # indicators() is optional
    def target(self):
        return pl.when(pl.col("close") > pl.col("open")).then(1).otherwise(-1)

class Neither:
    pass

NOT_A_CLASS = 3
"""


@pytest.fixture
def data_dir(tmp_path):
    Store(tmp_path).write("klines", klines())
    (tmp_path / "mine.py").write_text(USER)
    return tmp_path


@pytest.mark.parametrize(
    ("cls", "message", "code"),
    [
        ("NoColumn", 'its expressions fail on the bar columns (ts, open, high, low, close, volume): ColumnNotFoundError: unable to find column "nope"', 2),
        ("Crashes", "failed: ValueError: my bug", 1),
        ("Neither", "implements neither target()", 2),
        ("NOT_A_CLASS", "is not a class", 2),
    ],
)  # fmt: skip
def test_a_user_strategy_that_fails_says_so_in_one_line(data_dir, cls, message, code):
    result = liq(data_dir, "x", "BTCUSDT", *RANGE, "--strategy", f"{data_dir / 'mine.py'}:{cls}")
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_user_strategy_failing_in_a_worker_process_ends_the_sweep_in_one_line(data_dir):
    path = f"{data_dir / 'mine.py'}:CrashesAtTwo"
    result = liq(data_dir, "x", "BTCUSDT", *RANGE, "--strategy", path, "--grid", "n=1,2,3", "-q")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"liq: error: --strategy {path} failed: ValueError: boom at n=2"
    assert not (data_dir / "backtest_runs").exists()


@pytest.mark.parametrize("cls", ["OnlyOnEvent", "TargetOnly"])
def test_a_user_strategy_implements_only_the_callbacks_it_needs(data_dir, cls):
    path = f"{data_dir / 'mine.py'}:{cls}"
    result = liq(data_dir, "x", "BTCUSDT", *RANGE, "--strategy", path, "-f", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["strategy"] == cls
    assert doc["metrics"]["exposure"] > 0


# ------------------------------------------------------------------------------ metrics by hand

H = 3_600_000
# An equity curve worked out by hand: hours since 2026-01-01 and the equity at each bar's close.
# Daily closes (the last bar of each UTC day): 110, 104.5, 94.05, 112.86, 118.503, i.e. daily
# returns +10 %, -5 %, -10 %, +20 %, +5 % on a capital of 100.
CURVE = [
    (0, 100.0), (12, 112.0), (23, 110.0),     # day 0: peak 112 at 12 h
    (24, 108.0), (47, 104.5),                 # day 1
    (48, 100.0), (60, 90.0), (71, 94.05),     # day 2: trough 90 at 60 h: drawdown 1 - 90/112
    (72, 105.0), (84, 112.0), (95, 112.86),   # day 3: back at 112 at 84 h: 72 h = 3 days under
    (96, 120.0), (119, 118.503),              # day 4: peak 120, still 1.25 % under at the end
]  # fmt: skip


class T:
    def __init__(self, pnl):
        self.pnl = pnl


def test_every_metric_recomputed_by_hand():
    from liqcli.analytics import metrics

    ts = np.array([1_767_225_600_000 + h * H for h, _ in CURVE])
    equity = np.array([e for _, e in CURVE])
    trades = [T(30.0), T(-10.0), T(5.0), T(-20.0), T(0.0)]
    m = metrics.compute(
        ts=ts, equity=equity, capital=100.0, trades=trades, fees=1.25, funding=-0.5,
        liquidations=1, exposure=0.75, first_open=50_000.0, last_close=55_000.0,
    )  # fmt: skip
    r = [0.10, -0.05, -0.10, 0.20, 0.05]
    mean = 0.04
    sd = math.sqrt((0.06**2 + 0.09**2 + 0.14**2 + 0.16**2 + 0.01**2) / 4)  # ddof 1
    downside = math.sqrt((0.05**2 + 0.10**2) / 5)  # = 0.05
    days = 119 / 24
    cagr = 1.18503 ** (365 / days) - 1
    dd = 1 - 90 / 112
    want = {
        "final_equity": 118.503,
        "total_return": 0.18503,
        "cagr": cagr,
        "volatility": sd * math.sqrt(365),
        "sharpe": mean / sd * math.sqrt(365),
        "sortino": mean / downside * math.sqrt(365),
        "max_drawdown": dd,
        "max_drawdown_duration_days": 3.0,
        "calmar": cagr / dd,
        "win_rate": 2 / 5,
        "profit_factor": 35 / 30,
        "avg_trade": 1.0,
        "exposure": 0.75,
        "trades": 5,
        "fees": 1.25,
        "funding": -0.5,
        "liquidations": 1,
        "buy_and_hold_return": 0.10,
    }
    assert metrics.daily_returns(ts, equity, 100.0) == pytest.approx(r)
    assert downside == pytest.approx(0.05) and m["sortino"] == pytest.approx(0.8 * math.sqrt(365))
    assert set(m) == set(want)
    for key, value in want.items():
        assert m[key] == pytest.approx(value, rel=1e-9), key


def test_the_run_document_agrees_with_its_trades_and_buy_and_hold(data_dir):
    result = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "--param", "fast=5", "-f", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    m, pnls = doc["metrics"], [t["pnl"] for t in doc["trades"]]
    k = klines()
    assert m["buy_and_hold_return"] == pytest.approx(k["close"][-1] / k["open"][0] - 1)
    assert m["trades"] == len(pnls) > 10
    assert m["win_rate"] == pytest.approx(sum(p > 0 for p in pnls) / len(pnls))
    wins, losses = sum(p for p in pnls if p > 0), -sum(p for p in pnls if p < 0)
    assert m["profit_factor"] == pytest.approx(wins / losses)
    assert m["avg_trade"] == pytest.approx(sum(pnls) / len(pnls))
    assert m["fees"] >= sum(t["fees"] for t in doc["trades"]) > 0  # + the open position's
    # flat over bars 0-49: SMA 50 first exists at bar 49's close, the fill is at bar 50's open
    assert m["exposure"] == pytest.approx(1 - 50 / len(k))
    assert m["total_return"] == pytest.approx(m["final_equity"] / 10_000 - 1)


# ------------------------------------------------------------------------------ long sweeps


def test_a_sweep_reports_progress_on_stderr_unless_quiet(data_dir):
    args = ["sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10", "--grid", "slow=30,60"]
    shown = liq(data_dir, *args, "-f", "json")
    assert shown.exit_code == 0, shown.output
    assert "liq: backtest: 4/4 runs done" in shown.stderr
    assert len(json.loads(shown.stdout)["runs"]) == 4  # stdout stays the document
    wf = liq(data_dir, *args[:-2], "--walk-forward", "3", "-f", "json")
    assert "liq: backtest: 9/9 runs done" in wf.stderr  # 2 x 3 training runs + 3 tests
    quiet = liq(data_dir, *args, "-f", "json", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(("signame", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_during_a_sweep_stops_the_workers_and_stores_nothing(tmp_path, signame, code):
    import os
    import signal
    import subprocess
    import sys

    Store(tmp_path).write("klines", klines(n=150_000))
    fast = ",".join(str(f) for f in range(2, 22))
    cmd = [sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path), "backtest", "sma_cross",
           "BTCUSDT", "--start", "2026-01-01", "--end", "2026-07-01", "--grid", f"fast={fast}",
           "--grid", "slow=60,100", "--funding", "off"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        first = proc.stderr.readline()  # the first run is done: the workers are busy
        assert "liq: backtest: 1/40 runs done" in first, first + proc.stderr.read()
        workers = _children(proc.pid)
        assert workers
        if signame == "SIGTERM":  # from a supervisor, to the command
            proc.send_signal(signal.SIGTERM)
        else:  # Ctrl-C in a terminal: to the whole process group, workers included
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert all(line.startswith("liq: ") for line in err.splitlines()), err  # no traceback
    if signame == "SIGTERM":
        assert "received SIGTERM: stopped, no run stored" in err
    assert out == ""
    assert not (tmp_path / "backtest_runs").exists()
    assert not (tmp_path / "backtest_trades").exists()
    # the workers are gone (multiprocessing's resource tracker follows once its pipe closes)
    deadline = time.monotonic() + 10
    while [w for w in workers if _alive(w)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)]


# ------------------------------------------------------------------------------ missing data


def _command(text: str) -> list[str]:
    """The ``liq fetch ...`` command quoted in an error or a warning, as arguments."""
    quoted = text.split("`")[1]
    assert quoted.startswith("liq fetch "), text
    return quoted.split()[2:]


def test_missing_klines_and_funding_name_fetch_commands_that_get_them(tmp_path, caplog):
    from typer.testing import CliRunner

    from liqcli.cli.app import app
    from liqcli.core.timeutil import iso_ms, now_ms
    from tests.fakes.binance_rest import FakeBinanceRest

    day = 86_400_000
    today = now_ms() // day * day
    span = ["--start", iso_ms(today - 3 * day + 6 * 3_600_000), "--end", iso_ms(today - day)]
    run = CliRunner()

    def backtest(*extra):
        args = ["--data-dir", str(tmp_path), "backtest", "sma_cross", "BTCUSDT", *span, *extra]
        return run.invoke(app, [*args, "-f", "json"])

    def fetch(args, url):
        result = run.invoke(
            app, ["--data-dir", str(tmp_path), "fetch", *args], env={"LIQ_BINANCE_REST_URL": url}
        )
        assert result.exit_code == 0, result.output

    missing = backtest()
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    with FakeBinanceRest() as server:
        fetch(_command(missing.output), server.url)  # the command the error names
        no_funding = backtest()
        assert no_funding.exit_code == 0, no_funding.output
        assert json.loads(no_funding.stdout)["metrics"]["funding"] == 0
        (warning,) = [r.getMessage() for r in caplog.records if r.name == "liq.backtest"]
        assert "no funding stored for BTCUSDT in the range: none is charged" in warning
        caplog.clear()
        assert backtest("--quiet").exit_code == 0 and not caplog.records
        fetch(_command(warning), server.url)  # the command the warning names
    caplog.clear()
    charged = backtest()
    assert charged.exit_code == 0, charged.output
    assert not [r for r in caplog.records if r.name == "liq.backtest"]
    assert json.loads(charged.stdout)["metrics"]["funding"] != 0


def test_funding_stored_for_part_of_the_range_is_a_warning(data_dir, caplog):
    import polars as pl

    start = 1_767_225_600_000
    rows = pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "ts": [start + 8 * 3_600_000 * k for k in range(3)],  # the first day only
            "funding_rate": 0.0001,
            "mark_price": 100.0,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
    Store(data_dir).write("funding", rows)
    result = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["funding"] != 0
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "liq.backtest"]
    assert "funding stored for BTCUSDT only from 2026-01-01T00:00:00.000Z" in warning
    assert "liq fetch BTCUSDT --dataset funding --start 2026-01-01 --end 2026-01-04" in warning


# ------------------------------------------------------------------------------ stored results


def test_runs_are_stored_with_strategy_params_range_metrics_and_version(data_dir):
    from liqcli import __version__

    single = json.loads(liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "-f", "json").stdout)
    wf = liq(data_dir, "sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10", "--walk-forward",
             "2", "-f", "json")  # fmt: skip
    folds = json.loads(wf.stdout)["runs"]
    runs = Store(data_dir).read("backtest_runs").sort("start")
    # the single run and the out-of-sample folds only: no training run is stored
    assert sorted(runs["kind"].to_list()) == ["run", "walk_forward", "walk_forward"]
    by_id = {r["run_id"]: r for r in runs.iter_rows(named=True)}
    for doc in [single, *folds]:
        row = by_id[doc["run_id"]]
        assert row["strategy"] == "sma_cross" and row["symbol"] == "BTCUSDT"
        assert json.loads(row["params"]) == doc["params"]
        assert (
            row["start"].isoformat(timespec="milliseconds").replace("+00:00", "Z") == doc["start"]
        )
        assert row["end"].isoformat(timespec="milliseconds").replace("+00:00", "Z") == doc["end"]
        assert row["bars"] == doc["bars"] and row["version"] == __version__
        assert json.loads(row["metrics"]) == pytest.approx(doc["metrics"])
        assert json.loads(row["settings"])["fees"] == [0.0002, 0.0005]
    trades = Store(data_dir).read("backtest_trades")
    mine = trades.filter(trades["run_id"] == single["run_id"]).sort("trade_id")
    assert mine["pnl"].to_list() == pytest.approx([t["pnl"] for t in single["trades"]])
    assert set(trades["run_id"]) == {d["run_id"] for d in [single, *folds] if d["trades"]}


def test_the_chart_says_what_a_trader_reads_at_a_glance(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from liqcli.render.backtest_chart import draw_equity

    drawn = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k)))  # fmt: skip
    ts = np.array([1_767_225_600_000 + h * H for h, _ in CURVE])
    equity = np.array([e for _, e in CURVE]) * 100
    closes = np.linspace(100.0, 150.0, len(CURVE))
    path = draw_equity(
        tmp_path / "eq.png", ts, equity, closes, title="t", capital=10_000, unit="USDT"
    )
    assert path.stat().st_size > 10_000
    top, bottom = drawn[0].axes
    assert top.get_ylabel() == "equity (USDT)" and bottom.get_xlabel() == "time (UTC)"
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert legend == ["strategy  +18.5 %", "buy and hold  +50.0 %"]
    assert "final 11,850.30 USDT" in top.get_title(loc="left")
    assert bottom.get_title(loc="left") == "max drawdown -19.6 % (2026-01-03 12:00 UTC)"
    assert bottom.collections  # the shaded drawdown
    assert top.yaxis.get_major_formatter()(12_000, 0) == "12,000"


def test_every_metric_is_defined_in_the_help_and_the_readme():
    from typer.testing import CliRunner

    from liqcli.analytics import metrics
    from liqcli.cli.app import app

    names = metrics.compute(
        ts=np.array([0, 1]), equity=np.array([1.0, 1.0]), capital=1.0, trades=[], fees=0,
        funding=0, liquidations=0, exposure=0, first_open=1.0, last_close=1.0,
    )  # fmt: skip
    help_text = CliRunner().invoke(app, ["backtest", "--help"], env={"COLUMNS": "200"}).output
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### `liq backtest`") :].split("\n### ")[0]
    help_text, section = " ".join(help_text.split()), " ".join(section.split())
    for name in names:
        if name == "final_equity":
            continue
        assert f"{name} = " in help_text or f"{name} the " in help_text, name
        assert f"{name} = " in section or f"{name} the " in section, name
    for text in (help_text, section):
        assert "365 days" in text and "daily returns" in text and "buy_and_hold_return" in text


def test_stored_metrics_are_standard_json(tmp_path):
    from liqcli.services import backtest as svc

    doc = {
        "strategy": "s", "symbol": "BTCUSDT", "params": {}, "start": "2026-01-01T00:00:00.000Z",
        "end": "2026-01-02T00:00:00.000Z", "bars": 2, "trades": [],
        "metrics": {"final_equity": 2.0, "total_return": 1.0, "sharpe": None, "max_drawdown": 0.0,
                    "trades": 3, "profit_factor": math.inf},
    }  # fmt: skip
    svc.write_runs(Store(tmp_path), [doc], {}, "binance", "1m", "run")
    stored = Store(tmp_path).read("backtest_runs")["metrics"][0]

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(stored, parse_constant=refuse)["profit_factor"] is None


def test_funding_is_settled_for_a_strategy_of_the_protocol_too(data_dir):
    import polars as pl

    start = 1_767_225_600_000
    rows = pl.DataFrame(
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "ts": [start + 8 * 3_600_000 * k + 7 for k in range(9)],  # 0 h ... 64 h
            "funding_rate": 0.0001,
            "mark_price": 100.0,
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
    Store(data_dir).write("funding", rows)
    path = f"{data_dir / 'mine.py'}:OnlyOnEvent"  # buys 1.0 at bar 100's close, then holds
    result = liq(data_dir, "x", "BTCUSDT", *RANGE, "--strategy", path, "-f", "json")
    assert result.exit_code == 0, result.output
    # held from bar 101's open: the 8 settlements at 8 h ... 64 h, qty x mark x rate each
    assert json.loads(result.stdout)["metrics"]["funding"] == pytest.approx(8 * 1.0 * 100 * 1e-4)
    off = liq(
        data_dir, "x", "BTCUSDT", *RANGE, "--strategy", path, "--funding", "off", "-f", "json"
    )
    assert json.loads(off.stdout)["metrics"]["funding"] == 0


def test_a_resting_limit_order_fills_when_a_bar_trades_through_it(data_dir):
    k = klines()
    limit = round(k["close"][99] * 0.997, 6)
    assert k["open"][100] > limit  # it rests at the next open
    lows = k["low"].to_list()
    hit = next(i for i in range(100, len(k)) if lows[i] < limit)
    path = f"{data_dir / 'mine.py'}:LimitBelow"
    result = liq(data_dir, "x", "BTCUSDT", *RANGE, "--strategy", path, "--funding", "off",
                 "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)["metrics"]
    assert m["fees"] == pytest.approx(limit * 1.0 * 0.0002)  # maker, at its own price
    assert m["exposure"] == pytest.approx((len(k) - hit) / len(k))  # held from that bar's close
    assert m["final_equity"] == pytest.approx(10_000 + (k["close"][-1] - limit) - limit * 0.0002)


def test_the_fetch_command_named_covers_a_range_that_ends_inside_a_day(tmp_path):
    args = ["--start", "2026-01-01T12:00", "--end", "2026-01-02T06:00"]
    flow = liq(tmp_path, "0", "BTCUSDT", "--data", "trades", *args)
    assert flow.exit_code == 1
    assert (
        "`liq fetch BTCUSDT --dataset agg_trades --archive --start 2026-01-01 --end 2026-01-03`"
        in flow.output
    )
    bars = liq(tmp_path, "sma_cross", "BTCUSDT", *args)
    assert bars.exit_code == 1
    assert "--period 1m --start 2026-01-01 --end 2026-01-03`" in bars.output


def test_walk_forward_ranks_by_return_when_the_windows_are_too_short_for_daily_sharpe():
    import polars as pl

    from liqcli.services import backtest as svc

    frame = klines().select(pl.col("ts").dt.epoch("ms"), "open", "high", "low", "close", "volume")
    spec = svc.StrategySpec("sma_cross")
    config = svc.BacktestConfig(spec, "BTCUSDT", int(frame["ts"][0]), int(frame["ts"][-1]) + 1)
    grid = {"fast": [15, 10, 5], "slow": [30]}
    folds = svc.walk_forward(config, frame, None, grid, 3, None)  # windows of 0.7 days
    ts = frame["ts"]
    edges = [int(ts[0]) + (int(ts[-1]) + 1 - int(ts[0])) * i // 4 for i in range(5)]
    fallback = []
    for k, fold in enumerate(folds):
        window = frame.filter((pl.col("ts") >= edges[k]) & (pl.col("ts") < edges[k + 1]))
        trained = {
            f: svc.run_frame(replace(config, strategy=s), window, None)["metrics"]
            for f, s in zip(grid["fast"], svc.grid_specs(spec, grid), strict=True)
        }
        key = "sharpe" if any(m["sharpe"] is not None for m in trained.values()) else "total_return"
        best = max(trained, key=lambda f: trained[f][key])
        assert fold["params"]["fast"] == best and fold["objective"] == key
        fallback.append((key, best))
    # the first window (within 2026-01-01) has no daily Sharpe: ranked by return, and the best
    # there is not simply the first combination
    assert fallback[0][0] == "total_return" and fallback[0][1] != grid["fast"][0]


def test_a_grid_runs_on_the_dask_cluster_and_equals_the_local_processes(data_dir):
    distributed = pytest.importorskip("distributed")
    args = ["sma_cross", "BTCUSDT", *RANGE, "--grid", "fast=5,10,15", "-f", "json", "-q"]
    local = liq(data_dir, *args)
    assert local.exit_code == 0, local.output
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        address = cluster.scheduler_address.replace("tcp://", "dask://")
        remote = liq(data_dir, *args, "--executor", address)
        prefixes = dict(cluster.scheduler.task_prefixes)
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    # the three runs really ran as tasks on the cluster
    (prefix,) = [p for name, p in prefixes.items() if name.startswith("run_job")]
    assert prefix.state_counts["memory"] == 3


def test_a_stop_order_fills_inside_the_bar_that_reaches_it(data_dir):
    k = klines()
    entry = k["open"][100]
    stop = round(entry * 0.997, 6)
    opens, lows = k["open"].to_list(), k["low"].to_list()
    hit = next(i for i in range(101, len(k)) if lows[i] <= stop)  # active from bar 101's open
    fill = opens[hit] if opens[hit] <= stop else stop  # a gap through it fills at the open
    path = f"{data_dir / 'mine.py'}:StopBelow"
    result = liq(data_dir, "x", "BTCUSDT", *RANGE, "--strategy", path, "--funding", "off",
                 "--fees", "0,0", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (trade,) = json.loads(result.stdout)["trades"]
    assert trade["entry_price"] == pytest.approx(entry)
    assert trade["exit_price"] == pytest.approx(fill)
    assert trade["exit_ts"] == _iso(k["ts"][hit])
    assert trade["pnl"] == pytest.approx(fill - entry)


def _iso(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_the_sim_broker_refuses_a_stop_order_it_cannot_trigger():
    from liqcli.trading.costs import Fees
    from liqcli.trading.model import Order, OrderSide, OrderStatus, OrderType
    from liqcli.trading.sim import SimBroker

    broker = SimBroker(1_000, fees=Fees(0, 0))
    order = broker.submit(Order("BTCUSDT", OrderSide.SELL, 1.0, OrderType.STOP, price=90.0))
    assert order.status is OrderStatus.REJECTED and order.reject_reason == "stop_orders_unsupported"


def test_sweep_workers_start_with_ctrl_c_ignored_and_the_command_keeps_its_handler():
    """A worker's own SIGINT handling came only after its imports (~1 s): a Ctrl-C then printed
    the worker's traceback (seen once under load). Workers now start with SIGINT ignored."""
    import signal
    from concurrent.futures import ProcessPoolExecutor

    from liqcli.services.quiet_spawn import QuietSpawnContext

    before = signal.getsignal(signal.SIGINT)
    with ProcessPoolExecutor(1, mp_context=QuietSpawnContext()) as pool:  # no initializer
        in_worker = pool.submit(signal.getsignal, signal.SIGINT).result(timeout=60)
    assert in_worker == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before
