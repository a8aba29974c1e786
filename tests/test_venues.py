"""Venue parsers on real-format messages (shapes from the venues' docs), symbol and side
mapping, OKX contract conversion, Bybit subscription chunking, instrument loaders over REST."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from liqcli.core.events import AggTrade, Liquidation
from liqcli.errors import DataError, ExchangeError, UsageError
from liqcli.exchanges import okx
from liqcli.exchanges.binance import stream as binance
from liqcli.exchanges.bybit import stream as bybit
from liqcli.exchanges.http import VenueHttp
from tests.fakes.venue_rest import bybit_instrument, okx_instrument
from tests.fakes.ws_servers import FakeBybit, FakeOkx

RECV = 1_700_000_000_999

# --- Binance ----------------------------------------------------------------------------------

FORCE_ORDER = {
    "stream": "btcusdt@forceOrder",
    "data": {
        "e": "forceOrder",
        "E": 1568014460893,
        "o": {
            "s": "BTCUSDT",
            "S": "SELL",
            "o": "LIMIT",
            "f": "IOC",
            "q": "0.014",
            "p": "9910",
            "ap": "9910.5",
            "X": "FILLED",
            "l": "0.014",
            "z": "0.012",
            "T": 1568014460893,
        },
    },
}


def test_binance_sell_order_is_a_long_liquidation_with_filled_notional() -> None:
    [liq] = binance.parse_message(FORCE_ORDER, RECV)
    assert liq == Liquidation(
        exchange="binance",
        symbol="BTCUSDT",
        side="long",
        price=9910.5,
        qty=0.012,
        notional_usd=9910.5 * 0.012,
        ts=1568014460893,
        received_ts=RECV,
    )


def test_binance_buy_order_is_a_short_liquidation_and_numbers_may_be_json_numbers() -> None:
    event = {
        "e": "forceOrder",
        "E": 1,
        "newKey": {"x": 1},
        "o": {
            "s": "ethusdt",
            "S": "BUY",
            "q": 2,
            "p": 2000.5,
            "ap": 2001,
            "z": 2,
            "T": 1700000000123,
        },
    }
    [liq] = binance.parse_message(event)  # bare event, not wrapped
    assert (liq.side, liq.symbol, liq.price, liq.qty, liq.ts) == (
        "short",
        "ETHUSDT",
        2001.0,
        2.0,
        1700000000123,
    )
    assert liq.notional_usd == pytest.approx(4002.0)


def test_binance_notional_falls_back_to_price_times_quantity_when_nothing_filled() -> None:
    event = orjson.loads(orjson.dumps(FORCE_ORDER))
    event["data"]["o"].update({"z": "0", "ap": "0.00", "X": "NEW"})
    [liq] = binance.parse_message(event)
    assert (liq.price, liq.qty) == (9910.0, 0.014)
    assert liq.notional_usd == pytest.approx(9910 * 0.014)


def test_binance_agg_trade_and_other_events() -> None:
    agg = {
        "stream": "btcusdt@aggTrade",
        "data": {
            "e": "aggTrade",
            "E": 123456789,
            "s": "BTCUSDT",
            "a": 5933014,
            "p": "0.001",
            "q": "100",
            "f": 100,
            "l": 105,
            "T": 123456785,
            "m": True,
        },
    }
    assert binance.parse_message(agg) == [
        AggTrade("binance", "BTCUSDT", 5933014, 123456785, 0.001, 100.0, True)
    ]
    kline = {"stream": "btcusdt@kline_1m", "data": {"e": "kline", "k": {}}}
    assert binance.parse_message(kline) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("S"),
        lambda o: o.update(S="HOLD"),
        lambda o: o.update(z="0", p="abc"),
        lambda o: o.update(z="0", q="-1"),
        lambda o: o.update(ap="nan"),
    ],
)
def test_binance_malformed_force_order_raises_data_error(mutate) -> None:
    event = orjson.loads(orjson.dumps(FORCE_ORDER))
    mutate(event["data"]["o"])
    with pytest.raises(DataError, match="binance"):
        binance.parse_message(event)


def test_binance_stream_names_and_url(monkeypatch) -> None:
    assert binance.liquidation_streams([]) == ["!forceOrder@arr"]
    assert binance.liquidation_streams(["BTCUSDT", "ethusdt", "BTCUSDT"]) == [
        "btcusdt@forceOrder",
        "ethusdt@forceOrder",
    ]
    assert binance.liquidation_streams([f"S{i}USDT" for i in range(5)], max_streams=4) == [
        "!forceOrder@arr"
    ]
    assert binance.agg_trade_streams(["BTCUSDT"]) == ["btcusdt@aggTrade"]
    monkeypatch.setenv("LIQ_BINANCE_WS_URL", "ws://127.0.0.1:1234/market/")
    url = binance.combined_stream_url(["btcusdt@forceOrder", "btcusdt@aggTrade"])
    assert url == "ws://127.0.0.1:1234/market/stream?streams=btcusdt@forceOrder/btcusdt@aggTrade"
    with pytest.raises(UsageError, match="200"):
        binance.combined_stream_url([f"s{i}@aggTrade" for i in range(201)])


# --- OKX --------------------------------------------------------------------------------------

OKX_INSTRUMENTS = {
    "BTC-USDT-SWAP": okx.OkxInstrument("BTC-USDT-SWAP", "SWAP", 0.01, "BTC", inverse=False),
    "BTC-USD-SWAP": okx.OkxInstrument("BTC-USD-SWAP", "SWAP", 100.0, "USD", inverse=True),
    "ETH-USD-250328": okx.OkxInstrument("ETH-USD-250328", "FUTURES", 10.0, "USD", inverse=True),
}


def okx_push(inst_id: str, *details: dict[str, Any], inst_type: str = "SWAP") -> dict[str, Any]:
    family = "-".join(inst_id.split("-")[:2])
    return {
        "arg": {"channel": "liquidation-orders", "instType": inst_type},
        "data": [
            {
                "details": list(details),
                "instFamily": family,
                "instId": inst_id,
                "instType": inst_type,
                "uly": family,
            }
        ],
    }


def okx_detail(
    side: str, pos_side: str, px: Any, sz: Any, ts: Any = "1723892524781"
) -> dict[str, Any]:
    return {
        "bkLoss": "0",
        "bkPx": px,
        "ccy": "",
        "posSide": pos_side,
        "side": side,
        "sz": sz,
        "ts": ts,
    }


@pytest.mark.parametrize(
    ("inst_id", "symbol"),
    [
        ("BTC-USDT-SWAP", "BTCUSDT"),
        ("BTC-USD-SWAP", "BTCUSD"),
        ("ETH-USDC-SWAP", "ETHUSDC"),
        ("BTC-USD-250328", "BTCUSD_250328"),
        ("BTC-USDT-250328", "BTCUSDT_250328"),
        ("btc-usdt", "BTCUSDT"),
    ],
)
def test_okx_symbol_normalisation(inst_id: str, symbol: str) -> None:
    assert okx.normalise_symbol(inst_id) == symbol


def test_okx_side_mapping() -> None:
    assert okx.liquidated_side("sell", "long") == "long"
    assert okx.liquidated_side("buy", "short") == "short"
    assert okx.liquidated_side("sell", "net") == "long"  # net mode: selling closes a long
    assert okx.liquidated_side("buy", "net") == "short"
    with pytest.raises(DataError):
        okx.liquidated_side("", "net")


def test_okx_linear_contracts_convert_with_ct_val() -> None:
    message = okx_push("BTC-USDT-SWAP", okx_detail("sell", "long", "60000.5", "13"))
    [liq] = okx.parse_liquidations(message, OKX_INSTRUMENTS, RECV)
    assert liq.symbol == "BTCUSDT" and liq.venue_symbol == "BTC-USDT-SWAP"
    assert liq.side == "long" and liq.ts == 1723892524781 and liq.received_ts == RECV
    assert liq.qty == pytest.approx(0.13)  # 13 contracts x 0.01 BTC
    assert liq.notional_usd == pytest.approx(0.13 * 60000.5)


def test_okx_inverse_contracts_are_worth_ct_val_usd() -> None:
    message = okx_push(
        "BTC-USD-SWAP",
        okx_detail("buy", "short", 25000, 5, ts=1723892524782),  # JSON numbers
        okx_detail("sell", "net", "20000", "2"),
    )
    first, second = okx.parse_liquidations(message, OKX_INSTRUMENTS)
    assert first.side == "short" and first.symbol == "BTCUSD"
    assert first.notional_usd == pytest.approx(500.0)  # 5 contracts x 100 USD
    assert first.qty == pytest.approx(0.02)  # 500 USD / 25000
    assert second.side == "long" and second.notional_usd == pytest.approx(200.0)
    dated = okx_push("ETH-USD-250328", okx_detail("sell", "long", "2500", "3"), inst_type="FUTURES")
    [liq] = okx.parse_liquidations(dated, OKX_INSTRUMENTS)
    assert liq.symbol == "ETHUSD_250328" and liq.notional_usd == pytest.approx(30.0)
    assert liq.qty == pytest.approx(30.0 / 2500)


def test_okx_unknown_instruments_are_skipped_and_listed() -> None:
    message = okx_push("NEW-USDT-SWAP", okx_detail("sell", "long", "1", "1"))
    message["data"].append(
        okx_push("BTC-USDT-SWAP", okx_detail("sell", "long", "1", "1"))["data"][0]
    )
    assert okx.instrument_ids(message) == ["NEW-USDT-SWAP", "BTC-USDT-SWAP"]
    assert [liq.symbol for liq in okx.parse_liquidations(message, OKX_INSTRUMENTS)] == ["BTCUSDT"]


@pytest.mark.parametrize(
    "detail",
    [
        {"bkPx": "1", "sz": "1", "side": "sell", "posSide": "long"},  # no ts
        okx_detail("sell", "long", "x", "1"),
        okx_detail("sell", "long", "1", "0"),
        okx_detail("hold", "net", "1", "1"),
    ],
)
def test_okx_malformed_details_raise_data_error(detail: dict[str, Any]) -> None:
    with pytest.raises(DataError, match="okx"):
        okx.parse_liquidations(okx_push("BTC-USDT-SWAP", detail), OKX_INSTRUMENTS)


def test_okx_parse_instruments_and_error_body() -> None:
    payload = {
        "code": "0",
        "msg": "",
        "data": [
            okx_instrument("BTC-USDT-SWAP", "0.01"),
            okx_instrument("BTC-USD-SWAP", 100),
            {**okx_instrument("PRE-USDT-SWAP", ""), "state": "preopen"},  # no ctVal yet
        ],
    }
    parsed = okx.parse_instruments(payload)
    assert parsed == {
        "BTC-USDT-SWAP": okx.OkxInstrument("BTC-USDT-SWAP", "SWAP", 0.01, "BTC", inverse=False),
        "BTC-USD-SWAP": okx.OkxInstrument("BTC-USD-SWAP", "SWAP", 100.0, "USD", inverse=True),
    }
    with pytest.raises(ExchangeError, match="Parameter instType error"):
        okx.parse_instruments({"code": "51000", "msg": "Parameter instType error", "data": []})


def test_okx_subscription_and_inst_types() -> None:
    assert orjson.loads(okx.subscribe_message(["SWAP"])) == {
        "op": "subscribe",
        "args": [{"channel": "liquidation-orders", "instType": "SWAP"}],
    }
    assert okx.inst_types_for([]) == ("SWAP", "FUTURES")
    assert okx.inst_types_for(["BTCUSDT"]) == ("SWAP",)
    assert okx.inst_types_for(["BTCUSD_250328"]) == ("SWAP", "FUTURES")


async def test_okx_instruments_load_cache_ttl_and_refresh_rate(tmp_path) -> None:
    rows = [okx_instrument("BTC-USDT-SWAP", "0.01"), okx_instrument("BTC-USD-250328", "100")]
    now = [1000.0]
    cache = tmp_path / "_cache" / "okx_instruments.json"
    async with FakeOkx(instruments=rows) as server, VenueHttp("okx", server.rest_url) as http:

        def make() -> okx.OkxInstruments:
            return okx.OkxInstruments(
                http, cache_path=cache, ttl_s=100, min_refresh_s=10, clock=lambda: now[0]
            )

        first = make()
        await first.load()
        assert set(first) == {"BTC-USDT-SWAP", "BTC-USD-250328"} and first["BTC-USD-250328"].inverse
        assert len(server.rest.requests) == 2  # SWAP and FUTURES
        assert cache.is_file()

        second = make()
        await second.load()  # fresh cache file: no request
        assert len(server.rest.requests) == 2 and dict(second) == dict(first)

        assert await second.refresh() is False  # within min_refresh_s
        server.rest.instruments.append(okx_instrument("NEW-USDT-SWAP", "10"))
        now[0] += 11
        assert await second.refresh() is True
        assert "NEW-USDT-SWAP" in second and len(server.rest.requests) == 4

        now[0] += 200  # past the TTL: a new process fetches again
        third = make()
        await third.load()
        assert len(server.rest.requests) == 6

        cache.write_text("{not json")
        fourth = make()
        await fourth.load()  # a corrupt cache is ignored, not fatal
        assert len(fourth) == 3


# --- Bybit ------------------------------------------------------------------------------------

BYBIT_PUSH = {
    "topic": "allLiquidation.ROSEUSDT",
    "type": "snapshot",
    "ts": 1739502303204,
    "data": [{"T": 1739502302929, "s": "ROSEUSDT", "S": "Sell", "v": "20000", "p": "0.04499"}],
}


def test_bybit_sell_is_a_short_and_buy_is_a_long_liquidation() -> None:
    [liq] = bybit.parse_liquidations(BYBIT_PUSH, RECV)
    assert liq == Liquidation(
        exchange="bybit",
        symbol="ROSEUSDT",
        side="short",
        price=0.04499,
        qty=20000.0,
        notional_usd=0.04499 * 20000,
        ts=1739502302929,
        received_ts=RECV,
    )
    buy = {
        **BYBIT_PUSH,
        "extra": 1,
        "data": [{"T": 1739502302930, "s": "ROSEUSDT", "S": "Buy", "v": 5, "p": 0.05, "new": "x"}],
    }
    [liq] = bybit.parse_liquidations(buy)
    assert liq.side == "long" and liq.qty == 5.0 and math.isclose(liq.notional_usd, 0.25)


def test_bybit_other_topics_ignored_and_malformed_rejected() -> None:
    assert bybit.parse_liquidations({"topic": "tickers.BTCUSDT", "data": {}}) == []
    bad = {**BYBIT_PUSH, "data": [{"T": 1, "s": "X", "S": "Up", "v": "1", "p": "1"}]}
    with pytest.raises(DataError, match="bybit"):
        bybit.parse_liquidations(bad)
    with pytest.raises(DataError, match="bybit"):
        bybit.parse_liquidations({**BYBIT_PUSH, "data": [{"s": "X", "S": "Buy", "v": "1"}]})


def test_bybit_subscriptions_respect_count_and_length_limits() -> None:
    topics = bybit.topics([f"S{i}USDT" for i in range(25)])
    messages = [orjson.loads(m) for m in bybit.subscribe_messages(topics)]
    assert [len(m["args"]) for m in messages] == [10, 10, 5]
    assert [t for m in messages for t in m["args"]] == topics
    long_topics = [f"allLiquidation.{'X' * 5000}{i}" for i in range(9)]
    chunks = [orjson.loads(m)["args"] for m in bybit.subscribe_messages(long_topics)]
    assert all(len(orjson.dumps(c)) <= 21_000 for c in chunks)
    assert len(chunks) == 3 and [t for c in chunks for t in c] == long_topics


@given(
    st.lists(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=3000),
        max_size=60,
    ),
    st.integers(min_value=1, max_value=40),
)
def test_bybit_subscription_chunks_cover_topics_in_order_within_limits(names, max_args) -> None:
    topics = bybit.topics(names)
    messages = bybit.subscribe_messages(topics, max_args=max_args)
    chunks = [orjson.loads(m)["args"] for m in messages]
    assert [t for c in chunks for t in c] == topics
    assert all(0 < len(c) <= max_args for c in chunks)
    # A chunk only exceeds the character limit when one topic alone does.
    assert all(len(orjson.dumps(c)) <= 21_000 or len(c) == 1 for c in chunks)


def test_bybit_instruments_page_filters_trading_linear_perpetuals() -> None:
    page = {
        "retCode": 0,
        "retMsg": "OK",
        "result": {
            "category": "linear",
            "list": [
                bybit_instrument("BTCUSDT"),
                bybit_instrument("OLDUSDT", status="Closed"),
                bybit_instrument("BTC-27DEC24", contract_type="LinearFutures"),
                bybit_instrument("ETHUSDC"),
            ],
            "nextPageCursor": "abc",
        },
    }
    assert bybit.parse_instruments_page(page) == (["BTCUSDT", "ETHUSDC"], "abc")
    with pytest.raises(ExchangeError, match="params error"):
        bybit.parse_instruments_page({"retCode": 10001, "retMsg": "params error", "result": {}})
    with pytest.raises(DataError):
        bybit.parse_instruments_page({"retCode": 0, "result": {}})


async def test_bybit_linear_perpetuals_follow_the_cursor() -> None:
    rows = [bybit_instrument(f"S{i}USDT") for i in range(5)] + [
        bybit_instrument("DEADUSDT", status="Delivering")
    ]
    async with (
        FakeBybit(instruments=rows, page_size=2) as server,
        VenueHttp("bybit", server.rest_url) as http,
    ):
        symbols = await bybit.linear_perpetuals(http)
        assert symbols == [f"S{i}USDT" for i in range(5)]
        assert len(server.rest.requests) == 3
        assert "cursor=" not in server.rest.requests[0] and "cursor=" in server.rest.requests[1]
