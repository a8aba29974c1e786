"""``liq liquidations``: long/short totals of the stored ``liquidations`` dataset per interval and
per symbol, exchange or coin, over a time range (what Coinglass's liquidation page shows).

Everything is one lazy Polars query over the store (partitions pruned by exchange and symbol,
files by time): no Python loop over rows. The coin of a row comes from its venue symbol, so OKX
``BTC-USD-SWAP`` and ``BTC-USDT-SWAP``, Binance ``BTCUSDT`` and Bybit ``BTCUSDT`` are all ``BTC``
(see :func:`coin_expr`). Intervals are aligned to the UTC epoch (days start at 00:00 UTC, weeks on
Monday); only intervals with liquidations are listed (the chart shows the empty ones as gaps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from liqcli.core.timeutil import duration_ms, iso_ms
from liqcli.errors import UsageError

DATASET = "liquidations"
GROUPINGS = ("symbol", "exchange", "coin")
MAX_INTERVALS = 20_000  # per query: a table or chart of more says nothing
MIN_INTERVAL_MS = 60_000
OTHER = "(other)"
_WEEK_MS = 7 * 86_400_000
_MONDAY_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday
# Order matters: the longest suffix first (FDUSD before USD).
_QUOTE_SUFFIX = r"(PERP|FDUSD|BUSD|USDT|USDC|USDE|USD)$"
_DELIVERY_SUFFIX = r"_(PERP|\d{6,8})$"  # BTCUSD_PERP, BTCUSDT_250328
_MULTIPLIER_PREFIX = r"^(1000000|100000|10000|1000|1M)([A-Z])"  # 1000PEPEUSDT -> PEPE

By = Literal["symbol", "exchange", "coin"]


def coin_expr(symbol: str = "symbol", venue_symbol: str = "venue_symbol") -> pl.Expr:
    """The coin of a liquidation: ``BTC-USDT-SWAP`` -> BTC (the venue's own name when it has
    dashes, as OKX's do), else the normalised symbol without its quote, delivery date or
    contract multiplier: ``BTCUSDT`` / ``BTCUSD_250328`` / ``1000PEPEUSDT`` -> BTC / BTC / PEPE.
    A symbol that is nothing but a quote keeps its name."""
    venue = pl.col(venue_symbol).fill_null("").str.to_uppercase()
    plain = (
        pl.col(symbol)
        .str.to_uppercase()
        .str.replace(_DELIVERY_SUFFIX, "")
        .str.replace(_QUOTE_SUFFIX, "")
        .str.replace(_MULTIPLIER_PREFIX, "$2")
    )
    dashed = venue.str.split("-").list.first().str.replace(_MULTIPLIER_PREFIX, "$2")
    coin = pl.when(venue.str.contains("-", literal=True)).then(dashed).otherwise(plain)
    return pl.when(coin.str.len_chars() > 0).then(coin).otherwise(pl.col(symbol)).alias("coin")


def coin_of(symbol: str, venue_symbol: str = "") -> str:
    """:func:`coin_expr` for one name (for the command line's arguments and tests)."""
    frame = pl.DataFrame(
        {"symbol": [symbol], "venue_symbol": [venue_symbol]},
        schema={"symbol": pl.String, "venue_symbol": pl.String},
    )
    return frame.select(coin_expr())["coin"][0]


@dataclass(frozen=True)
class HistoryQuery:
    """What ``liq liquidations`` was asked for (``validate`` raises UsageError)."""

    start_ms: int
    end_ms: int
    interval: str = "1h"
    by: By = "symbol"
    symbols: Sequence[str] = ()  # symbols, venue symbols or coins; empty = all
    exchanges: Sequence[str] = ()  # empty = every stored venue
    top: int = 10  # groups listed by name; the rest are summed as "(other)"; 0 = all

    @property
    def interval_ms(self) -> int:
        return duration_ms(self.interval)

    def validate(self) -> None:
        if self.by not in GROUPINGS:
            raise UsageError(f"--by must be one of {', '.join(GROUPINGS)}, got {self.by!r}")
        if self.start_ms >= self.end_ms:
            raise UsageError(
                f"--start ({iso_ms(self.start_ms)}) must be before --end ({iso_ms(self.end_ms)})"
            )
        step = self.interval_ms
        if step < MIN_INTERVAL_MS or step % MIN_INTERVAL_MS:
            raise UsageError(f"--interval {self.interval}: a whole number of minutes, e.g. 1h")
        if (self.end_ms - self.start_ms) // step > MAX_INTERVALS:
            raise UsageError(
                f"--interval {self.interval} cuts {iso_ms(self.start_ms)} .. {iso_ms(self.end_ms)} "
                f"into more than {MAX_INTERVALS:,} intervals: use a longer one"
            )
        if self.top < 0:
            raise UsageError(f"--top must be >= 0, got {self.top}")


@dataclass
class LiquidationHistory:
    query: HistoryQuery
    rows: pl.DataFrame  # ts (interval start), <by>, long/short/total usd and counts
    totals: pl.DataFrame  # <by>, the same sums over the whole range (largest first)
    stored_range: tuple[int, int] | None = None  # first/last ts stored for the selection
    price: pl.DataFrame | None = None  # ts (ms), price: kline closes for the chart
    price_label: str | None = None  # e.g. "binance BTCUSDT 1h close"
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """The JSON document (``rows`` are added by the renderer)."""
        q = self.query
        return {
            "start": iso_ms(q.start_ms),
            "end": iso_ms(q.end_ms),
            "interval": q.interval,
            "by": q.by,
            "symbols": list(q.symbols),
            "exchanges": list(q.exchanges),
            "totals": self.totals.to_dicts(),
        }


def interval_start(ts_ms: pl.Expr, step_ms: int) -> pl.Expr:
    """Epoch-aligned interval starts; whole weeks start on Monday 00:00 UTC."""
    offset = _MONDAY_MS if step_ms % _WEEK_MS == 0 else 0
    return ((ts_ms - offset) // step_ms) * step_ms + offset


_SUMS = (
    pl.col("long_usd").sum(),
    pl.col("short_usd").sum(),
    pl.col("long_count").sum(),
    pl.col("short_count").sum(),
)


def aggregate(lazy: pl.LazyFrame, query: HistoryQuery) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, totals) from rows of the ``liquidations`` dataset; pure (no store access)."""
    by = query.by
    is_long = pl.col("side") == "long"
    notional = pl.col("notional_usd")
    ts_ms = pl.col("ts").dt.epoch("ms") if _is_datetime(lazy) else pl.col("ts").cast(pl.Int64)
    start, end = query.start_ms, query.end_ms
    per_contract = (
        lazy.with_columns(ts_ms.alias("ts_ms"))
        .filter(pl.col("ts_ms").is_between(start, end, closed="left"))
        # A corrupted or hostile row (NaN, infinite, negative) must not turn a total into NaN.
        .filter(notional.is_finite() & (notional > 0) & pl.col("side").is_in(["long", "short"]))
        .with_columns(interval_start(pl.col("ts_ms"), query.interval_ms).alias("interval_ms"))
        .group_by("interval_ms", "exchange", "symbol", "venue_symbol")
        .agg(
            notional.filter(is_long).sum().alias("long_usd"),
            notional.filter(~is_long).sum().alias("short_usd"),
            is_long.sum().cast(pl.Int64).alias("long_count"),
            (~is_long).sum().cast(pl.Int64).alias("short_count"),
        )
        # The coin's string work runs once per contract and interval, not once per row.
        .with_columns(coin_expr())
    )
    if query.symbols:
        wanted = [s.upper() for s in query.symbols]
        per_contract = per_contract.filter(
            pl.col("symbol").str.to_uppercase().is_in(wanted)
            | pl.col("venue_symbol").fill_null("").str.to_uppercase().is_in(wanted)
            | pl.col("coin").is_in(wanted)
        )
    grouped = per_contract.group_by("interval_ms", by).agg(*_SUMS).collect()
    totals = (
        grouped.group_by(by)
        .agg(*_SUMS)
        .with_columns(_total())
        .sort(["total_usd", by], descending=[True, False])
    )
    if query.top and totals.height > query.top:
        keep = totals[by].head(query.top).implode()
        named = pl.when(pl.col(by).is_in(keep)).then(pl.col(by)).otherwise(pl.lit(OTHER))
        grouped = grouped.with_columns(named.alias(by)).group_by("interval_ms", by).agg(*_SUMS)
        others = totals.slice(query.top).select(pl.lit(OTHER).alias(by), *_SUMS)
        totals = pl.concat(
            [totals.head(query.top), others.with_columns(_total())], how="vertical_relaxed"
        )
    rows = (
        grouped.with_columns(_total())
        .sort(["interval_ms", "total_usd", by], descending=[False, True, False])
        .select(
            pl.col("interval_ms").cast(pl.Datetime("ms", "UTC")).alias("ts"),
            by,
            "long_usd",
            "short_usd",
            "total_usd",
            "long_count",
            "short_count",
        )
    )
    return rows, totals.select(
        by, "long_usd", "short_usd", "total_usd", "long_count", "short_count"
    )


def _total() -> pl.Expr:
    return (pl.col("long_usd") + pl.col("short_usd")).alias("total_usd")


def _is_datetime(lazy: pl.LazyFrame) -> bool:
    return isinstance(lazy.collect_schema()["ts"], pl.Datetime)


# -- the store ----------------------------------------------------------------------------------


def _partition_filter(store: Any, query: HistoryQuery) -> dict[str, list[str]]:
    """Partition values to read: the exchanges asked for, and when symbols (or coins) are asked
    for, the stored symbols that can match (so other symbols' directories are never opened)."""
    partitions: dict[str, list[str]] = {}
    if query.exchanges:
        partitions["exchange"] = list(query.exchanges)
    if query.symbols:
        wanted = {s.upper() for s in query.symbols}
        stored = {
            p["symbol"]
            for p in store.partitions(DATASET)
            if not query.exchanges or p.get("exchange") in query.exchanges
        }
        # A directory holds one normalised symbol; OKX's dashed venue name is a column, but its
        # normalised symbol has the same coin (BTC-USDT-SWAP is stored as BTCUSDT).
        candidates = pl.DataFrame(
            {"symbol": sorted(stored), "venue_symbol": [""] * len(stored)},
            schema={"symbol": pl.String, "venue_symbol": pl.String},
        )
        matching = candidates.with_columns(coin_expr()).filter(
            pl.col("symbol").str.to_uppercase().is_in(list(wanted))
            | pl.col("coin").is_in(list(wanted))
        )
        # A venue symbol asked for by name (BTC-USD-SWAP) is found through its coin.
        coins = {coin_of(s, s) for s in wanted if "-" in s}
        by_coin = candidates.with_columns(coin_expr()).filter(pl.col("coin").is_in(list(coins)))
        partitions["symbol"] = sorted({*matching["symbol"], *by_coin["symbol"]}) or ["\x00none"]
    return partitions


def liquidation_history(store: Any, query: HistoryQuery) -> LiquidationHistory:
    """Read and aggregate; an empty result carries the range that is stored, if any."""
    query.validate()
    partitions = _partition_filter(store, query)
    if partitions.get("symbol") == ["\x00none"]:
        empty = pl.LazyFrame(schema=_dataset_schema())
        rows, totals = aggregate(empty, query)
        return LiquidationHistory(query, rows, totals)
    lazy = store.scan(DATASET, start=query.start_ms, end=query.end_ms, **partitions)
    try:
        rows, totals = aggregate(lazy, query)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError):
        # A file with an intact footer but damaged pages: read() finds and skips it (warning).
        frame = store.read(DATASET, start=query.start_ms, end=query.end_ms, **partitions)
        rows, totals = aggregate(frame.lazy(), query)
    history = LiquidationHistory(query, rows, totals)
    if rows.is_empty():
        history.stored_range = _stored_range(store, partitions)
    return history


def _dataset_schema() -> dict[str, pl.DataType]:
    from liqcli.core.schemas import dataset

    return dict(dataset(DATASET).schema)


def _stored_range(store: Any, partitions: dict[str, list[str]]) -> tuple[int, int] | None:
    span = (
        store.scan(DATASET, **partitions)
        .select(
            pl.col("ts").min().dt.epoch("ms").alias("first"),
            pl.col("ts").max().dt.epoch("ms").alias("last"),
        )
        .collect()
    )
    first, last = span["first"][0], span["last"][0]
    return None if first is None else (int(first), int(last))


def attach_price(store: Any, history: LiquidationHistory) -> None:
    """Kline closes for the chart's price line, when the ``klines`` dataset holds the one coin or
    symbol the history is about (Binance first; the interval closest to --interval)."""
    query = history.query
    names = [n for n in history.totals[query.by].to_list() if n != OTHER]
    if query.by == "exchange":
        names = list(query.symbols)
    if len(names) != 1 and len(query.symbols) != 1:
        return
    name = (list(query.symbols) or names)[0].upper()
    coin = coin_of(name, name)
    candidates = [p for p in store.partitions("klines") if p.get("symbol", "").upper() in
                  {name, f"{coin}USDT"}]  # fmt: skip
    if not candidates:
        return
    step = query.interval_ms

    def rank(p: dict[str, str]) -> tuple:
        try:
            distance = abs(duration_ms(p.get("interval", "")) - step)
        except UsageError:
            distance = 1 << 62
        return (p.get("exchange") != "binance", p.get("symbol", "").upper() != name, distance)

    best = min(candidates, key=rank)
    price = (
        store.scan("klines", start=query.start_ms, end=query.end_ms, **best)
        .select(pl.col("ts").dt.epoch("ms"), pl.col("close").alias("price"))
        .filter(pl.col("price").is_finite())
        .collect()
        .sort("ts")
    )
    if price.height:
        history.price = price
        history.price_label = f"{best['exchange']} {best['symbol']} {best['interval']} close"
