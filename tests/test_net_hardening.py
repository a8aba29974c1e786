"""Network hardening end to end (issues #12 item 9, #13 items 8 and 9): ``liq fetch`` against a
venue that bans, and the fetch service against a server that trickles."""

from __future__ import annotations

import asyncio
import time

from typer.testing import CliRunner

from liqcli.cli.app import app
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
            results = await asyncio.wait_for(
                run_fetch(
                    store, ["BTCUSDT"], list(FETCH_DATASETS), start=NOW - DAY, http=http, now=NOW
                ),
                20,
            )
        elapsed = time.monotonic() - started
    assert {r.status for r in results} == {"error"}
    assert all("deadline" in (r.error or "") for r in results)
    assert elapsed < 5
