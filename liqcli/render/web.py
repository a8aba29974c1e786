"""The ``liq watch --web`` dashboard: one HTML page plus a WebSocket that pushes snapshots.

No web framework: the ``websockets`` server answers plain HTTP requests itself
(``process_request``) and upgrades ``/ws``. Routes:

- ``GET /``               the page (static/watch.html)
- ``GET /snapshot.json``  the current payload of the unfiltered view (for scripts and checks)
- ``GET /ws``             WebSocket: the server pushes ``{"type": "snapshot", ...}`` every
                          ``push_interval`` seconds; the page sends
                          ``{"type": "filter", "symbols": "BTCUSDT,ETHUSDT", "min_usd": 10000}``
                          to get its own filtered view (``{"type": "error"}`` on bad input).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import cache
from http import HTTPStatus
from importlib.resources import files
from typing import Any, Protocol

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from liqcli.analytics.windows import EventFilter
from liqcli.errors import LiqError, UsageError
from liqcli.render.output import dumps

log = logging.getLogger("liq.web")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_MAX_CLIENT_MESSAGE = 4096


class DashboardSource(Protocol):
    """What the web server needs from the watch pipeline."""

    def payload(self, view: object | None) -> dict[str, Any]:
        """The JSON document for a view (None = the unfiltered one)."""

    def open_view(self, event_filter: EventFilter) -> object:
        """Start a filtered view; returns its handle."""

    def close_view(self, view: object) -> None: ...


@cache
def page_html() -> bytes:
    return files("liqcli.render").joinpath("static", "watch.html").read_bytes()


def parse_client_filter(raw: str | bytes) -> EventFilter | None:
    """A page's filter message -> EventFilter (None = no filter). UsageError on bad input."""
    if len(raw) > _MAX_CLIENT_MESSAGE:
        raise UsageError("filter message too long")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UsageError("filter message is not JSON") from None
    if not isinstance(message, dict) or message.get("type") != "filter":
        raise UsageError('expected {"type": "filter", "symbols": ..., "min_usd": ...}')
    symbols_field = message.get("symbols") or ""
    names = symbols_field.split(",") if isinstance(symbols_field, str) else symbols_field
    if not isinstance(names, list):
        raise UsageError("symbols must be a comma-separated string or a list")
    symbols = set()
    for name in names:
        sym = str(name).strip().upper()
        if not sym:
            continue
        if not sym.replace("-", "").replace("_", "").isalnum() or len(sym) > 40:
            raise UsageError(f"invalid symbol {name!r}")
        symbols.add(sym)
    min_usd_field = message.get("min_usd")
    try:
        min_usd = float(min_usd_field) if min_usd_field not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise UsageError(f"invalid minimum amount {min_usd_field!r}") from None
    if not min_usd >= 0 or min_usd == float("inf"):
        raise UsageError(f"invalid minimum amount {min_usd_field!r}: must be >= 0")
    if not symbols and not min_usd:
        return None
    return EventFilter(symbols=frozenset(symbols), min_usd=min_usd)


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


class WebDashboard:
    """Serves the page and pushes each client's view every ``push_interval`` seconds."""

    def __init__(
        self,
        source: DashboardSource,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        push_interval: float = 1.0,
    ) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.push_interval = push_interval
        self._server: Server | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._views: dict[ServerConnection, object | None] = {}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> str:
        """Listen (port 0 picks a free port) and start pushing; returns the page URL."""
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._route,
                max_size=_MAX_CLIENT_MESSAGE,
            )
        except OSError as exc:
            raise LiqError(
                f"web dashboard cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._pusher = asyncio.create_task(self._push_loop(), name="liq-web-push")
        return self.url

    async def close(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for view in self._views.values():
            if view is not None:
                self.source.close_view(view)
        self._views.clear()

    async def __aenter__(self) -> WebDashboard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # continue with the WebSocket handshake
        if path in ("/", "/index.html"):
            return _response(HTTPStatus.OK, page_html(), "text/html; charset=utf-8")
        if path == "/snapshot.json":
            return _response(HTTPStatus.OK, dumps(self.source.payload(None)), "application/json")
        return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    async def _handle(self, ws: ServerConnection) -> None:
        self._views[ws] = None
        try:
            await ws.send(self._encode(None))
            async for raw in ws:
                try:
                    event_filter = parse_client_filter(raw)
                    new_view = None if event_filter is None else self.source.open_view(event_filter)
                except UsageError as exc:
                    await ws.send(dumps({"type": "error", "message": str(exc)}).decode())
                    continue
                old_view = self._views.get(ws)
                self._views[ws] = new_view
                if old_view is not None:
                    self.source.close_view(old_view)
                await ws.send(self._encode(new_view))
        except ConnectionClosed:
            pass
        finally:
            view = self._views.pop(ws, None)
            if view is not None:
                self.source.close_view(view)

    def _encode(self, view: object | None) -> str:
        return dumps({"type": "snapshot", **self.source.payload(view)}).decode()

    async def _push_loop(self) -> None:
        while True:
            await asyncio.sleep(self.push_interval)
            try:
                self.push_now()
            except Exception:
                log.exception("web dashboard: push failed")

    def push_now(self) -> None:
        """Send every client its view's current payload (one encoding per distinct view)."""
        by_view: dict[int, tuple[object | None, list[ServerConnection]]] = {}
        for ws, view in list(self._views.items()):
            by_view.setdefault(id(view), (view, []))[1].append(ws)
        for view, clients in by_view.values():
            broadcast(clients, self._encode(view))
