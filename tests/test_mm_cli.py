"""``liq mm`` as users run it: a real subprocess killed with SIGTERM leaves no order on the fake's
books; --paper runs on the public streams only, with no key set; fills land in mm_fills;
usage errors before any network call; keys never printed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from decimal import Decimal

import orjson
import polars as pl
import pytest
from typer.testing import CliRunner

from liqcli.cli.app import app
from liqcli.services import mm as svc
from liqcli.store.parquet import Store
from liqcli.trading.strategies.market_maker import MMParams
from tests.fakes.backpack import FakeBackpack, new_keypair
from tests.test_mm_live import SYM, Session, until
from tests.test_mm_live import fake as fake  # the fixture

KEY, SECRET = new_keypair(bytes(range(1, 33)))
ARGS = ["mm", "--symbol", SYM, "--spread", "0.1", "--quantity", "0.1", "--interval", "0.2"]


def _env(fake: FakeBackpack, tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIQ_")}
    env.update(
        LIQ_BACKPACK_REST_URL=fake.rest_url,
        LIQ_BACKPACK_WS_URL=fake.ws_url,
        LIQ_DATA_DIR=str(tmp_path / "data"),
        LIQ_CONFIG=str(tmp_path / "none.toml"),
        **extra,
    )
    (tmp_path / "none.toml").write_text("")
    return env


@pytest.mark.parametrize(("sig", "code", "reason"), [
    (signal.SIGTERM, 143, "SIGTERM"),
    (signal.SIGINT, 130, "interrupted"),
])  # fmt: skip
async def test_sigterm_or_ctrl_c_to_a_real_process_leaves_no_order(
    fake, tmp_path, sig, code, reason
):
    env = _env(fake, tmp_path, LIQ_BACKPACK_API_KEY=KEY, LIQ_BACKPACK_API_SECRET=SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "liqcli", *ARGS, "--max-orders", "2", "--format", "jsonl",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await fake.wait_subscribed(f"bookTicker.{SYM}", timeout=20)
        fake.set_book([("99.99", "10")], [("100.01", "10")])
        await fake.push_book_ticker("99.99", "10", "100.01", "10")
        await until(lambda: len(fake.open_orders()) == 4, timeout=10, what="quotes")
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == code, err.decode()
    assert fake.open_orders() == []
    assert any(o.status == "Cancelled" for o in fake.orders.values())
    records = [orjson.loads(line) for line in out.splitlines()]
    assert records[-1]["type"] == "stop"
    assert reason in records[-1]["reason"]
    assert {"quote", "order"} <= {r["type"] for r in records}
    assert all(r["exchange"] == "backpack" and r["symbol"] == SYM for r in records)
    assert SECRET.encode() not in out + err and KEY.encode() not in out + err


async def test_paper_runs_on_public_streams_without_keys(fake, tmp_path, monkeypatch):
    for name in ("LIQ_BACKPACK_API_KEY", "LIQ_BACKPACK_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    store = Store(tmp_path)
    p = MMParams(symbol=SYM, spread=0.1, quantity=0.1, interval_s=0.2, max_position=1.0)
    s = Session(fake, p, paper=True, store=store)
    await s.book()
    await until(lambda: s.run.strategy.working, what="paper quotes")
    await fake.trade("99.90", "5", buyer_maker=True)  # prints through our 99.95 bid
    await until(lambda: s.run.strategy.stats.fills == 1, what="paper fill")
    await s.stop()
    assert fake.orders == {} and fake.open_orders() == []
    signed = {("POST", "/api/v1/order"), ("POST", "/api/v1/orders"), ("DELETE", "/api/v1/orders")}
    assert not signed & {(m, p) for m, p, _ in fake.requests}
    fills = store.read("mm_fills")
    assert fills.height == 1
    row = fills.row(0, named=True)
    assert (row["side"], row["price"], row["qty"], row["liquidity"], row["paper"]) == (
        "buy", 99.95, 0.1, "maker", True,
    )  # fmt: skip
    state = store.read("mm_state")
    assert state.height >= 1 and state["position"][-1] == 0.1


async def test_live_fills_are_stored_with_the_venues_ids(fake, tmp_path):
    store = Store(tmp_path)
    p = MMParams(symbol=SYM, spread=0.1, quantity=0.1, interval_s=0.2, max_position=1.0)
    s = Session(fake, p, store=store)
    await s.book()
    await until(lambda: len(fake.open_orders()) == 2, what="quotes")
    await fake.trade("100.10", "5", buyer_maker=False)  # lifts our 100.05 ask
    await until(lambda: s.run.strategy.stats.fills == 1, what="fill")
    # stored within a second, while the session still runs (a kill -9 loses at most that)
    await until(lambda: s.run._last_flush_ms and not s.run._fill_rows, timeout=3, what="flush")
    assert store.read("mm_fills").height == 1
    await s.stop()
    fills = store.read("mm_fills")
    (row,) = fills.iter_rows(named=True)
    (venue_fill,) = fake.fill_log
    assert row["fill_id"] == str(venue_fill["tradeId"]) and row["order_id"] == venue_fill["orderId"]
    assert (row["side"], row["qty"], row["fee_asset"]) == ("sell", 0.1, "USDC")
    assert row["fee"] == float(Decimal(venue_fill["fee"]))
    assert fills.schema["ts"] == pl.Datetime("ms", "UTC")
    assert any(r["type"] == "fill" for r in s.records)
    assert any(r["type"] == "position" and r["qty"] == -0.1 for r in s.records)


def test_usage_errors_before_any_network_call(tmp_path, monkeypatch):
    monkeypatch.setenv("LIQ_BACKPACK_REST_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("LIQ_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    runner = CliRunner()
    cases = [
        ([*ARGS, "--spread", "-1"], "--spread"),
        ([*ARGS, "--exchange", "kraken"], "--exchange"),
        ([*ARGS, "--market-type", "spot"], "--market-type"),
        ([*ARGS, "--stop-loss", "5"], "--stop-loss"),
        ([*ARGS, "--format", "csv"], "--format"),
        ([*ARGS, "--target-position", "3"], "--target-position"),
    ]
    for args, word in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert word in result.output and "Traceback" not in result.output
    monkeypatch.delenv("LIQ_BACKPACK_API_KEY", raising=False)
    monkeypatch.delenv("LIQ_BACKPACK_API_SECRET", raising=False)
    result = runner.invoke(app, ARGS)
    assert result.exit_code == 2 and "LIQ_BACKPACK_API_KEY" in result.output
    monkeypatch.setenv("LIQ_BACKPACK_API_KEY", KEY)
    monkeypatch.setenv("LIQ_BACKPACK_API_SECRET", "bm90IGEga2V5" + SECRET[12:])
    result = runner.invoke(app, ARGS)
    assert result.exit_code == 2 and SECRET[12:] not in result.output and KEY not in result.output


def test_keys_from_the_config_file(tmp_path, monkeypatch):
    from liqcli.cli import mm as cli_mm

    monkeypatch.delenv("LIQ_BACKPACK_API_KEY", raising=False)
    monkeypatch.delenv("LIQ_BACKPACK_API_SECRET", raising=False)

    from types import SimpleNamespace

    ctx = SimpleNamespace(default_map={"backpack": {"api_key": KEY, "api_secret": SECRET}})
    signer = cli_mm._signer(ctx)
    assert signer.api_key == KEY and SECRET not in repr(signer)


def test_dashboard_fits_80_columns():
    from rich.console import Console

    from liqcli.render.mm_view import render_mm
    from liqcli.trading.sim import SimBroker
    from liqcli.trading.strategies.market_maker import MarketRules

    cfg = svc.MMConfig("backpack", MMParams(symbol=SYM, spread=0.1, quantity=0.1), paper=True)
    run = svc.MMRun(cfg, MarketRules(0.01, 0.01, 0.01), SimBroker(10_000.0))
    from liqcli.core.events import BookTop

    run.step(BookTop("backpack", SYM, int(time.time() * 1000), 99.99, 5, 100.01, 5, 1))
    run.tick()
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_mm(run))
    text = console.export_text()
    lines = text.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert "99.99" in text and "mid" in text and "position" in text
