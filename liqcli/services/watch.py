"""``liq watch``: live (or replayed) liquidations -> rolling windows -> terminal / web / jsonl,
with every received event journaled into the ``liquidations`` dataset.

The pipeline is the same for every source::

    Source (liqcli.sources: the venues' merged live stream | a ReplaySource of a recorded
            jsonl, Parquet or the store), with its clock (wall time live, event time on replay)
      -> WatchState.ingest_batch: refuse far-future events, de-duplicate, journal, count in the
         main view and any web views
      -> sinks: jsonl lines, the rich dashboard and web pushes (a Ticker on the source's clock)

On start (live, with storage) the journal first recovers the rows a killed run left behind, then
the last day of the dataset is loaded back into the windows, so 1-day totals survive restarts.
Replays never write to the store and run on event time: the clock is the newest event seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
import polars as pl

from liqcli.analytics.windows import DEFAULT_WINDOWS, EventFilter, WindowAggregator, parse_windows
from liqcli.core.events import Liquidation
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.errors import LiqError, UsageError
from liqcli.exchanges import registry
from liqcli.render.dashboard import DashboardInfo, render_dashboard
from liqcli.render.output import detach_stdout
from liqcli.render.web import DEFAULT_HOST, DEFAULT_PORT, WebDashboard
from liqcli.sources.base import Counters
from liqcli.sources.clock import Ticker, WallClock
from liqcli.sources.dedup import Deduper, FutureGuard
from liqcli.sources.replay import (
    ROW_SCHEMA,
    ReplaySource,
    liquidation_frame,
    rows_frame,
    rows_to_events,
)
from liqcli.sources.storage import open_journal
from liqcli.sources.terminal import TerminalView

log = logging.getLogger("liq.watch")

DATASET = "liquidations"


@dataclass
class WatchConfig:
    """Everything ``liq watch`` was asked for (validated by ``validate``)."""

    exchanges: Sequence[str] = field(default_factory=registry.default_names)
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


class _History:
    """Raw events of the longest window, kept only so a web page can ask for its own filter
    (columnar: about 80 bytes an event)."""

    def __init__(self, span_ms: int) -> None:
        self.span_ms = span_ms
        self._rows: list[dict] = []
        self._frame = pl.DataFrame(schema=ROW_SCHEMA)

    def extend(self, rows: list[dict]) -> None:
        self._rows.extend(rows)

    def load(self, frame: pl.DataFrame) -> None:
        self._frame = pl.concat([self._frame, rows_frame(frame)], how="vertical")

    def frame(self, now: int) -> pl.DataFrame:
        """Everything still inside the longest window (pending rows folded in, old ones dropped)."""
        if self._rows:
            pending = pl.DataFrame(self._rows, schema=ROW_SCHEMA)
            self._rows = []
            self._frame = pl.concat([self._frame, pending], how="vertical")
        self._frame = self._frame.filter(pl.col("ts") > now - self.span_ms)
        return self._frame


def watch_counters() -> Counters:
    return Counters(
        received=0,  # events from the source
        duplicates=0,  # re-sent events dropped
        future=0,  # refused: stamped too far after their receive time
        shown=0,  # passed the filter (printed as jsonl)
        stored=0,  # handed to the journal
        restored=0,  # loaded back from storage at start
    )


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
        self.counters = watch_counters()
        self.info = info or DashboardInfo(exchanges=list(config.exchanges), started_ms=clock())
        self.info.counters = self.counters.to_dict()
        self._dedup = Deduper()
        # Live: an event stamped far ahead of its receive time is refused (it would stay in
        # every window until its time comes); replays judge by each row's received_ts.
        self._guard = FutureGuard(wall_clock=clock if getattr(clock, "live", True) else None)
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
        admitted = self._guard.admit(events)
        if len(admitted) != len(events):
            counters.future = self._guard.refused
            log.warning(
                "refused %d event(s) stamped over %d s after their receive time",
                len(events) - len(admitted),
                self._guard.max_ahead_ms // 1000,
            )
        fresh = self._dedup.fresh(admitted)
        counters.duplicates = self._dedup.duplicates
        if self.journal is not None:
            self.journal.extend(fresh)  # the events themselves: encoded column by column
            counters.stored += len(fresh)
        if self._history is not None:
            self._history.extend([event.to_row() for event in fresh])
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


# -- replay ----------------------------------------------------------------------------


def replay_frame(spec: str, *, data_dir: Path | None, config: WatchConfig) -> pl.LazyFrame:
    """The events to replay (liqcli.sources.replay.liquidation_frame for this config)."""
    return liquidation_frame(
        spec, data_dir=data_dir, exchanges=list(config.exchanges), symbols=list(config.symbols)
    )


def replay_source(config: WatchConfig, data_dir: Path | None) -> ReplaySource:
    frame = replay_frame(config.replay or "store", data_dir=data_dir, config=config).collect()
    return ReplaySource(rows_to_events(frame))


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
    check_symbols: bool = True,
) -> WatchResult:
    """Run ``liq watch`` until the source ends (replay), ``duration`` passes or cancellation.

    The source is a :class:`liqcli.sources.base.Source`: ``stream_factory(config, data_dir)``
    builds the live one (default: the venues' merged liquidation stream), a replay is a
    ReplaySource on event time. ``journal_factory(store, dataset)`` builds the journal (default:
    Journal). Live with symbols, the venues' symbol lists are checked first (``check_symbols``):
    UsageError when no venue lists a symbol. LiqError when ``duration`` passed and no venue was
    ever reachable.
    """
    config.validate()
    out = out or sys.stdout
    replay = config.replay
    use_store = config.store and not replay
    if not replay and config.symbols and check_symbols:
        await _check_symbols(config, data_dir)
    started = clock()
    info = DashboardInfo(
        exchanges=list(config.exchanges),
        started_ms=started,
        store=str(data_dir) if use_store else None,
        source=f"replay {replay}" if replay else "live",
    )
    # A bad recording is a one-line error before anything is shown.
    source = replay_source(config, data_dir) if replay else None
    if source is None:
        source = (stream_factory or live_stream)(config, data_dir)
    source_clock = source.clock if replay else getattr(source, "clock", None) or WallClock(clock)
    if not replay and clock is not now_ms:
        source_clock = WallClock(clock)  # an injected wall clock wins (tests)
    statuses: dict[str, Any] = source.statuses
    journal = None
    web: WebDashboard | None = None
    screen: TerminalView | None = None
    state = WatchState(
        config,
        clock=source_clock,
        statuses=statuses,
        info=info,
        keep_history=config.web,
    )
    result = WatchResult(state.counters)
    timed_out = False
    try:
        if use_store:
            journal = open_journal(data_dir, DATASET, journal_factory)
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
            screen = TerminalView(state.render, out, screen=True, width=140)
        ticker = Ticker(source_clock, config.refresh, _refresher(state, screen)).start()
        try:
            async with asyncio.timeout(config.duration):
                await _consume(
                    state, source.batches(), out, jsonl=config.fmt == "jsonl", flush_each=not replay
                )
                if config.web:
                    await asyncio.Event().wait()  # a replay's page stays up until Ctrl-C/duration
        except TimeoutError:
            timed_out = True  # --duration reached
        finally:
            await ticker.stop()
    finally:
        reached = any(map(_reached, statuses.values()))  # before closing resets the statuses
        await source.aclose()
        if not replay:
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
        if journal is not None:
            journal.raise_if_lost()  # exit 1, not 0/130, when rows were lost (a full disk)
    if timed_out and not replay and statuses and not reached:
        detail = "; ".join(f"{name}: {s.last_error or s.state}" for name, s in statuses.items())
        raise LiqError(f"no venue was reachable in {config.duration:g} s ({detail})")
    return result


def _reached(status: Any) -> bool:
    """Whether a venue was connected at some point of the run."""
    return bool(status.connected_since_ms or status.messages or status.gaps or status.reconnects)


def live_stream(config: WatchConfig, data_dir: Path) -> Any:
    """The venues' merged liquidation stream (validates --exchange: UsageError)."""
    from liqcli.services.streams import StreamOptions, liquidation_stream

    return liquidation_stream(
        list(config.exchanges), list(config.symbols), options=StreamOptions(data_dir=data_dir)
    )


async def _check_symbols(config: WatchConfig, data_dir: Path) -> None:
    """Mistyped symbols: a usage error when every venue's list lacks them, a warning when only
    some venues' do (venues whose list cannot be had have no say)."""
    from liqcli.services.streams import StreamOptions, symbol_lists, unknown_symbols

    exchanges = list(config.exchanges)
    lists = await symbol_lists(exchanges, StreamOptions(data_dir=data_dir, http_timeout=3.0))
    everywhere, partly = unknown_symbols(list(config.symbols), lists)
    if everywhere:
        raise UsageError(
            f"unknown symbol {', '.join(everywhere)}: not listed on {', '.join(exchanges)} "
            "(normalised BASEQUOTE symbols, e.g. BTCUSDT)"
        )
    for venue, missing in partly.items():
        log.warning("%s does not list %s: nothing from it for them", venue, ", ".join(missing))


def _restore(state: WatchState, data_dir: Path, config: WatchConfig, now: int) -> None:
    """The last (longest window) of stored events back into the windows; rows stamped far in
    the future (a bad clock) stay out, so they never count in every window."""
    from liqcli.sources.clock import MAX_AHEAD_MS
    from liqcli.store.parquet import Store

    partitions: dict[str, Any] = {"exchange": list(config.exchanges)}
    if config.symbols:
        partitions["symbol"] = list(config.symbols)
    frame = Store(data_dir).read(
        DATASET,
        start=now - state.windows[-1].ms,
        end=now + MAX_AHEAD_MS,
        include_journal=True,
        **partitions,
    )
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


def _refresher(state: WatchState, screen: TerminalView | None) -> Callable[[int], None]:
    def tick(_now: int) -> None:
        state.tick()
        if screen is not None:
            screen.refresh()

    return tick
