"""Binance USDⓈ-M futures live streams: liquidations (``forceOrder``), aggregate trades, depth
diffs, best bid/ask (``bookTicker``) and mark price / funding (``markPrice``).

Combined streams at ``{root}/{route}/stream?streams=a/b/c`` wrap every event as
``{"stream": name, "data": event}``. Since the 2026 split the route depends on the stream:
``depth`` and ``bookTicker`` are ``/public``, ``forceOrder``, ``aggTrade``, ``markPrice`` and klines
``/market`` (a connection carries one route). ``LIQ_BINANCE_WS_URL`` is the host root; an older
value ending in ``/market`` or ``/public`` is accepted and the route replaced. One connection
carries at most 200 streams (USDⓈ-M; 1024 is spot): :func:`stream_urls` splits beyond that.
Binance pings every 3 minutes and websockets answers; we add protocol pings only for stale
detection (no application ping exists). A connection lives at most 24 h, so the client
reconnects proactively before that.

Quirks kept here: order side ``SELL`` means a LONG was liquidated; only the latest liquidation per
symbol per second is pushed, so Binance totals are a lower bound. Depth diffs carry ``U``/``u``/``pu``
(futures sequencing, see liqcli.trading.book); ``bookTicker``'s ``u`` is in the same id space.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from liqcli.core.endpoints import url as endpoint_url
from liqcli.core.events import (
    LONG,
    SHORT,
    AggTrade,
    BookDelta,
    BookSnapshot,
    BookTop,
    Level,
    Liquidation,
    MarkPrice,
)
from liqcli.errors import DataError, UsageError
from liqcli.exchanges.parsing import number
from liqcli.exchanges.ws import FrameKind, WsProtocol

VENUE = "binance"
ALL_LIQUIDATIONS = "!forceOrder@arr"
MAX_STREAMS_PER_CONNECTION = 200  # USDⓈ-M futures (1024 is the spot limit)
PUBLIC = "public"  # depth, bookTicker
MARKET = "market"  # forceOrder, aggTrade, markPrice, klines
DEPTH_SPEEDS = ("100ms", "250ms", "500ms")  # 250ms is the unsuffixed <sym>@depth
MAX_LIFETIME_S = 23.5 * 3600  # the venue closes connections at 24 h


def liquidation_streams(
    symbols: Sequence[str] = (), max_streams: int = MAX_STREAMS_PER_CONNECTION
) -> list[str]:
    """``[]`` -> the all-market stream; else one ``<sym>@forceOrder`` per symbol.

    Past ``max_streams`` symbols the all-market stream replaces per-symbol streams (one
    connection carries at most 200); the caller then filters by symbol client-side.
    """
    if not symbols or len(set(symbols)) > max_streams:
        return [ALL_LIQUIDATIONS]
    return [f"{s.lower()}@forceOrder" for s in dict.fromkeys(symbols)]


def agg_trade_streams(symbols: Sequence[str]) -> list[str]:
    return [f"{s.lower()}@aggTrade" for s in dict.fromkeys(symbols)]


def depth_streams(symbols: Sequence[str], speed: str = "100ms") -> list[str]:
    """``<sym>@depth@100ms`` diff streams (``250ms`` is Binance's unsuffixed ``<sym>@depth``)."""
    if speed not in DEPTH_SPEEDS:
        raise UsageError(f"binance: depth speed {speed!r}: choose from {', '.join(DEPTH_SPEEDS)}")
    suffix = "" if speed == "250ms" else f"@{speed}"
    return [f"{s.lower()}@depth{suffix}" for s in dict.fromkeys(symbols)]


def book_ticker_streams(symbols: Sequence[str]) -> list[str]:
    return [f"{s.lower()}@bookTicker" for s in dict.fromkeys(symbols)]


def mark_price_streams(symbols: Sequence[str], every: str = "1s") -> list[str]:
    """``<sym>@markPrice@1s`` (``every="3s"``: the unsuffixed stream)."""
    if every not in ("1s", "3s"):
        raise UsageError(f"binance: markPrice cadence {every!r}: choose 1s or 3s")
    suffix = "@1s" if every == "1s" else ""
    return [f"{s.lower()}@markPrice{suffix}" for s in dict.fromkeys(symbols)]


def route_of(stream: str) -> str:
    """``public`` for depth and bookTicker streams, ``market`` for everything else."""
    kind = stream.split("@", 2)[1] if "@" in stream else stream
    if stream.startswith("!"):
        kind = stream[1:].split("@", 1)[0]
    return PUBLIC if kind.startswith("depth") or kind == "bookTicker" else MARKET


def ws_root(base_url: str | None = None) -> str:
    """The host root of ``LIQ_BINANCE_WS_URL`` (or ``base_url``): a trailing route is dropped."""
    base = (base_url or endpoint_url("LIQ_BINANCE_WS_URL")).rstrip("/")
    for route in (f"/{MARKET}", f"/{PUBLIC}"):
        if base.endswith(route):
            return base[: -len(route)]
    return base


def combined_stream_url(streams: Sequence[str], base_url: str | None = None) -> str:
    """``{root}/{route}/stream?streams=a/b/c`` for streams of one route, at most 200 of them."""
    if not streams:
        raise UsageError("binance: no streams to subscribe to")
    if len(streams) > MAX_STREAMS_PER_CONNECTION:
        raise UsageError(
            f"binance: {len(streams)} streams exceed {MAX_STREAMS_PER_CONNECTION} per connection"
        )
    routes = {route_of(s) for s in streams}
    if len(routes) > 1:
        raise UsageError("binance: /public and /market streams need separate connections")
    return f"{ws_root(base_url)}/{routes.pop()}/stream?streams={'/'.join(streams)}"


def stream_urls(
    streams: Sequence[str],
    base_url: str | None = None,
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
) -> list[str]:
    """Connection URLs for any number of streams: one route each, at most ``max_streams`` each
    (``/public`` ones first)."""
    by_route: dict[str, list[str]] = {PUBLIC: [], MARKET: []}
    for stream in dict.fromkeys(streams):
        by_route[route_of(stream)].append(stream)
    return [
        combined_stream_url(group[i : i + max_streams], base_url)
        for group in by_route.values()
        for i in range(0, len(group), max_streams)
    ]


def classify(message: Any) -> FrameKind:
    """Combined-stream pushes are data; ``{"result":..,"id":..}`` replies are control."""
    if isinstance(message, dict):
        if "data" in message or "e" in message:
            return FrameKind.DATA
        if "error" in message or "code" in message:
            return FrameKind.ERROR
        if "id" in message:
            return FrameKind.CONTROL
    return FrameKind.DATA


def protocol(streams: Sequence[str], base_url: str | None = None) -> WsProtocol:
    return _protocol(combined_stream_url(streams, base_url))


def protocols(streams: Sequence[str], base_url: str | None = None) -> list[WsProtocol]:
    """One protocol per connection :func:`stream_urls` needs for ``streams``."""
    return [_protocol(u) for u in stream_urls(streams, base_url)]


def _protocol(stream_url: str) -> WsProtocol:
    return WsProtocol(venue=VENUE, url=stream_url, classify=classify, max_lifetime=MAX_LIFETIME_S)


def _num(value: Any, name: str) -> float:
    return number(VENUE, value, name)


def _positive(value: Any, name: str) -> float:
    return number(VENUE, value, name, positive=True)


def parse_force_order(event: dict[str, Any], received_ts: int = 0) -> Liquidation:
    """One ``forceOrder`` event -> Liquidation. Notional = average price x filled quantity
    (``ap`` x ``z``), falling back to ``p`` x ``q`` when nothing is reported filled."""
    try:
        order = event["o"]
        symbol = str(order["s"]).upper()
        order_side = str(order["S"]).upper()
        ts = int(order.get("T") or event["E"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"binance: malformed forceOrder event ({exc!r})") from None
    if order_side not in ("BUY", "SELL"):
        raise DataError(f"binance: unknown order side {order_side!r}")
    filled = _num(order.get("z", 0) or 0, "z")
    avg_price = _num(order.get("ap", 0) or 0, "ap")
    if filled > 0 and avg_price > 0:
        price, qty = avg_price, filled
    else:
        price, qty = _positive(order.get("p"), "p"), _positive(order.get("q"), "q")
    return Liquidation(
        exchange=VENUE,
        symbol=symbol,
        side=LONG if order_side == "SELL" else SHORT,
        price=price,
        qty=qty,
        notional_usd=price * qty,
        ts=ts,
        received_ts=received_ts,
    )


def parse_agg_trade(event: dict[str, Any]) -> AggTrade:
    try:
        return AggTrade(
            exchange=VENUE,
            symbol=str(event["s"]).upper(),
            trade_id=int(event["a"]),
            ts=int(event["T"]),
            price=_positive(event["p"], "p"),
            qty=_positive(event["q"], "q"),
            is_buyer_maker=bool(event["m"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"binance: malformed aggTrade event ({exc!r})") from None


def parse_message(message: Any, received_ts: int = 0) -> list[Liquidation | AggTrade]:
    """A combined-stream frame (or a bare event) -> events; other event types -> ``[]``.

    Raises DataError for a forceOrder/aggTrade event that lacks what it must carry.
    """
    if not isinstance(message, dict):
        raise DataError(f"binance: expected a JSON object, got {type(message).__name__}")
    event = message.get("data", message)
    events: Iterable[Any] = event if isinstance(event, list) else (event,)
    out: list[Liquidation | AggTrade] = []
    for item in events:
        if not isinstance(item, dict):
            raise DataError(f"binance: expected an event object, got {type(item).__name__}")
        kind = item.get("e")
        if kind == "forceOrder":
            out.append(parse_force_order(item, received_ts))
        elif kind == "aggTrade":
            out.append(parse_agg_trade(item))
    return out


def parse_liquidations(message: Any, received_ts: int = 0) -> list[Liquidation]:
    """``parse_message`` keeping only the liquidations (the all-market liquidation stream)."""
    return [e for e in parse_message(message, received_ts) if isinstance(e, Liquidation)]


# --- order books and mark prices ---------------------------------------------------------------

_INF = float("inf")


def _levels(raw: Any, name: str, what: str) -> tuple[Level, ...]:
    """``[["7.6110","2"], ...]`` -> ((7.611, 2.0), ...); a price must be > 0, a qty >= 0."""
    try:
        out = tuple((float(p), float(q)) for p, q in raw)
    except (TypeError, ValueError):
        raise DataError(f"binance: malformed {what} levels in {name!r}") from None
    for p, q in out:
        # Written so that NaN fails too (every comparison with NaN is false).
        if not (0 < p < _INF and 0 <= q < _INF):
            raise DataError(f"binance: bad {what} level {[p, q]!r} in {name!r}")
    return out


def parse_depth_update(event: dict[str, Any], received_ts: int = 0) -> BookDelta:
    """A ``depthUpdate`` diff (``U``, ``u``, ``pu``, absolute quantities, qty 0 deletes)."""
    try:
        return BookDelta(
            exchange=VENUE,
            symbol=str(event["s"]).upper(),
            ts=int(event["E"]),
            first_update_id=int(event["U"]),
            update_id=int(event["u"]),
            prev_update_id=int(event.get("pu", -1)),
            bids=_levels(event["b"], "b", "depthUpdate"),
            asks=_levels(event["a"], "a", "depthUpdate"),
            received_ts=received_ts,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"binance: malformed depthUpdate event ({exc!r})") from None


def parse_book_ticker(event: dict[str, Any], received_ts: int = 0) -> BookTop:
    """A ``bookTicker`` event; ``ts`` is its transaction time ``T`` (else event time ``E``)."""
    try:
        return BookTop(
            exchange=VENUE,
            symbol=str(event["s"]).upper(),
            ts=int(event.get("T") or event["E"]),
            bid_price=_positive(event["b"], "b"),
            bid_qty=_num(event["B"], "B"),
            ask_price=_positive(event["a"], "a"),
            ask_qty=_num(event["A"], "A"),
            update_id=int(event["u"]),
            received_ts=received_ts,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"binance: malformed bookTicker event ({exc!r})") from None


def parse_mark_price(event: dict[str, Any], received_ts: int = 0) -> MarkPrice:
    """A ``markPriceUpdate`` (``p`` mark, ``i`` index, ``r`` funding rate, ``T`` next funding)."""
    try:
        return MarkPrice(
            exchange=VENUE,
            symbol=str(event["s"]).upper(),
            ts=int(event["E"]),
            mark_price=_positive(event["p"], "p"),
            index_price=_num(event.get("i", 0) or 0, "i"),
            funding_rate=_num(event.get("r", 0) or 0, "r"),
            next_funding_ts=int(event.get("T") or 0),
            received_ts=received_ts,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"binance: malformed markPriceUpdate event ({exc!r})") from None


def parse_depth_snapshot(payload: Any, symbol: str, received_ts: int = 0) -> BookSnapshot:
    """``GET /fapi/v1/depth`` -> BookSnapshot at ``lastUpdateId`` (bids best first)."""
    if not isinstance(payload, dict):
        raise DataError(f"binance: depth snapshot is {type(payload).__name__}, expected an object")
    try:
        bids = _levels(payload["bids"], "bids", "depth snapshot")
        asks = _levels(payload["asks"], "asks", "depth snapshot")
        return BookSnapshot(
            exchange=VENUE,
            symbol=symbol.upper(),
            ts=int(payload.get("T") or payload.get("E") or 0),
            update_id=int(payload["lastUpdateId"]),
            bids=tuple(sorted(bids, reverse=True)),
            asks=tuple(sorted(asks)),
            received_ts=received_ts,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"binance: malformed depth snapshot ({exc!r})") from None


MarketEvent = Liquidation | AggTrade | BookDelta | BookTop | MarkPrice


def parse_market_message(message: Any, received_ts: int = 0) -> list[MarketEvent]:
    """Any combined-stream frame (or bare event) of the kinds above -> events; other kinds
    (klines, ...) -> ``[]``. Raises DataError for an event that lacks what it must carry."""
    if not isinstance(message, dict):
        raise DataError(f"binance: expected a JSON object, got {type(message).__name__}")
    event = message.get("data", message)
    items: Iterable[Any] = event if isinstance(event, list) else (event,)
    out: list[MarketEvent] = []
    for item in items:
        if not isinstance(item, dict):
            raise DataError(f"binance: expected an event object, got {type(item).__name__}")
        kind = item.get("e")
        if kind == "depthUpdate":
            out.append(parse_depth_update(item, received_ts))
        elif kind == "bookTicker":
            out.append(parse_book_ticker(item, received_ts))
        elif kind == "markPriceUpdate":
            out.append(parse_mark_price(item, received_ts))
        elif kind in ("forceOrder", "aggTrade"):
            out.extend(parse_message(item, received_ts))
    return out
