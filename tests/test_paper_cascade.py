"""``cascade`` mode, the fifth competitor, on liquidations and trades worked out by hand."""

from __future__ import annotations

import pytest

from liqcli.analytics.orderflow import OrderFlow
from liqcli.core.events import AggTrade, BookTop, Liquidation
from liqcli.services import paper as svc
from liqcli.trading.engine import Engine
from liqcli.trading.sim import SimBroker
from liqcli.trading.strategies.cascade_mode import CascadeMode
from liqcli.trading.strategies.seed import order_flow_observer
from tests.test_paper import ListSource

SYM = "BTCUSDT"
TAKER, SLIP = 0.0005, 0.0002


def top(ts, bid, ask, qty=200.0):
    return BookTop("binance", SYM, ts, bid, qty, ask, qty)


def trade(ts, price, i):
    return AggTrade("binance", SYM, i, ts, price, 0.01, False)


def liq(ts, side, usd, price=100.0):
    return Liquidation("binance", SYM, side, price, usd / price, usd, ts)


# BTC thresholds: BUILDING $500k, MINOR $1M in 60 s. Spread 10 bps on 100 -> 1 risk point,
# depth 400, VPIN unknown: SAFE -> SL 5 %, TP 8 % on the leveraged ROI.
TAPE = [
    top(1_000, 100.0, 100.1),
    trade(1_100, 100.05, 1),  # the detector's price
    liq(2_000, "long", 600_000),  # $600k: BUILDING, the cascade starts at 2.0 s: hold
    liq(3_000, "long", 600_000),  # $1.2M: MINOR, early, all longs -> follow_short: SHORT
    top(10_000, 98.9, 99.0),
    trade(10_100, 98.9, 2),  # -1.15 % since the start (100.05): late
    top(11_000, 98.9, 99.0),  # the new second evaluates: prepare_long_reversal
]


def competitor(**kw):
    records: list[dict] = []
    flow = OrderFlow(vpin_bucket_usd=1e12)
    engine = Engine(emit=records.append)
    engine.observers.append(order_flow_observer(SYM, flow))
    mode = CascadeMode(SYM, flow, **kw)
    broker = SimBroker(10_000.0)
    engine.add(mode, broker, name="cascade")
    return engine, mode, broker, records


def test_follow_early_then_take_the_reversal_late():
    engine, mode, broker, records = competitor()
    engine.run(TAPE[:3])
    assert broker.position(SYM).is_flat  # BUILDING holds
    engine.step(TAPE[3])
    # confidence = 0.35 (MINOR) + (1.0 - 0.5) x 0.2 + 0.05 x 0 signature parts = 0.45 -> 30 %
    short_qty = 10_000 * 0.3 * 3 / 100.0 / (1 + 3 * TAKER * 2)
    pos = broker.position(SYM)
    assert pos.qty == pytest.approx(-short_qty) and pos.leverage == 3
    short_entry = 100.0 * (1 - SLIP)
    assert pos.entry_price == pytest.approx(short_entry)
    assert mode.entry.signal == "follow_short" and mode.entry.risk == "SAFE"
    assert (mode.entry.stop_loss, mode.entry.take_profit) == (0.05, 0.08)
    engine.run(TAPE[4:6])  # ROI (100.0 - 98.95) x 3 ~ +3 %: below TP; no evaluation yet
    assert broker.position(SYM).qty == pytest.approx(-short_qty)
    engine.step(TAPE[6])
    (close,) = [r for r in records if r["type"] == "close"]
    exit_price = 99.0 * (1 + SLIP)
    fees = short_qty * (short_entry + exit_price) * TAKER
    assert close["exit_reason"] == "reversal" and close["signal"] == "follow_short"
    assert close["pnl"] == pytest.approx(short_qty * (short_entry - exit_price) - fees)
    balance = 10_000 + close["pnl"]
    # the reversal: confidence 0.35 + 0.1 + 0.05 (price fell > 0.5 % in 30 s) = 0.5 -> 30 %
    long_qty = balance * 0.3 * 3 / 99.0 / (1 + 3 * TAKER * 2)
    pos = broker.position(SYM)
    assert pos.qty == pytest.approx(long_qty)
    assert pos.entry_price == pytest.approx(99.0 * (1 + SLIP))
    assert mode.entry.signal == "prepare_long_reversal"
    orders = [r for r in records if r["type"] == "order"]
    assert [(o["side"], o["signal"]) for o in orders] == [
        ("sell", "follow_short"),
        ("buy", "prepare_long_reversal"),
    ]
    # one reversal per cascade: more late seconds change nothing
    engine.step(top(12_000, 98.9, 99.0))
    assert broker.position(SYM).qty == pytest.approx(long_qty)


def test_mixed_liquidations_hold_and_leverage_is_configurable():
    engine, _mode, broker, _records = competitor(leverage=5)
    engine.run(
        [
            top(1_000, 100.0, 100.1),
            trade(1_100, 100.05, 1),
            liq(2_000, "long", 700_000),
            liq(2_500, "short", 600_000),  # $1.3M, longs 54 %: two-sided -> hold
            liq(3_000, "short", 100_000),  # 50/50
        ]
    )
    assert broker.position(SYM).is_flat
    engine2, _m, broker2, _r = competitor(leverage=5)
    engine2.run(TAPE[:4])
    assert broker2.position(SYM).leverage == 5


def test_a_follow_position_closes_when_its_cascade_ends():
    engine, _mode, broker, records = competitor()
    engine.run(TAPE[:4])
    assert not broker.position(SYM).is_flat
    # nothing more is liquidated: the window empties at 63 s, the cascade ends 60 s later
    for s in range(4, 130):
        engine.step(top(s * 1_000, 100.0, 100.1))
    assert broker.position(SYM).is_flat
    (close,) = [r for r in records if r["type"] == "close"]
    assert close["exit_reason"] == "cascade_end"


async def test_the_cascade_mode_competes_on_the_leaderboard_and_its_trades_are_stored(tmp_path):
    config = svc.PaperConfig(symbol=SYM, session="c1", vpin_bucket_usd=1e12)
    assert config.modes == ("0", "1", "2", "3", "cascade") and config.liquidations
    assert not svc.PaperConfig(symbol=SYM, modes=("0",)).liquidations
    run = svc.open_paper(config, tmp_path)
    await svc.drive(run, ListSource(TAPE))
    board = run.session.leaderboard()
    rows = {r["mode"]: r for r in board}
    assert set(rows) == {"0", "1", "2", "3", "cascade"}
    assert rows["cascade"]["trades"] == 1 and rows["cascade"]["position"]["side"] == "long"
    assert rows["cascade"]["leverage"] == 3
    assert board[0]["mode"] == "cascade"  # the only one that made money on this tape
    stored = run.store.read("paper_trades", session="c1")
    (row,) = stored.filter(stored["mode"] == "cascade").iter_rows(named=True)
    assert (row["trade_id"], row["exit_reason"], row["signal"]) == (0, "reversal", "follow_short")
    # the open reversal resumes from paper_state
    resumed = svc.open_paper(config, tmp_path)
    assert resumed.session.brokers["cascade"].position(SYM).qty > 0
    assert resumed.session.modes["cascade"].entry.signal == "prepare_long_reversal"
    assert resumed.session.trade_ids["cascade"] == 1


def test_the_dashboard_fits_80_by_24():
    from rich.cells import cell_len
    from rich.console import Console

    from liqcli.render.paper_view import render_paper
    from tests.test_paper import TAPE as SEED_TAPE

    session = svc.PaperSession(
        svc.PaperConfig(symbol=SYM, session="paper-20260101-000000", vpin_bucket_usd=1_000.0)
    )
    for event in SEED_TAPE[:3] + TAPE[2:]:  # mode 0 long on order flow, cascade long reversal
        session.step(event)
    console = Console(width=80, height=24, record=True, color_system=None, file=None)
    console.begin_capture()
    console.print(render_paper(session))
    text = console.end_capture()
    lines = text.splitlines()
    assert len(lines) <= 24 and all(cell_len(line) <= 80 for line in lines)
    assert "…" not in text  # nothing cut off
    board = {line.split()[1]: line for line in lines if line[:1] in ("🥇", "🥈", "🥉")}
    assert set(board) == {"cascade", "1", "2"}
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["mode"])
    assert lines[head + 1].split()[:4] == ["🥇", "cascade", "10,066.33", "10,072.71"]
    (rank5,) = [line for line in lines if line.split()[:1] == ["0"] and " L " not in line]
    assert rank5.split()[1:3] == ["9,514.88", "9,980.10"]  # equity, balance to the cent
    # open positions with entry and liquidation prices, the detector's call, block reasons
    pos = session.brokers["cascade"].position(SYM)
    assert f"cascade L {pos.qty:.4g} entry {pos.entry_price:.6g} liq" in text
    assert "      0 L " in text
    assert "cascade MINOR long liquidation late $1.20M/60s -> prepare_long_reversal" in text
    assert "      1 blocked: VPIN 1.00 > 0.7 (3)" in text
    assert "OBI " in text and "VPIN 1.00 CRITICAL" in text and "spread 10.1 bps" in text
    for header in ("equity", "balance", "real", "unreal", "fees", "fund", "trd", "win", "lev"):
        assert header in lines[head]


def test_other_venues_liquidations_do_not_count():
    engine, _mode, broker, _records = competitor()
    okx = [Liquidation("okx", SYM, "long", 100.0, 6_000.0, 600_000.0, ts) for ts in (2_000, 3_000)]
    engine.run([*TAPE[:2], *okx])
    assert broker.position(SYM).is_flat  # the same burst on Binance opens a short (above)
