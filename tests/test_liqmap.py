"""The liquidation-map core: compat levels, lossless binning, sweeps, modes and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liqcli.analytics.liqmap import (
    COMPAT_TIERS,
    DEFAULT_MMR,
    DEFAULT_TIERS,
    MapSpec,
    bin_levels,
    build_map,
    first_crossing,
    nice_step,
    parse_tiers,
    reference_step,
)
from liqcli.errors import LiqError, UsageError

T0 = 1_709_251_200_000  # 2024-03-01
REFERENCE_LONG = {"10x": 0.90, "25x": 0.96, "50x": 0.98, "100x": 0.99}
REFERENCE_SHORT = {"10x": 1.10, "25x": 1.04, "50x": 1.02, "100x": 1.01}


def trades(rows: list[tuple[int, float, float, bool]]) -> pl.LazyFrame:
    """(ms offset, price, qty, is_buyer_maker) rows -> the normalised trade columns."""
    return pl.LazyFrame(
        {
            "ts": [T0 + r[0] for r in rows],
            "price": [float(r[1]) for r in rows],
            "qty": [float(r[2]) for r in rows],
            "is_buyer_maker": [r[3] for r in rows],
        },
        schema={
            "ts": pl.Int64,
            "price": pl.Float64,
            "qty": pl.Float64,
            "is_buyer_maker": pl.Boolean,
        },
    )


def build(rows, **spec):
    return build_map(trades(rows), MapSpec(**spec), symbol="BTCUSDT", engine="in-memory")


def total(liqmap, side=None) -> float:
    bins = liqmap.bins if side is None else liqmap.bins.filter(pl.col("side") == side)
    return float(bins["amount_usd"].sum())


# --- compat: the reference's levels -------------------------------------------------------------


def test_compat_levels_match_hand_computed_values():
    rows = [
        (0, 100.0, 2000.0, False),  # a $200k taker buy -> long opened at 100
        (1_000, 100.0, 1500.0, True),  # a $150k taker sell -> short at 100
        (2_000, 100.0, 1.0, False),  # small, below the threshold; sets the last price to 100
    ]
    m = build(rows, model="compat", mode="gross_value", threshold=100_000, bin_size=1)
    levels = m.levels.sort("side", "leverage")
    got = {
        (r["side"], r["tier"]): (r["level"], r["amount_usd"], r["active"])
        for r in levels.to_dicts()
    }
    # approx: 100 * 1.1 is 110.00000000000001 in floating point (the reference's too).
    assert {k: pytest.approx(v) for k, v in got.items()} == {
        ("long", "10x"): (90.0, 200_000.0, True),
        ("long", "25x"): (96.0, 200_000.0, True),
        ("long", "50x"): (98.0, 200_000.0, True),
        ("long", "100x"): (99.0, 200_000.0, True),
        ("short", "10x"): (110.0, 150_000.0, True),
        ("short", "25x"): (104.0, 150_000.0, True),
        ("short", "50x"): (102.0, 150_000.0, True),
        ("short", "100x"): (101.0, 150_000.0, True),
    }
    # One bin per level on a 1-wide grid: [90, 91) holds the 10x long, etc.
    assert m.bins.to_dicts()[0] == {
        "price_low": 90.0,
        "price_high": 91.0,
        "side": "long",
        "tier": "10x",
        "amount_usd": 200_000.0,
    }
    assert m.current_price == 100.0 and m.spec.mmr == 0.0
    assert m.spec.tiers == COMPAT_TIERS


def test_compat_levels_equal_reference_factors_exactly():
    rng = np.random.default_rng(3)
    prices = np.round(rng.uniform(20_000, 70_000, 40), 1)
    rows = [(i * 10, float(p), 5.0, bool(i % 2)) for i, p in enumerate(prices)]
    m = build(rows, model="compat", mode="gross_value", threshold=0)
    for row in m.levels.to_dicts():
        factor = (REFERENCE_LONG if row["side"] == "long" else REFERENCE_SHORT)[row["tier"]]
        assert row["level"] == row["entry_price"] * factor  # bit-for-bit, not approx


def test_compat_keeps_only_levels_on_the_right_side_of_the_last_price():
    # Long at 100 (levels 90, 96, 98, 99); the price then falls to 95: only the 10x level (90)
    # is below the last price and kept, the others are dropped, exactly like the reference.
    rows = [(0, 100.0, 10.0, False), (1_000, 95.0, 0.001, False)]
    m = build(rows, model="compat", mode="top_n", threshold=1)
    assert m.levels.filter(pl.col("active"))["tier"].to_list() == ["10x"]
    assert total(m) == 1000.0


def test_compat_bin_size_is_the_references_rule():
    assert reference_step(60_000.0, 61_234.0) == 100.0  # range 1234 -> 10^(4-2)
    assert reference_step(1.0, 1.5) == 0.01
    assert reference_step(5.0, 5.0) is None
    rows = [(0, 60_000.0, 5.0, False), (1_000, 61_234.0, 5.0, True), (2_000, 60_500.0, 1.0, False)]
    assert build(rows, model="compat", threshold=0).bin_size == 100.0


# --- lossless binning --------------------------------------------------------------------------


def test_bins_sum_to_selected_notional_times_tiers():
    # Every trade within 0.9% of the last price: all compat levels are kept (longs below, shorts
    # above), so the bins must hold exactly selected notional x 4 tiers; the reference lost
    # 0.5-32% of this at its range edges.
    rng = np.random.default_rng(11)
    n = 500
    prices = 50_000 * (1 + rng.uniform(-0.009, 0.009, n))
    rows = [
        (i, float(p), float(q), bool(b))
        for i, (p, q, b) in enumerate(
            zip(prices, rng.lognormal(0, 1, n), rng.random(n) < 0.5, strict=True)
        )
    ]
    rows.append((n, 50_000.0, 0.0001, False))
    for bin_size in (None, 7.3, 1000.0, 0.01):
        m = build(rows, model="compat", mode="gross_value", threshold=20_000, bin_size=bin_size)
        assert m.levels["active"].all()
        selected = float(m.selected["amount"].sum())
        assert m.selected.height > 10
        assert math.isclose(total(m), selected * 4, rel_tol=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    levels=st.lists(st.floats(0.01, 1e6, allow_nan=False), min_size=1, max_size=60),
    bin_size=st.floats(1e-3, 1e4, allow_nan=False),
)
def test_binning_never_drops_a_level(levels, bin_size):
    frame = pl.DataFrame(
        {
            "level": levels,
            "side": ["long"] * len(levels),
            "tier": ["10x"] * len(levels),
            "amount_usd": [1.0] * len(levels),
        }
    )
    bins = bin_levels(frame, bin_size, COMPAT_TIERS)
    assert bins["amount_usd"].sum() == pytest.approx(len(levels))
    # Each level lies in a bin (up to the rounding of the printed edges).
    tol = 1e-9 * max(levels)
    for level in levels:
        inside = bins.filter(
            (pl.col("price_low") <= level + tol) & (pl.col("price_high") > level - tol)
        )
        assert inside.height >= 1


def test_auto_bin_size_gives_100_to_200_bins():
    for price_range in (0.37, 12.0, 999.0, 4_321.0, 87_000.0):
        step = nice_step(price_range)
        assert 100 <= price_range / step <= 215, (price_range, step)
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 9) in (1, 2, 2.5, 5)


def test_default_model_bins_cover_every_active_level():
    rng = np.random.default_rng(5)
    n = 2_000
    walk = 30_000 * np.exp(np.cumsum(rng.normal(0, 8e-4, n)))
    rows = [
        (i * 500, float(p), float(q), bool(b))
        for i, (p, q, b) in enumerate(
            zip(walk, rng.lognormal(0, 1, n), rng.random(n) < 0.5, strict=True)
        )
    ]
    m = build(rows, mode="top_n", threshold=150)
    active = m.levels.filter(pl.col("active"))
    assert math.isclose(total(m), float(active["amount_usd"].sum()), rel_tol=1e-12)
    assert (
        100
        <= (active["level"].max() - min(active["level"].min(), m.current_price)) / m.bin_size
        <= 215
    )
    # Weights sum to 1: a trade's notional is spread over the tiers, not multiplied.
    per_trade = m.levels.group_by("trade").agg(
        pl.col("amount_usd").sum(), pl.col("entry_price").first()
    )
    assert per_trade["amount_usd"].sum() == pytest.approx(float(m.selected["amount"].sum()))


def test_default_model_levels_are_binances_isolated_formula_in_the_first_bracket():
    # A $30k taker buy and a $30k taker sell at 60,000 (0.5 BTC each): below Binance BTCUSDT's
    # first bracket ceiling (50,000 USDT: mmr 0.4 %, maintenance amount cum 0). Binance's
    # isolated formula LP = (WB + cum - side*Q*EP) / (Q*mmr - side*Q), margin WB = Q*EP/L:
    #   long 10x:   WB 3,000: (3,000 - 30,000) / (0.002 - 0.5) = 27,000 / 0.498 = 54,216.867...
    #   long 100x:  WB   300: (  300 - 30,000) / (0.002 - 0.5) = 29,700 / 0.498 = 59,638.554...
    #   short 10x:  (3,000 + 30,000) / (0.002 + 0.5) = 33,000 / 0.502 = 65,737.051...
    #   short 100x: (  300 + 30,000) / (0.002 + 0.5) = 30,300 / 0.502 = 60,358.565...
    # (the former approximation p*(1 - 1/L + mmr) put the long 10x at 54,240 and the short 10x
    # at 65,760).
    rows = [
        (0, 60_000.0, 0.5, False),
        (1_000, 60_000.0, 0.5, True),
        (2_000, 60_000.0, 0.001, False),  # small; the price never reaches a level: none swept
    ]
    m = build(rows, mode="gross_value", threshold=20_000, tiers=parse_tiers("10:0.5,100:0.5"))
    assert m.spec.mmr == DEFAULT_MMR == 0.004
    got = {(r["side"], r["tier"]): r["level"] for r in m.levels.to_dicts()}
    assert got == {
        ("long", "10x"): pytest.approx(27_000 / 0.498, rel=1e-12),
        ("long", "100x"): pytest.approx(29_700 / 0.498, rel=1e-12),
        ("short", "10x"): pytest.approx(33_000 / 0.502, rel=1e-12),
        ("short", "100x"): pytest.approx(30_300 / 0.502, rel=1e-12),
    }
    assert got[("long", "10x")] == pytest.approx(54_216.867, abs=1e-3)
    assert got[("short", "10x")] == pytest.approx(65_737.051, abs=1e-3)
    assert m.levels["active"].all()
    assert m.levels["amount_usd"].to_list() == pytest.approx([15_000.0] * 4)


def test_default_model_levels_are_the_brokers_liquidation_prices():
    # One function: a level is where the simulated broker would liquidate that position.
    from liqcli.trading.costs import bracket_for, liquidation_price

    rows = [(0, 43_210.5, 0.9, False), (1_000, 43_210.5, 0.9, True), (2_000, 43_210.5, 0.001, True)]
    m = build(rows, mode="gross_value", threshold=10_000)
    assert m.levels.height == 2 * len(DEFAULT_TIERS)
    for r in m.levels.to_dicts():
        qty = (1 if r["side"] == "long" else -1) * 0.9
        notional = 0.9 * r["entry_price"]
        b = bracket_for(notional)
        assert b.cum == 0 and b.mmr == m.spec.mmr
        want = liquidation_price(
            qty=qty, entry_price=r["entry_price"], margin=notional / r["leverage"], mmr=b.mmr
        )
        assert r["level"] == pytest.approx(want, rel=1e-12)


# --- sweeps ------------------------------------------------------------------------------------


def test_swept_levels_are_removed():
    one_tier = parse_tiers("100")
    rows = [
        (0, 100.0, 1000.0, False),  # long at 100 -> 100x level 99.0 (mmr 0)
        (1_000, 100.0, 1000.0, True),  # short at 100 -> level 101.0
        (5_000, 98.9, 0.01, True),  # dips through 99: the first long level is swept
        (9_000, 100.5, 0.01, False),
        (10_000, 100.0, 2000.0, False),  # a long after the dip: level 99 survives
        (20_000, 100.2, 0.01, False),
    ]
    m = build(rows, mode="gross_value", threshold=50_000, tiers=one_tier, mmr=0.0)
    lv = m.levels.sort("t", "side").select("t", "side", "level", "active").to_dicts()
    assert lv == [
        {"t": T0, "side": "long", "level": 99.0, "active": False},
        {"t": T0 + 1_000, "side": "short", "level": 101.0, "active": True},
        {"t": T0 + 10_000, "side": "long", "level": 99.0, "active": True},
    ]
    assert total(m, "long") == 200_000.0 and total(m, "short") == 100_000.0
    # Touching the level exactly counts as crossing it.
    rows[2] = (5_000, 99.0, 0.01, True)
    assert not build(rows, mode="gross_value", threshold=50_000, tiers=one_tier, mmr=0.0).levels[
        "active"
    ][0]


def test_short_levels_swept_by_a_rally_within_the_same_second():
    one_tier = parse_tiers("50")
    rows = [
        (0, 100.0, 1000.0, True),  # short at 100.000 s -> 50x level 102 (mmr 0)
        (300, 102.5, 0.01, False),  # same second, later: squeezes through 102
        (2_000, 100.0, 0.01, True),
    ]
    m = build(rows, mode="gross_value", threshold=50_000, tiers=one_tier, mmr=0.0)
    assert m.levels["active"].to_list() == [False]
    assert total(m) == 0.0
    # The same rally *before* the short (same second, earlier) sweeps nothing.
    rows[0], rows[1] = (300, 100.0, 1000.0, True), (0, 102.5, 0.01, False)
    m = build(rows, mode="gross_value", threshold=50_000, tiers=one_tier, mmr=0.0)
    assert m.levels["active"].to_list() == [True]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), step_ms=st.sampled_from([7, 90, 400, 2_500]))
def test_sweeps_and_sweep_columns_match_brute_force(seed, step_ms):
    rng = np.random.default_rng(seed)
    n = 400
    t = np.cumsum(rng.integers(0, step_ms, n))
    price = 1_000 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    maker = rng.random(n) < 0.5
    rows = [(int(a), float(p), 1.0, bool(b)) for a, p, b in zip(t, price, maker, strict=True)]
    m = build(rows, mode="gross_value", threshold=0, tiers=parse_tiers("25,50,100"), mmr=0.002)
    cols = (T0 + t - m.col_t0) // m.col_ms
    for row in m.levels.to_dicts():
        later = t > row["t"] - T0
        crossing = (
            price[later] <= row["level"] if row["side"] == "long" else price[later] >= row["level"]
        )
        assert row["active"] == (not crossing.any())
        expected_end = cols[later][crossing.argmax()] if crossing.any() else m.n_cols - 1
        assert row["end_col"] == expected_end


def test_first_crossing_matches_brute_force():
    rng = np.random.default_rng(2)
    values = rng.normal(0, 1, 257)
    start = rng.integers(-1, 257, 2_000)
    levels = rng.normal(-1.5, 1, 2_000)
    got = first_crossing(start, levels, values, below=True)
    for s, lv, g in zip(start, levels, got, strict=True):
        hits = np.nonzero(values[s + 1 :] <= lv)[0]
        assert g == (s + 1 + hits[0] if hits.size else values.size)
    got_up = first_crossing(start, -levels, -values, below=False)
    assert (got_up == got).all()


def test_heatmap_levels_live_from_entry_to_sweep():
    one_tier = parse_tiers("100")
    minute = 60_000
    rows = [(0, 100.0, 1000.0, False)]  # long, level 99 at t=0
    rows += [(i * minute, 100.0 + 0.01 * i, 0.01, True) for i in range(1, 60)]
    rows += [(60 * minute, 98.0, 0.01, True), (61 * minute, 100.0, 0.01, True)]  # swept at 60 min
    rows += [(100 * minute, 100.0, 0.01, True)]
    m = build(rows, mode="gross_value", threshold=50_000, tiers=one_tier, mmr=0.0)
    times, edges, matrix = m.heatmap()
    row = np.searchsorted(edges, 99.0, side="right") - 1
    alive_cols = np.nonzero(matrix[row] > 0)[0]
    assert alive_cols[0] == 0
    sweep_col = (T0 + 60 * minute - m.col_t0) // m.col_ms
    assert alive_cols[-1] == sweep_col and matrix[row, sweep_col + 1 :].sum() == 0
    assert matrix.sum() == pytest.approx(100_000.0 * (sweep_col + 1))
    assert times.size == matrix.shape[1] + 1 and edges.size == matrix.shape[0] + 1


# --- modes and their edge cases ------------------------------------------------------------------


def _tape(n: int = 50) -> list[tuple[int, float, float, bool]]:
    # Alternating sides, sizes 1..n, flat price: nothing is ever swept.
    return [(i * 100, 100.0, float(i + 1), bool(i % 2)) for i in range(n)]


def test_top_n_picks_the_largest_per_side():
    m = build(_tape(), mode="top_n", threshold=3, model="compat")
    picked = m.selected.sort("amount")
    assert picked.filter(pl.col("side") == "long")["amount"].to_list() == [4500.0, 4700.0, 4900.0]
    assert picked.filter(pl.col("side") == "short")["amount"].to_list() == [4600.0, 4800.0, 5000.0]


def test_top_n_above_the_trade_count_takes_everything():
    m = build(_tape(10), mode="top_n", threshold=1_000)
    assert m.selected.height == 10


def test_portion_takes_the_floor_of_count_times_fraction_per_side():
    m = build(_tape(50), mode="portion", threshold=0.1, model="compat")  # 25 per side -> 2 each
    assert sorted(m.selected["amount"].to_list()) == [4700.0, 4800.0, 4900.0, 5000.0]
    tiny = build(_tape(50), mode="portion", threshold=0.01)  # floor(0.25) = 0: nothing selected
    assert tiny.selected.height == 0 and tiny.bins.height == 0 and tiny.current_price == 100.0


@pytest.mark.parametrize(("n", "portion"), [(1_000, 0.01), (5_000, 0.003), (300, 1.0)])
def test_portion_matches_an_exact_sort(n, portion):
    rng = np.random.default_rng(n)
    rows = [
        (i, 100.0, float(q), bool(b))
        for i, (q, b) in enumerate(zip(rng.lognormal(0, 2, n), rng.random(n) < 0.3, strict=True))
    ]
    m = build(rows, mode="portion", threshold=portion, model="compat")
    for is_maker, side in ((False, "long"), (True, "short")):
        amounts = sorted((100.0 * r[2] for r in rows if r[3] == is_maker), reverse=True)
        k = math.floor(len(amounts) * portion)
        got = sorted(m.selected.filter(pl.col("side") == side)["amount"].to_list(), reverse=True)
        assert got == amounts[:k]


def test_gross_value_threshold_is_inclusive():
    m = build(_tape(10), mode="gross_value", threshold=1_000)  # amounts 100..1000
    assert m.selected["amount"].to_list() == [1_000.0]


def test_an_empty_side_is_fine():
    rows = [(i * 100, 100.0 - i * 0.01, 10.0, False) for i in range(20)]  # buys only
    m = build(rows, mode="top_n", threshold=5, model="compat")
    assert set(m.bins["side"]) == {"long"}
    assert m.document()["active_usd"]["short"] == 0.0
    assert m.summary()["short_usd"].sum() == 0.0


def test_one_trade():
    m = build([(0, 42_000.0, 3.0, False)], mode="top_n", threshold=100, model="compat")
    assert m.trades == 1 and m.current_price == 42_000.0
    assert math.isclose(total(m), 126_000.0 * 4)
    d = build([(0, 42_000.0, 3.0, True)], mode="gross_value", threshold=0)
    assert math.isclose(total(d), 126_000.0)  # default weights sum to 1; nothing after it to sweep


def test_all_levels_on_one_side():
    # A steady rally, then 3% more: every long level stays below, every short level (50x and
    # 100x: 2% and 1% above entry) was squeezed.
    rows = [(i * 1_000, 100.0 * 1.002**i, 50.0, bool(i % 2)) for i in range(400)]
    rows += [(400_000 + i, rows[-1][1] * (1 + 0.001 * i), 0.001, False) for i in range(1, 31)]
    m = build(rows, mode="gross_value", threshold=1.0, tiers=parse_tiers("50,100"))
    assert m.bins.height > 0 and set(m.bins["side"]) == {"long"}
    assert m.summary()["cum_long_usd"].max() == pytest.approx(total(m))


def test_time_window_and_no_trades():
    rows = _tape(10)
    m = build(rows, mode="top_n", threshold=100, start_ms=T0 + 500, end_ms=T0 + 800)
    assert m.trades == 3 and m.selected.height == 3
    with pytest.raises(LiqError, match="no trades"):
        build(rows, mode="top_n", threshold=10, start_ms=T0 + 10_000, end_ms=T0 + 20_000)


def test_microsecond_and_datetime_timestamps_agree():
    rows = _tape(20)
    plain = build(rows, mode="top_n", threshold=2)
    as_datetime = trades(rows).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
    other = build_map(
        as_datetime, MapSpec(mode="top_n", threshold=2), symbol="BTCUSDT", engine="in-memory"
    )
    assert plain.bins.equals(other.bins) and plain.current_ts == other.current_ts


@pytest.mark.parametrize(
    ("mode", "threshold"), [("portion", 0.05), ("top_n", 40), ("gross_value", 900)]
)
def test_engines_and_scan_sharing_agree(mode, threshold):
    rng = np.random.default_rng(9)
    n = 3_000
    walk = 500 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    rows = [
        (i * 37, float(p), float(q), bool(b))
        for i, (p, q, b) in enumerate(
            zip(walk, rng.lognormal(0, 1, n), rng.random(n) < 0.5, strict=True)
        )
    ]
    spec = MapSpec(mode=mode, threshold=threshold)
    base = build_map(trades(rows), spec, symbol="X", engine="streaming")
    assert base.bins.height > 0
    for engine in ("streaming", "in-memory"):
        for shared in (False, True):
            other = build_map(trades(rows), spec, symbol="X", engine=engine, shared_scan=shared)
            assert other.bins.equals(base.bins), (engine, shared)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mode": "biggest"}, "invalid mode"),
        ({"model": "fancy"}, "invalid model"),
        ({"mode": "top_n", "threshold": 2.5}, "whole number"),
        ({"mode": "top_n", "threshold": 0}, "whole number"),
        ({"mode": "portion", "threshold": 1.5}, r"fraction in \(0, 1\]"),
        ({"mode": "portion", "threshold": 0}, r"fraction in \(0, 1\]"),
        ({"mode": "gross_value", "threshold": -1}, ">= 0"),
        ({"bin_size": 0}, "bin size"),
        ({"bin_size": float("nan")}, "bin size"),
        ({"model": "compat", "tiers": parse_tiers("10")}, "fixed tiers"),
        ({"model": "compat", "mmr": 0.01}, "fixed tiers"),
        ({"mmr": 0.2}, "below 1/leverage"),
        ({"start_ms": 5, "end_ms": 5}, "before --end"),
    ],
)
def test_invalid_specs_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        MapSpec(**spec).resolved()


def test_parse_tiers():
    assert parse_tiers("10:3, 25x:1") == (parse_tiers("10:0.75,25:0.25"))
    assert [t.weight for t in parse_tiers("10,20,50,100")] == [0.25] * 4
    for bad in ("", "1:0.5", "10:-1", "ten", "10,10"):
        with pytest.raises(UsageError):
            parse_tiers(bad)
    resolved = MapSpec().resolved()
    assert resolved.tiers == DEFAULT_TIERS and resolved.mmr == DEFAULT_MMR
    assert sum(t.weight for t in DEFAULT_TIERS) == pytest.approx(1.0)


def test_bad_rows_are_counted_and_left_out_in_every_mode():
    rows = [(1_000 * i, 100.0 + i, 1.0 + i, bool(i % 2)) for i in range(40)]
    lf = trades(rows)
    bad = pl.LazyFrame(
        {"ts": [None, T0 + 41_000], "price": [100.0, None], "qty": [1.0, 2.0],
         "is_buyer_maker": [True, None]},
        schema=lf.collect_schema(),
    )  # fmt: skip
    for mode, threshold in (("gross_value", 0.0), ("top_n", 5), ("portion", 0.5)):
        clean = build_map(lf, MapSpec(mode=mode, threshold=threshold), symbol="BTCUSDT")
        dirty = build_map(
            pl.concat([lf, bad]), MapSpec(mode=mode, threshold=threshold), symbol="BTCUSDT"
        )
        assert dirty.skipped_rows == 2 and clean.skipped_rows == 0
        assert dirty.trades == clean.trades == 40
        assert dirty.first_ts == clean.first_ts == T0
        assert dirty.selected.height == clean.selected.height
        assert dirty.largest_trade == pytest.approx(139.0 * 40.0)
