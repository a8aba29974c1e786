"""Pressure score analytics: components at their boundaries, seed snapshots by hand, missing-data
renormalisation, and the Polars history against point computations."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from liqcli.analytics.pressure import (
    COMPONENTS,
    DEFAULT_WEIGHTS,
    RAW_COLUMNS,
    PressureConfig,
    PressureInputs,
    bias_expr,
    level_expr,
    parse_weights,
    pressure_at,
    pressure_history,
    raw_inputs_at,
    score_frame,
)
from liqcli.errors import UsageError

STEP = 300_000  # 5m
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, a multiple of 5m


def components(model: str, **raw) -> dict[str, tuple[float | None, float | None]]:
    """Score one row of raw inputs; unspecified inputs are null."""
    row = {"ts": T0, **dict.fromkeys(RAW_COLUMNS), **raw}
    frame = pl.DataFrame(
        [row],
        schema={"ts": pl.Int64, **dict.fromkeys(RAW_COLUMNS, pl.Float64), "liq_source": pl.String},
    )
    out = score_frame(frame, PressureConfig(model=model)).row(0, named=True)
    return {name: (out[f"{name}_long"], out[f"{name}_short"]) for name in COMPONENTS} | {
        "score": (out["long_score"], out["short_score"])
    }


def approx(*values):
    return pytest.approx(values, abs=1e-9)


def same(a, b) -> bool:
    """Equal to 1e-9 relative for numbers; exactly equal for None and strings."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# --------------------------------------------------------------------------- seed components


@pytest.mark.parametrize(
    ("g", "expected"),
    [
        (1.0, (0.0, 0.0)),
        (1.6, (0.5, 0.0)),
        (2.2, (1.0, 0.0)),  # (2.2 - 1) / 1.2 = 1: the top of the scale
        (3.0, (1.0, 0.0)),  # clamped
        (0.8, (0.0, (1 / 0.8 - 1) / 1.2)),
        (1 / 2.2, (0.0, 1.0)),
    ],
)
def test_seed_crowding(g, expected):
    assert components("seed", g=g)["crowding"] == approx(*expected)


@pytest.mark.parametrize(
    ("t", "expected"),
    [(1.0, (0.0, 0.0)), (1.55, (0.5, 0.0)), (2.1, (1.0, 0.0)), (0.5, (0.0, 1 / 1.1))],
)
def test_seed_top_crowding_uses_the_account_ratio(t, expected):
    comps = components("seed", t_account=t, t_position=5.0)
    assert comps["top_crowding"] == approx(*expected)


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (0.0, (0.0, 0.0)),
        (0.0001, (0.0001 / 0.015, 0.0)),
        (0.015, (1.0, 0.0)),
        (-0.0075, (0.0, 0.5)),
    ],
)
def test_seed_funding(f, expected):
    assert components("seed", funding_rate=f)["funding"] == approx(*expected)


@pytest.mark.parametrize(
    ("d_oi", "g", "expected"),
    [
        (0.125, 1.5, (0.5, 0.0)),  # longs dominate: rising OI is long pressure only
        (-0.125, 1.5, (0.0, 0.5)),  # ... and falling OI counts for the short side
        (0.125, 0.8, (0.5, 0.5)),  # shorts dominate: rising OI counts for both
        (0.30, 0.8, (1.0, 1.0)),
        (-0.30, 0.8, (0.0, 0.0)),
    ],
)
def test_seed_oi_trend(d_oi, g, expected):
    assert components("seed", oi_change=d_oi, g=g)["oi_trend"] == approx(*expected)


def test_seed_force_components():
    comps = components("seed", long_liq_usd=2e6, short_liq_usd=6e6)
    assert comps["force_share"] == approx(0.25 / 0.7, 1.0)  # 0.75 / 0.7 clamps
    assert comps["force_volume"] == approx(0.5, 1.0)
    quiet = components("seed", long_liq_usd=0.0, short_liq_usd=0.0)
    assert quiet["force_share"] == approx(0.0, 0.0)


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        (1.0, (0.2 / 0.7, 0.2 / 0.7)),
        (1.5, (0.0, 0.7 / 0.7)),
        (0.8, ((1.25 - 0.8) / 0.7, 0.0)),
        (1 / 1.5, (1.0, 0.0)),
    ],
)
def test_seed_taker_pressure(r, expected):
    assert components("seed", taker_ratio=r)["taker_pressure"] == approx(*expected)


@pytest.mark.parametrize(
    ("roc4", "expected"), [(0.01, 0.0), (-0.01, 0.5), (-0.02, 1.0), (-0.05, 1.0)]
)
def test_seed_oi_velocity_same_on_both_sides(roc4, expected):
    assert components("seed", oi_roc4=roc4)["oi_velocity"] == approx(expected, expected)


def test_seed_defaults_for_missing_inputs():
    # Ratio 1.0, funding 0, no OI, no liquidations: only the taker term (1 - 0.8) / 0.7 is left.
    comps = components("seed")
    assert comps["score"] == approx(10 * 0.2 / 0.7, 10 * 0.2 / 0.7)


# --------------------------------------------------------------------------- default components


def test_default_crowding_relative_to_the_symbols_norm():
    norm = math.log(1.8)
    assert components("default", g=1.8 * 1.5, g_base=norm)["crowding"] == approx(1.0, 0.0)
    assert components("default", g=1.8 * math.sqrt(1.5), g_base=norm)["crowding"] == approx(
        0.5, 0.0
    )
    assert components("default", g=1.8, g_base=norm)["crowding"] == approx(0.0, 0.0)
    assert components("default", g=1.8 / math.sqrt(1.5), g_base=norm)["crowding"] == approx(
        0.0, 0.5
    )
    assert components("default", g=1.8)["crowding"] == (None, None)  # no norm: missing


def test_default_top_crowding_uses_the_position_ratio():
    comps = components("default", t_position=1.5, t_base=0.0, t_account=0.5)
    assert comps["top_crowding"] == approx(1.0, 0.0)
    assert components("default", t_account=0.5)["top_crowding"] == (None, None)


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (0.0001, (0.2, 0.0)),  # the neutral +0.01% reads low, not zero
        (0.0005, (1.0, 0.0)),
        (0.002, (1.0, 0.0)),
        (-0.00015, (0.0, 0.5)),
        (-0.0003, (0.0, 1.0)),
    ],
)
def test_default_funding(f, expected):
    assert components("default", funding_rate=f)["funding"] == approx(*expected)


@pytest.mark.parametrize(
    ("d_oi", "d_price", "expected"),
    [
        (0.015, 0.01, (0.5, 0.0)),  # OI up with price up: longs piling in
        (0.015, -0.01, (0.0, 0.5)),  # OI up with price down: shorts piling in
        (0.03, 0.002, (1.0, 0.0)),
        (-0.02, 0.01, (0.0, 0.0)),  # deleveraging
    ],
)
def test_default_oi_trend(d_oi, d_price, expected):
    assert components("default", oi_change=d_oi, price_change=d_price)["oi_trend"] == approx(
        *expected
    )


def test_default_oi_trend_scale_grows_with_the_lookback_time():
    raw = {"ts": T0, **dict.fromkeys(RAW_COLUMNS), "oi_change": 0.03, "price_change": 0.01}
    frame = pl.DataFrame(
        [raw],
        schema={"ts": pl.Int64, **dict.fromkeys(RAW_COLUMNS, pl.Float64), "liq_source": pl.String},
    )
    four_times = score_frame(frame, PressureConfig(model="default", lookback=120)).row(
        0, named=True
    )
    assert four_times["oi_trend_long"] == pytest.approx(0.5)  # full at 3% x sqrt(4)


def test_default_force_components_scale_with_open_interest():
    value = 1e9  # prior: 1e5 per side
    comps = components(
        "default", long_liq_usd=1.7e6 - 1e5, short_liq_usd=0.3e6 - 1e5, oi_value=value
    )
    # share (1.6e6 + 1e5) / (1.8e6 + 2e5) = 0.85 -> full long
    assert comps["force_share"] == approx(1.0, 0.0)
    assert comps["force_volume"] == approx(1.6e6 / 2e6, 0.2e6 / 2e6)
    tiny = components("default", long_liq_usd=500.0, short_liq_usd=0.0, oi_value=value)
    assert tiny["force_share"][0] < 0.01  # one small print is no dominance
    quiet = components("default", long_liq_usd=0.0, short_liq_usd=0.0, oi_value=value)
    assert quiet["force_share"] == approx(0.0, 0.0)
    assert components("default", oi_value=value)["force_share"] == (None, None)


@pytest.mark.parametrize(
    ("r", "expected"),
    [(1.0, (0.0, 0.0)), (1.5, (0.0, 1.0)), (math.sqrt(1.5), (0.0, 0.5)), (1 / 1.5, (1.0, 0.0))],
)
def test_default_taker_pressure(r, expected):
    assert components("default", taker_ratio=r)["taker_pressure"] == approx(*expected)


@pytest.mark.parametrize(
    ("roc4", "price_roc4", "expected"),
    [
        (-0.005, -0.002, (0.5, 0.0)),  # OI falls while price falls: longs liquidated
        (-0.005, 0.002, (0.0, 0.5)),
        (-0.02, -0.001, (1.0, 0.0)),
        (0.01, -0.01, (0.0, 0.0)),
    ],
)
def test_default_oi_velocity(roc4, price_roc4, expected):
    assert components("default", oi_roc4=roc4, price_roc4=price_roc4)["oi_velocity"] == approx(
        *expected
    )


def test_default_renormalises_over_present_components():
    # crowding full (18), funding 0.2 (15); liquidations missing -> 78 points of weight remain.
    comps = components(
        "default",
        g=1.5,
        g_base=0.0,
        t_position=1.0,
        t_base=0.0,
        funding_rate=0.0001,
        oi_change=0.0,
        price_change=0.0,
        taker_ratio=1.0,
        oi_roc4=0.0,
        price_roc4=0.0,
        oi_value=1e9,
    )
    assert comps["force_share"] == (None, None)
    assert comps["force_volume"] == (None, None)
    assert comps["score"] == approx(100 * (18 * 1.0 + 15 * 0.2) / 78, 0.0)


# --------------------------------------------------------------------------- levels, bias, weights


def test_levels_at_their_boundaries():
    scores = [100.0, 85.0, 84.99, 65.0, 64.99, 45.0, 44.99, 25.0, 24.99, 0.0, None]
    levels = (
        pl.DataFrame({"s": scores})
        .select(level_expr(pl.col("s")).alias("level"))["level"]
        .to_list()
    )
    assert levels == [
        "EXTREME", "EXTREME", "HIGH", "HIGH", "MEDIUM", "MEDIUM", "LOW", "LOW", "VERY_LOW", "VERY_LOW", None,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("long_s", "short_s", "bias"),
    [
        (65.0, 65.0, "BOTH_HIGH"),
        (25.0, 25.0, "NEUTRAL"),
        (25.0, 5.0, "NEUTRAL"),
        (40.0, 30.1, "BALANCED"),
        (40.0, 30.0, "SHORT"),  # |difference| = 10 is no longer balanced
        (30.0, 64.0, "LONG"),
        (90.0, 64.9, "SHORT"),
    ],
)
def test_bias(long_s, short_s, bias):
    frame = pl.DataFrame({"l": [long_s], "s": [short_s]})
    assert frame.select(bias_expr(pl.col("l"), pl.col("s")).alias("bias"))["bias"][0] == bias


def test_parse_weights():
    assert parse_weights(None) == DEFAULT_WEIGHTS
    weights = parse_weights("crowding=20, funding=0,oi_velocity=2.5")
    assert weights == {**DEFAULT_WEIGHTS, "crowding": 20.0, "funding": 0.0, "oi_velocity": 2.5}
    for bad, message in [
        ("crowdin=5", "unknown weight 'crowdin'"),
        ("crowding=-1", "must be a number >= 0"),
        ("crowding=abc", "not a number"),
        ("crowding", "expected NAME=NUMBER"),
        ("crowding=nan", "must be a number >= 0"),
        (",".join(f"{n}=0" for n in COMPONENTS), "at least one weight must be positive"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_weights(bad)


def test_custom_weights_change_the_score():
    config = PressureConfig(
        model="seed", weights={**dict.fromkeys(COMPONENTS, 0.0), "crowding": 1.0}
    )
    frame = pl.DataFrame(
        [{"ts": T0, **dict.fromkeys(RAW_COLUMNS), "g": 1.6}],
        schema={"ts": pl.Int64, **dict.fromkeys(RAW_COLUMNS, pl.Float64), "liq_source": pl.String},
    )
    assert score_frame(frame, config)["long_score"][0] == pytest.approx(50.0)


# --------------------------------------------------------------------------- snapshots from series


def ratio_frame(values, start=T0) -> pl.DataFrame:
    ts = [start + i * STEP for i in range(len(values))]
    return pl.DataFrame({"ts": ts, "long_short_ratio": values}).with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC"))
    )


def seed_series() -> PressureInputs:
    """40 steps. The seed reads the last 30 OI points (rows 10-39) and the last ratio values."""
    # Rows 0-9 differ (OI 120, price 1100) so that using them would change every OI number.
    oi = [120.0] * 10 + [100.0] * 24 + [106.0, 112.0, 111.0, 111.0, 110.5, 110.0]
    price = [1100.0] * 10 + [1000.0] * 26 + [990.0, 990.0, 990.3, 1000.0]
    ts = [T0 + i * STEP for i in range(len(oi))]
    return PressureInputs(
        global_account=ratio_frame([1.0] * 39 + [1.6]),
        top_account=ratio_frame([2.0] * 39 + [0.5]),
        top_position=ratio_frame([3.0] * 40),
        taker=pl.DataFrame({"ts": ts, "buy_sell_ratio": [1.0] * 39 + [0.5]}),
        open_interest=pl.DataFrame(
            {
                "ts": ts,
                "open_interest": oi,
                "open_interest_value": [o * p for o, p in zip(oi, price, strict=True)],
            }
        ),
        funding=pl.DataFrame(
            {"ts": [T0 - 8 * 3_600_000, T0 + 30 * STEP], "funding_rate": [-0.01, 0.003]}
        ),
    )


def test_seed_snapshot_by_hand():
    at = T0 + 39 * STEP
    snap = pressure_at(seed_series(), PressureConfig(model="seed"), at)
    # ΔOI = (110 - 100) / 100 = 0.1; ROC4 = (110 - 112) / 112.
    assert snap.raw["oi_change"] == pytest.approx(0.1)
    assert snap.raw["oi_roc4"] == pytest.approx(-2 / 112)
    # Falling-OI estimate over rows 10-39: 112->111 with price -1% -> 1 x 990 to longs;
    # 111->110.5 at +0.03% -> nobody; 110.5->110 at +0.98% -> 0.5 x 1000 to shorts; halved.
    assert snap.raw["liq_source"] == "estimated"
    assert (snap.raw["long_liq_usd"], snap.raw["short_liq_usd"]) == approx(495.0, 250.0)
    c = {name: (comp.long, comp.short) for name, comp in snap.components.items()}
    assert c["crowding"] == approx(0.5, 0.0)  # g = 1.6
    assert c["top_crowding"] == approx(0.0, 1 / 1.1)  # account ratio 0.5 (position ratio unused)
    assert c["funding"] == approx(0.2, 0.0)  # 0.003 / 0.015, the latest settlement
    assert c["oi_trend"] == approx(0.4, 0.0)  # g >= 1 and OI rose: short side 0
    assert c["force_share"] == approx((495 / 745) / 0.7, (250 / 745) / 0.7)
    assert c["force_volume"] == approx(495 / 4e6, 250 / 4e6)
    assert c["taker_pressure"] == approx(1.0, 0.0)  # r = 0.5: (2 - 0.8) / 0.7 clamps
    velocity = (2 / 112) / 0.02
    assert c["oi_velocity"] == approx(velocity, velocity)
    long_score = (
        18 * 0.5 + 15 * 0.2 + 12 * 0.4 + 10 * (495 / 745) / 0.7 + 12 * 495 / 4e6 + 10 + 8 * velocity
    )
    short_score = 15 / 1.1 + 10 * (250 / 745) / 0.7 + 12 * 250 / 4e6 + 8 * velocity
    assert snap.long_score == pytest.approx(long_score)  # 43.44
    assert snap.short_score == pytest.approx(short_score)  # 25.57
    assert (snap.long_level, snap.short_level) == ("LOW", "LOW")
    assert snap.bias == "SHORT"
    assert snap.bias_confidence == pytest.approx((long_score - short_score) / 100)
    assert snap.missing == []


def test_seed_uses_stored_liquidations_when_they_cover_the_window():
    base = seed_series()
    at = T0 + 39 * STEP
    liq = pl.DataFrame(
        {
            "ts": [
                T0,
                at - 30 * STEP,
                at - 30 * STEP + 1,
                at,
            ],  # the 2nd is just outside the window
            "side": ["long", "long", "short", "long"],
            "notional_usd": [9e9, 9e9, 1e6, 2e6],
        }
    )
    snap = pressure_at(
        PressureInputs(**{**base.__dict__, "liquidations": liq}), PressureConfig(model="seed"), at
    )
    assert snap.raw["liq_source"] == "stored"
    assert (snap.raw["long_liq_usd"], snap.raw["short_liq_usd"]) == approx(2e6, 1e6)
    assert snap.components["force_volume"].long == pytest.approx(0.5)


def test_default_marks_liquidations_missing_and_renormalises():
    inputs = seed_series()
    at = T0 + 39 * STEP
    config = PressureConfig(model="default")
    snap = pressure_at(inputs, config, at)
    assert snap.missing == ["force_share", "force_volume"]
    assert snap.raw["liq_source"] is None
    assert snap.weight_used == pytest.approx(78.0)
    assert snap.renormalised
    present = [c for c in snap.components.values() if not c.missing]
    assert sum(c.effective_weight for c in present) == pytest.approx(100.0)
    expected = sum(c.weight * c.long for c in present) / 78 * 100
    assert snap.long_score == pytest.approx(expected)
    # Recording that began inside the window does not cover it either.
    late = pl.DataFrame({"ts": [at - 5 * STEP], "side": ["long"], "notional_usd": [1e6]})
    snap = pressure_at(PressureInputs(**{**inputs.__dict__, "liquidations": late}), config, at)
    assert snap.missing == ["force_share", "force_volume"]
    # Recording that covers it counts, even with nothing liquidated inside the window.
    early = pl.DataFrame({"ts": [at - 40 * STEP], "side": ["long"], "notional_usd": [1e6]})
    snap = pressure_at(PressureInputs(**{**inputs.__dict__, "liquidations": early}), config, at)
    assert snap.missing == []
    assert (snap.raw["long_liq_usd"], snap.raw["short_liq_usd"]) == (0.0, 0.0)


def test_default_treats_stale_series_as_missing():
    inputs = seed_series()
    config = PressureConfig(model="default")
    # 4 steps after the last row: beyond the 3-step staleness limit, funding (8 h) still fresh.
    raw = raw_inputs_at(inputs, config, T0 + 43 * STEP)
    assert raw["g"] is None and raw["taker_ratio"] is None and raw["oi"] is None
    assert raw["funding_rate"] == 0.003
    seed_raw = raw_inputs_at(inputs, PressureConfig(model="seed"), T0 + 43 * STEP)
    assert seed_raw["g"] == 1.6  # the seed just takes the last value
    empty = pressure_at(PressureInputs(), config, T0)
    assert empty.long_score is None and empty.bias is None
    assert empty.missing == list(COMPONENTS)


# --------------------------------------------------------------------------- history == points


def random_inputs(rng: np.random.Generator, steps: int) -> PressureInputs:
    ts = T0 + np.arange(steps) * STEP

    def walk(level: float, sigma: float) -> np.ndarray:
        return level * np.exp(np.cumsum(rng.normal(0, sigma, steps)))

    def drop_rows(df: pl.DataFrame) -> pl.DataFrame:
        # Holes, including a run longer than the staleness limit.
        keep = rng.random(df.height) > 0.1
        keep[steps // 2 : steps // 2 + 6] = False
        return df.filter(pl.Series(keep)).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))

    def ratio(level: float) -> pl.DataFrame:
        return drop_rows(pl.DataFrame({"ts": ts, "long_short_ratio": walk(level, 0.02)}))

    oi = walk(5e4, 0.004)
    price = walk(6e4, 0.003)
    n_liq = steps * 3
    liq_ts = np.sort(rng.integers(ts[0] + 40 * STEP, ts[-1], n_liq))
    funding_ts = ts[::96]
    return PressureInputs(
        global_account=ratio(1.7),
        top_account=ratio(1.1),
        top_position=ratio(0.9),
        taker=drop_rows(
            pl.DataFrame({"ts": ts, "buy_sell_ratio": np.exp(rng.normal(0, 0.2, steps))})
        ),
        open_interest=drop_rows(
            pl.DataFrame({"ts": ts, "open_interest": oi, "open_interest_value": oi * price})
        ),
        funding=pl.DataFrame(
            {"ts": funding_ts, "funding_rate": rng.normal(1e-4, 2e-4, len(funding_ts))}
        ),
        liquidations=pl.DataFrame(
            {
                "ts": liq_ts,
                "side": rng.choice(["long", "short"], n_liq),
                "notional_usd": rng.exponential(3e4, n_liq),
            }
        ),
    )


@pytest.mark.parametrize("model", ["default", "seed"])
def test_history_equals_point_computations(model):
    rng = np.random.default_rng(7)
    steps = 600
    inputs = random_inputs(rng, steps)
    config = PressureConfig(model=model, lookback=30, baseline=100)
    start, end = T0, T0 + (steps + 5) * STEP  # runs past the data: stale tail
    history = pressure_history(inputs, config, start, end)
    assert history.height == steps + 6
    assert history["ts"].is_sorted()
    sampled = sorted(
        {0, 3, 29, 30, 45, steps // 2 + 4, steps - 1, steps + 5, *rng.integers(0, steps, 25)}
    )
    compared = ["long_score", "short_score", "long_level", "short_level", "bias", "weight_used"]
    for step in sampled:
        at = T0 + int(step) * STEP
        row = history.filter(pl.col("ts") == at).row(0, named=True)
        snap = pressure_at(inputs, config, at)
        for key in RAW_COLUMNS:
            assert same(row[key], snap.raw[key]), (step, key, row[key], snap.raw[key])
        for key in compared:
            assert same(row[key], getattr(snap, key)), (step, key)
        for name, comp in snap.components.items():
            assert same(row[f"{name}_long"], comp.long), (step, name)
            assert same(row[f"{name}_short"], comp.short), (step, name)
    # The comparison covered missing and present liquidation windows and stale steps.
    assert history["liq_source"].null_count() > 0 or model == "seed"
    assert history["long_score"].null_count() == 0


def test_default_components_are_not_stuck_at_zero_in_a_normal_market():
    rng = np.random.default_rng(3)
    inputs = random_inputs(rng, 2000)
    history = pressure_history(inputs, PressureConfig(model="default"), T0, T0 + 1999 * STEP)
    means = history.select(
        [pl.col(f"{n}_long").mean() for n in COMPONENTS]
        + [pl.col(f"{n}_short").mean() for n in COMPONENTS]
    ).row(0, named=True)
    assert all(value and value > 0.01 for value in means.values()), means
