"""Binance USDⓈ-M futures live streams: liquidations (``forceOrder``) and aggregate trades.

Combined streams at ``{LIQ_BINANCE_WS_URL}/stream?streams=a/b/c`` wrap every event as
``{"stream": name, "data": event}``. Binance pings every 3 minutes and websockets answers; we add
protocol pings only for stale detection (no application ping exists). A connection lives at most
24 h, so the client reconnects proactively before that.

Quirks kept here: order side ``SELL`` means a LONG was liquidated; only the latest liquidation per
symbol per second is pushed, so Binance totals are a lower bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from liqcli.core.endpoints import url as endpoint_url
from liqcli.core.events import LONG, SHORT, AggTrade, Liquidation
from liqcli.errors import DataError, UsageError
from liqcli.exchanges.parsing import number
from liqcli.exchanges.ws import FrameKind, WsProtocol

VENUE = "binance"
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
