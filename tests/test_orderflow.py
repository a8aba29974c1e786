"""Order-flow features: incremental values equal a brute-force computation over the same input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liqcli.analytics.orderflow import (
    AtrRatio,
    ObiTracker,
    OrderFlow,
    SignedVolume,
    Vpin,
    microprice,
    microprice_pressure,
    obi,
    spread_bps,
    toxicity,
)

trades = st.lists(
    st.tuples(
        st.floats(1, 1e5, allow_nan=False),  # price
        st.floats(1e-4, 50, allow_nan=False),  # qty
        st.booleans(),  # taker bought
    ),
    min_size=1,
    max_size=400,
)


@given(trades, st.integers(1, 120))
def test_signed_volume_equals_the_sum_of_the_last_n(tape, window):
    sv = SignedVolume(window)
    for i, (_, qty, bought) in enumerate(tape):
        sv.add(qty, bought)
        last = tape[max(0, i + 1 - window) : i + 1]
        brute = sum(q if b else -q for _, q, b in last)
        assert sv.total == pytest.approx(brute, abs=1e-6)


def brute_vpin(tape, bucket, window):
    """Independent formulation: lay trades end to end on a dollar axis; bucket k is the interval
    [k*B, (k+1)*B); its buy dollars are the overlap with buy trades' intervals."""
    intervals, at = [], 0.0
    for price, qty, bought in tape:
        intervals.append((at, at + price * qty, bought))
        at += price * qty
    full = int(at / bucket + 1e-9)
    imbalances = []
    for k in range(full):
        lo, hi = k * bucket, (k + 1) * bucket
        buy = sum(max(0.0, min(hi, e) - max(lo, s)) for s, e, b in intervals if b)
        sell = sum(max(0.0, min(hi, e) - max(lo, s)) for s, e, b in intervals if not b)
        imbalances.append(abs(buy - sell) / (buy + sell))
    last = imbalances[-window:]
    return sum(last) / len(last) if last else None


@settings(max_examples=60, deadline=None)
@given(trades.filter(lambda t: len(t) <= 120), st.floats(1e4, 1e6), st.integers(1, 60))
def test_vpin_equals_brute_force(tape, bucket, window):
    vpin = Vpin(bucket, window)
    for price, qty, bought in tape:
        vpin.add(price, qty, bought)
    expected = brute_vpin(tape, bucket, window)
    if expected is None:
        assert vpin.value is None
    else:
        assert vpin.value == pytest.approx(expected, abs=1e-9)


def test_vpin_hand_example():
    v = Vpin(bucket_usd=1_000, window=2)
    v.add(100, 10, True)  # bucket 1 all buys: imbalance 1
    assert v.value == 1.0
    v.add(100, 5, True)  # half of bucket 2
    v.add(100, 5, False)  # bucket 2: 500/500 -> 0
    assert v.value == pytest.approx(0.5)
    v.add(100, 25, False)  # buckets 3, 4 all sells (1, 1) + half of bucket 5
    assert v.value == pytest.approx(1.0) and v.buckets == 4
    assert toxicity(0.29) == "SAFE" and toxicity(0.3) == "CAUTION"
    assert toxicity(0.69) == "DANGER" and toxicity(0.7) == "CRITICAL"


levels = st.lists(st.tuples(st.floats(1, 1e5), st.floats(0, 100)), max_size=40)


@given(levels, levels, st.integers(1, 30))
def test_obi_and_velocity_brute_force(bids, asks, depth):
    tracker = ObiTracker(depth)
    first = tracker.update(bids, asks)
    b = sum(q for _, q in bids[:depth])
    a = sum(q for _, q in asks[:depth])
    assert first == pytest.approx((b - a) / (b + a) if b + a else 0.0)
    assert tracker.velocity == 0.0
    second = tracker.update(asks, bids)
    assert tracker.velocity == pytest.approx(second - first)


def test_microprice_and_spread_hand_values():
    # TRADING-VENUES.md §6: bid 100 x 1, ask 101 x 3 -> 100.25
    assert microprice(100, 1, 101, 3) == pytest.approx(100.25)
    assert microprice(100, 0, 101, 0) == 100.5
    # (100.25 - 100.5) / 0.5 = -0.5: more size on the ask pushes the fair price down
    assert microprice_pressure(100, 1, 101, 3) == pytest.approx(-0.5)
    assert spread_bps(100, 101) == pytest.approx(1 / 100.5 * 1e4)
    assert obi([(1, 3)], [(2, 1)]) == 0.5


@given(st.lists(st.tuples(st.integers(0, 3_600_000), st.floats(1, 1e4)), min_size=1, max_size=300))
def test_atr_ratio_brute_force(ticks):
    ticks = sorted(ticks)
    atr = AtrRatio(bar_ms=60_000, window=14)
    for ts, price in ticks:
        atr.add(ts, price)
    bars = {}
    for ts, price in ticks:
        bars.setdefault(ts // 60_000, []).append(price)
    closed = [bars[k] for k in sorted(bars)][:-1]  # the last bar is still open
    ranges, prev = [], None
    for prices in closed:
        h, low, c = max(prices), min(prices), prices[-1]
        tr = h - low if prev is None else max(h - low, abs(h - prev), abs(low - prev))
        ranges.append(tr)
        prev = c
    if not ranges:
        assert atr.value is None
    else:
        last = ranges[-14:]
        assert atr.value == pytest.approx(sum(last) / len(last) / ticks[-1][1], rel=1e-9)


def test_order_flow_snapshot_combines_everything():
    flow = OrderFlow(vpin_bucket_usd=1_000, vpin_window=50)
    s = flow.on_book(1, [(100.0, 3.0), (99.0, 1.0)], [(101.0, 1.0)])
    assert s.obi == pytest.approx((4 - 1) / 5) and s.top_depth == 4.0
    assert s.spread_bps == pytest.approx(1 / 100.5 * 1e4)
    s = flow.on_trade(2, 100.0, 10.0, False)
    assert s.signed_volume == 10.0 and s.vpin == 1.0 and s.toxicity == "CRITICAL"
    assert s.mid == 100.5
