"""``liq map`` wiring: trade sources (files, venue archives, the live aggTrade stream) -> the
liquidation-map core (liqcli.analytics.liqmap) -> tidy bins and charts.

API::

    scan_trades(paths, data_dir) -> pl.LazyFrame          # zip / csv / csv.gz / parquet inputs
    await download_archive_trades(data_dir, exchange, symbol, start_ms, end_ms) -> list[Path]
    scan_archive_trades(exchange, paths) -> pl.LazyFrame
    map_from_files(paths, symbol, spec, data_dir) -> LiqMap
    await map_from_archive(data_dir, exchange, symbol, spec) -> LiqMap
    LiveTrades(window_ms)                                  # rolling window of live trades
    await run_live(symbol, spec, on_map, ...)              # rebuild the map every refresh
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl

from liqcli.analytics.liqmap import LiqMap, MapSpec, build_map
from liqcli.core.events import AggTrade
from liqcli.core.schemas import TS
from liqcli.core.timeutil import iso_ms
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.store.parquet import first_line

log = logging.getLogger("liq")

_ALIASES = {
    "ts": ("ts", "timestamp", "transact_time", "time", "T", "trade_time"),
    "price": ("price", "p"),
    "qty": ("qty", "quantity", "size", "amount", "q"),
}


def _venues() -> tuple[ModuleType, ModuleType]:
    """Binance's and Bybit's archive modules, imported on first use: they bring in httpx, which a
    map from Parquet files never needs."""
    from liqcli.exchanges.binance import archive as binance_archive
    from liqcli.exchanges.bybit import archive as bybit_archive

    return binance_archive, bybit_archive


def input_extract_dir(data_dir: Path, path: Path) -> Path:
    """Where a user's zip / csv.gz is unpacked: under the archive cache, keyed by its path so two
    inputs with the same file name never collide."""
    from liqcli.exchanges.archive import archive_cache_dir

    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return archive_cache_dir(data_dir, "_input") / key


def _epoch_ms(column: str, dtype: pl.DataType) -> pl.Expr:
    """Any epoch column (Datetime, or numbers in s / ms / µs / ns judged by magnitude) -> Int64 ms."""
    col = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("ms")
    value = col.cast(pl.Float64)
    return (
        pl.when(value < 1e11)
        .then(value * 1000)
        .when(value < 1e14)
        .then(value)
        .when(value < 1e17)
        .then(value / 1000)
        .otherwise(value / 1e6)
        .round(0)
        .cast(pl.Int64)
    )


def normalise_trades(lf: pl.LazyFrame, source: str) -> pl.LazyFrame:
    """A trades table with recognisable columns (our agg_trades dataset, Binance or Bybit names,
    nautilus-style ``buyer_maker``) -> ts, price, qty, is_buyer_maker."""
    schema = lf.collect_schema()
    names = list(schema.names())

    def pick(role: str) -> str:
        found = next((n for n in _ALIASES[role] if n in names), None)
        if found is None:
            raise DataError(f"{source}: no {role} column among {', '.join(names)}")
        return found

    ts_col = pick("ts")
    if "is_buyer_maker" in names or "buyer_maker" in names or "m" in names:
        flag = next(n for n in ("is_buyer_maker", "buyer_maker", "m") if n in names)
        maker = pl.col(flag)
        if schema[flag] == pl.String:
            maker = maker.str.to_lowercase() == "true"
        maker = maker.cast(pl.Boolean)
    elif "side" in names:
        maker = pl.col("side").cast(pl.String).str.to_lowercase().is_in(["sell", "s", "short"])
    else:
        raise DataError(f"{source}: no is_buyer_maker or side column among {', '.join(names)}")
    return lf.select(
        _epoch_ms(ts_col, schema[ts_col])
        .cast(pl.Datetime("ms"))
        .dt.replace_time_zone("UTC")
        .cast(TS)
        .alias("ts"),
        pl.col(pick("price")).cast(pl.Float64).alias("price"),
        pl.col(pick("qty")).cast(pl.Float64).alias("qty"),
        maker.alias("is_buyer_maker"),
    )


def _scan_csv(csv_path: Path) -> pl.LazyFrame:
    binance_archive, bybit_archive = _venues()
    header = binance_archive.first_line(csv_path)
    names = {c.strip().strip('"') for c in header.split(",")}
    if binance_archive.has_header(header) and {"timestamp", "side", "size"} <= names:
        return bybit_archive.scan_trades_csv(csv_path)
    return binance_archive.scan_agg_trades_csv(csv_path)


def _source(path: Path, data_dir: Path) -> Path:
    """The file to scan for an input: zips and csv.gz are unpacked and converted to Parquet
    once, under the archive cache; csv and parquet are read where they are."""
    if not path.is_file():
        raise UsageError(f"--input {path}: no such file")
    name = path.name.lower()
    if name.endswith((".parquet", ".csv")):
        return path
    if not name.endswith((".zip", ".gz")):
        raise UsageError(f"--input {path}: unsupported file type (zip, csv, csv.gz or parquet)")
    stem = name.removesuffix(".zip").removesuffix(".gz").removesuffix(".csv")
    for dest in (input_extract_dir(data_dir, path), _temp_extract_dir(path)):
        target = dest / f"{stem}.trades.parquet"
        if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
            return target
        if _writable(dest):
            break
        log.warning(
            "%s is not writable: converting %s under %s instead",
            _cache_root(dest),
            path.name,
            tempfile.gettempdir(),
        )
    else:
        raise LiqError(f"--input {path}: no writable directory to unpack it into ({dest})")
    binance_archive, bybit_archive = _venues()
    unpack = binance_archive.extract_csv if name.endswith(".zip") else bybit_archive.gunzip_csv
    try:
        binance_archive.trades_parquet(unpack(path, dest), _scan_csv, target)
    except OSError as exc:
        raise LiqError(
            f"--input {path}: cannot unpack into {dest}: {exc.strerror or exc}"
        ) from None
    return target


def _temp_extract_dir(path: Path) -> Path:
    """The fallback when the data dir cannot be written (read-only mount, a path under a file):
    a per-user cache under the system temp dir, keyed like the data dir's."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"liq-{os.getuid()}" / "_input" / key


def _cache_root(dest: Path) -> Path:
    # {root}/_archive/_input/{key} -> {root}: the directory the user named.
    return dest.parents[2] if len(dest.parents) > 2 else dest


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _scan_source(path: Path) -> pl.LazyFrame:
    if path.name.lower().endswith(".parquet"):
        try:
            return normalise_trades(pl.scan_parquet(path), str(path))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    return _scan_csv(path)


def scan_trades_file(path: Path, data_dir: Path) -> pl.LazyFrame:
    """One input file (zip, csv, csv.gz, parquet) as normalised trades, lazily."""
    return _scan_source(_source(Path(path), data_dir))


def estimated_rows(sources: Iterable[Path]) -> int:
    """Trades in the scanned files: exact for Parquet (footer metadata), ~60 bytes a row for CSV."""
    rows = 0
    for path in sources:
        if path.name.lower().endswith(".parquet"):
            rows += int(pl.scan_parquet(path).select(pl.len()).collect().item())
        else:
            rows += path.stat().st_size // 60
    return rows


def scan_trades(paths: Iterable[Path], data_dir: Path) -> pl.LazyFrame:
    frames = [scan_trades_file(Path(p), data_dir) for p in paths]
    if not frames:
        raise UsageError("--input needs at least one file")
    return pl.concat(
        [f.select("ts", "price", "qty", "is_buyer_maker") for f in frames], how="vertical"
    )


async def download_archive_trades(
    data_dir: Path, exchange: str, symbol: str, start_ms: int, end_ms: int, **client_kw: Any
) -> list[Path]:
    """The venue's daily trade files for the days touched by [start, end), cached and (Binance)
    checksum-verified; days the archive lacks are skipped with a warning."""
    from liqcli.exchanges import registry

    venue = registry.get(exchange)
    async with venue.archive_part("client")(data_dir, **client_kw) as client:
        paths = await venue.archive_part("download")(client, symbol, start_ms, end_ms)
    if not paths:
        raise LiqError(
            f"{exchange}: no archive files for {symbol} between {iso_ms(start_ms)} and {iso_ms(end_ms)} "
            "(archives publish each day after it ends; check the symbol and dates)"
        )
    return paths


def scan_archive_trades(exchange: str, paths: list[Path]) -> pl.LazyFrame:
    from liqcli.exchanges import registry

    read = registry.get(exchange).archive_part("read")
    return read(paths).select("ts", "price", "qty", "is_buyer_maker")


# Below this many trades one shared scan builds the map (faster; its peak memory, ~40 bytes a
# row, stays small); above it each pass scans on its own in bounded memory.
SHARED_SCAN_MAX_ROWS = 10_000_000


def _build(trades: pl.LazyFrame, spec: MapSpec, symbol: str, rows: int) -> LiqMap:
    try:
        return build_map(trades, spec, symbol=symbol, shared_scan=rows <= SHARED_SCAN_MAX_ROWS)
    except pl.exceptions.PolarsError as exc:
        # A malformed row deep inside a file surfaces only when the scan reaches it.
        raise DataError(f"cannot read the trades: {first_line(exc)}") from None


def map_from_files(paths: Iterable[Path], symbol: str, spec: MapSpec, data_dir: Path) -> LiqMap:
    sources = [_source(Path(p), data_dir) for p in paths]
    if not sources:
        raise UsageError("--input needs at least one file")
    trades = pl.concat(
        [_scan_source(p).select("ts", "price", "qty", "is_buyer_maker") for p in sources],
        how="vertical",
    )
    return _build(trades, spec, symbol, estimated_rows(sources))


async def map_from_archive(
    data_dir: Path, exchange: str, symbol: str, spec: MapSpec, **client_kw: Any
) -> LiqMap:
    if spec.start_ms is None or spec.end_ms is None:
        raise UsageError("archive downloads need --start and --end")
    from liqcli.core.timeutil import day_floor, now_ms

    # A day is archived once it has ended: today's file is never there yet (no 404 for it).
    archived_until = day_floor(now_ms())
    end = min(spec.end_ms, archived_until)
    if end <= spec.start_ms:
        raise LiqError(
            f"{exchange}: nothing archived yet between {iso_ms(spec.start_ms)} and "
            f"{iso_ms(spec.end_ms)} (each day is published after it ends; try --live)"
        )
    if end < spec.end_ms:
        log.warning(
            "today (%s) is not archived yet: the map ends at %s", iso_ms(end)[:10], iso_ms(end)
        )
    paths = await download_archive_trades(
        data_dir, exchange, symbol, spec.start_ms, end, **client_kw
    )
    import asyncio  # only the archive and live paths need it (a map from files does not)

    # Converting and scanning is CPU-bound: keep the event loop free for Ctrl-C.
    return await asyncio.to_thread(_archive_map, exchange, paths, spec, symbol)


def _archive_map(exchange: str, paths: list[Path], spec: MapSpec, symbol: str) -> LiqMap:
    from liqcli.exchanges import registry

    trades = scan_archive_trades(exchange, paths)  # converts each day to Parquet once
    parquet_path = registry.get(exchange).archive_part("parquet_path")
    return _build(trades, spec, symbol, estimated_rows(parquet_path(p) for p in paths))


class LiveTrades:
    """The live trades of the last ``window_ms``, kept as Polars chunks (one per refresh), so
    each rebuild runs the same lazy core as the archive path on a small in-memory frame."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._pending: list[tuple[int, float, float, bool]] = []
        self._chunks: list[pl.DataFrame] = []
        self.received = 0

    def add(self, trade: AggTrade) -> None:
        self._pending.append((trade.ts, trade.price, trade.qty, trade.is_buyer_maker))
        self.received += 1

    def frame(self, now_ms: int) -> pl.DataFrame:
        if self._pending:
            ts, price, qty, maker = zip(*self._pending, strict=True)
            self._chunks.append(
                pl.DataFrame(
                    {"ts": ts, "price": price, "qty": qty, "is_buyer_maker": maker},
                    schema={
                        "ts": pl.Int64,
                        "price": pl.Float64,
                        "qty": pl.Float64,
                        "is_buyer_maker": pl.Boolean,
                    },
                )
            )
            self._pending = []
        cutoff = now_ms - self.window_ms
        # Drop whole chunks that left the window; the core filters the rest by time.
        while self._chunks and self._chunks[0]["ts"].max() < cutoff:
            self._chunks.pop(0)
        if not self._chunks:
            return pl.DataFrame(
                schema={
                    "ts": pl.Int64,
                    "price": pl.Float64,
                    "qty": pl.Float64,
                    "is_buyer_maker": pl.Boolean,
                }
            )
        return pl.concat(self._chunks).filter(pl.col("ts") >= cutoff)


async def run_live(
    symbol: str,
    spec: MapSpec,
    on_map: Callable[[LiqMap], None],
    *,
    window_ms: int,
    refresh_s: float,
    duration_s: float | None = None,
    stream_factory: Callable[[str], Any] | None = None,
    wall_ms: Callable[[], int] | None = None,
) -> LiveTrades:
    """Consume the Binance aggTrade stream and call ``on_map`` with a map rebuilt every
    ``refresh_s`` (and once more at the end) over the trades of the last ``window_ms``.
    Runs until ``duration_s`` passes, the stream ends, or the task is cancelled (Ctrl-C)."""
    import asyncio

    from liqcli.core.timeutil import now_ms
    from liqcli.services.streams import aggtrade_stream

    factory = stream_factory or aggtrade_stream
    wall = wall_ms or now_ms
    trades = LiveTrades(window_ms)
    spec = spec.resolved()
    loop = asyncio.get_running_loop()
    deadline = None if duration_s is None else loop.time() + duration_s

    async def rebuild() -> None:
        frame = trades.frame(wall())
        if frame.height:
            # Off the event loop so trades keep arriving while Polars works.
            liqmap = await asyncio.to_thread(
                build_map, frame.lazy(), spec, symbol=symbol, engine="in-memory"
            )
            on_map(liqmap)

    async with factory(symbol) as stream:

        async def consume() -> None:
            async for event in stream:
                if isinstance(event, AggTrade) and event.symbol == symbol:
                    trades.add(event)

        consumer = asyncio.create_task(consume())
        try:
            while not consumer.done():
                wait = refresh_s if deadline is None else min(refresh_s, deadline - loop.time())
                await asyncio.wait({consumer}, timeout=max(wait, 0.0))
                if deadline is not None and loop.time() >= deadline:
                    break
                await rebuild()
            if consumer.done():
                consumer.result()  # a stream that failed raises here
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    await rebuild()
    return trades
