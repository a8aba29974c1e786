"""Backpack WebSocket: subscribe messages and pure parsers (TRADING-VENUES.md §1.7).

Every push is ``{"stream": name, "data": {...}}``; payload times are microseconds (converted to
ms here). ``depth.<s>`` diffs carry absolute quantities with contiguous ids (``U`` = previous
``u`` + 1), so they feed an ``L2Book(rule="contiguous")`` synced from ``GET /api/v1/depth``.
Parsers never raise on data: a malformed push returns None and the caller counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from liqcli.core.events import AggTrade, BookDelta, BookSnapshot, BookTop, MarkPrice

VENUE = "backpack"


def subscribe(streams: list[str], signature: list[str] | None = None) -> str:
    message: dict[str, Any] = {"method": "SUBSCRIBE", "params": streams}
    if signature is not None:
        message["signature"] = signature
    return orjson.dumps(message).decode()


def _ms(us: Any) -> int:
    return int(us) // 1000


def _levels(rows: Any) -> tuple[tuple[float, float], ...]:
    return tuple((float(p), float(q)) for p, q in rows)


def parse_depth(data: dict[str, Any], received_ts: int = 0) -> BookDelta | None:
    try:
        return BookDelta(
            VENUE,
            data["s"],
            _ms(data.get("T") or data["E"]),
            int(data["U"]),
            int(data["u"]),
            -1,
            _levels(data.get("b", ())),
            _levels(data.get("a", ())),
            received_ts,
        )
    except (KeyError, TypeError, ValueError):
        return None


def parse_book_ticker(data: dict[str, Any], received_ts: int = 0) -> BookTop | None:
    try:
        return BookTop(
            VENUE,
            data["s"],
            _ms(data.get("T") or data["E"]),
            float(data["b"]),
            float(data["B"]),
            float(data["a"]),
            float(data["A"]),
            int(data.get("u") or 0),
            received_ts,
        )
    except (KeyError, TypeError, ValueError):
        return None


def parse_trade(data: dict[str, Any], received_ts: int = 0) -> AggTrade | None:
    """``trade.<s>``: ``t`` trade id, ``p``/``q`` price and size, ``m`` buyer is the maker."""
    try:
        return AggTrade(
            VENUE,
            data["s"],
            int(data["t"]),
            _ms(data.get("T") or data["E"]),
            float(data["p"]),
            float(data["q"]),
            bool(data["m"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def parse_mark_price(data: dict[str, Any], received_ts: int = 0) -> MarkPrice | None:
    """``markPrice.<s>``: ``p`` mark, ``i`` index, ``f`` estimated funding, ``n`` next funding (µs)."""
    try:
        return MarkPrice(
            VENUE,
            data["s"],
            _ms(data.get("T") or data["E"]),
            float(data["p"]),
            float(data.get("i") or 0),
            float(data.get("f") or 0),
            _ms(data.get("n") or 0),
            received_ts,
        )
    except (KeyError, TypeError, ValueError):
        return None


def snapshot_from_rest(symbol: str, depth: dict[str, Any]) -> BookSnapshot:
    """``BackpackRest.depth`` output -> the snapshot an L2Book loads (bids best first)."""
    return BookSnapshot(
        VENUE,
        symbol,
        depth.get("ts", 0),
        depth["last_update_id"],
        tuple(sorted(depth["bids"], reverse=True)),
        tuple(sorted(depth["asks"])),
    )


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """An ``account.orderUpdate`` event: acceptance, fill, cancel, expiry."""

    event: str  # orderAccepted | orderFill | orderCancelled | orderExpired | orderModified | ...
    symbol: str
    order_id: str
    client_id: int | None
    side: str  # Bid | Ask
    status: str
    price: float | None
    quantity: float
    executed: float
    ts: int
    fill_qty: float = 0.0
    fill_price: float = 0.0
    fee: float = 0.0
    fee_asset: str = ""
    maker: bool = False
    trade_id: int | None = None
    post_only: bool = False
    reduce_only: bool = False
    origin: str = "USER"


def parse_order_update(data: dict[str, Any]) -> OrderUpdate | None:
    try:
        client = data.get("c")
        price = data.get("p")
        return OrderUpdate(
            event=str(data["e"]),
            symbol=str(data["s"]),
            order_id=str(data["i"]),
            client_id=int(client) if client is not None else None,
            side=str(data["S"]),
            status=str(data.get("X", "")),
            price=float(price) if price not in (None, "") else None,
            quantity=float(data.get("q") or 0),
            executed=float(data.get("z") or 0),
            ts=_ms(data.get("T") or data["E"]),
            fill_qty=float(data.get("l") or 0),
            fill_price=float(data.get("L") or 0),
            fee=float(data.get("n") or 0),
            fee_asset=str(data.get("N") or ""),
            maker=bool(data.get("m", False)),
            trade_id=int(data["t"]) if data.get("t") is not None else None,
            post_only=bool(data.get("y", False)),
            reduce_only=bool(data.get("r", False)),
            origin=str(data.get("O", "USER")),
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    symbol: str
    qty: float  # net, signed
    entry_price: float
    ts: int
    event: str = ""  # empty for the snapshot sent on subscribe


def parse_position_update(data: dict[str, Any]) -> PositionUpdate | None:
    try:
        return PositionUpdate(
            str(data["s"]),
            float(data["q"]),
            float(data.get("B") or 0),
            _ms(data.get("T") or data["E"]),
            str(data.get("e", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def parse(message: str | bytes, received_ts: int = 0) -> Any | None:
    """One push -> its event, or None (unknown stream or malformed)."""
    try:
        frame = orjson.loads(message)
        stream, data = frame["stream"], frame["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(stream, str) or not isinstance(data, dict):
        return None
    if stream.startswith("depth."):
        return parse_depth(data, received_ts)
    if stream.startswith("bookTicker."):
        return parse_book_ticker(data, received_ts)
    if stream.startswith("trade."):
        return parse_trade(data, received_ts)
    if stream.startswith("markPrice."):
        return parse_mark_price(data, received_ts)
    if stream.startswith("account.orderUpdate"):
        return parse_order_update(data)
    if stream.startswith("account.positionUpdate"):
        return parse_position_update(data)
    return None
