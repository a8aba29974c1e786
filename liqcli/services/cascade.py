"""``liq cascade``: venue streams (or a replay) -> one cascade detector per symbol -> alert sinks,
with every finished cascade stored in the ``cascades`` dataset.

Live (one merged Source, liqcli.services.streams.liquidation_stream)::

    Binance  <sym>@forceOrder + <sym>@aggTrade   (one connection: prices and Binance liquidations
                                                  arrive in the venue's order)
    OKX, Bybit liquidations
      -> CascadeSession.handle_batch: de-duplicate, journal (liquidations, optionally aggTrades),
         tick the detectors at each new second of event time, feed
      -> CascadeMonitor (also ticked every second from the source's LiveClock by a Ticker)
      -> AlertRouter(--min-level) -> jsonl on stdout | dashboard | --webhook | --exec
      -> records -> CascadeRecorder -> Store.write("cascades")   (off the event loop)
    ContextPoller: Binance REST once a minute per symbol (OI change, taker ratio, funding) ->
      monitor.update_context; failures are logged and never touch detection.

Replay (``--replay FILE|store``) feeds the same session from stored rows at full speed (a
ReplaySource); the clock is event time and the detectors are ticked only from the events. It
writes nothing unless ``--store`` is given (then only cascades).

Shutdown (``--duration``, Ctrl-C, SIGTERM, SIGHUP, end of a replay): sources are closed first,
then every open cascade is ended as of that moment (a ``cascade_end`` alert with ``reason:
"shutdown"``, delivered and stored like any other), the sinks drain (up to 5 s each) and the
journals move their rows into Parquet. A cascade cut by a restart is therefore stored as two records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import polars as pl

from liqcli.alerts import AlertRouter, ExecSink, WebhookSink, alert_json
from liqcli.analytics.cascade import (
    LEVELS,
    CascadeMonitor,
    CascadeThresholds,
    level_index,
    thresholds_for,
)
from liqcli.core.events import AggTrade, Liquidation
from liqcli.core.schemas import dataset as dataset_spec
from liqcli.core.timeutil import now_ms
from liqcli.errors import LiqError, UnknownSymbolError, UsageError
from liqcli.exchanges import registry
from liqcli.render.output import detach_stdout
from liqcli.sources.base import Counters
from liqcli.sources.clock import EventClock, LiveClock, Ticker
from liqcli.sources.dedup import Deduper, FutureGuard
from liqcli.sources.replay import ReplaySource, replay_rows, rows_to_events
from liqcli.sources.storage import open_journal
from liqcli.sources.terminal import TerminalView

log = logging.getLogger("liq.cascade")

DATASET = "cascades"
DEFAULT_MIN_LEVEL = "SIGNIFICANT"  # the level the original tool alerted from
CONTEXT_INTERVAL_S = 60.0
CONTEXT_PERIOD = "5m"  # the finest open-interest / taker-ratio period Binance serves
RECENT_ALERTS = 12
EVAL_INTERVAL_S = 1.0  # live: the detectors are ticked this often from the source clock

_RECORD_SCHEMA = {
    name: pl.Int64() if isinstance(dtype, pl.Datetime) else dtype
    for name, dtype in dataset_spec(DATASET).schema.items()
}


# ---- configuration ----------------------------------------------------------------------------


@dataclass
class CascadeConfig:
    """Everything ``liq cascade`` was asked for; ``validate`` raises UsageError before any I/O."""

    symbols: Sequence[str]
    exchanges: Sequence[str] = field(default_factory=registry.default_names)
    min_level: str = DEFAULT_MIN_LEVEL
    fmt: str = "dashboard"  # dashboard | jsonl
    webhooks: Sequence[str] = ()
    execs: Sequence[str] = ()
    exec_timeout: float = 10.0
    duration: float | None = None  # wall seconds; None = until Ctrl-C (or the replay's end)
    replay: str | None = None  # "store" or a file / dataset directory `liq watch` can replay
    store: bool | None = None  # None: live runs store, replays do not
    store_trades: bool = False
    context: bool = True  # poll Binance REST for the signature's OI / taker / funding parts
    threshold_scale: float = 1.0
    thresholds: Mapping[str, CascadeThresholds] = field(default_factory=dict)
    refresh: float = 1.0  # dashboard refresh, seconds

    def validate(self) -> None:
        if not self.symbols:
            raise UsageError("give at least one symbol, e.g. liq cascade BTCUSDT")
        for symbol in self.symbols:
            if not symbol.isalnum() or symbol != symbol.upper():
                raise UsageError(
                    f"invalid symbol {symbol!r}: use the normalised BASEQUOTE form, e.g. BTCUSDT"
                )
        level_index(self.min_level)
        if self.fmt not in ("dashboard", "jsonl"):
            raise UsageError(f"--format must be dashboard or jsonl, got {self.fmt!r}")
        if self.duration is not None and not self.duration > 0:
            raise UsageError(f"--duration must be > 0 seconds, got {self.duration:g}")
        if not self.exec_timeout > 0:
            raise UsageError(f"--exec-timeout must be > 0 seconds, got {self.exec_timeout:g}")
        if not (math.isfinite(self.threshold_scale) and self.threshold_scale > 0):
            raise UsageError(f"--threshold-scale must be > 0, got {self.threshold_scale:g}")
        if self.refresh <= 0:
            raise UsageError("refresh interval must be positive")
        if self.replay is not None:
            if self.replay != "store" and not Path(self.replay).exists():
                raise UsageError(f"--replay {self.replay}: no such file or directory")
            if self.store_trades:
                raise UsageError("--store-trades applies to live runs, not to --replay")
        elif self.store is False and self.store_trades:
            raise UsageError("--store-trades needs storage: drop --no-store")

    @property
    def stores_cascades(self) -> bool:
        return self.store if self.store is not None else self.replay is None

    def detector_thresholds(self) -> dict[str, CascadeThresholds]:
        """Each symbol's thresholds (its own from the config, else the scaling rule) x scale."""
        return {
            symbol: thresholds_for(symbol, overrides=self.thresholds).scaled(self.threshold_scale)
            for symbol in self.symbols
        }


def thresholds_from_config(table: Any) -> dict[str, CascadeThresholds]:
    """``[cascade.thresholds.DOGEUSDT] building = 50000 …`` -> {"DOGEUSDT": CascadeThresholds}."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise UsageError(
            "config [cascade.thresholds] must hold one table per symbol, "
            "e.g. [cascade.thresholds.DOGEUSDT] building = 50000"
        )
    out: dict[str, CascadeThresholds] = {}
    for symbol, values in table.items():
        if not isinstance(values, Mapping):
            raise UsageError(
                f"config [cascade.thresholds.{symbol}] must be a table of "
                "building/minor/significant/major/extreme amounts in USD"
            )
        out[str(symbol).upper()] = CascadeThresholds.from_mapping(values)
    return out


# ---- sinks and storage --------------------------------------------------------------------------


class JsonlSink:
    """Alert JSON, one per line, on stdout; a closed pipe (``| head``) stops the run quietly."""

    name = "jsonl"

    def __init__(self, out: TextIO, *, flush_each: bool, on_closed: Callable[[], None]) -> None:
        self.out = out
        self.flush_each = flush_each
        self.on_closed = on_closed
        self.closed = False

    def submit(self, alert: dict) -> None:
        if self.closed:
            return
        try:
            self.out.write(alert_json(alert).decode() + "\n")
            if self.flush_each:
                self.out.flush()
        except BrokenPipeError:
            self.closed = True
            detach_stdout(self.out)
            self.on_closed()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.out.flush()


class RecentAlerts:
    """The dashboard's list of the latest alerts that passed ``--min-level`` (newest first)."""

    name = "dashboard"

    def __init__(self, size: int = RECENT_ALERTS) -> None:
        self.alerts: deque[dict] = deque(maxlen=size)

    def submit(self, alert: dict) -> None:
        self.alerts.appendleft(alert)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class CascadeRecorder:
    """Finished cascades -> the ``cascades`` dataset (exchange="all"), written in a thread so the
    event loop never waits on Parquet. A failed write is logged and retried on the next flush."""

    def __init__(self, store: Any | None) -> None:
        self.store = store
        self.records: list[dict] = []  # every cascade this run finished
        self.stored = 0
        self._pending: list[dict] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self.store is not None:
            self._pending.append(record)
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Write what is pending; False when the write failed (the rows stay pending)."""
        async with self._lock:
            if not self._pending:
                return True
            batch = list(self._pending)
            frame = pl.DataFrame(batch, schema=_RECORD_SCHEMA)
            try:
                await asyncio.to_thread(self.store.write, DATASET, frame)
            except (LiqError, OSError) as exc:
                log.error("could not store %d cascade(s): %s", len(batch), exc)
                return False
            # Only now: a write cancelled half-way is simply written again (upserts).
            del self._pending[: len(batch)]
            self.stored += len(batch)
            return True


# ---- REST context -------------------------------------------------------------------------------


@dataclass
class ContextSnapshot:
    """The last REST context of one symbol (None: unknown)."""

    polled_ms: int | None = None  # wall clock of the last poll
    oi_change_pct: float | None = None  # open interest over the last finished 5 minutes
    taker_ratio: float | None = None  # taker buy/sell volume ratio, last finished 5 minutes
    funding_rate: float | None = None  # the last settled funding rate
    prev_funding_rate: float | None = None  # the one settled before it
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ContextPoller:
    """Binance REST context for the signature, each symbol at most once per ``interval_s``.

    Runs beside detection and only calls ``monitor.update_context``; a failed request leaves
    that part unknown (None), is logged once per failure spell, and an unknown symbol stops
    that symbol's polling. Funding comes from settled rates (``/fapi/v1/fundingRate``): a flip
    is the sign change between the last two settlements.
    """

    def __init__(
        self,
        monitor: CascadeMonitor,
        symbols: Sequence[str],
        *,
        http_factory: Callable[[], Any] | None = None,
        interval_s: float = CONTEXT_INTERVAL_S,
        wall_clock: Callable[[], int] = now_ms,
    ) -> None:
        self.monitor = monitor
        self.symbols = list(symbols)
        self.interval_s = interval_s
        self.snapshots: dict[str, ContextSnapshot] = {s: ContextSnapshot() for s in self.symbols}
        self.polls = 0
        self.failures = 0
        self._http_factory = http_factory
        self._wall_clock = wall_clock
        self._disabled: set[str] = set()

    async def run(self) -> None:
        if self._http_factory is None:
            from liqcli.exchanges.binance.rest import binance_http

            http_cm = binance_http(timeout=10.0, max_retries=2)
        else:
            http_cm = self._http_factory()
        loop = asyncio.get_running_loop()
        async with http_cm as http:
            while True:
                started = loop.time()
                for symbol in self.symbols:
                    if symbol in self._disabled:
                        continue
                    try:
                        await self.poll(http, symbol)
                    except Exception:  # a bug here must not end the context for good
                        log.exception("%s: REST context poll failed", symbol)
                await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    async def poll(self, http: Any, symbol: str) -> ContextSnapshot:
        from liqcli.exchanges.binance.rest import fetch_page

        self.polls += 1
        oi, taker, funding = await asyncio.gather(
            fetch_page(http, "open_interest", symbol, period=CONTEXT_PERIOD, limit=2),
            fetch_page(http, "taker_ratio", symbol, period=CONTEXT_PERIOD, limit=1),
            fetch_page(http, "funding", symbol, limit=2),
            return_exceptions=True,
        )
        parts = {"open interest": oi, "taker ratio": taker, "funding": funding}
        failed = {name: r for name, r in parts.items() if isinstance(r, BaseException)}
        for error in failed.values():
            if not isinstance(error, LiqError):
                raise error  # a bug, not a venue failure: let it surface
        previous = self.snapshots[symbol]
        snapshot = ContextSnapshot(polled_ms=self._wall_clock())
        if isinstance(oi, pl.DataFrame):
            values = oi.sort("ts")["open_interest"].to_list()
            if len(values) >= 2 and values[-2]:
                snapshot.oi_change_pct = (values[-1] / values[-2] - 1.0) * 100.0
        if isinstance(taker, pl.DataFrame) and taker.height:
            snapshot.taker_ratio = taker.sort("ts")["buy_sell_ratio"][-1]
        if isinstance(funding, pl.DataFrame) and funding.height:
            rates = funding.sort("ts")["funding_rate"].to_list()
            snapshot.funding_rate = rates[-1]
            snapshot.prev_funding_rate = rates[-2] if len(rates) >= 2 else None
        if failed:
            self.failures += 1
            first = next(iter(failed.values()))
            snapshot.error = f"{', '.join(failed)} unknown: {first}"
            if any(isinstance(e, UnknownSymbolError) for e in failed.values()):
                self._disabled.add(symbol)
                log.warning("%s: no Binance REST context, not polling it again: %s", symbol, first)
            elif previous.error is None:  # once per failure spell, not every minute
                log.warning("%s: REST context failed, %s", symbol, snapshot.error)
        elif previous.error is not None:
            log.info("%s: REST context is back", symbol)
        self.snapshots[symbol] = snapshot
        self.monitor.update_context(
            symbol,
            oi_change_pct=snapshot.oi_change_pct,
            taker_ratio=snapshot.taker_ratio,
            funding_rate=snapshot.funding_rate,
            prev_funding_rate=snapshot.prev_funding_rate,
        )
        return snapshot


# ---- the session --------------------------------------------------------------------------------


def cascade_counters() -> Counters:
    return Counters(
        liquidations=0,  # liquidations fed to the detectors
        duplicates=0,  # venue re-sends dropped
        trades=0,  # aggTrades fed
        stored=0,  # liquidations handed to the journal
        future=0,  # refused: stamped too far after their receive time
    )


class CascadeSession:
    """One run's pipeline state; ``handle(event)`` is the hot path for every source."""

    def __init__(
        self,
        config: CascadeConfig,
        *,
        clock: LiveClock | EventClock,
        router: AlertRouter,
        recorder: CascadeRecorder,
        journal: Any | None = None,
        trade_journal: Any | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.router = router
        self.recorder = recorder
        self.journal = journal
        self.trade_journal = trade_journal
        self.counters = cascade_counters()
        self.monitor = CascadeMonitor(
            config.symbols,
            cascade_callback=router,
            record_callback=recorder.add,
            thresholds=config.detector_thresholds(),
            clock=clock,
        )
        self._symbols = frozenset(config.symbols)
        self._dedup = Deduper()
        # Live: one event stamped far ahead (a bad venue clock) must not move the detectors'
        # time years ahead; replays judge by each row's received_ts.
        self._guard = FutureGuard(wall_clock=clock.wall if clock.live else None)  # type: ignore[union-attr]
        self._second = -1

    def handle_batch(self, events: Sequence[Liquidation | AggTrade]) -> None:
        """A source's batch, in order. Every symbol's detector is ticked at each new second of
        event time (as the live once-a-second evaluation does), so a symbol that went quiet ends
        its cascade then, on a replay as live."""
        admitted = self._guard.admit(events)
        if len(admitted) != len(events):
            self.counters.future = self._guard.refused
            log.warning(
                "refused %d event(s) stamped far after their receive time",
                len(events) - len(admitted),
            )
        tick, handle = self.monitor.tick, self.handle
        for event in admitted:
            ts = event.ts
            if ts // 1000 > self._second:
                self._second = ts // 1000
                tick(ts)
            handle(event)

    def handle(self, event: Liquidation | AggTrade) -> None:
        if event.symbol not in self._symbols:
            return
        if type(event) is Liquidation:
            if not self._dedup.is_new(event):
                self.counters.duplicates = self._dedup.duplicates
                return
            self.counters.liquidations += 1
            if self.journal is not None:
                self.journal.append(event.to_row())
                self.counters.stored += 1
        else:
            self.counters.trades += 1
            if self.trade_journal is not None:
                self.trade_journal.append(_trade_row(event))
        self.clock.observe(event.ts)
        self.monitor.feed(event)

    def states(self) -> list[dict]:
        return [detector.state() for detector in self.monitor.detectors.values()]


def _trade_row(trade: AggTrade) -> dict:
    return {
        "exchange": trade.exchange,
        "symbol": trade.symbol,
        "trade_id": trade.trade_id,
        "ts": trade.ts,
        "price": trade.price,
        "qty": trade.qty,
        "is_buyer_maker": trade.is_buyer_maker,
    }


# ---- replay -------------------------------------------------------------------------------------


def replay_events(
    spec: str, *, data_dir: Path | None, symbols: Sequence[str], exchanges: Sequence[str]
) -> ReplaySource:
    """Stored liquidations (``store``, or a file/directory ``liq watch --replay`` reads) merged
    with stored Binance aggTrades of the same span (``store`` only) in event-time order."""
    rows = replay_rows(spec, data_dir=data_dir, exchanges=exchanges, symbols=symbols, trades=True)
    return ReplaySource(rows_to_events(rows))


# ---- the command --------------------------------------------------------------------------------


@dataclass
class CascadeResult:
    counters: dict[str, int]
    cascades: list[dict]  # records of every cascade finished in this run
    stored_cascades: int
    alerts_passed: int
    alerts_filtered: int
    sinks: dict[str, dict[str, int]] = field(default_factory=dict)
    statuses: dict[str, dict] = field(default_factory=dict)
    context: dict[str, dict] = field(default_factory=dict)


def build_sinks(config: CascadeConfig) -> list[Any]:
    """--webhook and --exec sinks (UsageError for a bad URL or command, before any I/O)."""
    sinks: list[Any] = [WebhookSink(url) for url in config.webhooks]
    sinks += [ExecSink(command, timeout_s=config.exec_timeout) for command in config.execs]
    return sinks


async def run_cascade(
    config: CascadeConfig,
    *,
    data_dir: Path,
    out: TextIO | None = None,
    wall_clock: Callable[[], int] = now_ms,
    source_factory: Callable[[CascadeConfig, Path, LiveClock], Any] | None = None,
) -> CascadeResult:
    """Run ``liq cascade`` until ``duration``, cancellation, a closed stdout or the replay's end.

    The live source is :func:`open_source` (``source_factory(config, data_dir, clock)``) and
    the context comes from ``binance_http``, both at the ``LIQ_*_URL`` endpoints; a replay is a
    ReplaySource on event time.
    """
    config.validate()
    out = out or sys.stdout
    stop = asyncio.Event()
    sinks = build_sinks(config)
    recent = RecentAlerts()
    if config.fmt == "jsonl":
        sinks.insert(0, JsonlSink(out, flush_each=config.replay is None, on_closed=stop.set))
    else:
        sinks.insert(0, recent)
    router = AlertRouter(sinks, min_level=config.min_level)
    store = None
    if config.stores_cascades:
        from liqcli.store.parquet import Store

        store = Store(data_dir)
    recorder = CascadeRecorder(store)
    # Read a replay before anything is shown or started: a bad file is just a one-line error.
    source: Any = (
        replay_events(
            config.replay, data_dir=data_dir, symbols=config.symbols, exchanges=config.exchanges
        )
        if config.replay
        else None
    )
    clock: LiveClock | EventClock = source.clock if source is not None else LiveClock(wall_clock)
    session = CascadeSession(config, clock=clock, router=router, recorder=recorder)
    started = wall_clock()
    statuses: dict[str, Any] = {}
    poller: ContextPoller | None = None
    tasks: list[asyncio.Task] = []
    tickers: list[Ticker] = []
    screen: TerminalView | None = None
    result = CascadeResult({}, recorder.records, 0, 0, 0)

    def render() -> Any:
        from liqcli.render.cascade_view import CascadeViewInfo, render_cascade_view

        info = CascadeViewInfo(
            symbols=list(config.symbols),
            exchanges=list(config.exchanges),
            min_level=LEVELS[router.min_level],
            source=f"replay {config.replay}" if config.replay else "live",
            store=str(data_dir) if store is not None else None,
            started_ms=started,
            counters={
                **session.counters.to_dict(),
                "cascades": len(recorder.records),
                "alerts": router.passed,
            },
        )
        return render_cascade_view(
            session.states(),
            list(recent.alerts),
            statuses,
            {s: c.to_dict() for s, c in poller.snapshots.items()} if poller else {},
            info,
            now_ms=(clock() or started) if config.replay else wall_clock(),
        )

    try:
        await router.start()
        if not config.replay and config.store is not False:
            session.journal = open_journal(data_dir, "liquidations")
            if config.store_trades:
                session.trade_journal = open_journal(data_dir, "agg_trades")
        if config.fmt == "dashboard":
            screen = TerminalView(render, out, width=160)
            tickers.append(Ticker(wall_clock, config.refresh, screen.refresh).start())
        if store is not None:
            tasks.append(asyncio.create_task(recorder.run(), name="cascade-recorder"))
        try:
            async with asyncio.timeout(config.duration):
                if source is None:
                    source = (source_factory or open_source)(config, data_dir, clock)
                    statuses.update(source.statuses)
                    if config.context:
                        poller = ContextPoller(
                            session.monitor, config.symbols, wall_clock=wall_clock
                        )
                        tasks.append(asyncio.create_task(poller.run(), name="cascade-context"))
                    # The detectors own no timers: the source's live clock ticks them.
                    tickers.append(Ticker(clock, EVAL_INTERVAL_S, session.monitor.tick).start())
                await _consume(session, source, stop)
                if config.replay and not session.counters.liquidations:
                    log.warning(
                        "nothing to replay: no liquidations of %s in %s",
                        ", ".join(config.symbols),
                        config.replay,
                    )
        except TimeoutError:
            pass  # --duration reached
    finally:
        if source is not None:
            await source.aclose()
        for ticker in tickers:
            await ticker.stop()
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):  # a helper's bug: say so, the run itself is done
                log.error("background task failed: %r", outcome, exc_info=outcome)
        session.monitor.finish(clock())
        if store is not None:
            await recorder.flush()
        await router.aclose()
        for journal in (session.journal, session.trade_journal):
            if journal is not None:
                await asyncio.to_thread(journal.close)  # flush and move every row into Parquet
        if screen is not None:
            screen.close()
        with contextlib.suppress(BrokenPipeError, ValueError):
            out.flush()
        for journal in (session.journal, session.trade_journal):
            if journal is not None:
                journal.raise_if_lost()  # exit 1, not 0/130, when rows were lost (a full disk)
        result.counters = session.counters.to_dict()
        result.stored_cascades = recorder.stored
        result.alerts_passed = router.passed
        result.alerts_filtered = router.filtered
        result.sinks = {
            f"webhook {sink.url}" if isinstance(sink, WebhookSink) else f"exec {sink.command}": {
                "delivered": sink.delivered,
                "failed": sink.failed,
                "dropped": sink.dropped,
            }
            for sink in router.sinks
            if isinstance(sink, WebhookSink | ExecSink)
        }
        result.statuses = {name: s.to_dict() for name, s in statuses.items()}
        result.context = {s: c.to_dict() for s, c in poller.snapshots.items()} if poller else {}
    return result


def open_source(config: CascadeConfig, data_dir: Path, clock: LiveClock | None = None) -> Any:
    """One merged live source: liquidations of ``exchanges`` and Binance aggTrades (prices
    always come from Binance; its liquidations and trades share one connection)."""
    from liqcli.services.streams import StreamOptions, liquidation_stream

    return liquidation_stream(
        list(config.exchanges),
        list(config.symbols),
        options=StreamOptions(data_dir=data_dir),
        trades_from=["binance"],
        clock=clock,
    )


async def _consume(session: CascadeSession, source: Any, stop: asyncio.Event) -> None:
    """Feed the source's batches until ``stop`` is set or the source ends."""

    async def pump() -> None:
        try:
            async for batch in source.batches():
                session.handle_batch(batch)
                if stop.is_set():
                    return
        except LiqError as exc:  # every venue gave up: the run ends like at --duration
            log.error("stream stopped: %s", exc)

    pumping = asyncio.create_task(pump())
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([pumping, stopper], return_when=asyncio.FIRST_COMPLETED)
        if pumping in done:
            pumping.result()  # re-raise a bug in the pipeline
    finally:
        stopper.cancel()
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


# ---- history ------------------------------------------------------------------------------------


HISTORY_COLUMNS = (
    "symbol",
    "start_ts",
    "end_ts",
    "duration_s",
    "direction",
    "peak_level",
    "total_usd",
    "events",
    "price_change_pct",
)


def cascade_history(
    store: Any, symbols: Sequence[str], *, start: int | None = None, end: int | None = None
) -> pl.DataFrame:
    """Stored cascades that started in [start, end), oldest first (every symbol when empty)."""
    frame = store.scan(DATASET, start=start, end=end, exchange="all", symbol=list(symbols) or None)
    return (
        frame.with_columns(
            ((pl.col("end_ts") - pl.col("start_ts")).dt.total_milliseconds() / 1000.0).alias(
                "duration_s"
            )
        )
        .select(HISTORY_COLUMNS)
        .sort(["start_ts", "symbol"])
        .collect()
    )
