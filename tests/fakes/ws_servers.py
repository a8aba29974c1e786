"""Fake Binance, OKX and Bybit WebSocket servers: real ``websockets`` servers on 127.0.0.1:0.

Each speaks its venue's protocol and plays a script::

    async with FakeBybit(by_subscription={"allLiquidation.BTCUSDT": [push1, DROP, push2]}) as bybit:
        monkeypatch.setenv("LIQ_BYBIT_WS_URL", bybit.ws_url)

- ``script``: steps played on every connection once it is subscribed (Binance: at connect);
  ``by_subscription``: steps per subscription key, played once that key is subscribed (Binance:
  the stream name, frames wrapped as ``{"stream": key, "data": frame}``; OKX: the instType of a
  ``liquidation-orders`` subscription; Bybit: the topic). Cursors are shared across connections:
  after a drop, the next connection continues where the last one stopped, so a test can check
  that every frame arrives exactly once. ``push``/``push_to`` append steps while running.
- ``publish(key, *frames)`` is what a real venue does instead: each frame goes to *every* live
  connection subscribed to ``key`` at that moment (the same bytes to each), nothing to the ones
  that are not (yet) subscribed: a reconnect that leaves no connection subscribed loses frames,
  two overlapping connections both get them. ``notify(frame)`` sends a frame to every live
  connection (e.g. ``okx_notice()``).
- Steps: a dict/list (sent as JSON), a str/bytes (sent raw), or a fault: ``Drop()`` (connection
  lost without a close frame; ``Drop(abort=False)`` closes with 1001), ``Garbage(text)``,
  ``Silence(seconds)`` (nothing sent, nothing read, no pongs: a dead peer; ``None`` = forever),
  ``Pause(seconds)`` (just a delay).
- Protocol: OKX text ``ping`` -> ``pong``, subscribe -> ack or ``60018`` error, ``okx_notice()``
  builds the 64008 notice; Bybit ``{"op":"ping"}`` -> JSON pong, subscribe -> ack, or failure
  past 21,000 characters / 10 args / unknown topic; Binance ``/stream`` or ``/market/stream``
  with ``?streams=a/b`` (anything else: HTTP 404).
- Records: ``connections``, ``received`` (conn, text), ``subscriptions`` (conn, key), ``pings``,
  ``paths``, and the REST routes' ``rest.requests``. ``wait_until(predicate)`` polls briefly.
- The same port serves the venue's instrument REST (tests/fakes/venue_rest.py): ``rest_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes.venue_rest import BybitInstrumentRoutes, OkxInstrumentRoutes, _Routes


@dataclass(frozen=True)
class Drop:
    abort: bool = True  # True: TCP close without a WebSocket close frame (code 1006)


@dataclass(frozen=True)
class Garbage:
    payload: str | bytes = "<html><body>502 Bad Gateway</body></html>"


@dataclass(frozen=True)
class Silence:
    seconds: float | None = None  # None: until the client gives up


@dataclass(frozen=True)
class Pause:
    seconds: float


DROP = Drop()
Step = Any  # dict | list | str | bytes | Drop | Garbage | Silence | Pause


class Script:
    """Steps with one cursor shared by every connection; ``extend`` wakes waiting players."""

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps: list[Step] = list(steps)
        self.pos = 0
        self._more = asyncio.Event()

    def extend(self, steps: Sequence[Step]) -> None:
        self.steps.extend(steps)
        self._more.set()

    async def peek(self) -> Step:
        while self.pos >= len(self.steps):
            self._more.clear()
            await self._more.wait()
        return self.steps[self.pos]

    def advance(self) -> None:
        self.pos += 1

    @property
    def done(self) -> bool:
        return self.pos >= len(self.steps)


@dataclass
class _Conn:
    ws: ServerConnection
    conn_id: int
    audible: asyncio.Event = field(default_factory=asyncio.Event)
    players: list[asyncio.Task[None]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.audible.set()


class FakeWsServer:
    """Shared machinery; venue subclasses implement the protocol hooks."""

    venue = "fake"
    ws_path = "/"

    def __init__(
        self,
        script: Sequence[Step] = (),
        *,
        by_subscription: Mapping[str, Sequence[Step]] | None = None,
        rest: _Routes | None = None,
    ) -> None:
        self.script = Script(script)
        self.by_subscription = {k: Script(v) for k, v in (by_subscription or {}).items()}
        self.rest = rest
        self.connections = 0
        self.received: list[tuple[int, str]] = []
        self.subscriptions: list[tuple[int, str]] = []
        self.pings = 0
        self.paths: list[str] = []
        self.sent = 0  # scripted frames written (faults excluded)
        self._live: dict[ServerConnection, _Conn] = {}
        self._server: Server | None = None
        self._ids = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FakeWsServer:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=None,
            close_timeout=0.2,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for conn in list(self._live.values()):
            conn.ws.transport.abort()
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None, "use 'async with' to start the server"
        return self._server.sockets[0].getsockname()[1]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.ws_path}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting ----------------------------------------------------------------------------
    def push(self, *steps: Step) -> None:
        self.script.extend(steps)

    def push_to(self, key: str, *steps: Step) -> None:
        self.by_subscription.setdefault(key, Script()).extend(steps)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.venue} fake: condition not met within {timeout}s")
            await asyncio.sleep(0.005)

    async def publish(
        self, key: str, *frames: Any, per_connection: Callable[[int, Any], Any] | None = None
    ) -> int:
        """Send each frame to every live connection subscribed to ``key``; returns how many
        connections got the last one. ``per_connection(conn_id, frame)`` varies the frame per
        connection (a venue stamping its push time per connection, say)."""
        reached = 0
        for frame in frames:
            reached = 0
            for conn in list(self._live.values()):
                if key not in conn.keys:
                    continue
                body = per_connection(conn.conn_id, frame) if per_connection else frame
                wrapped = self.wrap(key, body)
                text = (
                    wrapped if isinstance(wrapped, (str, bytes)) else orjson.dumps(wrapped).decode()
                )
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.send(text)
                    reached += 1
            self.sent += 1
        return reached

    async def notify(self, frame: Any) -> None:
        """Send ``frame`` to every live connection (a venue notice)."""
        for conn in list(self._live.values()):
            with contextlib.suppress(ConnectionClosed):
                await self.send(conn, frame)

    async def drop_all(self) -> None:
        """Cut every live connection now (as a network failure would)."""
        for conn in list(self._live.values()):
            conn.ws.transport.abort()

    # -- venue hooks --------------------------------------------------------------------------
    def keys_from_path(self, path: str) -> list[str] | None:
        """Subscriptions carried by the URL (Binance); None when subscribing is by message."""
        return None

    async def on_text(self, conn: _Conn, text: str) -> None:
        """React to a client frame (pings, subscriptions)."""

    def wrap(self, key: str | None, frame: Any) -> Any:
        return frame

    def accept_path(self, path: str) -> bool:
        return urlsplit(path).path == self.ws_path

    # -- machinery ----------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.rest is not None:
            reply = self.rest.handle(request.path)
            if reply is not None:
                return _http_response(*reply)
        if not self.accept_path(request.path):
            return _http_response(404, {"code": 404, "msg": f"no such path {request.path}"})
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(ws, next(self._ids))
        self.connections += 1
        self.paths.append(ws.request.path)
        self._live[ws] = conn
        try:
            keys = self.keys_from_path(ws.request.path)
            if keys is not None:
                self.subscribe(conn, keys)
            async for message in ws:
                text = message if isinstance(message, str) else message.decode(errors="replace")
                self.received.append((conn.conn_id, text))
                await self.on_text(conn, text)
        except ConnectionClosed:
            pass
        finally:
            for task in conn.players:
                task.cancel()
            await asyncio.gather(*conn.players, return_exceptions=True)
            self._live.pop(ws, None)

    def subscribe(self, conn: _Conn, keys: Sequence[str]) -> None:
        """Record subscriptions and start their players (the general script on the first)."""
        if not conn.keys and not conn.players:
            conn.players.append(asyncio.create_task(self._play(conn, self.script, None)))
        for key in keys:
            self.subscriptions.append((conn.conn_id, key))
            if key in conn.keys:
                continue
            conn.keys.add(key)
            script = self.by_subscription.setdefault(key, Script())
            conn.players.append(asyncio.create_task(self._play(conn, script, key)))

    async def send(self, conn: _Conn, frame: Any) -> None:
        """Send a protocol reply (not a scripted step)."""
        await conn.ws.send(
            frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame).decode()
        )

    async def _play(self, conn: _Conn, script: Script, key: str | None) -> None:
        ws = conn.ws
        try:
            while True:
                step = await script.peek()
                await conn.audible.wait()
                if isinstance(step, Drop):
                    script.advance()
                    await self._drop(ws, step)
                    return
                if isinstance(step, Silence):
                    script.advance()
                    await self._silence(conn, step.seconds)
                    continue
                if isinstance(step, Pause):
                    script.advance()
                    await asyncio.sleep(step.seconds)
                    continue
                if isinstance(step, Garbage):
                    await ws.send(step.payload)
                else:
                    frame = self.wrap(key, step)
                    await ws.send(
                        frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame).decode()
                    )
                    self.sent += 1
                # Advance only once written: a step cut off by a closed socket is replayed.
                script.advance()
        except ConnectionClosed:
            return

    @staticmethod
    async def _drop(ws: ServerConnection, step: Drop) -> None:
        if not step.abort:
            await ws.close(1001, "going away")
            return
        # Let written frames leave first: abort() discards the transport's buffer.
        for _ in range(200):
            if ws.transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        ws.transport.abort()

    @staticmethod
    async def _silence(conn: _Conn, seconds: float | None) -> None:
        conn.audible.clear()
        conn.ws.transport.pause_reading()  # no reads: pings go unanswered, like a dead peer
        try:
            if seconds is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(seconds)
        finally:
            with contextlib.suppress(Exception):
                conn.ws.transport.resume_reading()
            conn.audible.set()


def _http_response(status: int, body: Any) -> Response:
    payload = body.encode() if isinstance(body, str) else orjson.dumps(body)
    ctype = "text/html" if isinstance(body, str) else "application/json"
    headers = Headers(
        [("Content-Type", ctype), ("Content-Length", str(len(payload))), ("Connection", "close")]
    )
    return Response(status, "OK" if status == 200 else "Error", headers, payload)


class FakeBinance(FakeWsServer):
    """Binance USDⓈ-M combined streams: ``/market/stream?streams=a/b`` (or ``/stream?...``)."""

    venue = "binance"
    ws_path = "/market"  # LIQ_BINANCE_WS_URL; the client appends /stream?streams=...

    def accept_path(self, path: str) -> bool:
        parts = urlsplit(path)
        streams = parse_qs(parts.query).get("streams", [""])[-1]
        count = len([s for s in streams.split("/") if s])
        return parts.path in ("/stream", "/market/stream") and 0 < count <= 200  # USDⓈ-M

    def keys_from_path(self, path: str) -> list[str] | None:
        streams = parse_qs(urlsplit(path).query).get("streams", [""])[-1]
        return [s for s in streams.split("/") if s]

    def wrap(self, key: str | None, frame: Any) -> Any:
        if key is None or isinstance(frame, (str, bytes)):
            return frame
        return {"stream": key, "data": frame}

    async def on_text(self, conn: _Conn, text: str) -> None:
        # Live SUBSCRIBE requests: {"method":"SUBSCRIBE","params":[..],"id":1} -> {"result":null,"id":1}
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self.send(conn, {"error": {"code": 2, "msg": "Invalid request"}})
            return
        if request.get("method") == "SUBSCRIBE":
            self.subscribe(conn, list(request.get("params", [])))
        await self.send(conn, {"result": None, "id": request.get("id")})


class FakeOkx(FakeWsServer):
    """OKX public WebSocket (``/ws/v5/public``) and ``GET /api/v5/public/instruments``."""

    venue = "okx"
    ws_path = "/ws/v5/public"

    def __init__(
        self,
        script: Sequence[Step] = (),
        *,
        by_subscription: Mapping[str, Sequence[Step]] | None = None,
        instruments: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(
            script, by_subscription=by_subscription, rest=OkxInstrumentRoutes(instruments)
        )

    async def on_text(self, conn: _Conn, text: str) -> None:
        if text == "ping":
            self.pings += 1
            await self.send(conn, "pong")
            return
        conn_id = f"fake{conn.conn_id}"
        try:
            request = orjson.loads(text)
            op, args = request["op"], request["args"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await self.send(
                conn,
                {
                    "event": "error",
                    "code": "60012",
                    "msg": f"Invalid request: {text[:100]}",
                    "connId": conn_id,
                },
            )
            return
        if op != "subscribe":
            await self.send(
                conn,
                {
                    "event": "error",
                    "code": "60012",
                    "msg": f"Invalid request: {text[:100]}",
                    "connId": conn_id,
                },
            )
            return
        for arg in args:
            if arg.get("channel") != "liquidation-orders" or arg.get("instType") not in (
                "SWAP",
                "FUTURES",
                "MARGIN",
                "OPTION",
            ):
                await self.send(
                    conn,
                    {
                        "event": "error",
                        "code": "60018",
                        "msg": f"Wrong URL or channel:{arg}",
                        "connId": conn_id,
                    },
                )
                continue
            await self.send(conn, {"event": "subscribe", "arg": arg, "connId": conn_id})
            self.subscribe(conn, [arg["instType"]])


def okx_notice(code: str = "64008") -> dict[str, Any]:
    return {
        "event": "notice",
        "code": code,
        "msg": "The connection will soon be closed for a service upgrade. Please reconnect.",
        "connId": "a4d3ae55",
    }


class FakeBybit(FakeWsServer):
    """Bybit v5 public linear WebSocket (``/v5/public/linear``) and instruments-info REST."""

    venue = "bybit"
    ws_path = "/v5/public/linear"
    max_args_chars = 21_000
    max_args = 10

    def __init__(
        self,
        script: Sequence[Step] = (),
        *,
        by_subscription: Mapping[str, Sequence[Step]] | None = None,
        instruments: Sequence[Mapping[str, Any]] = (),
        page_size: int = 2,
        known_symbols: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            script,
            by_subscription=by_subscription,
            rest=BybitInstrumentRoutes(instruments, page_size=page_size),
        )
        self.known_symbols = set(known_symbols) if known_symbols is not None else None

    async def on_text(self, conn: _Conn, text: str) -> None:
        conn_id = f"fake-{conn.conn_id}"
        try:
            request = orjson.loads(text)
            op = request["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await self.send(
                conn,
                {"success": False, "ret_msg": "error:request not supported", "conn_id": conn_id},
            )
            return
        req_id = request.get("req_id", "")
        if op == "ping":
            self.pings += 1
            await self.send(
                conn,
                {
                    "success": True,
                    "ret_msg": "pong",
                    "conn_id": conn_id,
                    "req_id": req_id,
                    "op": "ping",
                },
            )
            return
        if op != "subscribe":
            await self.send(
                conn,
                {
                    "success": False,
                    "ret_msg": f"error:op {op} not supported",
                    "conn_id": conn_id,
                    "req_id": req_id,
                    "op": op,
                },
            )
            return
        args = [str(a) for a in request.get("args", [])]
        problem = None
        if len(orjson.dumps(args)) > self.max_args_chars:
            problem = f"args size >{self.max_args_chars}"
        elif len(args) > self.max_args:
            problem = f"args count >{self.max_args}"
        else:
            for topic in args:
                symbol = topic.removeprefix("allLiquidation.")
                if not topic.startswith("allLiquidation.") or (
                    self.known_symbols is not None and symbol not in self.known_symbols
                ):
                    problem = f"error:handler not found,topic:{topic}"
                    break
        if problem:
            await self.send(
                conn,
                {
                    "success": False,
                    "ret_msg": problem,
                    "conn_id": conn_id,
                    "req_id": req_id,
                    "op": "subscribe",
                },
            )
            return
        await self.send(
            conn,
            {
                "success": True,
                "ret_msg": "",
                "conn_id": conn_id,
                "req_id": req_id,
                "op": "subscribe",
            },
        )
        self.subscribe(conn, args)
