"""``liq paper``: the competition on a scripted tape, storage and resume, live/replay parity
against the fake Binance venue, and usage errors before any connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.events import AggTrade, BookTop, MarkPrice
from liqcli.services import paper as svc
from liqcli.sources.binance_market import BinanceMarketSource, MarketOptions
from liqcli.sources.recorder import RecordedSource, Recorder
from liqcli.store.parquet import Store
from tests.fakes.binance_depth import FakeBinanceDepth
from tests.test_binance_market import TIMINGS

pytestmark = pytest.mark.timeout(60)
SYM = "BTCUSDT"


class ListSource:
    def __init__(self, events: list[Any], batch: int = 3) -> None:
        self.events, self.batch, self.statuses = events, batch, {}

    async def batches(self):
        for i in range(0, len(self.events), self.batch):
            yield self.events[i : i + self.batch]

    async def aclose(self) -> None:
        pass


def top(ts, bid, bq, ask, aq):
    return BookTop("binance", SYM, ts, bid, bq, ask, aq)


def buy(ts, qty, i):
    return AggTrade("binance", SYM, i, ts, 100.05, qty, False)


TAPE = [
    top(1_000, 100.0, 5.0, 100.1, 5.0),
    buy(1_100, 200.0, 1),  # VPIN 1 on $1k buckets: only mode 0 trades
    top(1_200, 100.0, 9.0, 100.1, 1.0),  # LONG 0.889: mode 0 opens 5x
    MarkPrice("binance", SYM, 1_300, 100.1, 100.0, 0.0001, 1_500),
    MarkPrice("binance", SYM, 1_600, 100.2, 100.0, 0.0001, 9_000),  # funding settled at 1.5 s
    top(2_000, 103.5, 5.0, 103.6, 5.0),  # take profit
]


def config(session: str, **kw) -> svc.PaperConfig:
    return svc.PaperConfig(**{"symbol": SYM, "session": session, "vpin_bucket_usd": 1_000.0, **kw})


async def test_the_competition_stores_trades_and_state_and_resumes(tmp_path):
    records: list[dict] = []
    run = svc.open_paper(config("s1"), tmp_path, emit=records.append)
    await svc.drive(run, ListSource(TAPE[:4]))  # ends with mode 0 long, funding not yet due
    store = Store(tmp_path)
    state = {r["mode"]: r for r in store.read("paper_state").iter_rows(named=True)}
    assert set(state) == {"0", "1", "2", "3", "cascade"}
    assert json.loads(state["0"]["position"])["qty"] > 0 and state["1"]["position"] is None
    assert [r["type"] for r in records if r["mode"] == "0"][:2] == ["order", "fill"]
    assert sorted({r["mode"] for r in records if r["type"] == "block"}) == ["1", "2", "3"]
    # "kill -9" here; the next run of the session resumes the position and finishes the trade
    resumed = svc.open_paper(config("s1"), tmp_path)
    assert resumed.restored == 5
    qty = resumed.session.brokers["0"].position(SYM).qty
    assert qty == pytest.approx(json.loads(state["0"]["position"])["qty"])
    assert resumed.session.modes["0"].entry.risk == "DANGER"
    await svc.drive(resumed, ListSource(TAPE[4:]))
    (trade,) = store.read("paper_trades").iter_rows(named=True)
    assert (trade["mode"], trade["trade_id"], trade["exit_reason"]) == ("0", 0, "take_profit")
    # the settlement at 1.5 s, announced before the restart: qty x mark before it x rate
    assert trade["funding"] == pytest.approx(qty * 100.1 * 0.0001)
    assert trade["balance_after"] == pytest.approx(10_000 + trade["pnl"])
    # the same uninterrupted gives the same trade to the cent
    straight = svc.open_paper(config("s2"), tmp_path)
    await svc.drive(straight, ListSource(TAPE))
    (again,) = store.read("paper_trades", session="s2").iter_rows(named=True)
    assert round(again["pnl"], 2) == round(trade["pnl"], 2)
    assert again["funding"] == pytest.approx(trade["funding"])
    summary = straight.session.summary()
    assert summary["modes"][0]["mode"] == "0" and summary["modes"][0]["rank"] == 1
    for key in (
        "balance",
        "equity",
        "realized_pnl",
        "unrealized_pnl",
        "fees",
        "funding",
        "trades",
        "wins",
        "win_rate",
        "leverage",
        "position",
    ):
        assert key in summary["modes"][0]


async def test_a_trade_stored_after_the_last_state_is_applied_on_restore(tmp_path):
    run = svc.open_paper(config("k"), tmp_path)
    await svc.drive(run, ListSource(TAPE[:4]))
    before = Store(tmp_path).read("paper_state")
    finished = svc.open_paper(config("k"), tmp_path)
    await svc.drive(finished, ListSource(TAPE[4:]))
    # simulate a kill between the trade write and the state write: put the old state back
    svc.write_state(
        Store(tmp_path),
        [
            {
                **r,
                "ts": int(r["ts"].timestamp() * 1000),
                "started_ts": int(r["started_ts"].timestamp() * 1000),
            }
            for r in before.iter_rows(named=True)
        ],
    )
    restored = svc.open_paper(config("k"), tmp_path)
    (trade,) = Store(tmp_path).read("paper_trades", session="k").iter_rows(named=True)
    broker = restored.session.brokers["0"]
    assert broker.position(SYM).is_flat  # closed, as the trade log says
    assert broker.account.balance == pytest.approx(trade["balance_after"])
    assert restored.session.trade_ids["0"] == 1  # the next trade is #1: no gap, no duplicate


async def play_tape(fake: FakeBinanceDepth, rounds: int) -> None:
    """A book that leans to the bids with taker buys, then a rally: the modes trade."""
    for i in range(rounds):
        lift = 1.0 + (0.04 if i >= rounds // 2 else 0.0)
        fake.update(
            SYM, bids=[(round(100.0 * lift, 1), 30.0 + i)], asks=[(round(100.1 * lift, 1), 1.0)]
        )
        fake.flush(SYM)
        fake.book_ticker(SYM)
        fake.agg_trade(SYM, 100 + i, 100.05 * lift, 40.0, False)
        fake.mark_price(SYM, 100.05 * lift, 100.0 * lift, 0.0001, 1_767_225_602_000)
        if 2 <= i < 7:  # $300k of longs liquidated each: a MINOR cascade for the cascade mode
            fake.force_order(SYM, "SELL", 100.0, 3_000.0)
        await asyncio.sleep(0.003)


async def test_replaying_a_recorded_session_gives_the_same_trades_as_live(tmp_path):
    store = Store(tmp_path)
    async with FakeBinanceDepth() as fake:
        fake.set_book(SYM, {100.0: 2.0, 99.9: 2.0}, {100.1: 2.0, 100.2: 2.0})
        source = Recorder(
            BinanceMarketSource(
                [SYM],
                MarketOptions(
                    timings=TIMINGS, http_retries=0, snapshot_every_ms=300, liquidations=True
                ),
                ws_url=fake.ws_url,
                rest_url=fake.rest_url,
            ),
            store,
            flush_interval=0.05,
        )
        live = svc.open_paper(config("live", vpin_bucket_usd=1e9), tmp_path)
        task = asyncio.create_task(svc.drive(live, source))
        books = source.source.books
        fake.update(SYM, bids=[(99.9, 2.5)])
        fake.flush(SYM)  # the first diff starts the book sync
        await fake.wait_until(lambda: SYM in books and books[SYM].synced)
        await play_tape(fake, 30)
        await fake.wait_until(lambda: live.session.engine.events >= 30 * 4 + 5 - 4)
        await asyncio.sleep(0.1)
        await source.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    live_trades = store.read("paper_trades", session="live")
    assert live_trades.height >= 2  # the tape made the modes trade
    # the cascade mode followed the long liquidations short and reversed on the rally
    assert "cascade" in live_trades["mode"].to_list()
    replay = svc.open_paper(config("replay", vpin_bucket_usd=1e9), tmp_path)
    await svc.drive(replay, RecordedSource(store, symbols=[SYM]))
    replayed = store.read("paper_trades", session="replay")
    cols = [
        "mode",
        "trade_id",
        "side",
        "entry_price",
        "exit_price",
        "qty",
        "pnl",
        "fees",
        "exit_reason",
    ]
    assert replayed.select(cols).to_dicts() == live_trades.select(cols).to_dicts()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modes", "0,9"], "unknown mode '9'"),
        (["--leverage", "0=0"], "between 1 and 125"),
        (["--leverage", "1=200"], "between 1 and 125"),
        (["--capital", "-5"], "--capital must be positive"),
        (["--dynamic-leverage", "magic"], "--dynamic-leverage"),
        (["--format", "html"], "--format"),
        (["--modes", "0,cascade,0"], "give each mode once"),
        (["--leverage", "cascade=0"], "between 1 and 125"),
    ],
)
def test_bad_input_exits_2_before_any_connection(args, message):
    result = CliRunner().invoke(app, ["paper", SYM, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
