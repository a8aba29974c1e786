"""kill -9 for real: ``liq paper --session S`` as a subprocess against the fake Binance venue,
killed with a position open, restarted with the same session: balances and the open position
come back and the trade log has no gap or duplicate trade_id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import liqcli.services.paper  # noqa: F401  (registers paper_trades and paper_state)
from liqcli.store.parquet import Store
from tests.fakes.binance_depth import FakeBinanceDepth

pytestmark = pytest.mark.timeout(120)
SYM = "BTCUSDT"


class Tape:
    """A book that leans to the bids, taker buys outweighing sells: mode 0 goes long."""

    def __init__(self, fake: FakeBinanceDepth) -> None:
        self.fake = fake
        self.i = 0
        self.bid = self.ask = None

    def round(self, price: float) -> None:
        fake, i = self.fake, self.i
        self.i += 1
        bid, ask = price, round(price * 1.001, 2)
        bids = [(bid, 30.0 + i % 5)]
        asks = [(ask, 1.0)]
        if self.bid is not None and self.bid != bid:
            bids.append((self.bid, 0.0))  # the old levels go: the book never crosses
            asks.append((self.ask, 0.0))
        self.bid, self.ask = bid, ask
        fake.update(SYM, bids=bids, asks=asks)
        fake.flush(SYM)
        fake.book_ticker(SYM)
        fake.agg_trade(SYM, 2 * i, price + 0.01, 40.0, False)  # a taker buy
        fake.agg_trade(SYM, 2 * i + 1, price, 20.0, True)  # a taker sell
        fake.mark_price(SYM, price, price, 0.0001, 1_767_254_400_000)

    async def until(self, price: float, done: Callable[[], bool], timeout: float = 40.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done():
            assert loop.time() < end, "timed out waiting for the paper session"
            self.round(price)
            await asyncio.sleep(0.05)


class Paper:
    """One ``liq paper`` process; its jsonl lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.lines if r.get("type") == kind]

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), 30)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.reader, 5)
        return code


async def start(data_dir: Path, fake: FakeBinanceDepth) -> Paper:
    env = {
        **os.environ,
        "LIQ_BINANCE_WS_URL": fake.ws_url,
        "LIQ_BINANCE_REST_URL": fake.rest_url,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "liqcli",
        "--data-dir",
        str(data_dir),
        "paper",
        SYM,
        "--session",
        "S",
        "--modes",
        "0",
        "--format",
        "jsonl",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    return Paper(proc)


def stored(data_dir: Path, dataset: str) -> list[dict]:
    return Store(data_dir).read(dataset, session="S").to_dicts()


def open_position(data_dir: Path) -> dict | None:
    for row in stored(data_dir, "paper_state"):
        if row["mode"] == "0" and row["position"] and row["trades"] >= 1:
            return row
    return None


async def test_kill_9_with_a_position_open_then_resume_the_session(tmp_path):
    async with FakeBinanceDepth() as fake:
        fake.set_book(SYM, {100.0: 2.0}, {100.1: 2.0})
        tape = Tape(fake)
        first = await start(tmp_path, fake)
        # long at 100, take profit on the rally to 104, long again at 104
        await tape.until(100.0, lambda: first.of("order"))
        await tape.until(104.0, lambda: first.of("close"))
        await tape.until(104.0, lambda: open_position(tmp_path) is not None)
        first.proc.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        before = open_position(tmp_path)
        assert before is not None
        position = json.loads(before["position"])
        trades_before = stored(tmp_path, "paper_trades")
        assert [t["trade_id"] for t in trades_before] == list(range(before["trades"]))

        second = await start(tmp_path, fake)
        # the resumed long takes profit on the rally to 108 (the first diff re-syncs the book)
        await tape.until(108.0, lambda: second.of("close"))
        await tape.until(108.0, lambda: len(stored(tmp_path, "paper_trades")) > before["trades"])
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait() == 143  # the house exit code for SIGTERM, after the save

    trades = sorted(stored(tmp_path, "paper_trades"), key=lambda t: t["trade_id"])
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(len(ids))) and len(ids) > before["trades"]  # no gap, no duplicate
    resumed = trades[before["trades"]]
    # the position closed by the second run is the one open at the kill, not a new one
    assert resumed["entry_price"] == pytest.approx(position["entry_price"])
    assert resumed["qty"] == pytest.approx(position["qty"])
    assert resumed["entry_ts"].timestamp() * 1000 == pytest.approx(position["opened_ts"])
    # and the balance it closed on is the one stored before the kill (which had already paid the
    # entry fee and any funding, both part of the trade's pnl)
    paid = position["fees"] + position["funding"]
    assert resumed["balance_after"] == pytest.approx(before["balance"] + resumed["pnl"] + paid)
    assert resumed["exit_reason"] == "take_profit"
    (state,) = [r for r in stored(tmp_path, "paper_state") if r["mode"] == "0"]
    assert state["trades"] == len(ids)
    assert state["balance"] == pytest.approx(trades[-1]["balance_after"]) or state["position"]
