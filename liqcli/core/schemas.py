"""One Polars schema per stored dataset (CONTRACT.md "Stored data").

Each spec names the dataset's key (what makes a row unique: re-writing never duplicates a key),
its Hive partition columns (directories, not stored inside the files) and the file granularity
inside the last partition (``month`` -> ``YYYY-MM.parquet``, ``day`` -> ``YYYY-MM-DD.parquet``).
``optional`` columns may be left out by a writer (they are stored as nulls), so a column added
for one writer (the recorder's ``seq``) does not break the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

from liqcli.errors import UsageError

TS = pl.Datetime("ms", "UTC")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    schema: dict[str, pl.DataType]  # every column, partition columns included
    key: tuple[str, ...]
    partition_by: tuple[str, ...]
    file_by: Literal["month", "day"] = "month"
    optional: tuple[str, ...] = ()  # nullable columns a writer may omit

    @property
    def pl_schema(self) -> pl.Schema:
        return pl.Schema(self.schema)

    @property
    def file_columns(self) -> list[str]:
        """Columns stored inside each Parquet file (partition columns live in the path)."""
        return [c for c in self.schema if c not in self.partition_by]


def _ratio(name: str) -> DatasetSpec:
    return DatasetSpec(
        name,
        {
            "exchange": pl.String(),
            "symbol": pl.String(),
            "period": pl.String(),
            "ts": TS,
            "long_short_ratio": pl.Float64(),
            "long_share": pl.Float64(),
            "short_share": pl.Float64(),
        },
        key=("exchange", "symbol", "period", "ts"),
        partition_by=("exchange", "symbol", "period"),
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "taker_ratio",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "period": pl.String(),
                "ts": TS,
                "buy_sell_ratio": pl.Float64(),
                "buy_vol": pl.Float64(),
                "sell_vol": pl.Float64(),
            },
            key=("exchange", "symbol", "period", "ts"),
            partition_by=("exchange", "symbol", "period"),
        ),
        _ratio("top_position_ratio"),
        _ratio("top_account_ratio"),
        _ratio("global_account_ratio"),
        DatasetSpec(
            "open_interest",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "period": pl.String(),
                "ts": TS,
                "open_interest": pl.Float64(),
                "open_interest_value": pl.Float64(),
            },
            key=("exchange", "symbol", "period", "ts"),
            partition_by=("exchange", "symbol", "period"),
        ),
        DatasetSpec(
            "funding",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "ts": TS,
                "funding_rate": pl.Float64(),
                "mark_price": pl.Float64(),
            },
            key=("exchange", "symbol", "ts"),
            partition_by=("exchange", "symbol"),
        ),
        DatasetSpec(
            "klines",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "interval": pl.String(),
                "ts": TS,
                "open": pl.Float64(),
                "high": pl.Float64(),
                "low": pl.Float64(),
                "close": pl.Float64(),
                "volume": pl.Float64(),
                "quote_volume": pl.Float64(),
                "trades": pl.Int64(),
                "taker_buy_volume": pl.Float64(),
                "taker_buy_quote_volume": pl.Float64(),
            },
            key=("exchange", "symbol", "interval", "ts"),
            partition_by=("exchange", "symbol", "interval"),
        ),
        DatasetSpec(
            "agg_trades",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "trade_id": pl.Int64(),
                "ts": TS,
                "price": pl.Float64(),
                "qty": pl.Float64(),
                "is_buyer_maker": pl.Boolean(),
                "seq": pl.Int64(),  # recorded live: delivery order (liqcli.sources.recorder)
            },
            key=("exchange", "symbol", "trade_id"),
            partition_by=("exchange", "symbol"),
            file_by="day",
            optional=("seq",),
        ),
        DatasetSpec(
            "liquidations",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "ts": TS,
                "side": pl.String(),
                "price": pl.Float64(),
                "qty": pl.Float64(),
                "notional_usd": pl.Float64(),
                "venue_symbol": pl.String(),
                "received_ts": TS,
                "seq": pl.Int64(),  # recorded live: delivery order (liqcli.sources.recorder)
            },
            key=("exchange", "symbol", "ts", "side", "price", "qty"),
            partition_by=("exchange", "symbol"),
            file_by="day",
            optional=("seq",),
        ),
        DatasetSpec(
            # Cascades span venues: stored under exchange=all.
            "cascades",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "start_ts": TS,
                "end_ts": TS,
                "direction": pl.String(),
                "peak_level": pl.String(),
                "total_usd": pl.Float64(),
                "events": pl.Int64(),
                "price_change_pct": pl.Float64(),
            },
            key=("exchange", "symbol", "start_ts"),
            partition_by=("exchange", "symbol"),
        ),
        # Order books and mark prices. ``seq`` (delivery order) and ``received_ts`` are set by
        # the recorder (liqcli.sources.recorder), null in rows from the archive.
        DatasetSpec(
            # Best bid/ask (Binance bookTicker). ``update_id`` is in the key: a venue sends several
            # per millisecond.
            "book_tops",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "ts": TS,
                "update_id": pl.Int64(),
                "bid": pl.Float64(),
                "bid_qty": pl.Float64(),
                "ask": pl.Float64(),
                "ask_qty": pl.Float64(),
                "received_ts": TS,
                "seq": pl.Int64(),
            },
            key=("exchange", "symbol", "ts", "update_id"),
            partition_by=("exchange", "symbol"),
            file_by="day",
            optional=("received_ts", "seq"),
        ),
        DatasetSpec(
            # Recorded top-N snapshots (source=live: side bid|ask, level 1 = best, price, qty) and
            # archive depth bands (source=archive: level = the band in basis points, 100 = 1 %
            # from mid; percentage, depth, notional as published).
            "book_depth",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "source": pl.String(),
                "ts": TS,
                "side": pl.String(),
                "level": pl.Int64(),
                "price": pl.Float64(),
                "qty": pl.Float64(),
                "percentage": pl.Float64(),
                "depth": pl.Float64(),
                "notional": pl.Float64(),
                "update_id": pl.Int64(),
                "received_ts": TS,
                "seq": pl.Int64(),
            },
            key=("exchange", "symbol", "source", "ts", "side", "level"),
            partition_by=("exchange", "symbol", "source"),
            file_by="day",
            optional=(
                "price",
                "qty",
                "percentage",
                "depth",
                "notional",
                "update_id",
                "received_ts",
                "seq",
            ),
        ),
        DatasetSpec(
            "mark_prices",
            {
                "exchange": pl.String(),
                "symbol": pl.String(),
                "ts": TS,
                "mark_price": pl.Float64(),
                "index_price": pl.Float64(),
                "funding_rate": pl.Float64(),
                "next_funding_ts": TS,
                "received_ts": TS,
                "seq": pl.Int64(),
            },
            key=("exchange", "symbol", "ts"),
            partition_by=("exchange", "symbol"),
            file_by="day",
            optional=("received_ts", "seq"),
        ),
    )
}


def dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}") from None


def time_column(spec: DatasetSpec) -> str:
    """The column that places a row in a month/day file."""
    return "start_ts" if "start_ts" in spec.schema else "ts"


def register(spec: DatasetSpec) -> DatasetSpec:
    """Later features add their own datasets (e.g. ``pressure``) through here."""
    DATASETS[spec.name] = spec
    return spec
