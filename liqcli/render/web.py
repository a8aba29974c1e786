"""The ``liq watch --web`` dashboard: one HTML page plus a WebSocket that pushes snapshots.

No web framework: the ``websockets`` server answers plain HTTP requests itself
(``process_request``) and upgrades ``/ws``. Routes:

- ``GET /``               the page (static/watch.html)
- ``GET /snapshot.json``  the current payload of the unfiltered view (for scripts and checks)
- ``GET /ws``             WebSocket: the server pushes ``{"type": "snapshot", ...}`` every
                          ``push_interval`` seconds; the page sends
                          ``{"type": "filter", "symbols": "BTCUSDT,ETHUSDT", "min_usd": 10000}``
                          to get its own filtered view (``{"type": "error"}`` on bad input).

It is a local dashboard, guarded as one:

- every request's ``Host`` must name the bound address (127.0.0.1, localhost, [::1] or the
  ``--host`` given) with the bound port, so a page on another site cannot reach it through DNS
  rebinding; a browser's ``Origin``, when sent, must be such an address too, so another site's
  page cannot open the WebSocket and read the feed (HTTP 403 otherwise). Bound to a wildcard
  address (``--host 0.0.0.0``) any IP-literal Host is accepted and a warning is logged;
- at most ``max_clients`` WebSockets (``MAX_CLIENTS``; HTTP 503 beyond) and ``max_views``
  distinct filtered views (``MAX_VIEWS``; the page gets an error) at once, and one filter load at
  a time: a view over a long history is built off the event loop when the source can
  (``open_view_async``);
- nothing served names local paths (the data dir stays out of ``info``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from functools import cache
from http import HTTPStatus
from importlib.resources import files
from typing import Any, Protocol
from urllib.parse import urlsplit

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
MAX_CLIENTS = 32  # WebSocket connections at once
MAX_VIEWS = 8  # distinct filtered views at once (each is its own set of rolling windows)
_MAX_CLIENT_MESSAGE = 4096
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class DashboardSource(Protocol):
    """What the web server needs from the watch pipeline (and, optionally,
    ``async open_view_async(event_filter)``: the same as ``open_view`` without blocking)."""

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
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _refuse(status: HTTPStatus, why: str) -> Response:
    return _response(status, f"{why}\n".encode(), "text/plain; charset=utf-8")


def split_host(value: str, default_port: int) -> tuple[str, int] | None:
    """``"127.0.0.1:8765"`` / ``"[::1]:8765"`` / ``"localhost"`` -> (lower-case name, port);
    None when it is not a host[:port]."""
    value = value.strip().lower()
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.netloc != value or parts.username is not None:
        return None
    return name, default_port if port is None else port


class WebDashboard:
    """Serves the page and pushes each client's view every ``push_interval`` seconds."""

    def __init__(
        self,
        source: DashboardSource,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        push_interval: float = 1.0,
        max_clients: int = MAX_CLIENTS,
        max_views: int = MAX_VIEWS,
    ) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.push_interval = push_interval
        self.max_clients = max_clients
        self.max_views = max_views
        self.refused = 0  # requests refused (foreign Host or Origin, too many clients)
        self._server: Server | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._views: dict[ServerConnection, object | None] = {}
        self._requested: dict[ServerConnection, EventFilter] = {}  # each page's own filter
        self._loading = asyncio.Semaphore(1)  # one view built at a time
        self._names = set(_LOOPBACK_NAMES)
        if host.strip("[]").lower() not in _WILDCARDS:
            self._names.add(host.strip("[]").lower())
        else:
            self._names.add(socket.gethostname().lower())

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
        if self.wildcard:
            log.warning(
                "web dashboard listens on %s: reachable from other machines, with no "
                "authentication and no TLS; use --host 127.0.0.1 unless that is what you want",
                self.host or "every address",
            )
        return self.url

    @property
    def wildcard(self) -> bool:
        return self.host.strip("[]").lower() in _WILDCARDS

    def host_allowed(self, value: str | None, default_port: int | None = None) -> bool:
        """Whether a Host header (or an Origin's host[:port]) names this server."""
        if value is None:
            return False
        found = split_host(value, self.port if default_port is None else default_port)
        if found is None:
            return False
        name, port = found
        if port != self.port:
            return False
        if name in self._names:
            return True
        if self.wildcard:
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(name)
                return True
        return False

    def origin_allowed(self, origin: str) -> bool:
        """A browser page's Origin: one of this server's own addresses, over http(s)."""
        try:
            parts = urlsplit(origin.strip())
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.path or parts.query:
            return False
        return self.host_allowed(parts.netloc, 443 if parts.scheme == "https" else 80)

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
        host = request.headers.get("Host")
        if not self.host_allowed(host):
            self.refused += 1
            log.info("web dashboard: refused Host %r", host)
            return _refuse(HTTPStatus.FORBIDDEN, "forbidden: unexpected Host header")
        origin = request.headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin):
            self.refused += 1
            log.info("web dashboard: refused Origin %r", origin)
            return _refuse(HTTPStatus.FORBIDDEN, "forbidden: cross-origin request")
        if path == "/ws":
            if len(self._views) >= self.max_clients:
                self.refused += 1
                return _refuse(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"too many dashboard clients (at most {self.max_clients})",
                )
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
                    new_view = None if event_filter is None else await self._open(ws, event_filter)
                except UsageError as exc:
                    await ws.send(dumps({"type": "error", "message": str(exc)}).decode())
                    continue
                old_view = self._views.get(ws)
                self._views[ws] = new_view
                if new_view is None:
                    self._requested.pop(ws, None)
                if old_view is not None:
                    self.source.close_view(old_view)
                await ws.send(self._encode(new_view))
        except ConnectionClosed:
            pass
        finally:
            self._requested.pop(ws, None)
            view = self._views.pop(ws, None)
            if view is not None:
                self.source.close_view(view)

    async def _open(self, ws: ServerConnection, event_filter: EventFilter) -> object:
        """A view for the page, within the cap, built off the event loop when possible."""
        held = [v for v in self._views.values() if v is not None]
        own = self._views.get(ws)
        frees_one = own is not None and held.count(own) == 1
        shared = event_filter in {f for c, f in self._requested.items() if c is not ws}
        if len(set(held)) >= self.max_views and not frees_one and not shared:
            raise UsageError(
                f"too many filtered views (at most {self.max_views} at once): "
                "try again later or clear the filter"
            )
        opener = getattr(self.source, "open_view_async", None)
        async with self._loading:
            view = await opener(event_filter) if opener else self.source.open_view(event_filter)
        self._requested[ws] = event_filter
        return view

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
