"""Engine.step's shortcuts (AggTrade's handler inlined, one plain slot unrolled) give what its
general loop gives: a lone seed mode decides and fills exactly as the same mode does beside a
second slot (which takes the general loop), and a replaced AggTrade handler is still called."""

from __future__ import annotations

import random

import pytest

from liqcli.analytics.orderflow import OrderFlow
from liqcli.core.events import AggTrade, BookTop
from liqcli.trading import engine as engine_mod
from liqcli.trading.engine import Engine, register_event
from liqcli.trading.sim import SimBroker
from liqcli.trading.strategies.seed import SeedMode, order_flow_observer
from liqcli.trading.strategy import BaseStrategy

SYM = "BTCUSDT"


def _tape(seed: int, n: int = 20_000):
    rng = random.Random(seed)
    ts, price, events = 1_700_000_000_000, 60_000.0, []
    for i in range(n):
        ts += rng.choice((0, 5, 40, 300))
        price = round(price * (1 + rng.gauss(0, 3e-4)), 1)
        if i % 4 == 0:
            bq, aq = rng.lognormvariate(1, 1.2), rng.lognormvariate(1, 1.2)
            events.append(BookTop("binance", SYM, ts, price - 0.1, bq, price, aq, i))
        else:
            qty = round(rng.expovariate(3), 3) + 0.001
            events.append(AggTrade("binance", SYM, i, ts, price, qty, rng.random() < 0.5))
    return events


class _Idle(BaseStrategy):
    pass


class _Logged(SimBroker):
    """Keeps every fill the engine drains."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple] = []

    def take_fills(self):
        fills = super().take_fills()
        self.log += [(f.ts, f.side, f.qty, f.price, f.fee, f.tag) for f in fills]
        return fills


def _run(events, *, companion: bool, entry: str):
    flow = OrderFlow(vpin_bucket_usd=20_000.0)
    engine = Engine()
    engine.observers.append(order_flow_observer(SYM, flow))
    mode, broker = SeedMode(0, SYM, flow, entry=entry), _Logged(10_000.0)
    engine.add(mode, broker)
    if companion:
        engine.add(_Idle(), SimBroker(10_000.0))
    assert (engine._solo is not None) != companion
    for event in events:
        engine.step(event)
    return broker.log, broker.account.balance, mode.closed


@pytest.fixture
def handlers_called():
    """AggTrade's and BookTop's default handlers behind wrappers: Engine.step calls them then
    instead of its inlined copies."""
    saved = {k: engine_mod._HANDLERS[k] for k in (AggTrade, BookTop)}
    for kind, handler in saved.items():
        register_event(kind, lambda e, m, s, h=handler: h(e, m, s))
    assert not engine_mod._DEFAULT_TRADES and not engine_mod._DEFAULT_TOPS
    yield
    for kind, handler in saved.items():
        register_event(kind, handler)
    assert engine_mod._DEFAULT_TRADES and engine_mod._DEFAULT_TOPS


@pytest.mark.parametrize("entry", ["market", "post-only"])
def test_one_slot_equals_the_general_loop_on_a_random_tape(entry):
    for seed in range(3):
        events = _tape(seed)
        solo = _run(events, companion=False, entry=entry)
        general = _run(events, companion=True, entry=entry)
        assert solo == general
        assert len(solo[2]) >= 2  # the mode traded: entries, exits and fills were compared


@pytest.fixture(scope="module")
def inlined():
    return {e: [_run(_tape(s), companion=False, entry=e) for s in range(2)] for e in ENTRIES}


ENTRIES = ("market", "post-only")


@pytest.mark.parametrize("entry", ENTRIES)
def test_inlined_handlers_equal_the_registered_ones(entry, inlined, handlers_called):
    for seed in range(2):
        assert _run(_tape(seed), companion=False, entry=entry) == inlined[entry][seed]


def test_a_replaced_trade_handler_is_called():
    seen = []
    default = engine_mod._HANDLERS[AggTrade]
    register_event(AggTrade, lambda e, market, slots: seen.append(e.trade_id))
    try:
        engine = Engine()
        broker = SimBroker(10_000.0)
        engine.add(_Idle(), broker)
        engine.step(AggTrade("binance", SYM, 7, 1_000, 100.0, 1.0, False))
        assert seen == [7] and broker.mark_price(SYM) is None  # not the default handler
    finally:
        register_event(AggTrade, default)
    engine.step(AggTrade("binance", SYM, 8, 2_000, 101.0, 1.0, False))
    assert seen == [7] and broker.mark_price(SYM) == 101.0
