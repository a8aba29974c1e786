"""A real ``liq watch`` against the fake Binance server, with a full disk (an injected ENOSPC)
and with bad rows left in the journal and the store by an earlier run (issue 13 items 2 and 5)."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from liqcli.core.timeutil import now_ms
from liqcli.store import Store
from liqcli.store.journal import JOURNAL_DIR
from tests.fakes.ws_servers import FakeBinance
from tests.journal_segments import frame
from tests.test_watch import binance_force, fake_env, read_lines

pytestmark = pytest.mark.timeout(90)

# `liq` with the journal's writes (and, with "parquet", the store's too) failing with ENOSPC.
_FULL_DISK_LIQ = """
import errno, os, sys
import liqcli.store.journal as journal
import liqcli.store.parquet as parquet

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

journal.os = type("os", (), {n: getattr(os, n) for n in dir(os) if not n.startswith("__")})
journal.os.write = no_space
if sys.argv[1] == "parquet":
    parquet._write_temp = no_space
sys.argv = ["liq", *sys.argv[2:]]
from liqcli.cli.app import main
main()
"""


async def _run_until_stored(tmp_path: Path, mode: str, events: list[dict]) -> tuple[int, str]:
    binance = FakeBinance(by_subscription={"btcusdt@forceOrder": events})
    async with binance:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            textwrap.dedent(_FULL_DISK_LIQ),
            mode,
            "--data-dir",
            str(tmp_path),
            "watch",
            "BTCUSDT",
            "-e",
            "binance",
            "--format",
            "jsonl",
            env=fake_env(binance, None, None),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert len(await read_lines(proc.stdout, len(events))) == len(events)
        await asyncio.sleep(1.5)  # a few flushes, each failing
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, err.decode()


def _events(n: int) -> list[dict]:
    t = now_ms() - 60_000
    return [binance_force("BTCUSDT", "SELL", "64000.5", "0.5", t + i * 10) for i in range(n)]


async def test_a_full_journal_disk_keeps_rows_in_memory_and_says_so_once(tmp_path: Path) -> None:
    """197,578 events printed and 0 stored, with 70 tracebacks, once."""
    code, err = await _run_until_stored(tmp_path, "journal", _events(40))
    assert code == 130, err
    assert "Traceback" not in err
    assert err.count("No space left on device") == 1, err  # one error, not one per flush
    # Nothing reached the segment, but every row reached Parquet at shutdown.
    assert Store(tmp_path).read("liquidations").height == 40


async def test_rows_that_reach_no_disk_make_the_run_fail(tmp_path: Path) -> None:
    code, err = await _run_until_stored(tmp_path, "parquet", _events(20))
    assert code == 1, err  # not 130: something was lost
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("liq: error: ")
    assert "No space left on device" in err.strip().splitlines()[-1]


async def test_bad_rows_left_by_an_earlier_run_do_not_block_the_next_start(tmp_path: Path) -> None:
    """A notional above ~9.2e12, an infinite one, a time past 9999: every start once exited 1."""
    t = now_ms() - 120_000
    good = {
        "exchange": "binance",
        "symbol": "BTCUSDT",
        "side": "long",
        "price": 64_000.0,
        "qty": 1.0,
        "notional_usd": 64_000.0,
        "venue_symbol": "BTCUSDT",
    }
    rows = [
        {**good, "ts": t, "received_ts": t},
        {**good, "ts": t + 1, "received_ts": t + 1, "notional_usd": 9.3e12},
        {**good, "ts": t + 2, "received_ts": t + 2, "notional_usd": float("inf")},
        {**good, "ts": 2**62, "received_ts": t + 3},
        {**good, "ts": t + 4, "received_ts": 2**62},
    ]
    directory = tmp_path / "liquidations" / JOURNAL_DIR
    directory.mkdir(parents=True)
    (directory / "4242-0.arrows").write_bytes(frame(rows))
    binance = FakeBinance(by_subscription={"btcusdt@forceOrder": []})
    async with binance:
        for _ in range(2):  # the first start recovers the segment, the second restores from Parquet
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "liqcli",
                "--data-dir",
                str(tmp_path),
                "watch",
                "BTCUSDT",
                "-e",
                "binance",
                "--format",
                "jsonl",
                "--duration",
                "1.5",
                env=fake_env(binance, None, None),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()
            assert "Traceback" not in err.decode()
    stored = Store(tmp_path).read("liquidations")
    assert sorted(stored["notional_usd"].to_list()) == [64_000.0, 9.3e12]
    (aside,) = directory.glob("*.rows-rejected")
    assert aside.name == "4242-0.arrows.rows-rejected"
