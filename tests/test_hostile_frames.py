"""Hostile frames through the real WebSocket path (issue #13: items 3, 4, 7, 10, 11).

A seeded generator mixes valid events with malformed ones (wrong JSON types, NaN/Infinity,
overflowing notionals, timestamps from 1970 / 2100 / past 9999, empty symbols, structural junk)
and multi-event frames where good and bad events share a frame. Fake venue servers
(tests/fakes/ws_servers.py) play them over real WebSockets to the real ReconnectingWebSocket and
stream code. Every valid event must come out exactly once, nothing malformed may come out, the
venue must keep running, and ``VenueStatus.rejected`` must name each refusal with its count.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from liqcli.core.events import Liquidation
from liqcli.exchanges import okx as okx_venue
from liqcli.exchanges.ws import WsTimings
from liqcli.services import streams
from liqcli.services.streams import LiquidationStream, StreamOptions, liquidation_stream
from tests.fakes.venue_rest import bybit_instrument, okx_instrument
from tests.fakes.ws_servers import DROP, FakeBinance, FakeBybit, FakeOkx

pytestmark = pytest.mark.timeout(60)

NOW = 1_790_000_000_000  # the injected receive clock (2026-09)
DAY = 86_400_000
FAST = StreamOptions(
    timings=WsTimings(stale_timeout=5.0, backoff_initial=0.01, backoff_max=0.05, open_timeout=2.0),
    http_timeout=2.0,
    http_retries=0,
    okx_refresh_s=3600.0,
)
# Symbols are data: any non-empty string the venue sends is kept (#13.1).
ODD_SYMBOLS = ["币安人生USDT", "BTC/USDT", "../../ETC", "<b>X</b>", "1000PEPEUSDT"]
Key = tuple[str, int, float]  # (exchange, ts, price): unique per valid event in a run


@dataclass
class Plan:
    """What the venue is sent and what must come out."""

    steps: list[Any] = field(default_factory=list)
    expected: list[Key] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    garbage: int = 0


# Mutations of one event: (mutate the event in place, the reason it must be refused for).
Mutation = tuple[Callable[[dict[str, Any]], Any], str]


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d.__setitem__(key, value)


def _pop(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d.pop(key)


def _many(**values: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d.update(values)


TS_MUTATIONS: list[tuple[Any, str]] = [
    (4_102_444_800_000, "ts_future"),  # 2100
    (253_402_300_800_000, "ts_future"),  # past year 9999
    (NOW + DAY + 1, "ts_future"),
    (-1, "ts_past"),
    (1, "ts_past"),
    (1_700_000_000, "ts_past"),  # seconds, not milliseconds
    ("soon", "not_a_number"),
    (1.5, "not_a_number"),
    (True, "wrong_type"),
    (None, "missing_field"),  # popped below: no fallback time either
    ({"t": 1}, "wrong_type"),
]
SYMBOL_MUTATIONS: list[tuple[Any, str]] = [
    (None, "wrong_type"),
    (True, "wrong_type"),
    (123, "wrong_type"),
    ({"A": 1}, "wrong_type"),
    (["BTC"], "wrong_type"),
    ("", "bad_symbol"),
    ("   ", "bad_symbol"),
    ("X" * 65, "bad_symbol"),
]
NUMBER_MUTATIONS: list[tuple[Any, str]] = [
    (True, "wrong_type"),
    (None, "wrong_type"),
    ({"v": 1}, "wrong_type"),
    ("abc", "not_a_number"),
    ("", "not_a_number"),
    ("NaN", "not_finite"),
    ("Infinity", "not_finite"),
    ("-Infinity", "not_finite"),
    ("1e999", "not_finite"),
    ("0", "not_positive"),
    ("-5", "not_positive"),
    (-5, "not_positive"),
]


# -- Binance -----------------------------------------------------------------------------------


def binance_event(ts: int, price: float, qty: str = "0.5", symbol: str = "BTCUSDT") -> dict:
    return {
        "e": "forceOrder",
        "E": ts + 3,
        "o": {
            "s": symbol,
            "S": "SELL" if int(price) % 2 else "BUY",
            "o": "LIMIT",
            "f": "IOC",
            "q": qty,
            "p": str(price),
            "ap": str(price),
            "X": "FILLED",
            "l": qty,
            "z": qty,
            "T": ts,
        },
    }


def binance_mutations() -> list[Mutation]:
    out: list[Mutation] = []
    for value, reason in TS_MUTATIONS:
        if value is None:
            out.append((lambda e: (e["o"].pop("T"), e.pop("E")), reason))
        else:
            out.append((lambda e, v=value: e["o"].__setitem__("T", v), reason))
    for value, reason in SYMBOL_MUTATIONS:
        out.append((lambda e, v=value: e["o"].__setitem__("s", v), reason))
    for value, reason in NUMBER_MUTATIONS:
        # Nothing filled: the order price is used, and it is bad.
        out.append(
            (lambda e, v=value: e["o"].update(z="0", ap="0", p=v), reason)
            if reason != "not_positive" or value != "0"
            else (lambda e: e["o"].update(z="0", ap="0", q="0"), reason)
        )
    out += [
        (lambda e: e["o"].update(ap="NaN"), "not_finite"),
        (lambda e: e["o"].update(ap=True), "wrong_type"),
        (lambda e: e["o"].update(z="-1"), "not_positive"),  # never silently replaced
        (lambda e: e["o"].update(ap="1e200", z="1"), "price_out_of_range"),
        (lambda e: e["o"].update(ap="1e9", z="1e300"), "notional_out_of_range"),  # overflow: inf
        (lambda e: e["o"].update(ap="1000", z="1e300"), "notional_out_of_range"),  # ~1e303
        (lambda e: e["o"].update(ap="60000", z="2e8"), "notional_out_of_range"),  # 1.2e13 USD
        (lambda e: e["o"].update(ap="1e-12", z="1e-300"), "notional_out_of_range"),  # underflow
        (lambda e: e["o"].pop("S"), "missing_field"),
        (lambda e: e["o"].update(S="HOLD"), "bad_side"),
        (lambda e: e["o"].update(S=1), "wrong_type"),
        (lambda e: e.__setitem__("o", None), "bad_structure"),
        (lambda e: e.__setitem__("o", [1, 2]), "bad_structure"),
        (lambda e: e.pop("o"), "missing_field"),
    ]
    return out


def binance_plan(rng: random.Random, count: int) -> Plan:
    plan = Plan()
    mutations = binance_mutations()
    ts = NOW - 3_600_000
    price = 1000.0

    def valid() -> dict:
        nonlocal ts, price
        ts, price = ts + 1, price + 1
        symbol = rng.choice(["BTCUSDT", "ETHUSDT", *ODD_SYMBOLS])
        event = binance_event(ts, price, symbol=symbol)
        if rng.random() < 0.2:  # numbers as JSON numbers
            event["o"].update(p=price, ap=price, q=0.5, z=0.5)
        plan.expected.append(("binance", ts, price))
        return event

    def bad() -> dict:
        nonlocal ts, price
        ts, price = ts + 1, price + 1
        event = binance_event(ts, price)
        mutate, reason = rng.choice(mutations)
        mutate(event)
        plan.refusals[reason] += 1
        return event

    for i in range(count):
        roll = rng.random()
        if roll < 0.3:
            plan.steps.append({"stream": "!forceOrder@arr", "data": valid()})
        elif roll < 0.55:
            plan.steps.append({"stream": "!forceOrder@arr", "data": bad()})
        elif roll < 0.8:  # a batch mixing good and bad events (#13.11)
            batch = [valid() if rng.random() < 0.5 else bad() for _ in range(rng.randint(2, 6))]
            if rng.random() < 0.3:
                batch.insert(rng.randrange(len(batch) + 1), rng.choice([5, None, "x", []]))
                plan.refusals["bad_structure"] += 1
            plan.steps.append({"stream": "!forceOrder@arr", "data": batch})
        elif roll < 0.85:
            plan.steps.append(rng.choice(["[1, 2]", "42", "null", '"text"', "true"]))
            plan.refusals["bad_structure"] += 1
        elif roll < 0.9:  # not JSON at all (1e999 overflows orjson): the client's garbage
            plan.steps.append(rng.choice(["<html>502</html>", '{"data": {"p": 1e999}}', "{"]))
            plan.garbage += 1
        elif roll < 0.93:
            plan.steps.append({"stream": "btcusdt@kline_1m", "data": {"e": "kline", "k": {}}})
        elif roll < 0.95 and i > 10:
            plan.steps.append(DROP)
        else:
            plan.steps.append({"stream": "!forceOrder@arr", "data": valid()})
    return plan


# -- OKX ---------------------------------------------------------------------------------------

OKX_INSTRUMENTS = [
    okx_instrument("BTC-USDT-SWAP", "0.01"),
    okx_instrument("ETH-USDT-SWAP", "0.1"),
    okx_instrument("币安人生-USDT-SWAP", "1"),
    okx_instrument("BTC-USD-SWAP", "100"),
]


def okx_detail(ts: int, price: float, sz: Any = "3") -> dict:
    return {
        "bkLoss": "0",
        "bkPx": str(price),
        "ccy": "",
        "posSide": "long" if int(price) % 2 else "net",
        "side": "sell" if int(price) % 3 else "buy",
        "sz": sz,
        "ts": str(ts),
    }


def okx_frame(items: list[dict]) -> dict:
    return {"arg": {"channel": "liquidation-orders", "instType": "SWAP"}, "data": items}


def okx_item(inst_id: str, details: Any) -> dict:
    family = "-".join(inst_id.split("-")[:2])
    return {
        "details": details,
        "instFamily": family,
        "instId": inst_id,
        "instType": "SWAP",
        "uly": family,
    }


def okx_mutations() -> list[Mutation]:
    out: list[Mutation] = []
    for value, reason in TS_MUTATIONS:
        out.append((_pop("ts") if value is None else _set("ts", value), reason))
    for value, reason in NUMBER_MUTATIONS:
        out.append((_set("bkPx", value), reason))
        out.append((_set("sz", value), reason))
    out += [
        (_many(bkPx="1e200"), "price_out_of_range"),
        (_many(bkPx="1e9", sz="1e300"), "notional_out_of_range"),
        (_many(bkPx="60000", sz="1e13"), "notional_out_of_range"),
        (_many(side="hold", posSide="net"), "bad_side"),
        (_many(side=None, posSide="net"), "wrong_type"),
        (_many(posSide=7), "wrong_type"),
        (_pop("bkPx"), "missing_field"),
    ]
    return out


def okx_plan(rng: random.Random, count: int) -> Plan:
    plan = Plan()
    mutations = okx_mutations()
    ts = NOW - 3_600_000
    price = 2000.0

    def valid() -> dict:
        nonlocal ts, price
        ts, price = ts + 1, price + 1
        plan.expected.append(("okx", ts, price))
        return okx_detail(ts, price, sz=rng.choice(["3", 3, "0.5"]))

    def bad() -> dict:
        nonlocal ts, price
        ts, price = ts + 1, price + 1
        detail = okx_detail(ts, price)
        mutate, reason = rng.choice(mutations)
        mutate(detail)
        plan.refusals[reason] += 1
        return detail

    inst_ids = [i["instId"] for i in OKX_INSTRUMENTS]
    for i in range(count):
        roll = rng.random()
        inst = rng.choice(inst_ids)
        if roll < 0.3:
            plan.steps.append(okx_frame([okx_item(inst, [valid()])]))
        elif roll < 0.5:
            plan.steps.append(okx_frame([okx_item(inst, [bad()])]))
        elif roll < 0.75:  # multi-detail pushes and several items per push (#13.11)
            items = []
            for _ in range(rng.randint(1, 3)):
                details = [
                    valid() if rng.random() < 0.5 else bad() for _ in range(rng.randint(1, 4))
                ]
                if rng.random() < 0.2:
                    details.insert(0, rng.choice([None, 5, "x"]))
                    plan.refusals["bad_structure"] += 1
                items.append(okx_item(rng.choice(inst_ids), details))
            if rng.random() < 0.3:  # a broken item beside good ones: details null / a number
                items.append(okx_item(inst, rng.choice([None, 5, "x", {"a": 1}])))
                plan.refusals["bad_structure"] += 1
            plan.steps.append(okx_frame(items))
        elif roll < 0.8:
            broken = rng.choice(
                [
                    okx_frame(None),  # type: ignore[arg-type]
                    okx_frame(5),  # type: ignore[arg-type]
                    {"arg": {"channel": "liquidation-orders"}},
                    okx_frame([7]),
                    okx_frame([{"details": []}]),
                    okx_frame([{"instId": 5, "details": []}]),
                ]
            )
            plan.steps.append(broken)
            data = broken.get("data")
            if not isinstance(data, list) or data == [7]:
                plan.refusals["bad_structure"] += 1
            elif "instId" not in data[0]:
                plan.refusals["missing_field"] += 1
            else:
                plan.refusals["wrong_type"] += 1
        elif roll < 0.84:
            n = rng.randint(1, 3)
            plan.steps.append(
                okx_frame(
                    [
                        okx_item(
                            "NOPE-USDT-SWAP",
                            [bad() for _ in range(0)] + [okx_detail(NOW, 1.0) for _ in range(n)],
                        )
                    ]
                )
            )
            plan.refusals["unknown_instrument"] += n
        elif roll < 0.88:
            plan.steps.append(rng.choice(["[1, 2]", "42", '"text"']))
            plan.refusals["bad_structure"] += 1
        elif roll < 0.91:
            plan.steps.append(rng.choice(["<html>502</html>", "{"]))
            plan.garbage += 1
        elif roll < 0.93:  # another channel: ignored, not refused
            plan.steps.append({"arg": {"channel": "tickers"}, "data": [{"x": 1}]})
        elif roll < 0.95 and i > 10:
            plan.steps.append(DROP)
        else:
            plan.steps.append(okx_frame([okx_item(inst, [valid()])]))
    return plan


# -- Bybit -------------------------------------------------------------------------------------


def bybit_item(ts: int, price: float, symbol: str = "BTCUSDT") -> dict:
    return {
        "T": ts,
        "s": symbol,
        "S": "Buy" if int(price) % 2 else "Sell",
        "v": "0.2",
        "p": str(price),
    }


def bybit_frame(data: Any, ts: int = NOW) -> dict:
    return {"topic": "allLiquidation.BTCUSDT", "type": "snapshot", "ts": ts, "data": data}


def bybit_mutations() -> list[Mutation]:
    out: list[Mutation] = []
    for value, reason in TS_MUTATIONS:
        if value is not None:  # a missing T falls back to the push's ts: not an error
            out.append((_set("T", value), reason))
    for value, reason in SYMBOL_MUTATIONS:
        out.append((_set("s", value), reason))
    for value, reason in NUMBER_MUTATIONS:
        out.append((_set("p", value), reason))
        out.append((_set("v", value), reason))
    out += [
        (_many(p="1e200"), "price_out_of_range"),
        (_many(p="1e9", v="1e300"), "notional_out_of_range"),
        (_many(p="100", v="1e300"), "notional_out_of_range"),
        (_many(p="1e-12", v="1e-300"), "notional_out_of_range"),
        (_many(S="Up"), "bad_side"),
        (_many(S=False), "wrong_type"),
        (_pop("S"), "missing_field"),
        (_pop("v"), "missing_field"),
    ]
    return out


def bybit_plan(rng: random.Random, count: int) -> Plan:
    plan = Plan()
    mutations = bybit_mutations()
    ts = NOW - 3_600_000
    price = 3000.0

    def valid() -> dict:
        nonlocal ts, price
        ts, price = ts + 1, price + 1
        plan.expected.append(("bybit", ts, price))
        item = bybit_item(ts, price, rng.choice(["BTCUSDT", *ODD_SYMBOLS]))
        if rng.random() < 0.2:
            item.update(p=price, v=0.2)
        return item

    def bad() -> dict:
        nonlocal ts, price
        ts, price = ts + 1, price + 1
        item = bybit_item(ts, price)
        mutate, reason = rng.choice(mutations)
        mutate(item)
        plan.refusals[reason] += 1
        return item

    for i in range(count):
        roll = rng.random()
        if roll < 0.3:
            plan.steps.append(bybit_frame([valid()]))
        elif roll < 0.5:
            plan.steps.append(bybit_frame([bad()]))
        elif roll < 0.75:  # data arrays mixing good and bad items (#13.11)
            data = [valid() if rng.random() < 0.5 else bad() for _ in range(rng.randint(2, 6))]
            if rng.random() < 0.3:
                data.append(rng.choice([None, 3, "x"]))
                plan.refusals["bad_structure"] += 1
            plan.steps.append(bybit_frame(data))
        elif roll < 0.8:
            plan.steps.append(bybit_frame(rng.choice([None, 5, "x"])))
            plan.refusals["bad_structure"] += 1
        elif roll < 0.84:
            plan.steps.append(rng.choice(["[1, 2]", "42", "null"]))
            plan.refusals["bad_structure"] += 1
        elif roll < 0.87:
            plan.steps.append(rng.choice(["<html>502</html>", "{"]))
            plan.garbage += 1
        elif roll < 0.9:  # another topic, or no topic (an op reply): not refused
            plan.steps.append({"topic": "tickers.BTCUSDT", "data": {"x": 1}})
        elif roll < 0.92 and i > 10:
            plan.steps.append(DROP)
        else:
            plan.steps.append(bybit_frame(valid()))  # data as one object, not a list
    return plan


# -- the runs ----------------------------------------------------------------------------------


def key(event: Liquidation) -> Key:
    return (event.exchange, event.ts, event.price)


async def collect_until(stream: LiquidationStream, done: Callable[[list], bool], timeout: float):
    got: list[Liquidation] = []

    async def run() -> None:
        async for batch in stream.batches():
            got.extend(batch)
            if done(got):
                return

    await asyncio.wait_for(run(), timeout)
    return got


def point_env_at(monkeypatch, server, venue: str) -> None:
    monkeypatch.setenv(f"LIQ_{venue.upper()}_WS_URL", server.ws_url)
    if venue != "binance":
        monkeypatch.setenv(f"LIQ_{venue.upper()}_REST_URL", server.rest_url)


def fake_for(venue: str, plan: Plan):
    if venue == "binance":
        return FakeBinance(plan.steps)
    if venue == "okx":
        return FakeOkx(plan.steps, instruments=OKX_INSTRUMENTS)
    return FakeBybit(plan.steps, instruments=[bybit_instrument("BTCUSDT")])


PLANS = {"binance": binance_plan, "okx": okx_plan, "bybit": bybit_plan}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("venue", ["binance", "okx", "bybit"])
async def test_fuzzed_frames_every_valid_event_once_nothing_malformed_counted_by_reason(
    monkeypatch, venue: str, seed: int
) -> None:
    plan = PLANS[venue](random.Random(seed * 1000 + len(venue)), 1500)
    # A last valid event proves the venue still runs after everything before it.
    sentinel_ts, sentinel_price = NOW - 1, 99_999.0
    if venue == "binance":
        last: Any = {"stream": "!forceOrder@arr", "data": binance_event(sentinel_ts, 99_999.0)}
    elif venue == "okx":
        last = okx_frame([okx_item("BTC-USDT-SWAP", [okx_detail(sentinel_ts, 99_999.0)])])
    else:
        last = bybit_frame([bybit_item(sentinel_ts, 99_999.0)])
    plan.steps.append(last)
    plan.expected.append((venue, sentinel_ts, sentinel_price))
    assert len(plan.expected) > 100 and sum(plan.refusals.values()) > 100  # a real mix

    async with fake_for(venue, plan) as server:
        point_env_at(monkeypatch, server, venue)
        stream = liquidation_stream([venue], options=FAST, wall_clock=lambda: NOW)
        async with stream:
            got = await collect_until(
                stream, lambda events: any(key(e)[1] == sentinel_ts for e in events), 40
            )
            await server.wait_until(lambda: server.script.done)
            status = stream.statuses[venue]
            assert status.state == "connected"  # the venue never stopped
            assert not any(t.done() for t in stream._tasks)

    # Every valid event exactly once, in order, and nothing else.
    assert Counter(key(e) for e in got) == Counter(plan.expected)
    assert [key(e) for e in got] == plan.expected
    for event in got:
        assert 1e-6 <= event.notional_usd <= 1e10 and isinstance(event.symbol, str)
        assert event.symbol and event.received_ts == NOW
    # Each refusal named, with its count.
    assert dict(status.rejected) == dict(plan.refusals)
    assert status.malformed == sum(plan.refusals.values())
    assert status.garbage == plan.garbage
    assert status.to_dict()["rejected"] == dict(plan.refusals)
    odd = {e.symbol for e in got} & {s.upper() for s in ODD_SYMBOLS}
    assert "币安人生USDT" in odd  # non-ASCII symbols are data


async def test_okx_details_null_or_a_number_does_not_stop_the_venue(monkeypatch) -> None:
    """#13.7: a TypeError from ``"details": null`` used to kill the OKX loop for good."""
    good = [
        okx_frame([okx_item("BTC-USDT-SWAP", [okx_detail(NOW - i, 60_000.0 + i)])])
        for i in range(3)
    ]
    steps = [
        good[0],
        okx_frame([okx_item("BTC-USDT-SWAP", None)]),
        okx_frame([okx_item("BTC-USDT-SWAP", 5)]),
        okx_frame([okx_item("BTC-USDT-SWAP", [okx_detail(NOW, 1.0)]), 7]),
        good[1],
        good[2],
    ]
    async with FakeOkx(steps, instruments=OKX_INSTRUMENTS) as server:
        point_env_at(monkeypatch, server, "okx")
        async with liquidation_stream(["okx"], options=FAST, wall_clock=lambda: NOW) as stream:
            got = await collect_until(stream, lambda events: len(events) >= 4, 10)
            status = stream.statuses["okx"]
            assert status.state == "connected"
    assert sorted(e.price for e in got) == [1.0, 60_000.0, 60_001.0, 60_002.0]
    assert dict(status.rejected) == {"bad_structure": 3}
    assert "details" in (status.last_error or "") or "item" in (status.last_error or "")


async def test_a_parser_that_raises_anything_costs_only_its_frame(monkeypatch) -> None:
    """Any exception type from a parser is counted as ``parser_error``; the loop goes on."""
    real = okx_venue.parse_liquidations
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> list[Liquidation]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ZeroDivisionError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(okx_venue, "parse_liquidations", flaky)
    steps = [
        okx_frame([okx_item("BTC-USDT-SWAP", [okx_detail(NOW - i, 100.0 + i)])]) for i in range(2)
    ]
    async with FakeOkx(steps, instruments=OKX_INSTRUMENTS) as server:
        point_env_at(monkeypatch, server, "okx")
        async with liquidation_stream(["okx"], options=FAST, wall_clock=lambda: NOW) as stream:
            [event] = await collect_until(stream, lambda events: len(events) >= 1, 10)
            status = stream.statuses["okx"]
    assert event.price == 101.0
    assert dict(status.rejected) == {"parser_error": 1} and "boom" in (status.last_error or "")


async def test_a_future_dated_event_is_refused_and_later_events_flow(monkeypatch) -> None:
    """#13.4: one event stamped 2100 is refused (ts_future), it never reaches the consumer."""
    steps = [
        {"stream": "!forceOrder@arr", "data": binance_event(4_102_444_800_000, 5000.0)},
        {"stream": "!forceOrder@arr", "data": binance_event(NOW + DAY + 60_000, 5001.0)},
        {"stream": "!forceOrder@arr", "data": binance_event(NOW - 5, 5002.0)},
        {"stream": "!forceOrder@arr", "data": binance_event(NOW + 30_000, 5003.0)},  # clock skew
    ]
    async with FakeBinance(steps) as server:
        point_env_at(monkeypatch, server, "binance")
        async with liquidation_stream(["binance"], options=FAST, wall_clock=lambda: NOW) as stream:
            got = await collect_until(stream, lambda events: len(events) >= 2, 10)
            status = stream.statuses["binance"]
    assert [e.price for e in got] == [5002.0, 5003.0]
    assert dict(status.rejected) == {"ts_future": 2}


def test_overflowing_frames_are_refused_on_every_venue_not_raised() -> None:
    """#13.3: price x qty overflowing to infinity, a notional above 1.8e302, a time past 9999."""
    from liqcli.exchanges.binance import stream as binance
    from liqcli.exchanges.bybit import stream as bybit
    from liqcli.exchanges.parsing import Refusals

    instruments = okx_venue.parse_instruments({"code": "0", "data": OKX_INSTRUMENTS})
    cases = [
        ("1e9", "1e300", "notional_out_of_range"),  # inf
        ("1000", "1e300", "notional_out_of_range"),  # 1e303
        ("100", "1", "ts_future"),  # year 10000
    ]
    for price, qty, reason in cases:
        far = 253_402_300_800_000 if reason == "ts_future" else NOW
        event = binance_event(far, 1.0)
        event["o"].update(ap=price, z=qty)
        detail = {**okx_detail(far, 1.0), "bkPx": price, "sz": qty}
        item = {**bybit_item(far, 1.0), "p": price, "v": qty}
        for parse, frame in [
            (lambda m, r: binance.parse_liquidations(m, NOW, refused=r), {"data": event}),
            (
                lambda m, r: okx_venue.parse_liquidations(m, instruments, NOW, refused=r),
                okx_frame([okx_item("BTC-USDT-SWAP", [detail])]),
            ),
            (lambda m, r: bybit.parse_liquidations(m, NOW, refused=r), bybit_frame([item])),
        ]:
            refused = Refusals()
            assert parse(orjson.loads(orjson.dumps(frame)), refused) == []
            assert refused == {reason: 1}


async def test_liq_watch_survives_overflowing_and_far_dated_frames_on_all_venues(tmp_path) -> None:
    """#13.3 through the real command: price x qty overflowing to infinity, a notional above
    1.8e302, a time past 9999, p=true: each venue's valid events are printed, exit 0, no
    traceback, and ``--log-level info`` names the refusals."""
    import os
    import sys

    from liqcli.core.timeutil import now_ms

    now = now_ms()
    t = now - 60_000
    year_10000 = 253_402_300_800_000

    def bad_binance() -> list[dict]:
        events = [binance_event(t + 10 + i, 500.0 + i) for i in range(4)]
        events[0]["o"].update(ap="1e9", z="1e300")
        events[1]["o"].update(ap="1000", z="1e300")
        events[2]["o"]["T"] = year_10000
        events[3]["o"].update(z="0", ap="0", p=True)
        return [{"stream": "!forceOrder@arr", "data": e} for e in events]

    binance_steps = [
        {"stream": "!forceOrder@arr", "data": binance_event(t, 100.0)},
        *bad_binance(),
        {"stream": "!forceOrder@arr", "data": binance_event(t + 1, 101.0)},
    ]
    okx_bad = [
        {**okx_detail(t, 1.0), "bkPx": "1e9", "sz": "1e300"},
        {**okx_detail(year_10000, 1.0)},
        {**okx_detail(t, 1.0), "sz": True},
    ]
    okx_steps = [
        okx_frame([okx_item("BTC-USDT-SWAP", [okx_detail(t + 2, 200.0), *okx_bad])]),
        okx_frame([okx_item("BTC-USDT-SWAP", None)]),
        okx_frame([okx_item("BTC-USDT-SWAP", [okx_detail(t + 3, 201.0)])]),
    ]
    bybit_steps = [
        bybit_frame([bybit_item(t + 4, 300.0), {**bybit_item(t, 1.0), "p": "1e9", "v": "1e300"}]),
        bybit_frame([{**bybit_item(year_10000, 1.0)}, {**bybit_item(t, 1.0), "p": True}]),
        bybit_frame([bybit_item(t + 5, 301.0)]),
    ]
    binance = FakeBinance(binance_steps)
    okx = FakeOkx(okx_steps, instruments=OKX_INSTRUMENTS)
    bybit = FakeBybit(bybit_steps, instruments=[bybit_instrument("BTCUSDT")])
    async with binance, okx, bybit:
        env = dict(os.environ)
        for name, fake in (("BINANCE", binance), ("OKX", okx), ("BYBIT", bybit)):
            env[f"LIQ_{name}_WS_URL"] = fake.ws_url
            env[f"LIQ_{name}_REST_URL"] = fake.rest_url
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "liqcli",
            "--log-level",
            "info",
            "--data-dir",
            str(tmp_path),
            "watch",
            "--format",
            "jsonl",
            "--duration",
            "3",
            "--no-store",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 40)
    err = stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    prices = sorted(orjson.loads(line)["price"] for line in stdout.decode().splitlines())
    assert prices == [100.0, 101.0, 200.0, 201.0, 300.0, 301.0]
    for venue in ("binance", "okx", "bybit"):
        assert f"{venue}: refused" in err
    for reason in ("notional_out_of_range", "ts_future", "wrong_type"):
        assert reason in err


def test_parsers_without_a_refusal_counter_still_count_and_survive() -> None:
    """A parser that raises DataError instead of counting (``refused=`` not accepted) is still
    called, and its errors land in the venue's counters."""
    from liqcli.errors import DataError
    from liqcli.exchanges.ws import VenueStatus

    def legacy(message: Any) -> list[Any]:
        if message == "bad":
            raise DataError("x: malformed depth")
        if message == "bug":
            raise AttributeError("oops")
        return [message]

    status = VenueStatus("x")
    results = [streams._parse(status, legacy, m) for m in ("ok", "bad", "bug", "ok2")]
    assert results == [["ok"], [], [], ["ok2"]]
    assert dict(status.rejected) == {"malformed": 1, "parser_error": 1}
    assert status.malformed == 2 and "oops" in (status.last_error or "")
