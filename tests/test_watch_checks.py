"""``liq watch`` refuses what would watch nothing: mistyped symbols (exit 2 when no selected
venue lists them, a warning when only some do) and a --duration run in which no venue was ever
reachable (exit 1). And one event stamped far in the future never counts in the windows."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import orjson
import pytest

from liqcli.core.events import Liquidation
from liqcli.services.watch import WatchConfig, WatchState, run_watch
from liqcli.sources.clock import MAX_AHEAD_MS, LiveClock
from liqcli.store.parquet import Store
from tests.fakes.binance_rest import FakeBinanceRest
from tests.fakes.venue_rest import bybit_instrument, okx_instrument
from tests.fakes.ws_servers import FakeBinance, FakeBybit, FakeOkx
from tests.test_watch import binance_force, fake_env, start_liq

pytestmark = pytest.mark.timeout(60)

YEAR_2100 = 4_102_444_800_000


async def run_cli(*args: str, env: dict) -> tuple[int, str, str]:
    proc = await start_liq(*args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_mistyped_symbols_are_a_usage_error_or_a_warning(tmp_path: Path) -> None:
    binance, okx = FakeBinance(), FakeOkx(instruments=[okx_instrument("BTC-USDT-SWAP", "0.01")])
    bybit = FakeBybit(instruments=[bybit_instrument("BTCUSDT"), bybit_instrument("SOLUSDT")])
    with FakeBinanceRest(symbols=["BTCUSDT", "ETHUSDT"]) as rest:
        async with binance, okx, bybit:
            env = fake_env(binance, okx, bybit) | {"LIQ_BINANCE_REST_URL": rest.url}
            base = ["--data-dir", str(tmp_path), "watch", "--format", "jsonl", "--duration", "1"]
            code, out, err = await run_cli(*base, "FOOUSDT", env=env)
            assert code == 2, err
            assert "liq: error: unknown symbol FOOUSDT: not listed on binance, okx, bybit" in err
            assert "Traceback" not in err and out == ""
            assert binance.connections == 0  # refused before watching anything
            # Listed somewhere: watched, with a warning naming the venues that lack it.
            code, _, err = await run_cli(*base, "ETHUSDT", "SOLUSDT", env=env)
            assert code == 0, err
            assert "okx does not list ETHUSDT, SOLUSDT" in err
            assert "binance does not list SOLUSDT" in err and "bybit does not list ETHUSDT" in err
            # A venue whose list cannot be had has no say: a warning only, never exit 2.
            code, _, err = await run_cli(
                *base, "FOOUSDT", env=env | {"LIQ_BINANCE_REST_URL": "http://127.0.0.1:9"}
            )
            assert code == 0, err
            assert "okx does not list FOOUSDT" in err and "bybit does not list FOOUSDT" in err


async def test_duration_with_no_venue_ever_reachable_exits_1(tmp_path: Path) -> None:
    env = fake_env(None, None, None)  # conftest points every venue at 127.0.0.1:9
    code, _, err = await run_cli(
        "--data-dir", str(tmp_path), "watch", "-e", "binance", "-e", "bybit", "BTCUSDT",
        "--duration", "1.5", "--format", "jsonl", env=env,
    )  # fmt: skip
    assert code == 1, err
    assert "liq: error: no venue was reachable in 1.5 s (binance: " in err
    assert "bybit: " in err and "Traceback" not in err


async def test_a_reachable_but_quiet_venue_is_not_an_error(tmp_path: Path) -> None:
    async with FakeBinance() as binance:
        code, _, err = await run_cli(
            "--data-dir", str(tmp_path), "watch", "-e", "binance", "BTCUSDT",
            "--duration", "1", "--format", "jsonl", env=fake_env(binance, None, None),
        )  # fmt: skip
    assert code == 0, err


async def test_a_future_dated_event_never_counts_in_the_windows(
    tmp_path: Path, monkeypatch
) -> None:
    now = int(time.time() * 1000)
    frames = [
        binance_force("BTCUSDT", "SELL", "100", "2", now - 2_000),
        # A bad venue clock an hour ahead: inside the parser's one-day bound (a stamp in 2100 is
        # refused there already, tests/test_hostile_frames.py), refused here by the FutureGuard.
        binance_force("BTCUSDT", "SELL", "100", "1000", now + 3_600_000),
        binance_force("BTCUSDT", "BUY", "100", "3", now - 1_000),
    ]
    async with FakeBinance(by_subscription={"btcusdt@forceOrder": frames}) as binance:
        monkeypatch.setenv("LIQ_BINANCE_WS_URL", binance.ws_url)
        out = io.StringIO()
        config = WatchConfig(exchanges=["binance"], symbols=["BTCUSDT"], fmt="jsonl", duration=1.2)
        result = await run_watch(config, data_dir=tmp_path, out=out, check_symbols=False)
    printed = [orjson.loads(line)["notional_usd"] for line in out.getvalue().splitlines()]
    assert printed == [200.0, 300.0]
    assert result.counters.future == 1 and result.counters.received == 3
    # Nothing of it was stored either: a restart does not bring it back into every window.
    assert Store(tmp_path).read("liquidations")["notional_usd"].to_list() == [200.0, 300.0]


def test_restored_rows_from_the_future_stay_out_of_the_windows(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    rows = [
        Liquidation("binance", "BTCUSDT", "long", 100.0, 1.0, 100.0, now - 60_000, "", now),
        Liquidation("binance", "BTCUSDT", "long", 100.0, 9.0, 900.0, YEAR_2100, "", now),
    ]
    import polars as pl

    from liqcli.sources.replay import ROW_SCHEMA

    Store(tmp_path).write(
        "liquidations", pl.DataFrame([r.to_row() for r in rows], schema=ROW_SCHEMA)
    )
    from liqcli.services.watch import _restore

    config = WatchConfig(exchanges=["binance"], windows="3m,1d")
    state = WatchState(config, clock=lambda: now)
    _restore(state, tmp_path, config, now)
    snap = state.main.snapshot(5).to_dict()
    assert snap["overall"]["3m"]["long_usd"] == 100.0 and snap["overall"]["1d"]["long_count"] == 1


def test_live_clock_never_jumps_on_one_far_future_event() -> None:
    wall = [1_764_000_000_000]
    clock = LiveClock(lambda: wall[0])
    clock.observe(YEAR_2100)
    assert clock() == wall[0] - clock.lag_ms
    clock.observe(wall[0] + MAX_AHEAD_MS)  # within the allowance: venues run a little early
    assert clock() == wall[0] + MAX_AHEAD_MS
