"""Liquidation-pressure score: how exposed longs and shorts are to forced liquidation, 0-100 per side.

Two models over the same eight components (SEED-SYSTEMS.md "Liquidation-pressure score"):

- ``seed`` reproduces the replaced tool exactly: last value of each ratio series and of funding
  (missing ratio -> 1.0, missing funding -> 0), ΔOI as a fraction over the last ``lookback`` OI
  points, ROC4 over the last five, the seed's scales, and -- when no liquidations are stored -- its
  estimate of liquidation totals from falling open interest.
- ``default`` fixes the seed's defects: liquidations come from the stored ``liquidations`` dataset
  (all venues, over the lookback window); the top-trader POSITION ratio is used; every raw input is
  scaled by the calibrated constants below so that normal markets give non-zero readings; inputs
  that are missing or stale make their component *missing* and the weights are renormalised over
  the rest (reported, never estimated).

The computation has two halves so that they can be checked against each other:

1. raw inputs per step: :func:`raw_inputs_at` (one instant, plain Python over the tail of each
   series) and :func:`raw_inputs_history` (every period step, Polars joins/rolling windows);
2. :func:`score_frame`: components, scores, levels and bias as Polars expressions over a frame of
   raw inputs, shared by both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from liqcli.core.timeutil import period_ms
from liqcli.errors import UsageError

Model = Literal["default", "seed"]
MODELS: tuple[str, ...] = ("default", "seed")

# The seed's weights; they sum to 100, so a full reading on every component scores 100.
DEFAULT_WEIGHTS: dict[str, float] = {
    "crowding": 18.0,
    "top_crowding": 15.0,
    "funding": 15.0,
    "oi_trend": 12.0,
    "force_share": 10.0,
    "force_volume": 12.0,
    "taker_pressure": 10.0,
    "oi_velocity": 8.0,
}
COMPONENTS: tuple[str, ...] = tuple(DEFAULT_WEIGHTS)

LEVELS: tuple[tuple[float, str], ...] = (
    (85.0, "EXTREME"),
    (65.0, "HIGH"),
    (45.0, "MEDIUM"),
    (25.0, "LOW"),
)
LOWEST_LEVEL = "VERY_LOW"
LEVEL_LABELS: dict[str, str] = {
    "EXTREME": "liquidation cascade likely",
    "HIGH": "heavy liquidation risk",
    "MEDIUM": "elevated risk",
    "LOW": "mild risk",
    "VERY_LOW": "calm",
}
BIAS_TEXT: dict[str, str] = {
    "BOTH_HIGH": "leverage crowded on both sides: violent moves; low leverage only",
    "NEUTRAL": "weak signal, background only",
    "BALANCED": "use other indicators",
    "SHORT": "careful chasing longs, prefer shorts",
    "LONG": "careful chasing shorts, prefer longs",
}

# ---- default-model calibration. Each constant is the raw reading that makes a component full (1.0);
# chosen from typical Binance USDT-perp behaviour so ordinary markets land in 0.1-0.5.
REFERENCE_LOOKBACK_MIN = 150.0  # 30 x 5m: the horizon the constants below are quoted for
CROWDING_FULL_LOG = math.log(1.5)  # account long/short ratio 1.5x its own 7-day norm
TOP_CROWDING_FULL_LOG = math.log(1.5)  # top-trader position ratio 1.5x its own norm
FUNDING_LONG_FULL = 0.0005  # +0.05% per funding interval (the neutral rate is +0.01%)
FUNDING_SHORT_FULL = 0.0003  # -0.03% per interval: negative funding is rarer and sharper
OI_TREND_FULL = 0.03  # +3% open interest over 150 min, scaled by sqrt(lookback time)
FORCE_SHARE_FULL = 0.35  # one side takes 85% of liquidated notional (0.5 + 0.35)
FORCE_SHARE_PRIOR = 1e-4  # pseudo-notional per side, x OI value: a few small prints stay ~50/50
FORCE_VOLUME_FULL = 0.002  # liquidations worth 0.2% of OI value over 150 min, linear in time
TAKER_FULL_LOG = math.log(1.5)  # one side's taker volume 1.5x the other's
OI_VELOCITY_FULL = 0.01  # -1% open interest over 4 x 5m steps, scaled by sqrt(step length)
BASELINE_MS = 7 * 86_400_000  # crowding norms: mean log ratio over the last 7 days of steps
STALE_STEPS = 3  # a period series older than this many steps is stale
FUNDING_STALE_MS = 9 * 3_600_000  # funding settles at most every 8 h
LIQ_STALE_MS = 86_400_000  # no stored liquidation for a day: `liq watch` was not recording

# ---- seed constants (SEED-SYSTEMS.md), reproduced as they were.
SEED_PRICE_MOVE = 0.0005  # 0.05%: the price move that attributes an OI drop to one side
SEED_ESTIMATE_FACTOR = 0.5

RAW_COLUMNS: tuple[str, ...] = (
    "g",  # global account long/short ratio, last value
    "g_base",  # default: mean ln(g) over the baseline window
    "t_account",  # top-trader account ratio, last value (seed)
    "t_position",  # top-trader position ratio, last value (default)
    "t_base",  # default: mean ln(t_position) over the baseline window
    "funding_rate",  # last settled funding rate
    "taker_ratio",  # taker buy/sell volume ratio, last value
    "oi",  # last open interest (base units)
    "oi_value",  # last open interest value (USD)
    "oi_change",  # (last - first) / first over the lookback OI points
    "oi_roc4",  # (oi[-1] - oi[-5]) / oi[-5]
    "price_change",  # same over the lookback, price = OI value / OI
    "price_roc4",
    "long_liq_usd",  # liquidated long notional over the lookback
    "short_liq_usd",
    "liq_source",  # "stored" | "estimated" (seed, from falling OI) | null (missing)
)


@dataclass(frozen=True)
class PressureConfig:
    model: Model = "default"
    period: str = "5m"
    lookback: int = 30  # steps
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    baseline: int | None = None  # steps for the crowding norms; default 7 days

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"invalid model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.lookback < 5:
            raise UsageError(
                f"invalid lookback {self.lookback}: at least 5 steps (ROC4 needs five)"
            )
        period_ms(self.period)  # validates

    @property
    def period_ms(self) -> int:
        return period_ms(self.period)

    @property
    def baseline_steps(self) -> int:
        return self.baseline or max(self.lookback, BASELINE_MS // self.period_ms)

    @property
    def window_ms(self) -> int:
        return self.lookback * self.period_ms

    @property
    def stale_ms(self) -> int:
        return STALE_STEPS * self.period_ms


@dataclass(frozen=True)
class PressureInputs:
    """Stored series for one symbol and period, each ``None`` when absent. Frames carry ``ts``
    (Datetime or Int64 ms) and at least the columns named below; any order."""

    global_account: pl.DataFrame | None = None  # long_short_ratio
    top_account: pl.DataFrame | None = None  # long_short_ratio
    top_position: pl.DataFrame | None = None  # long_short_ratio
    taker: pl.DataFrame | None = None  # buy_sell_ratio
    open_interest: pl.DataFrame | None = None  # open_interest, open_interest_value
    funding: pl.DataFrame | None = None  # funding_rate
    liquidations: pl.DataFrame | None = None  # side (long|short), notional_usd; all venues
    # When recording began, if earlier than the first row given (a caller that loads a time range).
    liquidations_since: int | None = None

    def liquidation_start(self) -> int | None:
        if self.liquidations is None or self.liquidations.height == 0:
            return None
        first = _ms(self.liquidations)["ts"][0]
        return first if self.liquidations_since is None else min(first, self.liquidations_since)


def parse_weights(text: str | None) -> dict[str, float]:
    """``"crowding=18,funding=5"`` -> the default weights with those replaced."""
    weights = dict(DEFAULT_WEIGHTS)
    if not text:
        return weights
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"invalid --weights entry {part.strip()!r}: expected NAME=NUMBER")
        if name not in DEFAULT_WEIGHTS:
            raise UsageError(f"unknown weight {name!r}: choose from {', '.join(COMPONENTS)}")
        try:
            number = float(value)
        except ValueError:
            raise UsageError(
                f"invalid weight {part.strip()!r}: {value.strip()!r} is not a number"
            ) from None
        if not math.isfinite(number) or number < 0:
            raise UsageError(f"invalid weight {part.strip()!r}: must be a number >= 0")
        weights[name] = number
    if sum(weights.values()) <= 0:
        raise UsageError("invalid --weights: at least one weight must be positive")
    return weights


# --------------------------------------------------------------------------- raw inputs


def _ms(df: pl.DataFrame) -> pl.DataFrame:
    """Sorted by ``ts`` as Int64 ms (stored frames have Datetime)."""
    if df.schema["ts"].is_temporal():
        df = df.with_columns(pl.col("ts").dt.epoch("ms"))
    return df.sort("ts")


def _upto(df: pl.DataFrame | None, at: int) -> pl.DataFrame | None:
    if df is None:
        return None
    out = _ms(df).filter(pl.col("ts") <= at)
    return out if out.height else None


def _last(df: pl.DataFrame | None, column: str, at: int, stale_ms: int | None) -> float | None:
    rows = _upto(df, at)
    if rows is None or (stale_ms is not None and rows["ts"][-1] < at - stale_ms):
        return None
    return float(rows[column][-1])


def _seed_liquidation_estimate(oi: np.ndarray, value: np.ndarray) -> tuple[float, float]:
    """The seed's guess: each OI drop x price goes to the side the price moved against, halved."""
    long_usd = short_usd = 0.0
    for i in range(1, len(oi)):
        if oi[i] >= oi[i - 1]:
            continue
        price_prev, price = value[i - 1] / oi[i - 1], value[i] / oi[i]
        amount = (oi[i - 1] - oi[i]) * price
        move = (price - price_prev) / price_prev
        if move < -SEED_PRICE_MOVE:
            long_usd += amount
        elif move > SEED_PRICE_MOVE:
            short_usd += amount
    return long_usd * SEED_ESTIMATE_FACTOR, short_usd * SEED_ESTIMATE_FACTOR


def _liquidations_covered(
    liq: pl.DataFrame | None, since: int | None, at: int, window_ms: int
) -> bool:
    """Whether stored liquidations can be trusted for (at - window, at]. The store keeps no record
    of when ``liq watch`` ran, so: recording must have started before the window and something
    must have been recorded in the day before ``at``."""
    if liq is None or since is None:
        return False
    before = _ms(liq).filter(pl.col("ts") <= at)
    return (
        since <= at - window_ms
        and before.height > 0
        and before["ts"][-1] >= at - window_ms - LIQ_STALE_MS
    )


def raw_inputs_at(inputs: PressureInputs, config: PressureConfig, at: int) -> dict[str, Any]:
    """Raw inputs at instant ``at`` (ms), from the data at or before it."""
    seed = config.model == "seed"
    stale = None if seed else config.stale_ms
    raw: dict[str, Any] = dict.fromkeys(RAW_COLUMNS)
    raw["g"] = _last(inputs.global_account, "long_short_ratio", at, stale)
    raw["t_account"] = _last(inputs.top_account, "long_short_ratio", at, stale)
    raw["t_position"] = _last(inputs.top_position, "long_short_ratio", at, stale)
    raw["taker_ratio"] = _last(inputs.taker, "buy_sell_ratio", at, stale)
    raw["funding_rate"] = _last(
        inputs.funding, "funding_rate", at, None if seed else FUNDING_STALE_MS
    )
    for value_key, base_key, frame in (
        ("g", "g_base", inputs.global_account),
        ("t_position", "t_base", inputs.top_position),
    ):
        rows = _upto(frame, at)
        if raw[value_key] is not None and rows is not None:
            tail = rows["long_short_ratio"].to_numpy()[-config.baseline_steps :]
            raw[base_key] = float(np.mean(np.log(tail)))

    oi_rows = _upto(inputs.open_interest, at)
    if oi_rows is not None and (seed or oi_rows["ts"][-1] >= at - config.stale_ms):
        tail = oi_rows.tail(config.lookback)
        oi = tail["open_interest"].to_numpy()
        value = tail["open_interest_value"].to_numpy()
        price = value / oi
        raw["oi"], raw["oi_value"] = float(oi[-1]), float(value[-1])
        raw["oi_change"] = float((oi[-1] - oi[0]) / oi[0])
        raw["price_change"] = float((price[-1] - price[0]) / price[0])
        if len(oi) >= 5:
            raw["oi_roc4"] = float((oi[-1] - oi[-5]) / oi[-5])
            raw["price_roc4"] = float((price[-1] - price[-5]) / price[-5])

    since = inputs.liquidation_start()
    if _liquidations_covered(inputs.liquidations, since, at, config.window_ms):
        window = _ms(inputs.liquidations).filter(
            (pl.col("ts") > at - config.window_ms) & (pl.col("ts") <= at)
        )
        raw["long_liq_usd"] = float(window.filter(pl.col("side") == "long")["notional_usd"].sum())
        raw["short_liq_usd"] = float(window.filter(pl.col("side") == "short")["notional_usd"].sum())
        raw["liq_source"] = "stored"
    elif seed and oi_rows is not None:
        tail = oi_rows.tail(config.lookback)
        long_usd, short_usd = _seed_liquidation_estimate(
            tail["open_interest"].to_numpy(), tail["open_interest_value"].to_numpy()
        )
        raw["long_liq_usd"], raw["short_liq_usd"] = long_usd, short_usd
        raw["liq_source"] = "estimated"
    return raw


def _step_grid(start: int, end: int, step: int) -> pl.DataFrame:
    first = -(-start // step) * step  # steps sit on multiples of the period, like Binance's
    return pl.DataFrame({"ts": pl.int_range(first, end + 1, step, dtype=pl.Int64, eager=True)})


def _asof(grid: pl.DataFrame, right: pl.DataFrame, tolerance: int | None) -> pl.DataFrame:
    return grid.join_asof(right, on="ts", strategy="backward", tolerance=tolerance)


def _last_series(
    grid: pl.DataFrame, frame: pl.DataFrame | None, column: str, alias: str, tolerance: int | None
) -> pl.DataFrame:
    if frame is None or frame.height == 0:
        return grid.with_columns(pl.lit(None, pl.Float64).alias(alias))
    right = _ms(frame).select("ts", pl.col(column).cast(pl.Float64).alias(alias))
    return _asof(grid, right, tolerance)


def _baseline(
    grid: pl.DataFrame, frame: pl.DataFrame | None, alias: str, steps: int, tolerance: int | None
) -> pl.DataFrame:
    if frame is None or frame.height == 0:
        return grid.with_columns(pl.lit(None, pl.Float64).alias(alias))
    right = _ms(frame).select(
        "ts", pl.col("long_short_ratio").log().rolling_mean(steps, min_samples=1).alias(alias)
    )
    return _asof(grid, right, tolerance)


def _oi_features(
    grid: pl.DataFrame, frame: pl.DataFrame | None, config: PressureConfig
) -> pl.DataFrame:
    names = (
        "oi",
        "oi_value",
        "oi_change",
        "oi_roc4",
        "price_change",
        "price_roc4",
        "est_long",
        "est_short",
    )
    if frame is None or frame.height == 0:
        return grid.with_columns(pl.lit(None, pl.Float64).alias(n) for n in names)
    n = config.lookback
    oi, value = pl.col("open_interest"), pl.col("open_interest_value")
    price = value / oi
    # Windows are the last `lookback` OI rows (not a time span), like the seed; before the series
    # has that many rows the window starts at its first row.
    oi_first = oi.shift(n - 1).fill_null(oi.first())
    price_first = price.shift(n - 1).fill_null(price.first())
    drop = oi.shift(1) - oi
    move = price / price.shift(1) - 1
    amount = pl.when(drop > 0).then(drop * price).otherwise(0.0)
    est_long = pl.when(move < -SEED_PRICE_MOVE).then(amount).otherwise(0.0)
    est_short = pl.when(move > SEED_PRICE_MOVE).then(amount).otherwise(0.0)
    right = _ms(frame).select(
        "ts",
        oi.alias("oi"),
        value.alias("oi_value"),
        ((oi - oi_first) / oi_first).alias("oi_change"),
        ((oi - oi.shift(4)) / oi.shift(4)).alias("oi_roc4"),
        ((price - price_first) / price_first).alias("price_change"),
        ((price - price.shift(4)) / price.shift(4)).alias("price_roc4"),
        (est_long.rolling_sum(n - 1, min_samples=1) * SEED_ESTIMATE_FACTOR).alias("est_long"),
        (est_short.rolling_sum(n - 1, min_samples=1) * SEED_ESTIMATE_FACTOR).alias("est_short"),
    )
    return _asof(grid, right, None if config.model == "seed" else config.stale_ms)


def _liquidation_sums(
    grid: pl.DataFrame, inputs: PressureInputs, config: PressureConfig
) -> pl.DataFrame:
    """Stored long/short liquidated notional over (ts - window, ts] per step, null where the
    store does not cover the window (see :func:`_liquidations_covered`)."""
    step, window = config.period_ms, config.window_ms
    liq, since = inputs.liquidations, inputs.liquidation_start()
    if liq is None or since is None:
        return grid.with_columns(
            pl.lit(None, pl.Float64).alias("long_liq_usd"),
            pl.lit(None, pl.Float64).alias("short_liq_usd"),
        )
    liq = _ms(liq)
    # Each liquidation counts toward the step that closes its period: ts in (k-1, k] x step.
    buckets = (
        liq.with_columns((-(-pl.col("ts") // step) * step).alias("ts"))
        .group_by("ts")
        .agg(
            pl.col("notional_usd").filter(pl.col("side") == "long").sum().alias("long"),
            pl.col("notional_usd").filter(pl.col("side") == "short").sum().alias("short"),
        )
    )
    span = _step_grid(grid["ts"][0] - window, grid["ts"][-1], step)
    sums = (
        span.join(buckets, on="ts", how="left")
        .with_columns(pl.col("long", "short").fill_null(0.0))
        .with_columns(
            pl.col("long").rolling_sum(config.lookback, min_samples=1).alias("long_liq_usd"),
            pl.col("short").rolling_sum(config.lookback, min_samples=1).alias("short_liq_usd"),
        )
        .select("ts", "long_liq_usd", "short_liq_usd")
    )
    last_seen = liq.select("ts", pl.col("ts").alias("last_liq_ts"))
    covered = (pl.lit(since) <= pl.col("ts") - window) & (
        pl.col("last_liq_ts") >= pl.col("ts") - window - LIQ_STALE_MS
    )
    return (
        _asof(grid, last_seen, None)
        .join(sums, on="ts", how="left")
        .with_columns(
            pl.when(covered).then(pl.col(c)).otherwise(None).alias(c)
            for c in ("long_liq_usd", "short_liq_usd")
        )
        .drop("last_liq_ts")
        .sort("ts")  # a left join need not keep the grid's order
    )


def raw_inputs_history(
    inputs: PressureInputs, config: PressureConfig, start: int, end: int
) -> pl.DataFrame:
    """Raw inputs at every period step in [start, end] (ms), all columns of :data:`RAW_COLUMNS`."""
    grid = _step_grid(start, end, config.period_ms)
    if grid.height == 0:
        return pl.DataFrame(
            schema={"ts": pl.Int64, **dict.fromkeys(RAW_COLUMNS, pl.Float64)}
        ).with_columns(pl.col("liq_source").cast(pl.String))
    seed = config.model == "seed"
    stale = None if seed else config.stale_ms
    parts = [
        _last_series(grid, inputs.global_account, "long_short_ratio", "g", stale),
        _baseline(grid, inputs.global_account, "g_base", config.baseline_steps, stale),
        _last_series(grid, inputs.top_account, "long_short_ratio", "t_account", stale),
        _last_series(grid, inputs.top_position, "long_short_ratio", "t_position", stale),
        _baseline(grid, inputs.top_position, "t_base", config.baseline_steps, stale),
        _last_series(grid, inputs.taker, "buy_sell_ratio", "taker_ratio", stale),
        _last_series(
            grid, inputs.funding, "funding_rate", "funding_rate", None if seed else FUNDING_STALE_MS
        ),
        _oi_features(grid, inputs.open_interest, config),
        _liquidation_sums(grid, inputs, config),
    ]
    raw = pl.concat([p.drop("ts") if i else p for i, p in enumerate(parts)], how="horizontal")
    stored = pl.col("long_liq_usd").is_not_null()
    estimated = pl.lit(seed) & pl.col("oi").is_not_null()
    return raw.with_columns(
        pl.when(stored)
        .then(pl.lit("stored"))
        .when(estimated)
        .then(pl.lit("estimated"))
        .alias("liq_source"),
        pl.when(stored).then("long_liq_usd").when(estimated).then("est_long").alias("long_liq_usd"),
        pl.when(stored)
        .then("short_liq_usd")
        .when(estimated)
        .then("est_short")
        .alias("short_liq_usd"),
    ).select("ts", *RAW_COLUMNS)


# --------------------------------------------------------------------------- scoring


def _clamp(expr: pl.Expr) -> pl.Expr:
    return expr.clip(0.0, 1.0)


def _seed_components() -> dict[str, tuple[pl.Expr, pl.Expr]]:
    g = pl.col("g").fill_null(1.0)
    t = pl.col("t_account").fill_null(1.0)
    f = pl.col("funding_rate").fill_null(0.0)
    r = pl.col("taker_ratio").fill_null(1.0)
    d_oi = pl.col("oi_change").fill_null(0.0)
    roc4 = pl.col("oi_roc4").fill_null(0.0)
    long_usd = pl.col("long_liq_usd").fill_null(0.0)
    short_usd = pl.col("short_liq_usd").fill_null(0.0)
    total = long_usd + short_usd
    sell_share = pl.when(total > 0).then(long_usd / total).otherwise(0.0)
    buy_share = pl.when(total > 0).then(short_usd / total).otherwise(0.0)
    rising, falling = d_oi.clip(lower_bound=0.0) / 0.25, (-d_oi).clip(lower_bound=0.0) / 0.25
    velocity = (-roc4).clip(lower_bound=0.0) / 0.02
    return {
        "crowding": ((g - 1) / 1.2, (1 / g - 1) / 1.2),
        "top_crowding": ((t - 1) / 1.1, (1 / t - 1) / 1.1),
        "funding": (f.clip(lower_bound=0.0) / 0.015, (-f).clip(lower_bound=0.0) / 0.015),
        "oi_trend": (rising, pl.when(g < 1).then(rising).otherwise(falling)),
        "force_share": (sell_share / 0.7, buy_share / 0.7),
        "force_volume": (long_usd / 4e6, short_usd / 4e6),
        "taker_pressure": ((1 / r - 0.8) / 0.7, (r - 0.8) / 0.7),
        "oi_velocity": (velocity, velocity),
    }


def _attributed(side_moved: pl.Expr, value: pl.Expr) -> pl.Expr:
    """``value`` for the side the price moved against, 0 for the other, null when unknown."""
    return pl.when(side_moved.is_null()).then(None).when(side_moved).then(value).otherwise(0.0)


def _default_components(config: PressureConfig) -> dict[str, tuple[pl.Expr, pl.Expr]]:
    horizon = config.window_ms / 60_000 / REFERENCE_LOOKBACK_MIN
    step_scale = math.sqrt(config.period_ms / 300_000)
    g_dev = pl.col("g").log() - pl.col("g_base")
    t_dev = pl.col("t_position").log() - pl.col("t_base")
    f = pl.col("funding_rate")
    taker = pl.col("taker_ratio").log()
    trend = pl.col("oi_change").clip(lower_bound=0.0) / (OI_TREND_FULL * math.sqrt(horizon))
    price_up, price_down = pl.col("price_change") >= 0, pl.col("price_change") <= 0
    velocity = (-pl.col("oi_roc4")).clip(lower_bound=0.0) / (OI_VELOCITY_FULL * step_scale)
    roc_up, roc_down = pl.col("price_roc4") >= 0, pl.col("price_roc4") <= 0
    long_usd, short_usd = pl.col("long_liq_usd"), pl.col("short_liq_usd")
    prior = FORCE_SHARE_PRIOR * pl.col("oi_value")
    long_share = (long_usd + prior) / (long_usd + short_usd + 2 * prior)
    volume_full = FORCE_VOLUME_FULL * horizon * pl.col("oi_value")
    return {
        "crowding": (g_dev / CROWDING_FULL_LOG, -g_dev / CROWDING_FULL_LOG),
        "top_crowding": (t_dev / TOP_CROWDING_FULL_LOG, -t_dev / TOP_CROWDING_FULL_LOG),
        "funding": (f / FUNDING_LONG_FULL, -f / FUNDING_SHORT_FULL),
        # Rising OI with rising price is longs piling in; with falling price, shorts.
        "oi_trend": (_attributed(price_up, trend), _attributed(price_down, trend)),
        "force_share": (
            (long_share - 0.5) / FORCE_SHARE_FULL,
            (0.5 - long_share) / FORCE_SHARE_FULL,
        ),
        "force_volume": (long_usd / volume_full, short_usd / volume_full),
        "taker_pressure": (-taker / TAKER_FULL_LOG, taker / TAKER_FULL_LOG),
        # Fast OI drop with falling price is longs being liquidated; with rising price, shorts.
        "oi_velocity": (_attributed(roc_down, velocity), _attributed(roc_up, velocity)),
    }


def level_expr(score: pl.Expr) -> pl.Expr:
    """Score (0-100) -> EXTREME/HIGH/MEDIUM/LOW/VERY_LOW (null stays null)."""
    expr = pl.when(score.is_null()).then(pl.lit(None, pl.String))
    for threshold, name in LEVELS:
        expr = expr.when(score >= threshold).then(pl.lit(name))
    return expr.otherwise(pl.lit(LOWEST_LEVEL))


def bias_expr(long_s: pl.Expr, short_s: pl.Expr) -> pl.Expr:
    """The seed's strategy bias from the two scores (see :data:`BIAS_TEXT`)."""
    return (
        pl.when(long_s.is_null() | short_s.is_null())
        .then(pl.lit(None, pl.String))
        .when((long_s >= 65) & (short_s >= 65))
        .then(pl.lit("BOTH_HIGH"))
        .when((long_s <= 25) & (short_s <= 25))
        .then(pl.lit("NEUTRAL"))
        .when((long_s - short_s).abs() < 10)
        .then(pl.lit("BALANCED"))
        .when(long_s > short_s)
        .then(pl.lit("SHORT"))
        .otherwise(pl.lit("LONG"))
    )


def score_frame(raw: pl.DataFrame, config: PressureConfig) -> pl.DataFrame:
    """Add ``{component}_long``/``_short`` (0-1, null = missing), ``long_score``/``short_score``
    (0-100, renormalised over present components), ``weight_used``, levels and bias."""
    parts = _seed_components() if config.model == "seed" else _default_components(config)
    weights = {name: float(config.weights.get(name, 0.0)) for name in COMPONENTS}
    component_cols = []
    for name, (long_expr, short_expr) in parts.items():
        component_cols += [
            _clamp(long_expr).alias(f"{name}_long"),
            _clamp(short_expr).alias(f"{name}_short"),
        ]
    out = raw.with_columns(component_cols)
    present = {
        name: pl.col(f"{name}_long").is_not_null() & pl.col(f"{name}_short").is_not_null()
        for name in COMPONENTS
    }
    weight_used = pl.sum_horizontal(
        [pl.when(present[n]).then(weights[n]).otherwise(0.0) for n in COMPONENTS]
    )

    def side_score(side: str) -> pl.Expr:
        total = pl.sum_horizontal(
            [
                pl.when(present[n]).then(weights[n] * pl.col(f"{n}_{side}")).otherwise(0.0)
                for n in COMPONENTS
            ]
        )
        return pl.when(weight_used > 0).then(100.0 * total / weight_used).otherwise(None)

    out = out.with_columns(
        weight_used.alias("weight_used"),
        side_score("long").alias("long_score"),
        side_score("short").alias("short_score"),
    )
    long_s, short_s = pl.col("long_score"), pl.col("short_score")
    return out.with_columns(
        level_expr(long_s).alias("long_level"),
        level_expr(short_s).alias("short_level"),
        bias_expr(long_s, short_s).alias("bias"),
        ((long_s - short_s).abs() / 100).alias("bias_confidence"),
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ComponentScore:
    name: str
    weight: float  # as configured
    effective_weight: float  # share of the score after renormalisation (0 when missing)
    long: float | None  # 0-1; None = missing
    short: float | None
    raw: dict[str, Any]

    @property
    def missing(self) -> bool:
        return self.long is None or self.short is None


# Which raw inputs each component reads (shown beside it in the panel and JSON).
COMPONENT_RAW: dict[str, dict[str, tuple[str, ...]]] = {
    "seed": {
        "crowding": ("g",),
        "top_crowding": ("t_account",),
        "funding": ("funding_rate",),
        "oi_trend": ("oi_change", "g"),
        "force_share": ("long_liq_usd", "short_liq_usd", "liq_source"),
        "force_volume": ("long_liq_usd", "short_liq_usd", "liq_source"),
        "taker_pressure": ("taker_ratio",),
        "oi_velocity": ("oi_roc4",),
    },
    "default": {
        "crowding": ("g", "g_base"),
        "top_crowding": ("t_position", "t_base"),
        "funding": ("funding_rate",),
        "oi_trend": ("oi_change", "price_change"),
        "force_share": ("long_liq_usd", "short_liq_usd", "liq_source"),
        "force_volume": ("long_liq_usd", "short_liq_usd", "oi_value", "liq_source"),
        "taker_pressure": ("taker_ratio",),
        "oi_velocity": ("oi_roc4", "price_roc4"),
    },
}
_BASE_TO_NORM = {"g_base": "g_norm", "t_base": "t_norm"}


def _raw_view(raw: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    # Baselines are stored as mean log ratios; show them as the ratio a reader compares against.
    out: dict[str, Any] = {}
    for key in keys:
        value = raw.get(key)
        if key in _BASE_TO_NORM:
            out[_BASE_TO_NORM[key]] = None if value is None else math.exp(value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class PressureSnapshot:
    ts: int
    model: str
    long_score: float | None
    short_score: float | None
    long_level: str | None
    short_level: str | None
    bias: str | None
    bias_confidence: float | None
    components: dict[str, ComponentScore]
    raw: dict[str, Any]
    weight_used: float
    weight_total: float

    @property
    def missing(self) -> list[str]:
        return [c.name for c in self.components.values() if c.missing]

    @property
    def renormalised(self) -> bool:
        return bool(self.missing) and self.weight_used > 0


def snapshot_from_row(row: Mapping[str, Any], config: PressureConfig) -> PressureSnapshot:
    weights = {name: float(config.weights.get(name, 0.0)) for name in COMPONENTS}
    used = float(row["weight_used"])
    components = {}
    for name in COMPONENTS:
        long_v, short_v = row[f"{name}_long"], row[f"{name}_short"]
        present = long_v is not None and short_v is not None
        components[name] = ComponentScore(
            name=name,
            weight=weights[name],
            effective_weight=(100.0 * weights[name] / used) if present and used > 0 else 0.0,
            long=long_v if present else None,
            short=short_v if present else None,
            raw=_raw_view(row, COMPONENT_RAW[config.model][name]),
        )
    return PressureSnapshot(
        ts=int(row["ts"]),
        model=config.model,
        long_score=row["long_score"],
        short_score=row["short_score"],
        long_level=row["long_level"],
        short_level=row["short_level"],
        bias=row["bias"],
        bias_confidence=row["bias_confidence"],
        components=components,
        raw={k: row[k] for k in RAW_COLUMNS},
        weight_used=used,
        weight_total=sum(weights.values()),
    )


def pressure_at(inputs: PressureInputs, config: PressureConfig, at: int) -> PressureSnapshot:
    """The score at instant ``at`` (ms epoch)."""
    raw = raw_inputs_at(inputs, config, at)
    frame = pl.DataFrame(
        [{"ts": at, **raw}],
        schema={"ts": pl.Int64, **dict.fromkeys(RAW_COLUMNS, pl.Float64), "liq_source": pl.String},
    )
    return snapshot_from_row(score_frame(frame, config).row(0, named=True), config)


def pressure_history(
    inputs: PressureInputs, config: PressureConfig, start: int, end: int
) -> pl.DataFrame:
    """Raw inputs, components, scores, levels and bias at every period step in [start, end]."""
    return score_frame(raw_inputs_history(inputs, config, start, end), config)


# --------------------------------------------------------------------------- readings for the panel


def taker_reading(ratio: float | None) -> str:
    if ratio is None:
        return "no data"
    if ratio > 1.5:
        return "buyers strongly dominate (short-squeeze risk up)"
    if ratio > 1.2:
        return "buyers dominate (short-squeeze risk up)"
    if ratio < 0.6:
        return "sellers strongly dominate (long-liquidation risk up)"
    if ratio < 0.8:
        return "sellers dominate (long-liquidation risk up)"
    return "balanced"


def oi_change_reading(change: float | None) -> str:
    if change is None:
        return "no data"
    if change > 0.005:
        return "rising: leverage building"
    if change < -0.005:
        return "falling: positions closing"
    return "flat"


def oi_velocity_per_step(roc4: float | None) -> float | None:
    """ROC4 spread over its four steps: the OI change per period."""
    return None if roc4 is None else roc4 / 4


def oi_velocity_reading(per_step: float | None) -> str:
    if per_step is None:
        return "no data"
    if per_step < -0.003:
        return "falling fast: liquidations happening"
    if per_step > 0.003:
        return "rising fast: new money"
    return "steady"


def interpretation(snapshot: PressureSnapshot) -> str:
    """One sentence on what the two scores mean together."""
    hot = ("HIGH", "EXTREME")
    long_hot, short_hot = snapshot.long_level in hot, snapshot.short_level in hot
    if snapshot.long_score is None:
        return "No inputs: nothing to interpret."
    if long_hot and short_hot:
        return "Both sides over-leveraged: a move either way can cascade."
    if long_hot:
        return "Longs are crowded and exposed: a dip could trigger long liquidations."
    if short_hot:
        return "Shorts are crowded and exposed: a pop could trigger a short squeeze."
    if snapshot.long_level == "MEDIUM" or snapshot.short_level == "MEDIUM":
        side = "Longs" if (snapshot.long_score or 0) >= (snapshot.short_score or 0) else "Shorts"
        return f"{side} carry moderate liquidation risk; no cascade setup yet."
    return "No side is under notable liquidation pressure."
