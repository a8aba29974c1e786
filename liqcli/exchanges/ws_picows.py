"""The WebSocket transport of :class:`~liqcli.exchanges.ws.ReconnectingWebSocket` on picows, a
client whose frame parser is C: about a tenth of the CPU per frame of websockets' pure-Python
parser (benchmarks/watch.py), the largest single cost of a busy live stream.

:func:`connect` returns a :class:`PicowsConnection`, which offers exactly what the reconnecting
client uses from a websockets ``ClientConnection``, with the same exceptions (websockets' own),
so either transport can sit behind it:

- ``async for message in conn``: text frames as ``str``, binary as ``bytes`` (fragmented messages
  reassembled, at most ``max_size`` bytes); ends after a normal close (1000/1001), raises
  ``ConnectionClosedError`` after any other end (``ConnectionClosed`` is the base of both);
- ``await send(str | bytes)``, ``await ping()`` (a future resolved by the matching pong, as
  websockets' is), ``await close()`` (close handshake, at most ``close_timeout``), ``transport``
  (``abort()`` cuts the socket), ``close_code`` / ``close_reason`` once closed (1006 and ``""``
  when no close frame came).

Frames are parsed as they are read and queued; reading pauses when ``max_queue`` messages or
16 MiB wait unread (the consumer lags), so a slow consumer backs up into the socket as with websockets. Server
pings are answered by picows. A configured proxy (``HTTPS_PROXY``, ``ALL_PROXY``, ... as websockets
reads them) is left to websockets' own client, which this one then returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from typing import Any

import picows
from picows import WSCloseCode, WSMsgType
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidURI,
)
from websockets.frames import Close
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

_TEXT, _BINARY, _CONTINUATION = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PONG, _CLOSE = WSMsgType.PONG, WSMsgType.CLOSE
_OK_CODES = (1000, 1001)  # a normal end: iteration stops instead of raising
_NO_STATUS = 1005  # a close frame without a code
_ABNORMAL = 1006  # no close frame at all
_MAX_QUEUED = 16 * 2**20  # unread bytes before reading pauses, whatever max_queue allows


async def connect(
    url: str,
    *,
    open_timeout: float | None = 10.0,
    close_timeout: float | None = 10.0,
    ping_interval: float | None = None,
    max_size: int | None = 2**20,
    max_queue: int = 1024,
) -> Any:
    """Open a connection; raises what websockets' ``connect`` raises (InvalidURI, OSError,
    TimeoutError, InvalidHandshake). ``ping_interval`` must be None: the caller pings."""
    if ping_interval is not None:
        raise ValueError("the picows transport leaves pings to its caller: ping_interval=None")
    proxy = get_proxy(parse_uri(url))  # InvalidURI as websockets raises it
    if proxy is not None:
        return await websockets_connect(
            url,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            ping_interval=None,
            max_size=max_size,
            max_queue=max_queue,
        )
    limit = max_size if max_size is not None else 2**62
    conn = PicowsConnection(close_timeout, limit, max_queue)
    try:
        async with asyncio.timeout(open_timeout):
            await picows.ws_connect(
                lambda: conn,
                url,
                websocket_handshake_timeout=open_timeout,
                enable_auto_pong=True,
                max_frame_size=limit,
            )
    except picows.WSInvalidURL as exc:
        raise InvalidURI(url, str(exc)) from None
    except picows.WSHandshakeError as exc:
        response = exc.response
        if response is not None and int(response.status) != 101:
            raise InvalidHandshake(
                f"server rejected WebSocket connection: HTTP {int(response.status)}"
            ) from None
        raise InvalidHandshake(f"invalid handshake: {exc}") from None
    except picows.WSError as exc:
        raise InvalidHandshake(str(exc)) from None
    return conn


class PicowsConnection(picows.WSListener):  # type: ignore[misc]
    """One client connection (and its picows listener); see the module docstring."""

    def __init__(self, close_timeout: float | None, max_size: int, max_queue: int) -> None:
        super().__init__()
        self._close_timeout = close_timeout
        self._max_size = max_size
        self._high = max(max_queue, 1)
        self._low = max(self._high // 4, 1)
        self._queued = 0  # bytes (characters) waiting unread, bounded by _MAX_QUEUED too
        self._ws: picows.WSTransport | None = None
        self._messages: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the reader waits for a message
        self._paused = False
        self._fragments: list[bytes] = []
        self._fragments_text = False
        self._fragments_size = 0
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._rcvd: Close | None = None
        self._sent: Close | None = None
        self._rcvd_then_sent: bool | None = None
        self._closed = False  # the socket is gone
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- what ReconnectingWebSocket uses -------------------------------------------------------

    @property
    def transport(self) -> asyncio.Transport:
        assert self._ws is not None
        return self._ws.underlying_transport

    @property
    def close_code(self) -> int | None:
        if not self._closed:
            return None
        return self._rcvd.code if self._rcvd is not None else _ABNORMAL

    @property
    def close_reason(self) -> str | None:
        if not self._closed:
            return None
        return self._rcvd.reason if self._rcvd is not None else ""

    def __aiter__(self) -> PicowsConnection:
        return self

    async def __anext__(self) -> str | bytes:
        messages = self._messages
        while not messages:
            if self._closed:
                if self._rcvd is not None and self._rcvd.code in _OK_CODES:
                    raise StopAsyncIteration
                raise self._connection_closed()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = messages.popleft()
        self._queued -= len(message)
        if self._paused and len(messages) <= self._low and self._queued <= _MAX_QUEUED // 4:
            self._paused = False
            if not self._closed:
                self.transport.resume_reading()
        return message

    async def recv(self) -> str | bytes:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise self._connection_closed() from None

    async def send(self, message: str | bytes) -> None:
        ws = self._check_open()
        ws.send(_TEXT if isinstance(message, str) else _BINARY, message)

    async def ping(self, data: bytes | None = None) -> asyncio.Future[float]:
        """Send a ping; the future resolves (to the round trip, seconds) on its pong, or on a
        later ping's pong, as websockets' does."""
        ws = self._check_open()
        payload = data if data is not None else os.urandom(4)
        while payload in self._pings:
            payload = os.urandom(4)
        loop = asyncio.get_running_loop()
        pong = loop.create_future()
        self._pings[payload] = (pong, loop.time())
        ws.send_ping(payload)
        return pong

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close handshake (at most ``close_timeout``), then the socket; returns once it is gone."""
        ws = self._ws
        if ws is None:
            return
        if not self._closed and not ws.is_close_frame_sent:
            self._send_close(code, reason)
        if not self._closed:
            try:
                async with asyncio.timeout(self._close_timeout):
                    await asyncio.shield(self._disconnected)
            except TimeoutError:
                ws.disconnect(graceful=False)
        with contextlib.suppress(Exception):
            await ws.wait_disconnected()

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> picows.WSTransport:
        ws = self._ws
        if ws is None or self._closed or ws.is_close_frame_sent:
            raise self._connection_closed()
        return ws

    def _connection_closed(self) -> ConnectionClosed:
        cls = (
            ConnectionClosedOK
            if self._rcvd is not None
            and self._sent is not None
            and self._rcvd.code in _OK_CODES
            and self._sent.code in _OK_CODES
            else ConnectionClosedError
        )
        rcvd_then_sent = self._rcvd_then_sent
        if self._rcvd is None or self._sent is None:
            rcvd_then_sent = None
        return cls(self._rcvd, self._sent, rcvd_then_sent)

    def _send_close(self, code: int, reason: str = "") -> None:
        assert self._ws is not None
        try:
            close_code = WSCloseCode(code)
        except ValueError:
            close_code = WSCloseCode.OK  # picows sends only the codes it names
        self._sent = Close(int(close_code.value), reason)
        if self._rcvd_then_sent is None:
            self._rcvd_then_sent = self._rcvd is not None
        self._ws.send_close(close_code, reason.encode())

    def _deliver(self, message: str | bytes) -> None:
        messages = self._messages
        messages.append(message)
        self._queued += len(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._paused and (len(messages) >= self._high or self._queued >= _MAX_QUEUED):
            self._paused = True
            self.transport.pause_reading()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol violation by the server: close with ``code`` and drop the socket."""
        if self._ws is not None and not self._ws.is_close_frame_sent:
            self._send_close(code, reason)
        assert self._ws is not None
        self._ws.disconnect()

    # -- picows' callbacks ---------------------------------------------------------------------

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._ws = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            if self._fragments_size:
                self._fail(1002, "expected a continuation frame")
                return
            if frame.fin:
                if kind is _TEXT:
                    try:
                        self._deliver(frame.get_payload_as_utf8_text())
                    except UnicodeDecodeError:
                        self._fail(1007, "invalid UTF-8")
                else:
                    self._deliver(frame.get_payload_as_bytes())
                return
            self._fragments_text = kind is _TEXT
            self._add_fragment(frame)
        elif kind is _CONTINUATION:
            if not self._fragments_size:
                self._fail(1002, "unexpected continuation frame")
                return
            self._add_fragment(frame)
        elif kind is _PONG:
            self._on_pong(frame.get_payload_as_bytes())
        elif kind is _CLOSE:
            self._on_close(frame)

    def _add_fragment(self, frame: picows.WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        self._fragments.append(payload)
        self._fragments_size += len(payload) or 1  # nonzero while a message is open
        if self._fragments_size > self._max_size:
            self._fail(1009, "message too big")
            return
        if not frame.fin:
            return
        data = b"".join(self._fragments)
        self._fragments, self._fragments_size = [], 0
        if not self._fragments_text:
            self._deliver(data)
            return
        try:
            self._deliver(data.decode())
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8")

    def _on_pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # unsolicited: a keepalive from the server
        now = asyncio.get_running_loop().time()
        for key in list(self._pings):  # this ping and every earlier one
            pong, sent_at = self._pings.pop(key)
            if not pong.done():
                pong.set_result(now - sent_at)
            if key == payload:
                break

    def _on_close(self, frame: picows.WSFrame) -> None:
        code = int(getattr(frame.get_close_code(), "value", frame.get_close_code()))
        if frame.payload_size == 0:
            code = _NO_STATUS
        self._rcvd = Close(code, frame.get_close_reason() if frame.payload_size > 2 else "")
        assert self._ws is not None
        if not self._ws.is_close_frame_sent:
            self._send_close(code if code in _OK_CODES else 1000)
        # The server closes TCP after its close frame has been answered; picows does not wait
        # for that, so neither do we.
        self._ws.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._closed = True
        self._fragments, self._fragments_size = [], 0
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        closed = self._connection_closed()
        for pong, _ in self._pings.values():
            if not pong.done():
                pong.set_exception(closed)
                pong.exception()  # retrieved: nobody need await an aborted ping
        self._pings.clear()
        if not self._disconnected.done():
            self._disconnected.set_result(None)
