"""Live Backpack market data as one source: a maintained order book (``depth.<s>`` diffs synced
from ``GET /api/v1/depth``), best bid/ask, trades and mark prices, for ``liq mm`` (live and
``--paper``).

::

    async with BackpackMarketSource(["SOL_USDC_PERP"]) as source:
        async for batch in source.batches():   # BookTop | BookSnapshot | AggTrade | MarkPrice
            ...
        source.books["SOL_USDC_PERP"].counters  # applied, stale, gaps, loads (resyncs)

Same shape as :class:`liqcli.sources.binance_market.BinanceMarketSource` (``batches()``,
``statuses``, ``aclose()``, ``clock``), so the Engine's MergedBook works the same.

Book sync, per symbol (TRADING-VENUES.md §1.7): diffs are buffered from the first one received,
a REST snapshot is loaded, buffered diffs with ``u <= lastUpdateId`` are dropped, the first one
applied must straddle ``lastUpdateId + 1`` and each later one start at the previous ``u + 1``
(``L2Book(rule="contiguous")``). A gap - a lost diff, a reconnect, a snapshot older than the
buffer - starts a new sync (counted in ``counters.gaps`` / ``loads``); failed snapshot requests
are retried with backoff while diffs keep buffering. Every ``snapshot_every_ms`` of event time a
top-``depth_levels`` ``BookSnapshot`` of the book as it stood at the boundary is emitted.

One connection (Backpack has no per-connection stream cap worth splitting for one market maker);
the server's 60 s pings are answered by the websockets library, our own pings keep the
stale-timeout honest. Duplicates across reconnects are dropped (bookTicker ``u``, trade id).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from liqcli.core.endpoints import url
from liqcli.core.events import AggTrade, BookDelta, BookSnapshot, BookTop, Event, MarkPrice
from liqcli.core.timeutil import now_ms
from liqcli.errors import LiqError, UsageError
from liqcli.exchanges.backpack import stream as bp
from liqcli.exchanges.backpack.rest import BackpackRest, backpack_rest
from liqcli.exchanges.ws import (
    FrameKind,
    ReconnectingWebSocket,
    VenueStatus,
    WsProtocol,
    WsTimings,
)
from liqcli.sources.booksync import BookSync, SyncOptions
from liqcli.trading.book import L2Book

log = logging.getLogger("liq.backpack")
VENUE = "backpack"


def classify(message: Any) -> FrameKind:
    """Data frames are ``{"stream", "data"}``; ``{"error": ...}`` answers a refused subscribe."""
    if isinstance(message, dict):
        if "stream" in message:
            return FrameKind.DATA
        if message.get("error"):
            return FrameKind.ERROR
    return FrameKind.CONTROL


def protocol(streams: Sequence[str], ws_url: str | None = None, **kw: Any) -> WsProtocol:
    return WsProtocol(
        VENUE,
        ws_url or url("LIQ_BACKPACK_WS_URL"),
        subscriptions=kw.pop("subscriptions", None) or [bp.subscribe(list(streams))],
        ping_interval=20.0,
        classify=classify,
        **kw,
    )


@dataclass(frozen=True)
class BackpackOptions:
    depth: bool = True
    book_ticker: bool = True
    trades: bool = True
    mark_prices: bool = True
    depth_levels: int = 20
    snapshot_every_ms: int = 1000
    snapshot_limit: int = 1000
    max_buffer: int = 10_000
    timings: WsTimings = field(default_factory=lambda: WsTimings(stale_timeout=90.0))
    http_timeout: float = 10.0


class BackpackMarketSource:
    venue = VENUE

    def __init__(
        self,
        symbols: Sequence[str],
        options: BackpackOptions | None = None,
        *,
        ws_url: str | None = None,
        rest: BackpackRest | None = None,
        wall_clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.symbols = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
        if not self.symbols:
            raise UsageError("backpack: give a symbol, e.g. SOL_USDC_PERP")
        self.options = opts = options or BackpackOptions()
        streams: list[str] = []
        for s in self.symbols:
            if opts.depth:
                streams.append(f"depth.{s}")
            if opts.book_ticker:
                streams.append(f"bookTicker.{s}")
            if opts.trades:
                streams.append(f"trade.{s}")
            if opts.mark_prices:
                streams.append(f"markPrice.{s}")
        self.protocol = protocol(streams, ws_url)
        self.status = VenueStatus(VENUE)
        self.clock = wall_clock
        self.books = {s: L2Book(s, VENUE, rule="contiguous") for s in self.symbols}
        self._rest = rest
        self._own_rest = rest is None
        self._rng = rng or random.Random()
        self._depth = {s: self._book_sync(s) for s in self.symbols}
        self._last_top: dict[str, int] = {}
        self._last_trade: dict[str, int] = {}
        self._ready: list[Event] = []
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False

    @property
    def statuses(self) -> dict[str, VenueStatus]:
        return {VENUE: self.status}

    async def __aenter__(self) -> BackpackMarketSource:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def batches(self) -> AsyncIterator[list[Event]]:
        self._start()
        while True:
            while not self._ready:
                if self._closed:
                    return
                if self._task is not None and self._task.done():
                    raise LiqError(f"backpack: market data stopped: {self._failure or 'closed'}")
                self._wake = asyncio.get_running_loop().create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
            batch, self._ready = self._ready, []
            yield batch

    async def aclose(self) -> None:
        self._closed = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        tasks = [t for t in [self._task, *(d.task for d in self._depth.values())] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_rest and self._rest is not None:
            await self._rest.http.aclose()
            self._rest = None
        self.status.state = "closed"

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._connection(), name="liq-backpack-market")

    def _wake_consumer(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _connection(self) -> None:
        status = self.status
        try:
            ws = ReconnectingWebSocket(
                self.protocol, timings=self.options.timings, status=status,
                wall_clock=self.clock, rng=self._rng,
            )  # fmt: skip
            async with ws:
                async for message in ws:
                    if not isinstance(message, dict):
                        status.malformed += 1
                        continue
                    stream = message.get("stream")
                    data = message.get("data")
                    event = _parse(stream, data, self.clock())
                    if event is None:
                        status.malformed += 1
                        continue
                    before = len(self._ready)
                    self._dispatch(event)
                    status.events += len(self._ready) - before
                    if len(self._ready) > before:
                        self._wake_consumer()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status.state = "down"
            status.last_error = str(exc)
            self._failure = exc
            log.error("backpack: market connection stopped: %s", exc)
        finally:
            self._wake_consumer()

    def _dispatch(self, event: Any) -> None:
        symbol = event.symbol
        if symbol not in self.books:
            return
        kind = type(event)
        if kind is BookDelta:
            self._depth[symbol].on_delta(event)
        elif kind is BookTop:
            # bookTicker ``u`` repeats while the book does not change: only older ones are dups
            if event.update_id >= self._last_top.get(symbol, -1):
                self._last_top[symbol] = event.update_id
                self._ready.append(event)
        elif kind is AggTrade:
            if event.trade_id > self._last_trade.get(symbol, -1):
                self._last_trade[symbol] = event.trade_id
                self._ready.append(event)
        elif kind is MarkPrice:
            self._ready.append(event)

    # ------------------------------------------------------------------ book sync

    def _book_sync(self, symbol: str) -> BookSync:
        opts = self.options

        async def fetch() -> BookSnapshot:
            depth = await self._client().depth(symbol, opts.snapshot_limit)
            return bp.snapshot_from_rest(symbol, depth)

        def on_error(text: str) -> None:
            self.status.last_error = text

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
                emit_loaded=True,
                max_buffer=opts.max_buffer,
            ),
        )

    def _client(self) -> BackpackRest:
        if self._rest is None:
            self._rest = backpack_rest(timeout=self.options.http_timeout, max_retries=3)
        return self._rest


def _parse(stream: Any, data: Any, received: int) -> Any | None:
    if not isinstance(stream, str) or not isinstance(data, dict):
        return None
    if stream.startswith("depth."):
        return bp.parse_depth(data, received)
    if stream.startswith("bookTicker."):
        return bp.parse_book_ticker(data, received)
    if stream.startswith("trade."):
        return bp.parse_trade(data, received)
    if stream.startswith("markPrice."):
        return bp.parse_mark_price(data, received)
    return None
