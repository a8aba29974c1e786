"""liqcli.services.streams end to end: scripted frames from fake Binance, OKX and Bybit servers
(WebSocket + instrument REST on 127.0.0.1) become exactly the expected Liquidation events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from liqcli.core.events import AggTrade, Liquidation
from liqcli.errors import LiqError, UsageError
from liqcli.exchanges.ws import WsTimings
from liqcli.services.streams import (
    LiquidationStream,
    StreamOptions,
    aggtrade_stream,
    binance_events,
    liquidation_stream,
)
from tests.fakes.venue_rest import bybit_instrument, okx_instrument
from tests.fakes.ws_servers import DROP, FakeBinance, FakeBybit, FakeOkx

pytestmark = pytest.mark.timeout(30)

NOW = 1_800_000_000_000
FAST = StreamOptions(
    timings=WsTimings(
        stale_timeout=2.0,
        backoff_initial=0.01,
        backoff_max=0.05,
        open_timeout=2.0,
        close_timeout=0.2,
    ),
    http_timeout=2.0,
    http_retries=0,
)


def force_order(symbol: str, side: str, qty: str, price: str, ts: int) -> dict[str, Any]:
    return {
        "e": "forceOrder",
        "E": ts + 5,
        "o": {
            "s": symbol,
            "S": side,
            "o": "LIMIT",
            "f": "IOC",
            "q": qty,
            "p": price,
            "ap": price,
            "X": "FILLED",
            "l": qty,
            "z": qty,
            "T": ts,
        },
    }


def okx_push(inst_id: str, side: str, pos_side: str, px: str, sz: str, ts: int) -> dict[str, Any]:
    return {
        "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
        "data": [
            {
                "instId": inst_id,
                "instFamily": inst_id.removesuffix("-SWAP"),
                "instType": "SWAP",
                "details": [
                    {
                        "side": side,
                        "posSide": pos_side,
                        "bkPx": px,
                        "sz": sz,
                        "bkLoss": "0",
                        "ccy": "",
                        "ts": str(ts),
                    }
                ],
            }
        ],
    }


def bybit_push(symbol: str, side: str, v: str, p: str, ts: int) -> dict[str, Any]:
    return {
        "topic": f"allLiquidation.{symbol}",
        "type": "snapshot",
        "ts": ts + 100,
        "data": [{"T": ts, "s": symbol, "S": side, "v": v, "p": p}],
    }


def liq(
    exchange: str,
    symbol: str,
    side: str,
    price: float,
    qty: float,
    notional: float,
    ts: int,
    venue_symbol: str = "",
) -> Liquidation:
    return Liquidation(exchange, symbol, side, price, qty, notional, ts, venue_symbol, NOW)  # type: ignore[arg-type]


def point_env_at(monkeypatch, binance=None, okx=None, bybit=None) -> None:
    if binance is not None:
        monkeypatch.setenv("LIQ_BINANCE_WS_URL", binance.ws_url)
    if okx is not None:
        monkeypatch.setenv("LIQ_OKX_WS_URL", okx.ws_url)
        monkeypatch.setenv("LIQ_OKX_REST_URL", okx.rest_url)
    if bybit is not None:
        monkeypatch.setenv("LIQ_BYBIT_WS_URL", bybit.ws_url)
        monkeypatch.setenv("LIQ_BYBIT_REST_URL", bybit.rest_url)


async def take(stream: Any, n: int, timeout: float = 10.0) -> list[Any]:
    out: list[Any] = []

    async def run() -> None:
        async for event in stream:
            out.append(event)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def nothing_more(stream: LiquidationStream, wait: float = 0.15) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.__anext__(), wait)


def rounded(events: list[Liquidation]) -> list[Liquidation]:
    # Conversions multiply floats: compare notional and qty to 9 significant digits.
    return sorted(
        (
            Liquidation(
                e.exchange,
                e.symbol,
                e.side,
                e.price,
                float(f"{e.qty:.9g}"),
                float(f"{e.notional_usd:.9g}"),
                e.ts,
                e.venue_symbol,
                e.received_ts,
            )
            for e in events
        ),
        key=lambda e: (e.exchange, e.ts),
    )


async def test_three_venues_merge_into_exactly_the_expected_liquidations(monkeypatch) -> None:
    t = 1_700_000_000_000
    fake_binance = FakeBinance(
        by_subscription={
            "btcusdt@forceOrder": [
                force_order("BTCUSDT", "SELL", "0.5", "60000", t + 1),
                force_order("BTCUSDT", "BUY", "0.25", "60100", t + 2),
            ],
            "ethusdt@forceOrder": [force_order("ETHUSDT", "SELL", "3", "3000", t + 3)],
        }
    )
    fake_okx = FakeOkx(
        instruments=[
            okx_instrument("BTC-USDT-SWAP", "0.01"),
            okx_instrument("ETH-USDT-SWAP", "0.1"),
            okx_instrument("SOL-USDT-SWAP", "1"),
            okx_instrument("BTC-USD-250328", "100"),
        ],
        by_subscription={
            "SWAP": [
                okx_push("BTC-USDT-SWAP", "sell", "long", "60000", "13", t + 10),
                okx_push("SOL-USDT-SWAP", "sell", "long", "150", "40", t + 11),  # not asked for
                okx_push("ETH-USDT-SWAP", "buy", "net", "3000", "7", t + 12),
            ]
        },
    )
    fake_bybit = FakeBybit(
        by_subscription={
            "allLiquidation.BTCUSDT": [bybit_push("BTCUSDT", "Buy", "0.2", "59900", t + 20)],
            "allLiquidation.ETHUSDT": [bybit_push("ETHUSDT", "Sell", "1.5", "3010", t + 21)],
        }
    )
    async with fake_binance, fake_okx, fake_bybit:
        point_env_at(monkeypatch, fake_binance, fake_okx, fake_bybit)
        stream = liquidation_stream(
            ["binance", "okx", "bybit"],
            ["btcusdt", "ETHUSDT"],
            options=FAST,
            wall_clock=lambda: NOW,
        )
        async with stream:
            got = await take(stream, 7)
            await nothing_more(stream)
            statuses = {v: s.to_dict() for v, s in stream.statuses.items()}
        assert rounded(got) == [
            liq("binance", "BTCUSDT", "long", 60000.0, 0.5, 30000.0, t + 1),
            liq("binance", "BTCUSDT", "short", 60100.0, 0.25, 15025.0, t + 2),
            liq("binance", "ETHUSDT", "long", 3000.0, 3.0, 9000.0, t + 3),
            liq("bybit", "BTCUSDT", "long", 59900.0, 0.2, 11980.0, t + 20),
            liq("bybit", "ETHUSDT", "short", 3010.0, 1.5, 4515.0, t + 21),
            liq("okx", "BTCUSDT", "long", 60000.0, 0.13, 7800.0, t + 10, "BTC-USDT-SWAP"),
            liq("okx", "ETHUSDT", "short", 3000.0, 0.7, 2100.0, t + 12, "ETH-USDT-SWAP"),
        ]
        assert {v: s["events"] for v, s in statuses.items()} == {"binance": 3, "okx": 2, "bybit": 2}
        assert all(s["state"] == "connected" and s["reconnects"] == 0 for s in statuses.values())
        assert all(s.state == "closed" for s in stream.statuses.values())
        # What went over the wire: per-symbol streams, OKX perpetuals only, one Bybit topic each.
        assert fake_binance.paths == [
            "/market/stream?streams=btcusdt@forceOrder/ethusdt@forceOrder"
        ]
        assert [k for _, k in fake_okx.subscriptions] == ["SWAP"]
        assert sorted(k for _, k in fake_bybit.subscriptions) == [
            "allLiquidation.BTCUSDT",
            "allLiquidation.ETHUSDT",
        ]


async def test_one_venue_down_never_stops_the_others(monkeypatch) -> None:
    t = 1_700_000_000_000
    fake_binance = FakeBinance(
        by_subscription={"btcusdt@forceOrder": [force_order("BTCUSDT", "SELL", "1", "50000", t)]}
    )
    fake_okx = FakeOkx(
        instruments=[okx_instrument("BTC-USDT-SWAP", "0.01")],
        by_subscription={
            "SWAP": [okx_push("BTC-USDT-SWAP", "sell", "long", "50000", "100", t + 1)]
        },
    )
    async with fake_binance, fake_okx:
        fake_okx.rest.fail_next(3, 503)  # the instruments endpoint is down for a while
        point_env_at(monkeypatch, fake_binance, fake_okx)
        monkeypatch.setenv("LIQ_BYBIT_WS_URL", "ws://127.0.0.1:9/v5/public/linear")  # nobody there
        async with liquidation_stream(
            ["binance", "okx", "bybit"], ["BTCUSDT"], options=FAST, wall_clock=lambda: NOW
        ) as stream:
            [first] = await take(stream, 1)
            assert first.exchange == "binance"
            [second] = await take(stream, 1)  # OKX starts once its REST recovers
            assert (second.exchange, second.qty) == ("okx", 1.0)
            assert len(fake_okx.rest.requests) == 4  # 3 failures, then SWAP
            bybit_status = stream.statuses["bybit"]
            await fake_binance.wait_until(lambda: bybit_status.state == "down")
            assert "connect failed" in (bybit_status.last_error or "")
            assert stream.statuses["binance"].state == "connected"


async def test_okx_start_up_failure_is_reported_in_its_status(monkeypatch) -> None:
    async with FakeOkx() as fake_okx:
        fake_okx.rest.fail_next(10_000, 503)
        point_env_at(monkeypatch, okx=fake_okx)
        async with liquidation_stream(["okx"], options=FAST) as stream:
            status = stream.statuses["okx"]
            await fake_okx.wait_until(lambda: len(fake_okx.rest.requests) >= 3)
            assert status.state == "down"
            assert "instruments" in (status.last_error or "") and "503" in (status.last_error or "")
            assert fake_okx.connections == 0  # no WebSocket before contract values are known


async def test_all_symbols_when_none_given(monkeypatch) -> None:
    t = 1_700_000_000_000
    rows = [bybit_instrument(s) for s in ("BTCUSDT", "ETHUSDT", "XRPUSDT")] + [
        bybit_instrument("OLDUSDT", status="Closed")
    ]
    fake_binance = FakeBinance(
        by_subscription={"!forceOrder@arr": [force_order("DOGEUSDT", "SELL", "1000", "0.1", t)]}
    )
    fake_okx = FakeOkx(
        instruments=[
            okx_instrument("BTC-USD-SWAP", "100"),
            okx_instrument("BTC-USD-250328", "100"),
        ],
        by_subscription={
            "FUTURES": [
                {
                    "arg": {"channel": "liquidation-orders", "instType": "FUTURES"},
                    "data": [
                        {
                            "instId": "BTC-USD-250328",
                            "instType": "FUTURES",
                            "details": [
                                {
                                    "side": "buy",
                                    "posSide": "short",
                                    "bkPx": "80000",
                                    "sz": "8",
                                    "ts": str(t + 1),
                                }
                            ],
                        }
                    ],
                }
            ]
        },
    )
    fake_bybit = FakeBybit(
        instruments=rows,
        page_size=2,
        by_subscription={
            "allLiquidation.XRPUSDT": [bybit_push("XRPUSDT", "Buy", "100", "0.5", t + 2)]
        },
    )
    async with fake_binance, fake_okx, fake_bybit:
        point_env_at(monkeypatch, fake_binance, fake_okx, fake_bybit)
        async with liquidation_stream(options=FAST, wall_clock=lambda: NOW) as stream:
            got = rounded(await take(stream, 3))
        assert got == [
            liq("binance", "DOGEUSDT", "long", 0.1, 1000.0, 100.0, t),
            liq("bybit", "XRPUSDT", "long", 0.5, 100.0, 50.0, t + 2),
            liq("okx", "BTCUSD_250328", "short", 80000.0, 0.01, 800.0, t + 1, "BTC-USD-250328"),
        ]
        assert fake_binance.paths == ["/market/stream?streams=!forceOrder@arr"]
        assert sorted(k for _, k in fake_okx.subscriptions) == ["FUTURES", "SWAP"]
        assert sorted(k for _, k in fake_bybit.subscriptions) == [
            "allLiquidation.BTCUSDT",
            "allLiquidation.ETHUSDT",
            "allLiquidation.XRPUSDT",
        ]
        assert len(fake_bybit.rest.requests) == 2  # two pages of two


async def test_okx_new_listing_refreshes_contract_values(monkeypatch, tmp_path) -> None:
    t = 1_700_000_000_000
    fake_okx = FakeOkx(instruments=[okx_instrument("BTC-USDT-SWAP", "0.01")])
    async with fake_okx:
        point_env_at(monkeypatch, okx=fake_okx)
        options = StreamOptions(
            timings=FAST.timings, http_retries=0, okx_refresh_s=0.0, data_dir=tmp_path
        )
        async with liquidation_stream(["okx"], options=options, wall_clock=lambda: NOW) as stream:
            await fake_okx.wait_until(lambda: fake_okx.subscriptions != [])
            fake_okx.rest.instruments.append(okx_instrument("NEW-USDT-SWAP", "10"))
            fake_okx.push_to("SWAP", okx_push("NEW-USDT-SWAP", "sell", "long", "2", "3", t))
            [event] = await take(stream, 1)
        assert event == liq("okx", "NEWUSDT", "long", 2.0, 30.0, 60.0, t, "NEW-USDT-SWAP")
        assert len(fake_okx.rest.requests) == 4  # SWAP+FUTURES at start, again for the listing
        assert (tmp_path / "_cache" / "okx_instruments.json").is_file()


async def test_reconnect_and_malformed_frames_inside_the_merged_stream(monkeypatch) -> None:
    t = 1_700_000_000_000
    pushes = [bybit_push("BTCUSDT", "Sell", "1", str(60000 + i), t + i) for i in range(6)]
    malformed = {"topic": "allLiquidation.BTCUSDT", "data": [{"s": "BTCUSDT", "S": "Buy"}]}
    script = [*pushes[:2], malformed, DROP, *pushes[2:4], DROP, *pushes[4:]]
    async with FakeBybit(by_subscription={"allLiquidation.BTCUSDT": script}) as fake_bybit:
        point_env_at(monkeypatch, bybit=fake_bybit)
        async with liquidation_stream(["bybit"], ["BTCUSDT"], options=FAST) as stream:
            got = await take(stream, 6)
            status = stream.statuses["bybit"]
            assert [e.price for e in got] == [60000.0 + i for i in range(6)]
            assert (status.reconnects, status.malformed, status.events) == (2, 1, 6)
        assert [e async for e in stream] == []  # a closed stream ends, it does not hang


async def test_every_venue_failing_ends_the_stream_with_one_error(monkeypatch) -> None:
    monkeypatch.setenv("LIQ_BYBIT_WS_URL", "not a url")
    with pytest.raises(LiqError, match=r"every venue failed: bybit: .*invalid WebSocket URL"):
        async with liquidation_stream(["bybit"], ["BTCUSDT"], options=FAST) as stream:
            await take(stream, 1)


def test_unknown_exchange_is_a_usage_error_before_any_network() -> None:
    with pytest.raises(UsageError, match="unknown exchange kraken"):
        liquidation_stream(["binance", "kraken"])
    with pytest.raises(UsageError):
        binance_events([], liquidations=True)


async def test_binance_events_and_aggtrade_stream(monkeypatch) -> None:
    t = 1_700_000_000_000
    agg = [
        {
            "e": "aggTrade",
            "E": t + i,
            "s": "BTCUSDT",
            "a": 100 + i,
            "p": "60000.5",
            "q": "0.01",
            "f": 1,
            "l": 2,
            "T": t + i,
            "m": i % 2 == 0,
        }
        for i in range(3)
    ]
    async with FakeBinance(
        by_subscription={
            "btcusdt@aggTrade": agg,
            "btcusdt@forceOrder": [force_order("BTCUSDT", "BUY", "2", "61000", t + 9)],
        }
    ) as fake:
        point_env_at(monkeypatch, binance=fake)
        async with binance_events(
            ["btcusdt"], timings=FAST.timings, wall_clock=lambda: NOW
        ) as stream:
            got = await take(stream, 4)
            assert stream.status.events == 4
        trades = [e for e in got if isinstance(e, AggTrade)]
        assert trades == [
            AggTrade("binance", "BTCUSDT", 100 + i, t + i, 60000.5, 0.01, i % 2 == 0)
            for i in range(3)
        ]
        assert [e for e in got if isinstance(e, Liquidation)] == [
            liq("binance", "BTCUSDT", "short", 61000.0, 2.0, 122000.0, t + 9)
        ]
        assert fake.paths[0] == "/market/stream?streams=btcusdt@forceOrder/btcusdt@aggTrade"

        async with aggtrade_stream("BTCUSDT", timings=FAST.timings) as stream:
            fake.push_to("btcusdt@aggTrade", {**agg[0], "a": 999})
            [trade] = await take(stream, 1)
            assert trade.trade_id == 999
        assert fake.paths[1] == "/market/stream?streams=btcusdt@aggTrade"


async def test_cancelling_the_consumer_closes_every_venue(monkeypatch) -> None:
    async with FakeBinance() as fake_binance, FakeBybit() as fake_bybit:
        point_env_at(monkeypatch, binance=fake_binance, bybit=fake_bybit)
        stream = liquidation_stream(["binance", "bybit"], ["BTCUSDT"], options=FAST)

        async def consume() -> None:
            async with stream:
                async for _ in stream:
                    pass

        task = asyncio.create_task(consume())
        await fake_binance.wait_until(
            lambda: all(s.state == "connected" for s in stream.statuses.values())
        )
        task.cancel()  # what Ctrl-C does to the command's coroutine
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(s.state == "closed" for s in stream.statuses.values())
        await fake_binance.wait_until(lambda: not fake_binance._live and not fake_bybit._live)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("liq-")]


async def test_binance_stream_closed_from_another_task_ends_its_consumer(monkeypatch) -> None:
    async with FakeBinance() as fake:
        point_env_at(monkeypatch, binance=fake)
        stream = aggtrade_stream("BTCUSDT", timings=FAST.timings)
        seen: list[Any] = []

        async def consume() -> None:
            async for event in stream:
                seen.append(event)

        task = asyncio.create_task(consume())
        await fake.wait_until(lambda: stream.status.state == "connected")
        await stream.aclose()
        await asyncio.wait_for(task, 2.0)
        assert seen == [] and stream.status.state == "closed"
        await fake.wait_until(lambda: not fake._live)
