"""Validation at the venue parsers (issue #13, items 2, 3, 10): field types, ranges, timestamps,
symbols as data, and ``liq fetch`` refusing malformed REST rows row by row, counted by reason
in its summary."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.exchanges import parsing
from liqcli.exchanges.binance import stream as binance
from liqcli.exchanges.bybit import stream as bybit
from liqcli.exchanges.parsing import Refusals, Refused
from liqcli.store.parquet import Store
from tests.fakes.binance_rest import FakeBinanceRest

RECV = 1_790_000_000_000
DAY = 86_400_000
runner = CliRunner()


def force_order(**order: Any) -> dict[str, Any]:
    base = {"s": "BTCUSDT", "S": "SELL", "q": "1", "p": "100", "ap": "100", "z": "1", "T": RECV}
    return {"e": "forceOrder", "E": RECV, "o": {**base, **order}}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "wrong_type"),  # a JSON boolean is not a number: p=true used to read as 1.0
        (False, "wrong_type"),
        (None, "wrong_type"),
        ([1], "wrong_type"),
        ("1_000", None),  # Python's float() accepts it; harmless, kept
        ("nan", "not_finite"),
        ("-inf", "not_finite"),
        ("0x10", "not_a_number"),
        (10**400, "not_finite"),
        ("0", "not_positive"),
        (-1.0, "not_positive"),
    ],
)
def test_numbers_are_typed_and_finite(value: Any, reason: str | None) -> None:
    if reason is None:
        assert parsing.number("x", value, "p", positive=True) == 1000.0
        return
    with pytest.raises(Refused) as info:
        parsing.number("x", value, "p", positive=True)
    assert info.value.reason == reason
    assert parsing.positive("x", "12.5", "p") == 12.5 and parsing.positive("x", 3, "p") == 3.0


@pytest.mark.parametrize(
    ("value", "received", "expected"),
    [
        (RECV, RECV, RECV),
        (str(RECV), RECV, RECV),
        (float(RECV), RECV, RECV),
        (RECV + DAY, RECV, RECV + DAY),  # the edge of the window
        (RECV + DAY + 1, RECV, "ts_future"),
        (4_102_444_800_000, RECV, "ts_future"),  # 2100
        (253_402_300_800_000, 0, "ts_future"),  # year 10000, no receive time known
        (4_102_444_800_000, 0, "ts_future"),
        (RECV - 400 * DAY, RECV, RECV - 400 * DAY),  # delayed: kept, falls out of windows
        (1_262_303_999_999, RECV, "ts_past"),  # before 2010
        (-1, RECV, "ts_past"),
        (1, 0, "ts_past"),
        (True, RECV, "wrong_type"),
        (1.5, RECV, "not_a_number"),
        (math.inf, RECV, "not_finite"),
        ("12:00", RECV, "not_a_number"),
    ],
)
def test_timestamps_are_integers_near_the_receive_time(value, received, expected) -> None:
    if isinstance(expected, str):
        with pytest.raises(Refused) as info:
            parsing.timestamp("x", value, "T", received)
        assert info.value.reason == expected
    else:
        assert parsing.timestamp("x", value, "T", received) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("btcusdt", "BTCUSDT"),
        ("币安人生USDT", "币安人生USDT"),  # non-ASCII: data, kept
        ("BTC/USDT", "BTC/USDT"),
        ("X" * 64, "X" * 64),
        ("", "bad_symbol"),
        (" \t", "bad_symbol"),
        ("X" * 65, "bad_symbol"),
        (None, "wrong_type"),
        (True, "wrong_type"),
        (123, "wrong_type"),
        ({"A": 1}, "wrong_type"),
    ],
)
def test_symbols_are_non_empty_strings(value: Any, expected: str) -> None:
    event = force_order(s=value)
    refused = Refusals()
    events = binance.parse_message(event, RECV, refused=refused)
    if expected in parsing.REASONS:
        assert events == [] and refused == {expected: 1}
    else:
        assert [e.symbol for e in events] == [expected] and not refused


def test_a_negative_filled_quantity_is_refused_not_replaced() -> None:
    refused = Refusals()
    assert binance.parse_message(force_order(z="-0.5"), RECV, refused=refused) == []
    assert refused == {"not_positive": 1}
    [liq] = binance.parse_message(force_order(z="0", ap="0", q="2", p="50"), RECV)
    assert (liq.price, liq.qty, liq.notional_usd) == (50.0, 2.0, 100.0)  # nothing filled: p x q


@pytest.mark.parametrize(
    ("ap", "z", "reason"),
    [
        ("60000", "1.6e8", None),  # 9.6e12 USD: refused (above 1e10) ...
        ("60000", "1e5", "ok"),  # ... 6e9 USD: kept
        ("1e9", "1e300", None),  # overflows to inf
        ("1e-12", "1e-300", None),  # underflows to ~0
    ],
)
def test_notional_bounds(ap: str, z: str, reason: str | None) -> None:
    refused = Refusals()
    events = binance.parse_message(force_order(ap=ap, z=z), RECV, refused=refused)
    if reason == "ok":
        assert len(events) == 1 and not refused
    else:
        assert events == [] and refused == {"notional_out_of_range": 1}


def test_a_mixed_binance_batch_keeps_every_valid_event() -> None:
    """#13.11: one bad event in an ``!forceOrder@arr`` batch used to cost the whole batch."""
    good = [force_order(T=RECV - i, p=str(100 + i), ap=str(100 + i)) for i in range(3)]
    batch = {
        "stream": "!forceOrder@arr",
        "data": [
            good[0],
            force_order(p=True, z="0"),
            good[1],
            7,
            force_order(T=4_102_444_800_000),
            good[2],
        ],
    }
    refused = Refusals()
    events = binance.parse_liquidations(batch, RECV, refused=refused)
    assert [e.price for e in events] == [100.0, 101.0, 102.0]
    assert refused == {"wrong_type": 1, "bad_structure": 1, "ts_future": 1}
    assert refused.total == 3 and "too far after" in (refused.last or "")


def test_bybit_data_array_keeps_good_items_beside_bad_ones() -> None:
    item = {"T": RECV, "s": "BTCUSDT", "S": "Buy", "v": "0.5", "p": "60000"}
    push = {
        "topic": "allLiquidation.BTCUSDT",
        "ts": RECV,
        "data": [item, {**item, "p": "Infinity"}, {**item, "v": True}, {**item, "S": "Sell"}],
    }
    refused = Refusals()
    events = bybit.parse_liquidations(push, RECV, refused=refused)
    assert [e.side for e in events] == ["long", "short"]
    assert refused == {"not_finite": 1, "wrong_type": 1}


def test_refusals_are_plain_json_counters() -> None:
    refused = Refusals()
    refused.add("ts_future", "x: far")
    refused.add("ts_future", "x: farther", 2)
    other = Refusals()
    other.add("bad_side", "y")
    refused.merge(other)
    assert orjson.loads(orjson.dumps(refused)) == {"ts_future": 3, "bad_side": 1}
    assert refused.total == 4 and refused.last == "y"
    assert set(parsing.REASONS) >= {"ts_future", "bad_side", "parser_error", "unknown_instrument"}


# -- liq fetch ---------------------------------------------------------------------------------


class CorruptingBinanceRest(FakeBinanceRest):
    """The fake Binance REST server, with every 7th row of each page made malformed."""

    BAD: ClassVar[list[tuple[Any, str]]] = [
        ("NaN", "not_finite"),
        ("Infinity", "not_finite"),
        ("-1.25", "out_of_range"),
        (True, "not_a_number"),
        (None, "missing_field"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expected: dict[str, dict[str, int]] = {}

    def _dispatch(self, path: str, params: dict[str, str]) -> Any:
        payload = super()._dispatch(path, params)
        if not isinstance(payload, list) or path != "/futures/data/takerlongshortRatio":
            return payload
        counts = self.expected.setdefault("taker_ratio", {})
        for i, row in enumerate(payload):
            if i % 7 == 3:
                value, reason = self.BAD[(i // 7) % len(self.BAD)]
                if value is None:
                    row.pop("buySellRatio")
                else:
                    row["buySellRatio"] = value
                counts[reason] = counts.get(reason, 0) + 1
        return payload


def test_fetch_refuses_nan_infinity_and_negative_rows_and_counts_them_in_the_summary(tmp_path):
    day = now_ms() // DAY * DAY
    start, end = iso_ms(day - 2 * DAY), iso_ms(day - DAY)
    with CorruptingBinanceRest() as server:
        result = runner.invoke(
            app,
            [
                *("--data-dir", str(tmp_path), "fetch", "BTCUSDT", "--start", start, "--end", end),
                *("--dataset", "taker_ratio", "--dataset", "open_interest", "-f", "json"),
            ],
            env={"LIQ_BINANCE_REST_URL": server.url},
        )
    assert result.exit_code == 0, result.stderr
    document = orjson.loads(result.stdout)
    rows = {row["dataset"]: row for row in document["results"]}
    expected = server.expected["taker_ratio"]
    refused_total = sum(expected.values())
    assert refused_total > 20
    assert rows["taker_ratio"]["refused_rows"] == refused_total
    assert rows["taker_ratio"]["new_rows"] == 288 - refused_total
    for reason, count in expected.items():
        assert f"{reason} {count}" in rows["taker_ratio"]["message"]
    assert rows["open_interest"]["refused_rows"] == 0 and rows["open_interest"]["new_rows"] == 288
    assert document["refused_rows"] == refused_total
    stored = Store(tmp_path).read("taker_ratio", exchange="binance", symbol="BTCUSDT", period="5m")
    ratios = stored["buy_sell_ratio"].to_list()
    assert len(ratios) == 288 - refused_total
    assert all(r is not None and math.isfinite(r) and r >= 0 for r in ratios)
    first = datetime.fromtimestamp(stored["ts"].dt.epoch("ms").min() / 1000, tz=UTC)
    assert first.isoformat().startswith(start[:10])


# -- properties: any JSON in any field --------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from liqcli.exchanges import okx  # noqa: E402

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "0", "-1", "1e308", "1e-320", "NaN", "inf", "1.5", str(RECV), "BUY"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
OKX_TABLE = okx.parse_instruments(
    {
        "code": "0",
        "data": [
            {"instId": "BTC-USDT-SWAP", "instType": "SWAP", "ctVal": "0.01", "ctValCcy": "BTC"},
            {"instId": "BTC-USD-SWAP", "instType": "SWAP", "ctVal": "100", "ctValCcy": "USD"},
        ],
    }
)


def _valid_frames() -> dict[str, tuple[dict[str, Any], Callable[[Any, Refusals], list[Any]]]]:
    return {
        "binance": (
            {"stream": "!forceOrder@arr", "data": force_order()},
            lambda m, r: binance.parse_message(m, RECV, refused=r),
        ),
        "okx": (
            {
                "arg": {"channel": "liquidation-orders"},
                "data": [
                    {
                        "instId": "BTC-USDT-SWAP",
                        "details": [
                            {
                                "bkPx": "60000",
                                "sz": "2",
                                "side": "sell",
                                "posSide": "long",
                                "ts": str(RECV),
                            }
                        ],
                    }
                ],
            },
            lambda m, r: okx.parse_liquidations(m, OKX_TABLE, RECV, refused=r),
        ),
        "bybit": (
            {
                "topic": "allLiquidation.BTCUSDT",
                "ts": RECV,
                "data": [{"T": RECV, "s": "BTCUSDT", "S": "Buy", "v": "0.5", "p": "60000"}],
            },
            lambda m, r: bybit.parse_liquidations(m, RECV, refused=r),
        ),
    }


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


def _check_events(events: list[Any]) -> None:
    for e in events:
        assert type(e.symbol) is str and e.symbol and len(e.symbol) <= 64
        assert e.side in ("long", "short")
        assert 1e-12 <= e.price <= 1e9 and math.isfinite(e.qty) and e.qty > 0
        assert 1e-6 <= e.notional_usd <= 1e10
        assert type(e.ts) is int and 1_262_304_000_000 <= e.ts <= RECV + DAY


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    venue=st.sampled_from(["binance", "okx", "bybit"]),
    picks=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=3),
    values=st.lists(JSON, min_size=3, max_size=3),
    drop=st.booleans(),
)
def test_any_json_in_any_field_is_refused_with_a_reason_or_parsed_validly(
    venue, picks, values, drop
) -> None:
    frame, parse = _valid_frames()[venue]
    paths = _paths(frame)
    for pick, value in zip(picks, values, strict=False):
        path = paths[pick % len(paths)]
        if drop and path:
            parent = frame
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict):
                parent = {k: v for k, v in parent.items() if k != path[-1]}
                frame = _replace(frame, path[:-1], parent)
                paths = _paths(frame)
                continue
        frame = _replace(frame, path, value)
        paths = _paths(frame)
    refused = Refusals()
    events = parse(frame, refused)  # never raises
    _check_events(events)
    assert set(refused) <= set(parsing.REASONS) - {"parser_error", "malformed"}, refused.last
    assert refused.total == sum(refused.values())


@settings(max_examples=200, deadline=None)
@given(venue=st.sampled_from(["binance", "okx", "bybit"]), frame=JSON)
def test_any_json_frame_never_raises(venue, frame) -> None:
    _, parse = _valid_frames()[venue]
    refused = Refusals()
    _check_events(parse(frame, refused))
    assert "parser_error" not in refused, refused.last
