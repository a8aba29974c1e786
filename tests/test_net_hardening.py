"""Network hardening end to end (issues #12 item 9, #13 items 8 and 9): ``liq fetch`` against a
venue that bans, and the fetch service against a server that trickles."""

from __future__ import annotations

import asyncio
import time

import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.errors import NetworkError
from liqcli.exchanges.binance.rest import FETCH_DATASETS, binance_http
from liqcli.services.fetch import run_fetch
from liqcli.store.parquet import Store
from tests.fakes.binance_rest import FakeBinanceRest

runner = CliRunner()
DAY = 86_400_000
NOW = 1_795_046_400_000 + 120_000


def test_cli_fetch_stops_at_the_second_ban_with_a_clear_message(tmp_path):
    # Issue #12: 464 x 418 in one run, 10 requests resumed at once after each Retry-After.
    with FakeBinanceRest() as server:
        server.inject("418", count=10_000, retry_after=0.3)
        started = time.monotonic()
        result = runner.invoke(
            app,
            ["--data-dir", str(tmp_path), "fetch", "BTCUSDT", "ETHUSDT", "--since", "2d"],
            env={"LIQ_BINANCE_REST_URL": server.url},
        )
        elapsed = time.monotonic() - started
        statuses = [r.status for r in server.requests]
    assert result.exit_code == 1, result.output
    assert "banned again (HTTP 418" in result.output + result.stderr
    # What was in flight when the ban came (at most 10), then one probe: nothing more.
    assert set(statuses) == {418} and len(statuses) <= 11
    assert elapsed < 10


async def test_fetch_against_a_trickling_server_ends(tmp_path):
    # Issue #13: 1 byte every 2 s kept `liq fetch` running past 300 s.
    store = Store(tmp_path)
    with FakeBinanceRest(now_ms=NOW) as server:
        server.inject("trickle", count=10_000, delay_s=0.05)
        started = time.monotonic()
        async with binance_http(server.url, timeout=1.0, deadline=0.3, backoff_s=0.01) as http:
            # the symbol check (exchangeInfo) comes first and ends the run in one line
            with pytest.raises(NetworkError, match="deadline"):
                await asyncio.wait_for(
                    run_fetch(store, ["BTCUSDT"], ["klines"], start=NOW - DAY, http=http, now=NOW),
                    20,
                )
            # without it, every dataset's requests end at their deadline too
            results = await asyncio.wait_for(
                run_fetch(
                    store,
                    ["BTCUSDT"],
                    list(FETCH_DATASETS),
                    start=NOW - DAY,
                    http=http,
                    now=NOW,
                    check_symbols=False,
                ),
                20,
            )
        elapsed = time.monotonic() - started
    assert {r.status for r in results} == {"error"}
    assert all("deadline" in (r.error or "") for r in results)
    assert elapsed < 8


async def test_overlap_copies_that_differ_per_connection_are_dropped_by_the_event_dedup(
    monkeypatch,
):
    # Raw-frame dedup in the WebSocket client only catches identical copies. A venue that stamps
    # each push per connection (Bybit's "ts") gets past it during a planned reconnect; the
    # event-key dedup downstream (watch, cascade) must drop those copies.
    from liqcli.exchanges.ws import WsTimings
    from liqcli.services.streams import StreamOptions, liquidation_stream
    from liqcli.services.watch import WatchConfig, WatchState
    from tests.fakes.ws_servers import FakeBybit

    topic, n = "allLiquidation.BTCUSDT", 120
    t0 = 1_795_046_400_000

    def push(seq: int) -> dict:
        return {
            "topic": topic,
            "type": "snapshot",
            "ts": t0 + seq,
            "data": [{"T": t0 + seq, "s": "BTCUSDT", "S": "Buy", "v": "0.1", "p": "30000"}],
        }

    def stamped(conn_id: int, frame: dict) -> dict:
        return {**frame, "ts": frame["ts"] + 1000 * conn_id}

    timings = WsTimings(max_lifetime=0.15, backoff_initial=5.0, close_timeout=0.2)
    async with FakeBybit() as server:
        monkeypatch.setenv("LIQ_BYBIT_WS_URL", server.ws_url)
        state = WatchState(WatchConfig(exchanges=["bybit"], symbols=["BTCUSDT"]), clock=lambda: t0)
        async with liquidation_stream(
            ["bybit"], ["BTCUSDT"], options=StreamOptions(timings=timings)
        ) as stream:

            async def consume() -> None:
                async for event in stream:
                    state.ingest(event)

            consumer = asyncio.create_task(consume())
            await server.wait_until(lambda: topic in {k for _, k in server.subscriptions})
            for seq in range(n):
                await server.publish(topic, push(seq), per_connection=stamped)
                await asyncio.sleep(0.005)
            await server.wait_until(
                lambda: state.counters.received - state.counters.duplicates >= n
            )
            await asyncio.sleep(0.1)
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            status = stream.statuses["bybit"]
    assert server.connections >= 3 and status.gaps == 0
    counters = state.counters
    assert counters.received - counters.duplicates == n  # every event once
    assert counters.duplicates > 0  # the overlap's copies did reach the event dedup
    assert status.overlap_duplicates == 0  # no identical raw copies to catch at the socket


def test_cli_cascade_leaves_no_exec_command_running_after_it_exits(tmp_path):
    # Issue #13: an --exec command still running at shutdown survived liq (shell and child).
    import os
    import shlex
    import subprocess
    import sys

    import orjson

    from liqcli.core.events import Liquidation
    from tests.test_alerts import process_alive

    t0 = 1_767_225_600_000
    session = tmp_path / "session.jsonl"
    events = [
        Liquidation("binance", "BTCUSDT", "long", 100.0, usd / 100.0, usd, t0 + i * 1000)
        for i, usd in enumerate((70, 80, 250, 700))
    ]
    session.write_bytes(b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in events))
    pid_file = tmp_path / "pid"
    child = (
        "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)"
    )
    command = shlex.join([sys.executable, "-c", child, str(pid_file)]) + " | cat"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "liqcli",
            "--data-dir",
            str(tmp_path / "data"),
            "cascade",
            "BTCUSDT",
            "--replay",
            str(session),
            "--threshold-scale",
            "0.0001",
            "-f",
            "jsonl",
            "--exec",
            command,
            "--exec-timeout",
            "60",
        ],
        capture_output=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert pid_file.exists(), done.stderr.decode()  # the command did start
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not process_alive(pid)
