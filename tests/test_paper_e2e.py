"""``liq paper`` end to end: the real command, as a subprocess, against the fake Binance venue
(REST depth snapshot, depth@100ms diffs with U/u/pu, bookTicker, aggTrade, markPrice with the
funding rate r and the next funding time T) playing a scripted book and trade tape. Every
order, fill, fee, funding payment and exit is worked out by hand below from the tape's numbers.

How the tape reaches the modes (so the hand arithmetic knows what they see):
- the engine sees the book through bookTicker (the top) and the top-20 ``BookSnapshot`` the
  source emits when a diff crosses a whole second of event time (the book as it stood then).
  ``Tape.show`` changes the venue's book with one diff, moves the venue clock to the next whole
  second and sends a diff that changes nothing: that one emits the snapshot of the new book,
  which is the modes' decision point (one OBI reading; its velocity is the change since the
  previous book); a bookTicker of the same book follows (the next reading: velocity 0);
- depth and bookTicker travel on the ``/public`` connection, aggTrade, markPrice and forceOrder
  on ``/market``: before the tape switches connection it waits until the session has processed
  everything sent, from a jsonl line it expects (an order, a fill, a close) or from a barrier:
  an event at least 1 s of event time after everything sent, whose ``paper_state`` row (written
  once per second of event time) proves it; frames of different streams on one connection go
  out one at a time (``FakeBinanceDepth.delivered``), so they arrive in the tape's order;
- the run ends by ``--duration``: an event past the first event time + duration ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import pytest

import liqcli.services.paper  # noqa: F401  (registers paper_trades and paper_state)
from liqcli.core.timeutil import iso_ms
from liqcli.store.parquet import Store
from liqcli.trading.costs import bracket_for
from tests.fakes.binance_depth import T0, FakeBinanceDepth

pytestmark = pytest.mark.timeout(60)
SYM = "BTCUSDT"
SESSION = "e2e"
DURATION_S = 600  # event time; the tape ends it with an event past T0 + 600 s
TAKER, MAKER = 0.0005, 0.0002  # the default --fees 0.02%,0.05%
SLIP = 0.0002  # the default --slippage-bps 2 on market fills
RATE = 0.0001  # the funding rate r of every markPrice event
FUNDING_T = T0 + 30_000  # the next funding time T they announce


class Paper:
    """One ``liq paper ... --format jsonl`` process; its lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.stderr = bytearray()
        self.reader = asyncio.create_task(self._read())
        self.errors = asyncio.create_task(self._read_stderr())  # a full pipe would block it

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr += line

    def of(self, kind: str, mode: str | None = None) -> list[dict]:
        return [r for r in self.lines if r["type"] == kind and (mode is None or r["mode"] == mode)]

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 15.0) -> list[dict]:
        """Until the session has written ``n`` lines of ``kind``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.of(kind)) < n:
            assert loop.time() < end, f"no {kind} line: {self.lines}"
            await asyncio.sleep(0.01)
        return self.of(kind)

    async def finish(self) -> int:
        """The exit code once the session ended (its stderr in ``self.stderr``)."""
        code = await asyncio.wait_for(self.proc.wait(), 20)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.gather(self.reader, self.errors), 5)
        return code


class Tape:
    """The scripted venue: books, marks and trades in order, with barriers between connections."""

    def __init__(self, fake: FakeBinanceDepth, data_dir: Path, duration_s: int) -> None:
        self.fake = fake
        self.data_dir = data_dir
        self.duration_s = duration_s
        self.trade_id = 0
        self.mark: tuple[float, float, int] = (0.0, RATE, FUNDING_T)

    async def start(self, bids: dict[float, float], asks: dict[float, float]) -> None:
        """The venue's book before the session connects; the first diff starts the book sync."""
        fake = self.fake
        fake.set_book(SYM, bids, asks)
        self._tick()  # E = T0: buffered, REST snapshot loaded, replayed
        await fake.delivered()
        await fake.wait_until(lambda: fake.snapshots_served >= 1, timeout=15)
        await self.show(bids, asks)  # the first reading: the starting book

    def _tick(self) -> None:
        """A diff that changes nothing (the best bid set to its own quantity)."""
        bids, _ = self.fake.book(SYM)
        best = max(bids)
        self.fake.update(SYM, bids=[(best, bids[best])])
        self.fake.flush(SYM)

    async def show(self, bids: dict[float, float], asks: dict[float, float]) -> int:
        """Make the venue's book ``bids``/``asks``; returns the event time the modes decide at."""
        fake = self.fake
        old_bids, old_asks = fake.book(SYM)
        changes_b = [(p, 0.0) for p in old_bids if p not in bids] + list(bids.items())
        changes_a = [(p, 0.0) for p in old_asks if p not in asks] + list(asks.items())
        if (old_bids, old_asks) != (bids, asks):
            fake.update(SYM, bids=changes_b, asks=changes_a)
            fake.flush(SYM)
        boundary = (fake.now // 1000 + 1) * 1000
        fake.clock_to(boundary)
        self._tick()  # crosses the second: the BookSnapshot of the new book, ts = boundary
        fake.book_ticker(SYM)
        await fake.delivered()
        return boundary

    async def mark_price(self, mark: float, rate: float = RATE, next_funding: int = FUNDING_T):
        self.mark = (mark, rate, next_funding)
        self.fake.mark_price(SYM, mark, mark, rate, next_funding)
        await self.fake.delivered()
        return self.fake.now  # markPrice: ts = E

    async def trade(self, price: float, qty: float, *, taker_buys: bool) -> int:
        self.trade_id += 1
        self.fake.agg_trade(SYM, self.trade_id, price, qty, maker=not taker_buys)
        await self.fake.delivered()
        return self.fake.now - 1  # aggTrade: ts = T = E - 1

    async def barrier_ts(self, route: str) -> int:
        """A bookTicker (or the last markPrice) at the venue's clock, without waiting."""
        fake = self.fake
        if route == "public":
            # A bookTicker is new only with a newer update id: a change that changes nothing,
            # published by the next diff (bookTicker runs ahead of depth@100ms, as on Binance).
            # No diff now: no top-N snapshot in a batch of its own before the ticker.
            bids, _ = fake.book(SYM)
            fake.update(SYM, bids=[(max(bids), bids[max(bids)])])
            fake.book_ticker(SYM)
            await fake.delivered()
            return fake.now - 5  # bookTicker: ts = T = E - 5
        assert self.mark[0] > 0, "a market barrier repeats the last markPrice: send one first"
        return await self.mark_price(*self.mark)

    async def barrier(self, route: str) -> None:
        """An event on ``route`` ("public": bookTicker, "market": the last markPrice again) 1.1 s
        after everything sent; wait until paper_state shows the session processed it. The book
        and the mark stay as they were: the modes see one more reading of the same market."""
        self.fake.clock_to(self.fake.now + 1_100)
        ts = await self.barrier_ts(route)
        await self.until(lambda rows: max(r["ts"] for r in rows) >= ts)

    async def until(self, done, timeout: float = 15.0) -> list[dict]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        rows: list[dict] = []
        while True:
            with contextlib.suppress(Exception):  # not written yet
                rows = stored(self.data_dir, "paper_state")
                for r in rows:
                    r["ts"] = int(r["ts"].timestamp() * 1000)
                if rows and done(rows):
                    return rows
            assert loop.time() < end, f"timed out waiting for the paper session's state: {rows}"
            await asyncio.sleep(0.02)

    async def end(self) -> None:
        """An event past the --duration deadline (first event + duration): it saves and exits."""
        self.fake.clock_to(T0 + self.duration_s * 1000 + 60_000)
        await self.barrier_ts("public")


def stored(data_dir: Path, dataset: str) -> list[dict]:
    return Store(data_dir).read(dataset, session=SESSION).to_dicts()


async def start_paper(data_dir: Path, fake: FakeBinanceDepth, duration_s: int, *args: str):
    env = {**os.environ, "LIQ_BINANCE_WS_URL": fake.ws_url, "LIQ_BINANCE_REST_URL": fake.rest_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "liqcli",
        "--data-dir",
        str(data_dir),
        "paper",
        SYM,
        "--session",
        SESSION,
        "--duration",
        str(duration_s),
        "--format",
        "jsonl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    return Paper(proc)


@contextlib.asynccontextmanager
async def session(tmp_path: Path, *args: str, duration_s: int = DURATION_S):
    async with FakeBinanceDepth() as fake:
        paper = await start_paper(tmp_path, fake, duration_s, *args)
        try:
            yield Tape(fake, tmp_path, duration_s), paper
        finally:
            if paper.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, TimeoutError):
                    await asyncio.wait_for(paper.proc.wait(), 0.5)
            if paper.proc.returncode is None:
                paper.proc.kill()
                await paper.proc.wait()


def one(records: list[dict]) -> dict:
    assert len(records) == 1, records
    return records[0]


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-9)


def check_trade(row: dict, close: dict) -> None:
    """The paper_trades row says what the jsonl close said."""
    for key in ("entry_price", "exit_price", "qty", "fees", "funding", "pnl", "roi"):
        assert row[key] == approx(close[key]), key
    assert (row["side"], row["exit_reason"]) == (close["side"], close["exit_reason"])
    assert int(row["ts"].timestamp() * 1000) == close["exit_ts"]


# -------------------------------------------------------------------------- the four seed modes

B0 = ({50_000.0: 1.0, 49_990.0: 1.0}, {50_010.0: 1.0, 50_020.0: 1.0})  # balanced: OBI 0
# A lean with a thin top: bids 2 + 12, asks 0.2 + 0.5; top-of-book depth 2.2 < 3.
B1 = ({50_000.0: 2.0, 49_990.0: 12.0}, {50_010.0: 0.2, 50_020.0: 0.5})
# A lean with a thick top: bids 6 + 12, asks 0.3 + 0.7; depth 6.3.
B2 = ({50_000.0: 6.0, 49_990.0: 12.0}, {50_010.0: 0.3, 50_020.0: 0.7})
# The rally, balanced again: bids 0.4 + 11.6, asks 6 + 6 (OBI 0).
B3 = ({51_300.0: 0.4, 51_290.0: 11.6}, {51_310.0: 6.0, 51_320.0: 6.0})


async def test_the_four_seed_modes_trade_the_tape_as_worked_out_by_hand(tmp_path):
    async with session(tmp_path, "--modes", "0,1,2,3") as (tape, paper):
        await tape.start(*B0)
        t_entry1 = await tape.show(*B1)
        await tape.show(*B0)
        t_entry2 = await tape.show(*B2)
        await tape.barrier("public")
        await tape.mark_price(50_005.0)  # r = 0.0001, next funding at T = T0 + 30 s
        tape.fake.clock_to(FUNDING_T)  # the next mark is at T: the funding settles
        await tape.mark_price(50_005.0, next_funding=FUNDING_T + 8 * 3_600_000)
        await tape.until(lambda rows: all(r["funding"] for r in rows))
        t_rally = await tape.show(*B3)
        await tape.barrier("public")
        t_vpin = await tape.trade(51_310.0, 1.0, taker_buys=True)
        await tape.until(lambda rows: all(r["trades"] == 1 for r in rows))
        await tape.end()
        assert await paper.finish() == 0, paper.stderr.decode()

    # -- entry 1 (B1): OBI = (14 - 0.7) / 14.7; velocity = OBI - 0 (B0) > 0.1: the full 0.2;
    # microprice pressure = (2 - 0.2) / 2.2 (bid qty - ask qty over their sum); no trades: SV 0
    obi1 = (14.0 - 0.7) / 14.7
    long1 = 0.4 * obi1 + 0.2 + 0.1 * (1.8 / 2.2)
    assert 0.6 < long1 <= 0.8  # LONG, confidence long1: margin = 50 % of the balance
    # risk: VPIN unknown (no trade yet) 0, spread 10/50,005 = 2 bps 0, depth 2.2 < 3: 2 points
    # -> WARNING: stop-loss 8 %, take-profit 12 % of the leveraged ROI.
    # Modes 2 and 3 (liquidity filter) block: depth 2.2 < 3. Modes 0 (5x) and 1 (3x) buy.
    for mode in ("2", "3"):
        block = one([b for b in paper.of("block", mode) if b["ts"] == iso_ms(t_entry1)])
        assert block["reasons"] == ["depth 2.20 < 3"] and block["direction"] == "LONG"
    # qty = balance x 0.5 x leverage / best ask, sized down by 2 taker fees of the leverage
    q0 = 10_000 * 0.5 * 5 / 50_010 / (1 + 5 * TAKER * 2)
    q1 = 10_000 * 0.5 * 3 / 50_010 / (1 + 3 * TAKER * 2)
    # the buys walk the asks: 0.2 at 50,010, the rest at 50,020; then + 2 bps of slippage
    e0 = (0.2 * 50_010 + (q0 - 0.2) * 50_020) / q0 * (1 + SLIP)
    e1 = (0.2 * 50_010 + (q1 - 0.2) * 50_020) / q1 * (1 + SLIP)

    # -- entry 2 (B2, after B0 again): OBI = (18 - 1) / 19, velocity = OBI - 0, pressure 5.7/6.3
    long2 = 0.4 * (17.0 / 19.0) + 0.2 + 0.1 * (5.7 / 6.3)
    assert 0.6 < long2 <= 0.8  # LONG, margin 50 %
    # risk: depth 6.3 < 10: 1 point -> SAFE: stop-loss 5 %, take-profit 8 %.
    # Modes 0 and 1 hold their longs (no exit: ROI about -0.5 %); modes 2 (3x) and 3 (5x) buy.
    q2 = 10_000 * 0.5 * 3 / 50_010 / (1 + 3 * TAKER * 2)
    q3 = 10_000 * 0.5 * 5 / 50_010 / (1 + 5 * TAKER * 2)
    e2 = 50_010 * (1 + SLIP)  # q2 < 0.3: all at the best ask
    e3 = (0.3 * 50_010 + (q3 - 0.3) * 50_020) / q3 * (1 + SLIP)  # 0.3 at 50,010, rest at 50,020

    # -- funding at T: each long pays qty x the mark known then (50,005) x r
    # -- the rally (B3, mid 51,305): leveraged ROI = (qty (mid - entry) - fees - funding) / margin
    #    mode 0 (5x): about 12.5 % >= its 12 % -> take profit; mode 3 (5x): 12.5 % >= 8 % -> take
    #    profit; modes 1 and 2 (3x): about 7.5 % < 12 % and < 8 %: hold.
    #    The sells walk the bids: 0.4 at 51,300, the rest at 51,290; then - 2 bps.
    x0 = (0.4 * 51_300 + (q0 - 0.4) * 51_290) / q0 * (1 - SLIP)
    x3 = (0.4 * 51_300 + (q3 - 0.4) * 51_290) / q3 * (1 - SLIP)
    # -- a taker buy of 1 BTC at 51,310 ($51,310 >= the $50k bucket): one full bucket, all buys:
    #    VPIN 1.0 > 0.8 while modes 1 and 2 are in profit -> vpin_exit; q1, q2 < 0.4: at 51,300
    x1 = x2 = 51_300 * (1 - SLIP)

    expected = {
        # mode: (leverage, qty, entry, exit, exit reason, entered at, exited at)
        "0": (5, q0, e0, x0, "take_profit", t_entry1, t_rally),
        "1": (3, q1, e1, x1, "vpin_exit", t_entry1, t_vpin),
        "2": (3, q2, e2, x2, "vpin_exit", t_entry2, t_vpin),
        "3": (5, q3, e3, x3, "take_profit", t_entry2, t_rally),
    }
    trades = {r["mode"]: r for r in stored(tmp_path, "paper_trades")}
    assert set(trades) == set(expected)
    for mode, (lev, qty, entry, exit_, reason, t_in, t_out) in expected.items():
        order = one(paper.of("order", mode))
        assert (order["side"], order["status"], order["leverage"]) == ("buy", "filled", lev)
        assert order["qty"] == approx(qty) and order["ts"] == iso_ms(t_in)
        buy, sell = paper.of("fill", mode)
        fee_in = qty * entry * TAKER  # taker fee on the notional filled
        fee_out = qty * exit_ * TAKER
        assert (buy["side"], buy["liquidity"], buy["reason"]) == ("buy", "taker", "entry")
        assert buy["qty"] == approx(qty) and buy["price"] == approx(entry)
        assert buy["fee"] == approx(fee_in)
        assert (sell["side"], sell["reason"], sell["ts"]) == ("sell", reason, iso_ms(t_out))
        assert sell["qty"] == approx(qty) and sell["price"] == approx(exit_)
        assert sell["fee"] == approx(fee_out)
        funding = qty * 50_005 * RATE  # paid by a long at a positive rate
        pnl = qty * (exit_ - entry) - fee_in - fee_out - funding
        close = one(paper.of("close", mode))
        assert close["exit_reason"] == reason and close["leverage"] == lev
        assert close["entry_price"] == approx(entry) and close["exit_price"] == approx(exit_)
        assert close["fees"] == approx(fee_in + fee_out)
        assert close["funding"] == approx(funding)
        assert close["pnl"] == approx(pnl)
        assert close["roi"] == approx(pnl / (qty * entry / lev))  # on the margin committed
        check_trade(trades[mode], close)
        assert trades[mode]["balance_after"] == approx(10_000 + pnl)
    assert trades["0"]["risk_level"] == "WARNING" and trades["2"]["risk_level"] == "SAFE"
    assert trades["0"]["confidence"] == approx(long1) and trades["3"]["confidence"] == approx(long2)
    # modes 0 and 1 never blocked; 2 and 3 once each (entry 1)
    assert {b["mode"] for b in paper.of("block")} == {"2", "3"}
    assert len(paper.of("block")) == 2


# -------------------------------------------------------------------------- liquidation

# A lean with depth for a 20x buy: asks 0.3 + 0.7 + 1.5, bids 6 + 40 (depth 6.3).
B2_DEEP = ({50_000.0: 6.0, 49_990.0: 40.0}, {50_010.0: 0.3, 50_020.0: 0.7, 50_030.0: 1.5})


async def test_the_mark_crossing_the_liquidation_price_liquidates_before_the_stop_loss(tmp_path):
    async with session(tmp_path, "--modes", "0", "--leverage", "0=20") as (tape, paper):
        await tape.start(*B0)
        t_entry = await tape.show(*B2_DEEP)
        await tape.barrier("public")
        await tape.mark_price(50_005.0)  # the mark at the mid: nothing happens
        t_crash = await tape.mark_price(47_000.0)  # the mark falls; the book does not move
        await paper.wait_for("close")
        await tape.end()
        assert await paper.finish() == 0, paper.stderr.decode()

    # LONG: OBI = (46 - 2.5) / 48.5, velocity = OBI - 0 (B0): 0.2, pressure (6 - 0.3) / 6.3
    confidence = 0.4 * (43.5 / 48.5) + 0.2 + 0.1 * (5.7 / 6.3)
    assert 0.6 < confidence <= 0.8  # margin 50 % of the balance; risk SAFE (depth 6.3 < 10):
    # stop-loss at -5 % ROI, i.e. a 0.25 % fall of the mid at 20x: the book never moves.
    qty = 10_000 * 0.5 * 20 / 50_010 / (1 + 20 * TAKER * 2)
    # the buy walks 0.3 at 50,010, 0.7 at 50,020, the rest at 50,030; + 2 bps
    entry = (0.3 * 50_010 + 0.7 * 50_020 + (qty - 1.0) * 50_030) / qty * (1 + SLIP)
    fee_in = qty * entry * TAKER
    margin = qty * entry / 20  # isolated margin
    # Binance's isolated formula, one-way mode, for a long of size Q at EP holding WB:
    #   LP = (WB + cum - Q EP) / (Q mmr - Q)
    # The notional Q EP (about 98k USDT) is in BTCUSDT's second bracket (50k to 500k): maintenance
    # rate 0.5 %, maintenance amount cum = 50,000 x (0.5 % - 0.4 %) = 50.
    mmr, cum = 0.005, 50_000 * (0.005 - 0.004)
    assert 50_000 <= qty * entry < 500_000
    assert (bracket_for(qty * entry).mmr, bracket_for(qty * entry).cum) == approx((mmr, cum))
    lp = (margin + cum - qty * entry) / (qty * mmr - qty)
    assert 47_000 < lp < 50_005 * (1 - 0.05 / 20)  # crossed by the mark; the stop is not
    # closed at LP; what is left of the margin after the loss goes to the venue (its fee)
    realized = qty * (lp - entry)
    clearance = margin + realized
    pnl = -(margin + fee_in)  # = realized - fee_in - clearance: the margin and the fee, lost

    order = one(paper.of("order"))
    assert (order["side"], order["status"], order["leverage"]) == ("buy", "filled", 20)
    assert order["qty"] == approx(qty) and order["ts"] == iso_ms(t_entry)
    buy, liquidation = paper.of("fill")
    assert buy["price"] == approx(entry) and buy["fee"] == approx(fee_in)
    assert (liquidation["side"], liquidation["reason"]) == ("sell", "liquidation")
    assert liquidation["qty"] == approx(qty) and liquidation["price"] == approx(lp)
    assert liquidation["fee"] == approx(clearance) and liquidation["ts"] == iso_ms(t_crash)
    close = one(paper.of("close"))
    assert close["exit_reason"] == "liquidation" and close["exit_ts"] == t_crash
    assert close["exit_price"] == approx(lp) and close["fees"] == approx(fee_in + clearance)
    assert close["pnl"] == approx(pnl) and close["funding"] == 0
    assert close["roi"] == approx(pnl / margin)  # a little worse than -100 %
    (trade,) = stored(tmp_path, "paper_trades")
    check_trade(trade, close)
    assert trade["balance_after"] == approx(10_000 - margin - fee_in)
    (state,) = stored(tmp_path, "paper_state")
    assert state["position"] is None and state["balance"] == approx(10_000 - margin - fee_in)


# -------------------------------------------------------------------------- post-only entries

# The same lean with a 30-wide spread (6 bps): a 3-bps improvement of the bid rests below it.
B0_WIDE = ({50_000.0: 1.0, 49_990.0: 1.0}, {50_030.0: 1.0, 50_040.0: 1.0})
B2_WIDE = ({50_000.0: 6.0, 49_990.0: 12.0}, {50_030.0: 0.3, 50_040.0: 0.7})


async def test_post_only_entries_rejected_when_crossing_cancelled_unfilled_filled_as_maker(
    tmp_path,
):
    args = ("--modes", "0", "--entry", "post-only", "--entry-offset-bps", "3")
    async with session(tmp_path, *args) as (tape, paper):
        await tape.start(*B0)
        t_reject = await tape.show(*B2)  # spread 10 (2 bps) < the 3-bps improvement
        await tape.show(*B0_WIDE)
        t_rest = await tape.show(*B2_WIDE)  # rests; nothing trades through it
        tape.fake.clock_to(t_rest + 11_000)
        t_cancel = await tape.barrier_ts("public")  # 11 s later: past the 10-s timeout
        await paper.wait_for("cancel")
        await tape.show(*B0_WIDE)
        t_order = await tape.show(*B2_WIDE)
        await paper.wait_for("order", 3)
        t_fill = await tape.trade(50_000.0, 0.5, taker_buys=False)  # sold through 50,015
        await paper.wait_for("fill")
        t_exit = await tape.show(*B3)  # the rally: take profit with a market sell
        await paper.wait_for("close")
        await tape.end()
        assert await paper.finish() == 0, paper.stderr.decode()

    # Each LONG (as in the first test: confidence 0.4 x 17/19 + 0.2 + 0.1 x 5.7/6.3, margin 50 %)
    # is a post-only buy at the best bid improved by 3 bps: 50,000 x (1 + 3/10,000) = 50,015.
    price = 50_000 * (1 + 3 / 10_000)
    # sized as a market entry: balance x 0.5 x 5 / best ask, less two taker fees of the leverage
    q_narrow = 10_000 * 0.5 * 5 / 50_010 / (1 + 5 * TAKER * 2)
    q_wide = 10_000 * 0.5 * 5 / 50_030 / (1 + 5 * TAKER * 2)
    rejected, rested, placed = paper.of("order")
    # 1. on B2 the best ask is 50,010 <= 50,015: the order would cross: rejected, a block
    assert (rejected["status"], rejected["ts"]) == ("rejected", iso_ms(t_reject))
    assert rejected["price"] == approx(price) and rejected["qty"] == approx(q_narrow)
    block = one(paper.of("block"))
    assert block["reasons"] == ["post-only would cross"] and block["ts"] == iso_ms(t_reject)
    # 2. on B2_WIDE the best ask is 50,030 > 50,015: it rests, and 10 s later is cancelled
    assert (rested["status"], rested["ts"], rested["post_only"]) == ("new", iso_ms(t_rest), True)
    assert rested["price"] == approx(price) and rested["qty"] == approx(q_wide)
    cancel = one(paper.of("cancel"))
    assert cancel["ts"] == iso_ms(t_cancel) and cancel["qty"] == approx(q_wide)
    assert cancel["filled_qty"] == 0 and t_cancel - t_rest >= 10_000
    # 3. the next one fills in full when a taker sells at 50,000, through its price: as maker
    assert (placed["status"], placed["ts"]) == ("new", iso_ms(t_order))
    buy, sell = paper.of("fill")
    maker_fee = q_wide * price * MAKER  # 0.02 % of the notional
    assert (buy["liquidity"], buy["ts"]) == ("maker", iso_ms(t_fill))
    assert buy["qty"] == approx(q_wide) and buy["price"] == approx(price)
    assert buy["fee"] == approx(maker_fee)
    # 4. the exit is a market order: ROI at mid 51,305 is about 12.8 % >= 12 % (risk WARNING:
    #    spread 6 bps 1 point, depth 6.3 1 point) -> take profit, walking 0.4 at 51,300, the rest
    #    at 51,290, - 2 bps, taker fee
    exit_price = (0.4 * 51_300 + (q_wide - 0.4) * 51_290) / q_wide * (1 - SLIP)
    taker_fee = q_wide * exit_price * TAKER
    assert (sell["liquidity"], sell["reason"], sell["ts"]) == (
        "taker",
        "take_profit",
        iso_ms(t_exit),
    )
    assert sell["price"] == approx(exit_price) and sell["fee"] == approx(taker_fee)
    close = one(paper.of("close"))
    pnl = q_wide * (exit_price - price) - maker_fee - taker_fee
    assert close["entry_price"] == approx(price) and close["fees"] == approx(maker_fee + taker_fee)
    assert close["pnl"] == approx(pnl) and close["roi"] == approx(pnl / (q_wide * price / 5))
    assert close["risk_level"] == "WARNING" and close["signal"] == "LONG"
    (trade,) = stored(tmp_path, "paper_trades")
    check_trade(trade, close)
    # the dashboard's latest block reason (paper_state keeps the count)
    (state,) = stored(tmp_path, "paper_state")
    assert state["blocks"] == 1


# -------------------------------------------------------------------------- the cascade mode


async def test_the_cascade_mode_follows_the_forceorder_stream_then_takes_the_reversal(tmp_path):
    book = ({100.0: 200.0}, {100.1: 200.0})  # spread 10 bps (1 risk point), depth 400
    book_down = ({98.9: 200.0}, {99.0: 200.0})  # spread 10.1 bps > 10 (2 points)
    async with session(tmp_path, "--modes", "cascade") as (tape, paper):
        fake = tape.fake
        await tape.start(*book)
        await tape.barrier("public")
        await tape.trade(100.05, 0.01, taker_buys=True)  # the detector's price
        # $600k of longs liquidated (forceOrder SELL): BUILDING, the cascade starts
        fake.clock_to(T0 + 3_000)
        fake.force_order(SYM, "SELL", 100.0, 6_000.0)
        await fake.delivered()
        fake.clock_to(T0 + 4_000)
        fake.force_order(SYM, "SELL", 100.0, 6_000.0)  # $1.2M in 60 s: MINOR, early: follow
        await fake.delivered()
        t_follow = fake.now - 2  # forceOrder: ts = the order's T = E - 2
        await paper.wait_for("fill")
        fake.clock_to(T0 + 10_500)
        await tape.show(*book_down)  # ROI about +3 % at 3x: below the 8 % take-profit
        await tape.barrier("public")
        await tape.trade(98.9, 0.01, taker_buys=False)  # -1.15 % since the start: late
        fake.clock_to(fake.now + 1_000)
        t_reverse = await tape.barrier_ts("public")  # a new second: the detector is asked
        await paper.wait_for("fill", 3)
        await tape.end()
        assert await paper.finish() == 0, paper.stderr.decode()

    # the follow: confidence = 0.35 (MINOR) + (share 1.0 - 0.5) x 0.2 + 0.05 x 0 signature parts
    # (no price move yet) = 0.45 -> 30 % of the balance as margin, 3x, at the best bid 100.0
    short_qty = 10_000 * 0.3 * 3 / 100.0 / (1 + 3 * TAKER * 2)
    short_entry = 100.0 * (1 - SLIP)  # 200 at 100.0 covers it; - 2 bps
    # the reversal (late: the price fell more than 1 % since the start): close the short at the
    # best ask 99.0 + 2 bps, then buy: confidence 0.35 + 0.1 + 0.05 (fell > 0.5 % in 30 s) = 0.5
    cover = 99.0 * (1 + SLIP)
    fees = short_qty * short_entry * TAKER + short_qty * cover * TAKER
    pnl = short_qty * (short_entry - cover) - fees
    long_qty = (10_000 + pnl) * 0.3 * 3 / 99.0 / (1 + 3 * TAKER * 2)
    sell, buy = paper.of("order")
    assert (sell["side"], sell["signal"], sell["ts"]) == ("sell", "follow_short", iso_ms(t_follow))
    assert sell["qty"] == approx(short_qty) and sell["confidence"] == 0.45
    assert (buy["side"], buy["signal"], buy["ts"]) == (
        "buy",
        "prepare_long_reversal",
        iso_ms(t_reverse),
    )
    assert buy["qty"] == approx(long_qty) and buy["confidence"] == 0.5
    assert buy["risk"] == "WARNING"  # spread 10.1 bps > 10: 2 points
    entry_fill, cover_fill, long_fill = paper.of("fill")
    assert entry_fill["price"] == approx(short_entry)
    assert entry_fill["fee"] == approx(short_qty * short_entry * TAKER)
    assert cover_fill["price"] == approx(cover) and cover_fill["reason"] == "reversal"
    assert long_fill["price"] == approx(99.0 * (1 + SLIP)) and long_fill["qty"] == approx(long_qty)
    close = one(paper.of("close"))
    assert (close["exit_reason"], close["signal"], close["side"]) == (
        "reversal",
        "follow_short",
        "short",
    )
    assert close["pnl"] == approx(pnl) and close["fees"] == approx(fees)
    assert close["roi"] == approx(pnl / (short_qty * short_entry / 3))
    (trade,) = stored(tmp_path, "paper_trades")
    check_trade(trade, close)
    (state,) = stored(tmp_path, "paper_state")
    assert json.loads(state["position"])["qty"] == approx(long_qty)  # the reversal is open


# -------------------------------------------------------------------------- post-only, in process


def test_a_partly_filled_post_only_short_keeps_its_fill_and_its_inputs_after_the_timeout():
    from liqcli.analytics.orderflow import OrderFlow
    from liqcli.core.events import AggTrade, BookTop
    from liqcli.trading.engine import Engine
    from liqcli.trading.sim import SimBroker
    from liqcli.trading.strategies.seed import SeedMode, order_flow_observer

    def top(ts, bid, bq, ask, aq):
        return BookTop("binance", SYM, ts, bid, bq, ask, aq)

    records: list[dict] = []
    flow = OrderFlow(vpin_bucket_usd=1e12)  # VPIN unknown: no VPIN exit
    engine = Engine(emit=records.append)
    engine.observers.append(order_flow_observer(SYM, flow))
    mode = SeedMode(0, SYM, flow, entry="post-only")  # offset 0: join the touch
    broker = SimBroker(10_000.0)
    engine.add(mode, broker, name="0")
    engine.run(
        [
            top(1_000, 50_000.0, 5.0, 50_030.0, 5.0),
            # OBI -0.9, velocity -0.9, pressure -0.9: SHORT 0.36 + 0.2 + 0.09 = 0.65
            top(2_000, 50_000.0, 0.5, 50_030.0, 9.5),
        ]
    )
    (order,) = [r for r in records if r["type"] == "order"]
    qty = 10_000 * 0.5 * 5 / 50_000 / (1 + 5 * TAKER * 2)  # sized on the best bid, as a market
    assert (order["side"], order["status"], order["price"]) == ("sell", "new", 50_030.0)
    assert order["qty"] == approx(qty)
    # a taker buy of 9.6 at 50,030: the 9.5 displayed ahead of the order fill first, then 0.1
    engine.step(AggTrade("binance", SYM, 1, 3_000, 50_030.0, 9.6, False))
    assert broker.position(SYM).qty == approx(-0.1)
    engine.step(top(11_999, 50_000.0, 0.5, 50_030.0, 9.5))  # 9.999 s: still working
    assert not [r for r in records if r["type"] == "cancel"]
    engine.step(top(12_000, 50_000.0, 0.5, 50_030.0, 9.5))  # 10 s: the rest is cancelled
    (cancel,) = [r for r in records if r["type"] == "cancel"]
    assert cancel["qty"] == approx(qty - 0.1) and cancel["filled_qty"] == approx(0.1)
    assert broker.open_orders(SYM) == [] and broker.position(SYM).qty == approx(-0.1)
    # the short takes profit on a 3 % fall (risk SAFE: take profit at 8 %) with a market buy
    engine.step(top(13_000, 48_500.0, 5.0, 48_530.0, 5.0))
    (close,) = [r for r in records if r["type"] == "close"]
    cover = 48_530 * (1 + SLIP)
    fees = 0.1 * 50_030 * MAKER + 0.1 * cover * TAKER
    assert (close["exit_reason"], close["signal"]) == ("take_profit", "SHORT")
    assert close["qty"] == approx(0.1) and close["entry_price"] == approx(50_030.0)
    assert close["pnl"] == approx(0.1 * (50_030 - cover) - fees)


async def test_a_crossing_post_only_entry_is_the_dashboards_latest_block_reason():
    from rich.console import Console

    from liqcli.core.events import BookTop
    from liqcli.render.paper_view import render_paper
    from liqcli.services import paper as svc

    config = svc.PaperConfig(symbol=SYM, modes=("0",), entry="post-only", entry_offset_bps=5.0)
    session = svc.PaperSession(config)
    for event in (
        BookTop("binance", SYM, 1_000, 50_000.0, 5.0, 50_010.0, 5.0),
        BookTop("binance", SYM, 2_000, 50_000.0, 9.5, 50_010.0, 0.5),  # LONG; 5 bps > 2 bps
    ):
        session.step(event)
    assert session.brokers["0"].rejections == 1 and session.brokers["0"].position(SYM).is_flat
    console = Console(width=100, record=True, color_system=None, file=None)
    console.begin_capture()
    console.print(render_paper(session))
    assert "0 blocked: post-only would cross (1)" in console.end_capture()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--entry", "limit"], "invalid --entry 'limit'"),
        (["--entry-offset-bps", "2"], "--entry-offset-bps applies to --entry post-only"),
        (["--entry", "post-only", "--entry-offset-bps", "-1"], "between 0 and 1000"),
    ],
)
def test_bad_entry_options_exit_2_before_any_connection(args, message):
    from typer.testing import CliRunner

    from liqcli.cli.app import app

    result = CliRunner().invoke(app, ["paper", SYM, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


# -------------------------------------------------------------------------- stop-loss, time stop

# The fall, balanced (OBI 0): bids 5 + 5, asks 5 + 5 around 49,405.
B_DROP = ({49_400.0: 5.0, 49_390.0: 5.0}, {49_410.0: 5.0, 49_420.0: 5.0})


async def test_stop_loss_time_stop_and_funding_received_at_a_negative_rate(tmp_path):
    async with session(tmp_path, "--modes", "0,1", duration_s=3 * 3_600) as (tape, paper):
        await tape.start(*B0)
        t_entry = await tape.show(*B2)
        await tape.barrier("public")
        await tape.mark_price(50_005.0, rate=-0.0002)  # shorts pay longs at T
        tape.fake.clock_to(FUNDING_T)
        await tape.mark_price(50_005.0, rate=-0.0002, next_funding=FUNDING_T + 8 * 3_600_000)
        await tape.until(lambda rows: all(r["funding"] for r in rows))
        t_drop = await tape.show(*B_DROP)
        await paper.wait_for("close")
        tape.fake.clock_to(t_entry + 2 * 3_600_000 + 4)
        await tape.barrier_ts("public")  # 1 ms short of two hours in the position: holds
        tape.fake.clock_to(t_entry + 2 * 3_600_000 + 5)
        t_stop = await tape.barrier_ts("public")  # two hours: the time stop
        await paper.wait_for("close", 2)
        await tape.end()
        assert await paper.finish() == 0, paper.stderr.decode()

    # Both buy on B2 as modes 2 and 3 did in the first test: risk SAFE, stop-loss 5 % ROI.
    q0 = 10_000 * 0.5 * 5 / 50_010 / (1 + 5 * TAKER * 2)
    q1 = 10_000 * 0.5 * 3 / 50_010 / (1 + 3 * TAKER * 2)
    e0 = (0.3 * 50_010 + (q0 - 0.3) * 50_020) / q0 * (1 + SLIP)
    e1 = 50_010 * (1 + SLIP)  # q1 < 0.3
    # funding at T: qty x 50,005 x (-0.0002) < 0: received
    f0, f1 = q0 * 50_005 * -0.0002, q1 * 50_005 * -0.0002
    # the fall to mid 49,405: ROI = (qty (49,405 - entry) - fees - funding) / margin
    #   mode 0 (5x): about -6.4 % <= -5 %: stop-loss; mode 1 (3x): about -3.9 %: holds
    roi0 = (q0 * (49_405 - e0) - q0 * e0 * TAKER - f0) / (q0 * e0 / 5 - f0)
    roi1 = (q1 * (49_405 - e1) - q1 * e1 * TAKER - f1) / (q1 * e1 / 3 - f1)
    assert roi0 <= -0.05 < roi1
    x = 49_400 * (1 - SLIP)  # both sells fit in the best bid's 5
    expected = {
        "0": (5, q0, e0, f0, "stop_loss", t_drop),
        "1": (3, q1, e1, f1, "time_stop", t_stop),
    }
    trades = {r["mode"]: r for r in stored(tmp_path, "paper_trades")}
    for mode, (lev, qty, entry, funding, reason, t_out) in expected.items():
        close = one(paper.of("close", mode))
        fees = qty * entry * TAKER + qty * x * TAKER
        pnl = qty * (x - entry) - fees - funding  # the funding received adds to it
        assert (close["exit_reason"], close["exit_ts"]) == (reason, t_out)
        assert close["entry_ts"] == t_entry and close["exit_price"] == approx(x)
        assert close["funding"] == approx(funding) and close["fees"] == approx(fees)
        assert close["pnl"] == approx(pnl) and close["roi"] == approx(pnl / (qty * entry / lev))
        check_trade(trades[mode], close)
    assert t_stop - t_entry == 2 * 3_600_000


async def test_a_post_only_entry_working_when_the_session_ends_is_cancelled_with_a_record(tmp_path):
    """Ctrl-C, SIGTERM or --duration with an entry resting: it is not resumed after a restart,
    so the session's end cancels it (a cancel line), never leaving an order open in the log."""
    from liqcli.core.events import BookTop
    from liqcli.services import paper as svc
    from tests.test_paper import ListSource

    records: list[dict] = []
    config = svc.PaperConfig(symbol=SYM, modes=("0",), entry="post-only", session="s1")
    run = svc.open_paper(config, tmp_path, emit=records.append)
    tape = [
        BookTop("binance", SYM, 1_000, 50_000.0, 5.0, 50_030.0, 5.0),
        BookTop("binance", SYM, 2_000, 50_000.0, 0.5, 50_030.0, 9.5),  # SHORT: rests at the ask
    ]
    await svc.drive(run, ListSource(tape))
    (order,) = [r for r in records if r["type"] == "order"]
    assert order["status"] == "new"
    (cancel,) = [r for r in records if r["type"] == "cancel"]
    assert cancel["mode"] == "0" and cancel["qty"] == approx(order["qty"])
    assert cancel["reason"] == "session ended" and cancel["filled_qty"] == 0
    assert run.session.brokers["0"].open_orders(SYM) == []


def test_the_dashboard_shows_a_working_post_only_entry():
    """A resting entry is why a mode neither exits nor opens: the dashboard says so."""
    from rich.console import Console

    from liqcli.core.events import BookTop
    from liqcli.render.paper_view import render_paper
    from liqcli.services import paper as svc

    session = svc.PaperSession(svc.PaperConfig(symbol=SYM, modes=("0",), entry="post-only"))
    session.step(BookTop("binance", SYM, 1_000, 50_000.0, 5.0, 50_030.0, 5.0))
    session.step(BookTop("binance", SYM, 2_000, 50_000.0, 0.5, 50_030.0, 9.5))  # SHORT rests
    (order,) = session.brokers["0"].open_orders(SYM)
    console = Console(width=80, record=True, color_system=None, file=None)
    console.begin_capture()
    console.print(render_paper(session))
    text = console.end_capture()
    assert f"0 working: post-only sell {order.qty:.4g} @ 50030 (filled 0)" in text
