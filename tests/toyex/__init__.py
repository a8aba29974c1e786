"""A throw-away venue, "toyex", added through the registry alone: this module (its protocol,
parser and live runner), one registry entry (``ENTRY``) and its fake server (``FakeToyex``).

Wire format: subscribe with ``{"op":"subscribe","args":["liq.BTCUSDT"]}`` (acked with
``{"op":"subscribe","ok":true}``); pushes ``{"topic":"liq.BTCUSDT","data":[{"s","side","px",
"qty","t"}]}`` where ``side`` is the liquidated position; ``GET /symbols`` lists the symbols.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from liqcli.core.endpoints import url
from liqcli.core.events import LONG, SHORT, Liquidation
from liqcli.errors import DataError
from liqcli.exchanges import registry
from liqcli.exchanges.parsing import number
from liqcli.exchanges.ws import FrameKind, WsProtocol
from tests.fakes.venue_rest import JsonReply, _Routes
from tests.fakes.ws_servers import FakeWsServer, _Conn

VENUE = "toyex"


# -- the venue module --------------------------------------------------------------------------


def protocol(symbols: Sequence[str]) -> WsProtocol:
    args = [f"liq.{s}" for s in symbols] or ["liq.*"]
    return WsProtocol(
        venue=VENUE,
        url=url("LIQ_TOYEX_WS_URL"),
        subscriptions=(orjson.dumps({"op": "subscribe", "args": args}).decode(),),
        classify=lambda m: (
            FrameKind.DATA if isinstance(m, dict) and "topic" in m else FrameKind.CONTROL
        ),
    )


def parse_liquidations(message: Any, received_ts: int = 0) -> list[Liquidation]:
    out = []
    for item in message.get("data") or ():
        try:
            symbol, side, ts = str(item["s"]).upper(), item["side"], int(item["t"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"toyex: malformed push ({exc!r})") from None
        if side not in (LONG, SHORT):
            raise DataError(f"toyex: unknown side {side!r}")
        price = number(VENUE, item.get("px"), "px", positive=True)
        qty = number(VENUE, item.get("qty"), "qty", positive=True)
        out.append(
            Liquidation(VENUE, symbol, side, price, qty, price * qty, ts, received_ts=received_ts)
        )
    return out


async def run(feed: Any) -> None:
    await feed.pump(protocol(feed.symbols), parse_liquidations)


async def list_symbols(options: Any) -> set[str]:
    from liqcli.exchanges.http import VenueHttp

    async with VenueHttp(VENUE, url("LIQ_TOYEX_REST_URL"), max_retries=0) as http:
        return set((await http.get_json("/symbols"))["symbols"])


ENTRY = registry.Venue(
    name=VENUE,
    title="Toy exchange",
    offers=frozenset({registry.LIQUIDATIONS}),
    endpoints={
        "LIQ_TOYEX_WS_URL": "wss://toyex.invalid/ws",
        "LIQ_TOYEX_REST_URL": "https://toyex.invalid",
    },
    live=run,
    list_symbols=list_symbols,
    limits=registry.VenueLimits(subscribe_args_per_request=50),
    notes=("Toyex is a test venue.",),
    fake="tests.toyex:FakeToyex",
    default=False,
)


# -- its fake server ---------------------------------------------------------------------------


class _SymbolRoutes(_Routes):
    def __init__(self, symbols: Sequence[str]) -> None:
        super().__init__()
        self.symbols = list(symbols)

    def route(self, path: str, query: dict[str, str]) -> JsonReply | None:
        return (200, {"symbols": self.symbols}) if path == "/symbols" else None


class FakeToyex(FakeWsServer):
    venue = VENUE
    ws_path = "/ws"

    def __init__(self, *args: Any, symbols: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, rest=_SymbolRoutes(symbols), **kwargs)

    async def on_text(self, conn: _Conn, text: str) -> None:
        request = orjson.loads(text)
        if request.get("op") == "subscribe":
            await self.send(conn, {"op": "subscribe", "ok": True})
            self.subscribe(conn, list(request.get("args", [])))
