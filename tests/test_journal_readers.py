"""Readers see journaled rows (issue 12 item 3): ``Store.scan(..., include_journal=True)`` and
``journal.pending_rows`` read live and killed writers' segments read-only, without taking them
over; ``liq watch --replay store``, cascade replay and pressure's liquidation input use them."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import orjson
import polars as pl
import pytest

from liqcli.analytics.pressure import PressureConfig
from liqcli.core.timeutil import now_ms
from liqcli.services.cascade import replay_events
from liqcli.services.pressure import load_inputs
from liqcli.store import Journal, Store
from liqcli.store.journal import JOURNAL_DIR, pending_rows
from tests.fakes.ws_servers import FakeBinance
from tests.journal_segments import frame, journal_rows
from tests.test_journal import Child, liquidation
from tests.test_watch import binance_force, fake_env, read_lines, start_liq, wait_for

pytestmark = pytest.mark.timeout(90)

_LIVE_WRITER = """
import sys, time
from liqcli.store import Journal, Store
T0 = int(sys.argv[2])
journal = Journal(Store(sys.argv[1]), "liquidations", flush_interval=0.05, compact_interval=3600)
journal.open()
for i in range(300):
    journal.append({
        "exchange": "binance", "symbol": "BTCUSDT" if i % 3 else "币安人生USDT", "ts": T0 + i,
        "side": "long", "price": 100.0 + i, "qty": 1.0, "notional_usd": 100.0 + i,
        "venue_symbol": "BTCUSDT", "received_ts": T0 + i,
    })
journal.flush()
print("flushed", flush=True)
sys.stdin.readline()  # hold the journal open until told
journal.close()
print("closed", flush=True)
"""


def _segments(root: Path) -> list[Path]:
    return sorted((root / "liquidations" / JOURNAL_DIR).glob("*.arrows"))


def test_a_live_writers_rows_are_read_without_taking_its_segment_over(tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    t0 = now_ms() - 60_000
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_LIVE_WRITER), str(tmp_path), str(t0)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "flushed"
        (segment,) = _segments(tmp_path)
        before = segment.stat()
        store = Store(tmp_path)
        assert store.read("liquidations").height == 0  # nothing in Parquet yet
        got = store.read("liquidations", include_journal=True)
        assert got.height == 300
        assert got.schema == store.read("liquidations").schema
        assert store.scan("liquidations", include_journal=True, symbol="币安人生USDT").collect()[
            "price"
        ].to_list() == [100.0 + i for i in range(0, 300, 3)]
        window = store.read("liquidations", start=t0 + 100, end=t0 + 110, include_journal=True)
        assert window.sort("ts")["price"].to_list() == [100.0 + i for i in range(100, 110)]
        assert store.last_ts("liquidations", include_journal=True) == t0 + 299
        assert store.first_ts("liquidations", symbol="BTCUSDT", include_journal=True) == t0 + 1
        assert store.first_ts("liquidations") is None
        # Read-only: the writer's segment is where it was, untouched, and still its own.
        after = segment.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        )
        with Journal(store, "liquidations") as other:  # a second writer must not steal it
            assert other.stats.recovered_rows == 0
        assert segment.exists()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "closed"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    # The writer compacted its own rows; readers see each once.
    assert _segments(tmp_path) == []
    assert Store(tmp_path).read("liquidations", include_journal=True).height == 300


def test_rows_both_in_parquet_and_in_a_segment_are_read_once(tmp_path: Path) -> None:
    """A writer killed between its Parquet write and deleting its segment."""
    store = Store(tmp_path)
    with Journal(store, "liquidations") as journal:
        journal.extend([liquidation(i) for i in range(10)])
    directory = store.dataset_dir("liquidations") / JOURNAL_DIR
    (directory / "4242-0.arrows").write_bytes(frame([liquidation(i) for i in range(5, 15)]))
    got = store.read("liquidations", include_journal=True)
    assert got.height == 15
    assert got["price"].to_list() == [40_000.0 + i for i in range(15)]
    assert pending_rows(tmp_path, "liquidations").height == 10


def test_a_killed_writers_rows_are_seen_before_any_restart(tmp_path: Path) -> None:
    script = """
import sys
from liqcli.store import Journal, Store
T0 = 1_704_067_200_000
journal = Journal(Store(sys.argv[1]), "liquidations", flush_interval=0.05, compact_interval=3600)
journal.open()
for i in range(1000):
    journal.append({"exchange": "okx", "symbol": "BTCUSDT", "ts": T0 + i, "side": "short",
                    "price": 1.0, "qty": 1.0 + i, "notional_usd": 1.0 + i,
                    "venue_symbol": "BTC-USDT-SWAP", "received_ts": T0 + i})
journal.flush()
print("flushed", flush=True)
import time; time.sleep(60)
"""
    child = Child(script, str(tmp_path))
    try:
        child.wait_for("flushed")
    finally:
        child.kill9()
    store = Store(tmp_path)
    assert store.read("liquidations", exchange="okx", include_journal=True).height == 1000
    assert len(_segments(tmp_path)) == 1  # still there for the next writer to recover


async def test_cascade_replay_and_pressure_inputs_see_journaled_rows(tmp_path: Path) -> None:
    t0 = now_ms() - 10 * 60_000
    directory = tmp_path / "liquidations" / JOURNAL_DIR
    directory.mkdir(parents=True)
    rows = [
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "ts": t0 + i * 1000,
            "side": "long",
            "price": 60_000.0,
            "qty": 1.0,
            "notional_usd": 60_000.0,
            "venue_symbol": "BTCUSDT",
            "received_ts": t0 + i * 1000,
        }
        for i in range(20)
    ]
    (directory / "4242-0.arrows").write_bytes(frame(rows))
    source = replay_events("store", data_dir=tmp_path, symbols=["BTCUSDT"], exchanges=["binance"])
    events = [e for batch in await _collect(source) for e in batch]
    assert len(events) == 20
    config = PressureConfig()
    inputs = load_inputs(Store(tmp_path), "BTCUSDT", config, t0, t0 + 20_000)
    assert inputs.liquidations is not None and inputs.liquidations.height == 20
    assert inputs.liquidations_since == t0


async def _collect(source) -> list:
    return [batch async for batch in source.batches()]


async def test_replay_store_sees_a_kill9ed_watch_and_a_live_one(tmp_path: Path) -> None:
    """``liq watch --replay store`` once returned 0 events after kill -9 until the next start."""
    t = now_ms() - 120_000
    events = [
        binance_force("BTCUSDT", "SELL" if i % 2 else "BUY", "64000.5", "0.5", t + i * 1000)
        for i in range(6)
    ]
    binance = FakeBinance(by_subscription={"btcusdt@forceOrder": events})
    async with binance:
        env = fake_env(binance, None, None)
        args = ["--data-dir", str(tmp_path), "watch", "BTCUSDT", "-e", "binance"]
        live = await start_liq(*args, "--format", "jsonl", env=env)
        try:
            assert len(await read_lines(live.stdout, len(events))) == len(events)
            await wait_for(lambda: _journal_rows(tmp_path) >= len(events))
            # While it runs: the replay sees its rows, and it keeps its segment.
            assert await _replayed(tmp_path, env) == len(events)
            assert live.returncode is None
            live.send_signal(signal.SIGKILL)
            await live.wait()
        finally:
            if live.returncode is None:
                live.kill()
                await live.wait()
        assert not list((tmp_path / "liquidations").glob("exchange=*"))  # nothing compacted
        # After kill -9, before any new live start.
        assert await _replayed(tmp_path, env) == len(events)
        assert _journal_rows(tmp_path) == len(events)  # the replay took nothing over


def _journal_rows(root: Path) -> int:
    try:
        return journal_rows(root / "liquidations" / JOURNAL_DIR)
    except (OSError, AssertionError, pl.exceptions.PolarsError):
        return -1


async def _replayed(root: Path, env: dict) -> int:
    replay = await start_liq(
        "--data-dir",
        str(root),
        "watch",
        "--replay",
        "store",
        "--format",
        "jsonl",
        "-e",
        "binance",
        env={**env, "LIQ_BINANCE_WS_URL": "ws://127.0.0.1:9/nowhere"},
    )
    out, err = await asyncio.wait_for(replay.communicate(), 30)
    assert replay.returncode == 0, err.decode()
    docs = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert all(d["symbol"] == "BTCUSDT" for d in docs)
    return len(docs)


def test_pending_rows_of_a_missing_journal_is_empty(tmp_path: Path) -> None:
    assert pending_rows(tmp_path, "liquidations").height == 0
    assert Store(tmp_path).read("liquidations", include_journal=True).height == 0
    os.makedirs(tmp_path / "liquidations")
    assert pending_rows(tmp_path, "liquidations").height == 0
