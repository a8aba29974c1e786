"""Backpack REST client against the fake Backpack server that verifies every signature."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from liqcli.errors import ExchangeError, UnknownSymbolError
from liqcli.exchanges.backpack.auth import BackpackSigner
from liqcli.exchanges.backpack.rest import OrderRequest, PostOnlyRejected, backpack_rest
from tests.fakes.backpack import FakeBackpack, new_keypair

KEY, SECRET = new_keypair(bytes(range(32)))
SYM = "SOL_USDC_PERP"


@pytest.fixture
async def venue():
    async with FakeBackpack(api_keys={KEY}) as fake:
        fake.set_book([("99.99", "5"), ("99.98", "5")], [("100.01", "2"), ("100.02", "5")])
        yield fake


def client(fake, **kw):
    return backpack_rest(BackpackSigner(KEY, SECRET), fake.rest_url, max_retries=0, **kw)


async def test_markets_filters_and_rounding(venue):
    async with client(venue) as bp:
        market = await bp.market(SYM)
        assert (market.tick_size, market.step_size, market.min_quantity) == (
            Decimal("0.01"),
            Decimal("0.01"),
            Decimal("0.01"),
        )
        assert market.round_price(100.0149, side="Bid") == Decimal("100.01")
        assert market.round_price(100.0101, side="Ask") == Decimal("100.02")
        assert market.round_quantity(0.1299) == Decimal("0.12")
        with pytest.raises(UnknownSymbolError, match="did you mean SOL_USDC_PERP"):
            await bp.market("SOL_USDT_PERP")


async def test_post_only_resting_then_crossing_is_rejected(venue):
    async with client(venue) as bp:
        order = await bp.execute_order(
            OrderRequest(SYM, "Bid", "0.10", price="99.50", post_only=True, client_id=7)
        )
        assert order["status"] == "New" and order["clientId"] == 7 and order["postOnly"] is True
        with pytest.raises(PostOnlyRejected, match="immediately match"):
            await bp.execute_order(OrderRequest(SYM, "Bid", "0.10", price="100.01", post_only=True))
        assert [o["id"] for o in await bp.open_orders(SYM)] == [order["id"]]


async def test_fills_positions_and_cancel_all(venue):
    async with client(venue) as bp:
        assert await bp.position(SYM) is None  # 404 when flat
        taken = await bp.execute_order(OrderRequest(SYM, "Bid", "3", price="100.02"))
        assert taken["status"] == "Filled" and taken["executedQuantity"] == "3"
        pos = await bp.position(SYM)
        assert pos["qty"] == 3.0
        assert pos["entry_price"] == pytest.approx((2 * 100.01 + 1 * 100.02) / 3)
        fills = await bp.fills(SYM)
        assert [(f["price"], f["quantity"], f["isMaker"]) for f in fills] == [
            ("100.01", "2", False),
            ("100.02", "1", False),
        ]
        batch = await bp.execute_orders(
            [
                OrderRequest(SYM, "Ask", "0.5", price="101.00", post_only=True, reduce_only=True),
                OrderRequest(SYM, "Ask", "0.5", price="101.50", post_only=True, reduce_only=True),
            ]
        )
        assert [b["operation"] for b in batch] == ["Ok", "Ok"]
        await venue.trade("101.20", "1")  # through the 101.00 ask only
        assert (await bp.position(SYM))["qty"] == 2.5
        cancelled = await bp.cancel_all(SYM)
        assert len(cancelled) == 1 and venue.open_orders() == []
        assert await bp.cancel_order(SYM, order_id=cancelled[0]["id"]) is None  # already gone


async def test_a_skewed_server_clock_expires_requests_until_synced(venue):
    venue.clock_skew_ms = 30_000  # the server is 30 s ahead: our 5 s window has long passed
    async with client(venue) as bp:
        with pytest.raises(ExchangeError, match="Request has expired"):
            await bp.open_orders(SYM)
        offset = await bp.sync_time()
        assert 29_000 < offset < 31_000
        assert await bp.open_orders(SYM) == []


async def test_wrong_signature_and_uppercase_booleans_are_refused(venue):
    other_key, other_secret = new_keypair(bytes(range(1, 33)))
    venue.api_keys.add(other_key)
    async with client(venue) as bp:
        # headers signed by another key than the one announced
        bad = BackpackSigner(other_key, other_secret).headers(
            "orderQueryAll", {"symbol": SYM}, bp.timestamp()
        )
        bad["X-API-Key"] = KEY
        async with httpx.AsyncClient(base_url=venue.rest_url) as raw:
            answer = await raw.get("/api/v1/orders", params={"symbol": SYM}, headers=bad)
            assert answer.status_code == 401 and answer.json()["message"] == "Invalid signature"
            body = {
                "symbol": SYM,
                "side": "Bid",
                "orderType": "Limit",
                "price": "99.00",
                "quantity": "1",
                "postOnly": "True",
            }
            signer = BackpackSigner(KEY, SECRET)
            answer = await raw.post(
                "/api/v1/order",
                json=body,
                headers=signer.headers("orderExecute", body, bp.timestamp()),
            )
            assert answer.status_code == 400 and "boolean" in answer.json()["message"]
            good = {**body, "postOnly": True}
            stale = signer.headers("orderExecute", good, bp.timestamp() - 10_000)  # window 5 s
            answer = await raw.post("/api/v1/order", json=good, headers=stale)
            assert answer.status_code == 401 and answer.json()["message"] == "Request has expired"
        assert venue.open_orders() == []
