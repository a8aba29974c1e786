"""`liq pressure`: gather the inputs (fetch through `liq fetch`'s client, or the store only), score,
and store the history as the ``pressure`` dataset."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from liqcli.analytics.pressure import (
    COMPONENTS,
    FUNDING_STALE_MS,
    LIQ_STALE_MS,
    PressureConfig,
    PressureInputs,
    PressureSnapshot,
    pressure_at,
    pressure_history,
)
from liqcli.core.schemas import TS, DatasetSpec, register
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.errors import LiqError

EXCHANGE = "binance"  # the metrics are Binance's; liquidations come from every venue
FUTURES_DATA_HISTORY_MS = 30 * 86_400_000  # /futures/data/* serve the latest 30 days only

PRESSURE = register(
    DatasetSpec(
        "pressure",
        {
            "exchange": pl.String(),
            "symbol": pl.String(),
            "period": pl.String(),
            "model": pl.String(),  # seed and default histories differ: both can be kept
            "ts": TS,
            "long_score": pl.Float64(),
            "short_score": pl.Float64(),
            "long_level": pl.String(),
            "short_level": pl.String(),
            "bias": pl.String(),
            "bias_confidence": pl.Float64(),
            "weight_used": pl.Float64(),
            "weights": pl.String(),
            **{f"{c}_{side}": pl.Float64() for c in COMPONENTS for side in ("long", "short")},
        },
        key=("exchange", "symbol", "period", "model", "ts"),
        partition_by=("exchange", "symbol", "period", "model"),
    )
)

# dataset -> (PressureInputs field, value columns)
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "global_account_ratio": ("global_account", ("long_short_ratio",)),
    "top_account_ratio": ("top_account", ("long_short_ratio",)),
    "top_position_ratio": ("top_position", ("long_short_ratio",)),
    "taker_ratio": ("taker", ("buy_sell_ratio",)),
    "open_interest": ("open_interest", ("open_interest", "open_interest_value")),
    "funding": ("funding", ("funding_rate",)),
}


def needed_datasets(model: str) -> list[str]:
    """The fetched datasets a model reads (the seed reads the account ratio, not the position one)."""
    top = "top_account_ratio" if model == "seed" else "top_position_ratio"
    return ["global_account_ratio", top, "taker_ratio", "open_interest", "funding"]


FetchFn = Callable[..., Awaitable[list[Any]]]


@dataclass
class PressureReport:
    symbol: str
    config: PressureConfig
    snapshot: PressureSnapshot
    inputs: dict[str, dict[str, Any]]  # dataset -> rows, last, status (ok|stale|missing)
    fetch_errors: list[str] = field(default_factory=list)


@dataclass
class HistoryReport:
    symbol: str
    config: PressureConfig
    history: pl.DataFrame  # analytics.pressure_history columns, ts in ms
    price: pl.DataFrame | None  # ts (ms), price
    stored_rows: int
    inputs: dict[str, dict[str, Any]]
    fetch_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. the range clamped to stored data


def _partitions(dataset: str, symbol: str, period: str) -> dict[str, str]:
    parts = {"exchange": EXCHANGE, "symbol": symbol}
    if dataset != "funding":
        parts["period"] = period
    return parts


def load_inputs(store, symbol: str, config: PressureConfig, start: int, end: int) -> PressureInputs:
    """Stored inputs for [start - warm-up, end]: enough rows for the baselines and the lookback."""
    warmup = (max(config.baseline_steps, config.lookback) + 1) * config.period_ms
    frames: dict[str, pl.DataFrame | None] = {}
    for dataset in needed_datasets(config.model):
        name, columns = SOURCES[dataset]
        lead = FUNDING_STALE_MS if dataset == "funding" else warmup
        df = (
            store.scan(
                dataset,
                start=start - lead,
                end=end + 1,
                **_partitions(dataset, symbol, config.period),
            )
            .select("ts", *columns)
            .collect()
        )
        frames[name] = df.sort("ts") if df.height else None
    liq_start = start - config.window_ms - LIQ_STALE_MS - config.period_ms
    liq = (
        store.scan(
            "liquidations", start=liq_start, end=end + 1, symbol=symbol, include_journal=True
        )
        .select("ts", "side", "notional_usd")
        .collect()
    )
    since = store.first_ts("liquidations", symbol=symbol, include_journal=True)
    return PressureInputs(
        **frames,
        liquidations=liq.sort("ts") if since is not None else None,
        liquidations_since=since,
    )


def input_status(
    inputs: PressureInputs, config: PressureConfig, now: int, snapshot: PressureSnapshot | None
) -> dict[str, dict[str, Any]]:
    """Per input: how many rows were used, the newest one, and ok / stale / missing vs ``now``."""
    out: dict[str, dict[str, Any]] = {}
    for dataset in needed_datasets(config.model):
        frame = getattr(inputs, SOURCES[dataset][0])
        limit = FUNDING_STALE_MS if dataset == "funding" else config.stale_ms
        out[dataset] = _status(frame, now, limit)
    liq = _status(inputs.liquidations, now, LIQ_STALE_MS)
    if (
        liq["status"] != "missing"
        and snapshot is not None
        and snapshot.raw["liq_source"] != "stored"
    ):
        liq["status"] = "stale"  # rows exist but do not cover the lookback window
    out["liquidations"] = liq
    return out


def _status(frame: pl.DataFrame | None, now: int, limit: int) -> dict[str, Any]:
    if frame is None or frame.height == 0:
        return {"rows": 0, "last": None, "status": "missing"}
    last = frame.select(pl.col("ts").max().dt.epoch("ms")).item()
    return {
        "rows": frame.height,
        "last": iso_ms(last),
        "status": "ok" if last >= now - limit else "stale",
    }


async def _fetch(
    store,
    symbol: str,
    datasets: list[str],
    config: PressureConfig,
    start: int,
    now: int,
    fetch: FetchFn | None,
) -> list[str]:
    """Bring the store up to date through `liq fetch`'s service; returns one line per failure."""
    if fetch is None:
        from liqcli.services.fetch import run_fetch as fetch
    # Binance keeps only 30 days of these series; asking for more is refused.
    start = max(start, now - FUTURES_DATA_HISTORY_MS + config.period_ms)
    results = await fetch(
        store, [symbol], datasets, period=config.period, start=start, end=now, now=now
    )
    # Reported by the caller (stderr unless --quiet, and in the JSON document).
    return [f"{r.dataset}: {r.error or r.note}" for r in results if r.status != "ok"]


def _latest_step(inputs: PressureInputs, config: PressureConfig, now: int) -> int:
    """Score at the newest period for which open interest (or any ratio) is stored."""
    lasts = []
    for dataset in needed_datasets(config.model):
        frame = getattr(inputs, SOURCES[dataset][0])
        if dataset != "funding" and frame is not None:
            lasts.append(frame.select(pl.col("ts").max().dt.epoch("ms")).item())
    return max(lasts) if lasts else now - now % config.period_ms


def _require_data(
    inputs: PressureInputs, config: PressureConfig, symbol: str, offline: bool, errors: list[str]
) -> None:
    if any(getattr(inputs, SOURCES[d][0]) is not None for d in needed_datasets(config.model)):
        return
    if errors:
        raise LiqError(f"no {config.period} data for {symbol}: fetch failed: {errors[0]}")
    hint = f"run `liq fetch {symbol} --period {config.period}` first" + (
        " or drop --offline" if offline else ""
    )
    raise LiqError(f"no stored {config.period} data for {symbol}: {hint}")


async def pressure_now(
    store,
    symbol: str,
    config: PressureConfig,
    *,
    offline: bool = False,
    now: int | None = None,
    fetch: FetchFn | None = None,
) -> PressureReport:
    """The current score: fetch what is needed (unless offline), then score the newest step."""
    now = now_ms() if now is None else now
    history_ms = (max(config.baseline_steps, config.lookback) + 2) * config.period_ms
    errors: list[str] = []
    if not offline:
        errors = await _fetch(
            store, symbol, needed_datasets(config.model), config, now - history_ms, now, fetch
        )
    inputs = load_inputs(store, symbol, config, now - history_ms, now)
    _require_data(inputs, config, symbol, offline, errors)
    at = _latest_step(inputs, config, now)
    snapshot = pressure_at(inputs, config, at)
    return PressureReport(
        symbol, config, snapshot, input_status(inputs, config, now, snapshot), errors
    )


async def pressure_history_run(
    store,
    symbol: str,
    config: PressureConfig,
    start: int,
    end: int,
    *,
    offline: bool = False,
    now: int | None = None,
    fetch: FetchFn | None = None,
) -> HistoryReport:
    """Scores at every step of [start, end] over stored data, written to the ``pressure`` dataset."""
    now = now_ms() if now is None else now
    end = min(end, now)
    warmup = (max(config.baseline_steps, config.lookback) + 2) * config.period_ms
    errors: list[str] = []
    if not offline:
        datasets = [*needed_datasets(config.model), "klines"]
        errors = await _fetch(store, symbol, datasets, config, start - warmup, now, fetch)
    inputs = load_inputs(store, symbol, config, start, end)
    _require_data(inputs, config, symbol, offline, errors)
    asked = (start, end)
    start, end = _stored_range(inputs, config, start, end)
    notes = []
    if (start, end) != asked:
        notes.append(
            f"history clamped to the stored {config.period} inputs: {iso_ms(start)} .. "
            f"{iso_ms(end)} (asked {iso_ms(asked[0])} .. {iso_ms(asked[1])})"
        )
    history = (
        pressure_history(inputs, config, start, end) if start <= end else _empty(inputs, config)
    )
    # A step with none of the period inputs (a hole in the store) is not a score: never stored.
    with_inputs = pl.any_horizontal([pl.col(c).is_not_null() for c in PERIOD_INPUTS])
    history = history.filter(with_inputs)
    stored = (
        store.write("pressure", _pressure_rows(history, symbol, config)).rows_in
        if history.height
        else 0
    )
    return HistoryReport(
        symbol,
        config,
        history,
        _price(store, symbol, config, inputs, start, end),
        stored,
        input_status(inputs, config, now, None),
        errors,
        notes,
    )


# The raw columns that come from the period series (funding settles every 8 h and is carried
# forward: alone it does not make a step scored).
PERIOD_INPUTS = ("g", "t_account", "t_position", "taker_ratio", "oi")


def _stored_range(
    inputs: PressureInputs, config: PressureConfig, start: int, end: int
) -> tuple[int, int]:
    """[start, end] narrowed to the steps the stored period inputs cover: no scores before the
    first row, and none for steps after the last one (the still-open period is not scored as a
    copy of the one before)."""
    firsts, lasts = [], []
    for dataset in needed_datasets(config.model):
        frame = getattr(inputs, SOURCES[dataset][0])
        if dataset != "funding" and frame is not None and frame.height:
            ts = frame["ts"].dt.epoch("ms")
            firsts.append(int(ts.min()))
            lasts.append(int(ts.max()))
    if not firsts:
        return start, end
    step = config.period_ms
    first = -(-min(firsts) // step) * step
    return max(start, first), min(end, max(lasts))


def _empty(inputs: PressureInputs, config: PressureConfig) -> pl.DataFrame:
    return pressure_history(inputs, config, 0, -1)


def _pressure_rows(history: pl.DataFrame, symbol: str, config: PressureConfig) -> pl.DataFrame:
    weights = ",".join(f"{name}={config.weights[name]:g}" for name in COMPONENTS)
    return history.select(
        pl.lit(EXCHANGE).alias("exchange"),
        pl.lit(symbol).alias("symbol"),
        pl.lit(config.period).alias("period"),
        pl.lit(config.model).alias("model"),
        "ts",
        "long_score",
        "short_score",
        "long_level",
        "short_level",
        "bias",
        "bias_confidence",
        "weight_used",
        pl.lit(weights).alias("weights"),
        *(f"{c}_{side}" for c in COMPONENTS for side in ("long", "short")),
    )


def _price(
    store, symbol: str, config: PressureConfig, inputs: PressureInputs, start: int, end: int
) -> pl.DataFrame | None:
    """Kline closes for the chart; the price implied by OI value / OI when no klines are stored."""
    klines = (
        store.scan(
            "klines",
            start=start,
            end=end + 1,
            exchange=EXCHANGE,
            symbol=symbol,
            interval=config.period,
        )
        .select(pl.col("ts").dt.epoch("ms"), pl.col("close").alias("price"))
        .collect()
        .sort("ts")
    )
    if klines.height:
        return klines
    oi = inputs.open_interest
    if oi is None:
        return None
    return (
        oi.select(
            pl.col("ts").dt.epoch("ms"),
            (pl.col("open_interest_value") / pl.col("open_interest")).alias("price"),
        )
        .filter(pl.col("ts").is_between(start, end))
        .sort("ts")
    )
