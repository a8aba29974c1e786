"""SIGTERM (systemd, docker, cron timeouts, ``kill``) and SIGHUP are as safe as Ctrl-C in every
long-running command: the same shutdown, the same records, then exit 143 / 129 (README "Exit
codes"). Real ``liq`` subprocesses against the fake servers, signalled with ``os.kill``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from liqcli.exchanges.binance.rest import FETCH_DATASETS
from liqcli.store.parquet import Store
from tests.fakes.binance_rest import FakeBinanceRest
from tests.fakes.ws_servers import FakeBinance, FakeBybit
from tests.test_cascade_e2e import (
    SCALE,
    Webhook,
    agg_trade,
    environment,
    force_order,
    has,
    history,
    liq,
    summary,
    t0,
)
from tests.test_watch import binance_force, fake_env, journal_lines, read_lines, start_liq, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

EXIT = {signal.SIGTERM: 143, signal.SIGHUP: 129}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_cascade_ends_delivers_and_stores_the_open_cascade_on_a_signal(tmp_path, signum):
    T0 = t0()
    script = [
        agg_trade(T0, 100.0),
        force_order(T0 + 1_000, "SELL", 120, 100.0),
        agg_trade(T0 + 2_000, 99.0),
        force_order(T0 + 3_000, "SELL", 200, 99.0),
    ]
    data_dir = tmp_path / "data"
    fake_binance = FakeBinance(script)
    fake_bybit = FakeBybit()
    async with fake_binance, fake_bybit, Webhook() as hook:
        env = environment(fake_binance, fake_bybit, "http://127.0.0.1:9")
        proc = await liq(
            "--data-dir", str(data_dir), "cascade", "BTCUSDT", "-e", "binance",
            "--format", "jsonl", "--threshold-scale", SCALE, "--webhook", hook.url,
            env=env,
        )  # fmt: skip
        try:
            await hook.wait_for(has("cascade_level", "SIGNIFICANT"))
            os.kill(proc.pid, signum)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        webhook_alerts = list(hook.bodies)

    assert proc.returncode == EXIT[signum], err.decode()
    assert "Traceback" not in err.decode()
    alerts = [orjson.loads(line) for line in out.decode().splitlines()]
    assert [summary(a) for a in alerts] == [
        ("cascade_level", "SIGNIFICANT", "long_liquidation", None),
        ("cascade_end", "SIGNIFICANT", "long_liquidation", "shutdown"),
    ]
    assert webhook_alerts == alerts
    cascades = await history(data_dir, env)
    assert [(c["peak_level"], c["events"], c["total_usd"]) for c in cascades] == [
        ("SIGNIFICANT", 2, pytest.approx(320.0))
    ]
    assert Store(data_dir).read("liquidations").height == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_watch_compacts_its_journal_on_a_signal(tmp_path: Path, signum) -> None:
    t = int(time.time() * 1000) - 60_000
    events = [
        binance_force("BTCUSDT", "SELL" if i % 2 else "BUY", "64000.5", "0.5", t + i * 1000)
        for i in range(4)
    ]
    binance = FakeBinance(by_subscription={"btcusdt@forceOrder": events})
    async with binance:
        env = fake_env(binance, None, None)
        args = ["--data-dir", str(tmp_path), "watch", "BTCUSDT", "-e", "binance"]
        proc = await start_liq(*args, "--format", "jsonl", env=env)
        try:
            lines = await read_lines(proc.stdout, len(events))
            assert len(lines) == len(events)
            await wait_for(lambda: journal_lines(tmp_path) >= len(events))
            assert not list((tmp_path / "liquidations").glob("exchange=*"))  # not compacted yet
            os.kill(proc.pid, signum)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == EXIT[signum], err.decode()
    assert "Traceback" not in err.decode()
    # Compacted at shutdown, as after Ctrl-C: every row in Parquet, the journal emptied.
    assert Store(tmp_path).read("liquidations").height == len(events)
    assert journal_lines(tmp_path) == 0


def test_fetch_keeps_what_was_fetched_on_sigterm(tmp_path):
    command = [sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path), "fetch", "BTCUSDT"]
    with FakeBinanceRest(latency_s=0.05) as server:
        env = {**os.environ, "LIQ_BINANCE_REST_URL": server.url}
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while len(server.requests) < 30:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    store = Store(tmp_path)
    kept = sum(store.read(d, symbol="BTCUSDT").height for d in FETCH_DATASETS)
    assert kept > 0 and store.corrupt_files == []


async def test_live_map_stops_cleanly_on_sigterm(tmp_path):
    now = int(time.time() * 1000)
    frames = [
        {
            "e": "aggTrade",
            "E": now + 2,
            "s": "BTCUSDT",
            "a": i,
            "p": f"{60_000 + i}",
            "q": "0.5",
            "f": i,
            "l": i,
            "T": now - 10_000 + i * 10,
            "m": bool(i % 2),
        }
        for i in range(50)
    ]
    async with FakeBinance(by_subscription={"btcusdt@aggTrade": frames}) as binance:
        env = {**os.environ, "LIQ_BINANCE_WS_URL": binance.ws_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path / "data"), "map",
            "BTCUSDT", "--live", "--refresh", "0.2", "--mode", "top_n", "--threshold", "5",
            "-f", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert orjson.loads(first)["trades"] > 0
            os.kill(proc.pid, signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 143, err.decode()
    assert "Traceback" not in err.decode()
