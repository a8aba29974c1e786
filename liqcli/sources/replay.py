"""Recorded events as a Source: stored rows (the store, a Parquet file or dataset directory, a
``liq watch --format jsonl`` recording or journal rows) -> normalised events in event-time order.

    frame = liquidation_frame("store", data_dir=d, exchanges=["binance"], symbols=["BTCUSDT"])
    source = ReplaySource(rows_to_events(frame.collect()))   # clock: EventClock
    async for batch in source.batches(): ...

``replay_rows(spec, ..., trades=True)`` adds the stored Binance aggTrades of the same span
(``store`` only), ordered before liquidations of the same millisecond (the price first).
Everything here reads; nothing writes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from liqcli.core.events import AggTrade, Liquidation
from liqcli.core.schemas import dataset as dataset_spec
from liqcli.errors import DataError, UsageError
from liqcli.sources.clock import EventClock

LIQUIDATIONS = "liquidations"
BATCH = 1_000  # events per batch: the consumer's tasks (screen, sinks) run between batches
_CHUNK = 50_000  # rows converted to events at a time
TRADE, LIQUIDATION = 0, 1  # order at equal timestamps: the price first

ROW_SCHEMA: dict[str, pl.DataType] = {
    name: pl.Int64() if isinstance(dtype, pl.Datetime) else dtype
    for name, dtype in dataset_spec(LIQUIDATIONS).schema.items()
}
_JSONL_SCHEMA = {
    name: pl.String() if name in ("ts", "received_ts") else dtype
    for name, dtype in ROW_SCHEMA.items()
}
_REQUIRED = ("exchange", "symbol", "ts", "side", "price", "qty", "notional_usd")


def rows_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """A frame of the dataset with time columns as epoch-ms integers (the journal's row form)."""
    return frame.select(
        pl.col(name).dt.epoch("ms") if isinstance(frame.schema[name], pl.Datetime) else pl.col(name)
        for name in ROW_SCHEMA
    ).cast(ROW_SCHEMA)


def liquidation_frame(
    spec: str,
    *,
    data_dir: Path | None,
    exchanges: Sequence[str] = (),
    symbols: Sequence[str] = (),
) -> pl.LazyFrame:
    """The liquidations to replay, as a lazy frame of the dataset's columns (ts in ms) sorted by
    event time. ``spec``: ``store``, a .jsonl file, a .parquet file or a dataset directory."""
    columns = list(ROW_SCHEMA)
    if spec == "store":
        if data_dir is None:
            raise UsageError("--replay store needs a data directory")
        from liqcli.store.parquet import Store

        partitions: dict[str, Any] = {}
        if exchanges:
            partitions["exchange"] = list(exchanges)
        if symbols:
            partitions["symbol"] = list(symbols)
        # journaled rows too: a live (or killed) writer's last minute is replayed as well
        lazy = Store(data_dir).scan(LIQUIDATIONS, include_journal=True, **partitions)
    else:
        path = Path(spec)
        if path.is_dir() or path.suffix == ".parquet":
            pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
            lazy = pl.scan_parquet(pattern, hive_partitioning=True, missing_columns="insert")
        else:
            lazy = _read_jsonl(path).lazy()
    return (
        lazy.with_columns(
            *(
                pl.lit(None, dtype=dtype).alias(name)
                for name, dtype in ROW_SCHEMA.items()
                if name not in lazy.collect_schema()
            )
        )
        .select(columns)
        .with_columns(
            _to_ms("ts"),
            _to_ms("received_ts").fill_null(0),
            pl.col("venue_symbol").fill_null(""),
        )
        .filter(pl.col("ts").is_not_null())
        .sort("ts", maintain_order=True)
    )


def replay_rows(
    spec: str,
    *,
    data_dir: Path | None,
    exchanges: Sequence[str],
    symbols: Sequence[str],
    trades: bool = False,
) -> pl.DataFrame:
    """Liquidations of ``exchanges``/``symbols`` (and, with ``trades`` and ``store``, the stored
    Binance aggTrades from a minute before the first to the last) in event-time order, with a
    ``kind`` column (TRADE before LIQUIDATION at equal times)."""
    frame = liquidation_frame(spec, data_dir=data_dir, exchanges=exchanges, symbols=symbols)
    if symbols:
        frame = frame.filter(pl.col("symbol").is_in(list(symbols)))
    if exchanges:
        frame = frame.filter(pl.col("exchange").is_in(list(exchanges)))
    liquidations = frame.with_columns(pl.lit(LIQUIDATION, pl.Int8).alias("kind")).collect()
    parts = [liquidations]
    if trades and spec == "store" and liquidations.height and data_dir is not None:
        from liqcli.store.parquet import Store

        first, last = liquidations["ts"].min(), liquidations["ts"].max()
        stored = (
            Store(data_dir)
            .scan(
                "agg_trades",
                start=first - 60_000,
                end=last + 1,
                exchange="binance",
                symbol=list(symbols) or None,
                include_journal=True,
            )
            .select(
                pl.lit(TRADE, pl.Int8).alias("kind"),
                "exchange",
                "symbol",
                pl.col("ts").dt.epoch("ms"),
                "price",
                "qty",
                "trade_id",
                "is_buyer_maker",
            )
            .collect()
        )
        parts.append(stored)
    return pl.concat(parts, how="diagonal_relaxed").sort(["ts", "kind"], maintain_order=True)


def rows_to_events(frame: pl.DataFrame) -> Iterator[Liquidation | AggTrade]:
    """The one row -> event conversion: liquidation rows (and, with a ``kind`` column, aggTrade
    rows), in the frame's order, a chunk at a time."""
    has_kind = "kind" in frame.columns
    has_trades = "trade_id" in frame.columns
    columns = ["exchange", "symbol", "side", "price", "qty", "notional_usd", "ts"]
    columns += ["venue_symbol", "received_ts"]
    if has_trades:
        columns += ["trade_id", "is_buyer_maker"]
    if has_kind:
        columns.append("kind")
    for offset in range(0, frame.height, _CHUNK):
        chunk = frame.slice(offset, _CHUNK).select(columns)
        for row in chunk.iter_rows():
            ex, sym, side, price, qty, usd, ts, venue_symbol, received = row[:9]
            if not has_kind or row[-1] == LIQUIDATION:
                yield Liquidation(
                    ex,
                    sym,
                    side,
                    price,
                    qty,
                    usd,
                    ts,
                    "" if venue_symbol == sym else venue_symbol or "",
                    received or 0,
                )
            else:
                yield AggTrade(ex, sym, row[9], ts, price, qty, bool(row[10]))


class ReplaySource:
    """Recorded events as a :class:`~liqcli.sources.base.Source`: batches of ``batch`` events at
    full speed (yielding to other tasks between them), on an :class:`EventClock`."""

    def __init__(self, events: Iterable[Any], *, batch: int = BATCH) -> None:
        self.clock = EventClock()
        self.statuses: dict[str, Any] = {}
        self._events = iter(events)
        self._batch = batch
        self._closed = False

    async def batches(self) -> AsyncIterator[list[Any]]:
        observe = self.clock.observe
        while not self._closed and (batch := list(itertools.islice(self._events, self._batch))):
            observe(max(e.ts for e in batch))
            yield batch
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        self._closed = True


def _to_ms(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").alias(name)


def _read_jsonl(path: Path) -> pl.DataFrame:
    """Lines as printed by ``liq watch --format jsonl`` (ts ISO-8601) or journal rows (ts ms);
    DataError naming the first bad line."""
    try:
        raw = pl.read_ndjson(path, schema=_JSONL_SCHEMA)
    except pl.exceptions.PolarsError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not liquidation events in JSON lines ({detail})") from None
    frame = raw.with_columns(_epoch_ms("ts"), _epoch_ms("received_ts").fill_null(0))
    invalid = pl.any_horizontal(pl.col(_REQUIRED).is_null()) | ~pl.col("side").is_in(
        ["long", "short"]
    )
    bad = frame.with_row_index("line", 1).filter(invalid)
    if bad.height:
        raise DataError(
            f"{path}:{bad['line'][0]}: not a liquidation event (needs {', '.join(_REQUIRED)}; "
            "side long or short; ts ISO-8601 or epoch ms)"
        )
    return frame.with_columns(pl.col("venue_symbol").fill_null("")).cast(ROW_SCHEMA)


def _epoch_ms(name: str) -> pl.Expr:
    """ISO-8601 text or epoch-ms digits -> epoch ms (null when neither)."""
    text = pl.col(name)
    return (
        pl.when(text.str.contains(r"^\d+$"))
        .then(text.cast(pl.Int64, strict=False))
        .otherwise(
            text.str.to_datetime(time_unit="ms", time_zone="UTC", strict=False).dt.epoch("ms")
        )
        .alias(name)
    )
