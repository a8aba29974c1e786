"""One reconnecting WebSocket client shared by every venue.

A venue describes its protocol once (:class:`WsProtocol`: URL, subscription frames, ping style,
which frames are control frames); :class:`ReconnectingWebSocket` turns it into an endless async
iterator of decoded JSON messages that survives the network:

- exponential backoff with jitter between failed attempts (:class:`~liqcli.exchanges.retry.Backoff`),
  reset only once a connection delivered data and stayed up ``healthy_after`` seconds (a server
  that closes right after each frame is not reconnected at full speed forever);
- subscriptions re-sent after every reconnect;
- application pings (OKX text ``ping``, Bybit ``{"op":"ping"}``) or protocol pings (Binance), sent
  at least three times per stale timeout so a quiet but healthy connection never looks stale;
- stale detection: no frame (data, control or pong) for ``stale_timeout`` seconds -> reconnect;
- planned reconnects are make-before-break: after ``max_lifetime`` (Binance drops connections at
  24 h) or a venue notice (OKX 64008) a new connection opens and subscribes while the old one keeps
  delivering; the old one is closed once the new one delivered a data frame (or after
  ``handover_timeout``), its already-received frames are still yielded, and data frames the two
  connections both delivered during the overlap are yielded once (``status.overlap_duplicates``
  counts the dropped copies; they are matched on the raw frame, so services' event-key dedup stays
  the backstop for venues that batch differently per connection);
- non-JSON frames other than the venue's pong are counted as garbage and skipped; control frames
  (pongs, subscribe acks) are never yielded, error acks are counted and logged (the first as a
  warning, repeats at most once a minute with a count);
- :class:`VenueStatus` (state, reconnects, garbage, gaps, last message time) for dashboards;
- cancellation or ``aclose()`` closes the socket; nothing is left running.

Consume promptly: frames are read only as the consumer asks for them, so a consumer that stalls
for longer than ``stale_timeout`` makes a healthy connection look dead (services buffer events in
a queue for that reason).

Usage::

    async with ReconnectingWebSocket(protocol, timings=WsTimings(stale_timeout=30)) as ws:
        async for message in ws:
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from liqcli.core.timeutil import now_ms
from liqcli.errors import UsageError
from liqcli.exchanges.parsing import Refusals
from liqcli.exchanges.retry import Backoff, exponential_delay

try:  # a C frame parser: a tenth of websockets' CPU per frame (liqcli/exchanges/ws_picows.py)
    from liqcli.exchanges.ws_picows import connect as default_connect
except ImportError:
    default_connect = connect

log = logging.getLogger("liq.ws")

ERROR_LOG_EVERY_S = 60.0  # repeated venue error acks: one warning per minute, with a count
OVERLAP_MAX_FRAMES = 100_000  # raw frames remembered for a handover's dedup

State = Literal["connecting", "connected", "down", "closed"]


class FrameKind(Enum):
    """What a decoded frame means to the client."""

    DATA = "data"  # yielded to the consumer
    CONTROL = "control"  # pong, subscribe ack: swallowed
    ERROR = "error"  # venue error ack: counted, logged, swallowed
    RECONNECT = "reconnect"  # venue announces a disconnect (OKX 64008): reconnect now


def data_only(message: Any) -> FrameKind:
    return FrameKind.DATA


@dataclass(frozen=True)
class WsProtocol:
    """How to talk to one venue endpoint."""

    venue: str
    url: str
    subscriptions: Sequence[str] = ()  # text frames sent after every (re)connect
    app_ping: str | None = None  # None -> WebSocket protocol pings instead
    ping_interval: float = 20.0
    text_pong: str | None = None  # a bare non-JSON pong (OKX "pong"): not garbage
    classify: Callable[[Any], FrameKind] = data_only
    max_lifetime: float | None = None  # seconds; reconnect proactively before the venue's limit


@dataclass(frozen=True)
class WsTimings:
    """Every delay the client uses, injectable so tests run in milliseconds."""

    stale_timeout: float = 60.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_factor: float = 2.0
    jitter: float = 0.5  # each delay is scaled by a uniform factor in [1 - jitter, 1]
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    ping_interval: float | None = None  # overrides the protocol's cadence
    max_lifetime: float | None = None  # overrides the protocol's limit
    healthy_after: float = 30.0  # up this long with data: the reconnect backoff starts over
    handover_timeout: float = 10.0  # planned reconnect: longest wait for the new one's first data

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        """A :class:`Backoff` with these delays (what ``_until_ok`` loops can use too)."""
        return Backoff(
            self.backoff_initial,
            self.backoff_max,
            factor=self.backoff_factor,
            jitter=self.jitter,
            rng=rng,
        )


@dataclass
class VenueStatus:
    """Live health of one venue connection, read by dashboards (mutated in place)."""

    venue: str
    state: State = "connecting"
    reconnects: int = 0  # successful connections after the first
    gaps: int = 0  # established connections lost: data may be missing in between
    gap_ms: int = 0  # total time without a connection after the first one, ms
    garbage: int = 0  # frames that were not JSON (and not the venue's pong)
    errors: int = 0  # venue error acks (e.g. rejected subscriptions)
    malformed: int = 0  # events/frames the venue parser refused: sum of ``rejected``
    # Refused events per reason (liqcli.exchanges.parsing.REASONS), set by services.
    rejected: Refusals = field(default_factory=Refusals)
    overlap_duplicates: int = 0  # frames both connections of a planned reconnect delivered
    messages: int = 0  # data frames delivered to the consumer
    events: int = 0  # normalised events produced from them (set by services)
    last_message_ms: int | None = None  # wall clock of the last frame of any kind
    connected_since_ms: int | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["rejected"] = dict(self.rejected)  # a copy: the live one keeps counting
        return out


def backoff_delay(attempt: int, timings: WsTimings, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped, jittered downwards
    so a fleet of clients does not reconnect in lockstep (``timings.backoff()`` counts for you)."""
    return exponential_delay(
        attempt,
        initial=timings.backoff_initial,
        maximum=timings.backoff_max,
        factor=timings.backoff_factor,
        jitter=timings.jitter,
        rng=rng,
    )


@dataclass
class _Connection:
    """Per-connection bookkeeping shared by the reader and the keepalive task."""

    ws: ClientConnection
    opened_at: float
    last_frame: float
    serial: int = 0  # tells the connections of an overlap apart
    close_reason: str | None = None
    got_data: bool = False
    planned: str | None = None  # why a successor is being prepared ("lifetime", "notice")
    pending_pongs: set[asyncio.Future[float]] = field(default_factory=set)


@dataclass
class _Handover:
    """A planned reconnect in progress: the successor connection and what it delivered while
    the old connection was still being read."""

    old: _Connection
    task: asyncio.Task[None] | None = None
    conn: _Connection | None = None  # open and subscribed
    buffer: list[tuple[Any, Any]] = field(default_factory=list)  # (raw, message) data frames


class ReconnectingWebSocket:
    """Endless async iterator of decoded JSON data messages from one venue endpoint."""

    def __init__(
        self,
        protocol: WsProtocol,
        *,
        timings: WsTimings | None = None,
        status: VenueStatus | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        connect: Callable[..., Any] | None = None,  # the transport: websockets' connect or alike
    ) -> None:
        self.protocol = protocol
        self._connect = connect or default_connect
        self.timings = timings or WsTimings()
        self.status = status or VenueStatus(protocol.venue)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._backoff = self.timings.backoff(self._rng)
        self._iterator: AsyncIterator[Any] | None = None
        self._conn: _Connection | None = None
        self._handover: _Handover | None = None
        # Raw data frames seen during a handover's overlap -> serial of the connection that
        # delivered them; None outside an overlap (the hot loop then pays one check).
        self._overlap: dict[Any, int] | None = None
        self._serials = itertools.count(1)
        self._overlap_until = math.inf
        self._stopping = False
        self._error_log_next = 0.0
        self._errors_unlogged = 0
        interval = self.timings.ping_interval or protocol.ping_interval
        # Three pings per stale window: one lost pong must not look like a dead connection.
        self._ping_every = min(interval, self.timings.stale_timeout / 3)
        self._max_lifetime = self.timings.max_lifetime or protocol.max_lifetime

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def __aenter__(self) -> ReconnectingWebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket and stop; safe to call more than once, from any task."""
        self._stopping = True
        iterator = self._iterator
        if iterator is None:
            self.status.state = "closed"
        elif getattr(iterator, "ag_running", False):
            # Another task is inside the iterator: cut the sockets; its loop sees _stopping.
            handover = self._handover
            if handover is not None and handover.conn is not None:
                handover.conn.ws.transport.abort()
            if self._conn is not None:
                self._conn.ws.transport.abort()
        else:
            await iterator.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[Any]:
        backoff = self._backoff
        lost_at: float | None = None  # clock() when the last established connection ended
        status = self.status
        text_pong = self.protocol.text_pong
        classify = self.protocol.classify
        try:
            while not self._stopping:
                handover = self._take_handover()
                if handover is not None:
                    conn, pending = handover.conn, handover.buffer
                    assert conn is not None
                    status.reconnects += 1
                else:
                    pending = []
                    status.state = "connecting"
                    conn = await self._open()
                    if conn is None:
                        status.state = "down"
                        delay = backoff.next()
                        # The first failure in a row is worth a warning (jsonl users see nothing
                        # else); the retries after it are routine.
                        log.log(
                            logging.WARNING if backoff.attempts == 1 else logging.INFO,
                            "%s: %s; retrying in %.1fs",
                            self.protocol.venue,
                            status.last_error,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        continue
                    if lost_at is not None:
                        status.reconnects += 1
                        status.gap_ms += int((self._clock() - lost_at) * 1000)
                self._conn = conn
                lost_at = None
                status.state = "connected"
                status.connected_since_ms = self._wall_clock()
                status.last_error = None
                keepalive = asyncio.create_task(self._keepalive(conn))
                try:
                    # What the new connection delivered while the old one was still read.
                    for raw, message in pending:
                        if self._overlap is not None and self._duplicate(raw, conn):
                            continue
                        conn.got_data = True
                        status.messages += 1
                        yield message
                    async for raw in conn.ws:
                        conn.last_frame = self._clock()
                        status.last_message_ms = self._wall_clock()
                        if text_pong is not None and raw == text_pong:
                            continue
                        try:
                            message = orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            status.garbage += 1
                            continue
                        kind = classify(message)
                        if kind is FrameKind.DATA:
                            if self._overlap is not None and self._duplicate(raw, conn):
                                continue
                            conn.got_data = True
                            status.messages += 1
                            yield message
                        elif kind is FrameKind.ERROR:
                            self._error_ack(message)
                        elif kind is FrameKind.RECONNECT:
                            # Keep reading: the old connection delivers until the new one does.
                            self._plan_handover(conn, "notice")
                except ConnectionClosed:
                    pass
                finally:
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keepalive
                    for pong in list(conn.pending_pongs):
                        pong.cancel()
                    await conn.ws.close()
                    self._conn = None
                if self._stopping:
                    return
                if conn.got_data and self._clock() - conn.opened_at >= self.timings.healthy_after:
                    backoff.reset()
                if conn.close_reason == "handover":
                    log.info(
                        "%s: planned reconnect (%s): switched to the new connection",
                        self.protocol.venue,
                        conn.planned,
                    )
                    continue
                status.connected_since_ms = None
                reason = conn.close_reason or _describe_close(conn.ws)
                if self._handover is not None and self._handover.conn is not None:
                    # Lost while its successor was already subscribed: switch to it now.
                    log.info(
                        "%s: connection ended (%s) during a planned reconnect; switching",
                        self.protocol.venue,
                        reason,
                    )
                    self._handover.old.close_reason = "handover"
                    continue
                await self._drop_handover()
                lost_at = self._clock()
                status.gaps += 1
                log.warning("%s: connection ended (%s); reconnecting", self.protocol.venue, reason)
                status.last_error = reason
                status.state = "down"
                await asyncio.sleep(backoff.next())
        finally:
            await self._drop_handover()
            status.state = "closed"
            status.connected_since_ms = None

    # -- planned reconnects (make-before-break) ----------------------------------------------

    def _plan_handover(self, conn: _Connection, why: str) -> None:
        """Start opening a successor for ``conn``; ``conn`` keeps delivering meanwhile."""
        if conn.planned is not None or self._handover is not None or self._stopping:
            return
        conn.planned = why
        # A notice on a connection that never delivered data is not worth an instant
        # reconnect (a venue repeating it must not be hammered): back off first.
        delay = 0.0 if conn.got_data or why == "lifetime" else self._backoff.next()
        handover = self._handover = _Handover(conn)
        handover.task = asyncio.create_task(self._prepare(handover, delay))

    async def _prepare(self, handover: _Handover, delay: float) -> None:
        """Open and subscribe the successor, wait (bounded) for its first data frame, then
        close the old connection so the reader drains it and switches."""
        venue = self.protocol.venue
        classify = self.protocol.classify
        text_pong = self.protocol.text_pong
        backoff = self.timings.backoff(self._rng)
        if delay:
            await asyncio.sleep(delay)
        while not self._stopping:
            # Record the old connection's frames from now on: a venue that subscribes by URL
            # (Binance) sends to the new connection before connect() even returns.
            if self._overlap is None:
                self._overlap = {}
            self._overlap_until = math.inf
            new = await self._open()
            if new is None:
                retry = backoff.next()
                log.info(
                    "%s: planned reconnect: %s; retrying in %.1fs",
                    venue,
                    self.status.last_error,
                    retry,
                )
                await asyncio.sleep(retry)
                continue
            handover.conn = new
            give_up_at = self._clock() + self.timings.handover_timeout
            try:
                while (remaining := give_up_at - self._clock()) > 0:
                    try:
                        # Cancelling recv() loses nothing: the frame stays for the next read.
                        raw = await asyncio.wait_for(new.ws.recv(), remaining)
                    except TimeoutError:
                        break
                    new.last_frame = self._clock()
                    if text_pong is not None and raw == text_pong:
                        continue
                    try:
                        message = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        self.status.garbage += 1
                        continue
                    kind = classify(message)
                    if kind is FrameKind.DATA:
                        handover.buffer.append((raw, message))
                        break
                    if kind is FrameKind.ERROR:
                        self._error_ack(message)
            except ConnectionClosed:
                log.info("%s: planned reconnect: the new connection closed; retrying", venue)
                handover.conn, handover.buffer = None, []
                await asyncio.sleep(backoff.next())
                continue
            break
        handover.old.close_reason = "handover"
        await handover.old.ws.close()

    def _take_handover(self) -> _Handover | None:
        """The successor to read next, if a handover got that far."""
        handover = self._handover
        if handover is None or handover.conn is None or handover.old.close_reason != "handover":
            return None
        self._handover = None
        if handover.task is not None and not handover.task.done():
            handover.task.cancel()  # still waiting for data or closing the old one: not needed
        # The old connection's frames are all read: the new one's may still repeat them for a
        # moment (it can lag behind), then the overlap is over.
        self._overlap_until = self._clock() + self.timings.handover_timeout
        return handover

    async def _drop_handover(self) -> None:
        handover, self._handover = self._handover, None
        self._overlap = None
        if handover is None:
            return
        if handover.task is not None:
            handover.task.cancel()
            await asyncio.gather(handover.task, return_exceptions=True)
        if handover.conn is not None:
            with contextlib.suppress(Exception):
                await handover.conn.ws.close()

    def _duplicate(self, raw: Any, conn: _Connection) -> bool:
        """During an overlap: True for a data frame the other connection already delivered."""
        overlap = self._overlap
        assert overlap is not None
        origin = overlap.get(raw)
        if origin is not None and origin != conn.serial:
            del overlap[raw]  # matched: a later identical frame is a new event again
            self.status.overlap_duplicates += 1
            return True
        overlap[raw] = conn.serial
        if len(overlap) > OVERLAP_MAX_FRAMES:
            del overlap[next(iter(overlap))]
        if self._clock() > self._overlap_until:
            self._overlap = None
        return False

    def _error_ack(self, message: Any) -> None:
        status = self.status
        status.errors += 1
        status.last_error = f"venue error: {_short(message)}"
        now = self._clock()
        if now < self._error_log_next:
            self._errors_unlogged += 1
            log.debug("%s: %s", self.protocol.venue, status.last_error)
            return
        more = (
            f" ({self._errors_unlogged} more since the last report)"
            if self._errors_unlogged
            else ""
        )
        log.warning("%s: %s%s", self.protocol.venue, status.last_error, more)
        self._errors_unlogged = 0
        self._error_log_next = now + ERROR_LOG_EVERY_S

    # -- one connection ----------------------------------------------------------------------

    async def _open(self) -> _Connection | None:
        """Connect and subscribe; None (with ``last_error`` set) when the attempt failed."""
        try:
            ws = await self._connect(
                self.protocol.url,
                open_timeout=self.timings.open_timeout,
                close_timeout=self.timings.close_timeout,
                ping_interval=None,  # our keepalive task pings and detects staleness
                max_size=2**23,
            )
        except InvalidURI as exc:
            raise UsageError(f"{self.protocol.venue}: invalid WebSocket URL {exc.uri!r}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.status.last_error = f"connect failed: {exc or type(exc).__name__}"
            return None
        now = self._clock()
        conn = _Connection(ws=ws, opened_at=now, last_frame=now, serial=next(self._serials))
        try:
            for frame in self.protocol.subscriptions:
                await ws.send(frame)
        except ConnectionClosed as exc:
            self.status.last_error = f"closed while subscribing: {exc}"
            await ws.close()
            return None
        return conn

    async def _keepalive(self, conn: _Connection) -> None:
        """Ping on schedule; abort a stale connection; plan a successor for one reaching its
        maximum lifetime."""
        next_ping = conn.opened_at + self._ping_every
        lifetime_end = conn.opened_at + self._max_lifetime if self._max_lifetime else None
        while True:
            now = self._clock()
            stale_at = conn.last_frame + self.timings.stale_timeout
            if now >= stale_at:
                conn.close_reason = f"stale: no frame for {self.timings.stale_timeout:g}s"
                conn.ws.transport.abort()  # a dead peer would not answer a close handshake
                return
            if lifetime_end is not None and now >= lifetime_end:
                self._plan_handover(conn, "lifetime")
                lifetime_end = None
            if now >= next_ping:
                try:
                    await self._ping(conn)
                except ConnectionClosed:
                    return
                next_ping = now + self._ping_every
            wake = min(stale_at, next_ping, lifetime_end or stale_at)
            await asyncio.sleep(max(wake - self._clock(), 0.001))

    async def _ping(self, conn: _Connection) -> None:
        if self.protocol.app_ping is not None:
            await conn.ws.send(self.protocol.app_ping)
            return
        pong = await conn.ws.ping()
        conn.pending_pongs.add(pong)  # type: ignore[arg-type]

        def on_pong(future: asyncio.Future[float]) -> None:
            conn.pending_pongs.discard(future)
            if not future.cancelled() and future.exception() is None:
                conn.last_frame = self._clock()

        pong.add_done_callback(on_pong)  # type: ignore[attr-defined]


def _short(message: Any) -> str:
    return orjson.dumps(message).decode()[:300]


def _describe_close(ws: ClientConnection) -> str:
    if ws.close_code is None:
        return "connection dropped"
    reason = f" {ws.close_reason}" if ws.close_reason else ""
    return f"closed by server (code {ws.close_code}{reason})"
