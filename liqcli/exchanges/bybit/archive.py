"""public.bybit.com trade archives: ``trading/{SYM}/{SYM}{YYYY-MM-DD}.csv.gz``.

API::

    bybit_archive_client(data_dir, base_url=None, **kw) -> ArchiveClient   # cache {data_dir}/_archive/bybit
    trading_path(symbol, day) -> str
    await download_trades(client, symbol, start_ms, end_ms) -> list[Path]     # 404 days skipped
    gunzip_csv(gz_path, dest_dir=None) -> Path                                 # decompressed once (atomic)
    parquet_path(gz_path, extract_dir=None) -> Path    # where read_trades caches its Parquet
    read_trades(path_or_paths, extract_dir=None) -> pl.LazyFrame   # .csv.gz: via a cached Parquet
        trade_id Int64 (null: Bybit ids are UUIDs), ts Datetime(ms, UTC), price, qty, is_buyer_maker

Bybit publishes no checksums. Columns are selected by name (newer files add columns);
``timestamp`` is epoch seconds with a fraction; ``side`` is the taker side (Buy|Sell), so
``Sell`` means the buyer was the maker.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import polars as pl

from liqcli.core.endpoints import url
from liqcli.core.schemas import TS
from liqcli.core.timeutil import days_between
from liqcli.errors import DataError
from liqcli.exchanges.archive import ArchiveClient, archive_cache_dir
from liqcli.exchanges.binance.archive import empty_trades, first_line, trades_parquet

REQUIRED = ("timestamp", "side", "size", "price")


def bybit_archive_client(data_dir: Path, base_url: str | None = None, **kwargs) -> ArchiveClient:
    return ArchiveClient(
        base_url or url("LIQ_BYBIT_ARCHIVE_URL"),
        archive_cache_dir(data_dir, "bybit"),
        venue="bybit",
        **kwargs,
    )


def trading_path(symbol: str, day: date) -> str:
    return f"trading/{symbol}/{symbol}{day.isoformat()}.csv.gz"


async def download_trades(
    client: ArchiveClient, symbol: str, start_ms: int, end_ms: int
) -> list[Path]:
    fetched = await client.fetch_many(
        [(trading_path(symbol, d), None) for d in days_between(start_ms, end_ms)]
    )
    return [p for p in fetched if p is not None]


def gunzip_csv(gz_path: Path, dest_dir: Path | None = None) -> Path:
    """Decompress once next to the archive (or into ``dest_dir``) so Polars can scan it lazily."""
    gz_path = Path(gz_path)
    dest_dir = Path(dest_dir) if dest_dir is not None else gz_path.parent
    target = dest_dir / gz_path.name.removesuffix(".gz")
    if target.is_file() and target.stat().st_mtime >= gz_path.stat().st_mtime:
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(gz_path, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(tmp_name, target)
    except (OSError, EOFError) as exc:
        raise DataError(f"{gz_path}: not a readable gzip file ({exc})") from None
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


def scan_trades_csv(csv_path: Path) -> pl.LazyFrame:
    line = first_line(csv_path)
    if not line:
        return empty_trades()
    names = [c.strip().strip('"') for c in line.split(",")]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DataError(f"{csv_path}: not a Bybit trading file (no {', '.join(missing)} column)")
    seconds = pl.col("timestamp").cast(pl.Float64)
    # Seconds with a fraction; tolerate files already in ms or µs (judged by magnitude).
    ms = (
        pl.when(seconds < 1e11)
        .then(seconds * 1000)
        .when(seconds < 1e14)
        .then(seconds)
        .otherwise(seconds / 1000)
        .round(0)
        .cast(pl.Int64)
    )
    side = pl.col("side").str.to_lowercase()
    return (
        pl.scan_csv(csv_path, schema_overrides={"side": pl.String(), "timestamp": pl.Float64()})
        .select(
            pl.lit(None, dtype=pl.Int64).alias("trade_id"),
            ms.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS).alias("ts"),
            pl.col("price").cast(pl.Float64),
            pl.col("size").cast(pl.Float64).alias("qty"),
            (side == "sell").alias("is_buyer_maker"),
            side.alias("_side"),
        )
        .filter(pl.col("_side").is_in(["buy", "sell"]))
        .drop("_side")
    )


def parquet_path(gz_path: Path, extract_dir: Path | None = None) -> Path:
    """Where a ``.csv.gz``'s normalised Parquet conversion lives."""
    dest = Path(extract_dir) if extract_dir is not None else gz_path.parent
    return dest / (gz_path.name.removesuffix(".gz").removesuffix(".csv") + ".trades.parquet")


def scan_trades_gz(gz_path: Path, extract_dir: Path | None = None) -> pl.LazyFrame:
    """A daily ``.csv.gz``, converted once to normalised Parquet next to it (or in
    ``extract_dir``); the decompressed CSV is removed."""
    target = parquet_path(gz_path, extract_dir)
    if not (target.is_file() and target.stat().st_mtime >= gz_path.stat().st_mtime):
        trades_parquet(gunzip_csv(gz_path, target.parent), scan_trades_csv, target)
    return pl.scan_parquet(target)


def read_trades(
    path_or_paths: Path | str | Iterable[Path | str], extract_dir: Path | None = None
) -> pl.LazyFrame:
    paths = (
        [Path(path_or_paths)]
        if isinstance(path_or_paths, str | Path)
        else [Path(p) for p in path_or_paths]
    )
    frames = [
        scan_trades_gz(p, extract_dir) if p.suffix.lower() == ".gz" else scan_trades_csv(p)
        for p in paths
    ]
    return pl.concat(frames, how="vertical") if frames else empty_trades()
