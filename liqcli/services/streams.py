"""Live venue streams as one async iterator of normalised events.

API (what ``liq watch``, ``liq cascade`` and ``liq map --live`` call)::

    from liqcli.services.streams import liquidation_stream, binance_events, aggtrade_stream

    # Liquidations from several venues, merged in arrival order. Venues are independent: one
    # that is down (or fails to start) never stops the others; its status says why.
    async with liquidation_stream(["binance", "okx", "bybit"], ["BTCUSDT"]) as stream:
        async for liq in stream:                 # liqcli.core.events.Liquidation
            ...
        stream.statuses["okx"]                   # liqcli.exchanges.ws.VenueStatus, live
        # .state connecting|connected|down|closed, .reconnects, .gaps, .gap_ms, .garbage,
        # .errors, .malformed, .rejected (refused events by reason), .messages, .events,
        # .last_message_ms, .last_error; .to_dict()

    # Binance liquidations and aggregate trades for some symbols on one connection.
    async with binance_events(["BTCUSDT"], liquidations=True, agg_trades=True) as stream:
        async for event in stream:               # Liquidation | AggTrade
            ...
    async with aggtrade_stream("BTCUSDT") as stream:   # AggTrade only
        ...

Symbols are user symbols (``BTCUSDT``): Binance ``btcusdt@forceOrder``, OKX ``BTC-USDT-SWAP``
(filtered client-side: OKX streams per instrument type), Bybit ``allLiquidation.BTCUSDT``. No
symbols = every symbol: Binance ``!forceOrder@arr``, OKX SWAP+FUTURES, Bybit every trading
linear perpetual (listed over REST). ``received_ts`` on each event is the local wall clock.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from liqcli.core.endpoints import url as endpoint_url
from liqcli.core.events import AggTrade, Liquidation
from liqcli.core.timeutil import now_ms
from liqcli.errors import LiqError, UsageError
from liqcli.exchanges import okx
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

log = logging.getLogger("liq.streams")

VENUES = ("binance", "okx", "bybit")
T = TypeVar("T")


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
    out = list(dict.fromkeys(e.strip().lower() for e in exchanges))
    unknown = [e for e in out if e not in VENUES]
    if unknown or not out:
        raise UsageError(
            f"unknown exchange {', '.join(unknown) or '(none)'}: choose from {', '.join(VENUES)}"
        )
    return out


class LiquidationStream:
    """Merged liquidations of several venues; see the module docstring."""

    def __init__(
        self,
        exchanges: Sequence[str],
        symbols: Sequence[str] = (),
        *,
        options: StreamOptions | None = None,
        wall_clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.exchanges = validate_exchanges(exchanges)
        self.symbols = [s.strip().upper() for s in symbols if s.strip()]
        self.options = options or StreamOptions()
        self.statuses: dict[str, VenueStatus] = {v: VenueStatus(v) for v in self.exchanges}
        self._wanted = frozenset(self.symbols)
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        # Venues append to one list that the consumer takes whole: a burst costs one wake-up,
        # not a queue hand-off per event.
        self._ready: list[Liquidation] = []
        self._taken: list[Liquidation] = []  # the batch __anext__ is handing out one by one
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

    async def __anext__(self) -> Liquidation:
        if self._next >= len(self._taken):
            self._taken = await self.next_batch()
            self._next = 0
        event = self._taken[self._next]
        self._next += 1
        return event

    async def batches(self) -> AsyncIterator[list[Liquidation]]:
        """Every event received since the last batch, in arrival order (the fast way to consume:
        one await per burst instead of one per event)."""
        while True:
            try:
                batch = await self.next_batch()
            except StopAsyncIteration:
                return
            yield batch

    async def next_batch(self) -> list[Liquidation]:
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

    def _emit(self, events: list[Liquidation]) -> bool:
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
        sources = {"binance": self._binance, "okx": self._okx, "bybit": self._bybit}
        self._running = len(self.exchanges)
        self._tasks = [
            asyncio.create_task(self._run_venue(venue, sources[venue]()), name=f"liq-{venue}")
            for venue in self.exchanges
        ]

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

    def _deliver(self, status: VenueStatus, events: list[Liquidation]) -> bool:
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

    async def _binance(self) -> None:
        streams = binance.liquidation_streams(self.symbols)
        status = self.statuses["binance"]
        parse = binance.parse_liquidations
        async with self._ws(binance.protocol(streams)) as ws:
            async for message in ws:
                events = self._parse(status, parse, message, self._wall_clock())
                if events and self._deliver(status, events):
                    await self._room()

    async def _okx(self) -> None:
        inst_types = okx.inst_types_for(self.symbols)
        cache = None
        if self.options.data_dir is not None:
            cache = Path(self.options.data_dir) / "_cache" / "okx_instruments.json"
        # OKX allows 20 instrument requests per 2 s per IP.
        budget = RateBudget("okx_instruments", 20, 2.0)
        async with self._http("okx", endpoint_url("LIQ_OKX_REST_URL"), [budget]) as http:
            instruments = okx.OkxInstruments(
                http,
                inst_types=inst_types,
                cache_path=cache,
                min_refresh_s=self.options.okx_refresh_s,
            )
            await self._until_ok("okx", "instruments", instruments.load)
            status = self.statuses["okx"]
            async with self._ws(okx.protocol(inst_types)) as ws:
                async for message in ws:
                    received = self._wall_clock()
                    if any(i not in instruments for i in okx.instrument_ids(message)):
                        await self._refresh_instruments(instruments)
                    events = self._parse(
                        status, okx.parse_liquidations, message, instruments, received
                    )
                    if events and self._deliver(status, events):
                        await self._room()

    async def _refresh_instruments(self, instruments: okx.OkxInstruments) -> None:
        """A new listing: fetch contract values again (rate-limited inside); on failure the
        unknown instrument's events are skipped, the stream goes on."""
        try:
            await instruments.refresh()
        except LiqError as exc:
            self.statuses["okx"].last_error = f"instruments refresh: {exc}"
            log.warning("okx: instruments refresh failed: %s", exc)

    async def _bybit(self) -> None:
        symbols = self.symbols
        if not symbols:
            async with self._http("bybit", endpoint_url("LIQ_BYBIT_REST_URL")) as http:
                symbols = await self._until_ok(
                    "bybit", "instruments", lambda: bybit.linear_perpetuals(http)
                )
        status = self.statuses["bybit"]
        async with self._ws(bybit.protocol(bybit.topics(symbols))) as ws:
            async for message in ws:
                events = self._parse(status, bybit.parse_liquidations, message, self._wall_clock())
                if events and self._deliver(status, events):
                    await self._room()

    @staticmethod
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


def liquidation_stream(
    exchanges: Sequence[str] = VENUES,
    symbols: Sequence[str] = (),
    *,
    options: StreamOptions | None = None,
    wall_clock: Callable[[], int] = now_ms,
    rng: random.Random | None = None,
) -> LiquidationStream:
    """Merged live liquidations; see the module docstring. Validates ``exchanges`` at once
    (UsageError) and connects lazily, on ``async with`` or the first ``__anext__``."""
    return LiquidationStream(exchanges, symbols, options=options, wall_clock=wall_clock, rng=rng)


class BinanceEventStream:
    """Binance liquidations and/or aggregate trades for given symbols on one connection."""

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
        streams: list[str] = []
        if liquidations:
            streams += binance.liquidation_streams(wanted)
        if agg_trades:
            streams += binance.agg_trade_streams(wanted)
        self.symbols = frozenset(wanted)
        self.status = VenueStatus(binance.VENUE)
        self._wall_clock = wall_clock
        self._ws = ReconnectingWebSocket(
            binance.protocol(streams),
            timings=timings,
            status=self.status,
            wall_clock=wall_clock,
            rng=rng,
        )
        self._events = self._run()

    async def __aenter__(self) -> BinanceEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Liquidation | AggTrade]:
        return self._events

    async def aclose(self) -> None:
        """Close the socket; safe from any task (a consumer inside the loop sees it end)."""
        await self._ws.aclose()
        if not getattr(self._events, "ag_running", False):
            await self._events.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[Liquidation | AggTrade]:
        status = self.status
        async for message in self._ws:
            events = LiquidationStream._parse(
                status, binance.parse_message, message, self._wall_clock()
            )
            for event in events:
                # The all-market stream (many symbols) carries others: filter here.
                if event.symbol in self.symbols:
                    status.events += 1
                    yield event


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
