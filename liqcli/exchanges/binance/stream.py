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

import math
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
    Side,
)
from liqcli.errors import DataError, UsageError
from liqcli.exchanges.parsing import (
    BAD_SIDE,
    MAX_NOTIONAL_USD,
    MAX_PRICE,
    MAX_SYMBOL_LEN,
    MIN_NOTIONAL_USD,
    MIN_PRICE,
    MIN_TS,
    NOT_POSITIVE,
    TS_WINDOW_MS,
    WRONG_TYPE,
    Refusals,
    Refused,
    notional,
    number,
    positive,
    price_value,
    refuse,
    refused_error,
    structure,
    symbol,
    text,
    timestamp,
)
from liqcli.exchanges.ws import FrameKind, WsProtocol

VENUE = "binance"
INF = math.inf
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


def _filled(value: Any, name: str) -> float:
    """A filled amount: absent or zero means nothing filled; negative is refused."""
    if value is None:
        return 0.0
    out = number(VENUE, value, name)
    if out < 0:
        raise Refused(NOT_POSITIVE, f"binance: field {name!r} is negative: {value!r:.60}")
    return out


def _side(order_side: Any) -> Side:
    upper = text(VENUE, order_side, "side 'S'").upper()
    if upper == "SELL" or upper == "BUY":
        return LONG if upper == "SELL" else SHORT
    raise Refused(BAD_SIDE, f"binance: unknown order side {order_side[:40]!r}")


def parse_force_order(event: dict[str, Any], received_ts: int = 0) -> Liquidation:
    """One ``forceOrder`` event -> Liquidation. Notional = average price x filled quantity
    (``ap`` x ``z``), falling back to ``p`` x ``q`` when nothing is reported filled.

    Raises Refused (a DataError with a ``reason``: liqcli.exchanges.parsing) for a bad event.
    """
    try:
        return _force_order(event, received_ts)
    except Exception as exc:
        raise refused_error(VENUE, exc) from None


def _force_order(event: dict[str, Any], received_ts: int) -> Liquidation:
    # The common case is checked inline; anything unusual goes to the checking helpers, which
    # raise Refused with the reason. A KeyError is counted as a missing field by the caller.
    order = event["o"]
    if type(order) is not dict:
        raise structure(VENUE, "forceOrder field 'o'", order)
    sym = order["s"]
    if type(sym) is str and 0 < len(sym) <= MAX_SYMBOL_LEN and not sym.isspace():
        sym = sym.upper()
    else:
        sym = symbol(VENUE, sym, "symbol 's'")
    order_side = order["S"]
    side = LONG if order_side == "SELL" else SHORT if order_side == "BUY" else _side(order_side)
    ts = order.get("T")
    if ts is None:
        ts = event["E"]
    if not (type(ts) is int and received_ts and MIN_TS <= ts <= received_ts + TS_WINDOW_MS):
        ts = timestamp(VENUE, ts, "T", received_ts)
    z, ap = order.get("z"), order.get("ap")
    try:
        filled = float(z) if type(z) is str else -1.0
        avg_price = float(ap) if type(ap) is str else -1.0
    except ValueError:
        filled = avg_price = -1.0
    if not (0.0 < filled < INF and 0.0 < avg_price < INF):
        filled, avg_price = _filled(z, "z"), _filled(ap, "ap")  # raises for bad values
    if filled > 0 and avg_price > 0:
        price, qty = avg_price, filled
    else:  # nothing filled (yet): the order's own price and quantity
        price, qty = positive(VENUE, order["p"], "p"), positive(VENUE, order["q"], "q")
    if not MIN_PRICE <= price <= MAX_PRICE:
        price_value(VENUE, price, "price")
    usd = price * qty
    if not MIN_NOTIONAL_USD <= usd <= MAX_NOTIONAL_USD:
        notional(VENUE, usd)
    return Liquidation(VENUE, sym, side, price, qty, usd, ts, "", received_ts)


def parse_agg_trade(event: dict[str, Any], received_ts: int = 0) -> AggTrade:
    """One ``aggTrade`` event -> AggTrade; Refused for a bad event."""
    try:
        return _agg_trade(event, received_ts)
    except Exception as exc:
        raise refused_error(VENUE, exc) from None


def _agg_trade(event: dict[str, Any], received_ts: int) -> AggTrade:
    price = price_value(VENUE, event["p"], "p")
    qty = positive(VENUE, event["q"], "q")
    notional(VENUE, price * qty)
    trade_id = event["a"]
    if type(trade_id) is not int:
        if not (type(trade_id) is str and trade_id.isdecimal()):
            raise Refused(
                WRONG_TYPE, f"binance: aggTrade id 'a' is not an integer: {trade_id!r:.60}"
            )
        trade_id = int(trade_id)
    maker = event["m"]
    if type(maker) is not bool:
        raise Refused(WRONG_TYPE, f"binance: aggTrade 'm' is not a boolean: {maker!r:.60}")
    return AggTrade(
        exchange=VENUE,
        symbol=symbol(VENUE, event["s"], "symbol 's'"),
        trade_id=trade_id,
        ts=timestamp(VENUE, event["T"], "T", received_ts),
        price=price,
        qty=qty,
        is_buyer_maker=maker,
    )


def parse_message(
    message: Any, received_ts: int = 0, *, refused: Refusals | None = None
) -> list[Liquidation | AggTrade]:
    """A combined-stream frame (or a bare event) -> events; other event types -> ``[]``.

    Never raises for data: each bad event (or a bad frame) is counted in ``refused`` under its
    reason and skipped on its own, the frame's other events are kept.
    """
    if type(message) is not dict:
        refuse(refused, structure(VENUE, "frame", message))
        return []
    event = message.get("data", message)
    if type(event) is dict and event.get("e") == "forceOrder":  # the usual frame: one event
        try:
            return [_force_order(event, received_ts)]
        except Exception as exc:
            refuse(refused, exc, VENUE)
            return []
    events: Iterable[Any] = event if type(event) is list else (event,)
    out: list[Liquidation | AggTrade] = []
    for item in events:
        try:
            if type(item) is not dict:
                raise structure(VENUE, "event", item)
            kind = item.get("e")
            if kind == "forceOrder":
                out.append(_force_order(item, received_ts))
            elif kind == "aggTrade":
                out.append(_agg_trade(item, received_ts))
        except Exception as exc:  # one bad event never costs the frame's others
            refuse(refused, exc, VENUE)
    return out


def parse_liquidations(
    message: Any, received_ts: int = 0, *, refused: Refusals | None = None
) -> list[Liquidation]:
    """``parse_message`` keeping only the liquidations (the all-market liquidation stream)."""
    if type(message) is dict:
        event = message.get("data", message)
        if type(event) is dict and event.get("e") == "forceOrder":  # one event: no filtering
            try:
                return [_force_order(event, received_ts)]
            except Exception as exc:
                refuse(refused, exc, VENUE)
                return []
    return [
        e for e in parse_message(message, received_ts, refused=refused) if type(e) is Liquidation
    ]


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


def parse_market_message(
    message: Any, received_ts: int = 0, *, refused: Refusals | None = None
) -> list[MarketEvent]:
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
            out.extend(parse_message(item, received_ts, refused=refused))
    return out
