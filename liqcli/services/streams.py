"""Live venue streams as one Source (liqcli.sources.base) of normalised events.

API (what ``liq watch``, ``liq cascade`` and ``liq map --live`` call)::

    from liqcli.services.streams import liquidation_stream, binance_events, aggtrade_stream

    # Liquidations from several venues (default: every registered liquidation venue), merged in
    # arrival order; ``trades_from`` venues also stream their trades (on the same connection).
    # Venues are independent: one that is down (or fails to start) never stops the others.
    async with liquidation_stream(["binance", "okx"], ["BTCUSDT"], trades_from=["binance"]) as s:
        async for batch in s.batches():          # list[Liquidation | AggTrade], never empty
            ...
        s.clock()                                # WallClock unless a clock is given
        s.statuses["okx"]                        # liqcli.exchanges.ws.VenueStatus, live
        # .state connecting|connected|down|closed, .reconnects, .gaps, .gap_ms, .garbage,
        # .errors, .malformed, .rejected (refused events by reason), .messages, .events,
        # .last_message_ms, .last_error; .to_dict()
    # ``async for event in s`` works too (one event at a time).

    async with binance_events(["BTCUSDT"], liquidations=True, agg_trades=True) as stream: ...
    async with aggtrade_stream("BTCUSDT") as stream: ...   # Binance alone; ``stream.status``

Which venues exist, what they offer and how they run comes from the registry
(liqcli.exchanges.registry): each entry's ``live`` runner gets a :class:`VenueFeed` (its
symbols, whether to stream liquidations and/or trades, sockets, HTTP, counted parsing and
delivery). The built-in runners are below: Binance ``btcusdt@forceOrder`` (+ ``@aggTrade``),
OKX ``BTC-USDT-SWAP`` (filtered client-side: OKX streams per instrument type), Bybit
``allLiquidation.BTCUSDT``. No symbols = every symbol: Binance ``!forceOrder@arr``, OKX
SWAP+FUTURES, Bybit every trading linear perpetual (listed over REST). ``received_ts`` on each
event is the local wall clock. ``symbol_lists`` / ``unknown_symbols`` check user symbols against
the venues' own lists (each entry's ``list_symbols``).

``StreamOptions`` holds the knobs (``timings``: WsTimings for stale timeout, backoff, lifetime;
``data_dir`` for the OKX instruments cache; HTTP timeout/retries; the event queue size).
Everything that waits is injectable (``timings``, ``wall_clock``, ``rng``) so tests run in
milliseconds. Always use ``async with`` (or ``await stream.aclose()``): it closes every socket
and HTTP client; Ctrl-C (cancellation) does the same. Venues retry forever; only a venue that
cannot run at all (e.g. an invalid URL) stops, and when every venue has stopped the iteration
raises LiqError naming each failure.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from liqcli.core.endpoints import url as endpoint_url
from liqcli.core.timeutil import now_ms
from liqcli.errors import DataError, LiqError, UsageError
from liqcli.exchanges import okx, registry
from liqcli.exchanges.binance import stream as binance
from liqcli.exchanges.bybit import stream as bybit
from liqcli.exchanges.http import RateBudget, VenueHttp
from liqcli.exchanges.parsing import refuse
from liqcli.exchanges.ws import (
    ReconnectingWebSocket,
    VenueStatus,
    WsProtocol,
    WsTimings,
    backoff_delay,
)
from liqcli.sources.clock import WallClock

log = logging.getLogger("liq.streams")

T = TypeVar("T")


def __getattr__(name: str) -> Any:
    # VENUES is the registry's list of liquidation venues, read when asked (venues may register).
    if name == "VENUES":
        return tuple(registry.names(registry.LIQUIDATIONS))
    raise AttributeError(name)


@dataclass(frozen=True)
class StreamOptions:
    """Knobs shared by every venue of a stream; defaults suit production."""

    timings: WsTimings = field(default_factory=WsTimings)
    data_dir: Path | None = None  # OKX instruments cache at {data_dir}/_cache/okx_instruments.json
    http_timeout: float = 10.0
    http_retries: int = 3
    okx_refresh_s: float = 60.0  # least time between instrument refreshes for new listings
    queue_size: int = 10_000  # events buffered between venues and a slow consumer


def validate_exchanges(exchanges: Sequence[str]) -> list[str]:
    """Lower-cased, de-duplicated venue names; UsageError for an unknown one."""
    return registry.validate(exchanges, registry.LIQUIDATIONS)


class VenueFeed:
    """What a venue's live runner (its registry entry's ``live``) gets: its symbols, what to
    stream, and the stream's plumbing (sockets, HTTP, parsing with counting, delivery)."""

    def __init__(
        self,
        stream: LiquidationStream,
        venue: str,
        *,
        liquidations: bool,
        trades: bool,
    ) -> None:
        self.venue = venue
        self.symbols = stream.symbols
        self.liquidations = liquidations
        self.trades = trades
        self.options = stream.options
        self.status = stream.statuses[venue]
        self.now = stream._wall_clock
        self._stream = stream

    def ws(self, protocol: WsProtocol) -> ReconnectingWebSocket:
        return self._stream._ws(protocol)

    def http(self, base_url: str, budgets: Sequence[RateBudget] = ()) -> VenueHttp:
        return self._stream._http(self.venue, base_url, budgets)

    async def until_ok(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a start-up request with backoff; only usage errors are final."""
        return await self._stream._until_ok(self.venue, what, call)

    def parse(self, parser: Callable[..., list[T]], *args: Any) -> list[T]:
        """``parser(*args)``; a DataError is counted as malformed and gives ``[]``."""
        return _parse(self.status, parser, *args)

    def deliver(self, events: list[Any]) -> bool:
        """Hand events to the consumer (filtered to the wanted symbols); True when it lags:
        then ``await feed.room()`` before reading on."""
        return self._stream._deliver(self.status, events)

    async def room(self) -> None:
        await self._stream._room()

    async def pump(self, protocol: WsProtocol, parser: Callable[..., list[Any]]) -> None:
        """The common runner: every frame of ``protocol`` through ``parser(message, received_ms)``."""
        status = self.status
        deliver = self._stream._deliver
        now = self.now
        async with self.ws(protocol) as ws:
            async for message in ws:
                events = _parse(status, parser, message, now())
                if events and deliver(status, events):
                    await self._stream._room()


class LiquidationStream:
    """Merged live events of several venues (liquidations, and trades from ``trades_from``);
    a :class:`liqcli.sources.base.Source`. See the module docstring."""

    def __init__(
        self,
        exchanges: Sequence[str],
        symbols: Sequence[str] = (),
        *,
        options: StreamOptions | None = None,
        wall_clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        trades_from: Sequence[str] = (),
        clock: Any | None = None,
    ) -> None:
        self.exchanges = validate_exchanges(exchanges) if exchanges else []
        self.trades_from = registry.validate(trades_from, registry.TRADES) if trades_from else []
        if not self.exchanges and not self.trades_from:
            validate_exchanges(exchanges)  # the usage error naming the choices
        self.venues = list(dict.fromkeys([*self.exchanges, *self.trades_from]))
        self.symbols = [s.strip().upper() for s in symbols if s.strip()]
        self.options = options or StreamOptions()
        self.statuses: dict[str, VenueStatus] = {v: VenueStatus(v) for v in self.venues}
        self.clock = clock if clock is not None else WallClock(wall_clock)
        self._wanted = frozenset(self.symbols)
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        # Venues append to one list that the consumer takes whole: a burst costs one wake-up,
        # not a queue hand-off per event.
        self._ready: list[Any] = []
        self._taken: list[Any] = []  # the batch __anext__ is handing out one by one
        self._next = 0
        self._wake: asyncio.Future[None] | None = None  # the consumer waits for events
        self._space: asyncio.Future[None] | None = None  # venues wait for a slow consumer
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        self._failures: dict[str, BaseException] = {}
        self._closed = False

    async def __aenter__(self) -> LiquidationStream:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> LiquidationStream:
        return self

    async def __anext__(self) -> Any:
        if self._next >= len(self._taken):
            self._taken = await self.next_batch()
            self._next = 0
        event = self._taken[self._next]
        self._next += 1
        return event

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Every event received since the last batch, in arrival order (the fast way to consume:
        one await per burst instead of one per event)."""
        while True:
            try:
                batch = await self.next_batch()
            except StopAsyncIteration:
                return
            yield batch

    async def next_batch(self) -> list[Any]:
        """The events waiting now (at least one; waits for them); StopAsyncIteration once closed
        or once every venue has stopped (LiqError if they all failed)."""
        if self._next < len(self._taken):  # mixing __anext__ and batches: nothing skipped
            rest, self._taken, self._next = self._taken[self._next :], [], 0
            return rest
        if self._closed:
            raise StopAsyncIteration
        self._start()
        while not self._ready:
            if self._closed:
                raise StopAsyncIteration
            if self._running == 0:
                if self._failures:
                    detail = "; ".join(f"{v}: {e}" for v, e in self._failures.items())
                    raise LiqError(f"every venue failed: {detail}")
                raise StopAsyncIteration
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None
        batch, self._ready = self._ready, []
        if self._space is not None and not self._space.done():
            self._space.set_result(None)
        return batch

    def _emit(self, events: list[Any]) -> bool:
        """Hand a message's events to the consumer; True when the buffer is full (then the
        venue awaits ``_room()`` before reading on, which backs up into its socket)."""
        ready = self._ready
        ready.extend(events)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return len(ready) >= self.options.queue_size

    async def _room(self) -> None:
        while len(self._ready) >= self.options.queue_size and not self._closed:
            if self._space is None or self._space.done():
                self._space = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._space)

    def _venue_stopped(self, venue: str, error: BaseException | None) -> None:
        self._running -= 1
        if error is not None:
            self._failures[venue] = error
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def ever_connected(self) -> bool:
        """Whether any venue delivered a frame since the start (``liq watch --duration``)."""
        return any(s.messages or s.connected_since_ms for s in self.statuses.values())

    async def aclose(self) -> None:
        """Stop every venue and close its sockets; safe to call more than once."""
        self._closed = True
        for waiter in (self._wake, self._space):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for status in self.statuses.values():
            status.state = "closed"

    def _start(self) -> None:
        if self._tasks:
            return
        self._running = len(self.venues)
        liquidations, trades = set(self.exchanges), set(self.trades_from)
        for venue in self.venues:
            run = registry.get(venue).runner("live")
            feed = VenueFeed(
                self, venue, liquidations=venue in liquidations, trades=venue in trades
            )
            self._tasks.append(
                asyncio.create_task(self._run_venue(venue, run(feed)), name=f"liq-{venue}")
            )

    async def _run_venue(self, venue: str, run: Awaitable[None]) -> None:
        status = self.statuses[venue]
        error: BaseException | None = None
        try:
            await run
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a venue must never take the others down
            error = exc
            status.state = "down"
            status.last_error = str(exc)
            log.error("%s: stream stopped: %s", venue, exc, exc_info=not isinstance(exc, LiqError))
        self._venue_stopped(venue, error)

    def _deliver(self, status: VenueStatus, events: list[Any]) -> bool:
        """A message's events, filtered to the wanted symbols; True when the consumer lags."""
        if self._wanted:
            events = [e for e in events if e.symbol in self._wanted]
        if not events:
            return False
        status.events += len(events)
        return self._emit(events)

    def _ws(self, protocol: WsProtocol) -> ReconnectingWebSocket:
        return ReconnectingWebSocket(
            protocol,
            timings=self.options.timings,
            status=self.statuses[protocol.venue],
            wall_clock=self._wall_clock,
            rng=self._rng,
        )

    def _http(self, venue: str, base_url: str, budgets: Sequence[RateBudget] = ()) -> VenueHttp:
        return VenueHttp(
            venue,
            base_url,
            budgets=budgets,
            timeout=self.options.http_timeout,
            max_retries=self.options.http_retries,
            rng=self._rng,
        )

    async def _until_ok(self, venue: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a venue's start-up request with backoff; only usage errors are final."""
        status = self.statuses[venue]
        attempt = 0
        while True:
            try:
                return await call()
            except UsageError:
                raise
            except LiqError as exc:
                status.state = "down"
                status.last_error = f"{what}: {exc}"
                log.warning("%s: %s failed: %s; retrying", venue, what, exc)
                await asyncio.sleep(backoff_delay(attempt, self.options.timings, self._rng))
                attempt += 1


LiveStream = LiquidationStream  # the live Source: liquidations, and trades where asked


def _parse(status: VenueStatus, parser: Callable[..., list[T]], *args: Any) -> list[T]:
    """The venue parser counts what it refuses in ``status.rejected`` (by reason); a parser
    that raises anyway (any exception) costs that frame only: a venue never dies of data."""
    refused = status.rejected
    before = refused.total
    try:
        events = parser(*args, refused=refused) if _takes_refused(parser) else parser(*args)
    except Exception as exc:
        refuse(refused, exc, status.venue)
        events = []
    if refused.total != before:
        _note_refusals(status, before)
    return events


_TAKES_REFUSED: dict[Callable[..., Any], bool] = {}


def _takes_refused(parser: Callable[..., Any]) -> bool:
    """Whether ``parser`` counts its refusals (a ``refused=`` keyword); others raise instead."""
    known = _TAKES_REFUSED.get(parser)
    if known is None:
        try:
            params = inspect.signature(parser).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        known = any(p.name == "refused" or p.kind is p.VAR_KEYWORD for p in params)
        _TAKES_REFUSED[parser] = known
    return known


def _note_refusals(status: VenueStatus, before: int) -> None:
    refused = status.rejected
    status.malformed = refused.total
    status.last_error = refused.last
    # Logged at info at the 1st, 2nd, 4th, 8th... refusal: visible, never a flood.
    if refused.total.bit_length() != before.bit_length():
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        log.info(
            "%s: refused %d events so far (%s); last: %s",
            status.venue,
            refused.total,
            counts,
            refused.last,
        )


# ---- the built-in venues' live runners (registry entries point here) ---------------------------


async def run_binance(feed: VenueFeed) -> None:
    """Liquidations and/or aggregate trades on one combined-stream connection."""
    streams: list[str] = []
    if feed.liquidations:
        streams += binance.liquidation_streams(feed.symbols)
    if feed.trades:
        if not feed.symbols:
            raise UsageError("binance: trades need symbols")
        streams += binance.agg_trade_streams(feed.symbols)
    parse = binance.parse_message if feed.trades else binance.parse_liquidations
    await feed.pump(binance.protocol(streams), parse)


async def run_okx(feed: VenueFeed) -> None:
    inst_types = okx.inst_types_for(feed.symbols)
    async with feed.http(endpoint_url("LIQ_OKX_REST_URL"), [OKX_INSTRUMENTS_BUDGET]) as http:
        instruments = _okx_instruments(http, feed.options, inst_types)
        await feed.until_ok("instruments", instruments.load)
        status = feed.status
        async with feed.ws(okx.protocol(inst_types)) as ws:
            async for message in ws:
                received = feed.now()
                if any(i not in instruments for i in okx.instrument_ids(message)):
                    await _refresh_instruments(status, instruments)
                events = _parse(status, okx.parse_liquidations, message, instruments, received)
                if events and feed.deliver(events):
                    await feed.room()


OKX_INSTRUMENTS_BUDGET = RateBudget("okx_instruments", 20, 2.0)  # 20 requests / 2 s per IP


def _okx_instruments(
    http: VenueHttp, options: StreamOptions, inst_types: Sequence[str] = okx.INST_TYPES
) -> okx.OkxInstruments:
    cache = None
    if options.data_dir is not None:
        cache = Path(options.data_dir) / "_cache" / "okx_instruments.json"
    return okx.OkxInstruments(
        http, inst_types=inst_types, cache_path=cache, min_refresh_s=options.okx_refresh_s
    )


async def _refresh_instruments(status: VenueStatus, instruments: okx.OkxInstruments) -> None:
    """A new listing: fetch contract values again (rate-limited inside); on failure the
    unknown instrument's events are skipped, the stream goes on."""
    try:
        await instruments.refresh()
    except LiqError as exc:
        status.last_error = f"instruments refresh: {exc}"
        log.warning("okx: instruments refresh failed: %s", exc)


async def run_bybit(feed: VenueFeed) -> None:
    symbols = feed.symbols
    if not symbols:
        async with feed.http(endpoint_url("LIQ_BYBIT_REST_URL")) as http:
            symbols = await feed.until_ok("instruments", lambda: bybit.linear_perpetuals(http))
    await feed.pump(bybit.protocol(bybit.topics(symbols)), bybit.parse_liquidations)


# ---- the venues' symbol lists (unknown-symbol checks) -----------------------------------------


async def binance_symbols(options: StreamOptions) -> set[str]:
    from liqcli.exchanges.binance.rest import EXCHANGE_INFO_PATH

    async with _list_http("binance", "LIQ_BINANCE_REST_URL", options) as http:
        payload = await http.get_json(EXCHANGE_INFO_PATH)
    try:
        return {str(s["symbol"]).upper() for s in payload["symbols"]}
    except (KeyError, TypeError) as exc:
        raise DataError(f"binance: malformed exchangeInfo ({exc!r})") from None


async def okx_symbols(options: StreamOptions) -> set[str]:
    async with _list_http("okx", "LIQ_OKX_REST_URL", options, [OKX_INSTRUMENTS_BUDGET]) as http:
        instruments = _okx_instruments(http, options)
        await instruments.load()
    return {okx.normalise_symbol(inst_id) for inst_id in instruments}


async def bybit_symbols(options: StreamOptions) -> set[str]:
    async with _list_http("bybit", "LIQ_BYBIT_REST_URL", options) as http:
        return set(await bybit.linear_perpetuals(http))


def _list_http(
    venue: str, env: str, options: StreamOptions, budgets: Sequence[RateBudget] = ()
) -> VenueHttp:
    # One quick try: a venue whose list cannot be had simply has no say.
    return VenueHttp(
        venue, endpoint_url(env), budgets=budgets, timeout=options.http_timeout, max_retries=0
    )


async def symbol_lists(
    exchanges: Sequence[str], options: StreamOptions | None = None
) -> dict[str, set[str] | None]:
    """Each venue's listed symbols, fetched at once (None: no list, or it could not be had)."""
    options = options or StreamOptions()

    async def one(name: str) -> set[str] | None:
        venue = registry.get(name)
        if venue.list_symbols is None:
            return None
        try:
            listed = set(await venue.runner("list_symbols")(options))
        except (LiqError, OSError) as exc:
            log.info("%s: symbol list unavailable: %s", name, exc)
            return None
        return listed or None  # an empty list says nothing about any symbol

    found = await asyncio.gather(*(one(name) for name in exchanges))
    return dict(zip(exchanges, found, strict=True))


def unknown_symbols(
    symbols: Sequence[str], lists: Mapping[str, set[str] | None]
) -> tuple[list[str], dict[str, list[str]]]:
    """(symbols no venue with a list knows, when every selected venue has a list and none of
    them knows it; {venue: symbols its list lacks} for the rest)."""
    have = {v: s for v, s in lists.items() if s is not None}
    if not have:
        return [], {}
    everywhere = [
        s for s in symbols if len(have) == len(lists) and all(s not in k for k in have.values())
    ]
    partly = {
        venue: missing
        for venue, known in have.items()
        if (missing := [s for s in symbols if s not in known and s not in everywhere])
    }
    return everywhere, partly


def liquidation_stream(
    exchanges: Sequence[str] | None = None,
    symbols: Sequence[str] = (),
    *,
    options: StreamOptions | None = None,
    wall_clock: Callable[[], int] = now_ms,
    rng: random.Random | None = None,
    trades_from: Sequence[str] = (),
    clock: Any | None = None,
) -> LiquidationStream:
    """Merged live liquidations (and trades of ``trades_from``); see the module docstring.
    Validates ``exchanges`` at once (UsageError) and connects lazily, on ``async with`` or the
    first ``__anext__``. Default: every registered liquidation venue."""
    if exchanges is None:
        exchanges = registry.default_names(registry.LIQUIDATIONS)
    return LiquidationStream(
        exchanges,
        symbols,
        options=options,
        wall_clock=wall_clock,
        rng=rng,
        trades_from=trades_from,
        clock=clock,
    )


class BinanceEventStream(LiquidationStream):
    """Binance liquidations and/or aggregate trades for given symbols on one connection: the
    merged stream with Binance alone (``status`` is its VenueStatus)."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        liquidations: bool = True,
        agg_trades: bool = True,
        timings: WsTimings | None = None,
        wall_clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
    ) -> None:
        wanted = [s.strip().upper() for s in symbols if s.strip()]
        if not wanted or not (liquidations or agg_trades):
            raise UsageError("binance: give at least one symbol and one kind of event")
        super().__init__(
            [binance.VENUE] if liquidations else [],
            wanted,
            options=StreamOptions(timings=timings or WsTimings()),
            wall_clock=wall_clock,
            rng=rng,
            trades_from=[binance.VENUE] if agg_trades else [],
        )

    @property
    def status(self) -> VenueStatus:
        return self.statuses[binance.VENUE]


def binance_events(
    symbols: Sequence[str],
    *,
    liquidations: bool = True,
    agg_trades: bool = True,
    timings: WsTimings | None = None,
    wall_clock: Callable[[], int] = now_ms,
    rng: random.Random | None = None,
) -> BinanceEventStream:
    """Binance ``<sym>@forceOrder`` and ``<sym>@aggTrade`` events (Liquidation | AggTrade)."""
    return BinanceEventStream(
        symbols,
        liquidations=liquidations,
        agg_trades=agg_trades,
        timings=timings,
        wall_clock=wall_clock,
        rng=rng,
    )


def aggtrade_stream(
    symbol: str,
    *,
    timings: WsTimings | None = None,
    wall_clock: Callable[[], int] = now_ms,
    rng: random.Random | None = None,
) -> BinanceEventStream:
    """Binance aggregate trades of one symbol (AggTrade events only)."""
    return BinanceEventStream(
        [symbol],
        liquidations=False,
        agg_trades=True,
        timings=timings,
        wall_clock=wall_clock,
        rng=rng,
    )
