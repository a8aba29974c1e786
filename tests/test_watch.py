"""``liq watch`` end to end: real ``liq`` subprocesses and the real stream client against the fake
Binance, OKX and Bybit servers on 127.0.0.1, with faults (drops, re-sends, garbage, kill -9)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import polars as pl
import pytest
from rich.console import Console

from liqcli.analytics.windows import MICRO, EventFilter, WindowAggregator
from liqcli.core.events import Liquidation
from liqcli.core.timeutil import iso_ms, now_ms
from liqcli.exchanges.ws import VenueStatus, WsTimings
from liqcli.render.dashboard import BINANCE_NOTE, DashboardInfo, render_dashboard
from liqcli.services.streams import StreamOptions, liquidation_stream
from liqcli.services.watch import WatchConfig, WatchState, run_watch
from liqcli.store.parquet import Store
from tests.fakes.venue_rest import bybit_instrument, okx_instrument
from tests.fakes.ws_servers import DROP, FakeBinance, FakeBybit, FakeOkx, Garbage
from tests.journal_segments import journal_rows

pytestmark = pytest.mark.timeout(60)

FAST = WsTimings(stale_timeout=5.0, backoff_initial=0.01, backoff_max=0.05, open_timeout=2.0)
OKX_INSTRUMENTS = [
    okx_instrument("BTC-USDT-SWAP", "0.01"),
    okx_instrument("ETH-USDT-SWAP", "0.1"),
    okx_instrument("BTC-USD-SWAP", "100"),
]
BYBIT_INSTRUMENTS = [bybit_instrument("BTCUSDT"), bybit_instrument("ETHUSDT")]


# -- venue frames, in each venue's wire format ----------------------------------------------------


def binance_force(symbol: str, order_side: str, avg_price: str, filled: str, ts: int) -> dict:
    return {
        "e": "forceOrder",
        "E": ts + 7,
        "o": {
            "s": symbol,
            "S": order_side,
            "o": "LIMIT",
            "f": "IOC",
            "q": filled,
            "p": "1",  # the order's limit price; the fill is at "ap"
            "ap": avg_price,
            "X": "FILLED",
            "l": filled,
            "z": filled,
            "T": ts,
        },
    }


def okx_push(inst_id: str, side: str, pos_side: str, bk_px: str, contracts: str, ts: int) -> dict:
    family = "-".join(inst_id.split("-")[:2])
    return {
        "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
        "data": [
            {
                "instId": inst_id,
                "instFamily": family,
                "instType": "SWAP",
                "uly": family,
                "details": [
                    {
                        "side": side,
                        "posSide": pos_side,
                        "bkPx": bk_px,
                        "sz": contracts,
                        "bkLoss": "0",
                        "ccy": "",
                        "ts": str(ts),
                    }
                ],
            }
        ],
    }


def bybit_push(symbol: str, side: str, price: str, size: str, ts: int) -> dict:
    return {
        "topic": f"allLiquidation.{symbol}",
        "type": "snapshot",
        "ts": ts + 3,
        "data": [{"T": ts, "s": symbol, "S": side, "v": size, "p": price}],
    }


def fake_env(binance: FakeBinance | None, okx: FakeOkx | None, bybit: FakeBybit | None) -> dict:
    env = dict(os.environ)
    for name, fake in (("BINANCE", binance), ("OKX", okx), ("BYBIT", bybit)):
        if fake is not None:
            env[f"LIQ_{name}_WS_URL"] = fake.ws_url
            env[f"LIQ_{name}_REST_URL"] = fake.rest_url
    return env


async def start_liq(*args: str, env: dict) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "liqcli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_lines(stream: asyncio.StreamReader, n: int, timeout: float = 20.0) -> list[str]:
    lines = []
    async with asyncio.timeout(timeout):
        while len(lines) < n:
            line = await stream.readline()
            if not line:
                break
            lines.append(line.decode())
    return lines


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def shape(doc: dict) -> tuple:
    """An event as (exchange, symbol, side, price, qty, notional, ts) with floats rounded."""
    return (
        doc["exchange"],
        doc["symbol"],
        doc["side"],
        round(doc["price"], 8),
        round(doc["qty"], 10),
        round(doc["notional_usd"], 6),
        doc["ts"],
    )


# -- end to end: three venues -> jsonl -------------------------------------------------------------


async def test_jsonl_from_three_venues_is_exactly_the_normalised_events(tmp_path: Path) -> None:
    t = now_ms() - 60_000
    binance = FakeBinance(
        by_subscription={
            "!forceOrder@arr": [
                binance_force("BTCUSDT", "SELL", "65000", "0.5", t),  # SELL -> a long liquidated
                Garbage(),
                binance_force("ETHUSDT", "BUY", "3000", "2", t + 1),
                binance_force("DOGEUSDT", "SELL", "0.1", "100", t + 2),  # $10: below --min-usd
            ]
        }
    )
    okx = FakeOkx(
        by_subscription={
            "SWAP": [
                okx_push("BTC-USDT-SWAP", "sell", "long", "64000", "13", t + 3),  # 13 x 0.01 BTC
                okx_push("ETH-USDT-SWAP", "buy", "net", "3100", "20", t + 4),  # net + buy -> short
                okx_push("BTC-USD-SWAP", "buy", "short", "64100", "5", t + 5),  # inverse: 5 x $100
            ]
        },
        instruments=OKX_INSTRUMENTS,
    )
    bybit = FakeBybit(
        by_subscription={
            "allLiquidation.BTCUSDT": [bybit_push("BTCUSDT", "Buy", "64500", "0.2", t + 6)],
            "allLiquidation.ETHUSDT": [bybit_push("ETHUSDT", "Sell", "3050", "1.5", t + 7)],
        },
        instruments=BYBIT_INSTRUMENTS,
    )
    async with binance, okx, bybit:
        proc = await start_liq(
            "--data-dir",
            str(tmp_path),
            "watch",
            "--format",
            "jsonl",
            "--min-usd",
            "100",
            "--duration",
            "3",
            "--no-store",
            env=fake_env(binance, okx, bybit),
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    got = sorted(shape(orjson.loads(line)) for line in stdout.decode().splitlines())
    expected = sorted(
        [
            ("binance", "BTCUSDT", "long", 65000.0, 0.5, 32_500.0, iso_ms(t)),
            ("binance", "ETHUSDT", "short", 3000.0, 2.0, 6_000.0, iso_ms(t + 1)),
            ("okx", "BTCUSDT", "long", 64000.0, 0.13, 8_320.0, iso_ms(t + 3)),
            ("okx", "ETHUSDT", "short", 3100.0, 2.0, 6_200.0, iso_ms(t + 4)),
            ("okx", "BTCUSD", "short", 64100.0, round(500 / 64100, 10), 500.0, iso_ms(t + 5)),
            ("bybit", "BTCUSDT", "long", 64500.0, 0.2, 12_900.0, iso_ms(t + 6)),
            ("bybit", "ETHUSDT", "short", 3050.0, 1.5, 4_575.0, iso_ms(t + 7)),
        ]
    )
    assert got == expected
    okx_line = next(
        orjson.loads(line) for line in stdout.decode().splitlines() if '"BTCUSD"' in line
    )
    assert okx_line["venue_symbol"] == "BTC-USD-SWAP"
    assert binance.connections == okx.connections == bybit.connections == 1


# -- a dropped connection: nothing lost after the reconnect, nothing duplicated ---------------------


async def run_until(config: WatchConfig, data_dir: Path, done: Callable[[str], bool]) -> str:
    """run_watch with the real venue streams (fast timings) until ``done(output)``, then cancel
    it as Ctrl-C would; returns the jsonl output."""
    out = io.StringIO()

    def streams(cfg: WatchConfig, directory: Path):
        options = StreamOptions(timings=FAST, data_dir=directory)
        return liquidation_stream(cfg.exchanges, cfg.symbols, options=options)

    task = asyncio.create_task(
        run_watch(config, data_dir=data_dir, out=out, stream_factory=streams)
    )
    try:
        await wait_for(lambda: done(out.getvalue()) or task.done())
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return out.getvalue()


async def test_drop_mid_stream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = now_ms() - 5_000
    first = [binance_force("BTCUSDT", "SELL", str(60_000 + i), "0.01", t + i) for i in range(3)]
    after = [binance_force("BTCUSDT", "BUY", str(61_000 + i), "0.02", t + 10 + i) for i in range(3)]
    bybit_events = [
        bybit_push("BTCUSDT", "Sell", str(62_000 + i), "0.1", t + 20 + i) for i in range(4)
    ]
    binance = FakeBinance(
        by_subscription={"btcusdt@forceOrder": [*first, DROP, first[-1], *after]}  # re-sent
    )
    bybit = FakeBybit(
        by_subscription={"allLiquidation.BTCUSDT": [*bybit_events[:2], DROP, *bybit_events[2:]]}
    )
    async with binance, bybit:
        monkeypatch.setenv("LIQ_BINANCE_WS_URL", binance.ws_url)
        monkeypatch.setenv("LIQ_BYBIT_WS_URL", bybit.ws_url)
        config = WatchConfig(exchanges=["binance", "bybit"], symbols=["BTCUSDT"], fmt="jsonl")
        output = await run_until(config, tmp_path, lambda out: out.count("\n") >= 10)
        assert binance.connections == 2 and bybit.connections == 2
    lines = [orjson.loads(line) for line in output.splitlines()]
    keys = [(e["exchange"], e["ts"], e["price"]) for e in lines]
    assert len(keys) == len(set(keys)) == 10
    assert sorted(keys) == sorted(
        [("binance", iso_ms(t + i), 60_000.0 + i) for i in range(3)]
        + [("binance", iso_ms(t + 10 + i), 61_000.0 + i) for i in range(3)]
        + [("bybit", iso_ms(t + 20 + i), 62_000.0 + i) for i in range(4)]
    )
    # Cancelled like Ctrl-C: the journal was flushed into Parquet, exactly once per event.
    stored = Store(tmp_path).read("liquidations")
    assert stored.height == 10
    assert not list((tmp_path / "liquidations" / "_journal").glob("*.arrows"))


# -- kill -9, restart: the 1-day totals come back from storage ---------------------------------------


def journal_lines(data_dir: Path) -> int:
    return journal_rows(data_dir / "liquidations" / "_journal")


async def test_kill_9_then_restart_keeps_the_totals(tmp_path: Path) -> None:
    t = now_ms() - 3 * 3_600_000  # three hours ago: inside 4h and 1d, outside 1h
    sizes = ["0.013", "0.5", "1.25", "0.07", "2"]
    events = [
        binance_force("BTCUSDT", "SELL" if i % 2 else "BUY", "64000.5", q, t + i * 1000)
        for i, q in enumerate(sizes)
    ]
    binance = FakeBinance(by_subscription={"btcusdt@forceOrder": events})
    async with binance:
        env = fake_env(binance, None, None)
        args = ["--data-dir", str(tmp_path), "watch", "BTCUSDT", "-e", "binance"]
        first = await start_liq(*args, "--format", "jsonl", env=env)
        lines = await read_lines(first.stdout, len(events))
        assert len(lines) == len(events)
        # Wait until the journal has handed every row to the OS, then kill without warning.
        await wait_for(lambda: journal_lines(tmp_path) >= len(events))
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert not list((tmp_path / "liquidations").glob("exchange=*"))  # nothing compacted yet

        second = await start_liq(*args, "--format", "jsonl", "--web", "--port", "0", env=env)
        banner = (await read_lines(second.stderr, 1))[0]
        url = banner.rsplit(" ", 1)[-1].strip()
        async with httpx.AsyncClient(trust_env=False) as client:
            doc = (await client.get(url + "snapshot.json")).json()
        second.send_signal(signal.SIGINT)
        await asyncio.wait_for(second.wait(), 20)
    assert second.returncode == 130
    long_usd = sum(round(64000.5 * float(q) * MICRO) for i, q in enumerate(sizes) if i % 2) / MICRO
    short_usd = (
        sum(round(64000.5 * float(q) * MICRO) for i, q in enumerate(sizes) if not i % 2) / MICRO
    )
    for window in ("4h", "1d"):
        totals = doc["snapshot"]["overall"][window]
        assert (totals["long_usd"], totals["long_count"]) == (long_usd, 2)
        assert (totals["short_usd"], totals["short_count"]) == (short_usd, 3)
    assert doc["snapshot"]["overall"]["1h"]["long_count"] == 0
    assert doc["info"]["counters"]["restored"] == len(events)
    # The dead run's journal was recovered into Parquet, and nothing was stored twice.
    assert Store(tmp_path).read("liquidations").height == len(events)


# -- replay: the same pipeline over recorded events ----------------------------------------------


def sample_events(t: int) -> list[Liquidation]:
    return [
        Liquidation("binance", "BTCUSDT", "long", 65_000.0, 0.5, 32_500.0, t, received_ts=t + 40),
        Liquidation(
            "okx", "ETHUSDT", "short", 3_100.0, 2.0, 6_200.0, t + 1_000, "ETH-USDT-SWAP", t + 1_050
        ),
        Liquidation(
            "bybit", "BTCUSDT", "short", 64_500.0, 0.2, 12_900.0, t + 2_000, received_ts=t + 2_010
        ),
        Liquidation(
            "bybit", "SOLUSDT", "long", 150.0, 10.0, 1_500.0, t + 3_000, received_ts=t + 3_001
        ),
    ]


async def test_replay_of_recorded_jsonl_and_of_the_store(tmp_path: Path) -> None:
    t = 1_763_700_000_000
    events = sample_events(t)
    recording = tmp_path / "session.jsonl"
    recording.write_text("".join(orjson.dumps(e.to_dict()).decode() + "\n" for e in events))
    proc = await start_liq(
        "--data-dir",
        str(tmp_path),
        "watch",
        "--replay",
        str(recording),
        "--format",
        "jsonl",
        "--min-usd",
        "2000",
        env=dict(os.environ),
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == [
        orjson.dumps(e.to_dict()).decode() for e in events if e.notional_usd >= 2000
    ]
    assert not (tmp_path / "liquidations").exists()  # replays are read-only

    # The same events from the store and from a Parquet file give the same dashboard totals.
    Store(tmp_path).write("liquidations", pl.DataFrame([e.to_row() for e in events]))
    for source in ("store", str(tmp_path / "liquidations")):
        out = io.StringIO()
        config = WatchConfig(replay=source, fmt="jsonl", windows="1m,1h")
        result = await run_watch(config, data_dir=tmp_path, out=out)
        assert result.counters.shown == len(events)
        assert sorted(out.getvalue().splitlines()) == sorted(
            orjson.dumps(e.to_dict()).decode() for e in events
        )


async def test_replay_rejects_a_damaged_recording(tmp_path: Path) -> None:
    recording = tmp_path / "bad.jsonl"
    recording.write_text('{"exchange": "binance", "symbol": "BTCUSDT"}\n')
    proc = await start_liq(
        "watch", "--replay", str(recording), "--format", "jsonl", env=dict(os.environ)
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert stderr.decode().startswith(f"liq: error: {recording}:1: not a liquidation event")
    assert "Traceback" not in stderr.decode()


# -- state, dedupe, filters, dashboard -------------------------------------------------------------


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_state_dedupes_journals_everything_and_filters_the_view() -> None:
    t = 1_763_700_000_000
    journaled: list[dict] = []

    class ListJournal:
        def extend(self, rows: list[dict]) -> None:
            journaled.extend(rows)

    config = WatchConfig(symbols=["BTCUSDT", "ETHUSDT"], min_usd=5_000, windows="1m,1h")
    state = WatchState(config, clock=Clock(t + 5_000), journal=ListJournal(), keep_history=True)
    events = sample_events(t)
    results = [state.ingest(e) for e in [*events, events[0]]]
    assert results == [True, True, True, False, None]  # SOLUSDT filtered; the re-send dropped
    assert len(journaled) == 4  # every distinct event is stored, filtered or not
    assert state.main.totals("1h").count == 3
    # A web view narrows the command line's filter; it never widens it.
    view = state.open_view(EventFilter(symbols=frozenset({"BTCUSDT"}), min_usd=20_000))
    snap = state.payload(view)["snapshot"]
    assert snap["overall"]["1h"]["long_count"] == 1 and snap["overall"]["1h"]["short_count"] == 0
    state.ingest(Liquidation("binance", "BTCUSDT", "short", 1.0, 25_000.0, 25_000.0, t + 4_000))
    assert state.payload(view)["snapshot"]["overall"]["1h"]["short_count"] == 1
    with pytest.raises(Exception, match="SOLUSDT not watched"):
        state.open_view(EventFilter(symbols=frozenset({"SOLUSDT"})))
    state.close_view(view)
    assert state.payload(None)["snapshot"]["overall"]["1h"]["count"] == 4


def test_terminal_dashboard_shows_everything_with_colours() -> None:
    t = 1_763_700_000_000
    agg = WindowAggregator("3m,1h", clock=Clock(t + 10_000))
    agg.add_many(sample_events(t))
    statuses = {"binance": VenueStatus("binance", state="connected", reconnects=2, garbage=1)}
    info = DashboardInfo(exchanges=["binance", "okx", "bybit"], started_ms=t, store="/data")
    console = Console(record=True, width=160, force_terminal=True, color_system="standard")
    console.print(render_dashboard(agg.snapshot(5), statuses, info, now_ms=t + 10_000))
    text = console.export_text(styles=False, clear=False)
    ansi = console.export_text(styles=True)
    for expected in (
        "Rolling totals",
        "3m",
        "1h",
        "$53.1K",
        "Top longs liquidated (1h)",
        "BTCUSDT",
        "SOLUSDT",
        "Latest liquidations",
        "Venues",
        "connected",
        BINANCE_NOTE[:40],
    ):
        assert expected in text, expected
    assert "\x1b[1;31mLONG" in ansi and "\x1b[1;32mSHORT" in ansi  # longs red, shorts green
    venue_row = next(line for line in text.splitlines() if "connected" in line)
    cells = venue_row.split()
    assert cells == ["binance", "connected", "2", "0", "1", "0", "0", "-"]


def test_cli_usage_errors_exit_2_before_connecting(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from liqcli.cli.app import app

    runner = CliRunner()
    for args, message in [
        (["--min-usd", "-1"], "--min-usd must be >= 0"),
        (["-e", "kraken"], "unknown exchange kraken"),
        (["--windows", "3m,abc"], "invalid window 'abc'"),
        (["--top", "0"], "--top must be >= 1"),
        (["--duration", "0"], "--duration must be > 0"),
        (["--replay", str(tmp_path / "missing.jsonl")], "no such file"),
        (["BTC/USDT"], "invalid symbol"),
    ]:
        result = runner.invoke(app, ["--data-dir", str(tmp_path), "watch", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output


async def test_dashboard_format_prints_one_final_frame_when_not_a_terminal(tmp_path: Path) -> None:
    t = 1_763_700_000_000
    recording = tmp_path / "session.jsonl"
    recording.write_text(
        "".join(orjson.dumps(e.to_dict()).decode() + "\n" for e in sample_events(t))
    )
    out = io.StringIO()
    config = WatchConfig(replay=str(recording), windows="1m,1h", top=3)
    await run_watch(config, data_dir=tmp_path, out=out)
    text = out.getvalue()
    assert text.count("Rolling totals") == 1  # no refresh frames in a pipe or file
    assert "replay" in text and "4 events" in text
    one_minute = next(line for line in text.splitlines() if line.startswith("1m "))
    assert "$34.0K" in one_minute and "$19.1K" in one_minute and "$53.1K" in one_minute
    assert "Venues" not in text  # a replay has no connections to report


async def test_replay_reads_journal_rows_and_printed_lines_alike(tmp_path: Path) -> None:
    events = sample_events(1_763_700_000_000)
    recording = tmp_path / "mixed.jsonl"
    recording.write_text(
        "\n".join(
            orjson.dumps(e.to_row() if i % 2 else e.to_dict()).decode()
            for i, e in enumerate(events)
        )
        + "\n\n"
    )
    out = io.StringIO()
    result = await run_watch(
        WatchConfig(replay=str(recording), fmt="jsonl"), data_dir=tmp_path, out=out
    )
    assert result.counters.shown == len(events)
    assert out.getvalue().splitlines() == [orjson.dumps(e.to_dict()).decode() for e in events]
