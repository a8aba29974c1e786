"""Fake OKX and Bybit instrument REST endpoints, in the venues' real response shapes.

The routes are plain functions ``(path, query) -> (status, body)`` so the fake WebSocket servers
(tests/fakes/ws_servers.py) serve them on the same port as their WebSocket endpoint: a test then
points both ``LIQ_OKX_REST_URL`` and ``LIQ_OKX_WS_URL`` at one fake venue.

- OKX ``GET /api/v5/public/instruments?instType=SWAP|FUTURES`` ->
  ``{"code":"0","msg":"","data":[{instId, ctVal, ctValCcy, ctType, ...}]}``.
- Bybit ``GET /v5/market/instruments-info?category=linear[&cursor=..]`` ->
  ``{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[..],"nextPageCursor":".."}}``,
  ``page_size`` rows per page, the cursor being an opaque token.

Faults: ``fail_next(n, status)`` answers the next ``n`` requests with ``status`` and a non-JSON
body; every request is recorded in ``requests``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

JsonReply = tuple[int, Any]


def okx_instrument(
    inst_id: str, ct_val: str | float, *, inst_type: str | None = None, state: str = "live"
) -> dict[str, Any]:
    """An OKX instruments row: linear when the quote is USDT/USDC (ctValCcy = base), inverse when
    it is USD (ctValCcy = USD)."""
    base, quote = inst_id.split("-")[:2]
    inverse = quote == "USD"
    return {
        "instType": inst_type or ("SWAP" if inst_id.endswith("-SWAP") else "FUTURES"),
        "instId": inst_id,
        "uly": f"{base}-{quote}",
        "instFamily": f"{base}-{quote}",
        "settleCcy": base if inverse else quote,
        "ctVal": str(ct_val),
        "ctMult": "1",
        "ctValCcy": "USD" if inverse else base,
        "ctType": "inverse" if inverse else "linear",
        "lotSz": "1",
        "tickSz": "0.1",
        "state": state,
        "listTime": "1606468572000",
    }


def bybit_instrument(
    symbol: str, *, status: str = "Trading", contract_type: str = "LinearPerpetual"
) -> dict[str, Any]:
    quote = "USDC" if symbol.endswith("USDC") else "USDT"
    return {
        "symbol": symbol,
        "contractType": contract_type,
        "status": status,
        "baseCoin": symbol.removesuffix(quote),
        "quoteCoin": quote,
        "settleCoin": quote,
        "launchTime": "1584230400000",
        "priceFilter": {"minPrice": "0.10", "maxPrice": "1999999.80", "tickSize": "0.10"},
        "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": "0.001", "qtyStep": "0.001"},
    }


class _Routes:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self._failures: list[int] = []

    def fail_next(self, n: int, status: int = 503) -> None:
        self._failures.extend([status] * n)

    def handle(self, target: str) -> JsonReply | None:
        """``(status, body)`` for a REST path, None when the path is not REST (a WebSocket)."""
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        reply = self.route(parts.path, query)
        if reply is None:
            return None
        self.requests.append(target)
        if self._failures:
            return self._failures.pop(0), "<html>upstream error</html>"
        return reply

    def route(self, path: str, query: dict[str, str]) -> JsonReply | None:
        raise NotImplementedError


class OkxInstrumentRoutes(_Routes):
    def __init__(self, instruments: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__()
        self.instruments = [dict(row) for row in instruments]

    def route(self, path: str, query: dict[str, str]) -> JsonReply | None:
        if path != "/api/v5/public/instruments":
            return None
        inst_type = query.get("instType")
        if inst_type not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            return 400, {"code": "51000", "msg": "Parameter instType error", "data": []}
        rows = [row for row in self.instruments if row["instType"] == inst_type]
        return 200, {"code": "0", "msg": "", "data": rows}


class BybitInstrumentRoutes(_Routes):
    def __init__(
        self, instruments: Sequence[Mapping[str, Any]] = (), *, page_size: int = 2
    ) -> None:
        super().__init__()
        self.instruments = [dict(row) for row in instruments]
        self.page_size = page_size

    def route(self, path: str, query: dict[str, str]) -> JsonReply | None:
        if path != "/v5/market/instruments-info":
            return None
        if query.get("category") != "linear":
            return 200, {"retCode": 10001, "retMsg": "params error: category", "result": {}}
        start = 0
        if query.get("cursor"):
            start = int(base64.b64decode(query["cursor"]).decode().split("=")[1])
        end = start + min(self.page_size, int(query.get("limit", 500)))
        page = self.instruments[start:end]
        cursor = (
            base64.b64encode(f"offset={end}".encode()).decode()
            if end < len(self.instruments)
            else ""
        )
        result = {"category": "linear", "list": page, "nextPageCursor": cursor}
        return 200, {"retCode": 0, "retMsg": "OK", "result": result, "time": 1700000000000}
