"""The seed's four modes on a scripted book and tape whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest

from liqcli.analytics.orderflow import OrderFlow
from liqcli.core.events import AggTrade, BookTop
from liqcli.trading.engine import Engine
from liqcli.trading.signal import rules_leverage, side_score, signal
from liqcli.trading.sim import SimBroker
from liqcli.trading.strategies.seed import SeedMode, order_flow_observer

SYM = "BTCUSDT"


def top(ts, bid, bq, ask, aq):
    return BookTop("binance", SYM, ts, bid, bq, ask, aq)


def buy(ts, qty, price=100.05, i=0):
    return AggTrade("binance", SYM, i, ts, price, qty, False)  # taker bought


def competition(vpin_bucket_usd=1_000.0):
    flow = OrderFlow(vpin_bucket_usd=vpin_bucket_usd)
    engine = Engine(emit=records.append)
    engine.observers.append(order_flow_observer(SYM, flow))
    modes = [SeedMode(m, SYM, flow) for m in range(4)]
    brokers = [SimBroker(10_000.0) for _ in modes]
    for mode, broker in zip(modes, brokers, strict=True):
        engine.add(mode, broker, name=str(mode.mode))
    return engine, modes, brokers


records: list[dict] = []


def test_signal_parts_exactly():
    # OBI 0.8 -> 0.32; velocity 0.8 -> 0.2; SV 200 -> 0.3 tanh 2; pressure 0.8 -> 0.08
    assert side_score(0.8, 0.8, 200, 0.8) == pytest.approx(0.32 + 0.2 + 0.3 * math.tanh(2) + 0.08)
    # 0.1 < OBI <= 0.3: 0.4 * 0.5 * OBI/0.3; velocity <= 0.05 counts nothing
    assert side_score(0.2, 0.05, 0, 0) == pytest.approx(0.4 * 0.5 * 0.2 / 0.3)
    assert side_score(0.1, 0.06, -5, -1) == pytest.approx(0.2 * 0.6)


def test_rules_leverage_exactly():
    # 5 x 1.5 (conf > 0.8) x 1.2 (SAFE) x (1 - (0.5 - 0.3)) x 0.8 (ATR > 2 %) = 5.76
    adv = rules_leverage(0.85, "SAFE", 0.5, 0.03)
    assert adv.leverage == pytest.approx(5.76)
    assert rules_leverage(0.5, "CRITICAL", 0.9, 0.0).leverage == 1.0  # clamped at 1
    assert rules_leverage(0.9, "SAFE", 0.1, 0.0).leverage == pytest.approx(9.0)


def test_toxic_flow_only_mode_0_trades_then_takes_profit():
    records.clear()
    engine, modes, brokers = competition()
    engine.run(
        [
            top(1_000, 100.0, 5.0, 100.1, 5.0),  # OBI 0 (first reading)
            buy(1_100, 200.0),  # +200 BTC of taker buys: SV 200; every $1k bucket all buys: VPIN 1
            top(1_200, 100.0, 9.0, 100.1, 1.0),  # OBI 0.8, velocity 0.8, microprice 100.09
        ]
    )
    # long score = 0.32 + 0.2 + 0.3 tanh(2) + 0.1 * 0.8 = 0.8892 -> LONG, confidence 0.8892
    sig = signal(modes[0].flow.snapshot)
    assert sig.direction == "LONG" and sig.confidence == pytest.approx(0.8892, abs=1e-4)
    # mode 0 (no filter, 5x): margin = 10,000 x 0.8 (conf > 0.8); qty sized so margin + fees fit
    pos0 = brokers[0].position(SYM)
    fill_price = 100.1 * 1.0002  # one known ask level, past it the same level, + 2 bps
    qty = 10_000 * 0.8 * 5 / 100.1 / (1 + 5 * 0.0005 * 2)
    assert pos0.qty == pytest.approx(qty) and pos0.leverage == 5
    assert pos0.entry_price == pytest.approx(fill_price)
    # VPIN 1.0 blocks modes 1 (VPIN > 0.7), 2 (adaptive) and 3 (both); each records why, once
    for m in (1, 2, 3):
        assert brokers[m].position(SYM).is_flat
    blocks = [r for r in records if r["type"] == "block"]
    assert sorted(b["mode"] for b in blocks) == ["1", "2", "3"]
    assert any("adaptive" in r for r in blocks[1]["reasons"])
    assert not any(r["type"] == "block" and r["mode"] == "0" for r in records)
    # risk: VPIN 1.0 -> 3 points, spread 9.995 bps -> 1, depth 10 -> 0: DANGER -> SL 10 %, TP 15 %
    assert modes[0].entry.risk == "DANGER" and modes[0].entry.take_profit == 0.15
    # +3.4 %: ROI = (103.55 - 100.12) x qty - fee) / margin = 16.9 % >= 15 %: take profit at the bid
    engine.step(top(2_000, 103.5, 5.0, 103.6, 5.0))
    assert pos0.is_flat
    (close,) = [r for r in records if r["type"] == "close"]
    exit_price = 103.5 * (1 - 0.0002)
    fees = qty * fill_price * 0.0005 + qty * exit_price * 0.0005
    assert close["exit_reason"] == "take_profit"
    assert close["pnl"] == pytest.approx(qty * (exit_price - fill_price) - fees)
    assert close["leverage"] == 5 and close["risk_level"] == "DANGER"
    assert close["roi"] == pytest.approx(close["pnl"] / (qty * fill_price / 5))
    assert brokers[0].account.balance == pytest.approx(10_000 + close["pnl"])


def test_thin_book_blocks_the_liquidity_modes_and_mode_1_trades_at_3x():
    records.clear()
    engine, _modes, brokers = competition(vpin_bucket_usd=1e12)  # no full bucket: VPIN unknown
    engine.run(
        [
            top(1_000, 100.0, 1.0, 100.1, 1.0),
            buy(1_100, 200.0),
            top(1_200, 100.0, 1.8, 100.1, 0.2),  # OBI 0.8, depth 2.0 < 3
        ]
    )
    assert brokers[1].position(SYM).leverage == 3 and not brokers[1].position(SYM).is_flat
    assert brokers[0].position(SYM).leverage == 5
    for m in (2, 3):
        assert brokers[m].position(SYM).is_flat
    reasons = {r["mode"]: r["reasons"] for r in records if r["type"] == "block"}
    assert reasons == {"2": ["depth 2.00 < 3"], "3": ["depth 2.00 < 3"]}


def test_time_stop_after_two_hours():
    records.clear()
    engine, _modes, brokers = competition(vpin_bucket_usd=1e12)
    engine.run([top(0, 100.0, 5.0, 100.1, 5.0), buy(10, 200.0), top(20, 100.0, 9.0, 100.1, 1.0)])
    assert not brokers[0].position(SYM).is_flat
    # a quiet book (OBI 0, no signal against) two hours later
    engine.step(top(20 + 2 * 3_600_000 - 1, 100.0, 5.0, 100.1, 5.0))
    assert not brokers[0].position(SYM).is_flat
    engine.step(top(20 + 2 * 3_600_000, 100.0, 5.0, 100.1, 5.0))
    assert brokers[0].position(SYM).is_flat
    assert [r["exit_reason"] for r in records if r["type"] == "close" and r["mode"] == "0"] == [
        "time_stop"
    ]


def test_kelly_and_vol_target_advisers():
    from liqcli.analytics.orderflow import FeatureSnapshot
    from liqcli.trading.signal import KellyAdviser, VolTargetAdviser, optimal_leverage

    f = FeatureSnapshot(vpin=0.2, atr_ratio=0.001)
    kelly = KellyAdviser(min_trades=4)
    assert "rules" in kelly.advise(f, 0.9, "SAFE").reason
    for pnl in (2.0, -1.0, 2.0, -1.0):  # returns +2 %, -1 % on a notional of 100
        kelly.record(pnl, 100.0)
    # mean 0.005, sample variance ((0.015^2) * 4 / 3) = 0.0003 -> 0.5 x 0.005 / 0.0003 = 8.33
    assert kelly.advise(f, 0.9, "SAFE").leverage == pytest.approx(0.5 * 0.005 / 0.0003)
    vol = VolTargetAdviser(target=0.5)
    sigma = 0.001 / 1.596 * math.sqrt(525_600)
    assert vol.advise(f, 0.9, "SAFE").leverage == pytest.approx(max(1.0, 0.5 / sigma))
    # risk-adjusted optimum: a winner that went 1 % against itself, 5 % stop -> 5x
    assert optimal_leverage(10.0, 0.01, 0.05) == pytest.approx(5.0)
    assert optimal_leverage(-1.0, 0.01, 0.05) == 1.0
    assert optimal_leverage(1.0, 0.0, 0.05) == 20.0


def test_a_working_post_only_entry_is_cancelled_when_the_session_stops():
    import asyncio

    from liqcli.services.paper import PaperConfig, PaperRun, PaperSession, drive

    class Source:  # one batch: a book, then the SHORT reading the entry rests on
        async def batches(self):
            yield [
                top(1_000, 50_000.0, 5.0, 50_030.0, 5.0),
                top(2_000, 50_000.0, 0.5, 50_030.0, 9.5),
            ]

    class NoStore:
        def write(self, *a, **kw):
            pass

    records: list[dict] = []
    config = PaperConfig(symbol=SYM, modes=["0"], entry="post-only", vpin_bucket_usd=1e12)
    session = PaperSession(config, emit=records.append)
    run = PaperRun(session, NoStore())
    run.save = lambda **kw: None  # storage is not what this test is about
    asyncio.run(drive(run, Source()))
    (order,) = [r for r in records if r["type"] == "order"]
    assert (order["status"], order["post_only"]) == ("new", True)
    broker = session.brokers["0"]
    assert broker.open_orders(SYM) == []  # nothing left working once the session ended
    (cancel,) = [r for r in records if r["type"] == "cancel"]
    assert cancel["reason"] == "session ended" and cancel["filled_qty"] == 0
    assert session.modes["0"].working is None and session.modes["0"].entry is None


def test_the_sessions_last_save_runs_even_if_a_strategys_on_stop_raises():
    import asyncio

    from liqcli.services.paper import PaperConfig, PaperRun, PaperSession, drive

    class Source:
        async def batches(self):
            yield [top(1_000, 50_000.0, 5.0, 50_030.0, 5.0)]

    session = PaperSession(PaperConfig(symbol=SYM, modes=["0"]))
    stopped: list[bool] = []
    saves: list[bool] = []  # per save: whether on_stop had run by then
    run = PaperRun(session, None)
    run.save = lambda **kw: saves.append(bool(stopped))

    def boom(ctx):
        stopped.append(True)
        raise RuntimeError("on_stop failed")

    session.modes["0"].on_stop = boom
    with pytest.raises(RuntimeError):
        asyncio.run(drive(run, Source()))
    assert stopped and saves[-1]  # stored after on_stop, anyway
