"""``liq fetch``: Binance futures market metrics into the Parquet store, incrementally.

For each (dataset, symbol) the service works out what is *missing* from the store inside the
requested range [start, end), asks Binance only for that, and writes each chunk as it arrives:

- grid datasets (the five ``/futures/data/*`` and klines) are compared row by row with the period
  grid (a Polars scan of the stored ``ts``), so a tail after the last row, a head before the first
  one, or a hole left by a run killed with ``kill -9`` are all found and filled; funding (not on a
  fixed grid) is filled where two stored rows, or a range edge and a row, are further apart than
  the longest funding interval (8 h);
- pages are requested concurrently (a few per pair, all pairs at once, within the venue's budgets)
  but written strictly in order, so an interrupted run leaves a prefix of each range in the store
  and the next run continues from it; writes are atomic upserts, so nothing is ever duplicated;
- ``/futures/data/*`` only reach back 30 days: older parts of a request are either fetched from the
  data.binance.vision daily ``metrics`` archive (``archive=True``, 5-minute period) or reported as
  ``partial`` with an explanation, never silently dropped;
- klines: only closed candles are stored (the open one is fetched again next run);
- ``agg_trades`` (``archive=True`` only): daily aggTrades zips (checksum-verified, cached where
  ``liq map`` looks for them) into the ``agg_trades`` dataset, one day at a time;
- ``book_depth`` and ``book_ticker`` (``archive=True`` only): daily bookDepth zips (depth and
  notional at +-1..5 % from mid, every ~30 s) into ``book_depth`` (``source=archive``) and daily
  bookTicker zips into ``book_tops``, where the archive publishes them (missing days: partial).

A failure (unknown symbol, exchange error, bad data, exhausted retries) fails only its own
(dataset, symbol): what was fetched before it is kept, the other pairs carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, Literal, Protocol

import polars as pl

from liqcli.core.schemas import DATASETS
from liqcli.core.timeutil import days_between, duration_ms, iso_ms, now_ms, period_ms
from liqcli.errors import LiqError, NetworkError, RateLimitError, UsageError
from liqcli.exchanges.archive import ArchiveClient
from liqcli.exchanges.binance.archive import (
    agg_trades_path,
    binance_archive_client,
    daily_path,
    download_metrics,
    read_agg_trades,
    read_book_depth,
    read_book_ticker,
    read_metrics,
)
from liqcli.exchanges.binance.rest import (
    ENDPOINTS,
    EXCHANGE_INFO_PATH,
    FETCH_DATASETS,
    VENUE,
    binance_http,
    fetch_page,
)
from liqcli.exchanges.http import VenueHttp
from liqcli.exchanges.parsing import Refusals
from liqcli.store.parquet import Store

log = logging.getLogger("liq")

# Only with archive=True, never by default.
ARCHIVE_DATASETS: tuple[str, ...] = ("agg_trades", "book_depth", "book_ticker")
# Archive day files besides aggTrades: --dataset name -> (archive kind, stored dataset, partitions)
BOOK_ARCHIVES: dict[str, tuple[str, str, dict[str, str]]] = {
    "book_depth": ("bookDepth", "book_depth", {"source": "archive"}),
    "book_ticker": ("bookTicker", "book_tops", {}),
}
DEFAULT_SINCE = "30d"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
FUNDING_MAX_INTERVAL_MS = 8 * 3_600_000 + 60_000  # Binance's longest funding interval, plus slack
# Binance's clock and ours differ a little; a startTime exactly 30 days back may already be "too old".
HISTORY_MARGIN_MS = 60_000
PAGES_IN_FLIGHT = 4  # per (dataset, symbol); the venue client caps the total
# Rows buffered per (dataset, symbol) before a write: each write rewrites the month file, so
# fewer is cheaper; a kill loses at most this much, which the next run fetches again.
FLUSH_ROWS = 5_000

Status = Literal["ok", "partial", "error"]


@dataclass
class FetchResult:
    dataset: str
    symbol: str
    new_rows: int = 0
    first_ts: int | None = None  # of the rows received in this run
    last_ts: int | None = None
    status: Status = "ok"
    error: str | None = None
    note: str | None = None  # why a result is partial
    requests: int = 0
    # Malformed rows left out, by reason (liqcli.exchanges.parsing.REASONS).
    refused: Refusals = field(default_factory=Refusals)

    def as_row(self) -> dict[str, Any]:
        """The summary row ``liq fetch`` prints (times as ISO-8601 UTC)."""
        return {
            "dataset": self.dataset,
            "symbol": self.symbol,
            "new_rows": self.new_rows,
            "first_ts": iso_ms(self.first_ts) if self.first_ts is not None else None,
            "last_ts": iso_ms(self.last_ts) if self.last_ts is not None else None,
            "status": self.status,
            "refused_rows": self.refused.total,
            "message": self.error or self.note or self.refused_note(),
        }

    def refused_note(self) -> str | None:
        if not self.refused:
            return None
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.refused.items()))
        return f"refused {self.refused.total} malformed rows ({counts})"


class Progress(Protocol):
    """What the CLI's progress bar is told."""

    def planned(self, pages: int) -> None: ...  # more requests (or archive days) are due

    def page_done(self, dataset: str, symbol: str, rows: int) -> None: ...


def resolve_datasets(names: Iterable[str] | None, *, archive: bool) -> list[str]:
    """Validate ``--dataset`` values (default: all seven REST datasets), keeping their order."""
    chosen = list(dict.fromkeys(names or FETCH_DATASETS))
    allowed = FETCH_DATASETS + ARCHIVE_DATASETS
    for name in chosen:
        if name not in allowed:
            raise UsageError(f"unknown dataset {name!r}: choose from {', '.join(allowed)}")
        if name in ARCHIVE_DATASETS and not archive:
            raise UsageError(f"dataset {name} comes from data.binance.vision: add --archive")
    return chosen


SYMBOLS_CACHE = ("_cache", "binance_usdm_symbols.json")
SYMBOLS_MAX_AGE_MS = DAY_MS


async def require_listed(http: VenueHttp, data_dir: Any, symbols: list[str], now: int) -> None:
    """UsageError (exit 2, before any data request) for symbols Binance does not list.

    The list comes from ``exchangeInfo``, cached a day under ``{data}/_cache``; a symbol missing
    from a cached list refreshes it once (a new listing). When the list cannot be had (the
    request fails, the cache is unwritable), nothing is decided here: the data requests tell."""
    from pathlib import Path

    import orjson

    path = Path(data_dir).joinpath(*SYMBOLS_CACHE)
    listed: set[str] | None = None
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        cached = orjson.loads(path.read_bytes())
        if now - int(cached["fetched_ms"]) < SYMBOLS_MAX_AGE_MS:
            listed = set(cached["symbols"])
    if listed is None or any(s not in listed for s in symbols):
        try:
            info = await http.get_json(EXCHANGE_INFO_PATH, cost=1)
            fresh = sorted({str(item["symbol"]) for item in info["symbols"]})
        except (NetworkError, RateLimitError):
            # Binance unreachable, or a ban: every data request would fail the same way (and
            # under a ban, each one lengthens it): one line, now, instead of one per dataset.
            raise
        except (LiqError, KeyError, TypeError) as exc:
            log.info("binance: no symbol list (%s); the requests will tell", exc)
            return
        listed = set(fresh)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(orjson.dumps({"fetched_ms": now, "symbols": fresh}))
            tmp.replace(path)
    unknown = [s for s in symbols if s not in listed]
    if unknown:
        names = ", ".join(unknown)
        raise UsageError(
            f"unknown symbol{'s' if len(unknown) > 1 else ''} {names}: not listed by Binance "
            "USDⓈ-M futures (e.g. BTCUSDT)"
        )


def resolve_range(start: int | None, end: int | None, *, now: int) -> tuple[int, int]:
    end = now if end is None else min(end, now)
    start = end - duration_ms(DEFAULT_SINCE) if start is None else start
    if start >= end:
        raise UsageError(f"empty range: start {iso_ms(start)} is not before end {iso_ms(end)}")
    return start, end


def check_period(period: str, datasets: Iterable[str]) -> None:
    """1m and 3m exist for klines only: refused when any other period-based series is asked."""
    periodic = [d for d in datasets if d in ENDPOINTS and ENDPOINTS[d].partition is not None]
    period_ms(period, klines=bool(periodic) and all(d == "klines" for d in periodic))


async def run_fetch(
    store: Store,
    symbols: list[str],
    datasets: list[str],
    *,
    period: str = "5m",
    start: int | None = None,
    end: int | None = None,
    archive: bool = False,
    http: VenueHttp | None = None,
    progress: Progress | None = None,
    now: int | None = None,
    archive_url: str | None = None,
    flush_rows: int = FLUSH_ROWS,
    check_symbols: bool = True,
) -> list[FetchResult]:
    """Fetch what is missing of ``datasets`` x ``symbols`` in [start, end) (ms; default the last
    30 days). Results come back in dataset-then-symbol order; see the module docstring."""
    if not symbols:
        raise UsageError("give at least one symbol, e.g. BTCUSDT")
    datasets = resolve_datasets(datasets, archive=archive)
    check_period(period, datasets)  # UsageError on an unknown period, before any request
    now = now_ms() if now is None else now
    start, end = resolve_range(start, end, now=now)
    job = _Job(store, period, start, end, now, archive, archive_url, progress, flush_rows)
    own_http = http is None
    job.http = http or binance_http()
    try:
        # Archive-only runs make no REST request: they are not made to depend on one here.
        if check_symbols and any(d not in ARCHIVE_DATASETS for d in datasets):
            await require_listed(job.http, store.root, symbols, now)
        pairs = [(d, s) for d in datasets for s in symbols]
        return list(await asyncio.gather(*(job.run_pair(d, s) for d, s in pairs)))
    finally:
        if job.archive_client is not None:
            await job.archive_client.aclose()
        if own_http:
            await job.http.aclose()


class _Job:
    """One ``run_fetch`` call's shared settings and clients."""

    def __init__(
        self,
        store: Store,
        period: str,
        start: int,
        end: int,
        now: int,
        archive: bool,
        archive_url: str | None,
        progress: Progress | None,
        flush_rows: int,
    ) -> None:
        self.store = store
        self.period = period
        self.start = start
        self.end = end
        self.now = now
        self.archive = archive
        self.archive_url = archive_url
        self.progress = progress
        self.flush_rows = flush_rows
        self.http: VenueHttp
        self.archive_client: ArchiveClient | None = None
        self._archive_lock = asyncio.Lock()

    async def run_pair(self, dataset: str, symbol: str) -> FetchResult:
        result = FetchResult(dataset, symbol)
        stored_as = BOOK_ARCHIVES[dataset][1] if dataset in BOOK_ARCHIVES else dataset
        writer = _Writer(self.store, stored_as, result, self.flush_rows)
        try:
            if dataset == "agg_trades":
                await self._agg_trades(symbol, writer)
            elif dataset in BOOK_ARCHIVES:
                await self._book_archive(dataset, symbol, writer)
            else:
                await self._rest(dataset, symbol, writer)
            await writer.flush()
        except LiqError as exc:
            # Reported in the summary; the log line is for --log-level info.
            result.status, result.error = "error", str(exc)
            log.info("%s %s: %s", dataset, symbol, exc)
        finally:
            writer.flush_now()  # keep what arrived before a failure or a Ctrl-C
        if result.status == "partial" and not await asyncio.to_thread(
            self._stored_any, dataset, symbol
        ):
            # A partial that left the whole range empty is a failure (exit 1), not a success.
            result.status, result.error = "error", f"nothing stored: {result.note}"
            result.note = None
        if result.status == "partial":
            log.warning("%s %s: %s", dataset, symbol, result.note)
        if result.refused:
            log.warning(
                "%s %s: %s; last: %s", dataset, symbol, result.refused_note(), result.refused.last
            )
        return result

    def _stored_any(self, dataset: str, symbol: str) -> bool:
        """Does the store hold any row of the pair inside [start, end)?"""
        partitions: dict[str, str] = {"exchange": VENUE, "symbol": symbol}
        if dataset in BOOK_ARCHIVES:  # stored under another dataset's name (book_ticker)
            _, dataset, extra = BOOK_ARCHIVES[dataset]
            partitions.update(extra)
        endpoint = ENDPOINTS.get(dataset)
        if endpoint is not None and endpoint.partition is not None:
            partitions[endpoint.partition] = self.period
        stored = self.store.scan(dataset, start=self.start, end=self.end, **partitions)
        return stored.select(pl.len()).collect().item() > 0

    # ------------------------------------------------------------------ REST

    async def _rest(self, dataset: str, symbol: str, writer: _Writer) -> None:
        endpoint = ENDPOINTS[dataset]
        partitions = {"exchange": VENUE, "symbol": symbol}
        if endpoint.partition is not None:
            partitions[endpoint.partition] = self.period
        step = period_ms(self.period, klines=True) if endpoint.on_grid else None
        # A period's row exists once the period is over (klines: once the candle has closed).
        due_before = self.now - step + 1 if step is not None else None
        ranges = await asyncio.to_thread(
            partial(missing_ranges, due_before=due_before),
            self.store,
            dataset,
            partitions,
            self.start,
            self.end,
            step,
        )
        if endpoint.history_ms is not None:
            oldest = self.now - endpoint.history_ms + HISTORY_MARGIN_MS
            too_old = [(a, min(b, oldest)) for a, b in ranges if a < oldest]
            ranges = [(max(a, oldest), b) for a, b in ranges if b > oldest]
            too_old = [(a, b) for a, b in too_old if b - a >= (step or 1)]
            if too_old:
                await self._older_than_rest(dataset, symbol, too_old, writer)
        if step is None:
            await self._funding(symbol, ranges, writer)
        else:
            await self._grid(dataset, symbol, ranges, step, writer)

    async def _grid(
        self, dataset: str, symbol: str, ranges: list[tuple[int, int]], step: int, writer: _Writer
    ) -> None:
        endpoint = ENDPOINTS[dataset]
        span = endpoint.page_limit * step
        ranges = merge_ranges(ranges, span)
        # Each window holds exactly page_limit grid points, so one request covers it whether the
        # server anchors an over-full range at its start or its end.
        windows = [
            (window_start, min(window_start + span, b), a, b)
            for a, b in ranges
            for window_start in range(align_up(a, step), b, span)
        ]
        if self.progress:
            self.progress.planned(len(windows))
        closed_before = self.now - step if dataset == "klines" else None

        async def fetch(window: tuple[int, int, int, int]) -> pl.DataFrame:
            window_start, window_end, _, _ = window
            writer.result.requests += 1
            return await fetch_page(
                self.http,
                dataset,
                symbol,
                period=self.period,
                start=window_start,
                end=window_end - 1,
                refused=writer.result.refused,
            )

        async with contextlib.aclosing(_in_order(windows, fetch, PAGES_IN_FLIGHT)) as pages:
            async for (window_start, window_end, _, _), page in pages:
                # The open candle changes until it closes: only closed ones are stored.
                end = window_end if closed_before is None else min(window_end, closed_before + 1)
                rows = await asyncio.to_thread(_Rows.within, page, window_start, end)
                await writer.add(rows)
                if self.progress:
                    self.progress.page_done(dataset, symbol, rows.count)

    async def _funding(self, symbol: str, ranges: list[tuple[int, int]], writer: _Writer) -> None:
        limit = ENDPOINTS["funding"].page_limit
        if self.progress:
            self.progress.planned(len(ranges))
        for a, b in ranges:
            cursor = a
            while cursor < b:
                writer.result.requests += 1
                page = await fetch_page(
                    self.http,
                    "funding",
                    symbol,
                    start=cursor,
                    end=b - 1,
                    limit=limit,
                    refused=writer.result.refused,
                )
                rows = await asyncio.to_thread(_Rows.within, page, a, b)
                await writer.add(rows)
                if self.progress:
                    self.progress.page_done("funding", symbol, rows.count)
                if page.height < limit or rows.last is None:
                    break
                # startTime + limit paging: a full page may have more after its last row.
                cursor = rows.last + 1
                if self.progress:
                    self.progress.planned(1)

    # ------------------------------------------------------------------ beyond 30 days

    async def _older_than_rest(
        self, dataset: str, symbol: str, too_old: list[tuple[int, int]], writer: _Writer
    ) -> None:
        first_missing, last_missing = too_old[0][0], too_old[-1][1]
        what = f"{iso_ms(first_missing)} .. {iso_ms(last_missing)}"
        if not self.archive:
            writer.result.status = "partial"
            writer.result.note = (
                f"Binance's REST API keeps only the last 30 days of {dataset}: {what} not fetched; "
                "add --archive for older 5-minute history from data.binance.vision"
            )
            return
        if self.period != "5m":
            writer.result.status = "partial"
            writer.result.note = (
                f"the data.binance.vision metrics archive has 5-minute rows only: {what} not "
                f"fetched for period {self.period}"
            )
            return
        for a, b in too_old:
            await self._metrics(dataset, symbol, a, b, writer)

    async def _client(self) -> ArchiveClient:
        async with self._archive_lock:
            if self.archive_client is None:
                self.archive_client = binance_archive_client(self.store.root, self.archive_url)
        return self.archive_client

    async def _metrics(
        self, dataset: str, symbol: str, start: int, end: int, writer: _Writer
    ) -> None:
        client = await self._client()
        end = min(end, day_start(datetime.fromtimestamp(self.now / 1000, UTC).date()))
        if end <= start:
            return  # only today's part is older than the REST window: not archived yet
        days = days_between(start, end)
        if self.progress:
            self.progress.planned(1)
        paths = await download_metrics(client, symbol, start, end)
        if len(paths) < len(days):
            writer.result.status = "partial"
            writer.result.note = (
                f"{len(days) - len(paths)} of {len(days)} days between {days[0]} and {days[-1]} "
                "are missing from the data.binance.vision metrics archive (404)"
            )
        count = 0
        if paths:
            metrics = await asyncio.to_thread(read_metrics, paths)
            rows = _Rows.within(metrics_rows(dataset, metrics, symbol), start, end)
            await writer.add(rows)
            count = rows.count
        if self.progress:
            self.progress.page_done(dataset, symbol, count)

    async def _agg_trades(self, symbol: str, writer: _Writer) -> None:
        client = await self._client()
        todo = [
            d
            for d in self._published(days_between(self.start, self.end), writer)
            if not await asyncio.to_thread(self._day_covered, symbol, *self._day_window(d))
        ]
        if self.progress:
            self.progress.planned(len(todo))
        for day in todo:
            path = agg_trades_path(symbol, day)
            local = await client.fetch(path, path + ".CHECKSUM")
            rows = 0
            if local is None:
                writer.result.status = "partial"
                writer.result.note = f"days missing from the archive (404), e.g. {day.isoformat()}"
            else:
                begin, finish = self._day_window(day)
                day_rows = await asyncio.to_thread(_day_of_trades, local, symbol, begin, finish)
                rows = day_rows.count
                await writer.add(day_rows)
                await writer.flush()  # a day of trades is plenty for one write
            if self.progress:
                self.progress.page_done("agg_trades", symbol, rows)

    async def _book_archive(self, dataset: str, symbol: str, writer: _Writer) -> None:
        """Daily bookDepth / bookTicker files, one day at a time, days already stored skipped."""
        kind, stored_as, partitions = BOOK_ARCHIVES[dataset]
        client = await self._client()
        todo = [
            d
            for d in self._published(days_between(self.start, self.end), writer)
            if not await asyncio.to_thread(
                self._day_covered, symbol, *self._day_window(d), stored_as, partitions
            )
        ]
        if self.progress:
            self.progress.planned(len(todo))
        for day in todo:
            path = daily_path(kind, symbol, day)
            local = await client.fetch(path, path + ".CHECKSUM")
            rows = 0
            if local is None:
                writer.result.status = "partial"
                writer.result.note = f"days missing from the archive (404), e.g. {day.isoformat()}"
            else:
                begin, finish = self._day_window(day)
                day_rows = await asyncio.to_thread(
                    _day_of_book, dataset, local, symbol, begin, finish
                )
                rows = day_rows.count
                await writer.add(day_rows)
                await writer.flush()
            if self.progress:
                self.progress.page_done(dataset, symbol, rows)

    def _published(self, days: list[date], writer: _Writer) -> list[date]:
        """The days whose archive can exist: a day's zip is published after the day ends, so the
        current UTC day is never asked for (it would only be a 404 warning)."""
        done = [d for d in days if day_start(d) + DAY_MS <= self.now]
        if len(done) < len(days) and writer.result.note is None:
            writer.result.note = (
                f"{days[-1].isoformat()} is not archived before it ends: not fetched"
                if len(days) - len(done) == 1
                else f"{len(days) - len(done)} days not archived yet: not fetched"
            )
        return done

    def _day_window(self, day: date) -> tuple[int, int]:
        """The part of [start, end) inside one UTC day."""
        return max(self.start, day_start(day)), min(self.end, day_start(day) + DAY_MS)

    def _day_covered(
        self,
        symbol: str,
        begin: int,
        finish: int,
        dataset: str = "agg_trades",
        partitions: dict[str, str] | None = None,
    ) -> bool:
        """Stored trades reach both ends of the window (within an hour): nothing to load.

        A day stored only in part (an earlier run started mid-day) is loaded again from the
        cached zip; the upsert keeps it free of duplicates.
        """
        stored = self.store.scan(
            dataset, start=begin, end=finish, exchange=VENUE, symbol=symbol, **(partitions or {})
        )
        ts = pl.col("ts").dt.epoch("ms")
        first, last = stored.select(ts.min(), ts.max().alias("last")).collect().row(0)
        return first is not None and first < begin + HOUR_MS and last >= finish - HOUR_MS


def _day_of_trades(path: Any, symbol: str, start: int, end: int) -> _Rows:
    trades = (
        read_agg_trades(path)
        .with_columns(pl.lit(VENUE).alias("exchange"), pl.lit(symbol).alias("symbol"))
        .select(_stored_columns("agg_trades"))
        .drop_nulls(_stored_columns("agg_trades"))  # rows cut short in the file are never stored
        .collect()
    )
    return _Rows.within(trades, start, end)


def _day_of_book(dataset: str, path: Any, symbol: str, start: int, end: int) -> _Rows:
    """One archive day of bookDepth (book_depth, source=archive) or bookTicker (book_tops)."""
    _, stored_as, partitions = BOOK_ARCHIVES[dataset]
    frame = read_book_depth(path) if dataset == "book_depth" else read_book_ticker(path)
    constants = {"exchange": VENUE, "symbol": symbol, **partitions}
    frame = frame.with_columns(pl.lit(v).alias(k) for k, v in constants.items())
    return _Rows.within(frame.select(_stored_columns(stored_as, frame.columns)), start, end)


@dataclass(frozen=True)
class _Rows:
    """Rows bound for the store, with their time span (ms)."""

    frame: pl.DataFrame
    first: int | None
    last: int | None

    @property
    def count(self) -> int:
        return self.frame.height

    @classmethod
    def within(cls, frame: pl.DataFrame, start: int, end: int) -> _Rows:
        """The rows with start <= ts < end."""
        ts = pl.col("ts").dt.epoch("ms")
        kept = frame.filter((ts >= start) & (ts < end))
        first, last = kept.select(ts.min().alias("first"), ts.max().alias("last")).row(0)
        return cls(kept, first, last)


class _Writer:
    """Buffers one pair's pages and writes them in arrival order, atomically, chunk by chunk."""

    def __init__(self, store: Store, dataset: str, result: FetchResult, flush_rows: int) -> None:
        self.store = store
        self.dataset = dataset
        self.result = result
        self.flush_rows = flush_rows
        self._frames: list[pl.DataFrame] = []
        self._rows = 0

    async def add(self, rows: _Rows) -> None:
        if rows.count == 0:
            return
        r = self.result
        r.first_ts = rows.first if r.first_ts is None else min(r.first_ts, rows.first)
        r.last_ts = rows.last if r.last_ts is None else max(r.last_ts, rows.last)
        self._frames.append(rows.frame)
        self._rows += rows.count
        if self._rows >= self.flush_rows:
            await self.flush()

    def _take(self) -> pl.DataFrame | None:
        if not self._frames:
            return None
        frame = pl.concat(self._frames, how="vertical_relaxed")
        self._frames, self._rows = [], 0
        return frame

    async def flush(self) -> None:
        frame = self._take()
        if frame is not None:
            written = await asyncio.to_thread(self.store.write, self.dataset, frame)
            self.result.new_rows += written.new_rows

    def flush_now(self) -> None:
        """Synchronous flush for error and cancellation paths (no awaiting while cancelled)."""
        frame = self._take()
        if frame is None:
            return
        try:
            self.result.new_rows += self.store.write(self.dataset, frame).new_rows
        except LiqError as exc:
            self.result.status, self.result.error = "error", str(exc)


async def _in_order(
    items: list[Any], fetch: Callable[[Any], Awaitable[Any]], depth: int
) -> AsyncIterator[tuple[Any, Any]]:
    """``(item, await fetch(item))`` in the order of ``items``, with up to ``depth`` running."""
    queue: deque[tuple[Any, asyncio.Task]] = deque()
    upcoming = iter(items)
    try:
        for item in upcoming:
            queue.append((item, asyncio.ensure_future(fetch(item))))
            if len(queue) >= depth:
                break
        while queue:
            item, task = queue.popleft()
            result = await task
            nxt = next(upcoming, None)
            if nxt is not None:
                queue.append((nxt, asyncio.ensure_future(fetch(nxt))))
            yield item, result
    finally:
        for _, task in queue:
            task.cancel()
        await asyncio.gather(*(task for _, task in queue), return_exceptions=True)


def align_up(ts: int, step: int) -> int:
    return ts + (-ts % step)


def missing_ranges(
    store: Store,
    dataset: str,
    partitions: dict[str, str],
    start: int,
    end: int,
    step: int | None,
    *,
    due_before: int | None = None,
) -> list[tuple[int, int]]:
    """Half-open ms ranges inside [start, end) with no stored rows where rows are due.

    ``step``: the period grid (a row is due at every multiple of it before ``due_before``, the
    first period that has not ended yet); None for funding, where a gap is anything longer than
    the longest funding interval.
    """
    if step is not None:
        due_end = end if due_before is None else min(end, due_before)
        low, high = align_up(start, step) - step, align_up(due_end, step)
        max_gap = advance = step
    else:
        low, high, max_gap, advance = start - 1, end, FUNDING_MAX_INTERVAL_MS, 1
    stored = (
        store.scan(dataset, start=start, end=end, **partitions)
        .select(pl.col("ts").dt.epoch("ms"))
        .unique()
        .sort("ts")
        .collect()["ts"]
    )
    edges = pl.concat([pl.Series("ts", [low], pl.Int64), stored, pl.Series("ts", [high], pl.Int64)])
    gaps = pl.DataFrame({"a": edges[:-1], "b": edges[1:]}).filter(
        pl.col("b") - pl.col("a") > max_gap
    )
    return [(a + advance, b) for a, b in gaps.iter_rows() if a + advance < b]


def merge_ranges(ranges: list[tuple[int, int]], span: int) -> list[tuple[int, int]]:
    """Join neighbouring ranges when one request can cover both (scattered one-row holes cost
    one request per page, not one each)."""
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and b - merged[-1][0] <= span:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def metrics_rows(dataset: str, metrics: pl.DataFrame, symbol: str) -> pl.DataFrame:
    """data.binance.vision daily metrics (5-minute) -> rows of one REST dataset.

    The archive has the ratios but not the volumes: ``taker_ratio`` rows get ``buy_vol`` and
    ``sell_vol`` null; long/short shares are derived from the ratio (they sum to 1).
    """
    base = [
        pl.lit(VENUE).alias("exchange"),
        pl.lit(symbol).alias("symbol"),
        pl.lit("5m").alias("period"),
        pl.col("ts"),
    ]
    if dataset == "open_interest":
        values = [pl.col("open_interest"), pl.col("open_interest_value")]
    elif dataset == "taker_ratio":
        values = [
            pl.col("taker_buy_sell_ratio").alias("buy_sell_ratio"),
            pl.lit(None, pl.Float64).alias("buy_vol"),
            pl.lit(None, pl.Float64).alias("sell_vol"),
        ]
    else:
        ratio = pl.col(dataset)  # read_metrics names each ratio column after its dataset
        values = [
            ratio.alias("long_short_ratio"),
            (ratio / (1 + ratio)).alias("long_share"),
            (1 / (1 + ratio)).alias("short_share"),
        ]
    return metrics.select(*base, *values).select(list(DATASETS[dataset].schema))


def _stored_columns(dataset: str, present: Iterable[str] = ()) -> list[str]:
    """The dataset's columns, optional ones only when ``present`` (the store adds the others as
    nulls)."""
    spec, present = DATASETS[dataset], set(present)
    return [c for c in spec.schema if c not in spec.optional or c in present]


def day_start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
