"""``liq watch``: live (or replayed) liquidations -> rolling windows -> terminal / web / jsonl,
with every received event journaled into the ``liquidations`` dataset.

The pipeline is the same for every source::

    source (venue streams | recorded jsonl | Parquet | the store)
      -> WatchState.ingest: de-duplicate, journal, count in the main view and any web views
      -> sinks: jsonl lines, the rich dashboard (refreshed every second), the web dashboard

On start (live, with storage) the journal first recovers the rows a killed run left behind, then
the last day of the dataset is loaded back into the windows, so 1-day totals survive restarts.
Replays never write to the store and run on event time: the clock is the newest event seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
import polars as pl

from liqcli.analytics.windows import DEFAULT_WINDOWS, EventFilter, WindowAggregator, parse_windows
from liqcli.core.events import Liquidation
from liqcli.core.schemas import dataset as dataset_spec
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.errors import DataError, UsageError
from liqcli.render.dashboard import DashboardInfo, render_dashboard
from liqcli.render.output import detach_stdout
from liqcli.render.web import DEFAULT_HOST, DEFAULT_PORT, WebDashboard

log = logging.getLogger("liq.watch")

DATASET = "liquidations"
_DEDUP_CAPACITY = 100_000  # recent event keys remembered to drop venue re-sends
_REPLAY_CHUNK = 50_000
_YIELD_EVERY = 1_000  # let the refresh tasks run during a fast replay


@dataclass
class WatchConfig:
    """Everything ``liq watch`` was asked for (validated by ``validate``)."""

    exchanges: Sequence[str] = ("binance", "okx", "bybit")
    symbols: Sequence[str] = ()
    min_usd: float = 0.0
    top: int = 10
    latest: int = 20
    windows: str = DEFAULT_WINDOWS
    fmt: str = "dashboard"  # dashboard | jsonl
    web: bool = False
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    duration: float | None = None  # seconds of wall time; None = until Ctrl-C
    store: bool = True
    replay: str | None = None  # "store", a .jsonl file, a .parquet file or a dataset directory
    refresh: float = 1.0  # dashboard and web push interval, seconds

    def validate(self) -> None:
        """Usage errors, before any connection is made."""
        if self.min_usd < 0:
            raise UsageError(f"--min-usd must be >= 0, got {self.min_usd:g}")
        if self.top < 1:
            raise UsageError(f"--top must be >= 1, got {self.top}")
        if self.latest < 0:
            raise UsageError(f"--latest must be >= 0, got {self.latest}")
        if self.duration is not None and self.duration <= 0:
            raise UsageError(f"--duration must be > 0 seconds, got {self.duration:g}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0-65535, got {self.port}")
        if self.fmt not in ("dashboard", "jsonl"):
            raise UsageError(f"--format must be dashboard or jsonl, got {self.fmt!r}")
        if self.refresh <= 0:
            raise UsageError("refresh interval must be positive")
        parse_windows(self.windows)
        if self.replay is not None and self.replay != "store" and not Path(self.replay).exists():
            raise UsageError(f"--replay {self.replay}: no such file or directory")

    def event_filter(self) -> EventFilter:
        return EventFilter(
            symbols=frozenset(self.symbols),
            exchanges=frozenset(self.exchanges),
            min_usd=float(self.min_usd),
        )


class ReplayClock:
    """Event time: the newest event timestamp fed so far."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def advance(self, ts: int) -> None:
        if ts > self.now:
            self.now = ts


class _History:
    """Raw events of the longest window, kept only so a web page can ask for its own filter
    (columnar: about 80 bytes an event)."""

    def __init__(self, span_ms: int) -> None:
        self.span_ms = span_ms
        self._rows: list[dict] = []
        self._frame = _empty_rows_frame()

    def extend(self, rows: list[dict]) -> None:
        self._rows.extend(rows)

    def load(self, frame: pl.DataFrame) -> None:
        self._frame = pl.concat([self._frame, _rows_frame(frame)], how="vertical")

    def frame(self, now: int) -> pl.DataFrame:
        """Everything still inside the longest window (pending rows folded in, old ones dropped)."""
        if self._rows:
            pending = pl.DataFrame(self._rows, schema=_ROW_SCHEMA)
            self._rows = []
            self._frame = pl.concat([self._frame, pending], how="vertical")
        self._frame = self._frame.filter(pl.col("ts") > now - self.span_ms)
        return self._frame


_ROW_SCHEMA = {
    name: pl.Int64() if isinstance(dtype, pl.Datetime) else dtype
    for name, dtype in dataset_spec(DATASET).schema.items()
}


def _empty_rows_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=_ROW_SCHEMA)


def _rows_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """A frame of the dataset with time columns as epoch-ms integers (the journal's row form)."""
    return frame.select(
        pl.col(name).dt.epoch("ms") if isinstance(frame.schema[name], pl.Datetime) else pl.col(name)
        for name in _ROW_SCHEMA
    ).cast(_ROW_SCHEMA)


@dataclass
class Counters:
    received: int = 0  # events from the source
    duplicates: int = 0  # re-sent events dropped
    shown: int = 0  # passed the filter (printed as jsonl)
    stored: int = 0  # handed to the journal
    restored: int = 0  # loaded back from storage at start

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class WatchState:
    """The pipeline's state: main view, web views, de-duplication, journal hand-off.

    Also the web dashboard's :class:`~liqcli.render.web.DashboardSource`.
    """

    def __init__(
        self,
        config: WatchConfig,
        *,
        clock: Callable[[], int] = now_ms,
        journal: Any | None = None,
        statuses: dict[str, Any] | None = None,
        info: DashboardInfo | None = None,
        keep_history: bool = False,
    ) -> None:
        self.config = config
        self.clock = clock
        self.filter = config.event_filter()
        self.windows = parse_windows(config.windows)
        self.main = self._aggregator(self.filter)
        self.journal = journal
        self.statuses: dict[str, Any] = statuses if statuses is not None else {}
        self.counters = Counters()
        self.info = info or DashboardInfo(exchanges=list(config.exchanges), started_ms=clock())
        self.info.counters = self.counters.to_dict()
        self._seen: set[tuple] = set()
        self._seen_order: deque[tuple] = deque()
        self._history = _History(self.windows[-1].ms) if keep_history else None
        self._views: dict[EventFilter, list] = {}  # filter -> [aggregator, refcount]
        self._loading: dict[EventFilter, asyncio.Future[None]] = {}  # views being built

    def _aggregator(self, event_filter: EventFilter) -> WindowAggregator:
        return WindowAggregator(
            self.windows, clock=self.clock, latest=self.config.latest, event_filter=event_filter
        )

    # -- hot path ----------------------------------------------------------------------------

    def ingest(self, event: Liquidation) -> bool | None:
        """One event from the source. None for a duplicate, else whether the filter shows it."""
        duplicates = self.counters.duplicates
        shown = self.ingest_batch((event,))
        return None if self.counters.duplicates != duplicates else bool(shown)

    def ingest_batch(self, events: Sequence[Liquidation]) -> list[Liquidation]:
        """Events from the source, in order; returns those the main filter shows. Everything the
        loop touches is bound to a local first: this runs for every event."""
        counters = self.counters
        counters.received += len(events)
        seen, seen_order = self._seen, self._seen_order
        fresh = []
        for event in events:
            key = (event.exchange, event.symbol, event.ts, event.side, event.price, event.qty)
            if key in seen:
                counters.duplicates += 1
                continue
            seen.add(key)
            seen_order.append(key)
            fresh.append(event)
        while len(seen_order) > _DEDUP_CAPACITY:
            seen.discard(seen_order.popleft())
        if self.journal is not None or self._history is not None:
            rows = [event.to_row() for event in fresh]
            if self.journal is not None:
                self.journal.extend(rows)
                counters.stored += len(rows)
            if self._history is not None:
                self._history.extend(rows)
        for aggregator, _ in self._views.values():
            for event in fresh:
                aggregator.add(event)
        accepts, count = self.filter.accepts, self.main.count
        shown = [event for event in fresh if accepts(event)]
        for event in shown:
            count(event)
        counters.shown += len(shown)
        return shown

    # -- start-up ----------------------------------------------------------------------------

    def restore(self, frame: pl.DataFrame) -> int:
        """Load stored rows (the last day) into the windows and the web history."""
        restored = self.main.load_frame(frame)
        if self._history is not None:
            self._history.load(frame)
        self.counters.restored += restored
        return restored

    # -- dashboards ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Once per refresh: fold pending history rows, publish counters."""
        if self._history is not None:
            self._history.frame(self.clock())
        self.info.counters = self.counters.to_dict()

    def payload(self, view: object | None) -> dict[str, Any]:
        aggregator = self.main if view is None else self._views[view][0]  # type: ignore[index]
        now = self.clock()
        self.info.counters = self.counters.to_dict()
        return {
            "now": iso_ms(now),
            "snapshot": aggregator.snapshot(self.config.top).to_dict(),
            "venues": {name: status.to_dict() for name, status in self.statuses.items()},
            "info": self.info.to_dict(),
        }

    def open_view(self, event_filter: EventFilter) -> object:
        """A web page's own filter, narrowed by the command line's (never widened)."""
        if self._history is None:
            raise UsageError("filtered views need the web dashboard's history")
        combined = self._combine(event_filter)
        entry = self._views.get(combined)
        if entry is None:
            aggregator = self._aggregator(combined)
            aggregator.load_frame(self._history.frame(self.clock()))
            entry = self._views[combined] = [aggregator, 0]
        entry[1] += 1
        return combined

    async def open_view_async(self, event_filter: EventFilter) -> object:
        """``open_view`` with the history loaded in a worker thread (Polars releases the GIL), so
        a filter over a day of events does not stall the event loop. Events ingested meanwhile
        are held by a stand-in view and added once the load is done."""
        if self._history is None:
            raise UsageError("filtered views need the web dashboard's history")
        combined = self._combine(event_filter)
        loading = self._loading.get(combined)
        if loading is not None:
            await asyncio.wait({loading})  # another page asked for the same view first
            return await self.open_view_async(event_filter)
        entry = self._views.get(combined)
        if entry is None:
            pending = _PendingView()
            entry = self._views[combined] = [pending, 0]
            loading = self._loading[combined] = asyncio.get_running_loop().create_future()
            aggregator = self._aggregator(combined)
            try:
                await asyncio.to_thread(aggregator.load_frame, self._history.frame(self.clock()))
            except BaseException:
                del self._views[combined]
                raise
            finally:
                del self._loading[combined]
                loading.set_result(None)
            for event in pending.events:
                aggregator.add(event)
            entry[0] = aggregator
        entry[1] += 1
        return combined

    def close_view(self, view: object) -> None:
        entry = self._views.get(view)  # type: ignore[call-overload]
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._views[view]  # type: ignore[arg-type]

    def _combine(self, requested: EventFilter) -> EventFilter:
        symbols = requested.symbols
        if self.filter.symbols and symbols:
            outside = sorted(symbols - self.filter.symbols)
            if outside:
                raise UsageError(
                    f"{', '.join(outside)} not watched: this run watches "
                    f"{', '.join(sorted(self.filter.symbols))}"
                )
        return EventFilter(
            symbols=symbols or self.filter.symbols,
            exchanges=self.filter.exchanges,
            min_usd=max(requested.min_usd, self.filter.min_usd),
        )

    def render(self) -> Any:
        now = self.clock()
        self.info.counters = self.counters.to_dict()
        return render_dashboard(
            self.main.snapshot(self.config.top), self.statuses, self.info, now_ms=now
        )


class _PendingView:
    """Stands in for a web view while its history loads: keeps the events that arrive."""

    def __init__(self) -> None:
        self.events: list[Liquidation] = []

    def add(self, event: Liquidation) -> None:
        self.events.append(event)


# -- replay sources ----------------------------------------------------------------------------


def replay_frame(spec: str, *, data_dir: Path | None, config: WatchConfig) -> pl.LazyFrame:
    """The events to replay, as a lazy frame of the dataset's columns sorted by event time."""
    columns = list(dataset_spec(DATASET).schema)
    if spec == "store":
        if data_dir is None:
            raise UsageError("--replay store needs a data directory")
        from liqcli.store.parquet import Store

        partitions: dict[str, Any] = {"exchange": list(config.exchanges)}
        if config.symbols:
            partitions["symbol"] = list(config.symbols)
        lazy = Store(data_dir).scan(DATASET, **partitions)
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
                for name, dtype in _ROW_SCHEMA.items()
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


def _to_ms(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").alias(name)


_JSONL_SCHEMA = {
    name: pl.String() if name in ("ts", "received_ts") else dtype
    for name, dtype in _ROW_SCHEMA.items()
}
_REQUIRED = ("exchange", "symbol", "ts", "side", "price", "qty", "notional_usd")


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
    return frame.with_columns(pl.col("venue_symbol").fill_null("")).cast(_ROW_SCHEMA)


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


def frame_events(frame: pl.LazyFrame, clock: ReplayClock | None = None) -> Iterator[Liquidation]:
    """Rows -> Liquidation events in order, a chunk at a time."""
    collected = frame.collect()
    columns = ("exchange", "symbol", "side", "price", "qty", "notional_usd", "ts", "venue_symbol")
    for offset in range(0, collected.height, _REPLAY_CHUNK):
        chunk = collected.slice(offset, _REPLAY_CHUNK)
        received = chunk["received_ts"].to_list()
        for i, (ex, sym, side, price, qty, usd, ts, venue_symbol) in enumerate(
            chunk.select(columns).iter_rows()
        ):
            if clock is not None:
                clock.advance(ts)
            yield Liquidation(
                ex,
                sym,
                side,
                price,
                qty,
                usd,
                ts,
                "" if venue_symbol == sym else venue_symbol,
                received[i] or 0,
            )


async def _paced(events: Iterator[Liquidation]) -> AsyncIterator[list[Liquidation]]:
    """Replayed events in batches, letting the refresh tasks run between them."""
    while batch := list(itertools.islice(events, _YIELD_EVERY)):
        yield batch
        await asyncio.sleep(0)


# -- the command -------------------------------------------------------------------------------


@dataclass
class WatchResult:
    counters: Counters
    web_url: str | None = None
    statuses: dict[str, dict] = field(default_factory=dict)


async def run_watch(
    config: WatchConfig,
    *,
    data_dir: Path,
    out: TextIO | None = None,
    stream_factory: Callable[[WatchConfig, Path], Any] | None = None,
    clock: Callable[[], int] = now_ms,
    on_web_ready: Callable[[str], None] | None = None,
    journal_factory: Callable[..., Any] | None = None,
) -> WatchResult:
    """Run ``liq watch`` until the source ends (replay), ``duration`` passes or cancellation.

    ``stream_factory(config, data_dir)`` builds the live stream (default: the venues' merged
    liquidation stream; it needs ``batches()`` and ``statuses``); ``journal_factory(store, dataset)`` the journal (default: Journal).
    """
    config.validate()
    out = out or sys.stdout
    replay = config.replay
    event_clock = ReplayClock() if replay else None
    use_store = config.store and not replay
    started = clock()
    info = DashboardInfo(
        exchanges=list(config.exchanges),
        started_ms=started,
        store=str(data_dir) if use_store else None,
        source=f"replay {replay}" if replay else "live",
    )
    stream = None
    statuses: dict[str, Any] = {}
    if not replay:
        stream = (stream_factory or live_stream)(config, data_dir)
        statuses = stream.statuses
    journal = None
    web: WebDashboard | None = None
    screen: TerminalDashboard | None = None
    state = WatchState(
        config,
        clock=event_clock or clock,
        statuses=statuses,
        info=info,
        keep_history=config.web,
    )
    result = WatchResult(state.counters)
    try:
        if use_store:
            journal = _open_journal(data_dir, journal_factory)
            state.journal = journal
            _restore(state, data_dir, config, clock())
        if config.web:
            web = WebDashboard(
                state, host=config.host, port=config.port, push_interval=config.refresh
            )
            result.web_url = await web.start()
            if on_web_ready is not None:
                on_web_ready(result.web_url)
        if config.fmt == "dashboard":
            screen = TerminalDashboard(state, out)
        batches: AsyncIterator[list[Liquidation]]
        if replay:
            frame = replay_frame(replay, data_dir=data_dir, config=config)
            batches = _paced(frame_events(frame, event_clock))
        else:
            batches = stream.batches()
        refresher = asyncio.create_task(_refresh_loop(state, screen, config.refresh))
        try:
            async with asyncio.timeout(config.duration):
                await _consume(
                    state, batches, out, jsonl=config.fmt == "jsonl", flush_each=not replay
                )
                if config.web:
                    await asyncio.Event().wait()  # a replay's page stays up until Ctrl-C/duration
        except TimeoutError:
            pass  # --duration reached
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
    finally:
        if stream is not None:
            await stream.aclose()
            result.statuses = {name: s.to_dict() for name, s in statuses.items()}
        if web is not None:
            await web.close()
        if journal is not None:
            journal.close()  # flush and move every row into Parquet
        state.tick()
        if screen is not None:
            screen.close()
        with contextlib.suppress(BrokenPipeError, ValueError):
            out.flush()
    return result


def live_stream(config: WatchConfig, data_dir: Path) -> Any:
    """The venues' merged liquidation stream (validates --exchange: UsageError)."""
    from liqcli.services.streams import StreamOptions, liquidation_stream

    return liquidation_stream(
        list(config.exchanges), list(config.symbols), options=StreamOptions(data_dir=data_dir)
    )


def _open_journal(data_dir: Path, journal_factory: Callable[..., Any] | None) -> Any:
    from liqcli.store.journal import Journal
    from liqcli.store.parquet import Store

    store = Store(data_dir)
    journal = (journal_factory or Journal)(store, DATASET)
    recovered = journal.open()
    if recovered:
        log.info("recovered %d liquidations from an interrupted run", recovered)
    return journal


def _restore(state: WatchState, data_dir: Path, config: WatchConfig, now: int) -> None:
    """The last (longest window) of stored events back into the windows."""
    from liqcli.store.parquet import Store

    partitions: dict[str, Any] = {"exchange": list(config.exchanges)}
    if config.symbols:
        partitions["symbol"] = list(config.symbols)
    frame = Store(data_dir).read(DATASET, start=now - state.windows[-1].ms, **partitions)
    restored = state.restore(frame)
    if restored:
        log.info("restored %d liquidations from the last %s", restored, state.windows[-1].label)


async def _consume(
    state: WatchState,
    batches: AsyncIterator[list[Liquidation]],
    out: TextIO,
    *,
    jsonl: bool,
    flush_each: bool,
) -> None:
    ingest_batch = state.ingest_batch
    write = out.write
    try:
        async for batch in batches:
            shown = ingest_batch(batch)
            if jsonl and shown:
                write("".join(orjson.dumps(e.to_dict()).decode() + "\n" for e in shown))
                if flush_each:
                    out.flush()  # once per burst: a pipe reader sees events as they arrive
    except BrokenPipeError:
        # `liq watch --format jsonl | head`: the reader left; stop quietly.
        detach_stdout(out)


class TerminalDashboard:
    """The rich dashboard. On a terminal: a full-screen view redrawn every refresh (a log line on
    stderr is overwritten by the next frame instead of corrupting it); when it stops, and on
    anything that is not a terminal, the final frame is printed once."""

    def __init__(self, state: WatchState, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.state = state
        self.console = Console(file=out)
        if not self.console.is_terminal:
            self.console = Console(file=out, width=140)
        self.live: Live | None = None
        if self.console.is_terminal:
            self.live = Live(
                state.render(),
                console=self.console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.state.render(), refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        self.console.print(self.state.render())


async def _refresh_loop(
    state: WatchState, screen: TerminalDashboard | None, interval: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        state.tick()
        if screen is not None:
            screen.refresh()
