"""Backpack streams from the fake server: depth diffs keep a contiguous L2Book equal to the
server's, a gap is detected, private order updates arrive signed."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect

from liqcli.exchanges.backpack import stream as bp
from liqcli.exchanges.backpack.auth import BackpackSigner
from liqcli.exchanges.backpack.rest import OrderRequest, backpack_rest
from liqcli.trading.book import L2Book
from tests.fakes.backpack import FakeBackpack, new_keypair

KEY, SECRET = new_keypair(bytes(range(32)))
SYM = "SOL_USDC_PERP"


def test_parsers_real_formats():
    depth = bp.parse(
        '{"stream":"depth.SOL_USDC","data":{"e":"depth","E":1694687965941000,"s":"SOL_USDC",'
        '"a":[["18.70","0.000"]],"b":[["18.67","0.832"],["18.68","0.000"]],"U":94978271,'
        '"u":94978271,"T":1694687965940999}}'
    )
    assert depth.ts == 1694687965940 and depth.first_update_id == depth.update_id == 94978271
    assert depth.bids == ((18.67, 0.832), (18.68, 0.0)) and depth.asks == ((18.70, 0.0),)
    top = bp.parse(
        '{"stream":"bookTicker.SOL_USDC","data":{"e":"bookTicker","E":1694687965941000,'
        '"s":"SOL_USDC","a":"18.70","A":"1.000","b":"18.67","B":"2.000",'
        '"u":"111063070525358080","T":1694687965940999}}'
    )
    assert (top.bid_price, top.bid_qty, top.ask_price, top.ask_qty) == (18.67, 2.0, 18.70, 1.0)
    fill = bp.parse(
        orjson.dumps(
            {
                "stream": "account.orderUpdate.SOL_USDC_PERP",
                "data": {
                    "e": "orderFill",
                    "E": 1694687692980000,
                    "s": "SOL_USDC_PERP",
                    "c": 123,
                    "S": "Bid",
                    "o": "LIMIT",
                    "f": "GTC",
                    "q": "1.0",
                    "p": "20",
                    "X": "PartiallyFilled",
                    "i": "1111343026172067",
                    "t": 567,
                    "l": "0.1",
                    "z": "0.1",
                    "Z": "2",
                    "L": "20",
                    "m": True,
                    "n": "0.002",
                    "N": "USDC",
                    "V": "RejectTaker",
                    "T": 1694687692989999,
                    "O": "USER",
                    "y": True,
                    "r": False,
                },
            }
        )
    )
    assert (fill.event, fill.client_id, fill.fill_qty, fill.fee, fill.maker) == (
        "orderFill",
        123,
        0.1,
        0.002,
        True,
    )
    for bad in ("{", '{"stream":"depth.X","data":{"U":"x"}}', '{"stream":1,"data":{}}', "[]"):
        assert bp.parse(bad) is None


async def test_depth_stream_keeps_the_book_equal_to_the_servers_and_detects_a_gap():
    async with FakeBackpack(api_keys={KEY}) as fake:
        fake.set_book([("99.99", "5"), ("99.98", "5")], [("100.01", "2"), ("100.02", "5")])
        async with connect(fake.ws_url) as ws, backpack_rest(None, fake.rest_url) as rest:
            await ws.send(bp.subscribe([f"depth.{SYM}"]))
            await fake.wait_subscribed(f"depth.{SYM}")
            book = L2Book(SYM, "backpack", rule="contiguous")
            book.load(bp.snapshot_from_rest(SYM, await rest.depth(SYM)))
            await fake.push_depth([("99.99", "0"), ("99.97", "3")], [("100.01", "1")])
            await fake.push_depth([], [("100.03", "4")])
            for _ in range(2):
                assert book.apply(bp.parse(await ws.recv())) == "ok"
            assert book.levels("bid", 5) == [(99.98, 5.0), (99.97, 3.0)]
            assert book.levels("ask", 5) == [(100.01, 1.0), (100.02, 5.0), (100.03, 4.0)]
            await fake.push_depth([("99.96", "1")], [], skip=1)  # one diff lost
            assert book.apply(bp.parse(await ws.recv())) == "gap"
            assert book.counters.gaps == 1 and not book.synced


async def test_private_order_updates_need_a_valid_signature():
    async with FakeBackpack(api_keys={KEY}) as fake:
        signer = BackpackSigner(KEY, SECRET)
        async with connect(fake.ws_url) as ws, backpack_rest(signer, fake.rest_url) as rest:
            stream = f"account.orderUpdate.{SYM}"
            bad = signer.ws_signature(rest.timestamp())
            bad[1] = signer.sign("instruction=subscribe&timestamp=1&window=5000")
            await ws.send(bp.subscribe([stream], bad))
            refusal = orjson.loads(await asyncio.wait_for(ws.recv(), 2))
            assert refusal["error"]["message"] == "Invalid signature"
            await ws.send(bp.subscribe([stream], signer.ws_signature(rest.timestamp())))
            await fake.wait_subscribed(stream)
            await rest.execute_order(OrderRequest(SYM, "Bid", "1", price="99.00", client_id=5))
            update = bp.parse(await asyncio.wait_for(ws.recv(), 2))
            assert (update.event, update.client_id, update.status) == ("orderAccepted", 5, "New")
            await fake.trade("98.50", "1")
            update = bp.parse(await asyncio.wait_for(ws.recv(), 2))
            assert update.event == "orderFill" and update.fill_qty == 1.0 and update.maker
            assert update.fill_price == pytest.approx(99.0)
