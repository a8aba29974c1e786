"""``liq mm`` live on the fake Backpack: fills made while the private stream was down are fetched
from the fill history on reconnect and accounted once (fills, fees, realised PnL, ``mm_fills``),
the position built from them matches the venue's, and a failing history request fails closed."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from liqcli.errors import LiqError
from liqcli.exchanges.backpack.auth import BackpackSigner
from liqcli.exchanges.backpack.rest import OrderRequest, backpack_rest
from liqcli.store.parquet import Store
from tests import test_mm_live
from tests.test_mm_live import KEY, SECRET, SYM, Session, params, until
from tests.test_mm_live import fake as fake  # the fixture


def venue_fees(fake) -> float:
    return sum(float(Decimal(f["fee"])) for f in fake.fill_log)


async def short_then_cut_and_fill_the_bid(fake, s: Session) -> None:
    """A stream fill (short 0.1 at 100.05), then the private stream goes down and the bid
    (99.95) fills unseen: the short is closed at a 0.01 profit the client never heard of."""
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    await fake.trade("100.10", "5", buyer_maker=False)  # lifts our 100.05 ask
    await until(lambda: s.run.strategy.stats.fills == 1, what="stream fill")
    await until(lambda: len(fake.open_orders()) == 2, what="quotes after the fill")
    await fake.cut_private()
    await fake.trade("99.90", "5", buyer_maker=True)  # hits our 99.95 bid while down
    assert fake.position_qty == 0 and len(fake.fill_log) == 2
    assert s.run.broker.stats.resyncs == 0  # the fill did happen while the stream was down
    fake.restore_private()
    await until(lambda: s.run.broker.stats.resyncs == 1, what="resync")
    # the resync applies the missed fills, then reads the venue's position (a REST call):
    # -0.1 until that answer is in, 0 once it is (a wrong answer would halt the broker)
    await until(lambda: s.run.broker.venue_qty == 0, what="the venue's position after the resync")


async def test_a_fill_made_while_the_stream_was_down_is_accounted_once(fake, tmp_path):
    store = Store(tmp_path)
    s = Session(fake, params(), store=store)
    await short_then_cut_and_fill_the_bid(fake, s)
    broker = s.run.broker
    await until(lambda: s.run.strategy.stats.fills == 2, what="the missed fill")
    assert not broker.halted
    assert broker.pos.qty == 0 == float(fake.position_qty) and broker.venue_qty == 0
    assert broker.pos.realized_pnl == pytest.approx(0.1 * (100.05 - 99.95))
    assert broker.pos.fees == pytest.approx(venue_fees(fake))
    await s.stop()
    rows = {r["fill_id"]: r for r in store.read("mm_fills").iter_rows(named=True)}
    missed = fake.fill_log[1]
    assert sorted(rows) == sorted(str(f["tradeId"]) for f in fake.fill_log)
    row = rows[str(missed["tradeId"])]
    assert (row["side"], row["price"], row["qty"], row["order_id"]) == (
        "buy", 99.95, 0.1, missed["orderId"],
    )  # fmt: skip
    assert row["fee"] == float(Decimal(missed["fee"])) and row["fee_asset"] == "USDC"
    assert row["realized_pnl"] == pytest.approx(0.01) and row["tag"] == "quote"
    assert row["liquidity"] == "maker"
    assert fake.open_orders() == []


async def test_the_same_fill_redelivered_by_the_stream_is_not_applied_twice(fake):
    s = Session(fake, params())
    await short_then_cut_and_fill_the_bid(fake, s)
    broker = s.run.broker
    await until(lambda: s.run.strategy.stats.fills == 2, what="the missed fill")
    seen = broker.stream_status.messages
    await fake.redeliver_lost()  # the stream replays the orderFill and positionUpdate late
    await until(lambda: broker.stream_status.messages >= seen + 2, what="replayed frames")
    await asyncio.sleep(0.05)
    assert broker.stats.fills == 2 and s.run.strategy.stats.fills == 2
    assert broker.pos.qty == 0 == broker.venue_qty
    assert broker.pos.realized_pnl == pytest.approx(0.01)
    assert broker.pos.fees == pytest.approx(venue_fees(fake))
    assert not broker.halted
    await s.stop()


async def test_more_fills_than_a_page_are_all_applied_external_ones_tagged(fake, monkeypatch):
    monkeypatch.setattr(test_mm_live, "FAST", {**test_mm_live.FAST, "history_page": 3})
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    await fake.cut_private()
    # another client on the account buys 7 times while our stream is down
    async with backpack_rest(BackpackSigner(KEY, SECRET), fake.rest_url) as other:
        for _ in range(7):
            await other.execute_order(OrderRequest(SYM, "Bid", "0.01", price="100.01"))
    await fake.trade("99.90", "5", buyer_maker=True)  # and our 99.95 bid fills
    assert s.run.broker.stats.resyncs == 0 and len(fake.fill_log) == 8
    fake.restore_private()
    broker = s.run.broker
    await until(lambda: broker.stats.resyncs == 1, what="resync")
    await until(lambda: broker.stats.fills == 8, what="all eight missed fills")
    history = [r for m, p, r in fake.requests if p == "/wapi/v1/history/fills"]
    assert history == [200, 200, 200]  # 3 + 3 + 2
    assert not broker.halted
    assert broker.pos.qty == pytest.approx(0.17) == float(fake.position_qty)
    assert broker.pos.fees == pytest.approx(venue_fees(fake))
    tags = [row["tag"] for row in s.run.recent_fills] + [row["tag"] for row in s.run._fill_rows]
    assert "external" in tags
    await s.stop()
    assert fake.open_orders() == []


async def test_a_failing_fill_history_stops_quoting_and_cancels(fake):
    s = Session(fake, params())
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    fake.fail_history = (400, "INVALID_CLIENT_REQUEST", "history unavailable")
    await fake.cut_private()
    await fake.trade("99.90", "5", buyer_maker=True)
    fake.restore_private()
    with pytest.raises(LiqError, match=r"resync .* failed \(fill history\)") as err:
        await asyncio.wait_for(s.task, 10)
    assert "\n" not in str(err.value) and KEY not in str(err.value)
    assert fake.open_orders() == []
    assert s.run.broker.halted and s.run.strategy.stats.fills == 0
