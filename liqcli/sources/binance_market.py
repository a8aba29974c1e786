"""Live Binance USDⓈ-M market data as one source: maintained order books (depth diffs synced
from REST snapshots), best bid/ask, aggregate trades, mark price / funding and, optionally,
liquidations.

::

    async with BinanceMarketSource(["BTCUSDT"], MarketOptions(liquidations=True)) as source:
        async for batch in source.batches():     # lists of events, in arrival order
            for event in batch:                  # BookTop | BookSnapshot | AggTrade | MarkPrice
                ...                              # | Liquidation (| BookDelta with deltas=True)
        source.books["BTCUSDT"].best_bid()       # liqcli.trading.book.L2Book, kept in sync
        source.books["BTCUSDT"].counters         # applied, stale, gaps, loads (resyncs)
        source.statuses["binance"]               # VenueStatus over all connections

Shape: the ``Source`` protocol of liqcli.sources (``batches()``, ``statuses``, ``aclose()``,
``clock``: here the wall clock in ms).

Streams: ``depth@100ms`` and ``bookTicker`` on ``/public``, ``aggTrade``, ``markPrice@1s`` and
``forceOrder`` on ``/market``, at most 200 per connection (more symbols: more connections).

Book sync, per symbol (TRADING-VENUES.md §6): diffs are buffered from the first one received;
a REST snapshot (``limit`` 1000) is loaded and the buffer replayed through the book (stale diffs
dropped, the first must straddle ``lastUpdateId``, then ``pu`` must chain). A gap - a lost diff,
a reconnect, a snapshot older than the buffer - starts a new sync; failed snapshot requests are
retried with backoff while diffs keep buffering. ``books[sym].counters`` counts all of it.

Top-N snapshots: with ``snapshot_every_ms`` (default 1000) the source emits a ``BookSnapshot`` of
the top ``depth_levels`` (default 20) each time a diff crosses an interval boundary of event
time, showing the book as it stood at that boundary (``ts`` = the boundary). They are what a
recorder stores in ``book_depth``; ``deltas=True`` also emits every applied ``BookDelta`` and each
loaded REST snapshot, for consumers that keep their own book.

Duplicates across reconnects are dropped: a bookTicker whose ``u``, a trade whose id or a mark
price whose time is not newer than the last one of its symbol.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from liqcli.core.events import (
    AggTrade,
    BookDelta,
    BookSnapshot,
    BookTop,
    Event,
    Liquidation,
    MarkPrice,
)
from liqcli.core.timeutil import now_ms
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.exchanges.binance import rest as binance_rest
from liqcli.exchanges.binance import stream as binance
from liqcli.exchanges.http import VenueHttp
from liqcli.exchanges.ws import ReconnectingWebSocket, VenueStatus, WsTimings
from liqcli.sources.booksync import BookSync, SyncOptions
from liqcli.trading.book import L2Book

log = logging.getLogger("liq.sources.binance")

VENUE = binance.VENUE


@dataclass(frozen=True)
class MarketOptions:
    """What to subscribe to and how; defaults suit production."""

    depth: bool = True
    book_ticker: bool = True
    agg_trades: bool = True
    mark_prices: bool = True
    liquidations: bool = False
    deltas: bool = False  # also emit applied BookDelta and loaded REST BookSnapshot events
    depth_speed: str = "100ms"
    depth_levels: int = 20  # levels per side of the periodic top-N snapshots
    snapshot_every_ms: int = 1000  # 0: no periodic snapshots
    snapshot_limit: int = 1000  # REST depth of the sync snapshot
    max_buffer: int = 10_000  # diffs kept per symbol while a snapshot is on its way
    timings: WsTimings = field(default_factory=WsTimings)
    http_timeout: float = 10.0
    http_retries: int = 3
    queue_size: int = 10_000  # events buffered for a slow consumer before sockets back up


class BinanceMarketSource:
    """See the module docstring."""

    venue = VENUE

    def __init__(
        self,
        symbols: Sequence[str],
        options: MarketOptions | None = None,
        *,
        ws_url: str | None = None,
        rest_url: str | None = None,
        http: VenueHttp | None = None,
        wall_clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.symbols = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
        self.options = opts = options or MarketOptions()
        if not self.symbols:
            raise UsageError("binance: give at least one symbol, e.g. BTCUSDT")
        if opts.snapshot_every_ms < 0 or opts.depth_levels <= 0:
            raise UsageError("binance: snapshot interval must be >= 0 and depth levels > 0")
        if opts.depth and opts.snapshot_limit not in binance_rest.DEPTH_LIMITS:
            limits = ", ".join(map(str, binance_rest.DEPTH_LIMITS))
            raise UsageError(f"binance: snapshot limit {opts.snapshot_limit}: choose from {limits}")
        streams: list[str] = []
        if opts.depth:
            streams += binance.depth_streams(self.symbols, opts.depth_speed)
        if opts.book_ticker:
            streams += binance.book_ticker_streams(self.symbols)
        if opts.agg_trades:
            streams += binance.agg_trade_streams(self.symbols)
        if opts.mark_prices:
            streams += binance.mark_price_streams(self.symbols)
        if opts.liquidations:
            streams += [f"{s.lower()}@forceOrder" for s in self.symbols]
        if not streams:
            raise UsageError("binance: choose at least one kind of market data")
        self.protocols = binance.protocols(streams, ws_url)
        self.connection_statuses = [VenueStatus(VENUE) for _ in self.protocols]
        self.clock = wall_clock
        self.books: dict[str, L2Book] = {s: L2Book(s, VENUE) for s in self.symbols}
        self._wanted = frozenset(self.symbols)
        self._rng = rng or random.Random()
        self._depth = {s: self._book_sync(s) for s in self.symbols}
        self._rest_url = rest_url
        self._http = http
        self._own_http = http is None
        self._last_top: dict[str, int] = {}
        self._last_trade: dict[str, int] = {}
        self._last_mark: dict[str, int] = {}
        self._ready: list[Event] = []
        self._wake: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        self._failures: list[BaseException] = []
        self._closed = False

    # ------------------------------------------------------------------ Source shape

    @property
    def statuses(self) -> dict[str, VenueStatus]:
        """One VenueStatus for the venue, summed over its connections (worst state wins)."""
        merged = VenueStatus(VENUE)
        order = ("closed", "down", "connecting", "connected")
        states = [s.state for s in self.connection_statuses]
        merged.state = min(states, key=order.index) if states else "closed"
        for status in self.connection_statuses:
            for name in ("reconnects", "gaps", "gap_ms", "garbage", "errors", "malformed"):
                setattr(merged, name, getattr(merged, name) + getattr(status, name))
            merged.messages += status.messages
            merged.events += status.events
            if status.last_message_ms is not None:
                merged.last_message_ms = max(merged.last_message_ms or 0, status.last_message_ms)
            merged.last_error = merged.last_error or status.last_error
        connected = [s.connected_since_ms for s in self.connection_statuses]
        merged.connected_since_ms = None if None in connected else min(connected, default=None)
        return {VENUE: merged}

    async def __aenter__(self) -> BinanceMarketSource:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Every event received since the last batch, in arrival order; ends once closed, raises
        LiqError once every connection has failed for good (e.g. an invalid URL)."""
        self._start()
        while True:
            while not self._ready:
                if self._closed:
                    return
                if self._running == 0:
                    detail = "; ".join(str(e) for e in self._failures) or "closed"
                    raise LiqError(f"binance: market data stopped: {detail}")
                self._wake = asyncio.get_running_loop().create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
            batch, self._ready = self._ready, []
            if self._space is not None and not self._space.done():
                self._space.set_result(None)
            yield batch

    async def aclose(self) -> None:
        """Close every socket, stop snapshot requests, close the HTTP client; idempotent."""
        self._closed = True
        for waiter in (self._wake, self._space):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        tasks = self._tasks + [d.task for d in self._depth.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        for status in self.connection_statuses:
            status.state = "closed"

    # ------------------------------------------------------------------ connections

    def _start(self) -> None:
        if self._tasks or self._closed:
            return
        self._running = len(self.protocols)
        self._tasks = [
            asyncio.create_task(self._connection(p, s), name=f"liq-binance-market-{i}")
            for i, (p, s) in enumerate(zip(self.protocols, self.connection_statuses, strict=True))
        ]

    async def _connection(self, protocol: Any, status: VenueStatus) -> None:
        try:
            ws = ReconnectingWebSocket(
                protocol,
                timings=self.options.timings,
                status=status,
                wall_clock=self.clock,
                rng=self._rng,
            )
            async with ws:
                async for message in ws:
                    received = self.clock()
                    try:
                        events = binance.parse_market_message(message, received)
                    except DataError as exc:
                        status.malformed += 1
                        status.last_error = str(exc)
                        log.info("%s", exc)
                        continue
                    before = len(self._ready)
                    for event in events:
                        self._dispatch(event)
                    status.events += len(self._ready) - before
                    if len(self._ready) > before:
                        self._wake_consumer()
                    if len(self._ready) >= self.options.queue_size:
                        await self._room()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # this connection is finished; the others go on
            status.state = "down"
            status.last_error = str(exc)
            self._failures.append(exc)
            log.error("binance: market connection stopped: %s", exc)
        finally:
            self._running -= 1
            self._wake_consumer()

    def _wake_consumer(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _room(self) -> None:
        while len(self._ready) >= self.options.queue_size and not self._closed:
            if self._space is None or self._space.done():
                self._space = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._space)

    def _dispatch(self, event: Any) -> None:
        symbol = event.symbol
        if symbol not in self._wanted:
            return
        kind = type(event)
        if kind is BookDelta:
            self._depth[symbol].on_delta(event)
        elif kind is BookTop:
            if event.update_id > self._last_top.get(symbol, -1):
                self._last_top[symbol] = event.update_id
                self._ready.append(event)
        elif kind is AggTrade:
            if event.trade_id > self._last_trade.get(symbol, -1):
                self._last_trade[symbol] = event.trade_id
                self._ready.append(event)
        elif kind is MarkPrice:
            if event.ts > self._last_mark.get(symbol, -1):
                self._last_mark[symbol] = event.ts
                self._ready.append(event)
        elif kind is Liquidation:
            self._ready.append(event)

    # ------------------------------------------------------------------ book sync

    def _book_sync(self, symbol: str) -> BookSync:
        opts = self.options

        async def fetch() -> BookSnapshot:
            return await binance_rest.depth(self._client(), symbol, opts.snapshot_limit)

        def on_error(text: str) -> None:
            for status in self.connection_statuses:
                status.last_error = text

        return BookSync(
            VENUE,
            self.books[symbol],
            fetch=fetch,
            emit=lambda event: self._ready.append(event),
            wake=self._wake_consumer,
            clock=lambda: self.clock(),
            on_error=on_error,
            closed=lambda: self._closed,
            timings=opts.timings,
            rng=self._rng,
            options=SyncOptions(
                snapshot_every_ms=opts.snapshot_every_ms,
                depth_levels=opts.depth_levels,
                emit_deltas=opts.deltas,
                max_buffer=opts.max_buffer,
            ),
        )

    def _client(self) -> VenueHttp:
        if self._http is None:
            self._http = binance_rest.binance_http(
                self._rest_url,
                timeout=self.options.http_timeout,
                max_retries=self.options.http_retries,
                rng=self._rng,
            )
        return self._http
