"""``liq backtest`` of the order-flow modes: a recorded ``liq paper`` session gives the live run's
trades; stored agg_trades + book_tops (+ funding) give PaperSession's trades on the same merged
tape; --compare-leverage; missing data and usage errors."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.events import AggTrade, BookTop
from liqcli.services import backtest_flow as fsvc
from liqcli.services import paper as paper_svc
from liqcli.sources.binance_market import BinanceMarketSource, MarketOptions
from liqcli.sources.recorder import Recorder
from liqcli.store.parquet import Store
from tests.fakes.binance_depth import FakeBinanceDepth
from tests.test_binance_market import TIMINGS
from tests.test_paper import config, play_tape

pytestmark = pytest.mark.timeout(60)
SYM = "BTCUSDT"
runner = CliRunner()
TRADE_COLS = ["side", "entry_price", "exit_price", "qty", "pnl", "fees"]


def liq(data_dir, *args):
    return runner.invoke(app, ["--data-dir", str(data_dir), "backtest", *args])


async def record_live_session(tmp_path, name: str) -> pl.DataFrame:
    """As tests/test_paper.py's parity test: liq paper --record against the fake venue."""
    store = Store(tmp_path)
    async with FakeBinanceDepth() as fake:
        fake.set_book(SYM, {100.0: 2.0, 99.9: 2.0}, {100.1: 2.0, 100.2: 2.0})
        source = Recorder(
            BinanceMarketSource(
                [SYM],
                MarketOptions(timings=TIMINGS, http_retries=0, snapshot_every_ms=300),
                ws_url=fake.ws_url,
                rest_url=fake.rest_url,
            ),
            store,
            flush_interval=0.05,
        )
        live = paper_svc.open_paper(config(name, vpin_bucket_usd=1e9), tmp_path)
        task = asyncio.create_task(paper_svc.drive(live, source))
        books = source.source.books
        fake.update(SYM, bids=[(99.9, 2.5)])
        fake.flush(SYM)
        await fake.wait_until(lambda: SYM in books and books[SYM].synced)
        await play_tape(fake, 30)
        await fake.wait_until(lambda: live.session.engine.events >= 30 * 4 - 4)
        await asyncio.sleep(0.1)
        await source.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return store.read("paper_trades", session=name)


def test_a_recorded_paper_session_backtests_to_the_live_trades(tmp_path):
    live = asyncio.run(record_live_session(tmp_path, "night1"))
    assert live.height >= 2  # the tape made the modes trade
    result = liq(tmp_path, "0", SYM, "--data", "session:night1", "--param",
                 "vpin_bucket_usd=1e9", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["strategy"] == "0" and doc["data"] == "session:night1" and doc["bars"] > 0
    mode0 = live.filter(pl.col("mode") == "0").sort("trade_id")
    assert len(doc["trades"]) == mode0.height >= 1
    for got, want in zip(doc["trades"], mode0.iter_rows(named=True), strict=True):
        for col in TRADE_COLS:
            if isinstance(want[col], float):
                assert round(got[col], 2) == round(want[col], 2), col
            else:
                assert got[col] == want[col]
        assert got["exit_reason"] == want["exit_reason"]
        assert got["optimal_leverage"] == pytest.approx(want["optimal_leverage"])
    # all four side by side: each mode's trades are its live trades, to the cent
    both = liq(tmp_path, "all", SYM, "--data", "session:night1", "--param",
               "vpin_bucket_usd=1e9", "-f", "json")  # fmt: skip
    assert both.exit_code == 0, both.output
    runs = json.loads(both.stdout)["runs"]
    assert [r["strategy"] for r in runs] == ["0", "1", "2", "3"]
    for run in runs:
        want = live.filter(pl.col("mode") == run["strategy"]).sort("trade_id")
        assert [round(t["pnl"], 2) for t in run["trades"]] == [round(p, 2) for p in want["pnl"]]
    # the table: modes side by side with the 1-minute Sharpe (a session is too short for the
    # daily one), the parameters every mode shares on one line above
    table = liq(tmp_path, "all", SYM, "--data", "session:night1", "--param",
                "vpin_bucket_usd=1e9", "--quiet").stdout.splitlines()  # fmt: skip
    assert table[0] == "in every run: dynamic_leverage=off vpin_bucket_usd=1000000000.0"
    assert table[1].split() == ["mode", "leverage", "total_return", "sharpe_1m", "max_drawdown",
                                "trades", "final_equity"]  # fmt: skip
    cells = {row.split()[0]: row.split() for row in table[3:]}
    for run in runs:
        sharpe = run["metrics"]["sharpe_1m"]  # None: too few minutes in the session
        assert cells[run["strategy"]][4] == ("n/a" if sharpe is None else f"{sharpe:,.6g}")
    stored = Store(tmp_path).read("backtest_runs")
    # mode 0 alone and mode 0 among all four are the same run: stored once
    assert set(stored["interval"]) == {"session:night1"} and stored.height == 4


T0 = 1_767_225_600_000  # 2026-01-01
HOUR, MIN = 3_600_000, 60_000
RANGE = ["--start", "2026-01-01", "--end", "2026-01-02"]


def cycles(n: int = 12):
    """Each hour: a balanced book, taker buying, a book leaning to the bids (mode 0 goes long),
    quiet prints, then a +3.5 % book 20 minutes later (take profit). The 7:50 trade spans the
    8:00 funding time."""
    tops, trades = [], []
    tid = 0
    for k in range(n):
        p = round(100 * 1.035**k, 2)
        t = T0 + k * HOUR + 50 * MIN
        tops.append((t, p, 500.0, p + 0.1, 500.0))
        trades.append((t + 100, tid, p + 0.05, 200.0, False))
        tops.append((t + 200, p, 900.0, p + 0.1, 100.0))
        for j in range(5):
            tid += 1
            trades.append((t + 60_000 * (j + 1), tid, p + 0.05, 0.5, j % 2 == 0))
        q = round(p * 1.035, 2)
        tops.append((t + 20 * MIN, q, 1e6, q + 0.1, 1e6))
        tid += 1
    return tops, trades


def write_tape(store: Store, *, with_tops: bool = True) -> None:
    tops, trades = cycles()
    base = {"exchange": "binance", "symbol": SYM}
    store.write(
        "agg_trades",
        pl.DataFrame(
            [
                dict(zip(["ts", "trade_id", "price", "qty", "is_buyer_maker"], r, strict=True))
                | base
                for r in trades
            ]
        ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC"))),
    )
    if with_tops:
        store.write(
            "book_tops",
            pl.DataFrame(
                [
                    dict(zip(["ts", "bid", "bid_qty", "ask", "ask_qty"], r, strict=True))
                    | base
                    | {"update_id": i}
                    for i, r in enumerate(tops)
                ]
            ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC"))),
        )
    store.write(
        "funding",
        pl.DataFrame(
            [
                {**base, "ts": T0 + h * HOUR, "funding_rate": 0.0003, "mark_price": 130.0}
                for h in (0, 8, 16)
            ]
        ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC"))),
    )


def reference_trades() -> list[dict]:
    """PaperSession fed the same tape by hand: tops before trades in a millisecond, funding
    settled on the broker at the funding times."""
    tops, trades = cycles()
    events = [(t, 2, BookTop("binance", SYM, t, b, bq, a, aq, i))
              for i, (t, b, bq, a, aq) in enumerate(tops)]  # fmt: skip
    events += [(t, 3, AggTrade("binance", SYM, i, t, p, q, m)) for t, i, p, q, m in trades]
    events += [(T0 + h * HOUR, 0, None) for h in (0, 8, 16)]
    session = paper_svc.PaperSession(config("ref", modes=("0",), vpin_bucket_usd=1e9))
    for ts, _, event in sorted(events, key=lambda e: (e[0], e[1])):
        if event is None:
            session.brokers["0"].settle_funding(SYM, ts, 0.0003, 130.0)
        else:
            session.step(event)
    return session.take_closed()


def test_stored_trades_and_book_tops_backtest_to_paper_sessions_trades(tmp_path):
    write_tape(Store(tmp_path))
    result = liq(tmp_path, "0", SYM, "--data", "trades", *RANGE, "--param",
                 "vpin_bucket_usd=1e9", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    want = reference_trades()
    assert len(doc["trades"]) == len(want) >= 10
    for got, ref in zip(doc["trades"], want, strict=True):
        assert round(got["pnl"], 2) == round(ref["pnl"], 2)
        assert got["funding"] == pytest.approx(ref["funding"])
        assert got["exit_reason"] == ref["exit_reason"] == "take_profit"
    spanning = [t for t in doc["trades"] if t["funding"]]
    assert len(spanning) == 1 and spanning[0]["entry_ts"].startswith("2026-01-01T07:50")
    assert spanning[0]["funding"] == pytest.approx(spanning[0]["qty"] * 130.0 * 0.0003)
    m = doc["metrics"]
    assert m["funding"] == pytest.approx(spanning[0]["funding"])
    assert m["trades"] == len(want) and m["win_rate"] == 1.0 and m["sharpe_1m"] > 0
    assert doc["bars"] == 12 * 9  # events: 3 tops + 6 trades per cycle
    assert doc["optimal_leverage"]["mean_used"] == 5.0
    stored = Store(tmp_path).read("backtest_trades")
    assert set(stored["exit_reason"]) == {"take_profit"}


def test_compare_leverage_runs_every_engine_on_the_same_events(tmp_path):
    write_tape(Store(tmp_path))
    args = ["0", SYM, "--data", "trades", *RANGE, "--param", "vpin_bucket_usd=1e9"]
    result = liq(tmp_path, *args, "--compare-leverage", "-f", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    runs = doc["runs"]
    assert [r["params"]["dynamic_leverage"] for r in runs] == [
        "off",
        "rules",
        "kelly",
        "vol_target",
    ]
    assert len({r["bars"] for r in runs}) == 1
    fixed, rules = runs[0], runs[1]
    assert {t["leverage"] for t in fixed["trades"]} == {5.0}
    assert {t["leverage"] for t in rules["trades"]} != {5.0}
    single = json.loads(liq(tmp_path, *args, "--dynamic-leverage", "rules", "-f", "json").stdout)
    assert [t["pnl"] for t in single["trades"]] == [t["pnl"] for t in rules["trades"]]
    rows = {r["engine"]: r for r in doc["comparison"]}
    assert set(rows) == {"rules", "kelly", "vol_target"}
    r = rows["rules"]
    assert r["sharpe_fixed"] == fixed["metrics"]["sharpe_1m"] and r["sharpe_used"] == "sharpe_1m"
    assert r["sharpe_ok"] == (r["sharpe_change"] >= 0.10)
    opt = [t["optimal_leverage"] for t in rules["trades"]]
    assert r["mean_optimal"] == pytest.approx(float(np.mean(opt)))
    table = liq(tmp_path, *args, "--compare-leverage", "--quiet")
    assert table.exit_code == 0, table.output
    # three tables: the runs, the criteria against fixed, the leverage used and optimal
    blocks = [b.splitlines() for b in table.stdout.split("\n\n")]
    assert [len(b) for b in blocks] == [1 + 2 + 4, 1 + 2 + 3, 1 + 2 + 4]
    runs_rows = {line.split()[1]: line.split() for line in blocks[0][3:]}
    assert runs_rows["rules"][4:6] == [f"{rules['metrics']['sharpe_1m']:,.6g}", "(1m)"]
    criteria = {line.split()[1]: line.split() for line in blocks[1][3:]}
    change = f"{r['sharpe_change'] * 100:+,.2f}"
    assert criteria["rules"][2:5] == [change, "%", "ok" if r["sharpe_ok"] else "no"]
    assert criteria["rules"][-1] == ("yes" if r["meets_criteria"] else "no")
    optimal = {line.split()[1]: line.split() for line in blocks[2][3:]}
    assert optimal["rules"][3] == f"{r['mean_optimal']:,.6g}"
    assert max(len(line) for b in blocks for line in b[1:]) <= 90  # was 150+, one table


def test_missing_data_names_the_fetch_command(tmp_path):
    empty = liq(tmp_path, "0", SYM, "--data", "trades", *RANGE)
    assert empty.exit_code == 1
    assert "liq fetch BTCUSDT --dataset agg_trades --archive --start 2026-01-01" in empty.output
    write_tape(Store(tmp_path), with_tops=False)
    no_tops = liq(tmp_path, "0", SYM, "--data", "trades", *RANGE)
    assert no_tops.exit_code == 1 and "--dataset book_ticker --archive" in no_tops.output
    no_session = liq(tmp_path, "0", SYM, "--data", "session:nope")
    assert no_session.exit_code == 1 and "no paper session 'nope'" in no_session.output
    assert "Traceback" not in empty.output + no_tops.output + no_session.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["7", SYM, "--data", "trades"], "unknown order-flow mode '7'"),
        (["cascade,7", SYM, "--data", "trades"], "unknown order-flow mode '7'"),
        (["0", SYM], "give --data trades or --data session:NAME"),
        (["0", SYM, "--data", "trades", "--dynamic-leverage", "x"], "invalid --dynamic-leverage"),
        (["0", SYM, "--data", "trades", "--param", "x=1"], "no parameter 'x'"),
        (["0", SYM, "--data", "trades", "--grid", "x=1,2"], "--grid, --walk-forward"),
        (["0", SYM, "--data", "trades", "--leverage", "500"], "between 1 and 125"),
        (["sma_cross", SYM, "--compare-leverage"], "size the order-flow modes"),
        (["0", SYM, "--data", "session"], "invalid --data"),
        (["0", SYM, "--data", "session:a/b"], "invalid --data"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, message):
    result = liq(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_archive_depth_bands_become_the_deeper_book_levels(tmp_path):
    store = Store(tmp_path)
    write_tape(store)
    t = T0 + 50 * MIN + 150
    bands = [  # cumulative depth and notional at 1 % and 2 % from mid, as the archive publishes
        ("bid", 100, -1.0, 10.0, 995.0),
        ("bid", 200, -2.0, 30.0, 2975.0),
        ("ask", 100, 1.0, 4.0, 404.0),
        ("ask", 200, 2.0, 5.0, 506.0),
    ]
    store.write(
        "book_depth",
        pl.DataFrame(
            [
                dict(zip(["side", "level", "percentage", "depth", "notional"], b, strict=True))
                | {"exchange": "binance", "symbol": SYM, "source": "archive", "ts": t}
                for b in bands
            ]
        ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC"))),
    )
    settings = fsvc.FlowSettings(SYM, ("0",), T0, T0 + 24 * HOUR, "trades")
    ((ts, snap),) = fsvc.depth_snapshots(store, settings)
    assert ts == t and snap.update_id == 0
    assert snap.bids == ((99.5, 10.0), (99.0, 20.0)) and snap.asks == ((101.0, 4.0), (102.0, 1.0))
    result = liq(tmp_path, "0", SYM, "--data", "trades", *RANGE, "--param",
                 "vpin_bucket_usd=1e9", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bars"] == 12 * 9 + 1
