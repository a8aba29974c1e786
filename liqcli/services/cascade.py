"""``liq cascade``: venue streams (or a replay) -> one cascade detector per symbol -> alert sinks,
with every finished cascade stored in the ``cascades`` dataset.

Live::

    Binance  <sym>@forceOrder + <sym>@aggTrade   (one connection: prices and Binance liquidations
                                                  arrive in the venue's order)
    OKX, Bybit liquidations (liquidation_stream)
      -> CascadeSession.handle: de-duplicate, journal (liquidations, optionally aggTrades), feed
      -> CascadeMonitor (ticked every second on LiveClock)
      -> AlertRouter(--min-level) -> jsonl on stdout | dashboard | --webhook | --exec
      -> records -> CascadeRecorder -> Store.write("cascades")   (off the event loop)
    ContextPoller: Binance REST once a minute per symbol (OI change, taker ratio, funding) ->
      monitor.update_context; failures are logged and never touch detection.

Replay (``--replay FILE|store``) feeds the same session from stored rows at full speed; the
clock is event time. It writes nothing unless ``--store`` is given (then only cascades).

Shutdown (``--duration``, Ctrl-C, end of a replay): sources are closed first, then every open
cascade is ended as of that moment (a ``cascade_end`` alert with ``reason: "shutdown"``, delivered
and stored like any other), the sinks drain (up to 5 s each) and the journals move their rows into
Parquet. A cascade cut by a restart is therefore stored as two records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
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
from liqcli.render.output import detach_stdout

log = logging.getLogger("liq.cascade")

DATASET = "cascades"
DEFAULT_MIN_LEVEL = "SIGNIFICANT"  # the level the original tool alerted from
LIVE_LAG_MS = 2_000  # how late a venue's event may arrive before quiet time moves past it
CONTEXT_INTERVAL_S = 60.0
CONTEXT_PERIOD = "5m"  # the finest open-interest / taker-ratio period Binance serves
RECENT_ALERTS = 12
_DEDUP_CAPACITY = 100_000
_REPLAY_CHUNK = 50_000
_YIELD_EVERY = 1_000  # let sinks and the dashboard run during a full-speed replay
_TRADE, _LIQUIDATION = 0, 1  # replay order at equal timestamps: the price first

_RECORD_SCHEMA = {
    name: pl.Int64() if isinstance(dtype, pl.Datetime) else dtype
    for name, dtype in dataset_spec(DATASET).schema.items()
}


# ---- configuration ----------------------------------------------------------------------------


@dataclass
class CascadeConfig:
    """Everything ``liq cascade`` was asked for; ``validate`` raises UsageError before any I/O."""

    symbols: Sequence[str]
    exchanges: Sequence[str] = ("binance", "okx", "bybit")
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


# ---- live time --------------------------------------------------------------------------------


class LiveClock:
    """Evaluation time of a live run: the newest event time seen, moved on by the wall clock
    (less ``lag_ms`` for delivery) only while the venues are quiet.

    Evaluating at wall time would put the detectors ahead of events still in flight, so a
    cascade would start at the tick's instant instead of at its liquidation, and replaying the
    stored events would not give the same cascades.
    """

    def __init__(self, wall_clock: Callable[[], int] = now_ms, lag_ms: int = LIVE_LAG_MS) -> None:
        self._wall_clock = wall_clock
        self.lag_ms = lag_ms
        self.newest = 0

    def observe(self, ts: int) -> None:
        if ts > self.newest:
            self.newest = ts

    def __call__(self) -> int:
        return max(self.newest, self._wall_clock() - self.lag_ms)


class EventClock:
    """Replay time: the newest event timestamp fed so far."""

    def __init__(self) -> None:
        self.newest = 0

    def observe(self, ts: int) -> None:
        if ts > self.newest:
            self.newest = ts

    def __call__(self) -> int:
        return self.newest


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


@dataclass
class Counters:
    liquidations: int = 0  # liquidations fed to the detectors
    duplicates: int = 0  # venue re-sends dropped
    trades: int = 0  # aggTrades fed
    stored: int = 0  # liquidations handed to the journal

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


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
        self.counters = Counters()
        self.monitor = CascadeMonitor(
            config.symbols,
            cascade_callback=router,
            record_callback=recorder.add,
            thresholds=config.detector_thresholds(),
            clock=clock,
        )
        self._symbols = frozenset(config.symbols)
        self._seen: set[tuple] = set()
        self._seen_order: deque[tuple] = deque()

    def handle(self, event: Liquidation | AggTrade) -> None:
        if event.symbol not in self._symbols:
            return
        if type(event) is Liquidation:
            key = (event.exchange, event.symbol, event.ts, event.side, event.price, event.qty)
            if key in self._seen:
                self.counters.duplicates += 1
                return
            self._seen.add(key)
            self._seen_order.append(key)
            if len(self._seen_order) > _DEDUP_CAPACITY:
                self._seen.discard(self._seen_order.popleft())
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
) -> Iterator[Liquidation | AggTrade]:
    """Stored liquidations (``store``, or a file/directory ``liq watch --replay`` reads) merged
    with stored Binance aggTrades of the same span (``store`` only) in event-time order."""
    from liqcli.services.watch import WatchConfig, replay_frame

    watch_config = WatchConfig(exchanges=list(exchanges), symbols=list(symbols))
    liquidations = (
        replay_frame(spec, data_dir=data_dir, config=watch_config)
        .filter(pl.col("symbol").is_in(list(symbols)) & pl.col("exchange").is_in(list(exchanges)))
        .with_columns(pl.lit(_LIQUIDATION, pl.Int8).alias("kind"))
        .collect()
    )
    parts = [liquidations]
    if spec == "store" and liquidations.height and data_dir is not None:
        from liqcli.store.parquet import Store

        first, last = liquidations["ts"].min(), liquidations["ts"].max()
        # From a minute before (the price a cascade starts at) to the last liquidation.
        trades = (
            Store(data_dir)
            .scan(
                "agg_trades",
                start=first - 60_000,
                end=last + 1,
                exchange="binance",
                symbol=list(symbols),
                include_journal=True,
            )
            .select(
                pl.lit(_TRADE, pl.Int8).alias("kind"),
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
        parts.append(trades)
    events = pl.concat(parts, how="diagonal_relaxed").sort(["ts", "kind"], maintain_order=True)
    return _rows_to_events(events)


def _rows_to_events(frame: pl.DataFrame) -> Iterator[Liquidation | AggTrade]:
    has_trades = "trade_id" in frame.columns
    columns = ["kind", "exchange", "symbol", "ts", "price", "qty", "side", "notional_usd"]
    columns += ["venue_symbol", "received_ts"]
    if has_trades:
        columns += ["trade_id", "is_buyer_maker"]
    for offset in range(0, frame.height, _REPLAY_CHUNK):
        chunk = frame.slice(offset, _REPLAY_CHUNK).select(columns)
        for row in chunk.iter_rows():
            kind, exchange, symbol, ts, price, qty, side, usd, venue_symbol, received = row[:10]
            if kind == _LIQUIDATION:
                yield Liquidation(
                    exchange,
                    symbol,
                    side,
                    price,
                    qty,
                    usd,
                    ts,
                    "" if venue_symbol == symbol else venue_symbol or "",
                    received or 0,
                )
            else:
                yield AggTrade(exchange, symbol, row[10], ts, price, qty, bool(row[11]))


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
) -> CascadeResult:
    """Run ``liq cascade`` until ``duration``, cancellation, a closed stdout or the replay's end.

    Live sources are :func:`open_sources` and the context comes from ``binance_http``, both
    at the ``LIQ_*_URL`` endpoints.
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
    clock: LiveClock | EventClock = EventClock() if config.replay else LiveClock(wall_clock)
    session = CascadeSession(config, clock=clock, router=router, recorder=recorder)
    started = wall_clock()
    sources: list[Any] = []
    statuses: dict[str, Any] = {}
    poller: ContextPoller | None = None
    tasks: list[asyncio.Task] = []
    live_view = None
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

    # Read a replay before anything is shown or started: a bad file is just a one-line error.
    replayed = (
        replay_events(
            config.replay, data_dir=data_dir, symbols=config.symbols, exchanges=config.exchanges
        )
        if config.replay
        else iter(())
    )
    try:
        await router.start()
        if not config.replay and config.store is not False:
            session.journal = _open_journal(data_dir, "liquidations")
            if config.store_trades:
                session.trade_journal = _open_journal(data_dir, "agg_trades")
        if config.fmt == "dashboard":
            live_view = _start_live(render(), out)
            tasks.append(asyncio.create_task(_refresh_loop(live_view, render, config.refresh)))
        if store is not None:
            tasks.append(asyncio.create_task(recorder.run(), name="cascade-recorder"))
        try:
            async with asyncio.timeout(config.duration):
                if config.replay:
                    await _replay(session, config, replayed, stop)
                else:
                    sources = open_sources(config, data_dir)
                    for source in sources:
                        statuses.update(_statuses_of(source))
                    if config.context:
                        poller = ContextPoller(
                            session.monitor, config.symbols, wall_clock=wall_clock
                        )
                        tasks.append(asyncio.create_task(poller.run(), name="cascade-context"))
                    await session.monitor.start()
                    await _consume(session, sources, stop)
        except TimeoutError:
            pass  # --duration reached
    finally:
        for source in sources:
            await source.aclose()
        await session.monitor.stop()
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
        if live_view is not None:
            live_view.update(render(), refresh=True)
            live_view.stop()
            if not live_view.console.is_terminal:
                live_view.console.line()
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


def open_sources(config: CascadeConfig, data_dir: Path) -> list[Any]:
    """Binance liquidations and aggTrades on one connection (aggTrades only when Binance is not
    among ``exchanges``: prices always come from Binance), the other venues merged."""
    from liqcli.services.streams import StreamOptions, binance_events, liquidation_stream

    symbols = list(config.symbols)
    sources: list[Any] = [
        binance_events(symbols, liquidations="binance" in config.exchanges, agg_trades=True)
    ]
    others = [e for e in config.exchanges if e != "binance"]
    if others:
        sources.append(
            liquidation_stream(others, symbols, options=StreamOptions(data_dir=data_dir))
        )
    return sources


def _statuses_of(source: Any) -> dict[str, Any]:
    statuses = getattr(source, "statuses", None)
    if statuses is not None:
        return dict(statuses)
    status = getattr(source, "status", None)
    return {status.venue: status} if status is not None else {}


async def _consume(session: CascadeSession, sources: Sequence[Any], stop: asyncio.Event) -> None:
    """Feed every source until ``stop`` is set or all of them have ended."""

    async def pump(source: AsyncIterator[Any]) -> None:
        try:
            async for event in source:
                session.handle(event)
        except LiqError as exc:  # one venue giving up must not stop the others
            log.error("stream stopped: %s", exc)

    pumps = asyncio.gather(*(pump(source) for source in sources))
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([pumps, stopper], return_when=asyncio.FIRST_COMPLETED)
        if pumps in done:
            pumps.result()  # re-raise a bug in the pipeline
    finally:
        stopper.cancel()
        pumps.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumps


async def _replay(
    session: CascadeSession,
    config: CascadeConfig,
    events: Iterator[Liquidation | AggTrade],
    stop: asyncio.Event,
) -> None:
    handle, tick = session.handle, session.monitor.tick
    second = -1
    for i, event in enumerate(events):
        if i % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
            if stop.is_set():
                return
        if event.ts // 1000 > second:
            # As the live once-a-second evaluation does: every symbol's time moves on, so a
            # symbol that went quiet ends its cascade then, not at the end of the replay.
            second = event.ts // 1000
            tick(event.ts)
        handle(event)
    if not session.counters.liquidations:
        log.warning(
            "nothing to replay: no liquidations of %s in %s",
            ", ".join(config.symbols),
            config.replay,
        )


def _open_journal(data_dir: Path, name: str) -> Any:
    from liqcli.store.journal import Journal
    from liqcli.store.parquet import Store

    journal = Journal(Store(data_dir), name)
    recovered = journal.open()
    if recovered:
        log.info("recovered %d %s rows from an interrupted run", recovered, name)
    return journal


def _start_live(first_frame: Any, out: TextIO) -> Any:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    if not console.is_terminal:
        console = Console(file=out, width=160)  # a pipe or file gets the full table, not 80 columns
    live = Live(first_frame, console=console, auto_refresh=False, redirect_stderr=False)
    live.start()
    return live


async def _refresh_loop(live_view: Any, render: Callable[[], Any], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        live_view.update(render(), refresh=True)


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
