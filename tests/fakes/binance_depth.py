"""A fake Binance USDⓈ-M market-data venue: routed combined streams plus ``GET /fapi/v1/depth``.

One real ``websockets`` server on 127.0.0.1:0 (tests/fakes/ws_servers.py machinery: scripts per
stream, ``Drop``/``Garbage``/``Silence`` faults, shared cursors across reconnects) that follows
TRADING-VENUES.md §6 and §8:

- ``/public/stream?streams=..`` carries ``depth`` and ``bookTicker`` streams, ``/market/stream?..``
  the rest (``aggTrade``, ``markPrice``, ``forceOrder``); a stream on the wrong route is accepted
  but never delivers (recorded in ``misrouted``), as on the real venue; more than 200 streams on
  one connection -> HTTP 400;
- the venue keeps a true book per symbol. ``update(sym, bids, asks)`` applies changes (each one
  update id), ``flush(sym)`` publishes them as one ``depthUpdate`` with ``U`` (first pending id),
  ``u`` (last id) and ``pu`` (the previous diff's ``u``) - like the 100 ms stream, a diff folds
  several updates, so a snapshot taken between two flushes lands inside the next diff's range;
- ``flush(sym, lose=True)`` is the injected sequence gap: the diff is never sent, the next one's
  ``pu`` points at it;
- ``GET /fapi/v1/depth?symbol=&limit=`` answers the true book (pending updates included) with
  ``lastUpdateId``, ``E``, ``T``; limits 5..1000 as on the venue (else -1130), unknown symbol
  -1121; ``stale_snapshots(n)``: the next n snapshots come from before the last flush (a
  snapshot older than the client's buffer); ``canned_snapshot(sym, body)`` serves a recorded
  body instead (replaying a capture); ``rest.fail_next(n, 503)`` for upstream errors;
- ``book_ticker(sym)``, ``mark_price(..)``, ``agg_trade(..)``, ``force_order(..)`` push the other
  events in their real shapes; ``book(sym)`` is the true book for assertions;
- the venue's clock (each event's ``E``) starts at ``t0`` and steps 100 ms per published event;
  ``clock_to(ts)`` moves it (a scripted tape's event times: a funding time, a 2-hour jump);
  ``await delivered()`` waits until every pushed frame has been written to its socket (frames of
  different streams on one connection then arrive in the order pushed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.venue_rest import JsonReply, _Routes
from tests.fakes.ws_servers import FakeBinance

T0 = 1_767_225_600_000  # 2026-01-01, the fake venue's clock start
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
MAX_STREAMS = 200


def _fmt(x: float) -> str:
    return f"{x:.8f}".rstrip("0").rstrip(".") if x else "0"


@dataclass
class ServerBook:
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    update_id: int = 1000
    last_u: int = 999  # ``u`` of the last published (or lost) diff
    pending_first: int | None = None
    pending_bids: dict[float, float] = field(default_factory=dict)
    pending_asks: dict[float, float] = field(default_factory=dict)
    # (update id, bids, asks) after each published diff: what an out-of-date snapshot shows
    history: list[tuple[int, dict[float, float], dict[float, float]]] = field(default_factory=list)

    def levels(self, limit: int) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), reverse=True)[:limit]
        asks = sorted(self.asks.items())[:limit]
        return [[_fmt(p), _fmt(q)] for p, q in bids], [[_fmt(p), _fmt(q)] for p, q in asks]


def route_of(stream: str) -> str:
    kind = stream.lstrip("!").split("@")[1 if not stream.startswith("!") else 0]
    return "public" if kind.startswith("depth") or kind == "bookTicker" else "market"


class FakeBinanceDepth(FakeBinance):
    """See the module docstring. ``ws_url`` is the host root (``LIQ_BINANCE_WS_URL``), and
    ``rest_url`` the same port (``LIQ_BINANCE_REST_URL``)."""

    ws_path = ""

    def __init__(self, *, depth_speed: str = "100ms", t0: int = T0) -> None:
        super().__init__(rest=_DepthRoutes(self))
        self.books: dict[str, ServerBook] = {}
        self.misrouted: list[str] = []
        self.depth_suffix = "" if depth_speed == "250ms" else f"@{depth_speed}"
        self.snapshots_served = 0
        self._stale_snapshots = 0
        self._canned: dict[str, dict[str, Any]] = {}
        self._clock = itertools.count(t0, 100)  # venue ms: +100 per published event
        self.now = t0

    # ------------------------------------------------------------------ the venue's book

    def set_book(self, symbol: str, bids, asks, update_id: int = 1000) -> None:
        book = ServerBook(dict(bids), dict(asks), update_id, update_id - 1)
        book.history.append((update_id, dict(book.bids), dict(book.asks)))
        self.books[symbol] = book

    def book(self, symbol: str) -> tuple[dict[float, float], dict[float, float]]:
        b = self.books[symbol]
        return dict(b.bids), dict(b.asks)

    def update(self, symbol: str, bids=(), asks=()) -> None:
        """Changes to the true book, one update id each (published by the next ``flush``)."""
        book = self.books[symbol]
        for side, pending, levels in (
            (book.bids, book.pending_bids, bids),
            (book.asks, book.pending_asks, asks),
        ):
            for price, qty in levels:
                book.update_id += 1
                if book.pending_first is None:
                    book.pending_first = book.update_id
                pending[price] = qty
                if qty > 0:
                    side[price] = qty
                else:
                    side.pop(price, None)

    def flush(self, symbol: str, *, lose: bool = False) -> dict[str, Any] | None:
        """Publish the pending updates as one depthUpdate (``lose``: drop it on the floor)."""
        book = self.books[symbol]
        if book.pending_first is None:
            return None
        self.now = next(self._clock)
        event = {
            "e": "depthUpdate",
            "E": self.now,
            "T": self.now - 3,
            "s": symbol,
            "U": book.pending_first,
            "u": book.update_id,
            "pu": book.last_u,
            "b": [[_fmt(p), _fmt(q)] for p, q in book.pending_bids.items()],
            "a": [[_fmt(p), _fmt(q)] for p, q in book.pending_asks.items()],
        }
        book.last_u = book.update_id
        book.pending_first = None
        book.pending_bids, book.pending_asks = {}, {}
        book.history.append((book.update_id, dict(book.bids), dict(book.asks)))
        if not lose:
            self.push_to(f"{symbol.lower()}@depth{self.depth_suffix}", event)
        return event

    def clock_to(self, ts: int) -> None:
        """The next published event carries ``E = ts`` (then +100 ms each, as before)."""
        self._clock = itertools.count(ts, 100)

    async def delivered(self, timeout: float = 5.0) -> None:
        """Until every frame pushed so far is written (scripts are played by one task each)."""
        await self.wait_until(
            lambda: all(s.done for s in self.by_subscription.values()), timeout=timeout
        )

    def stale_snapshots(self, n: int = 1) -> None:
        self._stale_snapshots += n

    def canned_snapshot(self, symbol: str, payload: dict[str, Any]) -> None:
        """Answer ``/fapi/v1/depth`` for ``symbol`` with a recorded body (a capture replay)."""
        self._canned[symbol] = payload
        self.books.setdefault(symbol, ServerBook())

    # ------------------------------------------------------------------ other events

    def book_ticker(self, symbol: str) -> dict[str, Any]:
        book = self.books[symbol]
        bid = max(book.bids)
        ask = min(book.asks)
        self.now = next(self._clock)
        event = {
            "e": "bookTicker",
            "u": book.update_id,
            "s": symbol,
            "b": _fmt(bid),
            "B": _fmt(book.bids[bid]),
            "a": _fmt(ask),
            "A": _fmt(book.asks[ask]),
            "T": self.now - 5,
            "E": self.now,
        }
        self.push_to(f"{symbol.lower()}@bookTicker", event)
        return event

    def mark_price(
        self, symbol: str, mark: float, index: float, rate: float, next_funding: int
    ) -> dict[str, Any]:
        self.now = next(self._clock)
        event = {
            "e": "markPriceUpdate",
            "E": self.now,
            "s": symbol,
            "p": f"{mark:.8f}",
            "i": f"{index:.8f}",
            "P": f"{index:.8f}",
            "r": f"{rate:.8f}",
            "T": next_funding,
        }
        self.push_to(f"{symbol.lower()}@markPrice@1s", event)
        return event

    def agg_trade(self, symbol: str, trade_id: int, price: float, qty: float, maker: bool) -> None:
        self.now = next(self._clock)
        event = {
            "e": "aggTrade",
            "E": self.now,
            "s": symbol,
            "a": trade_id,
            "p": _fmt(price),
            "q": _fmt(qty),
            "f": trade_id * 10,
            "l": trade_id * 10 + 2,
            "T": self.now - 1,
            "m": maker,
        }
        self.push_to(f"{symbol.lower()}@aggTrade", event)

    def force_order(self, symbol: str, side: str, price: float, qty: float) -> None:
        self.now = next(self._clock)
        order = {
            "s": symbol,
            "S": side,
            "o": "LIMIT",
            "f": "IOC",
            "q": _fmt(qty),
            "p": _fmt(price),
            "ap": _fmt(price),
            "X": "FILLED",
            "l": _fmt(qty),
            "z": _fmt(qty),
            "T": self.now - 2,
        }
        self.push_to(f"{symbol.lower()}@forceOrder", {"e": "forceOrder", "E": self.now, "o": order})

    # ------------------------------------------------------------------ protocol hooks

    def _streams(self, path: str) -> list[str]:
        streams = parse_qs(urlsplit(path).query).get("streams", [""])[-1]
        return [s for s in streams.split("/") if s]

    def accept_path(self, path: str) -> bool:
        route = urlsplit(path).path
        return route in ("/public/stream", "/market/stream") and (
            0 < len(self._streams(path)) <= MAX_STREAMS
        )

    def keys_from_path(self, path: str) -> list[str] | None:
        route = urlsplit(path).path.split("/")[1]
        keys = []
        for stream in self._streams(path):
            if route_of(stream) == route:
                keys.append(stream)
            else:
                self.misrouted.append(stream)  # subscribed, silent: the venue never routes it
        return keys

    def snapshot(self, symbol: str, limit: int) -> dict[str, Any]:
        if symbol in self._canned:
            self.snapshots_served += 1
            return self._canned[symbol]
        book = self.books[symbol]
        bids, asks = book.bids, book.asks
        update_id = book.update_id
        if self._stale_snapshots and len(book.history) >= 2 and book.pending_first is None:
            self._stale_snapshots -= 1
            update_id, bids, asks = book.history[-2]  # as of before the last published diff
        view = ServerBook(bids, asks)
        out_bids, out_asks = view.levels(limit)
        self.snapshots_served += 1
        return {
            "lastUpdateId": update_id,
            "E": self.now,
            "T": self.now - 2,
            "bids": out_bids,
            "asks": out_asks,
        }


class _DepthRoutes(_Routes):
    def __init__(self, venue: FakeBinanceDepth) -> None:
        super().__init__()
        self.venue = venue

    def route(self, path: str, query: dict[str, str]) -> JsonReply | None:
        if path != "/fapi/v1/depth":
            return None
        symbol = query.get("symbol", "")
        if symbol not in self.venue.books:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        try:
            limit = int(query.get("limit", "500"))
        except ValueError:
            limit = -1
        if limit not in DEPTH_LIMITS:
            return 400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
        if self._failures:
            return 503, {}  # replaced by the injected failure: no snapshot consumed
        return 200, self.venue.snapshot(symbol, limit)
