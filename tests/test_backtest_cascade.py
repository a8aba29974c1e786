"""``liq backtest cascade``: liq paper's cascade mode on recorded sessions (the live run's trades)
and on stored liquidations merged into the stored trade/book tape (the detector's trade, worked
out by hand from the tape); a missing liquidations dataset is one line naming the command that
stores it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.services import paper as paper_svc
from liqcli.sources.binance_market import BinanceMarketSource, MarketOptions
from liqcli.sources.recorder import Recorder
from liqcli.store.parquet import Store
from tests.fakes.binance_depth import FakeBinanceDepth
from tests.test_backtest_flow import TRADE_COLS
from tests.test_binance_market import TIMINGS
from tests.test_paper import ListSource, config, play_tape
from tests.test_paper_cascade import TAPE as CASCADE_TAPE

pytestmark = pytest.mark.timeout(60)
SYM = "BTCUSDT"
TAKER, SLIP = 0.0005, 0.0002  # liq backtest's (and liq paper's) default taker fee and slippage
T0 = 1_767_225_600_000  # 2026-01-01
RANGE = ["--start", "2026-01-01", "--end", "2026-01-02"]
NO_VPIN = ["--param", "vpin_bucket_usd=1e12"]
runner = CliRunner()


def liq(data_dir, *args):
    return runner.invoke(app, ["--data-dir", str(data_dir), "backtest", *args])


# ------------------------------------------------------------------ a recorded liq paper session


async def record_cascade_session(tmp_path, name: str) -> pl.DataFrame:
    """liq paper --record with every mode against the fake venue, forceOrder subscribed (as
    liq paper does when the cascade mode runs): play_tape liquidates $300k of longs 5 times."""
    store = Store(tmp_path)
    async with FakeBinanceDepth() as fake:
        fake.set_book(SYM, {100.0: 2.0, 99.9: 2.0}, {100.1: 2.0, 100.2: 2.0})
        cfg = config(name, vpin_bucket_usd=1e9)
        assert "cascade" in cfg.modes and cfg.liquidations
        source = Recorder(
            BinanceMarketSource(
                [SYM],
                MarketOptions(
                    timings=TIMINGS,
                    http_retries=0,
                    snapshot_every_ms=300,
                    liquidations=cfg.liquidations,
                ),
                ws_url=fake.ws_url,
                rest_url=fake.rest_url,
            ),
            store,
            flush_interval=0.05,
        )
        live = paper_svc.open_paper(cfg, tmp_path)
        task = asyncio.create_task(paper_svc.drive(live, source))
        books = source.source.books
        fake.update(SYM, bids=[(99.9, 2.5)])
        fake.flush(SYM)
        await fake.wait_until(lambda: SYM in books and books[SYM].synced)
        await play_tape(fake, 30)
        await fake.wait_until(lambda: live.session.engine.events >= 30 * 4 + 5 - 4)
        await asyncio.sleep(0.1)
        await source.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return store.read("paper_trades", session=name)


def assert_same_trades(got: list[dict], want: pl.DataFrame) -> None:
    assert len(got) == want.height
    for g, w in zip(got, want.sort("trade_id").iter_rows(named=True), strict=True):
        for col in TRADE_COLS:
            if isinstance(w[col], float):
                assert round(g[col], 2) == round(w[col], 2), col
            else:
                assert g[col] == w[col], col
        assert g["exit_reason"] == w["exit_reason"]
        assert g["optimal_leverage"] == pytest.approx(w["optimal_leverage"])


def test_a_recorded_session_backtests_the_cascade_mode_to_its_live_trades(tmp_path):
    live = asyncio.run(record_cascade_session(tmp_path, "casc1"))
    live_cascade = live.filter(pl.col("mode") == "cascade")
    # the cascade mode traded the recorded liquidations (the 4 % rally stops its shorts out)
    assert live_cascade.height >= 1 and "follow_short" in set(live_cascade["signal"])
    args = ["--data", "session:casc1", "--param", "vpin_bucket_usd=1e9", "-f", "json"]
    result = liq(tmp_path, "cascade", SYM, *args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["strategy"] == "cascade" and doc["params"]["leverage"] == 3.0
    assert_same_trades(doc["trades"], live_cascade)
    # in a list with the seed modes: each its live trades, to the cent
    both = liq(tmp_path, "0,1,cascade", SYM, *args)
    assert both.exit_code == 0, both.output
    runs = json.loads(both.stdout)["runs"]
    assert [r["strategy"] for r in runs] == ["0", "1", "cascade"]
    for run in runs:
        assert_same_trades(run["trades"], live.filter(pl.col("mode") == run["strategy"]))


# ------------------------------------------------------------------ stored liquidations + trades


def _frame(rows: list[dict], *times: str) -> pl.DataFrame:
    return pl.DataFrame(rows).with_columns(pl.col(t).cast(pl.Datetime("ms", "UTC")) for t in times)


def store_tape(
    store: Store,
    *,
    liquidations: bool = True,
    other_venue: bool = True,
    binance: bool = True,
    shift_ms: int = 0,
) -> None:
    """test_paper_cascade's TAPE at T0, stored as liq watch / liq fetch leave it: book_tops and
    agg_trades of Binance, liquidations of Binance (and OKX's of the same symbol)."""
    base = {"exchange": "binance", "symbol": SYM}
    tops = [(1_000, 100.0, 100.1), (10_000, 98.9, 99.0), (11_000, 98.9, 99.0), (12_000, 98.9, 99.0)]
    store.write(
        "book_tops",
        _frame(
            [
                base
                | {"ts": T0 + t, "update_id": i, "bid": b, "bid_qty": 200.0}
                | {"ask": a, "ask_qty": 200.0}
                for i, (t, b, a) in enumerate(tops)
            ],
            "ts",
        ),
    )
    trades = [(1_100, 1, 100.05), (10_100, 2, 98.9)]
    store.write(
        "agg_trades",
        _frame(
            [
                base
                | {"ts": T0 + t, "trade_id": i, "price": p, "qty": 0.01}
                | {"is_buyer_maker": False}
                for t, i, p in trades
            ],
            "ts",
        ),
    )
    if not liquidations:
        return
    rows = [  # $600k of longs at 2 s (BUILDING), $600k more at 3 s (MINOR: follow short)
        base
        | {"ts": T0 + t, "side": "long", "price": 100.0, "qty": 6_000.0}
        | {"notional_usd": 600_000.0, "venue_symbol": SYM, "received_ts": T0 + t + 40}
        for t in (2_000, 3_000)
        if binance
    ]
    if other_venue:  # a short squeeze on OKX the Binance-traded mode never hears live
        rows += [
            {"exchange": "okx", "symbol": SYM, "ts": T0 + t, "side": "short", "price": 100.0}
            | {"qty": 50_000.0, "notional_usd": 5_000_000.0, "venue_symbol": "BTC-USDT-SWAP"}
            | {"received_ts": T0 + t + 40}
            for t in (1_500, 2_500, 3_500)
        ]
    rows = [
        r | {"ts": r["ts"] + shift_ms, "received_ts": r["received_ts"] + shift_ms} for r in rows
    ]
    store.write("liquidations", _frame(rows, "ts", "received_ts"))


def test_stored_liquidations_and_trades_drive_the_cascade_mode(tmp_path):
    store_tape(Store(tmp_path))
    args = [SYM, "--data", "trades", *RANGE, *NO_VPIN, "--funding", "off", "-f", "json"]
    result = liq(tmp_path, "cascade", *args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["bars"] == 4 + 2 + 2  # tops, trades and Binance's liquidations: OKX's left out
    # At 3 s the 60-s window holds $1.2M of longs (MINOR, early, one-sided): follow_short.
    # Confidence 0.35 (MINOR) + (1.0 - 0.5) x 0.2 = 0.45 -> 30 % of the balance at 3x, sized
    # down by the taker fee; sold into the 100.0 bid (200 deep) less 2 bps of slippage.
    short_qty = 10_000 * 0.3 * 3 / 100.0 / (1 + 3 * TAKER * 2)
    short_entry = 100.0 * (1 - SLIP)
    # At 11 s the price has fallen 1.15 % since the cascade's start (100.05 -> 98.9): late,
    # prepare_long_reversal closes the short at the 99.0 ask plus 2 bps and buys the flush.
    exit_price = 99.0 * (1 + SLIP)
    fees = short_qty * (short_entry + exit_price) * TAKER
    pnl = short_qty * (short_entry - exit_price) - fees
    (trade,) = doc["trades"]
    assert trade["side"] == "short" and trade["exit_reason"] == "reversal"
    # stamped with the broker's clock, its last market data (the 1.1 s trade), as in liq paper
    assert trade["entry_ts"] == "2026-01-01T00:00:01.100Z"
    assert trade["exit_ts"] == "2026-01-01T00:00:11.000Z"
    assert trade["qty"] == pytest.approx(short_qty)
    assert round(trade["entry_price"], 2) == round(short_entry, 2)
    assert round(trade["exit_price"], 2) == round(exit_price, 2)
    assert round(trade["fees"], 2) == round(fees, 2) and round(trade["pnl"], 2) == round(pnl, 2)
    assert trade["leverage"] == 3.0 and trade["funding"] == 0.0
    # the reversal: confidence 0.35 + 0.1 + 0.05 (price fell > 0.5 % in 30 s) = 0.5 -> 30 %
    long_qty = (10_000 + pnl) * 0.3 * 3 / 99.0 / (1 + 3 * TAKER * 2)
    pos = doc["open_position"]
    assert pos["side"] == "long" and pos["qty"] == pytest.approx(long_qty)
    assert pos["entry_price"] == pytest.approx(exit_price)
    # in a list with the seed modes (which never trade on this tape): the same cascade run
    runs = json.loads(liq(tmp_path, "all,cascade", *args).stdout)["runs"]
    assert [r["strategy"] for r in runs] == ["0", "1", "2", "3", "cascade"]
    assert runs[-1]["trades"] == doc["trades"]


def test_the_stored_run_equals_liq_paper_on_the_same_tape(tmp_path):
    """The same events by hand through liq paper's PaperSession (no store)."""
    store_tape(Store(tmp_path), other_venue=False)
    result = liq(tmp_path, "cascade", SYM, "--data", "trades", *RANGE, *NO_VPIN, "--funding",
                 "off", "-f", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    session = paper_svc.PaperSession(config("ref", modes=("cascade",), vpin_bucket_usd=1e12))
    for event in CASCADE_TAPE:
        session.step(dataclasses.replace(event, ts=event.ts + T0))
    (want,) = session.take_closed()
    (got,) = json.loads(result.stdout)["trades"]
    assert round(got["pnl"], 6) == round(want["pnl"], 6)
    assert got["qty"] == pytest.approx(want["qty"])


# ------------------------------------------------------------------ missing liquidations


def test_missing_liquidations_name_the_command_that_stores_them(tmp_path):
    store_tape(Store(tmp_path), liquidations=False)
    none = liq(tmp_path, "cascade", SYM, "--data", "trades", *RANGE)
    assert none.exit_code == 1, none.output
    line = none.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("liq: error: no binance liquidations stored for BTCUSDT in the range")
    assert "`liq watch BTCUSDT -e binance`" in line and "liq fetch cannot" in line
    # the seed modes alone need none
    assert liq(tmp_path, "0,1", SYM, "--data", "trades", *RANGE).exit_code == 0
    # only another venue's, or only outside the range: none to trade on either
    for name, kw in (("okx", {"binance": False}), ("early", {"shift_ms": -86_400_000})):
        store_tape(Store(tmp_path / name), **kw)
        other = liq(tmp_path / name, "cascade", SYM, "--data", "trades", *RANGE)
        assert other.exit_code == 1, other.output
        assert "no binance liquidations stored" in other.output, name


def test_a_session_recorded_without_the_cascade_mode_says_so(tmp_path):
    store = Store(tmp_path)
    cfg = config("seedonly", modes=("0",))
    assert not cfg.liquidations  # liq paper subscribes forceOrder only with the cascade mode
    run = paper_svc.open_paper(cfg, tmp_path)
    seed_tape = [e for e in CASCADE_TAPE if type(e).__name__ != "Liquidation"]

    async def record() -> None:
        async with Recorder(ListSource(seed_tape), store, flush_interval=0.05) as source:
            await paper_svc.drive(run, source)

    asyncio.run(record())
    ok = liq(tmp_path, "0", SYM, "--data", "session:seedonly", "-f", "json")
    assert ok.exit_code == 0, ok.output
    result = liq(tmp_path, "0,cascade", SYM, "--data", "session:seedonly")
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and "session 'seedonly' recorded no liquidations for BTCUSDT" in line
    assert "--modes 0,1,2,3,cascade --session NAME --record" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cascade", SYM], "trades order flow"),
        (["0,cascade", SYM], "trades order flow"),
        (["0,x", SYM, "--data", "trades"], "unknown order-flow mode 'x'"),
        (["all,0", SYM, "--data", "trades"], "give each mode once"),
        (["0,cascade", SYM, "--data", "trades", "--chart", "x.png"], "--chart draws one run"),
    ],
)
def test_mode_list_usage_errors_exit_2(tmp_path, args, message):
    result = liq(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
