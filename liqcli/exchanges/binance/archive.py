"""data.binance.vision USDⓈ-M futures archives: daily aggTrades and metrics zips.

API::

    binance_archive_client(data_dir, base_url=None, **kw) -> ArchiveClient   # cache {data_dir}/_archive/binance
    agg_trades_path(symbol, day) -> str      # data/futures/um/daily/aggTrades/{SYM}/{SYM}-aggTrades-{day}.zip
    metrics_path(symbol, day) -> str         # data/futures/um/daily/metrics/{SYM}/{SYM}-metrics-{day}.zip
    await download_agg_trades(client, symbol, start_ms, end_ms) -> list[Path]   # 404 days skipped
    await download_metrics(client, symbol, start_ms, end_ms) -> list[Path]
    extract_csv(zip_path, dest_dir=None) -> Path      # the zip's CSV, extracted once (atomic)
    read_agg_trades(path_or_paths, extract_dir=None) -> pl.LazyFrame
        trade_id Int64, ts Datetime(ms, UTC), price Float64, qty Float64, is_buyer_maker Boolean
        (zip or csv; with or without header; ms or µs transact_time; 6-column trades files too).
        A zip is converted once to a normalised Parquet file next to it (or in ``extract_dir``),
        so later reads are column-pruned Parquet scans instead of CSV parsing.
    parquet_path(zip_path, extract_dir=None) -> Path  # where read_agg_trades caches its Parquet
    trades_parquet(csv_path, scan, target) -> Path    # the conversion, reused for Bybit
    read_metrics(path_or_paths, extract_dir=None) -> pl.DataFrame   # 5-minute rows:
        ts, symbol, open_interest, open_interest_value, top_account_ratio (count_toptrader_…),
        top_position_ratio (sum_toptrader_…), global_account_ratio (count_long_short_ratio),
        taker_buy_sell_ratio (sum_taker_long_short_vol_ratio)
    book_depth_path(symbol, day) / book_ticker_path(symbol, day)   # daily bookDepth / bookTicker zips
    await download_daily(client, kind, symbol, start_ms, end_ms) -> list[Path]   # kind: bookDepth, ...
    read_book_depth(path_or_paths, extract_dir=None) -> pl.DataFrame   # ~30 s depth bands:
        ts, side (bid|ask), level (band in basis points: 100 = 1 % from mid), percentage, depth,
        notional (CSV timestamp,percentage,depth,notional; negative percentages are bids)
    read_book_ticker(path_or_paths, extract_dir=None) -> pl.DataFrame   # every best bid/ask change:
        ts (transaction_time), update_id, bid, bid_qty, ask, ask_qty
        (CSV update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,
        event_time)

Day ranges are UTC calendar days touched by [start_ms, end_ms).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path

import polars as pl

from liqcli.core.endpoints import url
from liqcli.core.schemas import TS
from liqcli.core.timeutil import days_between
from liqcli.errors import DataError
from liqcli.exchanges.archive import ArchiveClient, archive_cache_dir

AGG_TRADES_COLUMNS = (
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
)
# Plain (non-aggregated) trades files share the idea but not the layout.
TRADES_COLUMNS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker")
METRICS_COLUMNS = {
    "create_time": "ts",
    "symbol": "symbol",
    "sum_open_interest": "open_interest",
    "sum_open_interest_value": "open_interest_value",
    "count_toptrader_long_short_ratio": "top_account_ratio",
    "sum_toptrader_long_short_ratio": "top_position_ratio",
    "count_long_short_ratio": "global_account_ratio",
    "sum_taker_long_short_vol_ratio": "taker_buy_sell_ratio",
}
# Epoch values above this are microseconds (1e14 ms would be the year 5138).
_US_THRESHOLD = 10**14


def binance_archive_client(data_dir: Path, base_url: str | None = None, **kwargs) -> ArchiveClient:
    return ArchiveClient(
        base_url or url("LIQ_BINANCE_ARCHIVE_URL"),
        archive_cache_dir(data_dir, "binance"),
        venue="binance",
        **kwargs,
    )


def agg_trades_path(symbol: str, day: date) -> str:
    return f"data/futures/um/daily/aggTrades/{symbol}/{symbol}-aggTrades-{day.isoformat()}.zip"


def metrics_path(symbol: str, day: date) -> str:
    return f"data/futures/um/daily/metrics/{symbol}/{symbol}-metrics-{day.isoformat()}.zip"


def daily_path(kind: str, symbol: str, day: date) -> str:
    """``data/futures/um/daily/{kind}/{SYM}/{SYM}-{kind}-{day}.zip`` (aggTrades, bookDepth, ...)."""
    return f"data/futures/um/daily/{kind}/{symbol}/{symbol}-{kind}-{day.isoformat()}.zip"


def book_depth_path(symbol: str, day: date) -> str:
    return daily_path("bookDepth", symbol, day)


def book_ticker_path(symbol: str, day: date) -> str:
    return daily_path("bookTicker", symbol, day)


async def _download_days(client: ArchiveClient, paths: list[str]) -> list[Path]:
    fetched = await client.fetch_many([(p, p + ".CHECKSUM") for p in paths])
    return [p for p in fetched if p is not None]


async def download_agg_trades(
    client: ArchiveClient, symbol: str, start_ms: int, end_ms: int
) -> list[Path]:
    """Daily aggTrades zips for the days touched by [start, end); missing days are skipped."""
    return await _download_days(
        client, [agg_trades_path(symbol, d) for d in days_between(start_ms, end_ms)]
    )


async def download_metrics(
    client: ArchiveClient, symbol: str, start_ms: int, end_ms: int
) -> list[Path]:
    """Daily metrics zips (5-minute open interest and long/short ratios)."""
    return await _download_days(
        client, [metrics_path(symbol, d) for d in days_between(start_ms, end_ms)]
    )


async def download_daily(
    client: ArchiveClient, kind: str, symbol: str, start_ms: int, end_ms: int
) -> list[Path]:
    """Daily ``kind`` zips (``bookDepth``, ``bookTicker``, ...) for the days of [start, end)."""
    return await _download_days(
        client, [daily_path(kind, symbol, d) for d in days_between(start_ms, end_ms)]
    )


def extract_csv(zip_path: Path, dest_dir: Path | None = None) -> Path:
    """The single CSV inside an archive zip, extracted next to it (or into ``dest_dir``) once.

    Extraction goes through a temp file and a rename, so a killed run never leaves half a CSV that
    a later run would trust.
    """
    zip_path = Path(zip_path)
    dest_dir = Path(dest_dir) if dest_dir is not None else zip_path.parent
    target = dest_dir / (zip_path.name.removesuffix(".zip") + ".csv")
    if target.is_file() and target.stat().st_mtime >= zip_path.stat().st_mtime:
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise DataError(f"{zip_path}: expected one CSV inside, found {len(members)}")
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=dest_dir)
            try:
                with os.fdopen(fd, "wb") as out, archive.open(members[0]) as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.replace(tmp_name, target)
            finally:
                Path(tmp_name).unlink(missing_ok=True)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(f"{zip_path}: not a readable zip ({exc})") from None
    return target


def first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.readline(4096).decode("utf-8", errors="replace").strip()


def has_header(line: str) -> bool:
    """Archive CSVs start with either column names or a number (older files have no header)."""
    head = line.split(",", 1)[0].strip().strip('"')
    try:
        float(head)
    except ValueError:
        return bool(head)
    return False


def epoch_to_ts(column: str | pl.Expr) -> pl.Expr:
    """Integer ms or µs epochs (detected per value by magnitude) -> Datetime(ms, UTC)."""
    raw = pl.col(column) if isinstance(column, str) else column
    raw = raw.cast(pl.Int64)
    ms = pl.when(raw > _US_THRESHOLD).then(raw // 1000).otherwise(raw)
    return ms.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").cast(TS)


def _as_paths(path_or_paths: Path | str | Iterable[Path | str]) -> list[Path]:
    if isinstance(path_or_paths, str | Path):
        return [Path(path_or_paths)]
    return [Path(p) for p in path_or_paths]


def _csv_of(path: Path, extract_dir: Path | None) -> Path:
    return extract_csv(path, extract_dir) if path.suffix.lower() == ".zip" else path


def scan_agg_trades_csv(csv_path: Path) -> pl.LazyFrame:
    """One Binance aggTrades (or trades) CSV, lazily, in the normalised trade columns."""
    line = first_line(csv_path)
    if not line:
        return empty_trades()
    if has_header(line):
        names = [c.strip().strip('"') for c in line.split(",")]
        lf = pl.scan_csv(csv_path, has_header=True, schema_overrides=_bool_override(names))
    else:
        width = line.count(",") + 1
        if width == len(AGG_TRADES_COLUMNS):
            names = list(AGG_TRADES_COLUMNS)
        elif width == len(TRADES_COLUMNS):
            names = list(TRADES_COLUMNS)
        else:
            raise DataError(f"{csv_path}: {width} columns, not a Binance aggTrades/trades file")
        lf = pl.scan_csv(
            csv_path, has_header=False, new_columns=names, schema_overrides=_bool_override(names)
        )
    pick = _pick(names, csv_path)
    return lf.select(
        pl.col(pick["id"]).cast(pl.Int64).alias("trade_id"),
        epoch_to_ts(pick["time"]).alias("ts"),
        pl.col(pick["price"]).cast(pl.Float64).alias("price"),
        pl.col(pick["qty"]).cast(pl.Float64).alias("qty"),
        pl.col("is_buyer_maker").cast(pl.Boolean).alias("is_buyer_maker"),
    )


def _bool_override(names: list[str]) -> dict[str, pl.DataType]:
    return {"is_buyer_maker": pl.Boolean()} if "is_buyer_maker" in names else {}


def _pick(names: list[str], path: Path) -> dict[str, str]:
    aliases = {
        "id": ("agg_trade_id", "id", "trade_id", "agg_id"),
        "price": ("price",),
        "qty": ("quantity", "qty"),
        "time": ("transact_time", "time", "timestamp"),
    }
    picked: dict[str, str] = {}
    for role, options in aliases.items():
        found = next((n for n in options if n in names), None)
        if found is None:
            raise DataError(f"{path}: no {role} column among {', '.join(names)}")
        picked[role] = found
    if "is_buyer_maker" not in names:
        raise DataError(f"{path}: no is_buyer_maker column among {', '.join(names)}")
    return picked


def empty_trades() -> pl.LazyFrame:
    return pl.LazyFrame(
        schema={
            "trade_id": pl.Int64,
            "ts": TS,
            "price": pl.Float64,
            "qty": pl.Float64,
            "is_buyer_maker": pl.Boolean,
        }
    )


def trades_parquet(csv_path: Path, scan: Callable[[Path], pl.LazyFrame], target: Path) -> Path:
    """Convert an extracted archive CSV to normalised Parquet once (streaming, atomic), then drop
    the CSV: a month of BTCUSDT aggTrades is ~3 GB of CSV and ~0.4 GB of Parquet, and every
    later pass reads only the columns it needs."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        scan(csv_path).sink_parquet(tmp_name, engine="streaming")
        os.replace(tmp_name, target)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{csv_path}: cannot parse ({str(exc).splitlines()[0]})") from None
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    csv_path.unlink(missing_ok=True)
    return target


def _fresh(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def parquet_path(zip_path: Path, extract_dir: Path | None = None) -> Path:
    """Where a zip's normalised Parquet conversion lives."""
    dest = Path(extract_dir) if extract_dir is not None else zip_path.parent
    return dest / (zip_path.name.removesuffix(".zip") + ".trades.parquet")


def scan_agg_trades_zip(zip_path: Path, extract_dir: Path | None = None) -> pl.LazyFrame:
    target = parquet_path(zip_path, extract_dir)
    if not _fresh(target, zip_path):
        trades_parquet(extract_csv(zip_path, target.parent), scan_agg_trades_csv, target)
    return pl.scan_parquet(target)


def read_agg_trades(
    path_or_paths: Path | str | Iterable[Path | str], extract_dir: Path | None = None
) -> pl.LazyFrame:
    """aggTrades zips/CSVs as one lazy frame (trade_id, ts, price, qty, is_buyer_maker)."""
    frames = [
        scan_agg_trades_zip(p, extract_dir)
        if p.suffix.lower() == ".zip"
        else scan_agg_trades_csv(p)
        for p in _as_paths(path_or_paths)
    ]
    return pl.concat(frames, how="vertical") if frames else empty_trades()


def read_metrics(
    path_or_paths: Path | str | Iterable[Path | str], extract_dir: Path | None = None
) -> pl.DataFrame:
    """Daily metrics zips/CSVs -> 5-minute rows sorted by ts, archive columns renamed (see module doc)."""
    frames = []
    for path in _as_paths(path_or_paths):
        csv_path = _csv_of(path, extract_dir)
        if not first_line(csv_path):
            continue
        df = pl.read_csv(csv_path, infer_schema_length=0)  # all strings: parse explicitly below
        missing = [c for c in METRICS_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{path}: metrics file lacks {', '.join(missing)}")
        frames.append(df.select(list(METRICS_COLUMNS)).rename(METRICS_COLUMNS))
    if not frames:
        return pl.DataFrame(schema=_metrics_schema())
    df = pl.concat(frames)
    created = pl.col("ts").str.strip_chars()
    ts = (
        pl.when(created.str.contains(r"^\d+$"))
        .then(epoch_to_ts(created.cast(pl.Int64, strict=False)))
        .otherwise(
            created.str.to_datetime(
                "%Y-%m-%d %H:%M:%S", strict=False, time_unit="ms", time_zone="UTC"
            )
        )
    )
    numeric = [c for c in _metrics_schema() if c not in ("ts", "symbol")]
    out = df.with_columns(
        ts.alias("ts"), *(pl.col(c).cast(pl.Float64, strict=False) for c in numeric)
    )
    if out["ts"].null_count():
        raise DataError(
            f"metrics: unparseable create_time values, e.g. {df['ts'][out['ts'].is_null().arg_max()]!r}"
        )
    return out.unique(["symbol", "ts"], keep="last").sort("symbol", "ts")


def _metrics_schema() -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"ts": TS, "symbol": pl.String()}
    schema.update({name: pl.Float64() for name in list(METRICS_COLUMNS.values())[2:]})
    return schema


BOOK_DEPTH_COLUMNS = ("timestamp", "percentage", "depth", "notional")
BOOK_TICKER_COLUMNS = (
    "update_id",
    "best_bid_price",
    "best_bid_qty",
    "best_ask_price",
    "best_ask_qty",
    "transaction_time",
    "event_time",
)


def _archive_csv(path: Path, extract_dir: Path | None, columns: tuple[str, ...]) -> pl.DataFrame:
    """One archive CSV as strings, header or not, checked for the expected columns."""
    csv_path = _csv_of(path, extract_dir)
    line = first_line(csv_path)
    if not line:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    if has_header(line):
        df = pl.read_csv(csv_path, infer_schema_length=0)
        df = df.rename({c: c.strip().strip('"') for c in df.columns})
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"{path}: archive file lacks {', '.join(missing)}")
        return df.select(columns)
    width = line.count(",") + 1
    if width != len(columns):
        raise DataError(f"{path}: {width} columns, expected {', '.join(columns)}")
    return pl.read_csv(csv_path, has_header=False, new_columns=list(columns), infer_schema_length=0)


def _text_or_epoch_ts(column: str) -> pl.Expr:
    """``2024-01-01 00:00:08`` (bookDepth files) or epoch ms/µs -> Datetime(ms, UTC)."""
    raw = pl.col(column).str.strip_chars()
    return (
        pl.when(raw.str.contains(r"^\d+$"))
        .then(epoch_to_ts(raw.cast(pl.Int64, strict=False)))
        .otherwise(
            raw.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="ms", time_zone="UTC")
        )
    )


def _strict(df: pl.DataFrame, path_text: str, exprs: list[pl.Expr]) -> pl.DataFrame:
    try:
        out = df.select(exprs)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path_text}: unparseable value ({str(exc).splitlines()[0]})") from None
    nulls = [c for c, n in out.null_count().row(0, named=True).items() if n]
    if nulls:
        raise DataError(f"{path_text}: unparseable or empty {nulls[0]} values")
    return out


def read_book_depth(
    path_or_paths: Path | str | Iterable[Path | str], extract_dir: Path | None = None
) -> pl.DataFrame:
    """Daily bookDepth zips/CSVs -> depth bands sorted by ts (see the module docstring)."""
    frames = []
    for path in _as_paths(path_or_paths):
        df = _archive_csv(path, extract_dir, BOOK_DEPTH_COLUMNS)
        pct = pl.col("percentage").str.strip_chars().cast(pl.Float64)
        frames.append(
            _strict(
                df,
                str(path),
                [
                    _text_or_epoch_ts("timestamp").alias("ts"),
                    pl.when(pct < 0).then(pl.lit("bid")).otherwise(pl.lit("ask")).alias("side"),
                    (pct.abs() * 100).round(0).cast(pl.Int64).alias("level"),
                    pct.alias("percentage"),
                    pl.col("depth").str.strip_chars().cast(pl.Float64).alias("depth"),
                    pl.col("notional").str.strip_chars().cast(pl.Float64).alias("notional"),
                ],
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={
                "ts": TS,
                "side": pl.String(),
                "level": pl.Int64(),
                "percentage": pl.Float64(),
                "depth": pl.Float64(),
                "notional": pl.Float64(),
            }
        )
    return (
        pl.concat(frames).unique(["ts", "side", "level"], keep="last").sort("ts", "side", "level")
    )


def read_book_ticker(
    path_or_paths: Path | str | Iterable[Path | str], extract_dir: Path | None = None
) -> pl.DataFrame:
    """Daily bookTicker zips/CSVs -> best bid/ask rows sorted by (ts, update_id)."""
    frames = []
    for path in _as_paths(path_or_paths):
        df = _archive_csv(path, extract_dir, BOOK_TICKER_COLUMNS)

        def num(name: str) -> pl.Expr:
            return pl.col(name).str.strip_chars().cast(pl.Float64)

        frames.append(
            _strict(
                df,
                str(path),
                [
                    epoch_to_ts(pl.col("transaction_time").str.strip_chars()).alias("ts"),
                    pl.col("update_id").str.strip_chars().cast(pl.Int64).alias("update_id"),
                    num("best_bid_price").alias("bid"),
                    num("best_bid_qty").alias("bid_qty"),
                    num("best_ask_price").alias("ask"),
                    num("best_ask_qty").alias("ask_qty"),
                ],
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={
                "ts": TS,
                "update_id": pl.Int64(),
                "bid": pl.Float64(),
                "bid_qty": pl.Float64(),
                "ask": pl.Float64(),
                "ask_qty": pl.Float64(),
            }
        )
    return pl.concat(frames).unique(["ts", "update_id"], keep="last").sort("ts", "update_id")
