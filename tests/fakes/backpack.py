"""A fake Backpack Exchange on 127.0.0.1: REST and WebSocket, faithful to TRADING-VENUES.md §1/§8.

- Every signed request is verified: the string is rebuilt from the received body (or query) as
  §1.2 says (instruction first, sorted keys, lowercase booleans, batch groups), checked with the
  public key in ``X-API-Key`` (which must be a registered key), the window must be ≤ 60000 and
  the request not expired (``now > X-Timestamp + X-Window`` -> 401 ``INVALID_CLIENT_REQUEST``
  "Request has expired"); a string "True"/"False" where a boolean belongs is refused.
- A small matching engine: the test sets the book (``set_book``); limit orders that would cross
  fill against it (taker) unless post-only (400 ``INVALID_ORDER`` "Order would immediately match
  and take liquidity"); resting orders fill when the test prints a trade through them
  (``trade``), as maker; ``/position`` answers 404 when flat; decimals are strings.
- WebSocket (``ws_url``): ``{"method":"SUBSCRIBE","params":[...]}``; public ``depth.<s>`` and
  ``bookTicker.<s>`` pushes from the test (``push_depth`` keeps ``U``/``u`` contiguous unless told
  to skip), private ``account.orderUpdate[.<s>]`` and ``account.positionUpdate`` need the
  signature array and receive the engine's events; payload timestamps are microseconds.
- Records: ``requests`` (method, path, status), ``orders`` by id, ``rejected`` signatures.
  ``clock_skew_ms`` shifts the server clock (client clock drift tests).
- Public prints: ``trade`` also publishes ``trade.<s>`` (what ``liq mm --paper`` fills from),
  ``push_mark`` a ``markPrice.<s>``. On subscribing to ``account.positionUpdate`` an open position
  is sent as a snapshot without ``e``, as the venue does.
- Faults: ``hang`` (method, path) pairs are never answered (a write with an unknown outcome),
  ``fail_next[(method, path)] = (status, code, message)`` answers one request with that error,
  ``kick_private()`` drops every connection holding a private stream, ``private_delay_s``
  delays every private push (REST answers overtake the fill events).
- Fill history (``GET /wapi/v1/history/fills``): every fill is logged (``fill_log``) whether or not
  a stream delivered it; served filtered by ``symbol``/``from``/``to``, sorted by
  ``sortDirection`` (default newest first, as the venue) and paged by ``offset``/``limit``
  (default 100, at most 1000).
  ``fail_history = (status, code, message)`` fails every history request until cleared.
- A cut private stream: ``cut_private()`` drops the private connections and loses every private
  push (kept in ``lost_private``) until ``restore_private()``; ``redeliver_lost()`` sends the lost
  pushes late (a stream that replays after a reconnect).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve

from liqcli.exchanges.backpack.auth import batch_signing_string, signing_string, verify

_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            503: "Service Unavailable"}  # fmt: skip

INSTRUCTIONS = {
    ("POST", "/api/v1/order"): "orderExecute",
    ("POST", "/api/v1/orders"): "orderExecute",
    ("DELETE", "/api/v1/order"): "orderCancel",
    ("DELETE", "/api/v1/orders"): "orderCancelAll",
    ("GET", "/api/v1/order"): "orderQuery",
    ("GET", "/api/v1/orders"): "orderQueryAll",
    ("GET", "/api/v1/position"): "positionQuery",
    ("GET", "/wapi/v1/history/fills"): "fillHistoryQueryAll",
    ("GET", "/api/v1/capital"): "balanceQuery",
    ("GET", "/api/v1/capital/collateral"): "collateralQuery",
}
BOOLEAN_FIELDS = {"postOnly", "reduceOnly", "autoLend", "autoBorrow", "autoLendRedeem"}


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def _d(x: Any) -> str:
    return format(Decimal(str(x)).normalize(), "f")


@dataclass
class FakeOrder:
    id: str
    client_id: int | None
    symbol: str
    side: str  # Bid | Ask
    order_type: str
    price: Decimal | None
    quantity: Decimal
    post_only: bool
    reduce_only: bool
    executed: Decimal = Decimal(0)
    status: str = "New"
    created_at: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "symbol": self.symbol,
            "side": self.side,
            "orderType": self.order_type,
            "timeInForce": "GTC",
            "price": _d(self.price) if self.price is not None else None,
            "quantity": _d(self.quantity),
            "executedQuantity": _d(self.executed),
            "executedQuoteQuantity": "0",
            "status": self.status,
            "selfTradePrevention": "RejectTaker",
            "postOnly": self.post_only,
            "reduceOnly": self.reduce_only,
            "createdAt": self.created_at,
        }
        if self.client_id is not None:
            out["clientId"] = self.client_id
        return out


@dataclass
class FakeBackpack:
    api_keys: set[str] = field(default_factory=set)
    symbol: str = "SOL_USDC_PERP"
    tick: str = "0.01"
    step: str = "0.01"
    min_qty: str = "0.01"
    maker_fee: Decimal = Decimal("0.0002")
    taker_fee: Decimal = Decimal("0.0005")
    clock_skew_ms: int = 0

    def __post_init__(self) -> None:
        self.bids: list[tuple[Decimal, Decimal]] = [(Decimal("99.99"), Decimal("10"))]
        self.asks: list[tuple[Decimal, Decimal]] = [(Decimal("100.01"), Decimal("10"))]
        self.orders: dict[str, FakeOrder] = {}
        self.position_qty = Decimal(0)
        self.entry_price = Decimal(0)
        self.fill_log: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, int]] = []
        self.rejected: list[str] = []
        self.update_id = 1000
        self._ids = itertools.count(111051090663277568)
        self._trade_ids = itertools.count(1)
        self._subscribers: dict[ServerConnection, set[str]] = {}
        self.hang: set[tuple[str, str]] = set()
        self.private_delay_s = 0.0
        self.refuse_private = False  # refuse private subscriptions (as for a revoked key)
        self._late: set[asyncio.Task[None]] = set()
        # the most the account could have been long / short at any instant: position plus
        # every resting order of that side (what fills together could reach)
        self.max_long_exposure = Decimal(0)
        self.max_short_exposure = Decimal(0)
        self.fail_next: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.fail_history: tuple[int, str, str] | None = None
        self.private_cut = False
        self.lost_private: list[tuple[str, dict[str, Any]]] = []
        self._http: asyncio.Server | None = None
        self._ws: Any = None
        self.http_port = self.ws_port = 0

    # ---------------------------------------------------------------- lifecycle

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    async def __aenter__(self) -> FakeBackpack:
        self._http = await asyncio.start_server(self._serve_http, "127.0.0.1", 0)
        self.http_port = self._http.sockets[0].getsockname()[1]
        self._ws = await serve(self._serve_ws, "127.0.0.1", 0)
        self.ws_port = self._ws.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None
        self._http.close()
        self._ws.close()
        with contextlib.suppress(Exception):
            await self._ws.wait_closed()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.clock_skew_ms

    # ---------------------------------------------------------------- test helpers

    def set_book(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        self.bids = sorted(((Decimal(p), Decimal(q)) for p, q in bids), reverse=True)
        self.asks = sorted((Decimal(p), Decimal(q)) for p, q in asks)

    def open_orders(self) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.status in ("New", "PartiallyFilled")]

    def _track_exposure(self) -> None:
        resting = {"Bid": Decimal(0), "Ask": Decimal(0)}
        for o in self.open_orders():
            if not o.reduce_only:
                resting[o.side] += o.quantity - o.executed
        self.max_long_exposure = max(self.max_long_exposure, self.position_qty + resting["Bid"])
        self.max_short_exposure = max(self.max_short_exposure, -self.position_qty + resting["Ask"])

    async def trade(self, price: str, qty: str, *, buyer_maker: bool = True) -> None:
        """A print at ``price``: resting orders it trades through fill as maker (fully); also a
        public ``trade.<s>`` push (``m``: the buyer was the maker, i.e. the taker sold)."""
        p = Decimal(price)
        now_us = self.now_ms() * 1000
        await self._publish(
            f"trade.{self.symbol}",
            {"e": "trade", "E": now_us, "s": self.symbol, "p": price, "q": qty,
             "b": "1", "a": "2", "t": next(self._trade_ids), "T": now_us - 1, "m": buyer_maker},
        )  # fmt: skip
        for order in list(self.open_orders()):
            assert order.price is not None
            if (order.side == "Bid" and p < order.price) or (
                order.side == "Ask" and p > order.price
            ):
                await self._fill(order, order.quantity - order.executed, order.price, maker=True)

    async def push_depth(
        self,
        bids: list[tuple[str, str]],
        asks: list[tuple[str, str]],
        *,
        skip: int = 0,
    ) -> None:
        """A ``depth.<s>`` diff; ``skip`` > 0 leaves a gap in the ``U``/``u`` sequence."""
        first = self.update_id + 1 + skip
        self.update_id = first
        frame = {
            "e": "depth",
            "E": self.now_ms() * 1000,
            "s": self.symbol,
            "a": [list(a) for a in asks],
            "b": [list(b) for b in bids],
            "U": first,
            "u": first,
            "T": self.now_ms() * 1000 - 1,
        }
        await self._publish(f"depth.{self.symbol}", frame)

    async def push_mark(self, mark: str, funding: str = "0.0001") -> None:
        now_us = self.now_ms() * 1000
        frame = {"e": "markPrice", "E": now_us, "s": self.symbol, "p": mark, "f": funding,
                 "i": mark, "n": (self.now_ms() // 3_600_000 + 1) * 3_600_000_000, "T": now_us}  # fmt: skip
        await self._publish(f"markPrice.{self.symbol}", frame)

    async def push_position(self) -> None:
        """A positionUpdate with the fake's position as it stands (tests move it behind the
        client's back: a fill it never heard of)."""
        update = {"e": "positionAdjusted", "E": self.now_ms() * 1000, "s": self.symbol,
                  "q": _d(self.position_qty), "B": _d(self.entry_price), "T": self.now_ms() * 1000}  # fmt: skip
        await self._publish(f"account.positionUpdate.{self.symbol}", update)

    async def kick_private(self) -> None:
        """Drop every connection that holds a private (``account.``) stream."""
        for ws, streams in list(self._subscribers.items()):
            if any(s.startswith("account.") for s in streams):
                ws.transport.abort()

    async def cut_private(self) -> None:
        """The private stream goes down: connections dropped, private pushes lost until
        ``restore_private()`` (fills still happen and reach the fill history)."""
        self.private_cut = True
        await self.kick_private()

    def restore_private(self) -> None:
        self.private_cut = False

    async def redeliver_lost(self) -> None:
        lost, self.lost_private = self.lost_private, []
        for stream, data in lost:
            await self._send(stream, data)

    async def push_book_ticker(self, bid: str, bid_qty: str, ask: str, ask_qty: str) -> None:
        frame = {
            "e": "bookTicker",
            "E": self.now_ms() * 1000,
            "s": self.symbol,
            "a": ask,
            "A": ask_qty,
            "b": bid,
            "B": bid_qty,
            "u": str(self.update_id),
            "T": self.now_ms() * 1000 - 1,
        }
        await self._publish(f"bookTicker.{self.symbol}", frame)

    # ---------------------------------------------------------------- HTTP

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = b""
                if length := int(headers.get("content-length", "0")):
                    body = await reader.readexactly(length)
                status, payload = await self._answer(method, target, headers, body)
                raw = b"" if payload is None else orjson.dumps(payload)
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
                )
                writer.write(head.encode() + raw)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        parts = urlsplit(target)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if (method, path) in self.hang:
            await asyncio.sleep(3600)  # the caller's timeout ends it: outcome unknown
        if path == "/wapi/v1/history/fills" and self.fail_history is not None:
            status, code, message = self.fail_history
            self.requests.append((method, path, status))
            return status, {"code": code, "message": message}
        if (method, path) in self.fail_next:
            status, code, message = self.fail_next.pop((method, path))
            self.requests.append((method, path, status))
            return status, {"code": code, "message": message}
        try:
            data = orjson.loads(body) if body else None
            instruction = INSTRUCTIONS.get((method, path))
            if instruction is not None:
                self._verify(instruction, headers, query if method == "GET" else data)
            status, payload = await self._route(method, path, query, data)
        except _Reject as exc:
            status, payload = exc.status, {"code": exc.code, "message": exc.message}
        except orjson.JSONDecodeError:
            status, payload = 400, {"code": "INVALID_CLIENT_REQUEST", "message": "Invalid JSON"}
        self.requests.append((method, path, status))
        return status, payload

    def _verify(self, instruction: str, headers: dict[str, str], params: Any) -> None:
        key = headers.get("x-api-key", "")
        signature = headers.get("x-signature", "")
        try:
            ts = int(headers.get("x-timestamp", ""))
            window = int(headers.get("x-window", "5000"))
        except ValueError:
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "Invalid X-Timestamp header") from None
        if key not in self.api_keys:
            raise _Reject(401, "UNAUTHORIZED", "Invalid API key")
        if not 0 < window <= 60_000:
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "Invalid X-Window header")
        if self.now_ms() > ts + window:
            raise _Reject(401, "INVALID_CLIENT_REQUEST", "Request has expired")
        items = params if isinstance(params, list) else [params or {}]
        for item in items:
            for name in BOOLEAN_FIELDS & set(item):
                if not isinstance(item[name], bool) and item[name] not in ("true", "false"):
                    raise _Reject(
                        400, "INVALID_CLIENT_REQUEST", f"Invalid {name}: expected a boolean"
                    )
        if isinstance(params, list):
            message = batch_signing_string(instruction, params, ts, window)
        else:
            message = signing_string(instruction, params or {}, ts, window)
        if not verify(key, message, signature):
            self.rejected.append(message)
            raise _Reject(401, "INVALID_CLIENT_REQUEST", "Invalid signature")

    async def _route(
        self, method: str, path: str, query: dict[str, str], data: Any
    ) -> tuple[int, Any]:
        if (method, path) == ("GET", "/api/v1/time"):
            return 200, self.now_ms()
        if (method, path) == ("GET", "/api/v1/markets"):
            return 200, [self._market_json()]
        if (method, path) == ("GET", "/api/v1/depth"):
            return 200, {
                "asks": [[_d(p), _d(q)] for p, q in self.asks],
                "bids": [[_d(p), _d(q)] for p, q in self.bids],
                "lastUpdateId": str(self.update_id),
                "timestamp": self.now_ms(),
            }
        if (method, path) == ("POST", "/api/v1/order"):
            return 200, await self._execute(data)
        if (method, path) == ("POST", "/api/v1/orders"):
            out = []
            for item in data:
                try:
                    out.append({**(await self._execute(item)), "operation": "Ok"})
                except _Reject as exc:
                    out.append({"code": exc.code, "message": exc.message, "operation": "Err"})
            return 200, out
        if (method, path) == ("DELETE", "/api/v1/order"):
            order = self._find(data)
            if order is None or order.status not in ("New", "PartiallyFilled"):
                raise _Reject(404, "RESOURCE_NOT_FOUND", "Not Found")
            order.status = "Cancelled"
            await self._order_event("orderCancelled", order)
            return 200, order.to_json()
        if (method, path) == ("DELETE", "/api/v1/orders"):
            cancelled = []
            for order in self.open_orders():
                if order.symbol == data.get("symbol"):
                    order.status = "Cancelled"
                    await self._order_event("orderCancelled", order)
                    cancelled.append(order.to_json())
            return 200, cancelled
        if (method, path) == ("GET", "/api/v1/orders"):
            return 200, [o.to_json() for o in self.open_orders() if o.symbol == query.get("symbol")]
        if (method, path) == ("GET", "/api/v1/position"):
            if self.position_qty == 0:
                raise _Reject(404, "RESOURCE_NOT_FOUND", "Not Found")
            return 200, [self._position_json()]
        if (method, path) == ("GET", "/wapi/v1/history/fills"):
            return 200, self._fill_history(query)
        if (method, path) == ("GET", "/api/v1/capital"):
            return 200, {"USDC": {"available": "10000", "locked": "0", "staked": "0"}}
        raise _Reject(404, "RESOURCE_NOT_FOUND", f"no route {method} {path}")

    def _fill_history(self, query: dict[str, str]) -> list[dict[str, Any]]:
        try:
            lo = int(query.get("from", 0))
            hi = int(query.get("to", 2**62))
            limit = int(query.get("limit", 100))
            offset = int(query.get("offset", 0))
        except ValueError:
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "Invalid query") from None
        if not 0 < limit <= 1000 or offset < 0:
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "Invalid limit or offset")
        rows = [
            r for r in self.fill_log
            if r["symbol"] == query.get("symbol", r["symbol"]) and lo <= r["_ms"] <= hi
        ]  # fmt: skip
        rows.sort(
            key=lambda r: (r["_ms"], r["tradeId"]), reverse=query.get("sortDirection") != "Asc"
        )
        page = rows[offset : offset + limit]
        return [{k: v for k, v in r.items() if k != "_ms"} for r in page]

    def _market_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "baseSymbol": self.symbol.split("_")[0],
            "quoteSymbol": "USDC",
            "marketType": "PERP",
            "filters": {
                "price": {"minPrice": self.tick, "maxPrice": None, "tickSize": self.tick},
                "quantity": {
                    "minQuantity": self.min_qty,
                    "maxQuantity": None,
                    "stepSize": self.step,
                },
            },
            "fundingInterval": 3_600_000,
            "orderBookState": "Open",
            "visible": True,
        }

    def _position_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "netQuantity": _d(self.position_qty),
            "entryPrice": _d(self.entry_price),
            "markPrice": _d((self.bids[0][0] + self.asks[0][0]) / 2)
            if self.bids and self.asks
            else "0",
            "estLiquidationPrice": "0",
            "pnlRealized": "0",
            "pnlUnrealized": "0",
            "cumulativeFundingPayment": "0",
        }

    def _find(self, data: dict[str, Any]) -> FakeOrder | None:
        if "orderId" in data:
            return self.orders.get(str(data["orderId"]))
        for order in self.orders.values():
            if order.client_id == data.get("clientId") and order.status in (
                "New",
                "PartiallyFilled",
            ):
                return order
        return None

    async def _execute(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("symbol") != self.symbol:
            raise _Reject(400, "INVALID_SYMBOL", "Invalid symbol")
        side = data.get("side")
        if side not in ("Bid", "Ask"):
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "Invalid side")
        qty = Decimal(str(data["quantity"]))
        if qty < Decimal(self.min_qty) or qty % Decimal(self.step):
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "Quantity decimal too long")
        price = Decimal(str(data["price"])) if data.get("price") is not None else None
        if price is not None and price % Decimal(self.tick):
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "Price decimal too long")
        client_id = data.get("clientId")
        if client_id is not None and not (isinstance(client_id, int) and 0 <= client_id < 2**32):
            raise _Reject(400, "INVALID_CLIENT_REQUEST", "clientId must be a uint32")
        reduce_only = bool(data.get("reduceOnly"))
        if reduce_only:
            direction = 1 if side == "Bid" else -1
            if self.position_qty * direction >= 0:
                raise _Reject(400, "INVALID_ORDER", "Reduce only order not reduced")
            qty = min(qty, abs(self.position_qty))
        opposite = self.asks if side == "Bid" else self.bids
        crosses = bool(opposite) and (
            price is None or (price >= opposite[0][0] if side == "Bid" else price <= opposite[0][0])
        )
        if data.get("postOnly") and crosses:
            raise _Reject(400, "INVALID_ORDER", "Order would immediately match and take liquidity")
        order = FakeOrder(
            str(next(self._ids)),
            client_id,
            self.symbol,
            side,
            data.get("orderType", "Limit"),
            price,
            qty,
            bool(data.get("postOnly")),
            reduce_only,
            created_at=self.now_ms(),
        )
        self.orders[order.id] = order
        await self._order_event("orderAccepted", order)
        if crosses:
            for level_price, level_qty in list(opposite):
                if price is not None and (
                    level_price > price if side == "Bid" else level_price < price
                ):
                    break
                take = min(level_qty, order.quantity - order.executed)
                if take <= 0:
                    break
                await self._fill(order, take, level_price, maker=False)
        if order.order_type == "Market" and order.status != "Filled":
            order.status = "Cancelled"
        self._track_exposure()
        return order.to_json()

    async def _fill(self, order: FakeOrder, qty: Decimal, price: Decimal, *, maker: bool) -> None:
        order.executed += qty
        order.status = "Filled" if order.executed >= order.quantity else "PartiallyFilled"
        signed = qty if order.side == "Bid" else -qty
        new = self.position_qty + signed
        if self.position_qty == 0 or (self.position_qty > 0) == (signed > 0):
            self.entry_price = (self.entry_price * abs(self.position_qty) + price * qty) / abs(new)
        elif new != 0 and (new > 0) != (self.position_qty > 0):
            self.entry_price = price
        self.position_qty = new
        if self.position_qty == 0:
            self.entry_price = Decimal(0)
        self._track_exposure()
        fee = qty * price * (self.maker_fee if maker else self.taker_fee)
        trade_id = next(self._trade_ids)
        ms = self.now_ms()
        self.fill_log.append(
            {
                "tradeId": trade_id,
                "orderId": order.id,
                "clientId": str(order.client_id) if order.client_id is not None else None,
                "symbol": order.symbol,
                "side": order.side,
                "price": _d(price),
                "quantity": _d(qty),
                "fee": _d(fee),
                "feeSymbol": "USDC",
                "isMaker": maker,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000))
                + f".{ms % 1000:03d}Z",
                "_ms": ms,  # for filtering; not served
            }
        )
        await self._order_event("orderFill", order, fill=(trade_id, qty, price, maker, fee))
        update = {
            "e": "positionAdjusted",
            "E": self.now_ms() * 1000,
            "s": self.symbol,
            "q": _d(self.position_qty),
            "B": _d(self.entry_price),
            "T": self.now_ms() * 1000,
        }
        await self._publish("account.positionUpdate", update)
        await self._publish(f"account.positionUpdate.{self.symbol}", update)

    async def _order_event(self, event: str, order: FakeOrder, fill: tuple | None = None) -> None:
        frame: dict[str, Any] = {
            "e": event,
            "E": self.now_ms() * 1000,
            "s": order.symbol,
            "S": order.side,
            "o": order.order_type.upper(),
            "f": "GTC",
            "q": _d(order.quantity),
            "p": _d(order.price) if order.price is not None else None,
            "X": order.status,
            "i": order.id,
            "z": _d(order.executed),
            "T": self.now_ms() * 1000,
            "O": "USER",
            "y": order.post_only,
            "r": order.reduce_only,
        }
        if order.client_id is not None:
            frame["c"] = order.client_id
        if fill is not None:
            trade_id, qty, price, maker, fee = fill
            frame.update(t=trade_id, l=_d(qty), L=_d(price), m=maker, n=_d(fee), N="USDC")
        await self._publish(f"account.orderUpdate.{order.symbol}", frame)
        await self._publish("account.orderUpdate", frame)

    # ---------------------------------------------------------------- WebSocket

    async def _serve_ws(self, ws: ServerConnection) -> None:
        self._subscribers[ws] = set()
        try:
            async for message in ws:
                request = orjson.loads(message)
                if request.get("method") == "SUBSCRIBE":
                    for stream in request.get("params", []):
                        if stream.startswith("account."):
                            sig = request.get("signature") or []
                            ok = not self.refuse_private and (
                                len(sig) == 4
                                and sig[0] in self.api_keys
                                and self.now_ms() <= int(sig[2]) + int(sig[3])
                                and verify(
                                    sig[0],
                                    signing_string("subscribe", None, int(sig[2]), int(sig[3])),
                                    sig[1],
                                )
                            )
                            if not ok:
                                await ws.send(
                                    orjson.dumps(
                                        {
                                            "error": {"code": 4006, "message": "Invalid signature"},
                                            "id": None,
                                        }
                                    ).decode()
                                )
                                continue
                        self._subscribers[ws].add(stream)
                        if stream.startswith("account.positionUpdate") and self.position_qty:
                            snapshot = {"E": self.now_ms() * 1000, "s": self.symbol,
                                        "q": _d(self.position_qty), "B": _d(self.entry_price),
                                        "T": self.now_ms() * 1000}  # fmt: skip
                            await ws.send(
                                orjson.dumps({"stream": stream, "data": snapshot}).decode()
                            )
        except Exception:
            return
        finally:
            self._subscribers.pop(ws, None)

    async def _publish(self, stream: str, data: dict[str, Any]) -> None:
        if self.private_cut and stream.startswith("account."):
            self.lost_private.append((stream, data))
            return
        if self.private_delay_s and stream.startswith("account."):
            # a slow private stream: REST answers overtake the fill events
            delay, self_ = self.private_delay_s, self

            async def later() -> None:
                await asyncio.sleep(delay)
                await self_._send(stream, data)

            self._late.add(task := asyncio.create_task(later()))
            task.add_done_callback(self._late.discard)
            return
        await self._send(stream, data)

    async def _send(self, stream: str, data: dict[str, Any]) -> None:
        text = orjson.dumps({"stream": stream, "data": data}).decode()
        for ws, streams in list(self._subscribers.items()):
            if stream in streams:
                with contextlib.suppress(Exception):
                    await ws.send(text)

    async def wait_subscribed(self, stream: str, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(stream in s for s in self._subscribers.values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"nobody subscribed to {stream}")
            await asyncio.sleep(0.005)


def new_keypair(seed: bytes | None = None) -> tuple[str, str]:
    """(api key, secret) in Backpack's base64 format, from a fixed or random 32-byte seed."""
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = seed or os.urandom(32)
    key = Ed25519PrivateKey.from_private_bytes(raw)
    public = key.public_key().public_bytes_raw()
    return base64.b64encode(public).decode(), base64.b64encode(raw).decode()
