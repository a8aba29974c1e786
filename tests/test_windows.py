"""Rolling windows: exact agreement with a brute-force recomputation, filters, bulk loading."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liqcli.analytics import windows as windows_mod
from liqcli.analytics.windows import (
    EventFilter,
    Totals,
    WindowAggregator,
    parse_windows,
)
from liqcli.core.events import Liquidation
from liqcli.errors import UsageError

T0 = 1_763_700_000_000  # 2025-11-21, an arbitrary fixed instant
RES = 1000


class ManualClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def liq(
    ts: int,
    usd: float,
    side: str = "long",
    symbol: str = "BTCUSDT",
    exchange: str = "binance",
) -> Liquidation:
    return Liquidation(exchange, symbol, side, 100.0, usd / 100.0, usd, ts, received_ts=ts + 5)


def brute_force(
    events: list[Liquidation], window_ms: int, now: int, flt: EventFilter, **key
) -> Totals:
    """Recompute a window from scratch with the documented bucket rule."""
    cutoff = now // RES - window_ms // RES
    chosen = [
        e
        for e in events
        if flt.accepts(e)
        and e.ts // RES > cutoff
        and all(getattr(e, k) == v for k, v in key.items())
    ]
    longs = [e for e in chosen if e.side == "long"]
    shorts = [e for e in chosen if e.side == "short"]
    # Exact: the aggregator sums integer micro-dollars.
    micro = windows_mod.MICRO
    return Totals(
        sum(round(e.notional_usd * micro) for e in longs) / micro if longs else 0.0,
        sum(round(e.notional_usd * micro) for e in shorts) / micro if shorts else 0.0,
        len(longs),
        len(shorts),
    )


SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
EXCHANGES = ["binance", "okx", "bybit"]

event_step = st.tuples(
    st.integers(0, 7_000),  # clock advance, ms
    st.one_of(  # event lag behind the clock, ms: mostly recent, sometimes very late or early
        st.integers(0, 3_000),
        st.integers(3_000, 200_000),
        st.integers(-2_000, 0),
    ),
    st.sampled_from(SYMBOLS),
    st.sampled_from(EXCHANGES),
    st.sampled_from(["long", "short"]),
    st.floats(0.01, 5e6, allow_nan=False),
    st.booleans(),  # check totals after this step
)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(event_step, min_size=1, max_size=120),
    min_usd=st.sampled_from([0.0, 1000.0]),
    only=st.sampled_from([frozenset(), frozenset({"BTCUSDT", "SOLUSDT"})]),
)
def test_totals_equal_brute_force(steps, min_usd, only) -> None:
    clock = ManualClock(T0)
    flt = EventFilter(symbols=only, min_usd=min_usd)
    with pytest.MonkeyPatch.context() as mp:
        # Compact after a handful of buckets so the property also covers compaction.
        mp.setattr(windows_mod, "_COMPACT_MIN", 4)
        agg = WindowAggregator("3s,10s,1m,2m", clock=clock, latest=5, event_filter=flt)
    sent: list[Liquidation] = []
    counted: list[Liquidation] = []
    for advance, lag, symbol, exchange, side, usd, check in steps:
        clock.now += advance
        ev = liq(clock.now - lag, usd, side, symbol, exchange)
        sent.append(ev)
        if agg.add(ev):
            counted.append(ev)
        if not check:
            continue
        for w in agg.windows:
            assert agg.totals(w) == brute_force(sent, w.ms, clock.now, flt)
            for sym in SYMBOLS:
                assert agg.totals(w, symbol=sym) == brute_force(
                    sent, w.ms, clock.now, flt, symbol=sym
                )
            for ex in EXCHANGES:
                assert agg.totals(w, exchange=ex) == brute_force(
                    sent, w.ms, clock.now, flt, exchange=ex
                )
    # Rankings over the rank window agree with the brute force too.
    rank = next(w for w in agg.windows if w.label == agg.rank_window)
    expected = sorted(
        ((s, brute_force(sent, rank.ms, clock.now, flt, symbol=s)) for s in SYMBOLS),
        key=lambda r: (r[1].long_usd, r[0]),
        reverse=True,
    )
    assert agg.top(2, "long") == [r for r in expected[:2] if r[1].long_usd > 0]
    accepted = [e for e in sent if flt.accepts(e)]
    snap = agg.snapshot(top_n=3)
    assert snap.events == len(counted)
    assert snap.events + agg.expired == len(accepted)
    # Latest: the last counted arrivals, newest first.
    assert snap.latest == counted[::-1][:5]


def test_parse_windows_sorted_and_validated() -> None:
    assert [w.label for w in parse_windows("1h, 3m,15m")] == ["3m", "15m", "1h"]
    assert parse_windows("1d")[0].ms == 86_400_000
    for bad in ["", "abc", "0m", "60m,1h", "0.5s", "5x"]:
        with pytest.raises(UsageError):
            parse_windows(bad)


def test_windows_expire_as_the_clock_moves() -> None:
    clock = ManualClock(T0)
    agg = WindowAggregator("3m,1h", clock=clock)
    agg.add(liq(T0, 1_000.0, "long"))
    agg.add(liq(T0 + 500, 250.5, "short", "ETHUSDT", "bybit"))
    assert agg.totals("3m") == Totals(1_000.0, 250.5, 1, 1)
    clock.now = T0 + 179_999  # same bucket boundary rule: still inside 3m
    assert agg.totals("3m").count == 2
    clock.now = T0 + 180_000
    assert agg.totals("3m") == Totals()
    assert agg.totals("1h") == Totals(1_000.0, 250.5, 1, 1)
    assert agg.totals("1h", exchange="bybit") == Totals(0.0, 250.5, 0, 1)
    assert agg.totals("1h", symbol="BTCUSDT") == Totals(1_000.0, 0.0, 1, 0)
    clock.now = T0 + 3_600_000
    assert agg.totals("1h") == Totals()
    # Older than every window: not counted at all.
    assert agg.add(liq(T0, 5.0)) is False
    assert agg.expired == 1


def test_filters_and_frame_expression_agree() -> None:
    flt = EventFilter(symbols=frozenset({"BTCUSDT"}), exchanges=frozenset({"okx"}), min_usd=10_000)
    events = [
        liq(T0, 20_000, symbol="BTCUSDT", exchange="okx"),
        liq(T0, 9_999.99, symbol="BTCUSDT", exchange="okx"),
        liq(T0, 50_000, symbol="ETHUSDT", exchange="okx"),
        liq(T0, 50_000, symbol="BTCUSDT", exchange="binance"),
    ]
    assert [flt.accepts(e) for e in events] == [True, False, False, False]
    frame = pl.DataFrame([e.to_row() for e in events])
    assert frame.filter(flt.expr()).height == 1
    agg = WindowAggregator("1h", clock=ManualClock(T0), event_filter=flt)
    assert agg.add_many(events) == 1
    assert agg.totals("1h") == Totals(20_000.0, 0.0, 1, 0)


def test_top_and_latest() -> None:
    clock = ManualClock(T0)
    agg = WindowAggregator("1h", clock=clock, latest=3)
    for i, (sym, side, usd) in enumerate(
        [
            ("BTCUSDT", "long", 5e5),
            ("ETHUSDT", "long", 7e5),
            ("SOLUSDT", "short", 1e5),
            ("ETHUSDT", "short", 2e5),
            ("XRPUSDT", "long", 1e3),
        ]
    ):
        agg.add(liq(T0 + i, usd, side, sym))
    assert [s for s, _ in agg.top(2, "long")] == ["ETHUSDT", "BTCUSDT"]
    assert [(s, t.short_usd) for s, t in agg.top(5, "short")] == [
        ("ETHUSDT", 2e5),
        ("SOLUSDT", 1e5),
    ]
    assert [e.symbol for e in agg.latest()] == ["XRPUSDT", "ETHUSDT", "SOLUSDT"]
    snap = agg.snapshot(top_n=2)
    assert list(snap.by_symbol) == ["ETHUSDT", "BTCUSDT"]
    doc = snap.to_dict()
    assert doc["overall"]["1h"]["long_count"] == 3
    assert doc["latest"][0]["symbol"] == "XRPUSDT"
    assert doc["top_long"][0] == {
        "symbol": "ETHUSDT",
        **agg.totals("1h", symbol="ETHUSDT").to_dict(),
    }


def test_load_frame_equals_adding_events_one_by_one() -> None:
    clock = ManualClock(T0 + 86_400_000)
    events = [
        liq(
            T0 + i * 7_919 % 86_399_000 + 1_000,
            10.0 + i * 1.37,
            "long" if i % 3 else "short",
            SYMBOLS[i % 3],
            EXCHANGES[i % 2],
        )
        for i in range(2_000)
    ]
    one_by_one = WindowAggregator(clock=clock, latest=4)
    for e in sorted(events, key=lambda e: e.ts):
        one_by_one.add(e)
    frame = pl.DataFrame([e.to_row() for e in events]).with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("received_ts").cast(pl.Datetime("ms", "UTC")),
    )
    bulk = WindowAggregator(clock=clock, latest=4)
    assert bulk.load_frame(frame) == one_by_one.events
    for w in bulk.windows:
        assert bulk.totals(w) == one_by_one.totals(w)
        for sym in SYMBOLS:
            assert bulk.totals(w, symbol=sym) == one_by_one.totals(w, symbol=sym)
    assert bulk.latest() == one_by_one.latest()
    # Loading into a live aggregator merges with what it already has.
    bulk.load_frame(frame.head(10))
    assert bulk.totals("1d").count == one_by_one.totals("1d").count + 10


def test_memory_stays_bounded_by_the_longest_window() -> None:
    clock = ManualClock(T0)
    agg = WindowAggregator("10s,1m", clock=clock)
    for i in range(20_000):  # 20,000 s of one event per second
        clock.now = T0 + i * 1000
        agg.add(liq(clock.now, 1.0))
    series = agg._overall
    assert len(series.keys) <= 2 * 1024 + 60
    assert agg.totals("1m") == Totals(60.0, 0.0, 60, 0)
    assert agg.totals("10s") == Totals(10.0, 0.0, 10, 0)


# -- hostile values and unbounded symbols (issue 13 items 2 and 15) --------------------------


BAD_USD = [float("inf"), float("nan"), 9.3e12, 1e300, -5.0]


def test_values_no_total_can_hold_are_refused_alike_live_and_on_restore() -> None:
    """A notional above ~9.2e12 or an infinite one once made every restart fail."""
    clock = ManualClock(T0 + 10_000)
    good = [liq(T0 + i * 1000, 1_000.0 + i, "long" if i % 2 else "short") for i in range(5)]
    bad = [liq(T0 + 500, usd) for usd in BAD_USD]
    live = WindowAggregator("1m,1h", clock=clock)
    for event in good + bad:
        live.add(event)
    frame = pl.DataFrame([{**e.to_row(), "ts": e.ts} for e in good + bad])
    restored = WindowAggregator("1m,1h", clock=clock)
    assert restored.load_frame(frame) == len(good)
    assert live.events == restored.events == len(good)
    assert restored.invalid == len(BAD_USD) - 1  # -5.0 fails the filter first (NaN too, live)
    for window in ("1m", "1h"):
        assert live.totals(window) == restored.totals(window)
        assert restored.totals(window).count == len(good)


def test_per_symbol_state_is_bounded_and_the_least_recent_symbols_go_first() -> None:
    clock = ManualClock(T0 + 1_000_000)
    agg = WindowAggregator("1h", clock=clock, max_symbols=100)
    for i in range(1_000):
        agg.add(liq(T0 + i * 1000, 10.0, symbol=f"S{i:04d}USDT"))
    assert len(agg.symbols) <= 100
    assert agg.evicted_symbols >= 900
    assert "S0999USDT" in agg.symbols and "S0000USDT" not in agg.symbols
    # Overall totals still count every event.
    assert agg.totals("1h").count == 1_000
    # A bulk load beyond the bound is trimmed too.
    loaded = WindowAggregator("1h", clock=clock, max_symbols=50)
    frame = pl.DataFrame(
        [{**liq(T0 + i, 1.0, symbol=f"L{i}").to_row(), "ts": T0 + i} for i in range(500)]
    )
    assert loaded.load_frame(frame) == 500
    assert len(loaded.symbols) <= 50
    assert loaded.totals("1h").count == 500


def test_memory_for_many_distinct_symbols_stays_bounded() -> None:
    import tracemalloc

    clock = ManualClock(T0 + 40_000)
    agg = WindowAggregator("1h", clock=clock, max_symbols=2_000)
    tracemalloc.start()
    for i in range(4_000):
        agg.add(liq(T0 + i, 1.0, symbol=f"A{i}"))
    first, _ = tracemalloc.get_traced_memory()
    for i in range(4_000, 40_000):
        agg.add(liq(T0 + i, 1.0, symbol=f"A{i}"))
    second, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert second < first * 1.5, (first, second)
