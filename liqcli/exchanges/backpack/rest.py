"""Backpack REST (TRADING-VENUES.md §1.3–§1.6): public market data and the signed account calls
a market maker needs, through the shared rate-budgeted VenueHttp.

::

    async with backpack_rest(signer) as bp:        # LIQ_BACKPACK_REST_URL or production
        await bp.sync_time()                       # server clock offset: requests never expire
        market = await bp.market("SOL_USDC_PERP")  # tick, step, min quantity
        order = await bp.execute_order(OrderRequest("SOL_USDC_PERP", "Bid", "0.10", price="180.50",
                                                    post_only=True, client_id=7))
        await bp.cancel_all("SOL_USDC_PERP")

Errors: ``{"code": "UPPER_SNAKE", "message": ...}`` bodies become ExchangeError with the code;
a post-only order that would cross raises :class:`PostOnlyRejected`; an expired or badly signed
request says which, without echoing any key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from liqcli.core.endpoints import url
from liqcli.errors import DataError, ExchangeError, LiqError, UnknownSymbolError
from liqcli.exchanges.backpack.auth import BackpackSigner
from liqcli.exchanges.http import RateBudget, VenueHttp

VENUE = "backpack"
REQUESTS_PER_MINUTE = 2000  # per subaccount on standard REST (Backpack FAQ)


class PostOnlyRejected(ExchangeError):
    """A post-only order that would have taken liquidity (HTTP 400 INVALID_ORDER)."""


class OrderNotFound(ExchangeError):
    """The order is not (or no longer) open."""


def parse_error(status: int, payload: Any, path: str, params: Mapping[str, Any]) -> LiqError | None:
    if not isinstance(payload, dict) or "code" not in payload:
        return None
    code = str(payload.get("code"))
    message = str(payload.get("message") or payload.get("msg") or "no message")[:200]
    where = f"{path}: {message}"
    if code == "INVALID_ORDER" and "immediately match" in message:
        return PostOnlyRejected(VENUE, where, code=code, status=status)
    if code == "RESOURCE_NOT_FOUND" or (
        code == "INVALID_CLIENT_REQUEST" and "not found" in message.lower()
    ):
        return OrderNotFound(VENUE, where, code=code, status=status)
    if code in ("INVALID_SYMBOL", "INVALID_MARKET"):
        return UnknownSymbolError(VENUE, where, code=code, status=status)
    if code == "INVALID_CLIENT_REQUEST" and "expired" in message.lower():
        return ExchangeError(
            VENUE,
            f"{where} (the local clock is off by more than the signing window?)",
            code=code,
            status=status,
        )
    return ExchangeError(VENUE, where, code=code, status=status)


@dataclass(frozen=True, slots=True)
class Market:
    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_quantity: Decimal
    min_price: Decimal | None = None
    funding_interval_ms: int | None = None

    def round_price(self, price: float, *, side: str) -> Decimal:
        """To the tick, away from the book's other side: bids down, asks up (never crosses more)."""
        ticks = Decimal(str(price)) / self.tick_size
        ticks = ticks.to_integral_value(
            rounding="ROUND_FLOOR" if side == "Bid" else "ROUND_CEILING"
        )
        return (ticks * self.tick_size).quantize(self.tick_size)

    def round_quantity(self, qty: float) -> Decimal:
        """Down to the step (never more than asked)."""
        steps = (Decimal(str(qty)) / self.step_size).to_integral_value(rounding="ROUND_FLOOR")
        return (steps * self.step_size).quantize(self.step_size)


@dataclass(frozen=True, slots=True)
class OrderRequest:
    symbol: str
    side: str  # Bid | Ask
    quantity: str  # decimal string, already rounded to the step
    price: str | None = None  # None: market order
    post_only: bool = False
    reduce_only: bool = False
    client_id: int | None = None  # uint32
    time_in_force: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "symbol": self.symbol,
            "side": self.side,
            "orderType": "Limit" if self.price is not None else "Market",
            "quantity": self.quantity,
        }
        if self.price is not None:
            body["price"] = self.price
            body["timeInForce"] = self.time_in_force or "GTC"
        elif self.time_in_force:
            body["timeInForce"] = self.time_in_force
        if self.post_only:
            body["postOnly"] = True
        if self.reduce_only:
            body["reduceOnly"] = True
        if self.client_id is not None:
            if not 0 <= self.client_id < 2**32:
                raise ValueError("clientId must be a uint32")
            body["clientId"] = self.client_id
        return body


def _decimal(row: Mapping[str, Any], *path: str) -> Decimal:
    value: Any = row
    for key in path:
        value = value[key]
    return Decimal(str(value))


class BackpackRest:
    def __init__(
        self,
        http: VenueHttp,
        signer: BackpackSigner | None = None,
        *,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.http = http
        self.signer = signer
        self._wall_ms = wall_ms
        self.clock_offset_ms = 0

    async def __aenter__(self) -> BackpackRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def timestamp(self) -> int:
        return self._wall_ms() + self.clock_offset_ms

    # -- public --------------------------------------------------------------------------------

    async def server_time(self) -> int:
        payload = await self.http.get_json("/api/v1/time")
        try:
            return int(payload)
        except (TypeError, ValueError):
            raise DataError(f"{VENUE}: /api/v1/time returned {str(payload)[:60]!r}") from None

    async def sync_time(self) -> int:
        """Measure the server clock's offset (mid-point of the request) and sign with it."""
        before = self._wall_ms()
        server = await self.server_time()
        after = self._wall_ms()
        self.clock_offset_ms = server - (before + after) // 2
        return self.clock_offset_ms

    async def markets(self) -> dict[str, Market]:
        rows = await self.http.get_json("/api/v1/markets")
        out: dict[str, Market] = {}
        for row in rows if isinstance(rows, list) else []:
            try:
                filters = row["filters"]
                min_price = filters["price"].get("minPrice")
                interval = row.get("fundingInterval")
                out[row["symbol"]] = Market(
                    row["symbol"],
                    _decimal(filters, "price", "tickSize"),
                    _decimal(filters, "quantity", "stepSize"),
                    _decimal(filters, "quantity", "minQuantity"),
                    Decimal(str(min_price)) if min_price is not None else None,
                    int(interval) if isinstance(interval, int) and interval > 0 else None,
                )
            except (KeyError, TypeError, ArithmeticError, ValueError):
                continue  # one odd market never hides the others
        return out

    async def market(self, symbol: str) -> Market:
        markets = await self.markets()
        if symbol not in markets:
            near = [s for s in markets if s.split("_")[0] == symbol.split("_")[0]][:5]
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UnknownSymbolError(VENUE, f"no market {symbol!r}{hint}")
        return markets[symbol]

    async def depth(self, symbol: str, limit: int = 1000) -> dict[str, Any]:
        payload = await self.http.get_json("/api/v1/depth", {"symbol": symbol, "limit": limit})
        try:
            return {
                "last_update_id": int(payload["lastUpdateId"]),
                "bids": [(float(p), float(q)) for p, q in payload["bids"]],
                "asks": [(float(p), float(q)) for p, q in payload["asks"]],
                "ts": int(payload.get("timestamp") or 0),
            }
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{VENUE}: malformed depth for {symbol}") from None

    async def mark_price(self, symbol: str) -> dict[str, Any] | None:
        rows = await self.http.get_json("/api/v1/markPrices", {"symbol": symbol})
        for row in rows if isinstance(rows, list) else []:
            if row.get("symbol") == symbol:
                return {
                    "mark_price": float(row["markPrice"]),
                    "index_price": float(row.get("indexPrice") or 0) or None,
                    "funding_rate": float(row.get("fundingRate") or 0),
                    "next_funding_ts": int(row.get("nextFundingTimestamp") or 0) or None,
                }
        return None

    # -- signed --------------------------------------------------------------------------------

    async def _signed(
        self,
        method: str,
        path: str,
        instruction: str,
        params: Mapping[str, Any] | None = None,
        *,
        body: Any = None,
        batch: Sequence[Mapping[str, Any]] | None = None,
    ) -> Any:
        if self.signer is None:
            raise LiqError(f"{VENUE}: {instruction} needs API keys")
        ts = self.timestamp()
        if batch is not None:
            headers = self.signer.batch_headers(instruction, batch, ts)
            payload: Any = list(batch)
        else:
            headers = self.signer.headers(instruction, params if body is None else body, ts)
            payload = body
        if method == "GET":
            return await self.http.request_json(method, path, params=params, headers=headers)
        return await self.http.request_json(method, path, json=payload, headers=headers)

    async def execute_order(self, order: OrderRequest) -> dict[str, Any]:
        return await self._signed("POST", "/api/v1/order", "orderExecute", body=order.body())

    async def execute_orders(self, orders: Sequence[OrderRequest]) -> list[dict[str, Any]]:
        """Up to 50 orders in one request (one signature over every order's group)."""
        items = [o.body() for o in orders]
        out: list[dict[str, Any]] = []
        for start in range(0, len(items), 50):
            chunk = items[start : start + 50]
            result = await self._signed("POST", "/api/v1/orders", "orderExecute", batch=chunk)
            out.extend(result if isinstance(result, list) else [])
        return out

    async def cancel_order(
        self, symbol: str, *, order_id: str | None = None, client_id: int | None = None
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {"symbol": symbol}
        if order_id is not None:
            body["orderId"] = order_id
        elif client_id is not None:
            body["clientId"] = client_id
        else:
            raise ValueError("cancel_order needs order_id or client_id")
        try:
            return await self._signed("DELETE", "/api/v1/order", "orderCancel", body=body)
        except OrderNotFound:
            return None  # already gone: filled or cancelled

    async def cancel_all(self, symbol: str) -> list[dict[str, Any]]:
        result = await self._signed(
            "DELETE", "/api/v1/orders", "orderCancelAll", body={"symbol": symbol}
        )
        return result if isinstance(result, list) else []

    async def open_orders(self, symbol: str) -> list[dict[str, Any]]:
        result = await self._signed(
            "GET", "/api/v1/orders", "orderQueryAll", {"symbol": symbol, "marketType": "PERP"}
        )
        return result if isinstance(result, list) else []

    async def position(self, symbol: str) -> dict[str, Any] | None:
        """The open position, or None when flat (Backpack answers 404)."""
        try:
            rows = await self._signed(
                "GET", "/api/v1/position", "positionQuery", {"symbol": symbol}
            )
        except ExchangeError as exc:
            if exc.status == 404:
                return None
            raise
        for row in rows if isinstance(rows, list) else [rows]:
            if isinstance(row, dict) and row.get("symbol") == symbol:
                qty = float(row.get("netQuantity") or 0)
                if qty == 0:
                    return None
                return {
                    "qty": qty,
                    "entry_price": float(row.get("entryPrice") or 0),
                    "mark_price": float(row.get("markPrice") or 0),
                    "liquidation_price": float(row.get("estLiquidationPrice") or 0) or None,
                    "realized_pnl": float(row.get("pnlRealized") or 0),
                    "unrealized_pnl": float(row.get("pnlUnrealized") or 0),
                    "funding": float(row.get("cumulativeFundingPayment") or 0),
                }
        return None

    async def fills(
        self,
        symbol: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 1000,
        offset: int = 0,
        sort_direction: str = "Asc",
    ) -> list[dict[str, Any]]:
        """One page of the account's fills, oldest first by default (the venue's default is
        newest first, under which offsets shift as new fills arrive)."""
        params: dict[str, Any] = {"symbol": symbol, "limit": limit, "marketType": "PERP",
                                  "sortDirection": sort_direction}  # fmt: skip
        if start_ms is not None:
            params["from"] = start_ms
        if end_ms is not None:
            params["to"] = end_ms
        if offset:
            params["offset"] = offset
        result = await self._signed("GET", "/wapi/v1/history/fills", "fillHistoryQueryAll", params)
        return result if isinstance(result, list) else []

    async def balances(self) -> dict[str, Any]:
        result = await self._signed("GET", "/api/v1/capital", "balanceQuery")
        return result if isinstance(result, dict) else {}

    async def collateral(self) -> dict[str, Any]:
        result = await self._signed("GET", "/api/v1/capital/collateral", "collateralQuery")
        return result if isinstance(result, dict) else {}

    async def funding_payments(self, symbol: str, limit: int = 100) -> list[dict[str, Any]]:
        result = await self._signed(
            "GET",
            "/wapi/v1/history/funding",
            "fundingHistoryQueryAll",
            {"symbol": symbol, "limit": limit},
        )
        return result if isinstance(result, list) else []


def backpack_rest(
    signer: BackpackSigner | None = None,
    base_url: str | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = asyncio.sleep,
    **kwargs: Any,
) -> BackpackRest:
    budget = RateBudget("backpack-rest", REQUESTS_PER_MINUTE, 60.0, clock=clock, sleep=sleep)
    http = VenueHttp(
        VENUE,
        base_url or url("LIQ_BACKPACK_REST_URL"),
        budgets=[budget],
        error_parser=parse_error,
        clock=clock,
        sleep=sleep,
        **kwargs,
    )
    return BackpackRest(http, signer)
