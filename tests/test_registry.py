"""The venue registry: every list of venues reads it, and a venue added through it alone (module,
entry, fake server: tests/toyex) is watched end to end by the real live source."""

from __future__ import annotations

import io
import time

import orjson
import pytest

from liqcli.core.endpoints import DEFAULTS, url
from liqcli.errors import UsageError
from liqcli.exchanges import registry
from liqcli.services.streams import liquidation_stream, validate_exchanges
from liqcli.services.watch import WatchConfig, run_watch
from liqcli.store.parquet import Store
from tests import toyex

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def toy_venue(monkeypatch):
    registry.register(toyex.ENTRY)
    try:
        yield toyex.ENTRY
    finally:
        registry.unregister(toyex.VENUE)


def test_builtin_entries_declare_what_each_venue_offers() -> None:
    assert registry.names(registry.LIQUIDATIONS) == ["binance", "okx", "bybit"]
    assert registry.names(registry.TRADES) == ["binance"]
    assert registry.names(registry.ARCHIVE) == ["binance", "bybit"]
    assert registry.names(registry.ORDERS) == ["backpack"]  # trading venues (liq mm)
    assert "backpack" not in registry.default_names()
    assert registry.get("binance").offers_all(registry.BOOK, registry.MARK)
    assert registry.get("binance").limits.streams_per_connection == 200
    assert "one liquidation per symbol per second" in registry.get("binance").notes[0]
    assert set(DEFAULTS) == {
        f"LIQ_{v}_{k}_URL"
        for v, ks in (
            ("BINANCE", "REST WS ARCHIVE"),
            ("OKX", "REST WS"),
            ("BYBIT", "REST WS ARCHIVE"),
            ("BACKPACK", "REST WS"),
        )
        for k in ks.split()
    }
    assert registry.choices_text() == "binance, okx or bybit"
    with pytest.raises(
        UsageError, match="unknown exchange kraken: choose from binance, okx, bybit"
    ):
        registry.validate(["kraken"])
    with pytest.raises(UsageError, match="okx offers no trades"):
        registry.validate(["okx"], registry.TRADES)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("okx"))


def test_a_registered_venue_appears_everywhere_and_goes_again(toy_venue, monkeypatch) -> None:
    assert "toyex" in registry.names(registry.LIQUIDATIONS)
    assert "toyex" not in registry.default_names()  # default=False: not watched unless asked
    assert validate_exchanges(["TOYEX", "binance"]) == ["toyex", "binance"]
    assert DEFAULTS["LIQ_TOYEX_WS_URL"] == "wss://toyex.invalid/ws"
    monkeypatch.setenv("LIQ_TOYEX_WS_URL", "ws://127.0.0.1:1/ws/")
    assert url("LIQ_TOYEX_WS_URL") == "ws://127.0.0.1:1/ws"
    assert liquidation_stream(["toyex"]).statuses.keys() == {"toyex"}
    registry.unregister("toyex")
    with pytest.raises(UsageError, match="unknown exchange toyex"):
        validate_exchanges(["toyex"])


async def test_watch_a_throw_away_venue_added_through_the_registry(
    toy_venue, monkeypatch, tmp_path, caplog
) -> None:
    t = int(time.time() * 1000) - 5_000
    pushes = [
        {"topic": "liq.BTCUSDT", "data": [{"s": "BTCUSDT", "side": "long", "px": "60000", "qty": "0.5", "t": t}]},
        "not json",  # counted as garbage, skipped
        {"topic": "liq.BTCUSDT", "data": [{"s": "BTCUSDT", "side": "sideways", "px": "1", "qty": "1", "t": t}]},
        {"topic": "liq.ETHUSDT", "data": [{"s": "ETHUSDT", "side": "short", "px": "3000", "qty": "2", "t": t + 1}]},
    ]  # fmt: skip
    async with toyex.FakeToyex(
        by_subscription={"liq.BTCUSDT": pushes[:3], "liq.ETHUSDT": pushes[3:]},
        symbols=["BTCUSDT", "ETHUSDT"],
    ) as fake:
        monkeypatch.setenv("LIQ_TOYEX_WS_URL", fake.ws_url)
        monkeypatch.setenv("LIQ_TOYEX_REST_URL", fake.rest_url)
        out = io.StringIO()
        config = WatchConfig(
            exchanges=["toyex"], symbols=["BTCUSDT", "ETHUSDT"], fmt="jsonl", duration=1.5
        )
        result = await run_watch(config, data_dir=tmp_path, out=out)
        with pytest.raises(UsageError, match="unknown symbol FOOUSDT: not listed on toyex"):
            await run_watch(
                WatchConfig(exchanges=["toyex"], symbols=["FOOUSDT"], fmt="jsonl", duration=1),
                data_dir=tmp_path,
                out=io.StringIO(),
            )
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["exchange"], e["symbol"], e["side"], e["notional_usd"]) for e in lines] == [
        ("toyex", "BTCUSDT", "long", 30_000.0),
        ("toyex", "ETHUSDT", "short", 6_000.0),
    ]
    status = result.statuses["toyex"]
    assert status["events"] == 2 and status["malformed"] == 1 and status["garbage"] == 1
    assert sorted(k for _, k in fake.subscriptions) == ["liq.BTCUSDT", "liq.ETHUSDT"]
    stored = Store(tmp_path).read("liquidations")
    assert stored["exchange"].to_list() == ["toyex", "toyex"]
    assert fake.rest.requests.count("/symbols") == 2  # the symbol check of each run
