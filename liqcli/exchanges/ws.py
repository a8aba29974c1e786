"""One reconnecting WebSocket client shared by every venue.

A venue describes its protocol once (:class:`WsProtocol`: URL, subscription frames, ping style,
which frames are control frames); :class:`ReconnectingWebSocket` turns it into an endless async
iterator of decoded JSON messages that survives the network:

- exponential backoff with jitter between failed attempts, reset once a connection delivers data;
- subscriptions re-sent after every reconnect;
- application pings (OKX text ``ping``, Bybit ``{"op":"ping"}``) or protocol pings (Binance), sent
  at least three times per stale timeout so a quiet but healthy connection never looks stale;
- stale detection: no frame (data, control or pong) for ``stale_timeout`` seconds -> reconnect;
- proactive reconnect after ``max_lifetime`` (Binance drops connections at 24 h) and on venue
  notices (OKX 64008);
- non-JSON frames other than the venue's pong are counted as garbage and skipped; control frames
  (pongs, subscribe acks) are never yielded, error acks are counted and logged;
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
import logging
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

try:  # a C frame parser: a tenth of websockets' CPU per frame (liqcli/exchanges/ws_picows.py)
    from liqcli.exchanges.ws_picows import connect as default_connect
except ImportError:
    default_connect = connect

log = logging.getLogger("liq.ws")

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
    malformed: int = 0  # JSON data frames the venue parser rejected (set by services)
    messages: int = 0  # data frames delivered to the consumer
    events: int = 0  # normalised events produced from them (set by services)
    last_message_ms: int | None = None  # wall clock of the last frame of any kind
    connected_since_ms: int | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def backoff_delay(attempt: int, timings: WsTimings, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped, jittered downwards
    so a fleet of clients does not reconnect in lockstep."""
    base = min(timings.backoff_max, timings.backoff_initial * timings.backoff_factor**attempt)
    return base * (1.0 - timings.jitter * rng.random())


@dataclass
class _Connection:
    """Per-connection bookkeeping shared by the reader and the keepalive task."""

    ws: ClientConnection
    opened_at: float
    last_frame: float
    close_reason: str | None = None
    got_data: bool = False
    pending_pongs: set[asyncio.Future[float]] = field(default_factory=set)


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
        self._iterator: AsyncIterator[Any] | None = None
        self._conn: _Connection | None = None
        self._stopping = False
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
            # Another task is inside the iterator: cut the socket; its loop sees _stopping.
            if self._conn is not None:
                self._conn.ws.transport.abort()
        else:
            await iterator.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[Any]:
        attempt = 0
        lost_at: float | None = None  # clock() when the last established connection ended
        status = self.status
        text_pong = self.protocol.text_pong
        classify = self.protocol.classify
        try:
            while not self._stopping:
                status.state = "connecting"
                conn = self._conn = await self._open()
                if conn is None:
                    status.state = "down"
                    delay = backoff_delay(attempt, self.timings, self._rng)
                    # The first failure in a row is worth a warning (jsonl users see nothing
                    # else); the retries after it are routine.
                    log.log(
                        logging.WARNING if attempt == 0 else logging.INFO,
                        "%s: %s; retrying in %.1fs",
                        self.protocol.venue,
                        status.last_error,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                if lost_at is not None:
                    status.reconnects += 1
                    status.gap_ms += int((self._clock() - lost_at) * 1000)
                status.state = "connected"
                status.connected_since_ms = self._wall_clock()
                status.last_error = None
                keepalive = asyncio.create_task(self._keepalive(conn))
                try:
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
                            conn.got_data = True
                            status.messages += 1
                            yield message
                        elif kind is FrameKind.ERROR:
                            status.errors += 1
                            status.last_error = f"venue error: {_short(message)}"
                            log.warning("%s: %s", self.protocol.venue, status.last_error)
                        elif kind is FrameKind.RECONNECT:
                            conn.close_reason = "notice"
                            break
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
                lost_at = self._clock()
                status.gaps += 1
                status.connected_since_ms = None
                reason = conn.close_reason or _describe_close(conn.ws)
                if conn.got_data:
                    attempt = 0
                # Planned reconnects are immediate; anything else backs off so a failing venue
                # is not hammered (a notice on a connection that never delivered data too).
                planned = conn.close_reason == "lifetime" or (
                    conn.close_reason == "notice" and conn.got_data
                )
                log.log(
                    logging.INFO if planned else logging.WARNING,
                    "%s: connection ended (%s); reconnecting",
                    self.protocol.venue,
                    reason,
                )
                if planned:
                    continue
                status.last_error = reason
                status.state = "down"
                await asyncio.sleep(backoff_delay(attempt, self.timings, self._rng))
                attempt += 1
        finally:
            status.state = "closed"
            status.connected_since_ms = None

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
        conn = _Connection(ws=ws, opened_at=now, last_frame=now)
        try:
            for frame in self.protocol.subscriptions:
                await ws.send(frame)
        except ConnectionClosed as exc:
            self.status.last_error = f"closed while subscribing: {exc}"
            await ws.close()
            return None
        return conn

    async def _keepalive(self, conn: _Connection) -> None:
        """Ping on schedule; abort a stale connection; close one past its maximum lifetime."""
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
                conn.close_reason = "lifetime"
                await conn.ws.close()
                return
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
