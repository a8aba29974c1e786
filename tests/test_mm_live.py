"""``liq mm`` live on the fake Backpack: quotes, refreshes, the position table, SL/TP, post-only
re-quotes, --max-position under a burst of fills, and no order left on any exit path."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal

import pytest

from liqcli.errors import LiqError
from liqcli.exchanges.backpack.auth import BackpackSigner
from liqcli.services import mm as svc
from liqcli.trading.strategies.market_maker import MMParams
from tests.fakes.backpack import FakeBackpack, new_keypair

KEY, SECRET = new_keypair(bytes(range(1, 33)))
SYM = "SOL_USDC_PERP"
FAST = {"stream_grace_s": 1.0, "unknown_grace_s": 1.0, "mismatch_grace_s": 1.0}


def params(**kw) -> MMParams:
    base = dict(symbol=SYM, spread=0.1, quantity=0.1, max_position=1.0, interval_s=0.2,
                position_threshold=0.5, refresh_tolerance_bps=5.0)  # fmt: skip
    base.update(kw)
    return MMParams(**base)


async def until(check, timeout: float = 4.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Session:
    """One run_mm task against the fake, with its records."""

    def __init__(self, fake: FakeBackpack, p: MMParams, *, paper=False, **kw) -> None:
        self.fake = fake
        self.records: list[dict] = []
        self.runs: list[svc.MMRun] = []
        cfg = svc.MMConfig("backpack", p, paper=paper, session="t", **kw.pop("cfg", {}))
        signer = None if paper else BackpackSigner(KEY, SECRET)
        self.task = asyncio.create_task(
            svc.run_mm(
                cfg,
                signer=signer,
                emit=self.records.append,
                on_start=self.runs.append,
                broker_options=None if paper else FAST,
                **kw,
            )
        )
        SESSIONS.append(self)

    @property
    def run(self) -> svc.MMRun:
        return self.runs[0]

    async def book(self, bid="99.99", ask="100.01", qty="10") -> None:
        await until(lambda: self.runs or self.task.done(), what="start")
        if self.task.done():
            self.task.result()
        await self.fake.wait_subscribed(f"bookTicker.{SYM}")
        self.fake.set_book([(bid, qty)], [(ask, qty)])
        await self.fake.push_book_ticker(bid, qty, ask, qty)

    def resting(self):
        return sorted((o.side, o.price, o.quantity, o.reduce_only) for o in self.fake.open_orders())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


SESSIONS: list[Session] = []


@pytest.fixture
async def fake(monkeypatch):
    async with FakeBackpack(api_keys={KEY}) as f:
        monkeypatch.setenv("LIQ_BACKPACK_REST_URL", f.rest_url)
        monkeypatch.setenv("LIQ_BACKPACK_WS_URL", f.ws_url)
        yield f
        while SESSIONS:  # a failed test's session must not outlive its fake
            s = SESSIONS.pop()
            s.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(s.task, 15)


async def test_quotes_at_the_right_prices_and_sizes_then_none_left_on_cancel(fake):
    s = Session(fake, params(quantity=0.123, max_orders=2))
    await s.book()
    await until(lambda: len(fake.open_orders()) == 4, what="four quotes")
    # mid 100, half-spread 0.05%: levels at 99.95/100.05 and 99.90/100.10; size to the step
    assert s.resting() == [
        ("Ask", Decimal("100.05"), Decimal("0.12"), False),
        ("Ask", Decimal("100.10"), Decimal("0.12"), False),
        ("Bid", Decimal("99.90"), Decimal("0.12"), False),
        ("Bid", Decimal("99.95"), Decimal("0.12"), False),
    ]
    assert all(o.post_only for o in fake.open_orders())
    await s.stop()
    assert fake.open_orders() == []
    assert not fake.rejected  # every signature verified
    kinds = {r["type"] for r in s.records}
    assert {"quote", "order", "stop"} <= kinds
    assert all(r["exchange"] == "backpack" and r["symbol"] == SYM for r in s.records)


async def test_below_min_size_nothing_is_quoted(fake):
    s = Session(fake, params(quantity=0.005))
    await s.book()
    await asyncio.sleep(0.6)
    assert fake.open_orders() == []
    await s.stop()


async def test_orders_move_only_past_the_refresh_tolerance(fake):
    s = Session(fake, params(refresh_tolerance_bps=5.0))
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    posts = lambda: sum(1 for m, p, _ in fake.requests if m == "POST")  # noqa: E731
    before = posts()
    # 2 bps move: inside the 5 bps tolerance, nothing re-placed
    await fake.push_book_ticker("100.01", "10", "100.03", "10")
    await asyncio.sleep(0.6)
    assert posts() == before
    assert s.resting()[1][1] == Decimal("99.95")
    # 20 bps: both sides re-placed around the new mid
    fake.set_book([("100.19", "10")], [("100.21", "10")])
    await fake.push_book_ticker("100.19", "10", "100.21", "10")
    await until(
        lambda: [r[1] for r in s.resting()] == [Decimal("100.26"), Decimal("100.14")],
        what="re-placed quotes",
    )
    assert len(fake.open_orders()) == 2
    await s.stop()
    assert fake.open_orders() == []


async def test_post_only_rejection_is_requoted_one_tick_away(fake):
    s = Session(fake, params())
    await s.book()
    # The matching engine's ask is lower than the stream says: our 99.95 bid would cross.
    fake.set_book([("99.90", "10")], [("99.95", "10")])
    await until(lambda: any(o.side == "Bid" for o in fake.open_orders()), what="bid")
    bids = [o for o in fake.open_orders() if o.side == "Bid"]
    assert [b.price for b in bids] == [Decimal("99.94")]
    assert s.run.strategy.stats.post_only_rejects == 1
    assert any(r["type"] == "order" and r["status"] == "rejected" for r in s.records)
    await s.stop()
    assert fake.open_orders() == []


async def _with_position(fake, qty: str, entry: str) -> None:
    fake.position_qty = Decimal(qty)
    fake.entry_price = Decimal(entry)


async def test_position_inside_threshold_no_reduce_order(fake):
    await _with_position(fake, "0.4", "100")
    s = Session(fake, params(position_threshold=0.5))
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    await asyncio.sleep(0.4)
    assert not any(o.reduce_only for o in fake.orders.values())
    await s.stop()


async def test_position_above_threshold_reduce_only_post_only_for_the_excess(fake):
    await _with_position(fake, "0.8", "100")
    s = Session(fake, params(position_threshold=0.5))
    await s.book()
    reduce = await until(
        lambda: [o for o in fake.open_orders() if o.reduce_only], what="reduce order"
    )
    (o,) = reduce
    assert (o.side, o.order_type, o.price, o.quantity, o.post_only) == (
        "Ask", "Limit", Decimal("100.01"), Decimal("0.3"), True,
    )  # fmt: skip
    await s.stop()
    assert fake.open_orders() == []


async def test_position_above_max_reduce_only_market_close_of_the_excess(fake):
    await _with_position(fake, "-1.3", "100")
    s = Session(fake, params(max_position=1.0))
    await s.book()
    market = await until(
        lambda: [o for o in fake.orders.values() if o.order_type == "Market"], what="close"
    )
    assert [(o.side, o.quantity, o.reduce_only) for o in market] == [("Bid", Decimal("0.3"), True)]
    await until(lambda: fake.position_qty == Decimal("-1.0"), what="reduced")
    await s.stop()
    assert fake.open_orders() == []


@pytest.mark.parametrize(("mid_bid", "mid_ask", "kw"), [
    ("94.99", "95.01", {"stop_loss": -3.0}),
    ("104.99", "105.01", {"take_profit": 3.0}),
])  # fmt: skip
async def test_stop_loss_and_take_profit_close_at_market(fake, mid_bid, mid_ask, kw):
    await _with_position(fake, "1.0", "100")
    s = Session(fake, params(max_position=2.0, position_threshold=2.0, **kw))
    await s.book(mid_bid, mid_ask)
    await until(lambda: fake.position_qty == 0, what="position closed")
    closes = [o for o in fake.orders.values() if o.order_type == "Market"]
    assert [(o.side, o.quantity, o.reduce_only) for o in closes] == [("Ask", Decimal("1"), True)]
    assert s.run.strategy.stats.stops == 1
    await s.stop()
    assert fake.open_orders() == []


async def test_max_position_holds_under_a_burst_of_fills(fake):
    s = Session(fake, params(max_orders=3, quantity=0.1, max_position=0.3, interval_s=0.05,
                             refresh_tolerance_bps=0.5, position_threshold=1.0))  # fmt: skip
    await s.book()
    await until(lambda: len(fake.open_orders()) == 6, what="quotes")
    for i in range(6):
        # the book moves (every order re-placed) and a sweep prints through all our bids
        bid = Decimal("99.99") - Decimal("0.02") * (i + 1)
        fake.set_book([(str(bid), "10")], [(str(bid + Decimal("0.02")), "10")])
        await fake.push_book_ticker(str(bid), "10", str(bid + Decimal("0.02")), "10")
        await asyncio.sleep(0.03)
        await fake.trade("90", "5")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    assert fake.position_qty == Decimal("0.3")
    assert fake.max_long_exposure <= Decimal("0.3")
    assert s.run.broker.pos.qty == pytest.approx(0.3)
    await s.stop()
    assert fake.open_orders() == []


async def test_max_position_holds_when_fill_events_lag_behind_cancels(fake):
    """Our bids fill, but the fill events arrive late; the book moves and the strategy re-places
    its bids: the venue answers the cancels "not found", so the broker holds the new bids back
    until it knows where the position stands."""
    s = Session(fake, params(max_orders=3, quantity=0.1, max_position=0.3, interval_s=0.05,
                             refresh_tolerance_bps=0.5, position_threshold=1.0))  # fmt: skip
    await s.book()
    await until(lambda: len(fake.open_orders()) == 6, what="quotes")
    fake.private_delay_s = 0.4
    await fake.trade("90", "5")  # all three bids fill at the venue
    assert fake.position_qty == Decimal("0.3")
    fake.set_book([("99.79", "10")], [("99.81", "10")])
    await fake.push_book_ticker("99.79", "10", "99.81", "10")
    await asyncio.sleep(1.0)
    assert fake.max_long_exposure <= Decimal("0.3")
    assert s.run.broker.stats.parked > 0
    assert s.run.broker.pos.qty == pytest.approx(0.3)
    fake.private_delay_s = 0.0
    await s.stop()
    assert fake.open_orders() == []


async def test_end_of_duration_cancels_everything(fake):
    s = Session(fake, params(), duration_s=1.0)
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    summary = await s.task
    assert fake.open_orders() == [] and summary["session"] == "t"


async def test_an_exception_cancels_everything(fake):
    ticks = []

    def boom(run):
        ticks.append(1)
        if len(fake.open_orders()) == 2:
            raise RuntimeError("injected")

    s = Session(fake, params(), on_tick=boom)
    await s.book()
    with pytest.raises(RuntimeError, match="injected"):
        await s.task
    assert fake.open_orders() == []
    assert any(o.status == "Cancelled" for o in fake.orders.values())


async def test_stale_orders_from_a_crashed_run_are_cancelled_at_start(fake):
    from liqcli.exchanges.backpack.rest import OrderRequest, backpack_rest

    async with backpack_rest(BackpackSigner(KEY, SECRET), fake.rest_url) as rest:
        old = await rest.execute_order(OrderRequest(SYM, "Bid", "1", price="90", post_only=True))
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    assert fake.orders[old["id"]].status == "Cancelled"
    await s.stop()


async def test_lost_connection_that_does_not_come_back_stops_and_cancels(fake):
    s = Session(fake, params(), cfg={"market_grace_s": 0.5})
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    fake._ws.close()  # the WebSocket server goes away; REST stays up
    for ws in list(fake._subscribers):
        ws.transport.abort()
    with pytest.raises(LiqError, match="down for more than"):
        await asyncio.wait_for(s.task, 10)
    assert fake.open_orders() == []


async def test_private_stream_reconnect_cancels_and_resyncs(fake):
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    await fake.kick_private()
    await until(lambda: s.run.broker.stats.resyncs == 1, what="resync")
    # quoting resumes on a fresh subscription
    await until(lambda: len(fake.open_orders()) == 2, what="quotes again")
    await s.stop()
    assert fake.open_orders() == []


async def test_unknown_order_outcome_fails_closed(fake):
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    fake.hang.add(("POST", "/api/v1/order"))
    fake.hang.add(("POST", "/api/v1/orders"))
    fake.set_book([("100.49", "10")], [("100.51", "10")])
    await fake.push_book_ticker("100.49", "10", "100.51", "10")
    with pytest.raises(LiqError, match=r"unknown|timed out"):
        await asyncio.wait_for(s.task, 15)
    assert fake.open_orders() == []


async def test_private_stream_refused_after_a_reconnect_stops_and_cancels(fake):
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    fake.refuse_private = True
    await fake.kick_private()
    with pytest.raises(LiqError, match="private stream"):
        await asyncio.wait_for(s.task, 10)
    assert fake.open_orders() == []


async def test_a_position_mismatch_stops_and_cancels(fake):
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    fake.position_qty = Decimal("0.5")  # a fill the client never heard of
    await fake.push_position()
    with pytest.raises(LiqError, match=r"position mismatch: venue 0\.5, fills 0"):
        await asyncio.wait_for(s.task, 10)
    assert fake.open_orders() == []


async def test_a_venue_clock_30s_ahead_does_not_expire_requests(fake):
    fake.clock_skew_ms = 30_000
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    assert not any(status == 401 for _, _, status in fake.requests)
    await s.stop()
    assert fake.open_orders() == []
