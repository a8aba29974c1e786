"""The terminal dashboards fit the terminal: ``liq watch`` and ``liq cascade`` rendered by rich at
80×24, 120×40 and 200×50 (what a terminal of that size shows), and venue strings that are rich
markup or terminal escape codes shown as text, never interpreted."""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from liqcli.analytics.windows import EventFilter, WindowAggregator
from liqcli.core.events import Liquidation
from liqcli.core.timeutil import now_ms
from liqcli.exchanges.ws import VenueStatus
from liqcli.render.cascade_view import CascadeViewInfo, render_cascade_view
from liqcli.render.dashboard import DashboardInfo, render_dashboard, usd
from liqcli.render.output import render as render_rows

T = 1_763_700_000_000
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "1000PEPEUSDT", "BTC-USDT-SWAP"]
TIME_ROW = re.compile(r"^\d\d:\d\d:\d\d ")
AMOUNT = re.compile(r"-?\$[\d.,]+[KMBT]?")


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def busy_aggregator(symbols=SYMBOLS, n: int = 400) -> WindowAggregator:
    """A day of liquidations with amounts from $5 to $200M, so the widest figures show."""
    agg = WindowAggregator("3m,15m,1h,4h,1d", clock=Clock(T), latest=20)
    rng = random.Random(7)
    for i in range(n):
        usd_value = rng.choice([5.0, 850.0, 12_345.0, 987_654.0, 129_456_789.0, 212_000_000.0])
        agg.add(
            Liquidation(
                rng.choice(["binance", "okx", "bybit"]),
                rng.choice(symbols),
                rng.choice(["long", "short"]),
                64_123.45,
                usd_value / 64_123.45,
                usd_value,
                T - (0 if i >= n - 25 else rng.randint(0, 80_000_000)),
            )
        )
    return agg


def statuses() -> dict[str, VenueStatus]:
    return {
        "binance": VenueStatus("binance", state="connected", events=1234, last_message_ms=T),
        "okx": VenueStatus("okx", state="down", reconnects=3, gaps=2, last_message_ms=T - 9_000),
        "bybit": VenueStatus("bybit", state="connected", events=88, last_message_ms=T - 1_000),
    }


def screen(renderable, width: int, height: int) -> list[str]:
    """What a terminal of that size shows (rich decides the layout from the console's size)."""
    console = Console(
        file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None
    )
    console.print(renderable)
    return console.file.getvalue().rstrip("\n").split("\n")


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 40), (200, 50)])
def test_watch_dashboard_fits_the_terminal(width: int, height: int) -> None:
    snap = busy_aggregator().snapshot(10)
    info = DashboardInfo(exchanges=["binance", "okx", "bybit"], started_ms=T, store="/data/liq")
    lines = screen(render_dashboard(snap, statuses(), info, now_ms=T), width, height)
    text = "\n".join(lines)
    assert len(lines) <= height, text
    assert all(len(line) <= width for line in lines)
    assert "…" not in text, text  # no amount (nor anything else) cut
    amounts = AMOUNT.findall(text)
    assert "$129M" in amounts and "$212M" in amounts and "$12.3K" in amounts
    # The venues are on screen, with what matters about the one that is down.
    assert "binance" in text and "bybit" in text
    okx = next(line for line in lines if re.search(r"\bokx\b.*down|down.*\bokx\b", line))
    assert "3" in okx
    # The latest events get every line the other panels leave.
    latest = [line for line in lines if TIME_ROW.match(line)]
    if height >= 40:
        assert len(latest) == 20  # all of them
    else:
        assert len(latest) >= 7
        assert len(lines) == height  # the screen is used to the last line
        assert f"Latest liquidations ({len(latest)} of 20)" in text
    assert "Rolling totals" in text or height < 40
    for window in ("3m", "15m", "1h", "4h", "1d"):
        assert any(line.startswith(window + " ") for line in lines), window


@pytest.mark.parametrize(("width", "height"), [(60, 20), (40, 12), (30, 8)])
def test_small_terminals_get_what_fits_in_priority_order(width: int, height: int) -> None:
    snap = busy_aggregator().snapshot(10)
    info = DashboardInfo(exchanges=["binance", "okx", "bybit"], started_ms=T)
    lines = screen(render_dashboard(snap, statuses(), info, now_ms=T), width, height)
    assert len(lines) <= height and all(len(line) <= width for line in lines)
    assert any(line.startswith("1d ") for line in lines)  # the rolling totals come first
    assert not any("…" in a for line in lines[1:] for a in AMOUNT.findall(line + " "))
    cascade = render_cascade_view([cascade_state("BTCUSDT", "MAJOR", "early", 1e8)], [alert(1)],
                                  statuses(), {}, CascadeViewInfo(["BTCUSDT"], ["binance"], "MINOR",
                                  "live", None, T), now_ms=T)  # fmt: skip
    lines = screen(cascade, width, height)
    assert len(lines) <= height - 1 and any("MAJOR" in line for line in lines)


def test_watch_dashboard_keeps_everything_in_a_file() -> None:
    """Printed to a pipe or file there is no screen: every panel and row is there."""
    snap = busy_aggregator().snapshot(10)
    info = DashboardInfo(exchanges=["binance", "okx"], started_ms=T)
    console = Console(file=io.StringIO(), width=140)
    console.print(render_dashboard(snap, statuses(), info, now_ms=T))
    text = console.file.getvalue()
    assert sum(1 for line in text.splitlines() if TIME_ROW.match(line)) == 20
    assert "Per symbol (total $)" in text and "Venues" in text and "reconnects" in text


def test_named_symbols_get_their_table_before_the_rankings() -> None:
    agg = WindowAggregator(
        "3m,1h",
        clock=Clock(T),
        event_filter=EventFilter(symbols=frozenset({"BTCUSDT", "ETHUSDT"})),
    )
    agg.add(Liquidation("binance", "BTCUSDT", "long", 1.0, 5e6, 5e6, T))
    info = DashboardInfo(exchanges=["binance"], started_ms=T)
    lines = screen(render_dashboard(agg.snapshot(10), statuses(), info, now_ms=T), 80, 24)
    text = "\n".join(lines)
    assert "Per symbol (total $)" in text and "ETHUSDT" in text
    assert len(lines) <= 24


def test_usd_is_compact_and_rounds_up_a_unit() -> None:
    assert usd(129_456_789) == "$129M"
    assert usd(1_234_567) == "$1.23M"
    assert usd(12_345) == "$12.3K"
    assert usd(999_600) == "$1.00M"
    assert usd(999.6) == "$1.00K"
    assert usd(9_996) == "$10.0K"
    assert usd(950) == "$950"
    assert usd(0) == "$0"
    assert usd(-45_600) == "-$45.6K"
    assert usd(2.5e12) == "$2.50T"
    assert max(len(usd(10**e * 9.99)) for e in range(15)) <= 6


# -- cascade view -----------------------------------------------------------------------------------


def cascade_state(symbol: str, level: str, phase: str, total: float) -> dict:
    return {
        "symbol": symbol,
        "level": level,
        "direction": "long_liquidation",
        "total_usd_60s": total,
        "long_usd_60s": total * 0.9,
        "short_usd_60s": total * 0.1,
        "phase": phase,
        "price": 97_250.5,
        "price_change_pct": -0.95 if phase != "quiet" else None,
        "price_change_30s_pct": -0.95,
        "price_change_30s_span_s": 4.0,
        "recommended_action": "follow_short" if phase != "quiet" else "hold",
        "action_note": "",
        "confidence": 0.74,
        "signature": {"price_move_30s": True, "oi_falling": None, "taker_ratio": None},
    }


def alert(i: int) -> dict:
    return {
        "type": "cascade_level" if i % 2 else "cascade_end",
        "ts": "2025-11-21T04:40:00.000Z",
        "symbol": "BTCUSDT",
        "level": "MAJOR",
        "peak_level": "MAJOR",
        "direction": "long_liquidation",
        "total_usd_60s": 129_456_789.0,
        "total_usd": 212_000_000.0,
        "price_change_pct": -0.95,
        "phase": "early",
        "recommended_action": "follow_short",
        "duration_s": 75.0,
        "events": 1_234,
        "reason": "quiet",
    }


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 40), (200, 50)])
def test_cascade_view_fits_the_terminal(width: int, height: int) -> None:
    states = [
        cascade_state("BTCUSDT", "MAJOR", "early", 129_456_789.0),
        cascade_state("ETHUSDT", "QUIET", "quiet", 0.0),
    ]
    context = {
        s: {"polled_ms": T - 5_000, "oi_change_pct": -0.42, "taker_ratio": 0.61,
            "funding_rate": -0.0001, "prev_funding_rate": 0.0001, "error": None}
        for s in ("BTCUSDT", "ETHUSDT")
    }  # fmt: skip
    info = CascadeViewInfo(["BTCUSDT", "ETHUSDT"], ["binance", "okx", "bybit"], "MINOR", "live",
                           "/data", T, counters={"liquidations": 5_000, "cascades": 0})  # fmt: skip
    alerts = [alert(i) for i in range(20)]
    view = render_cascade_view(states, alerts, statuses(), context, info, now_ms=T)
    lines = screen(view, width, height)
    text = "\n".join(lines)
    assert len(lines) <= height - 1, text  # the Live's cursor line stays free: no scrolling
    assert "…" not in text, text
    assert "$129M" in text and "MAJOR" in text and "LONGS" in text
    assert "-0.95% 4s" in text  # the move and the span it covers
    assert "1 active / 0 ended" in text  # not "0 cascades" with a MAJOR one on screen
    assert "binance" in text and "okx" in text  # venues
    shown_alerts = sum(1 for line in lines if TIME_ROW.match(line))
    assert shown_alerts >= (3 if height < 40 else 20)


def test_cascade_row_after_shutdown_keeps_its_direction() -> None:
    """``finish()`` ended the cascade; the 60-s window is still MAJOR and long-sided."""
    state = cascade_state("BTCUSDT", "MAJOR", "quiet", 12_000_000.0)
    info = CascadeViewInfo(["BTCUSDT"], ["binance"], "MINOR", "live", None, T,
                           counters={"cascades": 1})  # fmt: skip
    lines = screen(render_cascade_view([state], [], {}, {}, info, now_ms=T), 120, 30)
    row = next(line for line in lines if line.startswith("BTCUSDT"))
    assert "MAJOR" in row and "LONGS" in row
    assert "0 active / 1 ended cascade " in "\n".join(lines) + " "


# -- hostile venue strings ----------------------------------------------------------------------

HOSTILE = ["[/]", "[bold red]PWN[/]", "A\x1b[2JB", "RTL\u202eDSU", "BELL\x07", "[link=x]y"]


def test_markup_and_escape_codes_in_symbols_are_shown_as_text() -> None:
    agg = WindowAggregator("3m,1h", clock=Clock(T), latest=20)
    for i, symbol in enumerate(HOSTILE):
        agg.add(Liquidation("binance", symbol, "long", 1.0, 1e5 + i, 1e5 + i, T - i))
    agg.add(Liquidation("[i]ex[/i]", "BTCUSDT", "short", 1.0, 5.0, 5.0, T))  # a column header
    bad_status = {"bin[/]ance\x1b[31m": VenueStatus("x", state="connected")}
    info = DashboardInfo(exchanges=["binance"], started_ms=T)
    first = render_dashboard(agg.snapshot(10), bad_status, info, now_ms=T)
    for renderable in (
        first,
        render_cascade_view(
            [cascade_state(s, "MAJOR", "early", 1e6) for s in HOSTILE],
            [{**alert(i), "symbol": s, "reason": "[/]\x1b[5m"} for i, s in enumerate(HOSTILE)],
            bad_status,
            {"[/]\x1b]0;title\x07": {"polled_ms": T, "error": "[/]\x1b[2J"}},
            CascadeViewInfo(HOSTILE, ["binance"], "MINOR", "live", None, T),
            now_ms=T,
        ),
    ):
        console = Console(file=io.StringIO(), width=250, force_terminal=True)
        console.print(renderable)  # a MarkupError here is the frozen dashboard of issue 13.12
        raw = console.file.getvalue()
        assert "\x1b[2J" not in raw and "\x07" not in raw and "\u202e" not in raw
        assert "\x1b]0;" not in raw and "\x1b[5m" not in raw
        plain_text = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # rich's own colours
        assert "[/]" in plain_text and "[bold red]PWN[/]" in plain_text
        assert "[i]ex[/i]" in plain_text or renderable is not first
        assert r"A\x1b[2JB" in plain_text and r"RTL\u202eDSU" in plain_text


def test_tables_escape_control_characters() -> None:
    out = io.StringIO()
    render_rows([{"symbol": "A\x1b[2JB", "rows": 1}], "table", out=out)
    assert "\x1b" not in out.getvalue() and r"A\x1b[2JB" in out.getvalue()
    out = io.StringIO()
    render_rows([{"symbol": "A\x1b[2JB"}], "csv", out=out)
    assert "A\x1b[2JB" in out.getvalue()  # data formats keep the exact value


# -- for real: liq watch in an 80×24 tmux pane, against the fake venues ----------------------------


def tmux_pane(session: str) -> list[str]:
    out = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                         text=True, timeout=10, check=True)  # fmt: skip
    return out.stdout.rstrip("\n").split("\n")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_watch_fits_a_real_80x24_terminal(tmp_path: Path) -> None:
    from tests.fakes.ws_servers import FakeBinance, FakeBybit
    from tests.test_watch import BYBIT_INSTRUMENTS, binance_force, bybit_push

    binance = FakeBinance()
    bybit = FakeBybit(instruments=BYBIT_INSTRUMENTS)
    session = f"liq-test-{os.getpid()}-{T % 10_000}"
    async with binance, bybit:
        env = {"LIQ_BINANCE_WS_URL": binance.ws_url, "LIQ_BINANCE_REST_URL": binance.rest_url,
               "LIQ_BYBIT_WS_URL": bybit.ws_url, "LIQ_BYBIT_REST_URL": bybit.rest_url}  # fmt: skip
        command = [sys.executable, "-m", "liqcli", "--data-dir", str(tmp_path), "watch",
                   "-e", "binance", "-e", "bybit", "--no-store"]  # fmt: skip
        exit_file = tmp_path / "exit"
        shell = f"{shlex.join(command)} 2>{tmp_path / 'stderr'}; echo $? > {exit_file}; sleep 30"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                        *(f"-e{k}={v}" for k, v in env.items()), shell], check=True, timeout=10)  # fmt: skip
        try:
            await bybit.wait_until(lambda: bybit.subscriptions, timeout=20)
            await binance.wait_until(lambda: binance.subscriptions, timeout=20)
            t = now_ms()
            for i in range(30):
                symbol = ["BTCUSDT", "ETHUSDT", "[/]", "X\x1b[2JY"][i % 4]
                qty = f"{1.5 * (i + 1) ** 3:.3f}"  # $97K .. $2.6B at 65,000
                binance.push_to("!forceOrder@arr",
                                binance_force(symbol, "SELL" if i % 2 else "BUY", "65000", qty, t + i))  # fmt: skip
            bybit.push_to("allLiquidation.BTCUSDT", bybit_push("BTCUSDT", "Buy", "64000", "2", t))
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                lines = tmux_pane(session)
                text = "\n".join(lines)
                if "31 events" in text or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.3)
            assert "31 events" in text, text
            assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
            assert "…" not in text, text
            assert "venues: binance connected" in text and "bybit connected" in text
            assert "Latest liquidations (" in text  # as many rows as fit, and says so
            assert sum(1 for line in lines if TIME_ROW.match(line)) >= 7
            assert "[/]" in text and r"X\x1b[2JY" in text  # shown, not interpreted
            subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True, timeout=10)
            deadline = asyncio.get_running_loop().time() + 20
            while not exit_file.exists() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
            assert exit_file.read_text().strip() == "130"
            assert "Error" not in (tmp_path / "stderr").read_text()  # no MarkupError at exit
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
