"""Binance USDⓈ-M futures live streams: liquidations (``forceOrder``) and aggregate trades.

Combined streams at ``{LIQ_BINANCE_WS_URL}/stream?streams=a/b/c`` wrap every event as
``{"stream": name, "data": event}``. Binance pings every 3 minutes and websockets answers; we add
protocol pings only for stale detection (no application ping exists). A connection lives at most
24 h, so the client reconnects proactively before that.

Quirks kept here: order side ``SELL`` means a LONG was liquidated; only the latest liquidation per
symbol per second is pushed, so Binance totals are a lower bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from liqcli.core.endpoints import url as endpoint_url
from liqcli.core.events import LONG, SHORT, AggTrade, Liquidation, Side
from liqcli.errors import UsageError
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
MAX_STREAMS_PER_CONNECTION = 1024
MAX_LIFETIME_S = 23.5 * 3600  # the venue closes connections at 24 h


def liquidation_streams(
    symbols: Sequence[str] = (), max_streams: int = MAX_STREAMS_PER_CONNECTION
) -> list[str]:
    """``[]`` -> the all-market stream; else one ``<sym>@forceOrder`` per symbol.

    Past ``max_streams`` symbols the all-market stream replaces per-symbol streams (one
    connection carries at most 1024); the caller then filters by symbol client-side.
    """
    if not symbols or len(set(symbols)) > max_streams:
        return [ALL_LIQUIDATIONS]
    return [f"{s.lower()}@forceOrder" for s in dict.fromkeys(symbols)]


def agg_trade_streams(symbols: Sequence[str]) -> list[str]:
    return [f"{s.lower()}@aggTrade" for s in dict.fromkeys(symbols)]


def combined_stream_url(streams: Sequence[str], base_url: str | None = None) -> str:
    """``{base}/stream?streams=a/b/c``; more than 1024 streams is a usage error."""
    if not streams:
        raise UsageError("binance: no streams to subscribe to")
    if len(streams) > MAX_STREAMS_PER_CONNECTION:
        raise UsageError(
            f"binance: {len(streams)} streams exceed {MAX_STREAMS_PER_CONNECTION} per connection"
        )
    base = (base_url or endpoint_url("LIQ_BINANCE_WS_URL")).rstrip("/")
    return f"{base}/stream?streams={'/'.join(streams)}"


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
    return WsProtocol(
        venue=VENUE,
        url=combined_stream_url(streams, base_url),
        classify=classify,
        max_lifetime=MAX_LIFETIME_S,
    )


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
    return [
        e for e in parse_message(message, received_ts, refused=refused) if type(e) is Liquidation
    ]
