"""``feature_columns`` (the whole tape at once, numpy) equals ``OrderFlow`` fed row by row, bit
for bit: every field ``==`` (NaN where the snapshot has None) after every row."""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liqcli.analytics.orderflow import FLOAT_FIELDS, OrderFlow, feature_columns

TRADE, TOP, OTHER = 3, 2, 0
FIELDS = FLOAT_FIELDS


def fed_row_by_row(rows, **params):
    """The reference: what backtest_flow's observer does with tops only (MergedBook.levels)."""
    flow = OrderFlow(**params)
    snapshots = []
    for ts, kind, a, b, c, d in rows:
        if kind == TRADE:
            flow.on_trade(ts, a, b, bool(c))
        elif kind == TOP:
            flow.on_book(ts, [(a, b)] if b > 0 else [], [(c, d)] if d > 0 else [])
        s = flow.snapshot
        snapshots.append((s.ts, *(getattr(s, f) for f in FIELDS)))
    return snapshots


def assert_identical(rows, **params):
    columns = [np.array([r[i] for r in rows]) for i in range(6)]
    columns[0] = columns[0].astype(np.int64)
    columns[1] = columns[1].astype(np.int8)
    got = feature_columns(*columns, trade_kind=TRADE, top_kind=TOP, **params)
    expected = fed_row_by_row(rows, **params)
    assert set(got) == {"ts", *FIELDS}
    for name, column in got.items():
        assert column.shape == (len(rows),)
        assert column.dtype == (np.int64 if name == "ts" else np.float64)
    for i, snap in enumerate(expected):
        assert got["ts"][i] == snap[0], ("ts", i)
        for name, want in zip(FIELDS, snap[1:], strict=True):
            value = float(got[name][i])
            if want is None:
                assert math.isnan(value), (name, i, value)
            else:
                assert value == want, (name, i, value, want)


prices = st.floats(1, 1e5, allow_nan=False)
quantities = st.one_of(st.floats(1e-4, 50), st.sampled_from([0.001, 0.1, 1.0, 3.0]))
book_qty = st.one_of(st.just(0.0), st.floats(0, 100), st.sampled_from([0.5, 1.0, 7.0]))
trade_row = st.tuples(st.just(TRADE), prices, quantities, st.sampled_from([0.0, 1.0]), st.just(0.0))
top_row = st.tuples(st.just(TOP), prices, book_qty, prices, book_qty)
# a crossed or locked book (ask <= bid) is allowed: pressure is then 0, as on_book has it
other_row = st.tuples(st.just(OTHER), st.floats(-1, 1), prices, st.just(0.0), st.just(0.0))
rows = st.lists(
    st.tuples(
        st.integers(0, 30_000),  # gap to the previous row (0: equal timestamps)
        st.one_of(trade_row, trade_row, top_row, other_row),
    ),
    max_size=250,
)


def tape(steps, start=1_735_689_600_000):
    out, ts = [], start
    for gap, (kind, a, b, c, d) in steps:
        ts += gap
        out.append((ts, kind, a, b, c, d))
    return out


@settings(max_examples=150, deadline=None)
@given(
    rows,
    st.integers(1, 40),  # volume window
    st.one_of(st.floats(10, 1e6), st.sampled_from([50.0, 1_000.0, 50_000.0])),  # VPIN bucket
    st.integers(1, 20),  # VPIN window
    st.sampled_from([1, 1_000, 7_000, 60_000]),  # ATR bar: gaps of up to 30 s skip bars
    st.integers(0, 15),  # ATR window (0: never a value)
    st.integers(0, 3),  # OBI depth (0: every OBI reading is 0)
)
def test_feature_columns_equal_order_flow_row_by_row(
    steps, volume_window, bucket, vpin_window, bar_ms, atr_window, depth
):
    assert_identical(
        tape(steps),
        obi_depth=depth,
        volume_window=volume_window,
        vpin_bucket_usd=bucket,
        vpin_window=vpin_window,
        atr_bar_ms=bar_ms,
        atr_window=atr_window,
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(prices, st.floats(1, 500), st.booleans()), min_size=1, max_size=60))
def test_large_trades_spanning_many_small_buckets(trades):
    # each trade of 1e0..5e7 dollars over buckets of 100: up to thousands close in one trade
    rows = [
        (i // 3, TRADE, p, q, float(not bought), 0.0) for i, (p, q, bought) in enumerate(trades)
    ]
    assert_identical(rows, vpin_bucket_usd=100.0, vpin_window=7)


def test_rows_before_any_trade_or_top_and_defaults():
    rows = [
        (5, OTHER, 0.01, 60_000.0, 0.0, 0.0),  # e.g. funding: changes nothing
        (6, TOP, 100.0, 0.0, 101.0, 2.0),  # the bid side missing: obi -1, no top of book
        (6, TOP, 100.0, 1.0, 101.0, 3.0),
        (7, TRADE, 100.5, 2.0, 1.0, 0.0),
        (9, OTHER, 0.0, 0.0, 0.0, 0.0),
    ]
    got = feature_columns(
        *(np.array([r[i] for r in rows]) for i in range(6)), trade_kind=TRADE, top_kind=TOP
    )
    assert got["ts"].tolist() == [0, 6, 6, 7, 7]
    assert np.isnan(got["obi"][0]) and got["obi_velocity"][0] == 0.0
    assert got["obi"][1] == -1.0 and np.isnan(got["bid"][1]) and np.isnan(got["microprice"][1])
    assert got["obi"][2] == pytest.approx(-0.5) and got["obi_velocity"][2] == pytest.approx(0.5)
    assert got["microprice"][2] == pytest.approx(100.25) and got["top_depth"][2] == 4.0
    assert got["signed_volume"][2] == 0.0 and got["signed_volume"][3] == -2.0
    assert got["last_price"][4] == 100.5 and np.isnan(got["vpin"][4])
    assert_identical(rows)


def test_empty_tape():
    empty = [np.array([], dtype=t) for t in (np.int64, np.int8, float, float, float, float)]
    got = feature_columns(*empty, trade_kind=TRADE, top_kind=TOP)
    assert all(column.size == 0 for column in got.values())


def test_a_tape_of_other_rows_only_changes_nothing():
    rows = [(5, OTHER, 0.01, 60_000.0, 0.0, 0.0), (8, OTHER, 0.02, 60_001.0, 0.0, 0.0)]
    got = feature_columns(
        *(np.array([r[i] for r in rows]) for i in range(6)), trade_kind=TRADE, top_kind=TOP
    )
    assert got["ts"].tolist() == [0, 0] and got["signed_volume"].tolist() == [0.0, 0.0]
    assert np.isnan(got["obi"]).all() and np.isnan(got["last_price"]).all()
    assert_identical(rows)


def _state(flow: OrderFlow) -> dict:
    """Everything an OrderFlow carries from one event to the next (deques as lists)."""
    out = {}
    for part in ("obi", "volume", "vpin", "atr", "snapshot"):
        obj = getattr(flow, part)
        for name in type(obj).__slots__:
            value = getattr(obj, name)
            out[f"{part}.{name}"] = list(value) if isinstance(value, deque) else value
    return out


@settings(max_examples=150, deadline=None)
@given(
    rows,
    st.lists(st.integers(0, 250), max_size=6),  # where the tape is cut into parts
    st.integers(1, 12),  # volume window
    st.sampled_from([50.0, 1_000.0, 50_000.0]),  # VPIN bucket
    st.integers(1, 6),  # VPIN window
    st.sampled_from([1, 1_000, 60_000]),  # ATR bar
    st.integers(0, 5),  # ATR window
)
def test_a_tape_taken_in_parts_equals_the_whole_and_leaves_the_flow_as_fed(
    steps, cuts, volume_window, bucket, vpin_window, bar_ms, atr_window
):
    """Parts fed one after the other to one OrderFlow (``flow=``) give the whole tape's columns,
    and leave the flow's state (every slot, deques included) as feeding every row would."""
    params = dict(
        volume_window=volume_window,
        vpin_bucket_usd=bucket,
        vpin_window=vpin_window,
        atr_bar_ms=bar_ms,
        atr_window=atr_window,
    )
    rows_ = tape(steps)
    columns = [np.array([r[i] for r in rows_], dtype=float) for i in range(6)]
    columns[0], columns[1] = columns[0].astype(np.int64), columns[1].astype(np.int8)
    whole = feature_columns(*columns, trade_kind=TRADE, top_kind=TOP, **params)
    flow = OrderFlow(**params)
    edges = [0, *sorted(min(c, len(rows_)) for c in cuts), len(rows_)]
    parts = [
        feature_columns(*(col[lo:hi] for col in columns), trade_kind=TRADE, top_kind=TOP, flow=flow)
        for lo, hi in itertools.pairwise(edges)
    ]
    for name, column in whole.items():
        joined = np.concatenate([p[name] for p in parts])
        assert np.array_equal(joined, column, equal_nan=True), name
    reference = OrderFlow(**params)
    for ts, kind, a, b, c, d in rows_:
        if kind == TRADE:
            reference.on_trade(ts, a, b, bool(c))
        elif kind == TOP:
            reference.on_book(ts, [(a, b)] if b > 0 else [], [(c, d)] if d > 0 else [])
    assert _state(flow) == _state(reference)
