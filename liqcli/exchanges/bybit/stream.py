"""Bybit linear perpetuals: the public ``allLiquidation.<symbol>`` stream and its symbol list.

Quirks kept here:

- One topic per symbol. With no symbols given, every linear perpetual that is trading, from
  ``GET /v5/market/instruments-info?category=linear`` (paginated by ``cursor``).
- A subscribe request carries at most 21,000 characters of ``args``; Bybit documents at most
  10 args per request for spot and no count for linear, so we stay at 10 to be safe.
- ``S=Buy`` means a LONG position was liquidated: the opposite of Binance's order side.
- ``v`` is the size in base units, ``p`` the bankruptcy price; pushed every 500 ms.
- Keepalive is ``{"op":"ping"}`` every 20 s, answered by a JSON pong with ``"op":"ping"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from liqcli.core.endpoints import url as endpoint_url
from liqcli.core.events import LONG, SHORT, Liquidation, Side
from liqcli.errors import DataError, ExchangeError
from liqcli.exchanges.parsing import (
    BAD_SIDE,
    MAX_NOTIONAL_USD,
    MAX_PRICE,
    MAX_SYMBOL_LEN,
    MIN_NOTIONAL_USD,
    MIN_PRICE,
    MIN_TS,
    TS_WINDOW_MS,
    Refusals,
    Refused,
    notional,
    number,
    positive,
    price_value,
    refuse,
    structure,
    symbol,
    text,
    timestamp,
)
from liqcli.exchanges.ws import FrameKind, WsProtocol

VENUE = "bybit"
TOPIC_PREFIX = "allLiquidation."
INSTRUMENTS_PATH = "/v5/market/instruments-info"
MAX_ARGS_CHARS = 21_000
MAX_ARGS_PER_REQUEST = 10
PING = '{"op":"ping"}'
PING_INTERVAL_S = 20.0
MAX_PAGES = 50  # a cursor loop guard: ~1000 instruments per page


class JsonGetter(Protocol):
    """What the instruments loader needs from liqcli.exchanges.http.VenueHttp."""

    async def get_json(self, path: str, params: dict | None = None) -> Any: ...


def topics(symbols: Sequence[str]) -> list[str]:
    return [f"{TOPIC_PREFIX}{s.upper()}" for s in dict.fromkeys(symbols)]


def subscribe_messages(
    topic_list: Sequence[str],
    *,
    max_chars: int = MAX_ARGS_CHARS,
    max_args: int = MAX_ARGS_PER_REQUEST,
) -> list[str]:
    """Subscribe requests covering ``topic_list``, each within the args limits."""
    messages: list[str] = []
    batch: list[str] = []
    batch_chars = 2  # the args array's brackets
    for topic in topic_list:
        cost = len(topic) + 3  # quotes and a comma
        if batch and (len(batch) >= max_args or batch_chars + cost > max_chars):
            messages.append(_subscribe(batch))
            batch, batch_chars = [], 2
        batch.append(topic)
        batch_chars += cost
    if batch:
        messages.append(_subscribe(batch))
    return messages


def _subscribe(args: list[str]) -> str:
    return orjson.dumps({"op": "subscribe", "args": args}).decode()


def classify(message: Any) -> FrameKind:
    """Pushes carry ``topic``; op replies (subscribe acks, pongs) carry ``op``/``success``."""
    if not isinstance(message, dict) or "topic" in message:
        return FrameKind.DATA
    if message.get("success") is False:
        return FrameKind.ERROR
    return FrameKind.CONTROL


def protocol(topic_list: Sequence[str], base_url: str | None = None) -> WsProtocol:
    return WsProtocol(
        venue=VENUE,
        url=base_url or endpoint_url("LIQ_BYBIT_WS_URL"),
        subscriptions=tuple(subscribe_messages(topic_list)),
        app_ping=PING,
        ping_interval=PING_INTERVAL_S,
        classify=classify,
    )


def _num(value: Any, name: str) -> float:
    return number(VENUE, value, name, positive=True)


def parse_liquidations(
    message: Any, received_ts: int = 0, *, refused: Refusals | None = None
) -> list[Liquidation]:
    """An ``allLiquidation`` push -> Liquidations; other topics -> ``[]``.

    Never raises for data: a bad frame or item is counted in ``refused`` under its reason and
    skipped on its own (the push's other items are kept).
    """
    if type(message) is not dict:
        refuse(refused, structure(VENUE, "frame", message))
        return []
    topic = message.get("topic")
    if type(topic) is not str or not topic.startswith(TOPIC_PREFIX):
        return []
    data = message.get("data")
    items = data if type(data) is list else (data,)
    out: list[Liquidation] = []
    for item in items:
        try:
            out.append(_liquidation(item, message, received_ts))
        except Exception as exc:  # one bad item never costs the push's others
            refuse(refused, exc, VENUE)
    return out


def _side(side: Any) -> Side:
    lower = text(VENUE, side, "side 'S'").lower()
    if lower == "buy" or lower == "sell":
        return LONG if lower == "buy" else SHORT
    raise Refused(BAD_SIDE, f"bybit: unknown side {side[:40]!r}")


def _liquidation(item: Any, message: dict[str, Any], received_ts: int) -> Liquidation:
    # The common case is checked inline; anything unusual goes to the checking helpers, which
    # raise Refused with the reason. A KeyError is counted as a missing field by the caller.
    if type(item) is not dict:
        raise structure(VENUE, "liquidation item", item)
    side = item["S"]
    liquidated = LONG if side == "Buy" else SHORT if side == "Sell" else _side(side)
    sym = item["s"]
    if type(sym) is str and 0 < len(sym) <= MAX_SYMBOL_LEN and not sym.isspace():
        sym = sym.upper()
    else:
        sym = symbol(VENUE, sym, "symbol 's'")
    ts = item.get("T")
    if ts is None:
        ts = message["ts"]
    if not (type(ts) is int and received_ts and MIN_TS <= ts <= received_ts + TS_WINDOW_MS):
        ts = timestamp(VENUE, ts, "T", received_ts)
    price = positive(VENUE, item["p"], "p")
    qty = positive(VENUE, item["v"], "v")
    if not MIN_PRICE <= price <= MAX_PRICE:
        price_value(VENUE, price, "p")
    usd = price * qty
    if not MIN_NOTIONAL_USD <= usd <= MAX_NOTIONAL_USD:
        notional(VENUE, usd)
    return Liquidation(VENUE, sym, liquidated, price, qty, usd, ts, "", received_ts)


def parse_instruments_page(payload: Any) -> tuple[list[str], str]:
    """One instruments-info page -> (trading linear perpetual symbols, next cursor or "")."""
    if not isinstance(payload, dict):
        raise DataError("bybit: instruments response is not a JSON object")
    if payload.get("retCode", 0) not in (0, "0"):
        raise ExchangeError(
            VENUE,
            str(payload.get("retMsg") or "instruments request failed"),
            code=payload.get("retCode"),
        )
    result = payload.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("list"), list):
        raise DataError("bybit: instruments response has no result.list")
    symbols = [
        str(row["symbol"])
        for row in result["list"]
        if isinstance(row, dict)
        and "symbol" in row
        and row.get("status") == "Trading"
        and row.get("contractType") == "LinearPerpetual"
    ]
    return symbols, str(result.get("nextPageCursor") or "")


async def linear_perpetuals(http: JsonGetter) -> list[str]:
    """Every trading linear perpetual, following ``nextPageCursor`` to the end."""
    symbols: list[str] = []
    cursor = ""
    for _ in range(MAX_PAGES):
        params: dict[str, Any] = {"category": "linear", "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page, cursor = parse_instruments_page(await http.get_json(INSTRUMENTS_PATH, params))
        symbols.extend(page)
        if not cursor:
            break
    else:
        raise DataError(f"bybit: instruments list did not end after {MAX_PAGES} pages")
    return list(dict.fromkeys(symbols))
