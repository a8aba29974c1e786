"""The order-flow hot path's shortcuts change nothing: each equals the straightforward computation
it replaces, bit for bit, and a whole paper competition on a random tape closes exactly the same
trades with them as without them."""

from __future__ import annotations

import math
import random

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from liqcli.analytics.orderflow import AtrRatio, FeatureSnapshot, Vpin
from liqcli.core.events import AggTrade, BookSnapshot, BookTop, Liquidation, MarkPrice
from liqcli.services import backtest_flow
from liqcli.services.paper import PaperConfig, PaperSession
from liqcli.trading import signal as sig
from liqcli.trading.sim import SimBroker
from liqcli.trading.strategies import seed

SYM = "BTCUSDT"


def seed_side_score(obi, velocity, signed_volume, pressure):
    """The score as first written: one running sum, part by part."""
    score = 0.0
    if obi > 0.3:
        score += 0.4 * min(obi, 1.0)
    elif obi > 0.1:
        score += 0.4 * 0.5 * (obi / 0.3)
    if velocity > 0.05:
        score += 0.2 * min(velocity / 0.1, 1.0)
    if signed_volume > 0:
        score += 0.3 * math.tanh(signed_volume / 100)
    if pressure > 0:
        score += 0.1 * min(pressure, 1.0)
    return score


class Uncached:
    """The straightforward path: ``signal(f)`` on every question, the reverse rule as first
    written in SeedMode._exit_reason."""

    def signal(self, f):
        return sig.signal(f)

    def scores(self, f):
        s = sig.signal(f)
        return s.long_score, s.short_score

    def reverses(self, f, is_long):
        s = sig.signal(f)
        against = s.short_score if is_long else s.long_score
        return against > sig.STRONG_REVERSE_SCORE and s.direction != (
            "LONG" if is_long else "SHORT"
        )


edgy = st.one_of(
    st.floats(-1.5, 1.5, allow_nan=False),
    st.sampled_from([0.0, -0.0, 0.05, 0.1, 0.3, 1.0, -0.05, -0.1, -0.3, -1.0, 0.3000000000000001]),
)
volumes = st.one_of(st.floats(-500, 500, allow_nan=False), st.sampled_from([0.0, -0.0, 1e-300]))


@given(edgy, edgy, volumes, edgy)
def test_side_score_is_the_running_sum_bit_for_bit(obi, velocity, volume, pressure):
    assert sig.side_score(obi, velocity, volume, pressure) == seed_side_score(
        obi, velocity, volume, pressure
    )


@given(st.lists(st.tuples(st.booleans(), edgy, edgy, edgy, volumes), min_size=1, max_size=80))
def test_signal_cache_equals_signal_on_a_stream(steps):
    """A stream of states where the book parts repeat (trades between book readings): every
    answer of the cache equals the one computed from scratch."""
    cache, ref = sig.SignalCache(), Uncached()
    f = FeatureSnapshot(obi=0.0)
    for new_book, obi, velocity, pressure, volume in steps:
        if new_book:
            f.obi, f.obi_velocity, f.micro_pressure = obi, velocity, pressure
        f.signed_volume = volume
        assert cache.signal(f) == ref.signal(f)
        assert cache.scores(f) == ref.scores(f)
        assert cache.reverses(f, True) == ref.reverses(f, True)
        assert cache.reverses(f, False) == ref.reverses(f, False)


def test_reverse_shortcut_only_skips_books_that_cannot_reverse():
    cache = sig.SignalCache()
    # Strong bid-side book: a short position can be reversed once buyers take enough volume.
    f = FeatureSnapshot(obi=0.9, obi_velocity=0.2, micro_pressure=0.9, signed_volume=0.0)
    assert not cache.reverses(f, False)
    f.signed_volume = 500.0
    assert cache.reverses(f, False)
    assert not cache.reverses(f, True)  # the long side is its own direction
    # A flat book: no volume can make either side score above 0.7.
    f.obi, f.obi_velocity, f.micro_pressure, f.signed_volume = 0.0, 0.0, 0.0, -1e9
    assert not cache.reverses(f, True) and not cache.reverses(f, False)


@given(
    st.lists(
        st.tuples(st.floats(1, 1e5), st.floats(1e-4, 50), st.booleans()), min_size=1, max_size=300
    ),
    st.floats(1e3, 1e6),
    st.integers(1, 60),
)
def test_vpin_value_is_the_window_mean_after_every_trade(tape, bucket, window):
    vpin = Vpin(bucket, window)
    for price, qty, bought in tape:
        value = vpin.add(price, qty, bought)
        n = len(vpin._imbalances)
        assert value == (vpin._sum / n if n else None) == vpin.value


@given(st.lists(st.tuples(st.integers(0, 3_600_000), st.floats(1, 1e4)), min_size=1, max_size=300))
def test_atr_value_is_the_window_mean_over_the_last_price_after_every_trade(ticks):
    atr = AtrRatio(bar_ms=60_000, window=14)
    for ts, price in sorted(ticks):
        value = atr.add(ts, price)
        n = len(atr._ranges)
        assert value == (atr._sum / n / price if n else None) == atr.value


def test_tape_rows_from_columns_equal_iter_rows():
    frame = pl.DataFrame(
        {
            "ts": list(range(23)),
            "kind": [i % 4 for i in range(23)],
            "a": [float(i) / 3 for i in range(23)],
            "d": [None if i % 3 else 1.5 for i in range(23)],
        }
    )
    assert list(backtest_flow._rows(frame, chunk=5)) == list(frame.iter_rows())
    assert list(backtest_flow._rows(frame.clear())) == []


def random_tape(count: int, rng: random.Random) -> list:
    """A live-like tape: tops, trades, 20-level snapshots and marks every 100 ms, regimes of a
    few seconds leaning one way (so the modes open and close), liquidation bursts."""
    events: list = []
    ts, price, trade_id, lean = 1_735_689_600_000, 87_000.0, 0, 0.0
    next_snap = next_liq = 0
    while len(events) < count:
        ts += rng.randint(1, 40)
        if rng.random() < 0.01:
            lean = rng.choice((-0.9, -0.5, 0.0, 0.5, 0.9))
        price = max(1_000.0, price * (1 + rng.gauss(lean * 2e-5, 2e-4)))
        bid = round(price - 0.05, 1)
        ask = round(bid + rng.choice((0.1, 0.1, 0.2, 50.0)), 1)
        heavy, light = rng.uniform(5, 40), rng.uniform(0.2, 5)
        bq, aq = (heavy, light) if lean > 0 else (light, heavy) if lean < 0 else (heavy, heavy)
        if rng.random() < 0.55:
            events.append(BookTop("binance", SYM, ts, bid, bq, ask, aq))
        else:
            trade_id += 1
            buyer = rng.random() < 0.5 + lean / 3
            qty = rng.expovariate(20.0)
            events.append(AggTrade("binance", SYM, trade_id, ts, ask if buyer else bid, qty, not buyer))  # fmt: skip
        if ts >= next_snap:
            next_snap = ts + 100
            bids = tuple((round(bid - 0.1 * i, 1), rng.uniform(0.5, 9)) for i in range(20))
            asks = tuple((round(ask + 0.1 * i, 1), rng.uniform(0.5, 9)) for i in range(20))
            events.append(BookSnapshot("binance", SYM, ts, 0, bids, asks))
            events.append(MarkPrice("binance", SYM, ts, price, price, 0.0001, ts + 600_000))
        if ts >= next_liq:
            next_liq = ts + rng.randint(60_000, 200_000)
            for k in range(rng.randint(5, 30)):
                usd = rng.uniform(30_000, 200_000)
                events.append(Liquidation("binance", SYM, "long", price, usd / price, usd, ts + k))
    return events


def compete(events: list, dynamic: str) -> tuple[list[dict], list[dict], list]:
    records: list[dict] = []
    session = PaperSession(PaperConfig(symbol=SYM, dynamic=dynamic), emit=records.append)
    for event in events:
        session.step(event)
    session.engine.stop()
    blocks = [(m, s.stats.blocks, s.stats.block_reasons) for m, s in session.modes.items()]
    return records, session.leaderboard(), blocks


@pytest.mark.parametrize(("seed_", "dynamic"), [(1, "off"), (2, "rules"), (3, "kelly")])
def test_a_competition_trades_exactly_as_the_straightforward_path(monkeypatch, seed_, dynamic):
    events = random_tape(25_000, random.Random(seed_))
    fast = compete(events, dynamic)
    with monkeypatch.context() as m:
        m.setattr(seed, "_SIGNALS", Uncached())
        m.setattr(seed, "shared_signal", sig.signal)
        m.setattr("liqcli.trading.engine.Slot.__post_init__", lambda self: None)  # drain always
        slow = compete(events, dynamic)
    closes = [r for r in slow[0] if r["type"] == "close"]
    reasons = {r["exit_reason"] for r in closes}
    assert len(closes) >= 10 and len(reasons) >= 2, (len(closes), reasons)  # not vacuous
    assert fast == slow


class _TimerFromStart:
    """Asks for timers only once started (``timer_ms`` set in on_start)."""

    timer_ms = None

    def __init__(self):
        self.timers = []

    def on_start(self, ctx):
        self.timer_ms = 1_000

    def on_event(self, event, ctx):
        pass

    def on_fill(self, fill, ctx):
        pass

    def on_timer(self, ts, ctx):
        self.timers.append(ts)

    def on_stop(self, ctx):
        pass


class _LateRejections:
    """A live-like broker: no pending fills, rejections learnt of asynchronously."""

    def __init__(self):
        self.later: list = []
        self.fills: list = []  # never any: the fast path must still ask for rejections

    def take_rejections(self):
        out, self.later = self.later, []
        return out

    def take_fills(self):
        return []

    def position(self, symbol):
        return None


class _Rejected(_TimerFromStart):
    def __init__(self):
        super().__init__()
        self.rejected = []

    def on_reject(self, order, ctx):
        self.rejected.append((order, ctx.now))


def test_engine_fast_path_keeps_timers_set_at_start_and_async_rejections():
    from liqcli.trading.engine import Engine

    engine = Engine()
    timed, rejecting, broker = _TimerFromStart(), _Rejected(), _LateRejections()
    engine.add(timed, SimBroker(1_000.0))
    engine.add(rejecting, broker)
    top = BookTop("binance", SYM, 1_000, 99.0, 5.0, 100.0, 5.0)
    engine.step(top)
    broker.later.append("order-1")  # the venue answered between two events
    engine.step(AggTrade("binance", SYM, 1, 2_500, 100.0, 0.1, False))
    assert timed.timers == [2_000] and rejecting.timers == [2_000]
    assert rejecting.rejected == [("order-1", 2_000)]  # drained by the timer, at its time
    broker.later.append("order-2")
    engine.step(AggTrade("binance", SYM, 2, 2_600, 100.0, 0.1, False))
    assert rejecting.rejected[-1] == ("order-2", 2_600)
